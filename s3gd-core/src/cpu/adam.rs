//! CPU Adam update in PyTorch's form: p -= (lr / (1 - b1^k)) * m / (sqrt(v) / sqrt(1 - b2^k) + eps).

use rayon::prelude::*;

use crate::network::AdamSpec;
use crate::real::Real;

/// Scalars of one Adam step, computed in f64 once per step.
pub struct AdamScalars {
    pub beta1: f64,
    pub beta2: f64,
    pub step_size: f64,
    pub inv_sqrt_bias2: f64,
    pub eps: f64,
}

impl AdamScalars {
    pub fn new(spec: &AdamSpec, step: u64) -> Self {
        let k = step.min(i32::MAX as u64) as i32;
        let bias1 = 1.0 - spec.beta1.powi(k);
        let bias2 = 1.0 - spec.beta2.powi(k);
        Self {
            beta1: spec.beta1,
            beta2: spec.beta2,
            step_size: spec.learning_rate / bias1,
            inv_sqrt_bias2: 1.0 / bias2.sqrt(),
            eps: spec.eps,
        }
    }
}

pub(super) fn adam<F: Real>(
    param: &mut [F],
    grad: &[F],
    moment1: &mut [F],
    moment2: &mut [F],
    step: u64,
    spec: &AdamSpec,
) {
    let s = AdamScalars::new(spec, step);
    let (b1, b2) = (F::of(s.beta1), F::of(s.beta2));
    let (c1, c2) = (F::of(1.0 - s.beta1), F::of(1.0 - s.beta2));
    let (step_size, inv_sqrt_bias2, eps) =
        (F::of(s.step_size), F::of(s.inv_sqrt_bias2), F::of(s.eps));
    param
        .par_iter_mut()
        .zip(grad)
        .zip(moment1.par_iter_mut().zip(moment2.par_iter_mut()))
        .with_min_len(4096)
        .for_each(|((p, &g), (m, v))| {
            *m = b1 * *m + c1 * g;
            *v = b2 * *v + c2 * (g * g);
            let denom = v.sqrt() * inv_sqrt_bias2 + eps;
            *p -= step_size * (*m / denom);
        });
}
