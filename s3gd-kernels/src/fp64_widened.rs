//! The CPU twin of the f32 GEMM on f64 tensor cores (`GemmPrecision::Fp64Widened`,
//! kernels/gemm_f64.cu): the product of the f32 operands summed in f64, and the bound within which
//! the GPU's output (its own f64 sums, in cuBLAS's order, rounded once to f32) must lie.

use crate::int8_split::row_element;

/// Column-major `op(a) op(b)` (m x n): `values` holds each output as the f64 sum of its exact
/// products, in order of k; `bounds` the largest difference the GPU's output may show from it:
/// the rounding to f32 (half an ulp, or half the smallest subnormal's spacing) plus both sums'
/// roundings (k 2^-53 of the sum of the products' magnitudes each).
pub struct Fp64WidenedProduct {
    pub values: Vec<f64>,
    pub bounds: Vec<f64>,
}

/// `op(a)` is m x k and `op(b)` k x n, column-major with leading dimensions `lda` and `ldb`
/// (`transa`: a is stored k x m; `transb`: b is stored n x k).
pub fn fp64_widened_gemm(
    transa: bool,
    transb: bool,
    (m, n, k): (usize, usize, usize),
    a: &[f32],
    lda: usize,
    b: &[f32],
    ldb: usize,
) -> Fp64WidenedProduct {
    // Two sums of k terms, each rounding at most k 2^-53 of the magnitudes.
    let sum_rounding = k as f64 * f64::EPSILON;
    let mut values = Vec::with_capacity(m * n);
    let mut bounds = Vec::with_capacity(m * n);
    for c in 0..n {
        for r in 0..m {
            let (mut sum, mut magnitude) = (0.0f64, 0.0f64);
            for kk in 0..k {
                // Row r of op(a) is k-contiguous when a is transposed; column c of op(b) when b
                // is not.
                let product = f64::from(row_element(a, lda, transa, r, kk))
                    * f64::from(row_element(b, ldb, !transb, c, kk));
                sum += product;
                magnitude += product.abs();
            }
            let to_f32 = (sum.abs() * 2f64.powi(-24)).max(2f64.powi(-150));
            values.push(sum);
            bounds.push(to_f32 + sum_rounding * magnitude);
        }
    }
    Fp64WidenedProduct { values, bounds }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn products_are_exact_and_layouts_read_as_named() {
        // op(a) = [[1, 2], [3, 4]] (m = k = 2), op(b) = [[5], [6]]: stored both ways.
        let a_cols = [1.0f32, 3.0, 2.0, 4.0];
        let a_rows = [1.0f32, 2.0, 3.0, 4.0];
        let b = [5.0f32, 6.0];
        let plain = fp64_widened_gemm(false, false, (2, 1, 2), &a_cols, 2, &b, 2);
        let transposed = fp64_widened_gemm(true, true, (2, 1, 2), &a_rows, 2, &b, 1);
        assert_eq!(plain.values, [17.0, 39.0]);
        assert_eq!(transposed.values, plain.values);
        // (1 + 2^-23)^2 = 1 + 2^-22 + 2^-46, which f32 would round, is kept whole.
        let x = 1.0f32 + f32::EPSILON;
        let exact = fp64_widened_gemm(false, false, (1, 1, 1), &[x], 1, &[x], 1);
        assert_eq!(exact.values[0], f64::from(x) * f64::from(x));
        assert!(exact.bounds[0] < 1e-7);
    }
}
