//! A safe, bounds-checked wrapper over `matrixmultiply`'s row-major GEMM for f32 and f64.

#![allow(unsafe_code)]

use crate::real::Real;

/// Row-major `c[m x n] = alpha * a[m x k] * b[k x n] + beta * c`, with leading dimensions (row strides)
/// `lda`, `ldb`, `ldc`. `b_transposed` reads b as the transpose of a row-major `n x k` matrix.
#[allow(clippy::too_many_arguments)]
pub fn gemm<F: Real>(
    m: usize,
    k: usize,
    n: usize,
    alpha: F,
    a: &[F],
    lda: usize,
    b: &[F],
    ldb: usize,
    b_transposed: bool,
    beta: F,
    c: &mut [F],
    ldc: usize,
) {
    if m == 0 || n == 0 {
        return;
    }
    let (b_rows, b_cols) = if b_transposed { (n, k) } else { (k, n) };
    assert!(
        lda >= k && ldc >= n && ldb >= b_cols,
        "gemm leading dimensions"
    );
    assert!(k == 0 || a.len() >= (m - 1) * lda + k, "gemm a too short");
    assert!(
        k == 0 || b.len() >= (b_rows - 1) * ldb + b_cols,
        "gemm b too short"
    );
    assert!(c.len() >= (m - 1) * ldc + n, "gemm c too short");
    let (rsb, csb) = if b_transposed {
        (1isize, ldb as isize)
    } else {
        (ldb as isize, 1isize)
    };
    let any = std::any::TypeId::of::<F>();
    if any == std::any::TypeId::of::<f32>() {
        let cast = |x: F| x.as_f64() as f32;
        // SAFETY: the asserts above prove every index touched through these strides lies inside the
        // slices; F is f32 (checked by TypeId), so the pointer casts reinterpret to the same type.
        unsafe {
            matrixmultiply::sgemm(
                m,
                k,
                n,
                cast(alpha),
                a.as_ptr() as *const f32,
                lda as isize,
                1,
                b.as_ptr() as *const f32,
                rsb,
                csb,
                cast(beta),
                c.as_mut_ptr() as *mut f32,
                ldc as isize,
                1,
            );
        }
    } else if any == std::any::TypeId::of::<f64>() {
        // SAFETY: as above, with F being f64.
        unsafe {
            matrixmultiply::dgemm(
                m,
                k,
                n,
                alpha.as_f64(),
                a.as_ptr() as *const f64,
                lda as isize,
                1,
                b.as_ptr() as *const f64,
                rsb,
                csb,
                beta.as_f64(),
                c.as_mut_ptr() as *mut f64,
                ldc as isize,
                1,
            );
        }
    } else {
        for i in 0..m {
            for j in 0..n {
                let mut acc = F::zero();
                for p in 0..k {
                    let bv = if b_transposed {
                        b[j * ldb + p]
                    } else {
                        b[p * ldb + j]
                    };
                    acc += a[i * lda + p] * bv;
                }
                c[i * ldc + j] = alpha * acc + beta * c[i * ldc + j];
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(m: usize, k: usize, n: usize, a: &[f64], b: &[f64], bt: bool) -> Vec<f64> {
        let mut c = vec![0.0; m * n];
        for i in 0..m {
            for j in 0..n {
                for p in 0..k {
                    let bv = if bt { b[j * k + p] } else { b[p * n + j] };
                    c[i * n + j] += a[i * k + p] * bv;
                }
            }
        }
        c
    }

    #[test]
    fn matches_naive_in_both_layouts() {
        let (m, k, n) = (5, 7, 3);
        let a: Vec<f64> = (0..m * k).map(|i| (i as f64 * 0.37).sin()).collect();
        let b: Vec<f64> = (0..k * n).map(|i| (i as f64 * 0.71).cos()).collect();
        for bt in [false, true] {
            let ldb = if bt { k } else { n };
            let mut c = vec![0.5; m * n];
            gemm(m, k, n, 1.0, &a, k, &b, ldb, bt, 0.0, &mut c, n);
            let want = naive(m, k, n, &a, &b, bt);
            for (x, y) in c.iter().zip(&want) {
                assert!((x - y).abs() < 1e-12);
            }
            let a32: Vec<f32> = a.iter().map(|&x| x as f32).collect();
            let b32: Vec<f32> = b.iter().map(|&x| x as f32).collect();
            let mut c32 = vec![0.0f32; m * n];
            gemm(m, k, n, 1.0, &a32, k, &b32, ldb, bt, 0.0, &mut c32, n);
            for (x, y) in c32.iter().zip(&want) {
                assert!((*x as f64 - y).abs() < 1e-5);
            }
        }
    }
}
