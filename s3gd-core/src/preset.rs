//! The paper's per-dataset hyperparameters (SPEC section 1), in one place: fmnist, nmnist, shd.

use serde::{Deserialize, Serialize};

use crate::error::{CoreError, Result};

/// How the output layer turns its trace into logits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Readout {
    /// Logits are the maximum over time of the readout trace (the paper's default).
    Max,
    /// Logits are the sum over time of the readout trace (the reference's later SHD runs).
    Sum,
}

impl std::str::FromStr for Readout {
    type Err = CoreError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "max" => Ok(Readout::Max),
            "sum" => Ok(Readout::Sum),
            _ => Err(CoreError::Config {
                name: "readout",
                value: s.into(),
                why: "expected max or sum",
            }),
        }
    }
}

impl std::fmt::Display for Readout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Readout::Max => "max",
            Readout::Sum => "sum",
        })
    }
}

/// Weight initialisation of all three weight matrices.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WeightInit {
    /// Normal(0, sd = scale * (1 - beta) / sqrt(fan_in)), beta of the hidden layers (Fashion-MNIST: scale 20).
    NormalLeakScaled { scale: f64 },
    /// Uniform(-1/sqrt(fan_in), +1/sqrt(fan_in)).
    UniformFanIn,
}

/// The dataset a preset belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DatasetKind {
    Fmnist,
    Nmnist,
    Shd,
}

impl DatasetKind {
    pub const ALL: [DatasetKind; 3] = [DatasetKind::Fmnist, DatasetKind::Nmnist, DatasetKind::Shd];

    pub fn name(self) -> &'static str {
        match self {
            DatasetKind::Fmnist => "fmnist",
            DatasetKind::Nmnist => "nmnist",
            DatasetKind::Shd => "shd",
        }
    }

    /// The paper's hyperparameters for this dataset.
    pub fn preset(self) -> Preset {
        match self {
            DatasetKind::Fmnist => Preset::FMNIST,
            DatasetKind::Nmnist => Preset::NMNIST,
            DatasetKind::Shd => Preset::SHD,
        }
    }
}

impl std::str::FromStr for DatasetKind {
    type Err = CoreError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "fmnist" | "fashion-mnist" => Ok(DatasetKind::Fmnist),
            "nmnist" | "n-mnist" => Ok(DatasetKind::Nmnist),
            "shd" => Ok(DatasetKind::Shd),
            _ => Err(CoreError::Config {
                name: "dataset",
                value: s.into(),
                why: "expected fmnist, nmnist or shd",
            }),
        }
    }
}

impl std::fmt::Display for DatasetKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// One dataset's hyperparameters, exactly as SPEC section 1 gives them.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Preset {
    pub dataset: DatasetKind,
    /// Time steps T.
    pub steps: usize,
    /// Step length in seconds.
    pub dt: f64,
    /// Membrane time constant of the hidden layers, seconds.
    pub tau_mem: f64,
    /// Time constant of the readout, seconds.
    pub tau_readout: f64,
    pub inputs: usize,
    pub classes: usize,
    pub learning_rate: f64,
    pub init: WeightInit,
    /// f_up of the upper spike-count regulariser.
    pub max_rate: f64,
    /// The paper's hidden size per layer.
    pub hidden: usize,
    pub readout: Readout,
    pub batch_size: usize,
    /// The paper's epoch count.
    pub epochs: usize,
}

impl Preset {
    pub const FMNIST: Preset = Preset {
        dataset: DatasetKind::Fmnist,
        steps: 100,
        dt: 1e-3,
        tau_mem: 10e-3,
        tau_readout: 10e-3,
        inputs: 784,
        classes: 10,
        learning_rate: 2e-4,
        init: WeightInit::NormalLeakScaled { scale: 20.0 },
        max_rate: 1.0,
        hidden: 200,
        readout: Readout::Max,
        batch_size: 256,
        epochs: 100,
    };
    pub const NMNIST: Preset = Preset {
        dataset: DatasetKind::Nmnist,
        steps: 300,
        dt: 1e-3,
        tau_mem: 10e-3,
        tau_readout: 10e-3,
        inputs: 1156,
        classes: 10,
        learning_rate: 2e-4,
        init: WeightInit::UniformFanIn,
        max_rate: 1.0,
        hidden: 200,
        readout: Readout::Max,
        batch_size: 256,
        epochs: 100,
    };
    pub const SHD: Preset = Preset {
        dataset: DatasetKind::Shd,
        steps: 500,
        dt: 2e-3,
        tau_mem: 10e-3,
        tau_readout: 20e-3,
        inputs: 700,
        classes: 20,
        learning_rate: 1e-3,
        init: WeightInit::UniformFanIn,
        max_rate: 10.0,
        hidden: 200,
        readout: Readout::Max,
        batch_size: 256,
        epochs: 200,
    };

    /// Leak factor of the hidden layers, exp(-dt / tau_mem).
    pub fn beta(&self) -> f64 {
        (-self.dt / self.tau_mem).exp()
    }

    /// Leak factor of the readout, exp(-dt / tau_readout).
    pub fn beta_readout(&self) -> f64 {
        (-self.dt / self.tau_readout).exp()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leak_factors_match_the_spec_table() {
        assert!((Preset::FMNIST.beta() - 0.9048).abs() < 1e-4);
        assert!((Preset::SHD.beta() - 0.8187).abs() < 1e-4);
        assert!((Preset::SHD.beta_readout() - 0.9048).abs() < 1e-4);
        for kind in DatasetKind::ALL {
            assert_eq!(kind.preset().dataset, kind);
            assert_eq!(kind.name().parse::<DatasetKind>().unwrap(), kind);
        }
    }
}
