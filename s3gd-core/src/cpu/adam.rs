//! CPU Adam update in PyTorch's form: p -= (lr / (1 - b1^k)) * m / (sqrt(v) / sqrt(1 - b2^k) + eps).
//!
//! The element loop runs on plain slices per rayon task so that it vectorises, with an AVX2 copy
//! used when the CPU has AVX2; square roots and divisions are correctly rounded at any width, so
//! every copy gives the same bits.

use rayon::prelude::*;

use crate::cpu::avx2_available;
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
    let scalars = ElementScalars {
        b1: F::of(s.beta1),
        b2: F::of(s.beta2),
        c1: F::of(1.0 - s.beta1),
        c2: F::of(1.0 - s.beta2),
        step_size: F::of(s.step_size),
        inv_sqrt_bias2: F::of(s.inv_sqrt_bias2),
        eps: F::of(s.eps),
    };
    let avx2 = avx2_available();
    // Plain slices per task, so the element loop vectorises (square roots and divisions included).
    const CHUNK: usize = 16384;
    param
        .par_chunks_mut(CHUNK)
        .zip(grad.par_chunks(CHUNK))
        .zip(
            moment1
                .par_chunks_mut(CHUNK)
                .zip(moment2.par_chunks_mut(CHUNK)),
        )
        .for_each(|((p, g), (m, v))| update(&scalars, p, g, m, v, avx2));
}

/// The per-element constants of one step, in the parameters' precision.
struct ElementScalars<F> {
    b1: F,
    b2: F,
    c1: F,
    c2: F,
    step_size: F,
    inv_sqrt_bias2: F,
    eps: F,
}

#[inline(always)]
fn update_body<F: Real>(s: &ElementScalars<F>, p: &mut [F], g: &[F], m: &mut [F], v: &mut [F]) {
    for (((p, &g), m), v) in p.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
        *m = s.b1 * *m + s.c1 * g;
        *v = s.b2 * *v + s.c2 * (g * g);
        let denom = v.sqrt() * s.inv_sqrt_bias2 + s.eps;
        *p -= s.step_size * (*m / denom);
    }
}

/// `update_body` compiled for AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn update_avx2<F: Real>(s: &ElementScalars<F>, p: &mut [F], g: &[F], m: &mut [F], v: &mut [F]) {
    update_body(s, p, g, m, v)
}

/// One chunk of the update, with the AVX2 copy when `avx2`: the same IEEE operations per element
/// (square root and division are correctly rounded at any width), so the same bits.
#[allow(unsafe_code)]
fn update<F: Real>(
    s: &ElementScalars<F>,
    p: &mut [F],
    g: &[F],
    m: &mut [F],
    v: &mut [F],
    avx2: bool,
) {
    #[cfg(target_arch = "x86_64")]
    if avx2 {
        // SAFETY: `avx2` comes from avx2_available(): the CPU reports AVX2, the one requirement.
        return unsafe { update_avx2(s, p, g, m, v) };
    }
    let _ = avx2;
    update_body(s, p, g, m, v)
}

#[cfg(test)]
mod tests {
    use rand::{Rng, SeedableRng};
    use rand_xoshiro::Xoshiro256PlusPlus;

    use super::*;

    #[test]
    fn every_copy_and_chunking_gives_the_plain_update_bits() {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(5);
        let spec = AdamSpec::paper(2e-4);
        let len = 40_000;
        let draw = |rng: &mut Xoshiro256PlusPlus, scale: f32| -> Vec<f32> {
            (0..len)
                .map(|_| scale * rng.random_range(-1.0..1.0))
                .collect()
        };
        let (p0, g) = (draw(&mut rng, 1.0), draw(&mut rng, 0.1));
        let m0 = draw(&mut rng, 0.01);
        let v0: Vec<f32> = draw(&mut rng, 0.01).iter().map(|x| x * x).collect();
        let step = 7;
        let s = AdamScalars::new(&spec, step);
        let (b1, b2) = (s.beta1 as f32, s.beta2 as f32);
        let (c1, c2) = ((1.0 - s.beta1) as f32, (1.0 - s.beta2) as f32);
        let (step_size, inv_sqrt_bias2, eps) =
            (s.step_size as f32, s.inv_sqrt_bias2 as f32, s.eps as f32);
        let (mut want_p, mut want_m, mut want_v) = (p0.clone(), m0.clone(), v0.clone());
        for i in 0..len {
            want_m[i] = b1 * want_m[i] + c1 * g[i];
            want_v[i] = b2 * want_v[i] + c2 * (g[i] * g[i]);
            let denom = want_v[i].sqrt() * inv_sqrt_bias2 + eps;
            want_p[i] -= step_size * (want_m[i] / denom);
        }
        let (mut p, mut m, mut v) = (p0.clone(), m0.clone(), v0.clone());
        adam(&mut p, &g, &mut m, &mut v, step, &spec);
        let bits = |x: &[f32]| x.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&p), bits(&want_p));
        assert_eq!(bits(&m), bits(&want_m));
        assert_eq!(bits(&v), bits(&want_v));
        let scalars = ElementScalars {
            b1,
            b2,
            c1,
            c2,
            step_size,
            inv_sqrt_bias2,
            eps,
        };
        let (mut p, mut m, mut v) = (p0, m0, v0);
        update(&scalars, &mut p, &g, &mut m, &mut v, false);
        assert_eq!(bits(&p), bits(&want_p), "the baseline copy");
    }
}
