//! s3gd-core: the paper's feed-forward spiking network, its dense (BPTT) and sparse (S3GD) gradients,
//! the `Backend` trait that a training step runs on, and the CPU reference backend.
//!
//! Invariant: this crate has no GPU dependency at all. GPU backends live in other crates and
//! implement [`backend::Backend`]; the CPU backend here is the oracle they are tested against.

#![forbid(unsafe_code)]

pub mod error;
pub mod preset;
pub mod spikes;

pub use error::{CoreError, Result};
pub use preset::{DatasetKind, Preset, Readout, WeightInit};
pub use spikes::{SpikeEvents, SpikeEventsBuilder};
