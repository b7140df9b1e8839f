//! CPU forward passes: the LIF layer (event-driven input current, membrane recursion, tape) and the
//! leaky readout.
//!
//! Input current at (b, t) is the sum of the weight rows of that step's input events, added in event
//! order starting from zero; inputs are sparse (layer 1 sees about 0.4% ones), so this beats a GEMM.
//!
//! The membrane (and the readout trace) is integrated in f64 whatever the backend's precision: the
//! surrogate 1 / (100 |V - 1| + 1)^2 turns an absolute error dV into a relative gradient error of up to
//! 200 dV, so an f32 membrane (dV ~ 1e-7 after a few steps) alone would cost ~2e-5 of gradient
//! accuracy. Tapes store V - theta, rounded to the backend's precision only after the subtraction.

use rayon::prelude::*;

use super::{CpuReadoutTape, CpuTape, Kept};
use crate::lif::{fires, in_band, membrane_step, Keep, LayerSpec, THRESHOLD};
use crate::network::ReadoutSpec;
use crate::preset::Readout;
use crate::real::Real;
use crate::spikes::SpikeEvents;

/// What one sample's forward pass produces.
struct SampleForward<F> {
    /// Spike count of each step, `steps` values.
    spikes_per_step: Vec<u32>,
    /// Neuron ids of the spikes, step by step.
    spike_ids: Vec<u32>,
    counts: Vec<F>,
    /// V - theta, `steps x neurons` (dense tape).
    membrane: Vec<F>,
    /// Active entries as (t * neurons + j, V - theta) (sparse tape).
    active_cells: Vec<u32>,
    active_offsets: Vec<F>,
}

/// Adds the weight rows of `events` into `current` (which the caller zeroed), in f64.
#[inline]
fn add_event_rows<F: Real>(current: &mut [f64], events: &[u32], weights: &[F]) {
    let n = current.len();
    for &i in events {
        let row = &weights[i as usize * n..(i as usize + 1) * n];
        for (c, &w) in current.iter_mut().zip(row) {
            *c += w.as_f64();
        }
    }
}

fn lif_sample<F: Real>(
    input: &SpikeEvents,
    weights: &[F],
    layer: &LayerSpec,
    keep: Keep,
    b: usize,
) -> SampleForward<F> {
    let (steps, n) = (input.steps(), layer.neurons);
    let beta = layer.beta;
    let band = match keep {
        Keep::Sparse { band } => band,
        _ => 0.0,
    };
    let mut v = vec![0.0f64; n];
    let mut s = vec![0.0f64; n];
    let mut current = vec![0.0f64; n];
    let mut out = SampleForward {
        spikes_per_step: vec![0; steps],
        spike_ids: Vec::new(),
        counts: vec![F::zero(); n],
        membrane: Vec::new(),
        active_cells: Vec::new(),
        active_offsets: Vec::new(),
    };
    if let Keep::Dense { .. } = keep {
        // V[0] = 0, so V - theta starts at -theta.
        out.membrane = vec![F::of(-THRESHOLD); steps * n];
    }
    for t in 0..steps.saturating_sub(1) {
        current.iter_mut().for_each(|c| *c = 0.0);
        add_event_rows(&mut current, input.events(b, t), weights);
        for j in 0..n {
            let vj = membrane_step(v[j], current[j], s[j], beta);
            v[j] = vj;
            s[j] = if fires(vj) { 1.0 } else { 0.0 };
        }
        let step = t + 1;
        let before = out.spike_ids.len();
        for j in 0..n {
            if s[j] > 0.0 {
                out.spike_ids.push(j as u32);
                out.counts[j] += F::one();
            } else if v[j].is_nan() {
                // A NaN membrane never fires; its count carries the NaN to the loss instead.
                out.counts[j] = F::nan();
            }
        }
        out.spikes_per_step[step] = (out.spike_ids.len() - before) as u32;
        match keep {
            Keep::Dense { .. } => {
                for (m, &vj) in out.membrane[step * n..(step + 1) * n].iter_mut().zip(&v) {
                    *m = F::of(vj - THRESHOLD);
                }
            }
            Keep::Sparse { .. } => {
                for j in 0..n {
                    let offset = v[j] - THRESHOLD;
                    if in_band(offset, band) {
                        out.active_cells.push((step * n + j) as u32);
                        out.active_offsets.push(F::of(offset));
                    }
                }
            }
            Keep::Nothing => {}
        }
    }
    out
}

/// Runs one LIF layer over the batch. Shapes were checked by the caller.
pub(super) fn lif_forward<F: Real>(
    input: &SpikeEvents,
    weights: &[F],
    layer: &LayerSpec,
    keep: Keep,
) -> (SpikeEvents, Vec<F>, CpuTape<F>) {
    let (batch, steps, n) = (input.batch(), input.steps(), layer.neurons);
    let samples: Vec<SampleForward<F>> = (0..batch)
        .into_par_iter()
        .map(|b| lif_sample(input, weights, layer, keep, b))
        .collect();

    let total_spikes: usize = samples.iter().map(|s| s.spike_ids.len()).sum();
    let mut offsets = Vec::with_capacity(batch * steps + 1);
    let mut ids = Vec::with_capacity(total_spikes);
    offsets.push(0u32);
    let mut counts = Vec::with_capacity(batch * n);
    for s in &samples {
        let mut cursor = ids.len() as u32;
        for &k in &s.spikes_per_step {
            cursor += k;
            offsets.push(cursor);
        }
        ids.extend_from_slice(&s.spike_ids);
        counts.extend_from_slice(&s.counts);
    }
    let spikes = SpikeEvents::from_parts(batch, steps, n, offsets, ids)
        .expect("the forward pass builds valid spike events");

    let kept = match keep {
        Keep::Nothing => Kept::Nothing,
        Keep::Dense { band } => {
            let mut v_minus_theta = Vec::with_capacity(batch * steps * n);
            for s in &samples {
                v_minus_theta.extend_from_slice(&s.membrane);
            }
            Kept::Dense {
                v_minus_theta,
                band: band.map(F::of),
            }
        }
        Keep::Sparse { band } => {
            let total: usize = samples.iter().map(|s| s.active_cells.len()).sum();
            let mut sample_offsets = Vec::with_capacity(batch + 1);
            let mut cells = Vec::with_capacity(total);
            let mut v_minus_theta = Vec::with_capacity(total);
            sample_offsets.push(0u32);
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
        input_bytes: input.bytes(),
        kept,
    };
    (spikes, counts, tape)
}

/// The leaky readout: y[0] = 0, y[t+1] = beta_r y[t] + (1 - beta_r) (S[t] . W3); logits = max or
/// sum over t of y[t]. The max keeps the first step that reaches it (y[0] = 0 included).
pub(super) fn readout_forward<F: Real>(
    hidden: &SpikeEvents,
    weights: &[F],
    spec: &ReadoutSpec,
) -> (Vec<F>, CpuReadoutTape) {
    let (batch, steps, classes) = (hidden.batch(), hidden.steps(), spec.classes);
    let beta = spec.beta;
    let gain = 1.0 - spec.beta;
    let per_sample: Vec<(Vec<F>, Vec<u32>)> = (0..batch)
        .into_par_iter()
        .map(|b| {
            let mut y = vec![0.0f64; classes];
            let mut r = vec![0.0f64; classes];
            let mut logit = vec![0.0f64; classes];
            let mut arg = vec![0u32; classes];
            for t in 0..steps.saturating_sub(1) {
                r.iter_mut().for_each(|x| *x = 0.0);
                add_event_rows(&mut r, hidden.events(b, t), weights);
                for c in 0..classes {
                    y[c] = beta * y[c] + gain * r[c];
                    match spec.mode {
                        Readout::Max => {
                            // A NaN trace must reach the loss, not hide behind the max.
                            if !logit[c].is_nan() && (y[c].is_nan() || y[c] > logit[c]) {
                                logit[c] = y[c];
                                arg[c] = (t + 1) as u32;
                            }
                        }
                        Readout::Sum => logit[c] += y[c],
                    }
                }
            }
            (logit.into_iter().map(F::of).collect(), arg)
        })
        .collect();
    let mut logits = Vec::with_capacity(batch * classes);
    let mut argmax = Vec::new();
    for (l, a) in per_sample {
        logits.extend_from_slice(&l);
        if spec.mode == Readout::Max {
            argmax.extend_from_slice(&a);
        }
    }
    (
        logits,
        CpuReadoutTape {
            batch,
            steps,
            spec: *spec,
            argmax,
        },
    )
}
