//! The training loop, generic over the backend: epochs of steps in the (seed, epoch) batch order,
//! a test pass after each epoch, rows to steps.csv and epochs.csv as they happen, checkpoints, and
//! resuming from them.
//!
//! Invariant: a method's run is a pure function of its `RunSettings` and data, so dense and sparse
//! under `--method both` see the same initial weights and batches, and a run resumed at an epoch
//! boundary ends with the same weights as one that was never stopped.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use s3gd_core::{Backend, HostWeights, Method, NetworkConfig, Trainer, TrainerState};
use s3gd_data::SpikeDataset;
use serde_json::json;

use crate::checkpoint::{self, Checkpoint};
use crate::data::RunData;
use crate::progress::EpochBar;
use crate::record::{self, EpochRecord, Recorder, Versions, CONFIG_FILE, STEPS_FILE};
use crate::settings::RunSettings;

/// What to run and where.
#[derive(Clone, Debug)]
pub struct RunPlan {
    pub settings: RunSettings,
    pub out: PathBuf,
    /// Continue from the checkpoints in `out` instead of starting fresh.
    pub resume: bool,
    /// The device, as its backend describes itself.
    pub device: String,
}

/// The outcome of one method's training.
#[derive(Clone, Debug)]
pub struct MethodRun {
    pub method: Method,
    /// One record per epoch, from epoch 1 (including epochs done before a resume).
    pub history: Vec<EpochRecord>,
    pub state: TrainerState,
}

/// Test accuracy and mean loss of `trainer` on `split`, in batches of `batch_size`.
pub fn evaluate<B: Backend>(
    backend: &B,
    trainer: &Trainer<B>,
    split: &SpikeDataset,
    batch_size: usize,
) -> Result<(f64, f64)> {
    let (mut correct, mut loss, mut seen) = (0usize, 0.0f64, 0usize);
    for indices in split.eval_batches(batch_size) {
        let (events, labels) = split.try_batch(&indices)?;
        let report = trainer.evaluate(backend, &events, &labels)?;
        correct += report.correct;
        loss += report.loss * report.batch as f64;
        seen += report.batch;
    }
    if seen == 0 {
        bail!("evaluation on an empty split");
    }
    Ok((correct as f64 / seen as f64, loss / seen as f64))
}

/// Settings that must agree between a checkpoint and the run resuming it (all but the epoch count,
/// the checkpoint interval and the data directory).
fn same_run(a: &RunSettings, b: &RunSettings) -> bool {
    let strip = |s: &RunSettings| RunSettings {
        epochs: 0,
        checkpoint_every: 0,
        data_dir: None,
        ..s.clone()
    };
    strip(a) == strip(b)
}

/// Where each method starts: its checkpoint when resuming and one exists, else fresh weights.
/// Drops CSV rows a killed run wrote past that point.
fn starting_points(plan: &RunPlan) -> Result<Vec<(Method, Option<Checkpoint>)>> {
    let settings = &plan.settings;
    let mut starts = Vec::new();
    for method in settings.methods() {
        let path = checkpoint::path_for(&plan.out, settings, method);
        let start = if plan.resume && path.exists() {
            let saved = checkpoint::load(&path)?;
            if saved.method != method || !same_run(&saved.settings, settings) {
                bail!(
                    "{} belongs to a different run (method {:?}, settings {:?})",
                    path.display(),
                    saved.method,
                    saved.settings
                );
            }
            if saved.epoch > settings.epochs {
                bail!(
                    "{} is at epoch {}, past --epochs {}; give a larger --epochs to extend the run",
                    path.display(),
                    saved.epoch,
                    settings.epochs
                );
            }
            tracing::info!(
                "resuming {} from {} (epoch {}, step {})",
                method.name(),
                path.display(),
                saved.epoch,
                saved.state.step
            );
            Some(saved)
        } else {
            if plan.resume {
                tracing::info!(
                    "no checkpoint for {} in {}: it starts from epoch 1",
                    method.name(),
                    plan.out.display()
                );
            }
            None
        };
        if plan.resume {
            let done = start.as_ref().map_or(0, |c| c.epoch);
            record::drop_rows_after(&plan.out, method.name(), done)?;
        }
        starts.push((method, start));
    }
    Ok(starts)
}

fn write_config(plan: &RunPlan, data: &RunData, network: &NetworkConfig) -> Result<()> {
    let settings = &plan.settings;
    let config = json!({
        "settings": settings,
        "methods": settings.methods(),
        "network": network,
        "preset": settings.preset(),
        "device": plan.device,
        "data": {
            "source": data.source.to_string(),
            "train_samples": data.train.len(),
            "test_samples": data.test.len(),
        },
        "versions": Versions::current(),
        "written": record::utc_iso(),
        "resumed": plan.resume,
        "command_line": std::env::args().collect::<Vec<_>>(),
    });
    let text = serde_json::to_string_pretty(&config).context("serialising config.json")?;
    record::write_atomic(&plan.out.join(CONFIG_FILE), text.as_bytes())
}

/// Trains every method of `plan` on `data`, writing the run directory as it goes.
pub fn run<B: Backend>(backend: &B, plan: &RunPlan, data: &RunData) -> Result<Vec<MethodRun>> {
    let settings = &plan.settings;
    let network = settings.network();
    network.validate().context("the network settings")?;
    data.check_fits(&network)?;
    if settings.batch_size > data.train.len() {
        bail!(
            "--batch-size {} is larger than the {} training samples: no full batch to train on \
             (the last partial batch of an epoch is dropped, as in the paper)",
            settings.batch_size,
            data.train.len()
        );
    }
    std::fs::create_dir_all(&plan.out)
        .with_context(|| format!("creating {}", plan.out.display()))?;
    if !plan.resume {
        check_fresh_out(&plan.out)?;
    }
    let starts = starting_points(plan)?;
    write_config(plan, data, &network)?;
    tracing::info!(
        "{}: {} network {} x {} x {}, T = {}, {} epochs, batch {}, lr {}, readout {}, seed {}, on {}; output in {}",
        settings.method.name(),
        settings.dataset,
        network.inputs,
        network.hidden,
        network.classes,
        network.steps,
        settings.epochs,
        settings.batch_size,
        settings.learning_rate,
        settings.readout,
        settings.seed,
        plan.device,
        plan.out.display()
    );
    let mut recorder = Recorder::open(&plan.out)?;
    starts
        .into_iter()
        .map(|(method, start)| {
            train_method(backend, plan, data, &network, method, start, &mut recorder)
        })
        .collect()
}

fn train_method<B: Backend>(
    backend: &B,
    plan: &RunPlan,
    data: &RunData,
    network: &NetworkConfig,
    method: Method,
    start: Option<Checkpoint>,
    recorder: &mut Recorder,
) -> Result<MethodRun> {
    let settings = &plan.settings;
    let (mut trainer, mut history, done) = match start {
        Some(saved) => (
            Trainer::from_state(backend, *network, method, &saved.state)?,
            saved.history,
            saved.epoch,
        ),
        None => {
            let weights = HostWeights::init(network, settings.preset().init, settings.seed);
            (
                Trainer::new(backend, *network, method, &weights)?,
                Vec::new(),
                0,
            )
        }
    };
    let checkpoint_path = checkpoint::path_for(&plan.out, settings, method);
    for epoch in done + 1..=settings.epochs {
        let record = train_epoch(backend, &mut trainer, settings, data, epoch, recorder)?;
        recorder.epoch(&record)?;
        tracing::info!(
            "{} epoch {epoch}/{}: train loss {:.4} acc {:.2}%, test acc {:.2}% (loss {:.4}); {:.1} s ({:.2} steps/s); \
             layer-2 backward {:.2} ms; active {:.2}% / {:.2}%",
            method.name(),
            settings.epochs,
            record.train_loss,
            100.0 * record.train_acc,
            100.0 * record.test_acc,
            record.test_loss,
            record.seconds,
            record.steps as f64 / record.seconds.max(1e-9),
            record.backward_ms[1],
            100.0 * record.active[0],
            100.0 * record.active[1],
        );
        history.push(record);
        let every = settings.checkpoint_every;
        if epoch == settings.epochs || (every > 0 && epoch.is_multiple_of(every)) {
            let saved = Checkpoint {
                settings: settings.clone(),
                method,
                state: trainer.state(backend)?,
                epoch,
                history: history.clone(),
            };
            checkpoint::save(&checkpoint_path, &saved)?;
            tracing::debug!("checkpoint {} (epoch {epoch})", checkpoint_path.display());
        }
    }
    Ok(MethodRun {
        method,
        history,
        state: trainer.state(backend)?,
    })
}

/// Running sums over an epoch's steps.
#[derive(Default)]
struct EpochSums {
    steps: usize,
    samples: usize,
    correct: usize,
    loss: f64,
    forward_ms: [f64; 2],
    backward_ms: [f64; 2],
    active: [f64; 2],
    kept_bytes: [f64; 2],
    spikes: [f64; 2],
}

fn train_epoch<B: Backend>(
    backend: &B,
    trainer: &mut Trainer<B>,
    settings: &RunSettings,
    data: &RunData,
    epoch: usize,
    recorder: &mut Recorder,
) -> Result<EpochRecord> {
    let method = trainer.method().name();
    let batches = data
        .train
        .train_batches(settings.batch_size, settings.seed, epoch as u64);
    let bar = EpochBar::new(
        format!("{method} epoch {epoch}/{}", settings.epochs),
        batches.len() as u64,
    );
    let started = Instant::now();
    let mut sums = EpochSums::default();
    for indices in &batches {
        let (events, labels) = data.train.try_batch(indices)?;
        let report = trainer.step(backend, &events, &labels).with_context(|| {
            format!("{method} epoch {epoch}, step {}", trainer.steps_taken() + 1)
        })?;
        // Recorded first, so that a failure later in the epoch keeps this row.
        recorder.step(epoch, method, &report)?;
        sums.steps += 1;
        sums.samples += report.batch;
        sums.correct += report.correct;
        sums.loss += report.loss;
        for (k, layer) in report.layers.iter().enumerate() {
            sums.forward_ms[k] += layer.forward_ms;
            sums.backward_ms[k] += layer.backward_ms;
            sums.active[k] += layer.active_fraction();
            sums.kept_bytes[k] += layer.kept_bytes as f64;
            sums.spikes[k] += layer.spikes as f64;
        }
        bar.step(
            sums.loss / sums.steps as f64,
            sums.correct as f64 / sums.samples as f64,
            [
                report.layers[0].active_fraction(),
                report.layers[1].active_fraction(),
            ],
        );
    }
    let seconds = started.elapsed().as_secs_f64();
    drop(bar);
    let eval_started = Instant::now();
    let (test_acc, test_loss) = evaluate(backend, trainer, &data.test, settings.batch_size)?;
    let n = sums.steps.max(1) as f64;
    let mean = |a: [f64; 2]| [a[0] / n, a[1] / n];
    Ok(EpochRecord {
        epoch,
        method: method.to_string(),
        train_loss: sums.loss / n,
        train_acc: sums.correct as f64 / sums.samples.max(1) as f64,
        test_acc,
        test_loss,
        seconds,
        eval_seconds: eval_started.elapsed().as_secs_f64(),
        steps: sums.steps,
        forward_ms: mean(sums.forward_ms),
        backward_ms: mean(sums.backward_ms),
        active: mean(sums.active),
        kept_bytes: mean(sums.kept_bytes),
        spikes: mean(sums.spikes),
    })
}

/// The default output directory of a run: `runs/<dataset>-<method>-<UTC time>`.
pub fn default_out(settings: &RunSettings) -> PathBuf {
    record::default_out_dir(&format!("{}-{}", settings.dataset, settings.method.name()))
}

/// Errors if `out` already holds a run, so that a new run never mixes its rows into an old one.
pub fn check_fresh_out(out: &Path) -> Result<()> {
    if out.join(STEPS_FILE).exists() {
        bail!(
            "{} already holds a run; continue it with --resume {0}, or choose another --out",
            out.display()
        );
    }
    Ok(())
}
