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
//!
//! Speed: the step loop works on blocks of `BLOCK` neurons whose input current and membrane stay in
//! registers; only a block holding a spike, a band entry or a NaN (about 1% of entries) is looked at
//! neuron by neuron. On x86-64 the loop is compiled twice, for the baseline and for AVX2, and the
//! AVX2 copy is used when the CPU has it: the same IEEE operations in the same order (no fused
//! multiply-add), so both copies give the same bits, and the GPU kernels reproduce them.

use std::ops::Range;

use rayon::prelude::*;

use super::{CpuReadoutTape, CpuTape, Kept};
use crate::lif::{fires, in_band, membrane_step, Keep, LayerSpec, THRESHOLD};
use crate::network::ReadoutSpec;
use crate::preset::Readout;
use crate::real::Real;
use crate::spikes::SpikeEvents;

/// Neurons updated together (eight AVX2 registers of f64; at most 32, one bit each in a `u32`).
const BLOCK: usize = 32;

/// Consecutive samples one rayon task runs, reusing its scratch; samples are independent, so the
/// split changes no result.
const SAMPLES_PER_TASK: usize = 4;

/// Which compiled copy of the step loop runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Isa {
    /// The x86-64 (or other target) baseline; the tests compare it with `Best`.
    #[cfg_attr(not(test), allow(dead_code))]
    Baseline,
    /// AVX2 when the CPU reports it, else the baseline.
    Best,
}

/// What a layer's forward pass reads, shared by every task.
struct LayerPass<'a, F> {
    input: &'a SpikeEvents,
    weights: &'a [F],
    neurons: usize,
    beta: f64,
    /// Half-width of the sparse tape's band; 0 keeps no active entries (|x| < 0 never holds).
    band: f64,
    /// Entries with V - theta <= floor neither spike, nor lie in the band, nor are NaN (0 without a
    /// sparse tape, -band with one): a block whose entries all are so needs no per-neuron look.
    floor: f64,
}

/// What one task (a run of consecutive samples) produces, laid out as the final arrays are.
struct TaskOutput<F> {
    /// Spike count of each (sample, step) row, `samples x steps`.
    spikes_per_row: Vec<u32>,
    /// Neuron ids of the spikes, row by row.
    spike_ids: Vec<u32>,
    /// Spike count per (sample, neuron), `samples x neurons`.
    counts: Vec<F>,
    /// Active entries of each sample (sparse tape).
    active_per_sample: Vec<u32>,
    /// Active entries as (t * neurons + j, V - theta), sample by sample (sparse tape).
    active_cells: Vec<u32>,
    active_offsets: Vec<F>,
}

/// Per-neuron state of one sample, reused by the samples of a task. `v` and `s` are padded to whole
/// blocks; padding lanes get no current, stay at 0, and are masked out of the per-neuron path.
struct Scratch {
    v: Vec<f64>,
    s: Vec<f64>,
    spike_count: Vec<u32>,
    is_nan: Vec<bool>,
}

/// One membrane step of a block: `v = (beta v + current) - s`, `s = H(v - theta)`. Returns the
/// lanes that spike, lie above `floor` (the band) or are NaN, one bit each.
#[inline(always)]
fn block_step(
    v: &mut [f64; BLOCK],
    s: &mut [f64; BLOCK],
    current: &[f64; BLOCK],
    beta: f64,
    floor: f64,
) -> u32 {
    // Local copies: the compiler cannot see that `v` and `s` never alias, and would otherwise
    // keep this loop scalar.
    let (mut vb, mut sb) = (*v, *s);
    for l in 0..BLOCK {
        vb[l] = membrane_step(vb[l], current[l], sb[l], beta);
    }
    let mut notable = 0u32;
    for l in 0..BLOCK {
        sb[l] = if fires(vb[l]) { 1.0 } else { 0.0 };
        notable |= u32::from(is_notable(vb[l], floor)) << l;
    }
    (*v, *s) = (vb, sb);
    notable
}

/// Whether a membrane needs the per-neuron path: it spikes (V - theta > 0), lies in the band
/// (V - theta > -h) or is NaN.
#[inline(always)]
// One comparison that is also true for NaN (`x > floor || x.is_nan()` costs two per lane).
#[allow(clippy::neg_cmp_op_on_partial_ord)]
fn is_notable(v: f64, floor: f64) -> bool {
    !(v - THRESHOLD <= floor)
}

/// The per-neuron path of the `notable` lanes of a block (a bit each; the other lanes neither
/// spike, nor are NaN, nor lie in the band): spikes, NaN membranes, band entries, in neuron order.
#[inline(never)]
#[allow(clippy::too_many_arguments)]
fn record_block<F: Real>(
    out: &mut TaskOutput<F>,
    spike_count: &mut [u32],
    is_nan: &mut [bool],
    v: &[f64; BLOCK],
    s: &[f64; BLOCK],
    mut notable: u32,
    first_neuron: usize,
    row_base: usize,
    band: f64,
) {
    while notable != 0 {
        let l = notable.trailing_zeros() as usize;
        notable &= notable - 1;
        let (j, vl) = (first_neuron + l, v[l]);
        if s[l] > 0.0 {
            out.spike_ids.push(j as u32);
            spike_count[j] += 1;
        } else if vl.is_nan() {
            // A NaN membrane never fires; its count carries the NaN to the loss instead.
            is_nan[j] = true;
        }
        let offset = vl - THRESHOLD;
        if in_band(offset, band) {
            out.active_cells.push((row_base + j) as u32);
            out.active_offsets.push(F::of(offset));
        }
    }
}

/// One sample through the layer. `DENSE` writes V - theta of every entry into `membrane`
/// (`steps x neurons`); spikes and the sparse tape go to `out`.
///
/// The current of a neuron is 0.0 plus its weight from each event, in event order, in f64, and the
/// membrane follows `lif::membrane_step`: blocks change where values live, not how they round.
#[inline(always)]
fn lif_sample<F: Real, const DENSE: bool>(
    pass: &LayerPass<'_, F>,
    b: usize,
    scratch: &mut Scratch,
    membrane: &mut [F],
    out: &mut TaskOutput<F>,
) {
    let (steps, n, weights) = (pass.input.steps(), pass.neurons, pass.weights);
    scratch.v.fill(0.0);
    scratch.s.fill(0.0);
    scratch.spike_count.fill(0);
    scratch.is_nan.fill(false);
    if DENSE {
        // V[0] = 0, so V - theta starts at -theta.
        membrane[..n].fill(F::of(-THRESHOLD));
    }
    let rows_before = out.spikes_per_row.len();
    out.spikes_per_row.resize(rows_before + steps, 0);
    let active_before = out.active_cells.len();

    for t in 0..steps.saturating_sub(1) {
        let step = t + 1;
        let row_base = step * n;
        let events = pass.input.events(b, t);
        let spikes_before = out.spike_ids.len();
        for base in (0..n).step_by(BLOCK) {
            let lanes = BLOCK.min(n - base);
            let mut current = [0.0f64; BLOCK];
            if lanes == BLOCK {
                for &i in events {
                    let start = i as usize * n + base;
                    let w: &[F; BLOCK] = weights[start..start + BLOCK]
                        .try_into()
                        .expect("a whole block of weights");
                    for l in 0..BLOCK {
                        current[l] += w[l].as_f64();
                    }
                }
            } else {
                for &i in events {
                    let start = i as usize * n + base;
                    for (c, &w) in current.iter_mut().zip(&weights[start..start + lanes]) {
                        *c += w.as_f64();
                    }
                }
            }
            let v: &mut [f64; BLOCK] = (&mut scratch.v[base..base + BLOCK])
                .try_into()
                .expect("a whole block of membranes");
            let s: &mut [f64; BLOCK] = (&mut scratch.s[base..base + BLOCK])
                .try_into()
                .expect("a whole block of spikes");
            let mut notable = block_step(v, s, &current, pass.beta, pass.floor);
            if lanes < BLOCK {
                // Padding lanes stay at V = 0, which a very wide band would count as active.
                notable &= (1u32 << lanes) - 1;
            }
            if DENSE {
                let dst = &mut membrane[row_base + base..row_base + base + lanes];
                if lanes == BLOCK {
                    for l in 0..BLOCK {
                        dst[l] = F::of(v[l] - THRESHOLD);
                    }
                } else {
                    for (m, &vl) in dst.iter_mut().zip(v.iter()) {
                        *m = F::of(vl - THRESHOLD);
                    }
                }
            }
            if notable != 0 {
                record_block(
                    out,
                    &mut scratch.spike_count,
                    &mut scratch.is_nan,
                    v,
                    s,
                    notable,
                    base,
                    row_base,
                    pass.band,
                );
            }
        }
        out.spikes_per_row[rows_before + step] = (out.spike_ids.len() - spikes_before) as u32;
    }
    // Counts are whole numbers far below 2^24, exact in F, so counting in u32 changes nothing.
    out.counts.extend(
        scratch
            .spike_count
            .iter()
            .zip(&scratch.is_nan)
            .map(|(&c, &nan)| if nan { F::nan() } else { F::of(c as f64) }),
    );
    out.active_per_sample
        .push((out.active_cells.len() - active_before) as u32);
}

/// The samples of one task; `membrane` holds their dense tapes when `DENSE`.
#[inline(always)]
fn run_task_body<F: Real, const DENSE: bool>(
    pass: &LayerPass<'_, F>,
    samples: Range<usize>,
    membrane: &mut [F],
) -> TaskOutput<F> {
    let (steps, n) = (pass.input.steps(), pass.neurons);
    let padded = n.next_multiple_of(BLOCK);
    let mut scratch = Scratch {
        v: vec![0.0; padded],
        s: vec![0.0; padded],
        spike_count: vec![0; n],
        is_nan: vec![false; n],
    };
    let mut out = TaskOutput {
        spikes_per_row: Vec::with_capacity(samples.len() * steps),
        spike_ids: Vec::new(),
        counts: Vec::with_capacity(samples.len() * n),
        active_per_sample: Vec::with_capacity(samples.len()),
        active_cells: Vec::new(),
        active_offsets: Vec::new(),
    };
    let first = samples.start;
    for b in samples {
        let k = b - first;
        let tape = if DENSE {
            &mut membrane[k * steps * n..(k + 1) * steps * n]
        } else {
            &mut []
        };
        lif_sample::<F, DENSE>(pass, b, &mut scratch, tape, &mut out);
    }
    out
}

/// `run_task_body` compiled for AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn run_task_avx2<F: Real, const DENSE: bool>(
    pass: &LayerPass<'_, F>,
    samples: Range<usize>,
    membrane: &mut [F],
) -> TaskOutput<F> {
    run_task_body::<F, DENSE>(pass, samples, membrane)
}

/// Runs one task with the compiled copy `isa` asks for.
#[allow(unsafe_code)]
fn run_task<F: Real, const DENSE: bool>(
    pass: &LayerPass<'_, F>,
    samples: Range<usize>,
    membrane: &mut [F],
    isa: Isa,
) -> TaskOutput<F> {
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Best && std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: run_task_avx2 only requires AVX2, which the CPU has just reported.
        return unsafe { run_task_avx2::<F, DENSE>(pass, samples, membrane) };
    }
    let _ = isa;
    run_task_body::<F, DENSE>(pass, samples, membrane)
}

/// Runs one LIF layer over the batch. Shapes were checked by the caller.
pub(super) fn lif_forward<F: Real>(
    input: &SpikeEvents,
    weights: &[F],
    layer: &LayerSpec,
    keep: Keep,
) -> (SpikeEvents, Vec<F>, CpuTape<F>) {
    lif_forward_on(input, weights, layer, keep, Isa::Best)
}

fn lif_forward_on<F: Real>(
    input: &SpikeEvents,
    weights: &[F],
    layer: &LayerSpec,
    keep: Keep,
    isa: Isa,
) -> (SpikeEvents, Vec<F>, CpuTape<F>) {
    let (batch, steps, n) = (input.batch(), input.steps(), layer.neurons);
    let band = match keep {
        Keep::Sparse { band } => band,
        _ => 0.0,
    };
    let pass = LayerPass {
        input,
        weights,
        neurons: n,
        beta: layer.beta,
        band,
        floor: -band,
    };
    let dense = matches!(keep, Keep::Dense { .. });
    // Every entry of the dense tape is written by its sample's task. Zeroed memory comes from the
    // allocator without a pass over it, so its pages are first touched by the tasks, in parallel.
    let mut membrane: Vec<F> = if dense {
        vec![F::zero(); batch * steps * n]
    } else {
        Vec::new()
    };
    let tasks: Vec<(Range<usize>, &mut [F])> = if dense {
        membrane
            .chunks_mut(SAMPLES_PER_TASK * steps * n)
            .enumerate()
            .map(|(task, piece)| {
                let start = task * SAMPLES_PER_TASK;
                (start..(start + SAMPLES_PER_TASK).min(batch), piece)
            })
            .collect()
    } else {
        (0..batch)
            .step_by(SAMPLES_PER_TASK)
            .map(|start| (start..(start + SAMPLES_PER_TASK).min(batch), &mut [][..]))
            .collect()
    };
    let outputs: Vec<TaskOutput<F>> = tasks
        .into_par_iter()
        .map(|(samples, piece)| {
            if dense {
                run_task::<F, true>(&pass, samples, piece, isa)
            } else {
                run_task::<F, false>(&pass, samples, piece, isa)
            }
        })
        .collect();

    let total_spikes: usize = outputs.iter().map(|o| o.spike_ids.len()).sum();
    let mut offsets = Vec::with_capacity(batch * steps + 1);
    let mut ids = Vec::with_capacity(total_spikes);
    let mut counts = Vec::with_capacity(batch * n);
    offsets.push(0u32);
    let mut cursor = 0u32;
    for o in &outputs {
        for &k in &o.spikes_per_row {
            cursor += k;
            offsets.push(cursor);
        }
        ids.extend_from_slice(&o.spike_ids);
        counts.extend_from_slice(&o.counts);
    }
    let spikes = SpikeEvents::from_parts(batch, steps, n, offsets, ids)
        .expect("the forward pass builds valid spike events");

    let kept = match keep {
        Keep::Nothing => Kept::Nothing,
        Keep::Dense { band } => Kept::Dense {
            v_minus_theta: membrane,
            band: band.map(F::of),
        },
        Keep::Sparse { band } => {
            let total: usize = outputs.iter().map(|o| o.active_cells.len()).sum();
            let mut sample_offsets = Vec::with_capacity(batch + 1);
            let mut cells = Vec::with_capacity(total);
            let mut v_minus_theta = Vec::with_capacity(total);
            sample_offsets.push(0u32);
            let mut cursor = 0u32;
            for o in &outputs {
                for &k in &o.active_per_sample {
                    cursor += k;
                    sample_offsets.push(cursor);
                }
                cells.extend_from_slice(&o.active_cells);
                v_minus_theta.extend_from_slice(&o.active_offsets);
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

#[cfg(test)]
mod tests {
    use rand::{Rng, SeedableRng};
    use rand_xoshiro::Xoshiro256PlusPlus;

    use super::*;
    use crate::spikes::SpikeEventsBuilder;

    /// What a forward pass produced, in plain arrays.
    struct Plain<F> {
        spikes: SpikeEvents,
        counts: Vec<F>,
        dense: Vec<F>,
        sparse: Vec<(u32, u32, F)>,
    }

    /// The LIF layer written neuron by neuron, as SPEC section 1 states it: the block loop must
    /// give exactly these bits.
    fn plain_forward<F: Real>(
        input: &SpikeEvents,
        weights: &[F],
        layer: &LayerSpec,
        keep: Keep,
    ) -> Plain<F> {
        let (batch, steps, n) = (input.batch(), input.steps(), layer.neurons);
        let mut builder = SpikeEventsBuilder::new(steps, n);
        let mut out = Plain {
            spikes: SpikeEvents::from_parts(0, steps, n, vec![0], vec![]).unwrap(),
            counts: vec![F::zero(); batch * n],
            dense: vec![],
            sparse: vec![],
        };
        for b in 0..batch {
            let (mut v, mut s) = (vec![0.0f64; n], vec![0.0f64; n]);
            let mut events = vec![];
            if let Keep::Dense { .. } = keep {
                out.dense.extend((0..n).map(|_| F::of(-THRESHOLD)));
            }
            for t in 0..steps - 1 {
                for j in 0..n {
                    let mut current = 0.0f64;
                    for &i in input.events(b, t) {
                        current += weights[i as usize * n + j].as_f64();
                    }
                    v[j] = membrane_step(v[j], current, s[j], layer.beta);
                    s[j] = if fires(v[j]) { 1.0 } else { 0.0 };
                    let count = &mut out.counts[b * n + j];
                    if s[j] > 0.0 {
                        events.push((t + 1, j as u32));
                        *count += F::one();
                    } else if v[j].is_nan() {
                        *count = F::nan();
                    }
                    let offset = v[j] - THRESHOLD;
                    match keep {
                        Keep::Dense { .. } => out.dense.push(F::of(offset)),
                        Keep::Sparse { band } if in_band(offset, band) => {
                            out.sparse
                                .push((b as u32, ((t + 1) * n + j) as u32, F::of(offset)))
                        }
                        _ => {}
                    }
                }
            }
            builder.push_sorted_sample(events).unwrap();
        }
        out.spikes = builder.finish();
        out
    }

    fn same_bits<F: Real>(a: &[F], b: &[F]) -> bool {
        a.len() == b.len()
            && a.iter().zip(b).all(|(x, y)| {
                (x.is_nan() && y.is_nan()) || x.as_f64().to_bits() == y.as_f64().to_bits()
            })
    }

    /// Checks one random case; returns its spikes, band entries and NaN counts, to show that the
    /// cases exercise every path.
    fn check_case<F: Real>(seed: u64, neurons: usize, with_nan: bool) -> [usize; 3] {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
        let (batch, steps, inputs) = (
            rng.random_range(1..=9),
            rng.random_range(2..=30),
            rng.random_range(1..=40),
        );
        let layer = LayerSpec {
            inputs,
            neurons,
            beta: rng.random_range(0.5..0.99),
        };
        let mut weights: Vec<F> = (0..inputs * neurons)
            .map(|_| F::of(rng.random_range(-0.4..0.8)))
            .collect();
        if with_nan {
            let k = rng.random_range(0..weights.len());
            weights[k] = F::nan();
        }
        let mut builder = SpikeEventsBuilder::new(steps, inputs);
        for _ in 0..batch {
            // Repeated (step, unit) pairs make counts above one.
            let events: Vec<(usize, u32)> = (0..rng.random_range(0..steps * 3))
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
        let mut seen = [0; 3];
        for keep in [
            Keep::Nothing,
            Keep::Dense { band: None },
            Keep::Sparse { band: 0.2 },
            Keep::Sparse { band: 1e9 },
        ] {
            let want = plain_forward(&input, &weights, &layer, keep);
            seen[0] += want.spikes.total_events();
            seen[1] += want.sparse.len();
            seen[2] += want.counts.iter().filter(|c| c.is_nan()).count();
            for isa in [Isa::Baseline, Isa::Best] {
                let what = format!("seed {seed}, {neurons} neurons, {keep:?}, {isa:?}");
                let (spikes, counts, tape) = lif_forward_on(&input, &weights, &layer, keep, isa);
                assert_eq!(spikes, want.spikes, "spikes: {what}");
                assert!(same_bits(&counts, &want.counts), "counts: {what}");
                match &tape.kept {
                    Kept::Nothing => assert_eq!(keep, Keep::Nothing),
                    Kept::Dense { v_minus_theta, .. } => {
                        assert!(same_bits(v_minus_theta, &want.dense), "tape: {what}")
                    }
                    Kept::Sparse {
                        sample_offsets,
                        cells,
                        v_minus_theta,
                        ..
                    } => {
                        let mut got = vec![];
                        for b in 0..batch {
                            for k in sample_offsets[b] as usize..sample_offsets[b + 1] as usize {
                                got.push((b as u32, cells[k], v_minus_theta[k]));
                            }
                        }
                        let ids = |e: &[(u32, u32, F)]| {
                            e.iter().map(|&(b, c, _)| (b, c)).collect::<Vec<_>>()
                        };
                        let offsets =
                            |e: &[(u32, u32, F)]| e.iter().map(|e| e.2).collect::<Vec<_>>();
                        assert_eq!(ids(&got), ids(&want.sparse), "active entries: {what}");
                        assert!(
                            same_bits(&offsets(&got), &offsets(&want.sparse)),
                            "V - theta: {what}"
                        );
                    }
                }
            }
        }
        seen
    }

    #[test]
    fn block_loop_matches_the_plain_layer_bit_for_bit() {
        // Sizes below, at and across whole blocks, and both compiled copies of the loop.
        let mut seen = [0; 3];
        let mut add = |s: [usize; 3]| (0..3).for_each(|k| seen[k] += s[k]);
        for (seed, neurons) in [1, 5, 31, 32, 33, 64, 70, 200].into_iter().enumerate() {
            add(check_case::<f32>(seed as u64, neurons, false));
            add(check_case::<f64>(100 + seed as u64, neurons, false));
        }
        for seed in 0..4 {
            add(check_case::<f32>(200 + seed, 45, true));
            add(check_case::<f64>(300 + seed, 45, true));
        }
        assert!(
            seen.iter().all(|&k| k > 50),
            "spikes, band entries, NaN counts: {seen:?}"
        );
    }
}
