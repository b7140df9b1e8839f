//! The CPU twin of the fp16-scaled GEMM (`GemmPrecision::Fp16Scaled`, kernels/gemm_fp16.cu): the
//! same scaled fp16 operands and the exact sum of their products, with the bound within which the
//! GPU's f32 sums (taken in cuBLAS's order) must lie.

use crate::int8_split::{largest_magnitude, pow2, row_element, row_exponent};

/// Each row is scaled by 2^(FP16_SCALED_SHIFT - e), e the exponent just above its largest
/// magnitude, so that it lies below 2^15, within fp16's largest binade.
pub const FP16_SCALED_SHIFT: i32 = 15;

/// `x` rounded to the nearest fp16 number (ties to even, subnormals kept), for |x| <= 2^15.
pub fn round_to_fp16(x: f64) -> f64 {
    if x == 0.0 || !x.is_finite() {
        return x;
    }
    // fp16's binades below 2^-14 share the subnormal spacing 2^-24.
    let binade = ((x.abs().to_bits() >> 52) as i32 - 1023).max(-14);
    let quantum = pow2(binade - 10);
    (x / quantum).round_ties_even() * quantum
}

/// A row scaled and rounded: `values[kk]` is the fp16 number the GEMM reads for element kk, and
/// `exponent` the row's e (`None` if the row holds infinity or NaN).
struct HalfRow {
    values: Vec<f64>,
    exponent: Option<i32>,
}

/// The `rows` rows of `k` elements of a view of `x` (see `int8_split::row_element`), scaled and
/// rounded.
fn half_rows(x: &[f32], ld: usize, k_contiguous: bool, rows: usize, k: usize) -> Vec<HalfRow> {
    (0..rows)
        .map(|r| {
            let row = (0..k).map(move |kk| row_element(x, ld, k_contiguous, r, kk));
            let exponent = row_exponent(largest_magnitude(row.clone()));
            let values = match exponent {
                Some(e) => row
                    .map(|v| round_to_fp16(f64::from(v) * pow2(FP16_SCALED_SHIFT - e)))
                    .collect(),
                None => vec![0.0; k],
            };
            HalfRow { values, exponent }
        })
        .collect()
}

/// Column-major `op(a) op(b)` (m x n) as the fp16-scaled GEMM defines it: `values` holds each
/// output as the exact sum of the rounded operands' products, scaled back (NaN where a row is not
/// finite); `sum_bounds` the largest difference the GPU's f32 sums of those products may make.
pub struct Fp16ScaledProduct {
    pub values: Vec<f64>,
    pub sum_bounds: Vec<f64>,
}

/// The fp16-scaled product of `a` (leading dimension `lda`) and `b` (`ldb`), op = transpose where
/// asked.
#[allow(clippy::too_many_arguments)]
pub fn fp16_scaled_gemm(
    transa: bool,
    transb: bool,
    (m, n, k): (usize, usize, usize),
    a: &[f32],
    lda: usize,
    b: &[f32],
    ldb: usize,
) -> Fp16ScaledProduct {
    // Row r of op(a) is k-contiguous when a is transposed; column c of op(b) when b is not.
    let a_rows = half_rows(a, lda, transa, m, k);
    let b_rows = half_rows(b, ldb, !transb, n, k);
    let mut values = vec![0.0f64; m * n];
    let mut sum_bounds = vec![0.0f64; m * n];
    for (j, bj) in b_rows.iter().enumerate() {
        for (i, ai) in a_rows.iter().enumerate() {
            let out = i + j * m;
            let (Some(ea), Some(eb)) = (ai.exponent, bj.exponent) else {
                values[out] = f64::NAN;
                sum_bounds[out] = f64::INFINITY;
                continue;
            };
            // Products of two fp16 numbers have at most 22 significant bits: exact in f64 and in
            // f32; their f64 sum is exact to 2^-53 of the sum of magnitudes.
            let (sum, magnitudes) = ai
                .values
                .iter()
                .zip(&bj.values)
                .fold((0.0f64, 0.0f64), |(s, a), (x, y)| {
                    (s + x * y, a + (x * y).abs())
                });
            // Two steps, each within f64's normal range.
            let unscale = |x: f64| x * pow2(ea - FP16_SCALED_SHIFT) * pow2(eb - FP16_SCALED_SHIFT);
            values[out] = unscale(sum);
            // f32 sums in any order lose at most 2^-23 of the running magnitude per addition;
            // the scaling back is exact but for f32 subnormals.
            sum_bounds[out] =
                unscale((k as f64 + 1.0) * pow2(-23) * magnitudes) + f64::from(f32::from_bits(1));
        }
    }
    Fp16ScaledProduct { values, sum_bounds }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::int8_split::tests::{noise, product_cases};

    #[test]
    fn rounding_is_to_nearest_even_with_subnormals() {
        let q = pow2(-10);
        for (x, want) in [
            (1.0, 1.0),
            (1.0 + q / 2.0, 1.0),
            (1.0 + 1.5 * q, 1.0 + 2.0 * q),
            (1.0 + 0.6 * q, 1.0 + q),
            (-(1.0 + 0.6 * q), -(1.0 + q)),
            (pow2(-24), pow2(-24)),
            (pow2(-25), 0.0),
            (0.75 * pow2(-24), pow2(-24)),
            (3.0 * pow2(-25), 2.0 * pow2(-24)),
            (pow2(-14) * (1.0 + 0.3 * q), pow2(-14)),
            (32767.9, 32768.0),
            (2049.0, 2048.0),
            (2051.0, 2052.0),
            (0.0, 0.0),
        ] {
            assert_eq!(round_to_fp16(x), want, "{x:e}");
        }
    }

    #[test]
    fn rows_below_2_to_15_keep_11_bits_down_to_2_to_minus_28_of_their_largest() {
        let k = 40;
        let row: Vec<f32> = (0..k)
            .map(|kk| (1.37 * pow2(-(kk as i32))) as f32 * if kk % 2 == 0 { 1.0 } else { -1.0 })
            .collect();
        let rows = half_rows(&row, 1, false, 1, k);
        let e = rows[0].exponent.unwrap();
        for (kk, (&x, &h)) in row.iter().zip(&rows[0].values).enumerate() {
            let scaled = f64::from(x) * pow2(FP16_SCALED_SHIFT - e);
            assert!(scaled.abs() < pow2(15));
            let error = (h - scaled).abs();
            if kk <= 28 {
                assert!(
                    error <= pow2(-11) * scaled.abs(),
                    "element {kk}: {h} vs {scaled}"
                );
            } else {
                assert!(error <= pow2(-25), "element {kk}: {h} vs {scaled}");
            }
        }
    }

    #[test]
    fn products_stay_within_the_rounding_bound_in_every_layout() {
        for case in product_cases(30) {
            let (m, n, _) = case.shape;
            let c = fp16_scaled_gemm(
                case.transa,
                case.transb,
                case.shape,
                &case.a,
                case.lda,
                &case.b,
                case.ldb,
            );
            let exponent =
                |row: &[f32]| row_exponent(largest_magnitude(row.iter().copied())).unwrap();
            for j in 0..n {
                let row_b = case.column_b(j);
                let eb = exponent(&row_b);
                for i in 0..m {
                    let row_a = case.row_a(i);
                    let ea = exponent(&row_a);
                    // Each scaled element rounds within 2^-11 of itself or 2^-25.
                    let scaled_bound: f64 = row_a
                        .iter()
                        .zip(&row_b)
                        .map(|(&x, &y)| {
                            let xs = (f64::from(x) * pow2(FP16_SCALED_SHIFT - ea)).abs();
                            let ys = (f64::from(y) * pow2(FP16_SCALED_SHIFT - eb)).abs();
                            2.1 * pow2(-11) * xs * ys + pow2(-24) * (xs + ys) + pow2(-49)
                        })
                        .sum();
                    let bound =
                        scaled_bound * pow2(ea - FP16_SCALED_SHIFT) * pow2(eb - FP16_SCALED_SHIFT);
                    let (got, w) = (c.values[i + j * m], case.exact[i + j * m]);
                    assert!(
                        (got - w).abs() <= bound,
                        "{}: ({i}, {j}) {got} vs {w}, bound {bound:e}",
                        case.label()
                    );
                    // At these k the f32 sums may stray less than the rounding does.
                    assert!(c.sum_bounds[i + j * m] <= bound);
                }
            }
        }
    }

    #[test]
    fn rows_of_zeros_give_zeros_and_non_finite_rows_nan() {
        let (m, n, k) = (3, 2, 4);
        let mut a = noise(m * k, 7, false);
        for kk in 0..k {
            a[1 + kk * m] = 0.0;
        }
        a[2 + 3 * m] = f32::NAN;
        let b = noise(k * n, 8, false);
        let c = fp16_scaled_gemm(false, false, (m, n, k), &a, m, &b, k);
        for j in 0..n {
            assert!(c.values[j * m].is_finite() && c.values[j * m] != 0.0);
            assert_eq!(c.values[1 + j * m], 0.0);
            assert!(c.values[2 + j * m].is_nan());
        }
    }
}
