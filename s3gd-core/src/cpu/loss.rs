//! CPU loss (cross-entropy and the spike-count regularisers), the readout's backward pass, and the
//! spike gradient dS2 that the readout sends to hidden layer 2.

use rayon::prelude::*;

use super::{map_sum, sample_chunks, CpuBackend, CpuReadoutTape, CpuTape, Kept};
use crate::backend::{terms, RegGrad};
use crate::network::LossSpec;
use crate::preset::Readout;
use crate::real::Real;
use crate::spikes::SpikeEvents;

pub(super) struct LossParts<F> {
    pub terms: Vec<F>,
    pub grad_logits: Vec<F>,
    /// Per layer: [per-sample gradient, per-(sample, neuron) gradient].
    pub reg: [[Vec<F>; 2]; 2],
}

/// Loss terms and gradients. `counts[l]` holds spike counts `batch x hidden` of layer l + 1.
pub(super) fn loss<F: Real>(
    logits: &[F],
    labels: &[u32],
    counts: [&[F]; 2],
    hidden: usize,
    spec: &LossSpec,
) -> LossParts<F> {
    let batch = labels.len();
    let classes = logits.len() / batch;
    // The softmax and its gradient in f64 whatever F is: when a logit dominates, p -> 1 and p - 1
    // (the label's gradient) would lose every digit to cancellation in f32.
    let inv_batch_f64 = 1.0 / batch as f64;
    let inv_batch = F::of(inv_batch_f64);
    let mut grad_logits = vec![F::zero(); batch * classes];
    let mut cross_entropy_f64 = 0.0f64;
    let mut correct = 0usize;
    for b in 0..batch {
        let z: Vec<f64> = logits[b * classes..(b + 1) * classes]
            .iter()
            .map(|x| x.as_f64())
            .collect();
        let label = labels[b] as usize;
        let (mut best, mut best_c) = (z[0], 0);
        for (c, &x) in z.iter().enumerate() {
            if x > best {
                best = x;
                best_c = c;
            }
        }
        if best_c == label {
            correct += 1;
        }
        let sum_exp: f64 = z.iter().map(|&x| (x - best).exp()).sum();
        cross_entropy_f64 += best + sum_exp.ln() - z[label];
        let g = &mut grad_logits[b * classes..(b + 1) * classes];
        for c in 0..classes {
            let p = (z[c] - best).exp() / sum_exp;
            let onehot = if c == label { 1.0 } else { 0.0 };
            g[c] = F::of((p - onehot) * inv_batch_f64);
        }
    }
    let cross_entropy = F::of(cross_entropy_f64 * inv_batch_f64);

    let n = F::of(hidden as f64);
    let upper_weight = F::of(spec.upper_weight);
    let max_rate = F::of(spec.max_rate);
    let lower_weight = F::of(spec.lower_weight);
    let min_count = F::of(spec.min_count);
    let regulariser = |cnt: &[F]| {
        let mut upper = F::zero();
        let mut lower = F::zero();
        let mut per_sample = vec![F::zero(); batch];
        let mut per_neuron = vec![F::zero(); batch * hidden];
        for b in 0..batch {
            let row = &cnt[b * hidden..(b + 1) * hidden];
            let excess = row.iter().copied().sum::<F>() / n - max_rate;
            // NaN passes too, so a NaN count reaches the loss.
            if excess > F::zero() || excess.is_nan() {
                upper += upper_weight * excess;
                per_sample[b] = upper_weight / n * inv_batch;
            }
            let mut lower_b = F::zero();
            for (j, &c) in row.iter().enumerate() {
                let shortfall = min_count - c;
                if shortfall > F::zero() || shortfall.is_nan() {
                    lower_b += shortfall * shortfall;
                    per_neuron[b * hidden + j] =
                        -(F::of(2.0) * lower_weight / n) * shortfall * inv_batch;
                }
            }
            lower += lower_weight / n * lower_b;
        }
        (
            upper * inv_batch,
            lower * inv_batch,
            [per_sample, per_neuron],
        )
    };
    let (upper1, lower1, reg1) = regulariser(counts[0]);
    let (upper2, lower2, reg2) = regulariser(counts[1]);

    let mut t = vec![F::zero(); terms::LEN];
    t[terms::CROSS_ENTROPY] = cross_entropy;
    t[terms::UPPER_L1] = upper1;
    t[terms::LOWER_L1] = lower1;
    t[terms::UPPER_L2] = upper2;
    t[terms::LOWER_L2] = lower2;
    t[terms::TOTAL] = cross_entropy + upper1 + lower1 + upper2 + lower2;
    t[terms::CORRECT] = F::of(correct as f64);
    LossParts {
        terms: t,
        grad_logits,
        reg: [reg1, reg2],
    }
}

/// Backward through the readout: returns (dW3 `hidden x classes`, g `batch x steps x classes`).
/// With a[t] the adjoint of y[t] (a[t] = dy[t] + beta_r a[t+1]), g[t] = (1 - beta_r) a[t+1] for
/// t <= T - 2 and g[T-1] = 0; dW3[j, c] = sum over spikes (b, t, j) of g[b, t, c].
pub(super) fn readout_backward<F: Real>(
    tape: &CpuReadoutTape,
    hidden: &SpikeEvents,
    grad_logits: &[F],
) -> (Vec<F>, Vec<F>) {
    let (batch, steps) = (tape.batch, tape.steps);
    let (inputs, classes) = (tape.spec.inputs, tape.spec.classes);
    let beta = F::of(tape.spec.beta);
    let gain = F::of(1.0 - tape.spec.beta);
    let mut g = vec![F::zero(); batch * steps * classes];
    g.par_chunks_mut(steps * classes)
        .enumerate()
        .for_each(|(b, gb)| {
            let dz = &grad_logits[b * classes..(b + 1) * classes];
            let mut a = vec![F::zero(); classes];
            for t in (1..steps).rev() {
                for c in 0..classes {
                    let dy = match tape.spec.mode {
                        Readout::Sum => dz[c],
                        Readout::Max if tape.argmax[b * classes + c] as usize == t => dz[c],
                        Readout::Max => F::zero(),
                    };
                    a[c] = dy + beta * a[c];
                    gb[(t - 1) * classes + c] = gain * a[c];
                }
            }
        });
    let dw = map_sum(sample_chunks(batch), inputs * classes, &|range| {
        let mut dw = vec![F::zero(); inputs * classes];
        for b in range {
            for t in 0..steps.saturating_sub(1) {
                let gt = &g[(b * steps + t) * classes..(b * steps + t + 1) * classes];
                for &j in hidden.events(b, t) {
                    let row = &mut dw[j as usize * classes..(j as usize + 1) * classes];
                    for (d, &x) in row.iter_mut().zip(gt) {
                        *d += x;
                    }
                }
            }
        }
        dw
    });
    (dw, g)
}

/// dS2[b, t, j] = (sum_c g[b, t, c] W3[j, c] + per_sample[b]) + per_neuron[b, j], laid out by `layout`,
/// summed in f64 (see `with_regularisers`).
pub(super) fn readout_spike_grad<F: Real>(
    g: &[F],
    weights: &[F],
    classes: usize,
    reg: &RegGrad<CpuBackend<F>>,
    layout: &CpuTape<F>,
) -> Vec<F> {
    let (steps, n) = (layout.steps, layout.neurons);
    let (per_sample, per_neuron) = (reg.per_sample.as_slice(), reg.per_neuron.as_slice());
    let value = |b: usize, t: usize, j: usize| {
        let gt = &g[(b * steps + t) * classes..(b * steps + t + 1) * classes];
        let w = &weights[j * classes..(j + 1) * classes];
        let dot = gt
            .iter()
            .zip(w)
            .fold(0.0f64, |acc, (&x, &y)| acc + x.as_f64() * y.as_f64());
        with_regularisers(dot, per_sample[b], per_neuron[b * n + j])
    };
    match &layout.kept {
        Kept::Dense { .. } => {
            // Every (b, t, j): the same f64 products and sums as `value`, in the same order (c
            // ascending from 0.0), but with the weights transposed to (class, neuron) so that
            // the neurons of a row are independent lanes: one dependent chain of additions per
            // entry had made this the dense step's largest cost on the CPU.
            let transposed: Vec<f64> = (0..classes * n)
                .map(|k| weights[(k % n) * classes + k / n].as_f64())
                .collect();
            let mut out = vec![F::zero(); layout.cells()];
            out.par_chunks_mut(steps * n)
                .enumerate()
                .for_each(|(b, ob)| {
                    let mut dots = vec![0.0f64; n];
                    for t in 0..steps {
                        dots.iter_mut().for_each(|d| *d = 0.0);
                        let gt = &g[(b * steps + t) * classes..(b * steps + t + 1) * classes];
                        for (c, &x) in gt.iter().enumerate() {
                            let x = x.as_f64();
                            for (d, &w) in dots.iter_mut().zip(&transposed[c * n..(c + 1) * n]) {
                                *d += x * w;
                            }
                        }
                        for (j, (o, &dot)) in
                            ob[t * n..(t + 1) * n].iter_mut().zip(&dots).enumerate()
                        {
                            *o = with_regularisers(dot, per_sample[b], per_neuron[b * n + j]);
                        }
                    }
                });
            out
        }
        Kept::Sparse {
            sample_offsets,
            cells,
            ..
        } => {
            let mut out = vec![F::zero(); cells.len()];
            let mut rest = out.as_mut_slice();
            let mut slices = Vec::with_capacity(layout.batch);
            for b in 0..layout.batch {
                let len = (sample_offsets[b + 1] - sample_offsets[b]) as usize;
                let (head, tail) = rest.split_at_mut(len);
                slices.push((b, head));
                rest = tail;
            }
            slices.into_par_iter().for_each(|(b, ob)| {
                let start = sample_offsets[b] as usize;
                for (k, o) in ob.iter_mut().enumerate() {
                    let cell = cells[start + k] as usize;
                    *o = value(b, cell / n, cell % n);
                }
            });
            out
        }
        Kept::Nothing => Vec::new(),
    }
}

/// A spike gradient plus the regularisers' terms, `(from_above + per_sample) + per_neuron`, summed
/// in f64 and rounded once: the terms often nearly cancel, and an f32 sum would then keep few
/// correct digits. Every backend adds them this way.
#[inline]
pub(crate) fn with_regularisers<F: Real>(from_above: f64, per_sample: F, per_neuron: F) -> F {
    F::of((from_above + per_sample.as_f64()) + per_neuron.as_f64())
}

#[cfg(test)]
mod tests {
    use rand::{Rng, SeedableRng};
    use rand_xoshiro::Xoshiro256PlusPlus;

    use crate::backend::{Backend, RegGrad};
    use crate::cpu::{same_bits, CpuBackend};
    use crate::lif::{Keep, LayerSpec};
    use crate::real::Real;
    use crate::spikes::SpikeEventsBuilder;

    /// The dense spike gradient (neurons as lanes over transposed weights) against the plain
    /// per-entry dot product in f64, bit for bit, in f32 and f64.
    #[test]
    fn dense_spike_grad_equals_the_per_entry_dot() {
        fn check<F: Real>(seed: u64) {
            let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
            let (batch, steps, inputs, n, classes) = (3, 17, 11, 37, 10);
            let mut builder = SpikeEventsBuilder::new(steps, inputs);
            for _ in 0..batch {
                let events: Vec<(usize, u32)> = (0..40)
                    .map(|_| {
                        (
                            rng.random_range(0..steps),
                            rng.random_range(0..inputs as u32),
                        )
                    })
                    .collect();
                builder.push_sample(events).unwrap();
            }
            let backend = CpuBackend::<F>::new();
            let spikes = builder.finish();
            let w1: Vec<f32> = (0..inputs * n)
                .map(|_| rng.random_range(-1.0..1.5))
                .collect();
            let spec = LayerSpec {
                inputs,
                neurons: n,
                beta: 0.9,
            };
            let layer = backend
                .lif_forward(
                    &backend.upload_spikes(&spikes).unwrap(),
                    &backend.upload(&w1).unwrap(),
                    &spec,
                    Keep::Dense { band: None },
                )
                .unwrap();
            let g: Vec<f32> = (0..batch * steps * classes)
                .map(|_| rng.random_range(-1.0..1.0))
                .collect();
            let w3: Vec<f32> = (0..n * classes)
                .map(|_| rng.random_range(-1.0..1.0))
                .collect();
            let per_sample: Vec<f32> = (0..batch).map(|_| rng.random_range(-0.1..0.1)).collect();
            let per_neuron: Vec<f32> = (0..batch * n)
                .map(|_| rng.random_range(-0.1..0.1))
                .collect();
            let reg = RegGrad {
                per_sample: backend.upload(&per_sample).unwrap(),
                per_neuron: backend.upload(&per_neuron).unwrap(),
            };
            let got = backend
                .readout_spike_grad(
                    &backend.upload(&g).unwrap(),
                    &backend.upload(&w3).unwrap(),
                    &reg,
                    &layer.tape,
                )
                .unwrap();
            let (g, w3, per_sample, per_neuron) = [g, w3, per_sample, per_neuron]
                .map(|v| {
                    v.into_iter()
                        .map(|x| F::of(f64::from(x)))
                        .collect::<Vec<F>>()
                })
                .into();
            let mut want = Vec::new();
            for b in 0..batch {
                for t in 0..steps {
                    for j in 0..n {
                        let mut dot = 0.0f64;
                        for c in 0..classes {
                            dot += g[(b * steps + t) * classes + c].as_f64()
                                * w3[j * classes + c].as_f64();
                        }
                        want.push(super::with_regularisers(
                            dot,
                            per_sample[b],
                            per_neuron[b * n + j],
                        ));
                    }
                }
            }
            assert!(same_bits(got.as_slice(), &want));
        }
        for seed in 0..4 {
            check::<f32>(seed);
            check::<f64>(seed);
        }
    }
}
