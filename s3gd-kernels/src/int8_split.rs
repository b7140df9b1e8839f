//! The CPU twin of the int8-split GEMM (`GemmPrecision::Int8Split`, kernels/gemm_int8.cu): the
//! same slices, exact integer products and f64 combination, so the GPU's output must equal it bit
//! for bit; plus the error bound the split guarantees.

/// Bits of |x| above which a row counts as not finite (infinity's bits; NaN's lie above).
const NON_FINITE_BITS: u32 = 0x7f80_0000;

/// 2^e as an f64, for the exponents a product of two f32 row scales can take.
pub(crate) fn pow2(e: i32) -> f64 {
    debug_assert!((-1022..=1023).contains(&e));
    f64::from_bits(((e + 1023) as u64) << 52)
}

/// The exponent e with |x| < 2^e for every x of a row whose largest magnitude is `max` (C's
/// frexpf), 0 for a row of zeros, `None` for one holding infinity or NaN.
pub(crate) fn row_exponent(max: f32) -> Option<i32> {
    let bits = max.to_bits();
    if bits >= NON_FINITE_BITS {
        return None;
    }
    if bits == 0 {
        return Some(0);
    }
    let field = (bits >> 23) as i32;
    if field == 0 {
        // Subnormal: the leading bit's position sets the exponent.
        let leading = 31 - bits.leading_zeros() as i32;
        return Some(leading - 148);
    }
    Some(field - 126)
}

/// A row split into slices: `slices[kk * count + p]` is slice p (most significant first) of
/// element kk, and the row's exponent (`None` if not finite).
struct SplitRow {
    slices: Vec<i64>,
    exponent: Option<i32>,
}

/// The largest |x| of a row, by bits as the GPU's row maxima take it (so NaN counts as largest).
pub(crate) fn largest_magnitude(row: impl Iterator<Item = f32>) -> f32 {
    row.map(f32::abs)
        .fold(0.0f32, |m, v| if v.to_bits() > m.to_bits() { v } else { m })
}

fn split_row(row: impl Iterator<Item = f32> + Clone, count: usize) -> SplitRow {
    let exponent = row_exponent(largest_magnitude(row.clone()));
    let mut slices = Vec::new();
    for x in row {
        let mut scaled = match exponent {
            Some(e) => f64::from(x) * pow2(6 - e),
            None => 0.0,
        };
        for _ in 0..count {
            let s = scaled.round_ties_even();
            slices.push(s as i64);
            scaled = (scaled - s) * 128.0;
        }
    }
    SplitRow { slices, exponent }
}

/// Element kk of row r of a column-major array with leading dimension `ld`: rows run along the
/// leading dimension when `k_contiguous`, across it otherwise.
pub(crate) fn row_element(x: &[f32], ld: usize, k_contiguous: bool, r: usize, kk: usize) -> f32 {
    if k_contiguous {
        x[kk + r * ld]
    } else {
        x[r + kk * ld]
    }
}

/// The `rows` rows of `k` elements of a view of `x` (see `row_element`), each split.
fn split_rows(
    x: &[f32],
    ld: usize,
    k_contiguous: bool,
    rows: usize,
    k: usize,
    slices: usize,
) -> Vec<SplitRow> {
    (0..rows)
        .map(|r| {
            split_row(
                (0..k).map(move |kk| row_element(x, ld, k_contiguous, r, kk)),
                slices,
            )
        })
        .collect()
}

/// Column-major `c (m x n) = op(a) op(b)` as the int8-split GEMM computes it with `slices` slices
/// per row (`a` with leading dimension `lda`, `b` with `ldb`, op = transpose where asked).
#[allow(clippy::too_many_arguments)]
pub fn int8_split_gemm(
    transa: bool,
    transb: bool,
    (m, n, k): (usize, usize, usize),
    a: &[f32],
    lda: usize,
    b: &[f32],
    ldb: usize,
    slices: usize,
) -> Vec<f32> {
    // Row r of op(a) is k-contiguous when a is transposed; column c of op(b) when b is not.
    let a_rows = split_rows(a, lda, transa, m, k, slices);
    let b_rows = split_rows(b, ldb, !transb, n, k, slices);
    let mut out = vec![0.0f32; m * n];
    for (j, bj) in b_rows.iter().enumerate() {
        for (i, ai) in a_rows.iter().enumerate() {
            let (Some(ea), Some(eb)) = (ai.exponent, bj.exponent) else {
                out[i + j * m] = f32::NAN;
                continue;
            };
            // Group g sums the products of slices p and q with p + q = g (0-based), exactly.
            let mut groups = vec![0i64; slices];
            for kk in 0..k {
                let sa = &ai.slices[kk * slices..(kk + 1) * slices];
                let sb = &bj.slices[kk * slices..(kk + 1) * slices];
                for (g, group) in groups.iter_mut().enumerate() {
                    for p in 0..=g {
                        *group += sa[p] * sb[g - p];
                    }
                }
            }
            let mut sum = 0.0f64;
            for g in (0..slices).rev() {
                sum += groups[g] as f64 * pow2(-12 - 7 * g as i32);
            }
            out[i + j * m] = (sum * pow2(ea + eb)) as f32;
        }
    }
    out
}

/// The largest |error| the split allows on output (i, j) against the exact dot product `exact`:
/// each element is kept to 2^(e - 7 slices) of its row's power of two, and the dropped slice
/// products add as much again per slice; then one rounding to f32.
pub fn int8_split_error_bound(
    exact: f64,
    k: usize,
    row_max_a: f32,
    row_max_b: f32,
    slices: usize,
) -> f64 {
    let (Some(ea), Some(eb)) = (row_exponent(row_max_a), row_exponent(row_max_b)) else {
        return f64::INFINITY;
    };
    let per_term = (slices as f64 + 1.1) * pow2(ea + eb - 7 * slices as i32);
    let rounding = exact.abs() * f64::from(f32::EPSILON) / 2.0 + f64::from(f32::from_bits(1));
    k as f64 * per_term + rounding
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Values of normal spread whose magnitudes also range over 2^(+-4 sigma): xorshift noise.
    pub(crate) fn noise(len: usize, seed: u64, wide: bool) -> Vec<f32> {
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let mut uniform = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 11) as f64 / (1u64 << 53) as f64
        };
        (0..len)
            .map(|_| {
                let v = uniform() * 2.0 - 1.0;
                let scale = if wide {
                    (uniform() * 16.0 - 8.0).exp2()
                } else {
                    1.0
                };
                (v * scale) as f32
            })
            .collect()
    }

    /// One case of the twins' product tests: column-major operands of op(a) (m x k) and op(b)
    /// (k x n) in the layout `transa` / `transb` names, and their product in f64.
    pub(crate) struct ProductCase {
        pub(crate) transa: bool,
        pub(crate) transb: bool,
        pub(crate) shape: (usize, usize, usize),
        pub(crate) a: Vec<f32>,
        pub(crate) lda: usize,
        pub(crate) b: Vec<f32>,
        pub(crate) ldb: usize,
        pub(crate) wide: bool,
        pub(crate) exact: Vec<f64>,
    }

    impl ProductCase {
        /// Row i of op(a), as `row_element` reads it.
        pub(crate) fn row_a(&self, i: usize) -> Vec<f32> {
            (0..self.shape.2)
                .map(|kk| row_element(&self.a, self.lda, self.transa, i, kk))
                .collect()
        }
        /// Column j of op(b).
        pub(crate) fn column_b(&self, j: usize) -> Vec<f32> {
            (0..self.shape.2)
                .map(|kk| row_element(&self.b, self.ldb, !self.transb, j, kk))
                .collect()
        }
        pub(crate) fn label(&self) -> String {
            let (m, n, k) = self.shape;
            format!(
                "{m}x{n}x{k} T{}{} wide {}",
                self.transa, self.transb, self.wide
            )
        }
    }

    /// Three shapes, values of normal and of wide spread (seeded from `seed`), every operand
    /// layout.
    pub(crate) fn product_cases(seed: u64) -> impl Iterator<Item = ProductCase> {
        let shapes = [(7, 5, 33), (16, 9, 200), (3, 30, 1000)];
        shapes
            .into_iter()
            .enumerate()
            .flat_map(move |(index, (m, n, k))| {
                [false, true].into_iter().flat_map(move |wide| {
                    let a = noise(m * k, seed + index as u64, wide);
                    let b = noise(k * n, seed + 10 + index as u64, wide);
                    [(false, false), (true, false), (false, true), (true, true)]
                        .into_iter()
                        .map(move |(transa, transb)| {
                            let (lda, ldb) =
                                (if transa { k } else { m }, if transb { n } else { k });
                            let mut case = ProductCase {
                                transa,
                                transb,
                                shape: (m, n, k),
                                a: a.clone(),
                                lda,
                                b: b.clone(),
                                ldb,
                                wide,
                                exact: Vec::new(),
                            };
                            case.exact = (0..n)
                                .flat_map(|j| (0..m).map(move |i| (i, j)))
                                .map(|(i, j)| {
                                    case.row_a(i)
                                        .iter()
                                        .zip(case.column_b(j))
                                        .map(|(&x, y)| f64::from(x) * f64::from(y))
                                        .sum()
                                })
                                .collect();
                            case
                        })
                })
            })
    }

    #[test]
    fn exponent_is_frexps() {
        assert_eq!(row_exponent(1.0), Some(1));
        assert_eq!(row_exponent(0.75), Some(0));
        assert_eq!(row_exponent(0.5), Some(0));
        assert_eq!(row_exponent(3.0), Some(2));
        assert_eq!(row_exponent(f32::MAX), Some(128));
        assert_eq!(row_exponent(f32::MIN_POSITIVE), Some(-125));
        assert_eq!(row_exponent(f32::from_bits(1)), Some(-148));
        assert_eq!(row_exponent(f32::from_bits(3)), Some(-147));
        assert_eq!(row_exponent(0.0), Some(0));
        assert_eq!(row_exponent(f32::INFINITY), None);
        assert_eq!(row_exponent(f32::NAN), None);
    }

    #[test]
    fn slices_rebuild_each_element_within_its_bound() {
        for (seed, wide) in [(1, false), (2, true)] {
            let row = noise(500, seed, wide);
            let split = split_row(row.iter().copied(), 4);
            let e = split.exponent.unwrap();
            for (kk, &x) in row.iter().enumerate() {
                let s = &split.slices[kk * 4..kk * 4 + 4];
                assert!(s.iter().all(|v| v.abs() <= 64), "slice out of range: {s:?}");
                let rebuilt: f64 = s
                    .iter()
                    .enumerate()
                    .map(|(p, &v)| v as f64 * pow2(e - 6 - 7 * p as i32))
                    .sum();
                assert!((rebuilt - f64::from(x)).abs() <= pow2(e - 28));
            }
        }
    }

    #[test]
    fn products_stay_within_the_bound_in_every_layout() {
        for case in product_cases(10) {
            let (m, n, k) = case.shape;
            let c = int8_split_gemm(
                case.transa,
                case.transb,
                case.shape,
                &case.a,
                case.lda,
                &case.b,
                case.ldb,
                4,
            );
            let largest = |row: Vec<f32>| row.into_iter().map(f32::abs).fold(0.0f32, f32::max);
            for j in 0..n {
                let max_b = largest(case.column_b(j));
                for i in 0..m {
                    let max_a = largest(case.row_a(i));
                    let w = case.exact[i + j * m];
                    let bound = int8_split_error_bound(w, k, max_a, max_b, 4);
                    let got = f64::from(c[i + j * m]);
                    assert!(
                        (got - w).abs() <= bound,
                        "{}: ({i}, {j}) {got} vs {w}, bound {bound:e}",
                        case.label()
                    );
                }
            }
        }
    }

    #[test]
    fn rows_of_zeros_give_zeros_and_non_finite_rows_nan() {
        let (m, n, k) = (3, 2, 4);
        let mut a = noise(m * k, 5, false);
        for kk in 0..k {
            a[1 + kk * m] = 0.0;
        }
        a[2 + 3 * m] = f32::INFINITY;
        let b = noise(k * n, 6, false);
        let c = int8_split_gemm(false, false, (m, n, k), &a, m, &b, k, 4);
        for j in 0..n {
            assert!(c[j * m].is_finite());
            assert_eq!(c[1 + j * m].to_bits(), 0);
            assert!(c[2 + j * m].is_nan());
        }
    }
}
