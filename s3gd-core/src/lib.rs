//! s3gd-core: the paper's feed-forward spiking network, its dense (BPTT) and sparse (S3GD) gradients,
//! the `Backend` trait that a training step runs on, and the CPU reference backend.
//!
//! Invariant: this crate has no GPU dependency at all. GPU backends live in other crates and
//! implement [`backend::Backend`]; the CPU backend here is the oracle they are tested against.

#![deny(unsafe_code)]

pub mod backend;
pub mod calendar;
pub mod cpu;
pub mod error;
pub mod grad;
pub mod lif;
pub mod network;
pub mod preset;
pub mod real;
pub mod spikes;
pub mod synthetic;
pub mod train;

#[cfg(feature = "testing")]
pub mod testing;

pub use backend::{
    Backend, HostTape, LayerOutput, LossOutput, ReadoutSpikeGrad, RegGrad, StepScalars, TapeStats,
};
pub use cpu::{CpuBackend, CpuTensor};
pub use error::{CoreError, Result};
pub use lif::{Keep, LayerSpec, Method, DEFAULT_BAND};
pub use network::{AdamSpec, HostWeights, LossSpec, NetworkConfig, ReadoutSpec};
pub use preset::{DatasetKind, Preset, Readout, WeightInit};
pub use real::Real;
pub use spikes::{SpikeEvents, SpikeEventsBuilder};
pub use train::{EvalReport, HostGradients, LayerReport, StepReport, Trainer, TrainerState};
