//! `sweep-band`: the sparse method once per band half-width h, plus dense once as the reference, all
//! from the same seed, initial weights and batch order; each run in its own directory
//! (`<out>/dense/`, `<out>/band-<h>/`) with the usual files, and `<out>/sweep.csv` for Fig. 3.
//!
//! sweep.csv has one row per run: band (`inf` for the dense reference, which is the limit h -> inf),
//! final test accuracy, final epoch's train loss, mean active fractions, mean layer-2 backward ms and
//! kept bytes, the dense run's layer-2 backward ms, speedup = dense / sparse layer-2 backward time,
//! and memory_saved = 1 - sparse / dense layer-2 kept bytes (a fraction). It is rewritten whole after
//! every run, so a stopped sweep keeps the rows of the runs it finished.

use std::path::{Path, PathBuf};

use anyhow::Result;
use s3gd_core::{Backend, Method};

use crate::data::RunData;
use crate::record::write_atomic;
use crate::settings::RunSettings;
use crate::summary::MethodSummary;
use crate::train::{self, RunPlan};

pub const SWEEP_FILE: &str = "sweep.csv";

pub const SWEEP_COLUMNS: [&str; 10] = [
    "band",
    "test_acc",
    "final_train_loss",
    "active_l1",
    "active_l2",
    "bwd_ms_l2",
    "kept_bytes_l2",
    "dense_bwd_ms_l2",
    "speedup",
    "memory_saved",
];

/// The directory of one run of a sweep.
pub fn run_dir(out: &Path, method: Method) -> PathBuf {
    match method {
        Method::Dense => out.join("dense"),
        Method::Sparse { band } => out.join(format!("band-{band}")),
    }
}

/// The default output directory of a sweep: `runs/<dataset>-sweep-band-<UTC time>`.
pub fn default_out(settings: &RunSettings) -> PathBuf {
    crate::record::default_out_dir(&format!("{}-sweep-band", settings.dataset))
}

fn row(band: f64, run: &MethodSummary, dense: &MethodSummary) -> String {
    format!(
        "{band},{},{},{},{},{:.4},{},{:.4},{},{}",
        run.final_test_acc,
        run.final_train_loss,
        run.active[0],
        run.active[1],
        run.backward_ms[1],
        run.kept_bytes[1],
        dense.backward_ms[1],
        dense.backward_ms[1] / run.backward_ms[1],
        1.0 - run.kept_bytes[1] / dense.kept_bytes[1],
    )
}

/// Runs the sweep; returns the summaries (dense first, then the bands in the order given).
pub fn run<B: Backend>(
    backend: &B,
    base: &RunSettings,
    bands: &[f64],
    out: &Path,
    device: &str,
    data: &RunData,
) -> Result<Vec<(Method, MethodSummary)>> {
    let methods: Vec<Method> = std::iter::once(Method::Dense)
        .chain(bands.iter().map(|&band| Method::Sparse { band }))
        .collect();
    let mut done: Vec<(Method, MethodSummary)> = Vec::new();
    for method in methods {
        let plan = RunPlan {
            settings: base.with_method(method),
            out: run_dir(out, method),
            resume: false,
            device: device.to_string(),
        };
        tracing::info!("sweep: {} in {}", label(method), plan.out.display());
        let runs = train::run(backend, &plan, data)?;
        for run in &runs {
            done.push((run.method, MethodSummary::of(run)));
        }
        write_sweep_csv(out, &done)?;
    }
    Ok(done)
}

fn label(method: Method) -> String {
    match method {
        Method::Dense => "dense (reference)".into(),
        Method::Sparse { band } => format!("sparse, h = {band}"),
    }
}

fn write_sweep_csv(out: &Path, done: &[(Method, MethodSummary)]) -> Result<()> {
    let Some((_, dense)) = done.iter().find(|(m, _)| *m == Method::Dense) else {
        return Ok(());
    };
    let mut text = SWEEP_COLUMNS.join(",");
    text.push('\n');
    for (method, summary) in done {
        let band = match method {
            Method::Dense => f64::INFINITY,
            Method::Sparse { band } => *band,
        };
        text.push_str(&row(band, summary, dense));
        text.push('\n');
    }
    write_atomic(&out.join(SWEEP_FILE), text.as_bytes())
}

/// The sweep's table for the terminal.
pub fn table(done: &[(Method, MethodSummary)]) -> String {
    let dense = done
        .iter()
        .find(|(m, _)| *m == Method::Dense)
        .map(|(_, s)| s);
    let mut out = format!(
        "{:>8} {:>9} {:>11} {:>10} {:>10} {:>10} {:>8} {:>12}\n",
        "band",
        "test acc",
        "train loss",
        "active L1",
        "active L2",
        "L2 bwd ms",
        "speedup",
        "memory saved"
    );
    for (method, s) in done {
        let band = match method {
            Method::Dense => "dense".to_string(),
            Method::Sparse { band } => band.to_string(),
        };
        let (speedup, saved) = dense.map_or((f64::NAN, f64::NAN), |d| {
            (
                d.backward_ms[1] / s.backward_ms[1],
                1.0 - s.kept_bytes[1] / d.kept_bytes[1],
            )
        });
        out.push_str(&format!(
            "{band:>8} {:>8.2}% {:>11.4} {:>9.3}% {:>9.3}% {:>10.3} {:>7.2}x {:>11.1}%\n",
            100.0 * s.final_test_acc,
            s.final_train_loss,
            100.0 * s.active[0],
            100.0 * s.active[1],
            s.backward_ms[1],
            speedup,
            100.0 * saved
        ));
    }
    out
}
