//! The resolved settings of a training run ([`RunSettings`]): the command line's options with the
//! paper's per-dataset defaults filled in, or, with `--resume`, the saved run's settings with the few
//! options that may change (epochs, checkpoint interval, data directory) applied.
//!
//! Invariant: two runs with equal `RunSettings` (and equal data) train to bitwise-equal weights on
//! the CPU, whatever the device threads; that is what makes `--resume` and `--method both` fair.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use s3gd_core::{DatasetKind, Method, NetworkConfig, Preset, Readout, DEFAULT_BAND};
use serde::{Deserialize, Serialize};

use crate::cli::{MethodChoice, RunArgs, TrainArgs};

/// Seed used when none is given.
pub const DEFAULT_SEED: u64 = 0;
/// Checkpoint interval in epochs when none is given.
pub const DEFAULT_CHECKPOINT_EVERY: usize = 1;

/// Every setting that fixes what a run computes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunSettings {
    pub dataset: DatasetKind,
    pub method: MethodChoice,
    /// Half-width h of the sparse method's band (kept for dense runs too, unused there).
    pub band: f64,
    pub hidden: usize,
    pub epochs: usize,
    pub batch_size: usize,
    pub learning_rate: f64,
    pub readout: Readout,
    pub seed: u64,
    pub train_limit: Option<usize>,
    pub test_limit: Option<usize>,
    /// 0: only at the end.
    pub checkpoint_every: usize,
    /// `--data-dir`; `None` means the default, resolved when the data is loaded (so a run resumed on
    /// another machine finds that machine's data).
    pub data_dir: Option<PathBuf>,
}

impl RunSettings {
    /// The dataset's preset (the paper's hyperparameters).
    pub fn preset(&self) -> Preset {
        self.dataset.preset()
    }

    /// The network these settings train: the preset's, with hidden size, readout and rate applied.
    pub fn network(&self) -> NetworkConfig {
        network_for(self.dataset, self.hidden, self.readout, self.learning_rate)
    }

    /// Where the data is read from: `data_dir`, else the default (see [`data_dir`]).
    pub fn data_location(&self) -> PathBuf {
        data_dir(self.data_dir.as_deref())
    }

    /// The gradient methods this run trains, in order (dense first for `both`).
    pub fn methods(&self) -> Vec<Method> {
        let sparse = Method::Sparse { band: self.band };
        match self.method {
            MethodChoice::Dense => vec![Method::Dense],
            MethodChoice::Sparse => vec![sparse],
            MethodChoice::Both => vec![Method::Dense, sparse],
        }
    }

    /// The settings of one method of this run (for per-method records and sweeps).
    pub fn with_method(&self, method: Method) -> Self {
        let mut out = self.clone();
        match method {
            Method::Dense => out.method = MethodChoice::Dense,
            Method::Sparse { band } => {
                out.method = MethodChoice::Sparse;
                out.band = band;
            }
        }
        out
    }
}

/// The paper's network for `dataset` with the given hidden size, readout and learning rate.
pub fn network_for(
    dataset: DatasetKind,
    hidden: usize,
    readout: Readout,
    learning_rate: f64,
) -> NetworkConfig {
    let mut network = NetworkConfig::from_preset(&dataset.preset(), hidden);
    network.readout.mode = readout;
    network.adam.learning_rate = learning_rate;
    network
}

/// The data directory: `--data-dir`, else `$S3GD_DATA_DIR`, else the workspace's `datasets/`.
pub fn data_dir(given: Option<&Path>) -> PathBuf {
    given
        .map(Path::to_path_buf)
        .unwrap_or_else(s3gd_data::default_data_dir)
}

/// Settings from the command line, with the paper's defaults for the dataset.
pub fn from_run_args(run: &RunArgs, method: MethodChoice, band: f64) -> RunSettings {
    let dataset: DatasetKind = run.dataset.map(Into::into).unwrap_or(DatasetKind::Fmnist);
    let preset = dataset.preset();
    RunSettings {
        dataset,
        method,
        band,
        hidden: run.hidden.unwrap_or(preset.hidden),
        epochs: run.epochs.unwrap_or(preset.epochs),
        batch_size: run.batch_size.unwrap_or(preset.batch_size),
        learning_rate: run.lr.unwrap_or(preset.learning_rate),
        readout: run.readout.map(Into::into).unwrap_or(preset.readout),
        seed: run.seed.unwrap_or(DEFAULT_SEED),
        train_limit: run.train_limit,
        test_limit: run.test_limit,
        checkpoint_every: run.checkpoint_every.unwrap_or(DEFAULT_CHECKPOINT_EVERY),
        data_dir: run.env.data_dir.clone(),
    }
}

/// Settings of a fresh `train` run.
pub fn for_train(args: &TrainArgs) -> RunSettings {
    from_run_args(
        &args.run,
        args.method.unwrap_or(MethodChoice::Sparse),
        args.band.unwrap_or(DEFAULT_BAND),
    )
}

/// Settings of a resumed run: `saved` with `--epochs`, `--checkpoint-every` and `--data-dir`
/// applied. Any other option given must agree with the saved run, or it is an error (a different
/// setting would not continue the same run).
pub fn for_resume(saved: &RunSettings, args: &TrainArgs) -> Result<RunSettings> {
    let run = &args.run;
    let mut conflicts = Vec::new();
    let mut check = |flag: &str, given: Option<String>, saved: String| {
        if let Some(given) = given {
            if given != saved {
                conflicts.push(format!("{flag} {given} (the run has {saved})"));
            }
        }
    };
    let kind = |d: crate::cli::DatasetArg| DatasetKind::from(d).to_string();
    check(
        "--dataset",
        run.dataset.map(kind),
        saved.dataset.to_string(),
    );
    check(
        "--method",
        args.method.map(|m| m.name().to_string()),
        saved.method.name().to_string(),
    );
    check(
        "--band",
        args.band.map(|b| b.to_string()),
        saved.band.to_string(),
    );
    check(
        "--hidden",
        run.hidden.map(|v| v.to_string()),
        saved.hidden.to_string(),
    );
    check(
        "--batch-size",
        run.batch_size.map(|v| v.to_string()),
        saved.batch_size.to_string(),
    );
    check(
        "--lr",
        run.lr.map(|v| v.to_string()),
        saved.learning_rate.to_string(),
    );
    check(
        "--readout",
        run.readout.map(|r| Readout::from(r).to_string()),
        saved.readout.to_string(),
    );
    check(
        "--seed",
        run.seed.map(|v| v.to_string()),
        saved.seed.to_string(),
    );
    let limit = |l: Option<usize>| l.map_or_else(|| "none".to_string(), |n| n.to_string());
    check(
        "--train-limit",
        run.train_limit.map(|v| v.to_string()),
        limit(saved.train_limit),
    );
    check(
        "--test-limit",
        run.test_limit.map(|v| v.to_string()),
        limit(saved.test_limit),
    );
    if !conflicts.is_empty() {
        bail!(
            "--resume continues a run with its saved settings, but these options disagree with it: {}; \
             drop them, or start a new run with --out",
            conflicts.join(", ")
        );
    }
    let mut settings = saved.clone();
    if let Some(epochs) = run.epochs {
        settings.epochs = epochs;
    }
    if let Some(every) = run.checkpoint_every {
        settings.checkpoint_every = every;
    }
    if let Some(dir) = &run.env.data_dir {
        settings.data_dir = Some(dir.clone());
    }
    Ok(settings)
}

/// Reads the settings saved in a run directory's config.json.
pub fn read_saved(run_dir: &Path) -> Result<RunSettings> {
    let path = run_dir.join(crate::record::CONFIG_FILE);
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "reading {} (is {} a run directory written by s3gd-train?)",
            path.display(),
            run_dir.display()
        )
    })?;
    let config: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    let settings = config
        .get("settings")
        .cloned()
        .with_context(|| format!("{} has no \"settings\"", path.display()))?;
    serde_json::from_value(settings)
        .with_context(|| format!("reading the settings in {}", path.display()))
}
