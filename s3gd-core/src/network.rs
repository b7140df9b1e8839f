//! The network of SPEC section 1: shapes, the readout, the loss with its two spike-count
//! regularisers, Adam's settings, and the host copy of the weights with the paper's initialisations.

use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Normal};
use rand_xoshiro::Xoshiro256PlusPlus;
use serde::{Deserialize, Serialize};

use crate::error::{CoreError, Result};
use crate::lif::LayerSpec;
use crate::preset::{Preset, Readout, WeightInit};

/// The readout: leak and how logits are taken from its trace.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReadoutSpec {
    pub inputs: usize,
    pub classes: usize,
    pub beta: f64,
    pub mode: Readout,
}

/// The loss: cross-entropy plus, on each hidden layer, the paper's two spike-count regularisers.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct LossSpec {
    /// Weight of the upper regulariser relu(mean spikes per neuron - max_rate) (paper: 0.06).
    pub upper_weight: f64,
    /// f_up: spikes per neuron per sample above which the upper regulariser acts.
    pub max_rate: f64,
    /// Weight of the lower regulariser, divided by N (paper: 100 / N).
    pub lower_weight: f64,
    /// Spike count per neuron below which the lower regulariser acts (paper: 1e-3).
    pub min_count: f64,
}

impl LossSpec {
    pub fn paper(max_rate: f64) -> Self {
        Self {
            upper_weight: 0.06,
            max_rate,
            lower_weight: 100.0,
            min_count: 1e-3,
        }
    }

    /// No regularisers: cross-entropy alone.
    pub fn cross_entropy_only() -> Self {
        Self {
            upper_weight: 0.0,
            max_rate: 0.0,
            lower_weight: 0.0,
            min_count: 0.0,
        }
    }
}

/// Adam's settings (PyTorch's form of the update).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct AdamSpec {
    pub learning_rate: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
}

impl AdamSpec {
    pub fn paper(learning_rate: f64) -> Self {
        Self {
            learning_rate,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
        }
    }
}

/// Everything that fixes the network's function and its training step, except the gradient method.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct NetworkConfig {
    pub inputs: usize,
    pub hidden: usize,
    pub classes: usize,
    pub steps: usize,
    /// Leak of both hidden layers.
    pub beta: f64,
    pub readout: ReadoutSpec,
    pub loss: LossSpec,
    pub adam: AdamSpec,
}

impl NetworkConfig {
    /// The paper's network for a dataset preset, with `hidden` neurons per layer.
    pub fn from_preset(preset: &Preset, hidden: usize) -> Self {
        Self {
            inputs: preset.inputs,
            hidden,
            classes: preset.classes,
            steps: preset.steps,
            beta: preset.beta(),
            readout: ReadoutSpec {
                inputs: hidden,
                classes: preset.classes,
                beta: preset.beta_readout(),
                mode: preset.readout,
            },
            loss: LossSpec::paper(preset.max_rate),
            adam: AdamSpec::paper(preset.learning_rate),
        }
    }

    pub fn layer1(&self) -> LayerSpec {
        LayerSpec {
            inputs: self.inputs,
            neurons: self.hidden,
            beta: self.beta,
        }
    }

    pub fn layer2(&self) -> LayerSpec {
        LayerSpec {
            inputs: self.hidden,
            neurons: self.hidden,
            beta: self.beta,
        }
    }

    /// Element counts of W1 [inputs x hidden], W2 [hidden x hidden], W3 [hidden x classes].
    pub fn weight_lens(&self) -> [usize; 3] {
        [
            self.inputs * self.hidden,
            self.hidden * self.hidden,
            self.hidden * self.classes,
        ]
    }

    pub fn validate(&self) -> Result<()> {
        let positive = |name: &'static str, v: usize| {
            if v == 0 {
                Err(CoreError::Config {
                    name,
                    value: "0".into(),
                    why: "must be at least 1",
                })
            } else {
                Ok(())
            }
        };
        positive("inputs", self.inputs)?;
        positive("hidden", self.hidden)?;
        positive("classes", self.classes)?;
        positive("steps", self.steps)?;
        let leak = |name: &'static str, v: f64| {
            if v.is_finite() && (0.0..1.0).contains(&v) {
                Ok(())
            } else {
                Err(CoreError::Config {
                    name,
                    value: v.to_string(),
                    why: "a leak factor must lie in [0, 1)",
                })
            }
        };
        leak("beta", self.beta)?;
        leak("beta_readout", self.readout.beta)?;
        if self.readout.inputs != self.hidden || self.readout.classes != self.classes {
            return Err(crate::error::shape_err(
                "NetworkConfig",
                (self.hidden, self.classes),
                (self.readout.inputs, self.readout.classes),
            ));
        }
        let lr = self.adam.learning_rate;
        if !(lr.is_finite() && lr > 0.0) {
            return Err(CoreError::Config {
                name: "learning_rate",
                value: lr.to_string(),
                why: "must be a positive finite number",
            });
        }
        Ok(())
    }
}

/// Host copy of the three weight matrices, row-major: W1 [inputs x hidden], W2 [hidden x hidden],
/// W3 [hidden x classes].
#[derive(Clone, Debug, PartialEq)]
pub struct HostWeights {
    pub w1: Vec<f32>,
    pub w2: Vec<f32>,
    pub w3: Vec<f32>,
}

impl HostWeights {
    /// The paper's initialisation, drawn from `seed`; W1, W2 and W3 in that order from one stream.
    pub fn init(config: &NetworkConfig, init: WeightInit, seed: u64) -> Self {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
        let fans = [config.inputs, config.hidden, config.hidden];
        let lens = config.weight_lens();
        let mut draw = |fan_in: usize, len: usize| -> Vec<f32> {
            let fan = fan_in as f64;
            match init {
                WeightInit::NormalLeakScaled { scale } => {
                    let sd = scale * (1.0 - config.beta) / fan.sqrt();
                    // sd is finite and non-negative for a validated config.
                    let normal = Normal::new(0.0, sd.max(0.0)).unwrap_or_else(|_| {
                        Normal::new(0.0, 0.0).expect("a zero standard deviation is valid")
                    });
                    (0..len).map(|_| normal.sample(&mut rng) as f32).collect()
                }
                WeightInit::UniformFanIn => {
                    let bound = 1.0 / fan.sqrt();
                    (0..len)
                        .map(|_| rng.random_range(-bound..=bound) as f32)
                        .collect()
                }
            }
        };
        let w1 = draw(fans[0], lens[0]);
        let w2 = draw(fans[1], lens[1]);
        let w3 = draw(fans[2], lens[2]);
        Self { w1, w2, w3 }
    }

    pub fn as_array(&self) -> [&[f32]; 3] {
        [&self.w1, &self.w2, &self.w3]
    }

    pub fn check(&self, config: &NetworkConfig) -> Result<()> {
        let lens = config.weight_lens();
        for (name, (w, want)) in ["w1", "w2", "w3"]
            .into_iter()
            .zip(self.as_array().into_iter().zip(lens))
        {
            if w.len() != want {
                return Err(CoreError::Shape {
                    op: "HostWeights",
                    expected: format!("{name} with {want} elements"),
                    got: format!("{} elements", w.len()),
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paper_init_has_the_stated_spread() {
        let config = NetworkConfig::from_preset(&Preset::FMNIST, 200);
        config.validate().unwrap();
        let w = HostWeights::init(&config, Preset::FMNIST.init, 7);
        w.check(&config).unwrap();
        let sd_want = 20.0 * (1.0 - config.beta) / (784f64).sqrt();
        let n = w.w1.len() as f64;
        let sd = (w.w1.iter().map(|&x| (x as f64).powi(2)).sum::<f64>() / n).sqrt();
        assert!((sd / sd_want - 1.0).abs() < 0.02, "{sd} vs {sd_want}");
        let u = HostWeights::init(&config, WeightInit::UniformFanIn, 7);
        let bound = 1.0 / (200f32).sqrt();
        assert!(u.w2.iter().all(|&x| x.abs() <= bound));
        assert_eq!(HostWeights::init(&config, Preset::FMNIST.init, 7), w);
    }
}
