//! The typed errors of s3gd-core: shape mismatches, empty batches, non-finite losses, device failures.

use thiserror::Error;

/// Everything that can go wrong in the engine. Backends turn their own failures into `Device`.
#[derive(Debug, Error)]
pub enum CoreError {
    #[error("shape mismatch in {op}: expected {expected}, got {got}")]
    Shape {
        op: &'static str,
        expected: String,
        got: String,
    },
    #[error("empty batch in {op}: a batch needs at least one sample and one time step")]
    EmptyBatch { op: &'static str },
    #[error("invalid spike data: {0}")]
    Spikes(String),
    #[error("invalid setting {name} = {value}: {why}")]
    Config {
        name: &'static str,
        value: String,
        why: &'static str,
    },
    #[error("label {label} of sample {sample} is out of range for {classes} classes")]
    Label {
        sample: usize,
        label: u32,
        classes: usize,
    },
    #[error("non-finite loss {value} at step {step} (cross-entropy {cross_entropy}, regularisers {regularisers})")]
    NonFiniteLoss {
        step: u64,
        value: f64,
        cross_entropy: f64,
        regularisers: f64,
    },
    #[error("tape mismatch in {op}: {why}")]
    Tape { op: &'static str, why: String },
    #[error("device error: {0}")]
    Device(#[source] Box<dyn std::error::Error + Send + Sync + 'static>),
}

/// The result type of s3gd-core.
pub type Result<T, E = CoreError> = std::result::Result<T, E>;

/// A shape-mismatch error with the op name and both shapes printed.
pub(crate) fn shape_err(
    op: &'static str,
    expected: impl std::fmt::Debug,
    got: impl std::fmt::Debug,
) -> CoreError {
    CoreError::Shape {
        op,
        expected: format!("{expected:?}"),
        got: format!("{got:?}"),
    }
}
