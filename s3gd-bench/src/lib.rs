//! Measurement helpers shared by the s3gd benchmarks: timed training steps and epochs on any
//! backend, medians, and the tables they print; inputs and calibrated weights for the layer
//! benchmarks (`fixtures`), their result files (`report`), and the issues' targets with their
//! reference figures (`targets`).

use std::time::Instant;

pub mod fixtures;
pub mod report;
pub mod targets;

use s3gd_core::{Backend, SpikeEvents, StepReport, Trainer};
use s3gd_kernels::InputGradPath;

/// The names of the sparse dS_in paths the benchmarks accept (`auto`: the backend's cost model).
pub const INPUT_GRAD_NAMES: [&str; 5] = ["auto", "pairs", "sampled", "gemm", "tiled"];

/// The dS_in path a benchmark forces for `name` (one of `INPUT_GRAD_NAMES`): `Ok(None)` for `auto`,
/// an error naming the accepted names otherwise.
pub fn input_grad_path(name: &str) -> anyhow::Result<Option<InputGradPath>> {
    Ok(match name {
        "auto" => None,
        "pairs" => Some(InputGradPath::Pairs),
        "sampled" => Some(InputGradPath::Sampled),
        "gemm" => Some(InputGradPath::Gemm),
        "tiled" => Some(InputGradPath::Tiled),
        other => anyhow::bail!(
            "unknown dS_in path {other:?}: expected one of {}",
            INPUT_GRAD_NAMES.join(", ")
        ),
    })
}

/// Median of a list of samples (NaN for an empty list).
pub fn median(values: &[f64]) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let mid = v.len() / 2;
    if v.len() % 2 == 1 {
        v[mid]
    } else {
        0.5 * (v[mid - 1] + v[mid])
    }
}

/// Medians over timed training steps.
#[derive(Clone, Debug, Default)]
pub struct StepSummary {
    pub steps: usize,
    /// Wall-clock milliseconds of a whole step (upload, forward, loss, backward, Adam, stats).
    pub step_ms: f64,
    pub forward_ms: [f64; 2],
    pub backward_ms: [f64; 2],
    pub readout_ms: f64,
    pub adam_ms: f64,
    pub active_fraction: [f64; 2],
    /// Spikes over all B x T x N entries of each layer.
    pub spike_fraction: [f64; 2],
    pub kept_bytes: [f64; 2],
    /// Wall-clock milliseconds of the first step (compilation, allocation), not in the medians.
    pub first_step_ms: f64,
}

/// Runs `warmup` untimed steps, then `iters` timed steps cycling over `batches`.
pub fn time_steps<B: Backend>(
    backend: &B,
    trainer: &mut Trainer<B>,
    batches: &[(SpikeEvents, Vec<u32>)],
    warmup: usize,
    iters: usize,
) -> s3gd_core::Result<StepSummary> {
    let mut reports: Vec<(f64, StepReport)> = Vec::with_capacity(iters);
    let mut first_step_ms = f64::NAN;
    for k in 0..warmup + iters {
        let (x, y) = &batches[k % batches.len()];
        let start = Instant::now();
        let report = trainer.step(backend, x, y)?;
        let ms = start.elapsed().as_secs_f64() * 1e3;
        if k == 0 {
            first_step_ms = ms;
        }
        if k >= warmup {
            reports.push((ms, report));
        }
    }
    let col =
        |f: &dyn Fn(&(f64, StepReport)) -> f64| median(&reports.iter().map(f).collect::<Vec<_>>());
    Ok(StepSummary {
        steps: reports.len(),
        step_ms: col(&|r| r.0),
        forward_ms: [
            col(&|r| r.1.layers[0].forward_ms),
            col(&|r| r.1.layers[1].forward_ms),
        ],
        backward_ms: [
            col(&|r| r.1.layers[0].backward_ms),
            col(&|r| r.1.layers[1].backward_ms),
        ],
        readout_ms: col(&|r| r.1.readout_ms),
        adam_ms: col(&|r| r.1.adam_ms),
        active_fraction: [
            col(&|r| r.1.layers[0].active_fraction()),
            col(&|r| r.1.layers[1].active_fraction()),
        ],
        spike_fraction: [
            col(&|r| r.1.layers[0].spike_fraction()),
            col(&|r| r.1.layers[1].spike_fraction()),
        ],
        kept_bytes: [
            col(&|r| r.1.layers[0].kept_bytes as f64),
            col(&|r| r.1.layers[1].kept_bytes as f64),
        ],
        first_step_ms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_input_grad_name_parses_and_others_are_refused() {
        let parsed: Vec<_> = INPUT_GRAD_NAMES
            .iter()
            .map(|name| input_grad_path(name).unwrap())
            .collect();
        assert_eq!(
            parsed,
            [
                None,
                Some(InputGradPath::Pairs),
                Some(InputGradPath::Sampled),
                Some(InputGradPath::Gemm),
                Some(InputGradPath::Tiled),
            ]
        );
        let refused = input_grad_path("tiles").unwrap_err().to_string();
        assert!(
            refused.contains("\"tiles\"") && refused.contains("pairs, sampled"),
            "{refused}"
        );
    }
}
