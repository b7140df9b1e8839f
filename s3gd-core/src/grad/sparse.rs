//! Sparse gradient (S3GD, SPEC section 4): the backward pass only over active entries
//! |V - theta| < h, with the leak recursion kept in closed form.
//!
//! With d[n] = dS[n] sigma'(V[n]) on active entries n = (b, t, j):
//! - dW[i, j] = sum over active (b, t, j) of e[b, t, i] d[b, t, j], where the input trace
//!   e[t] = beta e[t-1] + S_in[t-1] is recomputed from the compact input spikes, sample by sample;
//! - dS_in[b, t, i] = sum_j W[i, j] G[b, t, j] with G[t] = sum over active tau > t of
//!   beta^(tau-t-1) d[tau], built backwards in time (G[t-1] = beta G[t] + d[t]), and evaluated only
//!   at the active entries of the layer below, whose own surrogate is zero elsewhere.
//!
//! Per sample the cost is O(steps x (inputs + neurons) + active x (inputs + neurons)), with no
//! batch x steps x inputs GEMM.

use rayon::prelude::*;

use super::{axpy, dot, split_lengths, Below};
use crate::cpu::loss::with_regularisers;
use crate::cpu::{sample_chunks, sum_partials, CpuTape, Kept};
use crate::lif::surrogate_of_offset;
use crate::real::Real;
use crate::spikes::SpikeEvents;

/// Returns dW (`inputs x neurons`) and, with `below`, dS_in at the below tape's active entries
/// (including the layer below's regulariser gradients).
pub(crate) fn lif_backward<F: Real>(
    tape: &CpuTape<F>,
    input: &SpikeEvents,
    weights: &[F],
    grad_spikes: &[F],
    below: Below<'_, F>,
) -> (Vec<F>, Option<Vec<F>>) {
    let Kept::Sparse {
        sample_offsets,
        cells,
        v_minus_theta,
        ..
    } = &tape.kept
    else {
        unreachable!("the caller dispatches sparse tapes here");
    };
    let (batch, steps, n) = (tape.batch, tape.steps, tape.neurons);
    let inputs = input.units();
    let beta = tape.beta;
    let below = below.map(
        |(below_tape, per_sample, per_neuron)| match &below_tape.kept {
            Kept::Sparse {
                sample_offsets,
                cells,
                ..
            } => (
                sample_offsets.as_slice(),
                cells.as_slice(),
                per_sample,
                per_neuron,
            ),
            _ => unreachable!("the caller checked that both tapes are sparse"),
        },
    );

    let chunks = sample_chunks(batch);
    let mut ds_in = below.map(|(offsets, ..)| vec![F::zero(); offsets[batch] as usize]);
    let pieces: Vec<Option<&mut [F]>> = match (ds_in.as_mut(), below) {
        (Some(out), Some((offsets, ..))) => {
            let lengths: Vec<usize> = chunks
                .iter()
                .map(|r| (offsets[r.end] - offsets[r.start]) as usize)
                .collect();
            split_lengths(out, &lengths).into_iter().map(Some).collect()
        }
        _ => chunks.iter().map(|_| None).collect(),
    };

    let partials: Vec<Vec<F>> = chunks
        .into_par_iter()
        .zip(pieces)
        .map(|(range, mut out)| {
            // dW is accumulated transposed (row j holds dW[:, j]) so each active entry adds one
            // contiguous row.
            let mut dw_t = vec![F::zero(); n * inputs];
            let mut trace = vec![F::zero(); inputs];
            let mut adjoint = vec![F::zero(); n];
            let mut d = Vec::new();
            let chunk_base = below.map_or(0, |(offsets, ..)| offsets[range.start] as usize);
            for b in range {
                let (start, end) = (sample_offsets[b] as usize, sample_offsets[b + 1] as usize);
                d.clear();
                d.extend(
                    (start..end).map(|k| grad_spikes[k] * surrogate_of_offset(v_minus_theta[k])),
                );

                if end > start {
                    let last_t = cells[end - 1] as usize / n;
                    trace.iter_mut().for_each(|x| *x = F::zero());
                    let mut k = start;
                    for t in 1..=last_t {
                        trace.iter_mut().for_each(|x| *x *= beta);
                        for &i in input.events(b, t - 1) {
                            trace[i as usize] += F::one();
                        }
                        while k < end && cells[k] as usize / n == t {
                            let j = cells[k] as usize % n;
                            axpy(
                                d[k - start],
                                &trace,
                                &mut dw_t[j * inputs..(j + 1) * inputs],
                            );
                            k += 1;
                        }
                    }
                }

                if let (Some(out), Some((below_offsets, below_cells, per_sample, per_neuron))) =
                    (out.as_deref_mut(), below)
                {
                    let (below_start, below_end) =
                        (below_offsets[b] as usize, below_offsets[b + 1] as usize);
                    if below_end == below_start {
                        continue;
                    }
                    let first_t = below_cells[below_start] as usize / inputs;
                    adjoint.iter_mut().for_each(|x| *x = F::zero());
                    let mut kb = below_end;
                    let mut k = end;
                    for t in (first_t..steps).rev() {
                        // adjoint = sum over active tau > t of beta^(tau-t-1) d[tau]
                        while kb > below_start && below_cells[kb - 1] as usize / inputs == t {
                            kb -= 1;
                            let i = below_cells[kb] as usize % inputs;
                            let w_row = &weights[i * n..(i + 1) * n];
                            out[kb - chunk_base] = with_regularisers(
                                dot(w_row, &adjoint).as_f64(),
                                per_sample[b],
                                per_neuron[b * inputs + i],
                            );
                        }
                        adjoint.iter_mut().for_each(|x| *x *= beta);
                        while k > start && cells[k - 1] as usize / n == t {
                            k -= 1;
                            adjoint[cells[k] as usize % n] += d[k - start];
                        }
                    }
                }
            }
            dw_t
        })
        .collect();

    let dw_t = sum_partials(partials, n * inputs);
    let mut dw = vec![F::zero(); inputs * n];
    dw.par_chunks_mut(n).enumerate().for_each(|(i, row)| {
        for (j, x) in row.iter_mut().enumerate() {
            *x = dw_t[j * inputs + i];
        }
    });
    (dw, ds_in)
}
