//! The two gradient methods on the CPU, one file each: `dense` (BPTT) and `sparse` (S3GD).

pub mod dense;
pub mod sparse;

use crate::cpu::CpuTape;
use crate::real::Real;

/// The layer below a backward pass: its tape (which positions need dS) and its regulariser
/// gradients (per sample, per sample and neuron).
pub(crate) type Below<'a, F> = Option<(&'a CpuTape<F>, &'a [F], &'a [F])>;

/// Dot product with eight independent accumulators, so that it vectorises. Always inlined: a
/// separate copy would be compiled for the baseline ISA, not for the caller's AVX2 copy (measured:
/// 28% of the sparse backward's time in an SSE2 `dot` when the optimiser stopped inlining it).
#[inline(always)]
pub(crate) fn dot<F: Real>(a: &[F], b: &[F]) -> F {
    let mut lanes = [F::zero(); 8];
    let (a8, a_rest) = a.split_at(a.len() - a.len() % 8);
    let (b8, b_rest) = b.split_at(a8.len());
    for (x, y) in a8.chunks_exact(8).zip(b8.chunks_exact(8)) {
        for l in 0..8 {
            lanes[l] += x[l] * y[l];
        }
    }
    // Opaque to the optimiser: otherwise it shapes the loop's accumulators after this pairwise sum
    // (two-lane vectors and shuffles) instead of whole vector registers. Same sums either way.
    let lanes = std::hint::black_box(lanes);
    let mut total = ((lanes[0] + lanes[1]) + (lanes[2] + lanes[3]))
        + ((lanes[4] + lanes[5]) + (lanes[6] + lanes[7]));
    for (&x, &y) in a_rest.iter().zip(b_rest) {
        total += x * y;
    }
    total
}

/// `y += a * x`.
#[inline(always)]
pub(crate) fn axpy<F: Real>(a: F, x: &[F], y: &mut [F]) {
    for (yi, &xi) in y.iter_mut().zip(x) {
        *yi += a * xi;
    }
}

/// Splits `out` into consecutive mutable pieces of the given lengths.
pub(crate) fn split_lengths<'a, T>(mut out: &'a mut [T], lengths: &[usize]) -> Vec<&'a mut [T]> {
    let mut pieces = Vec::with_capacity(lengths.len());
    for &len in lengths {
        let (head, tail) = out.split_at_mut(len);
        pieces.push(head);
        out = tail;
    }
    pieces
}

#[cfg(test)]
mod tests {
    #[test]
    fn dot_matches_plain_sum() {
        for len in [0, 1, 7, 8, 9, 31] {
            let a: Vec<f64> = (0..len).map(|i| i as f64 * 0.5 - 3.0).collect();
            let b: Vec<f64> = (0..len).map(|i| (i as f64).sqrt()).collect();
            let want: f64 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
            assert!((super::dot(&a, &b) - want).abs() < 1e-12);
        }
    }
}
