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
//! neuron by neuron. A step without input events after a step where every neuron was quiet only
//! decays the membranes, and once the inputs have ended such a step ends the sample (for the sparse
//! tape and inference). On x86-64 the loop is compiled three times, for the baseline, AVX2 and
//! AVX-512F, and the widest copy the CPU has runs: the same IEEE operations in the same order (no
//! fused multiply-add), so every copy gives the same bits, and the GPU kernels reproduce them.

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

/// Neurons updated together after the whole `BLOCK`s (200 = 6 x 32 + 8), so that a layer whose
/// size is a multiple of 8 needs no partial block.
const SMALL_BLOCK: usize = 8;

/// Consecutive samples one rayon task runs, reusing its scratch; samples are independent, so the
/// split changes no result.
const SAMPLES_PER_TASK: usize = 4;

/// Which compiled copy of the step loop runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Isa {
    /// The target's baseline (SSE2 on x86-64).
    Baseline,
    /// AVX2: four f64 lanes per instruction.
    Avx2,
    /// AVX-512F: eight f64 lanes per instruction.
    Avx512,
}

impl Isa {
    /// The copies this CPU can run, fastest last.
    fn available() -> Vec<Isa> {
        let mut isas = vec![Isa::Baseline];
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx2") {
                isas.push(Isa::Avx2);
            }
            if std::arch::is_x86_feature_detected!("avx512f") {
                isas.push(Isa::Avx512);
            }
        }
        isas
    }

    fn best() -> Isa {
        *Isa::available()
            .last()
            .expect("the baseline is always available")
    }
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
    /// Whether a step without input events keeps quiet neurons quiet: with no current and no
    /// spike, V' = beta V is no larger than V when V > 0, and V' <= 0 when V <= 0, so an entry at
    /// or below the floor stays there as long as the floor is at least -theta (a band h <= 1).
    quiet_decay: bool,
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
/// small blocks; padding lanes get no current, stay at 0, and are masked out of the per-neuron path.
struct Scratch {
    v: Vec<f64>,
    s: Vec<f64>,
    spike_count: Vec<u32>,
    is_nan: Vec<bool>,
}

/// One membrane step of a block: `v = (beta v + current) - s`, `s = H(v - theta)`. Returns the
/// lanes that spike, lie above `floor` (the band) or are NaN, one bit each.
#[inline(always)]
fn block_step<const W: usize>(
    v: &mut [f64; W],
    s: &mut [f64; W],
    current: &[f64; W],
    beta: f64,
    floor: f64,
) -> u32 {
    // Local copies: the compiler cannot see that `v` and `s` never alias, and would otherwise
    // keep this loop scalar.
    let (mut vb, mut sb) = (*v, *s);
    for l in 0..W {
        vb[l] = membrane_step(vb[l], current[l], sb[l], beta);
    }
    let mut notable = 0u32;
    for l in 0..W {
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
    v: &[f64],
    s: &[f64],
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

/// One step of the `lanes` (at most `W`) neurons from `base`: input current, membrane, spikes, tapes.
/// Returns whether a lane spiked, lies in the band or is NaN.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn step_block<F: Real, const DENSE: bool, const W: usize>(
    pass: &LayerPass<'_, F>,
    scratch: &mut Scratch,
    membrane: &mut [F],
    out: &mut TaskOutput<F>,
    events: &[u32],
    base: usize,
    lanes: usize,
    row_base: usize,
) -> bool {
    let (n, weights) = (pass.neurons, pass.weights);
    let mut current = [0.0f64; W];
    if lanes == W {
        for &i in events {
            let start = i as usize * n + base;
            let w: &[F; W] = weights[start..start + W]
                .try_into()
                .expect("a whole block of weights");
            for l in 0..W {
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
    let v: &mut [f64; W] = (&mut scratch.v[base..base + W])
        .try_into()
        .expect("a whole block of membranes");
    let s: &mut [f64; W] = (&mut scratch.s[base..base + W])
        .try_into()
        .expect("a whole block of spikes");
    let mut notable = block_step(v, s, &current, pass.beta, pass.floor);
    if lanes < W {
        // Padding lanes stay at V = 0, which a very wide band would count as active.
        notable &= (1u32 << lanes) - 1;
    }
    if DENSE {
        let dst = &mut membrane[row_base + base..row_base + base + lanes];
        if lanes == W {
            for l in 0..W {
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
    notable != 0
}

/// A step with no input events after a step where no neuron spiked, lay in the band or was NaN:
/// `v = (beta v + 0) - 0` for every neuron, and (`DENSE`) the tape row. Such a step leaves every
/// neuron quiet again (see `LayerPass::quiet_decay`), so it records nothing.
#[inline(always)]
fn quiet_step<F: Real, const DENSE: bool>(
    pass: &LayerPass<'_, F>,
    scratch: &mut Scratch,
    membrane: &mut [F],
    row_base: usize,
) {
    for v in scratch.v.iter_mut() {
        *v = membrane_step(*v, 0.0, 0.0, pass.beta);
    }
    if DENSE {
        let n = pass.neurons;
        for (m, &v) in membrane[row_base..row_base + n].iter_mut().zip(&scratch.v) {
            *m = F::of(v - THRESHOLD);
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
    let (steps, n) = (pass.input.steps(), pass.neurons);
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

    // After the last input event, once a step leaves every neuron quiet, nothing is recorded again.
    let last_event_step = (0..steps.saturating_sub(1))
        .rev()
        .find(|&t| !pass.input.events(b, t).is_empty());
    let mut any_notable = false;
    for t in 0..steps.saturating_sub(1) {
        let step = t + 1;
        let row_base = step * n;
        let events = pass.input.events(b, t);
        if pass.quiet_decay && !any_notable && events.is_empty() {
            if !DENSE && last_event_step.is_none_or(|last| t > last) {
                break;
            }
            quiet_step::<F, DENSE>(pass, scratch, membrane, row_base);
            continue;
        }
        let spikes_before = out.spike_ids.len();
        any_notable = false;
        let mut base = 0;
        while base + BLOCK <= n {
            any_notable |= step_block::<F, DENSE, BLOCK>(
                pass, scratch, membrane, out, events, base, BLOCK, row_base,
            );
            base += BLOCK;
        }
        while base < n {
            let lanes = SMALL_BLOCK.min(n - base);
            any_notable |= step_block::<F, DENSE, SMALL_BLOCK>(
                pass, scratch, membrane, out, events, base, lanes, row_base,
            );
            base += SMALL_BLOCK;
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
    let padded = n.next_multiple_of(SMALL_BLOCK);
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

/// `run_task_body` compiled for AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn run_task_avx512<F: Real, const DENSE: bool>(
    pass: &LayerPass<'_, F>,
    samples: Range<usize>,
    membrane: &mut [F],
) -> TaskOutput<F> {
    run_task_body::<F, DENSE>(pass, samples, membrane)
}

/// Runs one task with the compiled copy `isa`, which `Isa::available` listed.
#[allow(unsafe_code)]
fn run_task<F: Real, const DENSE: bool>(
    pass: &LayerPass<'_, F>,
    samples: Range<usize>,
    membrane: &mut [F],
    isa: Isa,
) -> TaskOutput<F> {
    match isa {
        // SAFETY: Isa::available lists Avx2 only when the CPU reports AVX2, the one requirement.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { run_task_avx2::<F, DENSE>(pass, samples, membrane) },
        // SAFETY: Isa::available lists Avx512 only when the CPU reports AVX-512F.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => unsafe { run_task_avx512::<F, DENSE>(pass, samples, membrane) },
        _ => run_task_body::<F, DENSE>(pass, samples, membrane),
    }
}

/// Runs one LIF layer over the batch. Shapes were checked by the caller.
pub(super) fn lif_forward<F: Real>(
    input: &SpikeEvents,
    weights: &[F],
    layer: &LayerSpec,
    keep: Keep,
) -> (SpikeEvents, Vec<F>, CpuTape<F>) {
    lif_forward_on(input, weights, layer, keep, Isa::best())
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
        quiet_decay: -band >= -THRESHOLD,
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
    let batch = hidden.batch();
    let per_sample: Vec<(Vec<F>, Vec<u32>)> = (0..batch)
        .into_par_iter()
        .map(|b| match spec.mode {
            Readout::Max => readout_sample::<F, true>(hidden, weights, spec, b),
            Readout::Sum => readout_sample::<F, false>(hidden, weights, spec, b),
        })
        .collect();
    let mut logits = Vec::with_capacity(batch * spec.classes);
    let mut argmax = Vec::new();
    for (l, a) in per_sample {
        logits.extend_from_slice(&l);
        argmax.extend_from_slice(&a);
    }
    (
        logits,
        CpuReadoutTape {
            batch,
            steps: hidden.steps(),
            spec: *spec,
            argmax,
        },
    )
}

/// One sample's logits, and (`MAX`) the step of each maximum.
fn readout_sample<F: Real, const MAX: bool>(
    hidden: &SpikeEvents,
    weights: &[F],
    spec: &ReadoutSpec,
    b: usize,
) -> (Vec<F>, Vec<u32>) {
    let (steps, classes) = (hidden.steps(), spec.classes);
    let beta = spec.beta;
    let gain = 1.0 - spec.beta;
    // Without input, y' = beta y + gain 0 moves toward 0, never above the running maximum (which
    // is at least y[0] = 0): such steps need no max check, and after the last input event the max
    // is final. Holds for 0 <= beta <= 1, which every preset has; other leaks take the full loop.
    let decays = (0.0..=1.0).contains(&beta);
    let last_event_step = (0..steps.saturating_sub(1))
        .rev()
        .find(|&t| !hidden.events(b, t).is_empty());
    let mut y = vec![0.0f64; classes];
    let mut r = vec![0.0f64; classes];
    let mut logit = vec![0.0f64; classes];
    let mut arg = vec![0u32; if MAX { classes } else { 0 }];
    for t in 0..steps.saturating_sub(1) {
        let events = hidden.events(b, t);
        if MAX && decays && events.is_empty() {
            if last_event_step.is_none_or(|last| t > last) {
                break;
            }
            for yc in y.iter_mut() {
                *yc = beta * *yc + gain * 0.0;
            }
            continue;
        }
        r.fill(0.0);
        add_event_rows(&mut r, events, weights);
        for (yc, &rc) in y.iter_mut().zip(&r) {
            *yc = beta * *yc + gain * rc;
        }
        if MAX {
            for c in 0..classes {
                // A NaN trace must reach the loss, not hide behind the max.
                if !logit[c].is_nan() && (y[c].is_nan() || y[c] > logit[c]) {
                    logit[c] = y[c];
                    arg[c] = (t + 1) as u32;
                }
            }
        } else {
            for (l, &yc) in logit.iter_mut().zip(&y) {
                *l += yc;
            }
        }
    }
    (logit.into_iter().map(F::of).collect(), arg)
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
    fn check_case<F: Real>(seed: u64, neurons: usize, with_nan: bool, early: bool) -> [usize; 3] {
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
        // `early` puts every event in the first third of the steps, as time-to-first-spike
        // inputs do, so that the quiet steps after them (and the early exit) are exercised.
        let last_event_step = if early { steps.div_ceil(3) } else { steps };
        for _ in 0..batch {
            // Repeated (step, unit) pairs make counts above one.
            let events: Vec<(usize, u32)> = (0..rng.random_range(0..steps * 3))
                .map(|_| {
                    (
                        rng.random_range(0..last_event_step),
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
            for isa in Isa::available() {
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
            for early in [false, true] {
                let seed = seed as u64 + if early { 50 } else { 0 };
                add(check_case::<f32>(seed, neurons, false, early));
                add(check_case::<f64>(100 + seed, neurons, false, early));
            }
        }
        for seed in 0..4 {
            add(check_case::<f32>(200 + seed, 45, true, seed % 2 == 0));
            add(check_case::<f64>(300 + seed, 45, true, seed % 2 == 1));
        }
        assert!(
            seen.iter().all(|&k| k > 50),
            "spikes, band entries, NaN counts: {seen:?}"
        );
    }

    /// The readout written as SPEC section 1 states it, step by step.
    fn plain_readout(
        hidden: &SpikeEvents,
        weights: &[f32],
        spec: &ReadoutSpec,
    ) -> (Vec<f32>, Vec<u32>) {
        let (batch, steps, classes) = (hidden.batch(), hidden.steps(), spec.classes);
        let (mut logits, mut argmax) = (vec![], vec![]);
        for b in 0..batch {
            let mut y = vec![0.0f64; classes];
            let mut logit = vec![0.0f64; classes];
            let mut arg = vec![0u32; classes];
            for t in 0..steps - 1 {
                for c in 0..classes {
                    let mut r = 0.0f64;
                    for &j in hidden.events(b, t) {
                        r += weights[j as usize * classes + c] as f64;
                    }
                    y[c] = spec.beta * y[c] + (1.0 - spec.beta) * r;
                    match spec.mode {
                        Readout::Max => {
                            if !logit[c].is_nan() && (y[c].is_nan() || y[c] > logit[c]) {
                                logit[c] = y[c];
                                arg[c] = (t + 1) as u32;
                            }
                        }
                        Readout::Sum => logit[c] += y[c],
                    }
                }
            }
            logits.extend(logit.iter().map(|&l| l as f32));
            if spec.mode == Readout::Max {
                argmax.extend(arg);
            }
        }
        (logits, argmax)
    }

    #[test]
    fn readout_matches_the_plain_readout_bit_for_bit() {
        for seed in 0..40u64 {
            let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
            let (batch, steps, inputs, classes): (usize, usize, usize, usize) = (
                rng.random_range(1..=6),
                rng.random_range(2..=40),
                rng.random_range(1..=30),
                rng.random_range(1..=12),
            );
            let mut weights: Vec<f32> = (0..inputs * classes)
                .map(|_| rng.random_range(-1.0..1.0))
                .collect();
            if seed % 7 == 3 {
                weights[0] = f32::NAN;
            }
            let last = if seed % 2 == 0 {
                steps
            } else {
                steps.div_ceil(3)
            };
            let mut builder = SpikeEventsBuilder::new(steps, inputs);
            for _ in 0..batch {
                let events: Vec<(usize, u32)> = (0..rng.random_range(0..steps * 2))
                    .map(|_| {
                        (
                            rng.random_range(0..last),
                            rng.random_range(0..inputs as u32),
                        )
                    })
                    .collect();
                builder.push_sample(events).unwrap();
            }
            let hidden = builder.finish();
            // Leaks outside [0, 1] too, where the quiet-step shortcut must not apply.
            let beta = [0.9048, 0.0, 1.0, 1.3, -0.5][seed as usize % 5];
            for mode in [Readout::Max, Readout::Sum] {
                let spec = ReadoutSpec {
                    inputs,
                    classes,
                    beta,
                    mode,
                };
                let (want_logits, want_arg) = plain_readout(&hidden, &weights, &spec);
                let (logits, tape) = readout_forward(&hidden, &weights, &spec);
                assert!(
                    same_bits(&logits, &want_logits),
                    "seed {seed} {mode:?}: {logits:?} vs {want_logits:?}"
                );
                assert_eq!(tape.argmax, want_arg, "seed {seed} {mode:?}");
            }
        }
    }
}
