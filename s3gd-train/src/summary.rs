//! The summary a run ends with: one plain-text row per method (final and best test accuracy, mean
//! epoch time, mean layer-2 backward time, active fractions, kept bytes) and, with both methods, how
//! sparse compares with dense.

use std::fmt::Write as _;

use crate::record::EpochRecord;
use crate::train::MethodRun;

/// One method's figures over a whole run; step means are over every step of every epoch.
#[derive(Clone, Debug, PartialEq)]
pub struct MethodSummary {
    pub method: String,
    pub epochs: usize,
    pub final_test_acc: f64,
    pub best_test_acc: f64,
    pub final_train_loss: f64,
    pub mean_epoch_seconds: f64,
    pub backward_ms: [f64; 2],
    pub forward_ms: [f64; 2],
    pub active: [f64; 2],
    pub kept_bytes: [f64; 2],
}

impl MethodSummary {
    pub fn of_history(method: &str, history: &[EpochRecord]) -> Self {
        let steps: usize = history.iter().map(|r| r.steps).sum();
        let per_step = |field: fn(&EpochRecord) -> [f64; 2]| -> [f64; 2] {
            let mut out = [0.0; 2];
            for r in history {
                let v = field(r);
                for k in 0..2 {
                    out[k] += v[k] * r.steps as f64;
                }
            }
            out.map(|x| x / steps.max(1) as f64)
        };
        let last = history.last();
        Self {
            method: method.to_string(),
            epochs: history.len(),
            final_test_acc: last.map_or(f64::NAN, |r| r.test_acc),
            best_test_acc: history.iter().map(|r| r.test_acc).fold(f64::NAN, f64::max),
            final_train_loss: last.map_or(f64::NAN, |r| r.train_loss),
            mean_epoch_seconds: history.iter().map(|r| r.seconds).sum::<f64>()
                / history.len().max(1) as f64,
            backward_ms: per_step(|r| r.backward_ms),
            forward_ms: per_step(|r| r.forward_ms),
            active: per_step(|r| r.active),
            kept_bytes: per_step(|r| r.kept_bytes),
        }
    }

    pub fn of(run: &MethodRun) -> Self {
        Self::of_history(run.method.name(), &run.history)
    }
}

fn megabytes(bytes: f64) -> String {
    format!("{:.2} MB", bytes / 1e6)
}

/// The summary table (and the sparse-vs-dense line when both ran).
pub fn table(rows: &[MethodSummary]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<8} {:>6} {:>14} {:>13} {:>9} {:>10} {:>10} {:>10} {:>11} {:>11}",
        "method",
        "epochs",
        "final test acc",
        "best test acc",
        "epoch s",
        "L2 bwd ms",
        "active L1",
        "active L2",
        "kept L1",
        "kept L2"
    );
    for r in rows {
        let _ = writeln!(
            out,
            "{:<8} {:>6} {:>13.2}% {:>12.2}% {:>9.2} {:>10.3} {:>9.3}% {:>9.3}% {:>11} {:>11}",
            r.method,
            r.epochs,
            100.0 * r.final_test_acc,
            100.0 * r.best_test_acc,
            r.mean_epoch_seconds,
            r.backward_ms[1],
            100.0 * r.active[0],
            100.0 * r.active[1],
            megabytes(r.kept_bytes[0]),
            megabytes(r.kept_bytes[1]),
        );
    }
    let dense = rows.iter().find(|r| r.method == "dense");
    let sparse = rows.iter().find(|r| r.method == "sparse");
    if let (Some(d), Some(s)) = (dense, sparse) {
        let _ = writeln!(out, "{}", comparison(d, s));
    }
    out
}

/// "sparse vs dense: ..." in one line.
pub fn comparison(dense: &MethodSummary, sparse: &MethodSummary) -> String {
    let fwd_bwd = |r: &MethodSummary| r.forward_ms[1] + r.backward_ms[1];
    format!(
        "sparse vs dense: layer-2 backward {:.2}x faster ({:.3} -> {:.3} ms), layer-2 forward+backward {:.2}x, \
         layer-2 kept memory {:.1}% smaller, final test accuracy {:+.2} points",
        dense.backward_ms[1] / sparse.backward_ms[1],
        dense.backward_ms[1],
        sparse.backward_ms[1],
        fwd_bwd(dense) / fwd_bwd(sparse),
        100.0 * (1.0 - sparse.kept_bytes[1] / dense.kept_bytes[1]),
        100.0 * (sparse.final_test_acc - dense.final_test_acc),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(epoch: usize, test_acc: f64, steps: usize, bwd: f64) -> EpochRecord {
        EpochRecord {
            epoch,
            test_acc,
            steps,
            seconds: 2.0 * epoch as f64,
            backward_ms: [1.0, bwd],
            forward_ms: [1.0, 1.0],
            kept_bytes: [100.0, 100.0 * bwd],
            ..Default::default()
        }
    }

    #[test]
    fn weights_step_means_and_compares() {
        let dense =
            MethodSummary::of_history("dense", &[record(1, 0.5, 1, 10.0), record(2, 0.4, 3, 10.0)]);
        assert_eq!(dense.final_test_acc, 0.4);
        assert_eq!(dense.best_test_acc, 0.5);
        assert_eq!(dense.mean_epoch_seconds, 3.0);
        let sparse =
            MethodSummary::of_history("sparse", &[record(1, 0.6, 1, 1.0), record(2, 0.6, 3, 3.0)]);
        assert_eq!(sparse.backward_ms[1], 2.5, "(1 * 1 + 3 * 3) / 4 steps");
        let text = table(&[dense, sparse]);
        assert!(text.contains("layer-2 backward 4.00x faster"), "{text}");
        assert!(text.contains("+20.00 points"), "{text}");
    }
}
