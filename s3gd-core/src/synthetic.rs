//! A small synthetic but learnable spike-timing task: each class is a fixed random firing time per
//! input unit, presented with jitter, dropped spikes and background noise. Used by tests, benches and
//! the training binary's offline smoke mode.

use rand::{Rng, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;

use crate::spikes::{SpikeEvents, SpikeEventsBuilder};

/// The task's definition: one firing-time pattern per class.
#[derive(Clone, Debug)]
pub struct SpikeTimingTask {
    pub classes: usize,
    pub inputs: usize,
    pub steps: usize,
    /// `classes x inputs` firing step of each unit, per class.
    patterns: Vec<usize>,
    /// Largest shift of a spike from its pattern time, in steps.
    pub jitter: usize,
    /// Probability that a pattern spike is dropped.
    pub dropout: f64,
    /// Probability of a background spike per (step, unit).
    pub noise: f64,
}

impl SpikeTimingTask {
    /// Patterns drawn from `seed`; spikes fall in the first 3/4 of the steps.
    pub fn new(classes: usize, inputs: usize, steps: usize, seed: u64) -> Self {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
        let window = (steps * 3 / 4).max(1);
        let patterns = (0..classes * inputs)
            .map(|_| rng.random_range(0..window))
            .collect();
        Self {
            classes,
            inputs,
            steps,
            patterns,
            jitter: 2,
            dropout: 0.1,
            noise: 0.002,
        }
    }

    /// `count` samples with random classes, drawn from `seed`: (spikes, labels).
    pub fn batch(&self, count: usize, seed: u64) -> (SpikeEvents, Vec<u32>) {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
        let mut builder = SpikeEventsBuilder::new(self.steps, self.inputs);
        let mut labels = Vec::with_capacity(count);
        let mut events = Vec::new();
        for _ in 0..count {
            let class = rng.random_range(0..self.classes);
            labels.push(class as u32);
            events.clear();
            for unit in 0..self.inputs {
                if !rng.random_bool(self.dropout) {
                    let base = self.patterns[class * self.inputs + unit] as i64;
                    let shift = rng.random_range(-(self.jitter as i64)..=self.jitter as i64);
                    let t = (base + shift).clamp(0, self.steps as i64 - 1) as usize;
                    events.push((t, unit as u32));
                }
            }
            for t in 0..self.steps {
                for unit in 0..self.inputs {
                    if rng.random_bool(self.noise) {
                        events.push((t, unit as u32));
                    }
                }
            }
            builder
                .push_sample(events.iter().copied())
                .expect("generated events are in range");
        }
        (builder.finish(), labels)
    }
}
