//! Fig. 2C (speedups and memory saved against the hidden size, from the benchmark's CSV) and
//! Fig. 3 (the band sweep: accuracy, loss, activity, speedup, memory and backward time against
//! the half-width h, from `sweep-band`'s sweep.csv). Both put their parameter on a log x axis.

use plotters::prelude::SeriesLabelPosition;

use super::charts::{Line, LinePanel, Panel, PanelGrid, Reference};
use super::inputs::{BenchPair, Sweep};
use super::render::series_color;
use super::training::dataset_title;

/// A y axis on a log scale when the values span more than `ratio`.
fn spans_more_than(values: impl Iterator<Item = f64>, ratio: f64) -> bool {
    let (lo, hi) = values
        .filter(|v| v.is_finite() && *v > 0.0)
        .fold((f64::INFINITY, 0.0f64), |(lo, hi), v| {
            (lo.min(v), hi.max(v))
        });
    hi > 0.0 && hi / lo > ratio
}

/// Fig. 2C from the benchmark's dense/sparse pairs: one series per (device, dataset).
pub fn fig_scaling(pairs: &[BenchPair]) -> Result<PanelGrid, String> {
    if pairs.is_empty() {
        return Err("the benchmark CSV has no dense/sparse pair of rows".to_string());
    }
    let mut keys: Vec<(String, String)> = Vec::new();
    for pair in pairs {
        let key = (pair.device.clone(), pair.dataset.clone());
        if !keys.contains(&key) {
            keys.push(key);
        }
    }
    let devices: Vec<&String> = {
        let mut d: Vec<&String> = keys.iter().map(|k| &k.0).collect();
        d.dedup();
        d
    };
    let one_device = devices.len() == 1;
    let mut hiddens: Vec<f64> = pairs.iter().map(|p| p.hidden as f64).collect();
    hiddens.sort_by(f64::total_cmp);
    hiddens.dedup();
    let make = |caption: &str, y_desc: &str, value: fn(&BenchPair) -> f64| {
        let mut panel = LinePanel::new(caption, "hidden neurons per layer N", y_desc);
        panel.x_log = true;
        panel.x_ticks = Some(hiddens.clone());
        panel.y_from_zero = true;
        panel.legend = SeriesLabelPosition::UpperLeft;
        for (k, (device, dataset)) in keys.iter().enumerate() {
            let mut points: Vec<(f64, f64)> = pairs
                .iter()
                .filter(|p| &p.device == device && &p.dataset == dataset)
                .map(|p| (p.hidden as f64, value(p)))
                .collect();
            points.sort_by(|a, b| a.0.total_cmp(&b.0));
            let label = if one_device {
                dataset_title(dataset)
            } else {
                format!("{} ({device})", dataset_title(dataset))
            };
            panel.lines.push(Line {
                label,
                color: series_color(k),
                dashed: false,
                markers: true,
                points,
            });
        }
        panel
    };
    let mut backward = make(
        "Layer 2 backward speedup",
        "speedup, dense / sparse (x)",
        BenchPair::backward_speedup,
    );
    let mut overall = make(
        "Layer 2 forward + backward speedup",
        "speedup, dense / sparse (x)",
        BenchPair::overall_speedup,
    );
    for panel in [&mut backward, &mut overall] {
        if spans_more_than(
            panel
                .lines
                .iter()
                .flat_map(|l| l.points.iter().map(|p| p.1)),
            20.0,
        ) {
            panel.y_log = true;
        }
    }
    let mut memory = make(
        "Layer 2 memory kept for backward: saved",
        "memory saved (% of dense)",
        |p| 100.0 * p.memory_saved(),
    );
    memory.legend = SeriesLabelPosition::LowerRight;
    let device_note = if one_device {
        format!(" ({})", devices[0])
    } else {
        String::new()
    };
    Ok(PanelGrid::row(
        format!("Fig. 2C: sparse vs dense as the hidden size grows{device_note}"),
        (640, 520),
        vec![
            Panel::Lines(backward),
            Panel::Lines(overall),
            Panel::Lines(memory),
        ],
    ))
}

/// How a sweep is named in legends: dataset and N from its dense run's config, else its folder.
fn sweep_label(sweep: &Sweep) -> String {
    match &sweep.config {
        Some(config) => match config.hidden {
            Some(n) => format!("{}, N = {n}", dataset_title(&config.dataset)),
            None => dataset_title(&config.dataset),
        },
        None => sweep
            .dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| sweep.dir.display().to_string()),
    }
}

/// Fig. 3 from one or more sweeps: one series per sweep, the dense run as a dashed reference.
pub fn fig_band_sweep(sweeps: &[Sweep]) -> Result<PanelGrid, String> {
    let usable: Vec<&Sweep> = sweeps
        .iter()
        .filter(|s| s.rows.iter().any(|r| r.band.is_finite()))
        .collect();
    if usable.is_empty() {
        return Err("no sweep.csv has a row with a finite band".to_string());
    }
    let mut bands: Vec<f64> = usable
        .iter()
        .flat_map(|s| s.rows.iter().map(|r| r.band))
        .filter(|b| b.is_finite() && *b > 0.0)
        .collect();
    bands.sort_by(f64::total_cmp);
    bands.dedup();
    let several = usable.len() > 1;
    let panel = |caption: &str, y_desc: &str| {
        let mut panel = LinePanel::new(caption, "band half-width h", y_desc);
        panel.x_log = true;
        panel.x_ticks = Some(bands.clone());
        panel
    };
    let mut accuracy = panel("Test accuracy", "test accuracy (%)");
    let mut loss = panel("Training loss, last epoch", "training loss");
    let mut activity = panel("Active entries", "active (% of B x T x N)");
    let mut speedup = panel("Layer 2 backward speedup", "dense / sparse time (x)");
    let mut memory = panel("Layer 2 memory saved", "memory saved (% of dense)");
    let mut time = panel("Layer 2 backward time", "ms per step (mean)");
    activity.y_log = true;
    time.y_log = true;
    accuracy.legend = SeriesLabelPosition::LowerRight;
    activity.legend = SeriesLabelPosition::LowerRight;
    speedup.legend = SeriesLabelPosition::UpperRight;
    memory.legend = SeriesLabelPosition::LowerRight;
    time.legend = SeriesLabelPosition::MiddleLeft;
    memory.y_from_zero = true;
    speedup.y_from_zero = true;
    for (k, sweep) in usable.iter().enumerate() {
        let label = sweep_label(sweep);
        let name = |what: &str| {
            if several {
                format!("{label}: {what}")
            } else {
                what.to_string()
            }
        };
        let color = series_color(k);
        let mut rows: Vec<_> = sweep.rows.iter().filter(|r| r.band.is_finite()).collect();
        rows.sort_by(|a, b| a.band.total_cmp(&b.band));
        let series = |what: &str, value: &dyn Fn(&super::inputs::SweepRow) -> f64| Line {
            label: name(what),
            color,
            dashed: false,
            markers: true,
            points: rows.iter().map(|r| (r.band, value(r))).collect(),
        };
        accuracy
            .lines
            .push(series("sparse", &|r| 100.0 * r.test_acc));
        loss.lines.push(series("sparse", &|r| r.final_train_loss));
        activity
            .lines
            .push(series("layer 1", &|r| 100.0 * r.active[0]));
        let mut layer_two = series("layer 2", &|r| 100.0 * r.active[1]);
        layer_two.dashed = true;
        layer_two.color = series_color(k + usable.len());
        activity.lines.push(layer_two);
        speedup.lines.push(series("sparse", &|r| r.speedup));
        memory
            .lines
            .push(series("sparse", &|r| 100.0 * r.memory_saved));
        time.lines.push(series("sparse", &|r| r.bwd_ms_l2));
        let dense_row = sweep.rows.iter().find(|r| r.band == f64::INFINITY);
        let reference = |y: f64| Reference {
            label: name("dense"),
            color: color.mix_to_gray(),
            y,
        };
        if let Some(dense) = dense_row {
            accuracy.references.push(reference(100.0 * dense.test_acc));
            loss.references.push(reference(dense.final_train_loss));
            time.references.push(reference(dense.bwd_ms_l2));
        } else if let Some(first) = rows.first() {
            time.references.push(reference(first.dense_bwd_ms_l2));
        }
    }
    if spans_more_than(
        speedup
            .lines
            .iter()
            .flat_map(|l| l.points.iter().map(|p| p.1)),
        20.0,
    ) {
        speedup.y_log = true;
    }
    let title = if several {
        "Fig. 3: band sweep (dense runs dashed)".to_string()
    } else {
        format!(
            "Fig. 3: band sweep, {} (dense run dashed)",
            sweep_label(usable[0])
        )
    };
    Ok(PanelGrid {
        title,
        columns: 3,
        panel_size: (600, 460),
        panels: [accuracy, loss, activity, speedup, memory, time]
            .into_iter()
            .map(Panel::Lines)
            .collect(),
    })
}

/// A darker, greyer version of a colour, for reference lines.
trait MixToGray {
    fn mix_to_gray(self) -> Self;
}

impl MixToGray for plotters::style::RGBColor {
    fn mix_to_gray(self) -> Self {
        let mix = |c: u8| ((u16::from(c) + 2 * 90) / 3) as u8;
        plotters::style::RGBColor(mix(self.0), mix(self.1), mix(self.2))
    }
}
