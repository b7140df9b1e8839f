//! `cargo xtask plots`: the paper's figures (SPEC section 6) from s3gd-train's run directories, a
//! `grads` file and the benchmark's CSV, each as PNG and SVG.
//!
//! Each figure is drawn only when its inputs are there; the [`PlotReport`] says which were written
//! and why the others were skipped. Bad inputs (a missing column, a number that does not parse)
//! are errors that name the file and column, and nothing is written then. Every file is written
//! atomically (temporary file + rename).

pub mod charts;
pub mod gradients;
pub mod inputs;
pub mod render;
pub mod sweeps;
pub mod table;
pub mod training;

use std::path::PathBuf;

use anyhow::{bail, Result};

use self::charts::PanelGrid;
use self::gradients::GradientFigure;
use self::inputs::{read_bench_csv, read_grads, read_run_dir, RunInput};
use self::render::{render, Rendered};

/// What to plot and where.
#[derive(Clone, Debug, Default)]
pub struct PlotOptions {
    /// Output directories of `s3gd-train` (training runs) and of `s3gd-train sweep-band`.
    pub runs: Vec<PathBuf>,
    pub out: PathBuf,
    /// A file written by `s3gd-train grads` (Fig. 1B).
    pub grads: Option<PathBuf>,
    /// The benchmark's CSV (Fig. 2C).
    pub bench_csv: Option<PathBuf>,
}

/// The figures, in order: (name, file stem).
pub const FIGURES: [(&str, &str); 8] = [
    ("Fig. 1A", "fig1a-active"),
    ("Fig. 1B", "fig1b-gradients"),
    ("Fig. 1C", "fig1c-loss"),
    ("Fig. 1D", "fig1d-accuracy"),
    ("Fig. 2A", "fig2a-speedup-memory"),
    ("Fig. 2B", "fig2b-backward-time"),
    ("Fig. 2C", "fig2c-scaling"),
    ("Fig. 3", "fig3-band-sweep"),
];

/// What `plots` did.
#[derive(Clone, Debug, Default)]
pub struct PlotReport {
    /// (figure name, its files)
    pub rendered: Vec<(&'static str, Rendered)>,
    /// (figure name, why it was not drawn)
    pub skipped: Vec<(&'static str, String)>,
    /// Remarks on the inputs (a missing file in a run, an unpaired benchmark row).
    pub notes: Vec<String>,
}

enum Planned<'a> {
    Grid(Result<PanelGrid, String>),
    Gradients(GradientFigure<'a>),
    Skipped(String),
}

/// Reads the inputs, then draws every figure they allow into `opts.out`.
pub fn plot(opts: &PlotOptions) -> Result<PlotReport> {
    if opts.runs.is_empty() && opts.grads.is_none() && opts.bench_csv.is_none() {
        bail!("nothing to plot: give --runs DIR..., --grads FILE or --bench-csv FILE");
    }
    let mut report = PlotReport::default();
    let mut runs = Vec::new();
    let mut sweeps = Vec::new();
    for dir in &opts.runs {
        match read_run_dir(dir)? {
            RunInput::Training(run) => {
                report.notes.extend(run.notes.iter().cloned());
                runs.push(run);
            }
            RunInput::Sweep(sweep) => sweeps.push(sweep),
        }
    }
    let grads = opts.grads.as_deref().map(read_grads).transpose()?;
    let bench = opts.bench_csv.as_deref().map(read_bench_csv).transpose()?;
    if let (Some(path), Some(bench)) = (&opts.bench_csv, &bench) {
        for unpaired in &bench.unpaired {
            report.notes.push(format!(
                "{}: {unpaired} (no dense/sparse pair; left out)",
                path.display()
            ));
        }
    }
    let experiments = training::group_runs(&runs, &mut report.notes);

    let from_runs = |figure: fn(&[training::Experiment]) -> Result<PanelGrid, String>| {
        if runs.is_empty() {
            Planned::Skipped("no training run directory among --runs".to_string())
        } else {
            Planned::Grid(figure(&experiments))
        }
    };
    for (name, stem) in FIGURES {
        let planned = match name {
            "Fig. 1A" => from_runs(training::fig_active),
            "Fig. 1B" => match &grads {
                Some(grads) => Planned::Gradients(GradientFigure { grads }),
                None => Planned::Skipped("no --grads file given".to_string()),
            },
            "Fig. 1C" => from_runs(training::fig_loss),
            "Fig. 1D" => from_runs(training::fig_accuracy),
            "Fig. 2A" => from_runs(training::fig_speedup_memory),
            "Fig. 2B" => from_runs(training::fig_backward_time),
            "Fig. 2C" => match &bench {
                Some(bench) => Planned::Grid(sweeps::fig_scaling(&bench.pairs)),
                None => Planned::Skipped("no --bench-csv file given".to_string()),
            },
            _ => {
                if sweeps.is_empty() {
                    Planned::Skipped(
                        "no sweep-band directory (one holding sweep.csv) among --runs".to_string(),
                    )
                } else {
                    Planned::Grid(sweeps::fig_band_sweep(&sweeps))
                }
            }
        };
        match planned {
            Planned::Grid(Ok(grid)) => report
                .rendered
                .push((name, render(&grid, &opts.out, stem)?)),
            Planned::Gradients(figure) => report
                .rendered
                .push((name, render(&figure, &opts.out, stem)?)),
            Planned::Grid(Err(reason)) | Planned::Skipped(reason) => {
                report.skipped.push((name, reason))
            }
        }
    }
    Ok(report)
}
