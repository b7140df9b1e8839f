//! LIF parameters and the per-step math shared by every backend: the membrane update, the spike
//! rule, the surrogate derivative and the active band.
//!
//! The membrane update is `v' = (beta * v + current) - s` evaluated with separate roundings (no fused
//! multiply-add) so that a GPU twin written with `__fmul_rn` / `__fadd_rn` reproduces it bit for bit.

use serde::{Deserialize, Serialize};

use crate::error::{CoreError, Result};
use crate::real::Real;

/// Firing threshold theta of every hidden neuron.
pub const THRESHOLD: f64 = 1.0;
/// Steepness of the surrogate derivative 1 / (100 |V - theta| + 1)^2.
pub const SURROGATE_STEEPNESS: f64 = 100.0;
/// The paper's default half-width h of the active band (b_th = theta - h = 0.8 in its code).
pub const DEFAULT_BAND: f64 = 0.2;

/// One membrane step: leak, integrate, subtract the previous spike (reset by theta = 1).
#[inline(always)]
pub fn membrane_step<F: Real>(v: F, current: F, spike: F, beta: F) -> F {
    (beta * v + current) - spike
}

/// The spike rule H(V - theta), strict: V exactly at threshold does not spike.
#[inline(always)]
pub fn fires<F: Real>(v: F) -> bool {
    v > F::one()
}

/// Surrogate derivative sigma'(V) written in terms of V - theta.
#[inline(always)]
pub fn surrogate_of_offset<F: Real>(v_minus_theta: F) -> F {
    let x = F::of(SURROGATE_STEEPNESS) * v_minus_theta.abs() + F::one();
    F::one() / (x * x)
}

/// Whether V - theta lies inside the active band |V - theta| < h.
#[inline(always)]
pub fn in_band<F: Real>(v_minus_theta: F, band: F) -> bool {
    v_minus_theta.abs() < band
}

/// Which gradient a training step computes.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "method", rename_all = "lowercase")]
pub enum Method {
    /// Plain BPTT with the full surrogate.
    Dense,
    /// S3GD: the backward pass only over entries with |V - theta| < band.
    Sparse { band: f64 },
}

impl Method {
    pub fn name(&self) -> &'static str {
        match self {
            Method::Dense => "dense",
            Method::Sparse { .. } => "sparse",
        }
    }

    /// What each hidden layer keeps for backward under this method.
    pub fn keep(&self) -> Keep {
        match *self {
            Method::Dense => Keep::Dense { band: None },
            Method::Sparse { band } => Keep::Sparse { band },
        }
    }

    pub fn validate(&self) -> Result<()> {
        if let Method::Sparse { band } = *self {
            check_band(band)?;
        }
        Ok(())
    }
}

/// What a LIF layer's forward pass keeps for its backward pass.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Keep {
    /// Inference: nothing.
    Nothing,
    /// The whole membrane record; with `band`, the backward zeroes the surrogate outside it
    /// (dense-with-truncated-surrogate, the exact twin of the sparse gradient).
    Dense { band: Option<f64> },
    /// Only the entries with |V - theta| < band, as (index, V - theta).
    Sparse { band: f64 },
}

impl Keep {
    pub fn validate(&self) -> Result<()> {
        match *self {
            Keep::Dense { band: Some(h) } | Keep::Sparse { band: h } => check_band(h),
            _ => Ok(()),
        }
    }
}

fn check_band(band: f64) -> Result<()> {
    if band.is_finite() && band > 0.0 {
        Ok(())
    } else {
        Err(CoreError::Config {
            name: "band",
            value: band.to_string(),
            why: "the band half-width h must be a positive finite number",
        })
    }
}

/// Shape and leak of one LIF layer.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct LayerSpec {
    pub inputs: usize,
    pub neurons: usize,
    pub beta: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn surrogate_peaks_at_threshold_and_decays() {
        assert_eq!(surrogate_of_offset(0.0f64), 1.0);
        assert!((surrogate_of_offset(0.01f64) - 0.25).abs() < 1e-15);
        assert!((surrogate_of_offset(-0.01f64) - 0.25).abs() < 1e-15);
        assert!(in_band(0.19f64, 0.2) && !in_band(0.2f64, 0.2) && !in_band(-0.2f64, 0.2));
        assert!(!fires(1.0f32) && fires(1.0f32 + f32::EPSILON));
        assert!(Method::Sparse { band: 0.0 }.validate().is_err());
        assert!(Method::Sparse { band: f64::NAN }.validate().is_err());
    }
}
