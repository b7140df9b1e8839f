//! The figures drawn from training runs (steps.csv, epochs.csv): Fig. 1A (active neurons over
//! training), 1C (loss, dense vs sparse), 1D (final test accuracy), 2A (layer-2 backward speedup
//! and memory saved) and 2B (layer-2 backward time over training).
//!
//! Runs are grouped into [`Experiment`]s by (dataset, hidden size), so a `--method both` run and
//! two single-method runs of the same network plot alike. Each `fig_*` function returns the
//! figure, or why it cannot be drawn from these runs.

use std::collections::BTreeMap;

use plotters::prelude::SeriesLabelPosition;

use super::charts::{binned, median, BarPanel, Bars, Line, LinePanel, Panel, PanelGrid, Summary};
use super::inputs::{EpochRow, StepRow, TrainingRun, DENSE, SPARSE};
use super::render::{method_color, series_color};

/// Points per smoothed curve.
const CURVE_BINS: usize = 250;

/// The runs of one network (dataset and hidden size), merged across run directories.
#[derive(Clone, Debug)]
pub struct Experiment {
    /// How figures name it: the dataset's title, with N when two experiments share a dataset.
    pub label: String,
    pub dataset: String,
    pub hidden: Option<u64>,
    pub steps: BTreeMap<String, Vec<StepRow>>,
    pub epochs: BTreeMap<String, Vec<EpochRow>>,
}

impl Experiment {
    fn steps_of(&self, method: &str) -> Option<&[StepRow]> {
        self.steps
            .get(method)
            .map(Vec::as_slice)
            .filter(|r| !r.is_empty())
    }

    fn has_both_methods(&self) -> bool {
        self.steps_of(DENSE).is_some() && self.steps_of(SPARSE).is_some()
    }
}

/// The paper's name of a dataset key (`fmnist` -> `Fashion-MNIST`); other keys unchanged.
pub fn dataset_title(key: &str) -> String {
    match key {
        "fmnist" => "Fashion-MNIST".to_string(),
        "nmnist" => "N-MNIST".to_string(),
        "shd" => "SHD".to_string(),
        other => other.to_string(),
    }
}

fn dataset_rank(key: &str) -> usize {
    ["fmnist", "nmnist", "shd"]
        .iter()
        .position(|k| *k == key)
        .unwrap_or(3)
}

/// Groups runs by (dataset, hidden size), in the order Fashion-MNIST, N-MNIST, SHD, others. A
/// method found in two runs of one experiment is taken from the first (noted in `notes`).
pub fn group_runs(runs: &[TrainingRun], notes: &mut Vec<String>) -> Vec<Experiment> {
    let mut groups: Vec<Experiment> = Vec::new();
    for run in runs {
        let (dataset, hidden) = (&run.config.dataset, run.config.hidden);
        let index = match groups
            .iter()
            .position(|g| &g.dataset == dataset && g.hidden == hidden)
        {
            Some(index) => index,
            None => {
                groups.push(Experiment {
                    label: String::new(),
                    dataset: dataset.clone(),
                    hidden,
                    steps: BTreeMap::new(),
                    epochs: BTreeMap::new(),
                });
                groups.len() - 1
            }
        };
        let group = &mut groups[index];
        for (method, rows) in &run.steps {
            if group.steps.contains_key(method) {
                notes.push(format!(
                    "{}: {method} steps of {dataset} already taken from an earlier run; ignored",
                    run.dir.display()
                ));
            } else {
                group.steps.insert(method.clone(), rows.clone());
            }
        }
        for (method, rows) in &run.epochs {
            if group.epochs.contains_key(method) {
                notes.push(format!(
                    "{}: {method} epochs of {dataset} already taken from an earlier run; ignored",
                    run.dir.display()
                ));
            } else {
                group.epochs.insert(method.clone(), rows.clone());
            }
        }
    }
    groups.sort_by_key(|g| (dataset_rank(&g.dataset), g.dataset.clone(), g.hidden));
    let labels: Vec<String> = groups
        .iter()
        .map(|g| {
            let shared = groups.iter().filter(|o| o.dataset == g.dataset).count() > 1;
            match (shared, g.hidden) {
                (true, Some(n)) => format!("{}, N = {n}", dataset_title(&g.dataset)),
                _ => dataset_title(&g.dataset),
            }
        })
        .collect();
    for (group, label) in groups.iter_mut().zip(labels) {
        group.label = label;
    }
    groups
}

/// The position of each step in epochs: a step of epoch e that is the k-th of its n is at
/// e - 1 + k / n, so that curves of runs with different batch counts share an x axis.
pub fn epoch_positions(rows: &[StepRow]) -> Vec<f64> {
    let mut positions = Vec::with_capacity(rows.len());
    let mut start = 0;
    while start < rows.len() {
        let epoch = rows[start].epoch;
        let end = start
            + rows[start..]
                .iter()
                .take_while(|r| r.epoch == epoch)
                .count();
        let count = (end - start) as f64;
        for k in 0..end - start {
            positions.push(epoch as f64 - 1.0 + (k + 1) as f64 / count);
        }
        start = end;
    }
    positions
}

/// A per-step quantity over training, smoothed.
fn curve(rows: &[StepRow], value: impl Fn(&StepRow) -> f64, summary: Summary) -> Vec<(f64, f64)> {
    let points: Vec<(f64, f64)> = epoch_positions(rows)
        .into_iter()
        .zip(rows.iter().map(value))
        .collect();
    binned(&points, CURVE_BINS, summary)
}

fn with_both_methods(experiments: &[Experiment]) -> Vec<&Experiment> {
    experiments
        .iter()
        .filter(|e| e.has_both_methods())
        .collect()
}

const NO_PAIR: &str = "no run has both dense and sparse steps (train with --method both, or pass a dense and a sparse run of the same network)";

/// Fig. 1A: percentage of active neurons (sparse method) per layer over training.
pub fn fig_active(experiments: &[Experiment]) -> Result<PanelGrid, String> {
    let with_sparse: Vec<&Experiment> = experiments
        .iter()
        .filter(|e| e.steps_of(SPARSE).is_some())
        .collect();
    if with_sparse.is_empty() {
        return Err("no run has sparse steps (steps.csv rows with method sparse)".to_string());
    }
    let mut panel = LinePanel::new(
        "Active neurons during training (sparse method)",
        "epoch",
        "active entries (% of B x T x N)",
    );
    panel.y_from_zero = true;
    for (e, experiment) in with_sparse.iter().enumerate() {
        let rows = experiment.steps_of(SPARSE).unwrap_or_default();
        for layer in 0..2 {
            panel.lines.push(Line {
                label: format!("{}, layer {}", experiment.label, layer + 1),
                color: series_color(2 * e + layer),
                dashed: layer == 1,
                markers: false,
                points: curve(rows, |r| 100.0 * r.active[layer], Summary::Mean),
            });
        }
    }
    panel.legend = SeriesLabelPosition::LowerRight;
    Ok(PanelGrid::row(
        "Fig. 1A: active neurons per layer",
        (1000, 560),
        vec![Panel::Lines(panel)],
    ))
}

/// Fig. 1C: training loss, dense vs sparse, one panel per experiment.
pub fn fig_loss(experiments: &[Experiment]) -> Result<PanelGrid, String> {
    let pairs = with_both_methods(experiments);
    if pairs.is_empty() {
        return Err(NO_PAIR.to_string());
    }
    let panels = pairs
        .iter()
        .map(|experiment| {
            let mut panel = LinePanel::new(
                experiment.label.clone(),
                "epoch",
                "training loss (mean per bin of steps)",
            );
            for method in [DENSE, SPARSE] {
                let rows = experiment.steps_of(method).unwrap_or_default();
                panel.lines.push(Line {
                    label: method.to_string(),
                    color: method_color(method),
                    dashed: method == SPARSE,
                    markers: false,
                    points: curve(rows, |r| r.loss, Summary::Mean),
                });
            }
            Panel::Lines(panel)
        })
        .collect();
    Ok(PanelGrid::row(
        "Fig. 1C: training loss, dense vs sparse gradient",
        (800, 520),
        panels,
    ))
}

fn percent_label(value: f64) -> String {
    format!("{value:.1}%")
}

fn speedup_label(value: f64) -> String {
    if value >= 10.0 {
        format!("{value:.0}x")
    } else {
        format!("{value:.2}x")
    }
}

/// Fig. 1D: final test accuracy per experiment and method.
pub fn fig_accuracy(experiments: &[Experiment]) -> Result<PanelGrid, String> {
    let with_epochs: Vec<&Experiment> = experiments
        .iter()
        .filter(|e| e.epochs.values().any(|rows| !rows.is_empty()))
        .collect();
    if with_epochs.is_empty() {
        return Err("no run has epochs.csv rows".to_string());
    }
    let final_accuracy = |e: &Experiment, method: &str| {
        e.epochs
            .get(method)
            .and_then(|rows| rows.iter().max_by_key(|r| r.epoch))
            .map(|r| 100.0 * r.test_acc)
    };
    let series = [DENSE, SPARSE]
        .iter()
        .map(|&method| Bars {
            label: method.to_string(),
            color: method_color(method),
            values: with_epochs
                .iter()
                .map(|e| final_accuracy(e, method))
                .collect(),
        })
        .collect();
    let epochs_note = |e: &Experiment| {
        e.epochs
            .values()
            .filter_map(|rows| rows.iter().map(|r| r.epoch).max())
            .max()
            .map_or(String::new(), |n| format!(" ({n} ep.)"))
    };
    let panel = BarPanel {
        caption: "Test accuracy after the last epoch".to_string(),
        y_desc: "test accuracy (%)".to_string(),
        categories: with_epochs
            .iter()
            .map(|e| format!("{}{}", e.label, epochs_note(e)))
            .collect(),
        series,
        value_label: percent_label,
        // Room above 100% for the legend.
        y_max: Some(112.0),
        baseline: None,
    };
    let width = (420 + 260 * with_epochs.len() as u32).max(700);
    Ok(PanelGrid::row(
        "Fig. 1D: final test accuracy per dataset and method",
        (width, 520),
        vec![Panel::Bars(panel)],
    ))
}

/// The median over a method's steps of `value`.
fn median_of(rows: &[StepRow], value: impl Fn(&StepRow) -> f64) -> f64 {
    let mut values: Vec<f64> = rows.iter().map(value).filter(|v| v.is_finite()).collect();
    median(&mut values)
}

/// Layer-2 figures of one experiment, from the medians over all steps of each method.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LayerTwoSummary {
    pub backward_speedup: f64,
    pub overall_speedup: f64,
    pub memory_saved: f64,
}

pub fn layer_two_summary(experiment: &Experiment) -> Option<LayerTwoSummary> {
    let dense = experiment.steps_of(DENSE)?;
    let sparse = experiment.steps_of(SPARSE)?;
    let bwd = |rows| median_of(rows, |r| r.bwd_ms[1]);
    let total = |rows| median_of(rows, |r| r.fwd_ms[1] + r.bwd_ms[1]);
    let kept = |rows| median_of(rows, |r| r.kept_bytes[1]);
    Some(LayerTwoSummary {
        backward_speedup: bwd(dense) / bwd(sparse),
        overall_speedup: total(dense) / total(sparse),
        memory_saved: 1.0 - kept(sparse) / kept(dense),
    })
}

/// Fig. 2A: layer-2 backward (and forward + backward) speedup and memory saved, per experiment.
pub fn fig_speedup_memory(experiments: &[Experiment]) -> Result<PanelGrid, String> {
    let pairs = with_both_methods(experiments);
    if pairs.is_empty() {
        return Err(NO_PAIR.to_string());
    }
    let summaries: Vec<Option<LayerTwoSummary>> =
        pairs.iter().map(|e| layer_two_summary(e)).collect();
    let categories: Vec<String> = pairs.iter().map(|e| e.label.clone()).collect();
    let speed = BarPanel {
        caption: "Layer 2 speedup, dense / sparse (median step)".to_string(),
        y_desc: "speedup (x)".to_string(),
        categories: categories.clone(),
        series: vec![
            Bars {
                label: "backward".to_string(),
                color: series_color(0),
                values: summaries
                    .iter()
                    .map(|s| s.map(|s| s.backward_speedup))
                    .collect(),
            },
            Bars {
                label: "forward + backward".to_string(),
                color: series_color(2),
                values: summaries
                    .iter()
                    .map(|s| s.map(|s| s.overall_speedup))
                    .collect(),
            },
        ],
        value_label: speedup_label,
        y_max: None,
        baseline: Some(1.0),
    };
    let memory = BarPanel {
        caption: "Layer 2 memory kept for backward: saved".to_string(),
        y_desc: "memory saved (% of dense)".to_string(),
        categories,
        series: vec![Bars {
            label: "1 - sparse / dense bytes".to_string(),
            color: series_color(4),
            values: summaries
                .iter()
                .map(|s| s.map(|s| 100.0 * s.memory_saved))
                .collect(),
        }],
        value_label: percent_label,
        y_max: Some(100.0),
        baseline: None,
    };
    let width = (380 + 220 * pairs.len() as u32).max(640);
    Ok(PanelGrid::row(
        "Fig. 2A: hidden layer 2, sparse vs dense backward",
        (width, 520),
        vec![Panel::Bars(speed), Panel::Bars(memory)],
    ))
}

/// Fig. 2B: layer-2 backward time over training, dense vs sparse, one panel per experiment.
pub fn fig_backward_time(experiments: &[Experiment]) -> Result<PanelGrid, String> {
    let pairs = with_both_methods(experiments);
    if pairs.is_empty() {
        return Err(NO_PAIR.to_string());
    }
    let panels = pairs
        .iter()
        .map(|experiment| {
            let mut panel = LinePanel::new(
                experiment.label.clone(),
                "epoch",
                "layer 2 backward (ms, median per bin)",
            );
            panel.y_log = true;
            for method in [DENSE, SPARSE] {
                let rows = experiment.steps_of(method).unwrap_or_default();
                panel.lines.push(Line {
                    label: method.to_string(),
                    color: method_color(method),
                    dashed: false,
                    markers: false,
                    points: curve(rows, |r| r.bwd_ms[1], Summary::Median),
                });
            }
            Panel::Lines(panel)
        })
        .collect();
    Ok(PanelGrid::row(
        "Fig. 2B: layer 2 backward time over training",
        (800, 520),
        panels,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(epoch: u64) -> StepRow {
        StepRow {
            epoch,
            step: 0,
            loss: 1.0,
            active: [0.01, 0.01],
            fwd_ms: [1.0, 1.0],
            bwd_ms: [4.0, 4.0],
            kept_bytes: [100.0, 100.0],
        }
    }

    #[test]
    fn steps_are_placed_within_their_epoch() {
        let rows = [row(1), row(1), row(2), row(2), row(2), row(2)];
        assert_eq!(epoch_positions(&rows), [0.5, 1.0, 1.25, 1.5, 1.75, 2.0]);
    }
}
