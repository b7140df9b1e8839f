//! Dense gradient (the baseline): backpropagation through time over every (b, t, j), with the
//! surrogate 1 / (100 |V - 1| + 1)^2, optionally zeroed outside a band (the exact twin of S3GD).
//!
//! dV[t] = dS[t] sigma'(V[t]) + beta dV[t+1];  dW += S_in[t-1]^T dV[t];  dS_in[t-1] = dV[t] W^T.
//! The reset is detached, so no term flows through S[t] into V[t+1].

use std::ops::Range;

use super::{axpy, split_lengths, Below};
use crate::cpu::gemm::gemm;
use crate::cpu::loss::with_regularisers;
use crate::cpu::{avx2_available, map_sum, sample_chunks, CpuTape};
use crate::lif::{in_band, surrogate_of_offset};
use crate::real::Real;
use crate::spikes::SpikeEvents;

/// Returns dW (`inputs x neurons`) and, with `below`, dS_in (`batch x steps x inputs`, including the
/// layer below's regulariser gradients).
pub(crate) fn lif_backward<F: Real>(
    tape: &CpuTape<F>,
    v_minus_theta: &[F],
    band: Option<F>,
    input: &SpikeEvents,
    weights: &[F],
    grad_spikes: &[F],
    below: Below<'_, F>,
) -> (Vec<F>, Option<Vec<F>>) {
    let avx2 = avx2_available();
    lif_backward_on(
        tape,
        v_minus_theta,
        band,
        input,
        weights,
        grad_spikes,
        below,
        avx2,
    )
}

/// `lif_backward` with the AVX2 copy of the chunk loop or the baseline one; `avx2` must be true
/// only when `avx2_available()` is.
#[allow(clippy::too_many_arguments)]
fn lif_backward_on<F: Real>(
    tape: &CpuTape<F>,
    v_minus_theta: &[F],
    band: Option<F>,
    input: &SpikeEvents,
    weights: &[F],
    grad_spikes: &[F],
    below: Below<'_, F>,
    avx2: bool,
) -> (Vec<F>, Option<Vec<F>>) {
    let (batch, steps, n) = (tape.batch, tape.steps, tape.neurons);
    let inputs = input.units();
    let beta = tape.beta;
    let chunks = sample_chunks(batch);
    let mut ds_in = below.map(|_| vec![F::zero(); batch * steps * inputs]);
    let lengths: Vec<usize> = chunks.iter().map(|r| r.len() * steps * inputs).collect();
    let pieces: Vec<Option<&mut [F]>> = match ds_in.as_mut() {
        Some(out) => split_lengths(out, &lengths).into_iter().map(Some).collect(),
        None => chunks.iter().map(|_| None).collect(),
    };

    let pass = DensePass {
        v_minus_theta,
        band,
        input,
        weights,
        grad_spikes,
        steps,
        neurons: n,
        beta,
        below: below.map(|(_, per_sample, per_neuron)| (per_sample, per_neuron)),
        avx2,
    };
    let tasks: Vec<_> = chunks.into_iter().zip(pieces).collect();
    let dw = map_sum(tasks, inputs * n, &|(range, out)| {
        chunk_backward(&pass, range, out)
    });
    (dw, ds_in)
}

/// What every chunk of the dense backward pass reads.
struct DensePass<'a, F> {
    v_minus_theta: &'a [F],
    band: Option<F>,
    input: &'a SpikeEvents,
    weights: &'a [F],
    grad_spikes: &'a [F],
    steps: usize,
    neurons: usize,
    beta: F,
    /// The layer below's regulariser gradients (per sample, per sample and neuron), when dS_in is
    /// wanted.
    below: Option<(&'a [F], &'a [F])>,
    /// Run the AVX2 copy (only where the CPU has AVX2).
    avx2: bool,
}

/// dV[t] = dS[t] sigma'(V[t]) + beta dV[t+1] for one sample, a row of neurons at a time (the row
/// after the last is zero), with the surrogate zeroed outside `band` when there is one.
#[inline(always)]
fn adjoint_rows<F: Real>(pass: &DensePass<'_, F>, b: usize, dv: &mut [F]) {
    let (steps, n, beta) = (pass.steps, pass.neurons, pass.beta);
    let zeros = vec![F::zero(); n];
    for t in (1..steps).rev() {
        let cell = (b * steps + t) * n;
        let offsets = &pass.v_minus_theta[cell..cell + n];
        let grads = &pass.grad_spikes[cell..cell + n];
        let (head, tail) = dv.split_at_mut((t + 1) * n);
        let later = if t + 1 < steps {
            &tail[..n]
        } else {
            &zeros[..]
        };
        let row = &mut head[t * n..];
        match pass.band {
            None => {
                for (((d, &o), &g), &l) in row.iter_mut().zip(offsets).zip(grads).zip(later) {
                    *d = g * surrogate_of_offset(o) + beta * l;
                }
            }
            Some(h) => {
                for (((d, &o), &g), &l) in row.iter_mut().zip(offsets).zip(grads).zip(later) {
                    let surrogate = if in_band(o, h) {
                        surrogate_of_offset(o)
                    } else {
                        F::zero()
                    };
                    *d = g * surrogate + beta * l;
                }
            }
        }
    }
}

/// The samples `range`: returns their dW and writes their dS_in into `out`.
#[inline(always)]
fn chunk_backward_body<F: Real>(
    pass: &DensePass<'_, F>,
    range: Range<usize>,
    mut out: Option<&mut [F]>,
) -> Vec<F> {
    let (steps, n) = (pass.steps, pass.neurons);
    let inputs = pass.input.units();
    let mut dw = vec![F::zero(); inputs * n];
    let mut dv = vec![F::zero(); steps * n];
    let first = range.start;
    for b in range {
        // Row 0 is never written (the input at t = -1 does not exist): it stays zero.
        adjoint_rows(pass, b, &mut dv);
        for t in 0..steps - 1 {
            let dv_next = &dv[(t + 1) * n..(t + 2) * n];
            for &i in pass.input.events(b, t) {
                axpy(
                    F::one(),
                    dv_next,
                    &mut dw[i as usize * n..(i as usize + 1) * n],
                );
            }
        }
        if let (Some(out), Some((per_sample, per_neuron))) = (out.as_deref_mut(), pass.below) {
            let ob = &mut out[(b - first) * steps * inputs..(b - first + 1) * steps * inputs];
            gemm(
                steps - 1,
                n,
                inputs,
                F::one(),
                &dv[n..],
                n,
                pass.weights,
                n,
                true,
                F::zero(),
                ob,
                inputs,
            );
            let reg_row = &per_neuron[b * inputs..(b + 1) * inputs];
            for t in 0..steps {
                for (o, &r) in ob[t * inputs..(t + 1) * inputs].iter_mut().zip(reg_row) {
                    *o = with_regularisers(o.as_f64(), per_sample[b], r);
                }
            }
        }
    }
    dw
}

/// `chunk_backward_body` compiled for AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn chunk_backward_avx2<F: Real>(
    pass: &DensePass<'_, F>,
    range: Range<usize>,
    out: Option<&mut [F]>,
) -> Vec<F> {
    chunk_backward_body(pass, range, out)
}

/// Runs one chunk, with the AVX2 copy when `pass.avx2`: element-wise operations in the same order,
/// so both copies give the same bits (the GEMM picks its own kernels either way).
#[allow(unsafe_code)]
fn chunk_backward<F: Real>(
    pass: &DensePass<'_, F>,
    range: Range<usize>,
    out: Option<&mut [F]>,
) -> Vec<F> {
    #[cfg(target_arch = "x86_64")]
    if pass.avx2 {
        // SAFETY: `avx2` is set only when the CPU reports AVX2, the one requirement.
        return unsafe { chunk_backward_avx2(pass, range, out) };
    }
    chunk_backward_body(pass, range, out)
}

#[cfg(test)]
mod tests {
    use rand::{Rng, SeedableRng};
    use rand_xoshiro::Xoshiro256PlusPlus;

    use super::*;
    use crate::backend::Backend;
    use crate::cpu::{same_bits, CpuBackend, Kept};
    use crate::lif::{Keep, LayerSpec};
    use crate::spikes::SpikeEventsBuilder;

    /// Compares both copies on one random layer 2 of a two-layer case.
    fn case<F: Real>(seed: u64) {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
        let (batch, steps, inputs, hidden) = (
            rng.random_range(1..=12usize),
            rng.random_range(2..=30usize),
            rng.random_range(1..=50usize),
            rng.random_range(1..=50usize),
        );
        let mut builder = SpikeEventsBuilder::new(steps, inputs);
        for _ in 0..batch {
            let events: Vec<(usize, u32)> = (0..rng.random_range(0..steps * inputs / 3 + 1))
                .map(|_| {
                    (
                        rng.random_range(0..steps),
                        rng.random_range(0..inputs as u32),
                    )
                })
                .collect();
            builder.push_sample(events).unwrap();
        }
        let input = builder.finish();
        let cpu = CpuBackend::<F>::new();
        let mut weights = |rows: usize, cols: usize| {
            let w: Vec<f32> = (0..rows * cols)
                .map(|_| rng.random_range(-0.3..0.6))
                .collect();
            cpu.upload(&w).unwrap()
        };
        let (w1, w2) = (weights(inputs, hidden), weights(hidden, hidden));
        let keep = Keep::Dense {
            band: [None, Some(0.2)][seed as usize % 2],
        };
        let spec = |inputs| LayerSpec {
            inputs,
            neurons: hidden,
            beta: 0.9,
        };
        let l1 = cpu.lif_forward(&input, &w1, &spec(inputs), keep).unwrap();
        let l2 = cpu
            .lif_forward(&l1.spikes, &w2, &spec(hidden), keep)
            .unwrap();
        let grad = |len: usize, rng: &mut Xoshiro256PlusPlus| {
            (0..len)
                .map(|_| F::of(rng.random_range(-1.0..1.0)))
                .collect::<Vec<F>>()
        };
        let ds2 = grad(batch * steps * hidden, &mut rng);
        let (per_sample, per_neuron) = (grad(batch, &mut rng), grad(batch * hidden, &mut rng));
        let below = Some((&l1.tape, per_sample.as_slice(), per_neuron.as_slice()));
        let Kept::Dense {
            v_minus_theta,
            band,
        } = &l2.tape.kept
        else {
            unreachable!("a dense tape");
        };
        let run = |avx2| {
            lif_backward_on(
                &l2.tape,
                v_minus_theta,
                *band,
                &l1.spikes,
                &w2.0,
                &ds2,
                below,
                avx2,
            )
        };
        let ((want_dw, want_ds), (dw, ds)) = (run(false), run(true));
        assert!(same_bits(&dw, &want_dw), "seed {seed}: dW");
        assert!(
            same_bits(&ds.unwrap(), &want_ds.unwrap()),
            "seed {seed}: dS_in"
        );
    }

    #[test]
    fn avx2_copy_gives_the_baseline_bits() {
        if !avx2_available() {
            eprintln!("no AVX2 on this CPU: nothing to compare");
            return;
        }
        for seed in 0..16 {
            case::<f32>(seed);
            case::<f64>(seed + 100);
        }
    }
}
