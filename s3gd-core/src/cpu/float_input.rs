//! CPU twin of the float-input LIF layer (Linear(N_in -> N) + LIF, the layer SNN libraries
//! benchmark): input currents x . W summed in f64, the same membrane recursion and tapes as the
//! spike-input layer, and the layer's dense and sparse weight gradients.
//!
//! The current of step t is sum over i of x[b, t, i] W[i, j], in i order, in f64 (x and W are f32
//! values); a GPU computes it with a GEMM in another order, so spikes may differ from these only
//! where V lies within rounding of the threshold.

use rayon::prelude::*;

use super::{map_sum, sample_chunks, CpuTape, Kept};
use crate::lif::{fires, in_band, membrane_step, surrogate_of_offset, Keep, LayerSpec, THRESHOLD};
use crate::real::Real;
use crate::spikes::SpikeEvents;

struct SampleOut<F> {
    spikes_per_step: Vec<u32>,
    spike_ids: Vec<u32>,
    counts: Vec<F>,
    v_minus_theta: Vec<F>,
    active_cells: Vec<u32>,
    active_offsets: Vec<F>,
}

/// Runs the layer over the batch; shapes were checked by the caller.
pub(super) fn lif_forward_float<F: Real>(
    x: &[F],
    batch: usize,
    steps: usize,
    weights: &[F],
    layer: &LayerSpec,
    keep: Keep,
) -> (SpikeEvents, Vec<F>, CpuTape<F>) {
    let (inputs, n) = (layer.inputs, layer.neurons);
    let band = match keep {
        Keep::Sparse { band } => band,
        _ => 0.0,
    };
    let samples: Vec<SampleOut<F>> = (0..batch)
        .into_par_iter()
        .map(|b| {
            let mut out = SampleOut {
                spikes_per_step: vec![0; steps],
                spike_ids: Vec::new(),
                counts: vec![F::zero(); n],
                v_minus_theta: Vec::new(),
                active_cells: Vec::new(),
                active_offsets: Vec::new(),
            };
            if let Keep::Dense { .. } = keep {
                out.v_minus_theta = vec![F::of(-THRESHOLD); steps * n];
            }
            let (mut v, mut s, mut current) = (vec![0.0f64; n], vec![0.0f64; n], vec![0.0f64; n]);
            for t in 0..steps.saturating_sub(1) {
                current.iter_mut().for_each(|c| *c = 0.0);
                let row = &x[(b * steps + t) * inputs..(b * steps + t + 1) * inputs];
                for (i, &xi) in row.iter().enumerate() {
                    let xi = xi.as_f64();
                    for (c, &w) in current.iter_mut().zip(&weights[i * n..(i + 1) * n]) {
                        *c += xi * w.as_f64();
                    }
                }
                let step = t + 1;
                let before = out.spike_ids.len();
                for j in 0..n {
                    v[j] = membrane_step(v[j], current[j], s[j], layer.beta);
                    let fire = fires(v[j]);
                    s[j] = if fire { 1.0 } else { 0.0 };
                    if fire {
                        out.spike_ids.push(j as u32);
                        out.counts[j] += F::one();
                    } else if v[j].is_nan() {
                        out.counts[j] = F::nan();
                    }
                    let offset = v[j] - THRESHOLD;
                    match keep {
                        Keep::Dense { .. } => out.v_minus_theta[step * n + j] = F::of(offset),
                        Keep::Sparse { .. } if in_band(offset, band) => {
                            out.active_cells.push((step * n + j) as u32);
                            out.active_offsets.push(F::of(offset));
                        }
                        _ => {}
                    }
                }
                out.spikes_per_step[step] = (out.spike_ids.len() - before) as u32;
            }
            out
        })
        .collect();

    let mut offsets = vec![0u32];
    let mut ids = Vec::new();
    let mut counts = Vec::with_capacity(batch * n);
    for s in &samples {
        for &k in &s.spikes_per_step {
            offsets.push(offsets[offsets.len() - 1] + k);
        }
        ids.extend_from_slice(&s.spike_ids);
        counts.extend_from_slice(&s.counts);
    }
    let spikes = SpikeEvents::from_parts(batch, steps, n, offsets, ids)
        .expect("the forward pass builds valid spike events");
    let kept = match keep {
        Keep::Nothing => Kept::Nothing,
        Keep::Dense { band } => Kept::Dense {
            v_minus_theta: samples
                .iter()
                .flat_map(|s| s.v_minus_theta.iter().copied())
                .collect(),
            band: band.map(F::of),
        },
        Keep::Sparse { band } => {
            let mut sample_offsets = vec![0u32];
            let mut cells = Vec::new();
            let mut v_minus_theta = Vec::new();
            for s in &samples {
                cells.extend_from_slice(&s.active_cells);
                v_minus_theta.extend_from_slice(&s.active_offsets);
                sample_offsets.push(cells.len() as u32);
            }
            Kept::Sparse {
                band: F::of(band),
                sample_offsets,
                cells,
                v_minus_theta,
            }
        }
    };
    let tape = CpuTape {
        batch,
        steps,
        neurons: n,
        beta: F::of(layer.beta),
        input_bytes: std::mem::size_of_val(x),
        kept,
    };
    (spikes, counts, tape)
}

/// dW (`inputs x neurons`) of the float-input layer, for a dense or a sparse tape.
pub(super) fn lif_backward_float<F: Real>(
    tape: &CpuTape<F>,
    x: &[F],
    inputs: usize,
    grad_spikes: &[F],
) -> Vec<F> {
    let (batch, steps, n) = (tape.batch, tape.steps, tape.neurons);
    let beta = tape.beta;
    map_sum(sample_chunks(batch), inputs * n, &|range| {
        let mut dw = vec![F::zero(); inputs * n];
        let mut trace = vec![F::zero(); inputs];
        let mut adjoint = vec![F::zero(); steps * n];
        for b in range {
            let x_at = |t: usize| &x[(b * steps + t) * inputs..(b * steps + t + 1) * inputs];
            match &tape.kept {
                Kept::Dense {
                    v_minus_theta,
                    band,
                } => {
                    // dV[t] = dS[t] sigma'(V[t]) + beta dV[t+1]; dW += x[t-1]^T dV[t].
                    for t in (1..steps).rev() {
                        for j in 0..n {
                            let cell = (b * steps + t) * n + j;
                            let offset = v_minus_theta[cell];
                            let surrogate = match band {
                                Some(h) if !in_band(offset, *h) => F::zero(),
                                _ => surrogate_of_offset(offset),
                            };
                            let later = if t + 1 < steps {
                                adjoint[(t + 1) * n + j]
                            } else {
                                F::zero()
                            };
                            adjoint[t * n + j] = grad_spikes[cell] * surrogate + beta * later;
                        }
                    }
                    for t in 1..steps {
                        let dv = &adjoint[t * n..(t + 1) * n];
                        for (i, &xi) in x_at(t - 1).iter().enumerate() {
                            for (d, &a) in dw[i * n..(i + 1) * n].iter_mut().zip(dv) {
                                *d += xi * a;
                            }
                        }
                    }
                }
                Kept::Sparse {
                    sample_offsets,
                    cells,
                    v_minus_theta,
                    ..
                } => {
                    // dW[:, j] += e[t] d for every active (t, j), e[t] = beta e[t-1] + x[t-1].
                    trace.iter_mut().for_each(|e| *e = F::zero());
                    let mut at = 0usize;
                    for k in sample_offsets[b] as usize..sample_offsets[b + 1] as usize {
                        let (t, j) = (cells[k] as usize / n, cells[k] as usize % n);
                        while at < t {
                            for (e, &xi) in trace.iter_mut().zip(x_at(at)) {
                                *e = beta * *e + xi;
                            }
                            at += 1;
                        }
                        let d = grad_spikes[k] * surrogate_of_offset(v_minus_theta[k]);
                        for (i, &e) in trace.iter().enumerate() {
                            dw[i * n + j] += e * d;
                        }
                    }
                }
                Kept::Nothing => unreachable!("the caller rejects tapes that kept nothing"),
            }
        }
        dw
    })
}
