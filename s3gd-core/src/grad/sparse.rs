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
//! dW has a second form, by input spikes: dW[i, :] = sum over input spikes (b, s, i) of G[b, s], read
//! off the same backward walk that builds G for dS_in. Per pass, the form with the smaller count of
//! multiply-adds runs (active x inputs plus the trace walk, or input spikes x neurons plus the
//! adjoint walk): the second wins where input spikes are rarer than active entries per unit.
//!
//! Per sample the cost is O(steps x (inputs + neurons) + active x (inputs + neurons)), with no
//! batch x steps x inputs GEMM. On x86-64 the chunk loop also has an AVX2 copy, used when the CPU
//! has AVX2; it does the same element-wise operations in the same order, so it gives the same bits.

use std::ops::Range;

use super::{axpy, dot, split_lengths, Below};
use crate::cpu::loss::with_regularisers;
use crate::cpu::{avx2_available, map_sum, sample_chunks, transpose, CpuTape, Kept};
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
    lif_backward_on(
        tape,
        input,
        weights,
        grad_spikes,
        below,
        avx2_available(),
        None,
    )
}

/// How a pass computes dW.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum WeightGradBy {
    /// One row of dW^T per active entry, from the input trace rebuilt step by step.
    Traces,
    /// One row of dW per input spike, from the later adjoint G of the backward walk.
    InputSpikes,
}

impl WeightGradBy {
    /// The form with fewer multiply-adds for this pass (a choice made from the data alone, so the
    /// bits never depend on the threads).
    fn cheaper(
        batch: usize,
        steps: usize,
        inputs: usize,
        neurons: usize,
        active: usize,
        input_spikes: usize,
        walks_anyway: bool,
    ) -> Self {
        let walk = batch * steps;
        let traces = active * inputs + walk * inputs + inputs * neurons;
        let by_spikes = input_spikes * neurons + if walks_anyway { 0 } else { walk * neurons };
        if by_spikes <= traces {
            WeightGradBy::InputSpikes
        } else {
            WeightGradBy::Traces
        }
    }
}

/// `lif_backward` with the AVX2 copy of the chunk loop or the baseline one (`avx2` must be true
/// only when `avx2_available()` is), and dW in the form `by` or else the cheaper one.
fn lif_backward_on<F: Real>(
    tape: &CpuTape<F>,
    input: &SpikeEvents,
    weights: &[F],
    grad_spikes: &[F],
    below: Below<'_, F>,
    avx2: bool,
    by: Option<WeightGradBy>,
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
            } => BelowActive {
                sample_offsets,
                cells,
                per_sample,
                per_neuron,
            },
            _ => unreachable!("the caller checked that both tapes are sparse"),
        },
    );

    let chunks = sample_chunks(batch);
    let mut ds_in = below.map(|below| vec![F::zero(); below.sample_offsets[batch] as usize]);
    let pieces: Vec<Option<&mut [F]>> = match (ds_in.as_mut(), below) {
        (Some(out), Some(below)) => {
            let offsets = below.sample_offsets;
            let lengths: Vec<usize> = chunks
                .iter()
                .map(|r| (offsets[r.end] - offsets[r.start]) as usize)
                .collect();
            split_lengths(out, &lengths).into_iter().map(Some).collect()
        }
        _ => chunks.iter().map(|_| None).collect(),
    };

    let weight_grad_by = by.unwrap_or_else(|| {
        WeightGradBy::cheaper(
            batch,
            steps,
            inputs,
            n,
            sample_offsets[batch] as usize,
            input.total_events(),
            below.is_some(),
        )
    });
    let pass = SparsePass {
        weight_grad_by,
        input,
        weights,
        grad_spikes,
        sample_offsets,
        cells,
        v_minus_theta,
        steps,
        neurons: n,
        beta,
        below,
        avx2,
    };
    let tasks: Vec<_> = chunks.into_iter().zip(pieces).collect();
    let dw = map_sum(tasks, n * inputs, &|(range, out)| {
        chunk_backward(&pass, range, out)
    });
    let dw = match weight_grad_by {
        WeightGradBy::Traces => transpose(&dw, n, inputs),
        WeightGradBy::InputSpikes => dw,
    };
    (dw, ds_in)
}

/// What every chunk of the sparse backward pass reads.
struct SparsePass<'a, F> {
    weight_grad_by: WeightGradBy,
    input: &'a SpikeEvents,
    weights: &'a [F],
    grad_spikes: &'a [F],
    sample_offsets: &'a [u32],
    cells: &'a [u32],
    v_minus_theta: &'a [F],
    steps: usize,
    neurons: usize,
    beta: F,
    below: Option<BelowActive<'a, F>>,
    /// Run the AVX2 copy (only where the CPU has AVX2).
    avx2: bool,
}

/// The layer below, where dS_in is needed: its active entries and its regulariser gradients.
#[derive(Clone, Copy)]
struct BelowActive<'a, F> {
    sample_offsets: &'a [u32],
    cells: &'a [u32],
    per_sample: &'a [F],
    per_neuron: &'a [F],
}

/// The samples `range`: returns their dW (transposed, row j holding dW[:, j], when built from
/// traces), and writes dS_in at the layer below's active entries of these samples into `out`.
#[inline(always)]
fn chunk_backward_body<F: Real>(
    pass: &SparsePass<'_, F>,
    range: Range<usize>,
    mut out: Option<&mut [F]>,
) -> Vec<F> {
    let SparsePass {
        weight_grad_by,
        input,
        weights,
        grad_spikes,
        sample_offsets,
        cells,
        v_minus_theta,
        steps,
        neurons: n,
        beta,
        below,
        ..
    } = *pass;
    let inputs = input.units();
    // Either layout adds one contiguous row per active entry (traces) or per input spike.
    let mut dw = vec![F::zero(); n * inputs];
    let mut trace = vec![F::zero(); inputs];
    let mut adjoint = vec![F::zero(); n];
    let mut d = Vec::new();
    let chunk_base = below.map_or(0, |below| below.sample_offsets[range.start] as usize);
    for b in range {
        let (start, end) = (sample_offsets[b] as usize, sample_offsets[b + 1] as usize);
        d.clear();
        d.extend((start..end).map(|k| grad_spikes[k] * surrogate_of_offset(v_minus_theta[k])));

        if weight_grad_by == WeightGradBy::Traces && end > start {
            let last_t = cells[end - 1] as usize / n;
            trace.iter_mut().for_each(|x| *x = F::zero());
            let mut k = start;
            // Entries are sorted by (t, j) and start at t = 1, so "entry k is at step t" is
            // `cells[k] < (t + 1) n`, and j = cells[k] - t n: no division per entry.
            // Until the first input event the trace is all +0, which scaling leaves as it is.
            let mut trace_live = false;
            for t in 1..=last_t {
                if trace_live {
                    trace.iter_mut().for_each(|x| *x *= beta);
                }
                for &i in input.events(b, t - 1) {
                    trace[i as usize] += F::one();
                    trace_live = true;
                }
                let (row, next_row) = (t * n, (t + 1) * n);
                while k < end && (cells[k] as usize) < next_row {
                    let j = cells[k] as usize - row;
                    axpy(d[k - start], &trace, &mut dw[j * inputs..(j + 1) * inputs]);
                    k += 1;
                }
            }
        }

        // The walk back in time: G for dS_in at the layer below's active entries, and for dW at
        // the input spikes when dW is built from them.
        let mut below_here = None;
        if let (Some(out), Some(below)) = (out.as_deref_mut(), below) {
            let (below_start, below_end) = (
                below.sample_offsets[b] as usize,
                below.sample_offsets[b + 1] as usize,
            );
            if below_end > below_start {
                below_here = Some((out, below, below_start, below_end));
            }
        }
        let spikes_here = weight_grad_by == WeightGradBy::InputSpikes && end > start;
        if below_here.is_none() && !spikes_here {
            continue;
        }
        // Below the first step that has a layer-below entry or an input spike, nothing is read.
        let first_below_t = below_here
            .as_ref()
            .map_or(steps, |&(_, below, below_start, _)| {
                below.cells[below_start] as usize / inputs
            });
        let first_spike_t = if spikes_here {
            (0..steps)
                .find(|&t| !input.events(b, t).is_empty())
                .unwrap_or(steps)
        } else {
            steps
        };
        let first_t = first_below_t.min(first_spike_t);
        adjoint.iter_mut().for_each(|x| *x = F::zero());
        let mut kb = below_here
            .as_ref()
            .map_or(0, |&(_, _, _, below_end)| below_end);
        let mut k = end;
        // Until the last active entry of this layer is reached the adjoint is all +0, which
        // scaling leaves as it is, and whose products with the weights sum to +0.
        let mut adjoint_live = false;
        for t in (first_t..steps).rev() {
            // adjoint = G[t] = sum over active tau > t of beta^(tau-t-1) d[tau]. Walking back
            // over sorted entries, "entry kb - 1 is at step t" is `cell >= t inputs`.
            if let Some((out, below, below_start, _)) = below_here.as_mut() {
                let below_row = t * inputs;
                while kb > *below_start && below.cells[kb - 1] as usize >= below_row {
                    kb -= 1;
                    let i = below.cells[kb] as usize - below_row;
                    let ds = if adjoint_live {
                        dot(&weights[i * n..(i + 1) * n], &adjoint).as_f64()
                    } else {
                        0.0
                    };
                    out[kb - chunk_base] = with_regularisers(
                        ds,
                        below.per_sample[b],
                        below.per_neuron[b * inputs + i],
                    );
                }
            }
            if spikes_here && adjoint_live {
                for &i in input.events(b, t) {
                    let row = &mut dw[i as usize * n..(i as usize + 1) * n];
                    for (w, &g) in row.iter_mut().zip(&adjoint) {
                        *w += g;
                    }
                }
            }
            if adjoint_live {
                adjoint.iter_mut().for_each(|x| *x *= beta);
            }
            let row = t * n;
            while k > start && cells[k - 1] as usize >= row {
                k -= 1;
                adjoint[cells[k] as usize - row] += d[k - start];
                adjoint_live = true;
            }
        }
    }
    dw
}

/// `chunk_backward_body` compiled for AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn chunk_backward_avx2<F: Real>(
    pass: &SparsePass<'_, F>,
    range: Range<usize>,
    out: Option<&mut [F]>,
) -> Vec<F> {
    chunk_backward_body(pass, range, out)
}

/// Runs one chunk, with the AVX2 copy when `pass.avx2`: element-wise products and sums in the same
/// order (`dot`'s eight lanes are written out), so both copies give the same bits.
#[allow(unsafe_code)]
fn chunk_backward<F: Real>(
    pass: &SparsePass<'_, F>,
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
    use crate::cpu::{same_bits, CpuBackend};
    use crate::lif::{Keep, LayerSpec};
    use crate::spikes::SpikeEventsBuilder;

    /// Each element within `tolerance` of the other relative to the largest magnitude of `want`.
    fn assert_close<F: Real>(got: &[F], want: &[F], tolerance: f64, what: &str) {
        assert_eq!(got.len(), want.len(), "{what}: lengths");
        let scale = want.iter().map(|x| x.as_f64().abs()).fold(1e-30, f64::max);
        for (k, (g, w)) in got.iter().zip(want).enumerate() {
            let error = (g.as_f64() - w.as_f64()).abs() / scale;
            assert!(
                error <= tolerance,
                "{what}: element {k}: {} vs {} ({error:e})",
                g.as_f64(),
                w.as_f64()
            );
        }
    }

    /// Compares both copies (with `avx2`) and both forms of dW on one random two-layer case;
    /// returns the active entries of both layers.
    fn case<F: Real>(seed: u64, avx2: bool) -> usize {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
        let (batch, steps, inputs, hidden) = (
            rng.random_range(1..=12usize),
            rng.random_range(2..=40usize),
            rng.random_range(1..=70usize),
            rng.random_range(1..=70usize),
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
        let band = [0.2, 0.5, 1e9][seed as usize % 3];
        let keep = Keep::Sparse { band };
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
        let ds2 = grad(cpu.tape_stats(&l2.tape).unwrap().active as usize, &mut rng);
        let (per_sample, per_neuron) = (grad(batch, &mut rng), grad(batch * hidden, &mut rng));
        let below = Some((&l1.tape, per_sample.as_slice(), per_neuron.as_slice()));
        for by in [WeightGradBy::Traces, WeightGradBy::InputSpikes] {
            let run =
                |avx2| lif_backward_on(&l2.tape, &l1.spikes, &w2.0, &ds2, below, avx2, Some(by));
            let (want_dw, want_ds) = run(false);
            if avx2 {
                let (dw, ds) = run(true);
                assert!(same_bits(&dw, &want_dw), "seed {seed}, {by:?}: dW");
                assert!(
                    same_bits(ds.as_ref().unwrap(), want_ds.as_ref().unwrap()),
                    "seed {seed}, {by:?}: dS_in"
                );
            }
            // Both forms of dW (and dS_in, which does not depend on the form) agree.
            let (other_dw, other_ds) = lif_backward_on(
                &l2.tape,
                &l1.spikes,
                &w2.0,
                &ds2,
                below,
                false,
                Some(match by {
                    WeightGradBy::Traces => WeightGradBy::InputSpikes,
                    WeightGradBy::InputSpikes => WeightGradBy::Traces,
                }),
            );
            let tolerance = if F::NAME == "f64" { 1e-12 } else { 1e-5 };
            assert_close(
                &other_dw,
                &want_dw,
                tolerance,
                &format!("seed {seed}: dW forms"),
            );
            assert!(
                same_bits(other_ds.as_ref().unwrap(), want_ds.as_ref().unwrap()),
                "seed {seed}: dS_in forms"
            );
        }
        ds2.len()
            + per_neuron
                .len()
                .min(cpu.tape_stats(&l1.tape).unwrap().active as usize)
    }

    #[test]
    fn avx2_copy_gives_the_baseline_bits_and_both_weight_grad_forms_agree() {
        let avx2 = avx2_available();
        if !avx2 {
            eprintln!("no AVX2 on this CPU: only the two forms of dW are compared");
        }
        let mut active = 0;
        for seed in 0..24 {
            active += case::<f32>(seed, avx2) + case::<f64>(seed + 100, avx2);
        }
        assert!(active > 1000, "the cases have only {active} active entries");
    }

    #[test]
    fn the_cheaper_form_follows_the_counts() {
        // FMNIST's layer 2 at B = 32: input spikes about as many as active entries.
        let by =
            |active, spikes, walks| WeightGradBy::cheaper(32, 100, 200, 200, active, spikes, walks);
        assert_eq!(by(5490, 5696, true), WeightGradBy::InputSpikes);
        // Dense input spikes (2.5% of 700 units over 500 steps) against 1% active.
        assert_eq!(
            WeightGradBy::cheaper(32, 500, 700, 200, 32_000, 280_000, false),
            WeightGradBy::Traces
        );
    }
}
