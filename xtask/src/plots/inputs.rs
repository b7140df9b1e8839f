//! The inputs of `cargo xtask plots`, read and checked: training runs of `s3gd-train` (config.json,
//! steps.csv, epochs.csv), band sweeps (sweep.csv), the benchmark's CSV (Fig. 2C) and a `grads`
//! safetensors file (Fig. 1B).
//!
//! Only the columns a figure uses are required; a missing or unparsable one is an error naming the
//! file and the column. Rows keep file order; step rows of a method are in training order.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use safetensors::{Dtype, SafeTensors};

use super::table::CsvTable;

pub const DENSE: &str = "dense";
pub const SPARSE: &str = "sparse";

pub const CONFIG_FILE: &str = "config.json";
pub const STEPS_FILE: &str = "steps.csv";
pub const EPOCHS_FILE: &str = "epochs.csv";
pub const SWEEP_FILE: &str = "sweep.csv";

/// One row of steps.csv (the per-layer columns as [layer 1, layer 2]).
#[derive(Clone, Debug, PartialEq)]
pub struct StepRow {
    pub epoch: u64,
    pub step: u64,
    pub loss: f64,
    /// Fraction (0..1) of the layer's B x T x N entries the backward pass worked on.
    pub active: [f64; 2],
    pub fwd_ms: [f64; 2],
    pub bwd_ms: [f64; 2],
    pub kept_bytes: [f64; 2],
}

/// One row of epochs.csv.
#[derive(Clone, Debug, PartialEq)]
pub struct EpochRow {
    pub epoch: u64,
    pub train_loss: f64,
    pub train_acc: f64,
    pub test_acc: f64,
    pub seconds: f64,
}

/// What the figures take from a run's config.json.
#[derive(Clone, Debug, PartialEq)]
pub struct RunConfig {
    /// `fmnist`, `nmnist`, `shd` (or the directory's name when config.json is absent).
    pub dataset: String,
    pub hidden: Option<u64>,
    pub device: Option<String>,
    pub epochs: Option<u64>,
}

/// A training run's directory: its settings and its rows, per method (`dense`, `sparse`).
#[derive(Clone, Debug)]
pub struct TrainingRun {
    pub dir: PathBuf,
    pub config: RunConfig,
    pub steps: BTreeMap<String, Vec<StepRow>>,
    pub epochs: BTreeMap<String, Vec<EpochRow>>,
    /// Things the user should know (a missing file, a dropped torn row).
    pub notes: Vec<String>,
}

/// One row of a band sweep's sweep.csv; the dense reference has `band` = +inf.
#[derive(Clone, Debug, PartialEq)]
pub struct SweepRow {
    pub band: f64,
    pub test_acc: f64,
    pub final_train_loss: f64,
    pub active: [f64; 2],
    pub bwd_ms_l2: f64,
    pub kept_bytes_l2: f64,
    pub dense_bwd_ms_l2: f64,
    pub speedup: f64,
    pub memory_saved: f64,
}

/// A `sweep-band` output directory.
#[derive(Clone, Debug)]
pub struct Sweep {
    pub dir: PathBuf,
    /// The settings of the sweep's dense run (`<dir>/dense/config.json`), when present.
    pub config: Option<RunConfig>,
    pub rows: Vec<SweepRow>,
}

/// What one `--runs` directory holds.
#[derive(Clone, Debug)]
pub enum RunInput {
    Training(TrainingRun),
    Sweep(Sweep),
}

/// Reads one `--runs` directory: a sweep if it has sweep.csv, else a training run.
pub fn read_run_dir(dir: &Path) -> Result<RunInput> {
    if !dir.is_dir() {
        bail!("{}: not a directory", dir.display());
    }
    if dir.join(SWEEP_FILE).is_file() {
        return read_sweep(dir).map(RunInput::Sweep);
    }
    if dir.join(STEPS_FILE).is_file() || dir.join(EPOCHS_FILE).is_file() {
        return read_training_run(dir).map(RunInput::Training);
    }
    bail!(
        "{}: holds no {STEPS_FILE}, {EPOCHS_FILE} or {SWEEP_FILE} (not an output directory of s3gd-train)",
        dir.display()
    )
}

/// Reads `<dir>/config.json`'s dataset, hidden size, epochs and device.
pub fn read_config(path: &Path) -> Result<RunConfig> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let json: serde_json::Value = serde_json::from_str(&text)
        .with_context(|| format!("{}: not valid JSON", path.display()))?;
    let settings = json.get("settings");
    let dataset = settings
        .and_then(|s| s.get("dataset"))
        .and_then(|d| d.as_str())
        .with_context(|| format!("{}: no string `settings.dataset`", path.display()))?
        .to_string();
    let number = |key: &str| settings.and_then(|s| s.get(key)).and_then(|v| v.as_u64());
    Ok(RunConfig {
        dataset,
        hidden: number("hidden"),
        epochs: number("epochs"),
        device: json
            .get("device")
            .and_then(|d| d.as_str())
            .map(str::to_string),
    })
}

/// Reads a training run's directory; steps.csv and epochs.csv may each be absent (noted).
pub fn read_training_run(dir: &Path) -> Result<TrainingRun> {
    let mut notes = Vec::new();
    let config_path = dir.join(CONFIG_FILE);
    let config = if config_path.is_file() {
        read_config(&config_path)?
    } else {
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| dir.display().to_string());
        notes.push(format!(
            "{}: no {CONFIG_FILE}; the dataset is named after the directory",
            dir.display()
        ));
        RunConfig {
            dataset: name,
            hidden: None,
            device: None,
            epochs: None,
        }
    };
    let mut steps = BTreeMap::new();
    let steps_path = dir.join(STEPS_FILE);
    if steps_path.is_file() {
        let table = CsvTable::read(&steps_path)?;
        note_torn(&table, &mut notes);
        steps = steps_by_method(&table)?;
    } else {
        notes.push(format!("{}: no {STEPS_FILE}", dir.display()));
    }
    let mut epochs = BTreeMap::new();
    let epochs_path = dir.join(EPOCHS_FILE);
    if epochs_path.is_file() {
        let table = CsvTable::read(&epochs_path)?;
        note_torn(&table, &mut notes);
        epochs = epochs_by_method(&table)?;
    } else {
        notes.push(format!("{}: no {EPOCHS_FILE}", dir.display()));
    }
    Ok(TrainingRun {
        dir: dir.to_path_buf(),
        config,
        steps,
        epochs,
        notes,
    })
}

fn note_torn(table: &CsvTable, notes: &mut Vec<String>) {
    if table.torn_rows() > 0 {
        notes.push(format!(
            "{}: dropped an incomplete last row",
            table.path().display()
        ));
    }
}

/// steps.csv's rows grouped by the `method` column, in file order.
pub fn steps_by_method(table: &CsvTable) -> Result<BTreeMap<String, Vec<StepRow>>> {
    let methods = table.texts("method")?;
    let epoch = table.counts("epoch")?;
    let step = table.counts("step")?;
    let loss = table.numbers("loss")?;
    let layer = |prefix: &str| -> Result<[Vec<f64>; 2]> {
        Ok([
            table.numbers(&format!("{prefix}_l1"))?,
            table.numbers(&format!("{prefix}_l2"))?,
        ])
    };
    let active = layer("active")?;
    let fwd = layer("fwd_ms")?;
    let bwd = layer("bwd_ms")?;
    let kept = layer("kept_bytes")?;
    let mut by_method: BTreeMap<String, Vec<StepRow>> = BTreeMap::new();
    for (i, method) in methods.into_iter().enumerate() {
        let pair = |v: &[Vec<f64>; 2]| [v[0][i], v[1][i]];
        by_method.entry(method).or_default().push(StepRow {
            epoch: epoch[i],
            step: step[i],
            loss: loss[i],
            active: pair(&active),
            fwd_ms: pair(&fwd),
            bwd_ms: pair(&bwd),
            kept_bytes: pair(&kept),
        });
    }
    Ok(by_method)
}

/// epochs.csv's rows grouped by the `method` column, in file order.
pub fn epochs_by_method(table: &CsvTable) -> Result<BTreeMap<String, Vec<EpochRow>>> {
    let methods = table.texts("method")?;
    let epoch = table.counts("epoch")?;
    let train_loss = table.numbers("train_loss")?;
    let train_acc = table.numbers("train_acc")?;
    let test_acc = table.numbers("test_acc")?;
    let seconds = table.numbers("seconds")?;
    let mut by_method: BTreeMap<String, Vec<EpochRow>> = BTreeMap::new();
    for (i, method) in methods.into_iter().enumerate() {
        by_method.entry(method).or_default().push(EpochRow {
            epoch: epoch[i],
            train_loss: train_loss[i],
            train_acc: train_acc[i],
            test_acc: test_acc[i],
            seconds: seconds[i],
        });
    }
    Ok(by_method)
}

/// Reads a `sweep-band` output directory (sweep.csv, and the dense run's config.json if present).
pub fn read_sweep(dir: &Path) -> Result<Sweep> {
    let table = CsvTable::read(&dir.join(SWEEP_FILE))?;
    let band = table.numbers("band")?;
    let test_acc = table.numbers("test_acc")?;
    let final_train_loss = table.numbers("final_train_loss")?;
    let active_l1 = table.numbers("active_l1")?;
    let active_l2 = table.numbers("active_l2")?;
    let bwd_ms_l2 = table.numbers("bwd_ms_l2")?;
    let kept_bytes_l2 = table.numbers("kept_bytes_l2")?;
    let dense_bwd_ms_l2 = table.numbers("dense_bwd_ms_l2")?;
    let speedup = table.numbers("speedup")?;
    let memory_saved = table.numbers("memory_saved")?;
    let rows = (0..table.len())
        .map(|i| SweepRow {
            band: band[i],
            test_acc: test_acc[i],
            final_train_loss: final_train_loss[i],
            active: [active_l1[i], active_l2[i]],
            bwd_ms_l2: bwd_ms_l2[i],
            kept_bytes_l2: kept_bytes_l2[i],
            dense_bwd_ms_l2: dense_bwd_ms_l2[i],
            speedup: speedup[i],
            memory_saved: memory_saved[i],
        })
        .collect();
    let dense_config = dir.join("dense").join(CONFIG_FILE);
    let config = if dense_config.is_file() {
        Some(read_config(&dense_config)?)
    } else {
        None
    };
    Ok(Sweep {
        dir: dir.to_path_buf(),
        config,
        rows,
    })
}

/// The columns of the benchmark's CSV (s3gd-bench), in order.
pub const BENCH_COLUMNS: [&str; 11] = [
    "device",
    "dataset",
    "hidden",
    "batch",
    "steps",
    "inputs",
    "method",
    "fwd_ms_l2",
    "bwd_ms_l2",
    "kept_bytes_l2",
    "active_l2",
];

/// One method's measurement of one shape in the benchmark's CSV.
#[derive(Clone, Debug, PartialEq)]
pub struct BenchMeasure {
    pub fwd_ms_l2: f64,
    pub bwd_ms_l2: f64,
    pub kept_bytes_l2: f64,
    pub active_l2: f64,
}

/// Dense and sparse measured on the same device, dataset shape and hidden size.
#[derive(Clone, Debug, PartialEq)]
pub struct BenchPair {
    pub device: String,
    pub dataset: String,
    pub hidden: u64,
    pub batch: u64,
    pub dense: BenchMeasure,
    pub sparse: BenchMeasure,
}

impl BenchPair {
    /// Layer-2 backward time, dense / sparse.
    pub fn backward_speedup(&self) -> f64 {
        self.dense.bwd_ms_l2 / self.sparse.bwd_ms_l2
    }

    /// Layer-2 forward + backward time, dense / sparse.
    pub fn overall_speedup(&self) -> f64 {
        (self.dense.fwd_ms_l2 + self.dense.bwd_ms_l2)
            / (self.sparse.fwd_ms_l2 + self.sparse.bwd_ms_l2)
    }

    /// 1 - sparse / dense bytes kept for layer 2's backward pass.
    pub fn memory_saved(&self) -> f64 {
        1.0 - self.sparse.kept_bytes_l2 / self.dense.kept_bytes_l2
    }
}

/// What the benchmark's CSV gives: dense/sparse pairs, and the rows that had no partner.
#[derive(Clone, Debug, Default)]
pub struct BenchTable {
    pub pairs: Vec<BenchPair>,
    pub unpaired: Vec<String>,
}

/// Reads the benchmark's CSV and pairs its dense and sparse rows by (device, dataset, hidden).
/// Methods other than dense and sparse are ignored; a second row of one method for one key is an
/// error (the file has one row per method per shape).
pub fn read_bench_csv(path: &Path) -> Result<BenchTable> {
    let table = CsvTable::read(path)?;
    for column in BENCH_COLUMNS {
        table.column(column)?;
    }
    let device = table.texts("device")?;
    let dataset = table.texts("dataset")?;
    let hidden = table.counts("hidden")?;
    let batch = table.counts("batch")?;
    let method = table.texts("method")?;
    let fwd = table.numbers("fwd_ms_l2")?;
    let bwd = table.numbers("bwd_ms_l2")?;
    let kept = table.numbers("kept_bytes_l2")?;
    let active = table.numbers("active_l2")?;
    type Key = (String, String, u64);
    // key -> (batch, dense, sparse)
    let mut found: BTreeMap<Key, (u64, Option<BenchMeasure>, Option<BenchMeasure>)> =
        BTreeMap::new();
    let mut order: Vec<Key> = Vec::new();
    for i in 0..table.len() {
        let slot = match method[i].as_str() {
            DENSE => 0,
            SPARSE => 1,
            _ => continue,
        };
        let key = (device[i].clone(), dataset[i].clone(), hidden[i]);
        let entry = found.entry(key.clone()).or_insert_with(|| {
            order.push(key.clone());
            (batch[i], None, None)
        });
        let target = if slot == 0 {
            &mut entry.1
        } else {
            &mut entry.2
        };
        if target.is_some() {
            bail!(
                "{}, line {}: a second {} row for device `{}`, dataset `{}`, hidden {}",
                path.display(),
                table.line_of(i),
                method[i],
                key.0,
                key.1,
                key.2
            );
        }
        *target = Some(BenchMeasure {
            fwd_ms_l2: fwd[i],
            bwd_ms_l2: bwd[i],
            kept_bytes_l2: kept[i],
            active_l2: active[i],
        });
    }
    let mut result = BenchTable::default();
    for key in order {
        let Some((batch, dense, sparse)) = found.remove(&key) else {
            continue;
        };
        let (device, dataset, hidden) = key;
        match (dense, sparse) {
            (Some(dense), Some(sparse)) => result.pairs.push(BenchPair {
                device,
                dataset,
                hidden,
                batch,
                dense,
                sparse,
            }),
            (dense, _) => result.unpaired.push(format!(
                "{device} {dataset} N={hidden}: only {}",
                if dense.is_some() { DENSE } else { SPARSE }
            )),
        }
    }
    Ok(result)
}

/// A row-major matrix of f32.
#[derive(Clone, Debug, PartialEq)]
pub struct Matrix {
    pub rows: usize,
    pub cols: usize,
    pub values: Vec<f32>,
}

impl Matrix {
    pub fn zero_fraction(&self) -> f64 {
        if self.values.is_empty() {
            return 0.0;
        }
        self.values.iter().filter(|&&v| v == 0.0).count() as f64 / self.values.len() as f64
    }
}

/// One method's gradients in a grads file, as Fig. 1B shows them.
#[derive(Clone, Debug, PartialEq)]
pub struct MethodGrads {
    /// `M.grad_w2` [N, N].
    pub grad_w2: Matrix,
    /// `M.grad_s1` of the first sample of the batch [T, N].
    pub grad_s1_first: Matrix,
    pub loss: f32,
}

/// What Fig. 1B takes from a `grads` safetensors file.
#[derive(Clone, Debug, PartialEq)]
pub struct GradsFile {
    pub path: PathBuf,
    pub metadata: BTreeMap<String, String>,
    pub batch: usize,
    pub dense: MethodGrads,
    pub sparse: MethodGrads,
}

/// Reads the dense and sparse `grad_w2`, `grad_s1` (first sample) and `loss` of a grads file.
pub fn read_grads(path: &Path) -> Result<GradsFile> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let file = SafeTensors::deserialize(&bytes)
        .with_context(|| format!("{}: not a safetensors file", path.display()))?;
    let (_, header) = SafeTensors::read_metadata(&bytes)
        .with_context(|| format!("{}: not a safetensors file", path.display()))?;
    let metadata: BTreeMap<String, String> = header
        .metadata()
        .as_ref()
        .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
        .unwrap_or_default();
    let tensor = |name: &str, rank: usize| -> Result<(Vec<usize>, Vec<f32>)> {
        let view = file
            .tensor(name)
            .with_context(|| format!("{}: no tensor `{name}`", path.display()))?;
        if view.dtype() != Dtype::F32 {
            bail!(
                "{}: tensor `{name}` is {:?}, not F32",
                path.display(),
                view.dtype()
            );
        }
        if view.shape().len() != rank {
            bail!(
                "{}: tensor `{name}` has shape {:?}, not of rank {rank}",
                path.display(),
                view.shape()
            );
        }
        let values = view
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        Ok((view.shape().to_vec(), values))
    };
    let mut batch = 0;
    let mut method = |m: &str| -> Result<MethodGrads> {
        let (w_shape, w) = tensor(&format!("{m}.grad_w2"), 2)?;
        let (s_shape, s) = tensor(&format!("{m}.grad_s1"), 3)?;
        let (_, loss) = tensor(&format!("{m}.loss"), 1)?;
        let (b, t, n) = (s_shape[0], s_shape[1], s_shape[2]);
        if b == 0 {
            bail!("{}: tensor `{m}.grad_s1` holds no sample", path.display());
        }
        batch = b;
        Ok(MethodGrads {
            grad_w2: Matrix {
                rows: w_shape[0],
                cols: w_shape[1],
                values: w,
            },
            grad_s1_first: Matrix {
                rows: t,
                cols: n,
                values: s[..t * n].to_vec(),
            },
            loss: loss.first().copied().unwrap_or(f32::NAN),
        })
    };
    let dense = method(DENSE)?;
    let sparse = method(SPARSE)?;
    if dense.grad_w2.rows != sparse.grad_w2.rows
        || dense.grad_w2.cols != sparse.grad_w2.cols
        || dense.grad_s1_first.rows != sparse.grad_s1_first.rows
        || dense.grad_s1_first.cols != sparse.grad_s1_first.cols
    {
        bail!(
            "{}: dense and sparse gradients have different shapes",
            path.display()
        );
    }
    Ok(GradsFile {
        path: path.to_path_buf(),
        metadata,
        batch,
        dense,
        sparse,
    })
}
