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
//! batch x steps x inputs GEMM. On x86-64 the chunk loop also has an AVX2 copy, used when the CPU
//! has AVX2; it does the same element-wise operations in the same order, so it gives the same bits.

use std::ops::Range;

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
    lif_backward_on(tape, input, weights, grad_spikes, below, avx2_available())
}

/// Whether this CPU runs the AVX2 copy of the chunk loop.
fn avx2_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// `lif_backward` with the AVX2 copy of the chunk loop or the baseline one; `avx2` must be true
/// only when `avx2_available()` is.
fn lif_backward_on<F: Real>(
    tape: &CpuTape<F>,
    input: &SpikeEvents,
    weights: &[F],
    grad_spikes: &[F],
    below: Below<'_, F>,
    avx2: bool,
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

    let pass = SparsePass {
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
    let partials: Vec<Vec<F>> = chunks
        .into_par_iter()
        .zip(pieces)
        .map(|(range, out)| chunk_backward(&pass, range, out))
        .collect();

    let dw_t = sum_partials(partials, n * inputs);
    let mut dw = vec![F::zero(); inputs * n];
    // Rows are short: a few dozen per task keep rayon's overhead below the copying.
    dw.par_chunks_mut(n)
        .with_min_len(64)
        .enumerate()
        .for_each(|(i, row)| {
            for (j, x) in row.iter_mut().enumerate() {
                *x = dw_t[j * inputs + i];
            }
        });
    (dw, ds_in)
}

/// What every chunk of the sparse backward pass reads.
struct SparsePass<'a, F> {
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

/// The samples `range`: returns their dW, transposed (row j holds dW[:, j]), and writes dS_in at
/// the layer below's active entries of these samples into `out`.
#[inline(always)]
fn chunk_backward_body<F: Real>(
    pass: &SparsePass<'_, F>,
    range: Range<usize>,
    mut out: Option<&mut [F]>,
) -> Vec<F> {
    let SparsePass {
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
    // dW is accumulated transposed (row j holds dW[:, j]) so each active entry adds one
    // contiguous row.
    let mut dw_t = vec![F::zero(); n * inputs];
    let mut trace = vec![F::zero(); inputs];
    let mut adjoint = vec![F::zero(); n];
    let mut d = Vec::new();
    let chunk_base = below.map_or(0, |below| below.sample_offsets[range.start] as usize);
    for b in range {
        let (start, end) = (sample_offsets[b] as usize, sample_offsets[b + 1] as usize);
        d.clear();
        d.extend((start..end).map(|k| grad_spikes[k] * surrogate_of_offset(v_minus_theta[k])));

        if end > start {
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
                    axpy(
                        d[k - start],
                        &trace,
                        &mut dw_t[j * inputs..(j + 1) * inputs],
                    );
                    k += 1;
                }
            }
        }

        if let (Some(out), Some(below)) = (out.as_deref_mut(), below) {
            let BelowActive {
                sample_offsets: below_offsets,
                cells: below_cells,
                per_sample,
                per_neuron,
            } = below;
            let (below_start, below_end) =
                (below_offsets[b] as usize, below_offsets[b + 1] as usize);
            if below_end == below_start {
                continue;
            }
            let first_t = below_cells[below_start] as usize / inputs;
            adjoint.iter_mut().for_each(|x| *x = F::zero());
            let mut kb = below_end;
            let mut k = end;
            // Until the last active entry of this layer is reached the adjoint is all +0, which
            // scaling leaves as it is.
            let mut adjoint_live = false;
            for t in (first_t..steps).rev() {
                // adjoint = sum over active tau > t of beta^(tau-t-1) d[tau]. Walking back over
                // sorted entries, "entry kb - 1 is at step t" is `cell >= t inputs`.
                let below_row = t * inputs;
                while kb > below_start && below_cells[kb - 1] as usize >= below_row {
                    kb -= 1;
                    let i = below_cells[kb] as usize - below_row;
                    let w_row = &weights[i * n..(i + 1) * n];
                    out[kb - chunk_base] = with_regularisers(
                        dot(w_row, &adjoint).as_f64(),
                        per_sample[b],
                        per_neuron[b * inputs + i],
                    );
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
    }
    dw_t
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
    use crate::cpu::CpuBackend;
    use crate::lif::{Keep, LayerSpec};
    use crate::spikes::SpikeEventsBuilder;

    fn same_bits<F: Real>(a: &[F], b: &[F]) -> bool {
        a.len() == b.len()
            && a.iter()
                .zip(b)
                .all(|(x, y)| x.as_f64().to_bits() == y.as_f64().to_bits())
    }

    /// Compares both copies on one random two-layer case; returns the active entries of both layers.
    fn case<F: Real>(seed: u64) -> usize {
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
        let (want_dw, want_ds) = lif_backward_on(&l2.tape, &l1.spikes, &w2.0, &ds2, below, false);
        let (dw, ds) = lif_backward_on(&l2.tape, &l1.spikes, &w2.0, &ds2, below, true);
        assert!(same_bits(&dw, &want_dw), "seed {seed}: dW");
        assert!(
            same_bits(&ds.unwrap(), &want_ds.unwrap()),
            "seed {seed}: dS_in"
        );
        ds2.len()
            + per_neuron
                .len()
                .min(cpu.tape_stats(&l1.tape).unwrap().active as usize)
    }

    #[test]
    fn avx2_copy_gives_the_baseline_bits() {
        if !avx2_available() {
            eprintln!("no AVX2 on this CPU: nothing to compare");
            return;
        }
        let mut active = 0;
        for seed in 0..24 {
            active += case::<f32>(seed) + case::<f64>(seed + 100);
        }
        assert!(active > 1000, "the cases have only {active} active entries");
    }
}
