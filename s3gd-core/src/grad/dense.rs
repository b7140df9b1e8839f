//! Dense gradient (the baseline): backpropagation through time over every (b, t, j), with the
//! surrogate 1 / (100 |V - 1| + 1)^2, optionally zeroed outside a band (the exact twin of S3GD).
//!
//! dV[t] = dS[t] sigma'(V[t]) + beta dV[t+1];  dW += S_in[t-1]^T dV[t];  dS_in[t-1] = dV[t] W^T.
//! The reset is detached, so no term flows through S[t] into V[t+1].

use rayon::prelude::*;

use super::{axpy, split_lengths, Below};
use crate::cpu::gemm::gemm;
use crate::cpu::loss::with_regularisers;
use crate::cpu::{sample_chunks, sum_partials, CpuTape};
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

    let partials: Vec<Vec<F>> = chunks
        .into_par_iter()
        .zip(pieces)
        .map(|(range, mut out)| {
            let mut dw = vec![F::zero(); inputs * n];
            let mut dv = vec![F::zero(); steps * n];
            let first = range.start;
            for b in range {
                dv.iter_mut().for_each(|x| *x = F::zero());
                for t in (1..steps).rev() {
                    let cell = (b * steps + t) * n;
                    for j in 0..n {
                        let offset = v_minus_theta[cell + j];
                        let surrogate = match band {
                            Some(h) if !in_band(offset, h) => F::zero(),
                            _ => surrogate_of_offset(offset),
                        };
                        let later = if t + 1 < steps {
                            dv[(t + 1) * n + j]
                        } else {
                            F::zero()
                        };
                        dv[t * n + j] = grad_spikes[cell + j] * surrogate + beta * later;
                    }
                }
                for t in 0..steps - 1 {
                    let dv_next = &dv[(t + 1) * n..(t + 2) * n];
                    for &i in input.events(b, t) {
                        axpy(
                            F::one(),
                            dv_next,
                            &mut dw[i as usize * n..(i as usize + 1) * n],
                        );
                    }
                }
                if let (Some(out), Some((_, per_sample, per_neuron))) = (out.as_deref_mut(), below)
                {
                    let ob =
                        &mut out[(b - first) * steps * inputs..(b - first + 1) * steps * inputs];
                    gemm(
                        steps - 1,
                        n,
                        inputs,
                        F::one(),
                        &dv[n..],
                        n,
                        weights,
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
        })
        .collect();
    (sum_partials(partials, inputs * n), ds_in)
}
