//! Inputs for the layer benchmarks: the three dataset shapes, their input spikes (real
//! Fashion-MNIST, or synthetic spike trains for the N-MNIST and SHD shapes), and weights scaled so
//! that about 1% of a hidden layer's B x T x N entries lie in the band, as the paper measured.
//!
//! Invariant: everything here is deterministic for a given seed, so every device and method of a
//! run sees the same spikes and weights.

use anyhow::{Context, Result};
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Normal};
use rand_xoshiro::Xoshiro256PlusPlus;

use s3gd_core::{
    Backend, DatasetKind, Keep, LayerOutput, LayerSpec, NetworkConfig, SpikeEvents,
    SpikeEventsBuilder, WeightInit,
};

/// The fraction of B x T x N entries in the band that the weights are scaled for.
pub const TARGET_ACTIVE: f64 = 0.01;

/// One dataset's layer shapes (SPEC section 1) and where its input spikes come from.
#[derive(Clone, Copy, Debug)]
pub struct DatasetShape {
    pub kind: DatasetKind,
    /// Input units N_in.
    pub inputs: usize,
    /// Time steps T.
    pub steps: usize,
    /// Leak of the hidden layers.
    pub beta: f64,
    pub init: WeightInit,
    /// Spike probability per (step, input unit) of the synthetic trains; `None`: real
    /// Fashion-MNIST spikes.
    pub synthetic_rate: Option<f64>,
}

impl DatasetShape {
    /// Fashion-MNIST (784 / 100, real spikes), N-MNIST (1156 / 300) and SHD (700 / 500), the last two
    /// with synthetic 0/1 spike trains. Their rates are rough stand-ins for the real recordings
    /// (an N-MNIST digit has a few thousand events over 300 ms on 1156 merged pixels, about 1.2% of
    /// unit-steps; an SHD utterance some 8,000-9,000 spikes over 500 steps on 700 channels, about
    /// 2.5%); the weights, not the rates, set the active fraction.
    pub fn all() -> [DatasetShape; 3] {
        [
            Self::of(DatasetKind::Fmnist, None),
            Self::of(DatasetKind::Nmnist, Some(0.012)),
            Self::of(DatasetKind::Shd, Some(0.025)),
        ]
    }

    fn of(kind: DatasetKind, synthetic_rate: Option<f64>) -> Self {
        let preset = kind.preset();
        let config = NetworkConfig::from_preset(&preset, preset.hidden);
        DatasetShape {
            kind,
            inputs: preset.inputs,
            steps: preset.steps,
            beta: config.beta,
            init: preset.init,
            synthetic_rate,
        }
    }

    /// The spec of a layer of `neurons` fed by `inputs` units.
    pub fn layer(&self, inputs: usize, neurons: usize) -> LayerSpec {
        LayerSpec {
            inputs,
            neurons,
            beta: self.beta,
        }
    }

    /// Where the input spikes come from, in words.
    pub fn source(&self) -> String {
        match self.synthetic_rate {
            Some(rate) => format!("synthetic 0/1 spikes at {:.1}% per unit-step", 100.0 * rate),
            None => "real Fashion-MNIST spikes (time to first spike)".into(),
        }
    }
}

/// `batch` samples of input spikes for `shape`, and a line saying where they came from.
pub fn input_spikes(
    shape: &DatasetShape,
    batch: usize,
    seed: u64,
) -> Result<(SpikeEvents, String)> {
    match shape.synthetic_rate {
        Some(rate) => {
            let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
            let mut builder = SpikeEventsBuilder::new(shape.steps, shape.inputs);
            for _ in 0..batch {
                let mut events = Vec::new();
                for t in 0..shape.steps {
                    for u in 0..shape.inputs {
                        if rng.random_bool(rate) {
                            events.push((t, u as u32));
                        }
                    }
                }
                builder.push_sorted_sample(events)?;
            }
            Ok((builder.finish(), shape.source()))
        }
        None => {
            let dir = s3gd_data::default_data_dir();
            let splits = s3gd_data::load(shape.kind, &dir)
                .with_context(|| format!("loading {} from {}", shape.kind, dir.display()))?;
            let mut indices: Vec<usize> = splits
                .train
                .train_batches(splits.train.len(), seed, 0)
                .into_iter()
                .flatten()
                .collect();
            anyhow::ensure!(
                indices.len() >= batch,
                "{} has {} training samples, fewer than a batch of {batch}",
                splits.source,
                indices.len()
            );
            indices.truncate(batch);
            let (spikes, _labels) = splits.train.batch(&indices);
            Ok((spikes, format!("{} ({})", shape.source(), splits.source)))
        }
    }
}

/// Weights `fan_in x neurons` drawn from the dataset's initialisation (SPEC section 1), times
/// `scale`.
pub fn init_weights(
    shape: &DatasetShape,
    fan_in: usize,
    neurons: usize,
    scale: f64,
    seed: u64,
) -> Vec<f32> {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
    let fan = fan_in as f64;
    match shape.init {
        WeightInit::NormalLeakScaled { scale: paper } => {
            let sd = (scale * paper * (1.0 - shape.beta) / fan.sqrt()).max(0.0);
            let normal = Normal::new(0.0, sd).expect("a finite non-negative deviation");
            (0..fan_in * neurons)
                .map(|_| normal.sample(&mut rng) as f32)
                .collect()
        }
        WeightInit::UniformFanIn => {
            let bound = scale / fan.sqrt();
            (0..fan_in * neurons)
                .map(|_| rng.random_range(-bound..=bound) as f32)
                .collect()
        }
    }
}

/// A layer's forward pass, run again when a backend with a fixed-capacity sparse tape reports that
/// it ran out of room (it grows the tape first).
pub fn forward_checked<B: Backend>(
    backend: &B,
    input: &B::Spikes,
    weights: &B::Tensor,
    layer: &LayerSpec,
    keep: Keep,
) -> Result<LayerOutput<B>> {
    let out = backend.lif_forward(input, weights, layer, keep)?;
    if backend.tape_stats(&out.tape)?.overflowed {
        drop(out);
        return Ok(backend.lif_forward(input, weights, layer, keep)?);
    }
    Ok(out)
}

/// Fraction of a layer's B x T x N entries that its sparse tape holds.
pub fn active_fraction<B: Backend>(backend: &B, out: &LayerOutput<B>) -> Result<f64> {
    let stats = backend.tape_stats(&out.tape)?;
    Ok(stats.active_fraction())
}

/// A layer's weights scaled so that about `TARGET_ACTIVE` of its entries lie in the band.
pub struct Calibrated {
    pub weights: Vec<f32>,
    /// Factor on the dataset's initialisation.
    pub scale: f64,
    /// Active fraction on the calibration input.
    pub active: f64,
}

/// Finds the scale of the dataset's initialisation that puts about `TARGET_ACTIVE` of the layer's
/// entries in the band (within a factor 1.25 either way): steps of sqrt(2) from 1 toward the
/// target, then bisection (on a log scale) between the two scales that straddle it. The fraction
/// grows with the scale only up to a peak (large weights make the membrane jump across the band),
/// so a search upward that passes the peak stops there; without a scale in [1/64, 1024] that
/// reaches the target, the closest one is kept.
pub fn calibrate<B: Backend>(
    backend: &B,
    input: &B::Spikes,
    shape: &DatasetShape,
    layer: &LayerSpec,
    band: f64,
    seed: u64,
) -> Result<Calibrated> {
    let keep = Keep::Sparse { band };
    let measure = |scale: f64| -> Result<(f64, Vec<f32>)> {
        let weights = init_weights(shape, layer.inputs, layer.neurons, scale, seed);
        let device = backend.upload(&weights)?;
        let out = forward_checked(backend, input, &device, layer, keep)?;
        Ok((active_fraction(backend, &out)?, weights))
    };
    let miss = |active: f64| (active.max(1e-12) / TARGET_ACTIVE).ln().abs();
    let close = |active: f64| miss(active) <= 1.25f64.ln();
    let mut best = Calibrated {
        weights: Vec::new(),
        scale: 1.0,
        active: 0.0,
    };
    let mut consider = |scale: f64, active: f64, weights: Vec<f32>| {
        if best.weights.is_empty() || miss(active) < miss(best.active) {
            best = Calibrated {
                weights,
                scale,
                active,
            };
        }
    };
    let (mut scale, step) = (1.0f64, 2f64.sqrt());
    let (first, weights) = measure(scale)?;
    consider(scale, first, weights);
    if close(first) {
        return Ok(best);
    }
    let upward = first < TARGET_ACTIVE;
    let mut previous = (scale, first);
    while (1.0 / 64.0..=1024.0).contains(&scale) {
        scale = if upward { scale * step } else { scale / step };
        let (active, weights) = measure(scale)?;
        consider(scale, active, weights);
        if close(active) {
            break;
        }
        if (active < TARGET_ACTIVE) != upward {
            // Straddled: bisect between the previous scale and this one.
            let (mut below, mut above) = if upward {
                (previous.0, scale)
            } else {
                (scale, previous.0)
            };
            for _ in 0..6 {
                let middle = (below * above).sqrt();
                let (active, weights) = measure(middle)?;
                consider(middle, active, weights);
                if close(active) {
                    break;
                }
                if active < TARGET_ACTIVE {
                    below = middle;
                } else {
                    above = middle;
                }
            }
            break;
        }
        if upward && active < previous.1 {
            break; // past the peak without reaching the target
        }
        previous = (scale, active);
    }
    Ok(best)
}
