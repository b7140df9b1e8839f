// gemm_fp16.cu: f32 GEMMs from one fp16 tensor-core product over scaled operands
// (GemmPrecision::Fp16Scaled), with gemm_int8.cu's row-view tile walk, row maxima and exponents.
//
// Each row of op(A) and each column of op(B) (the vector a dot product runs along) is scaled by
// 2^(15 - e), e the exponent just above its largest magnitude, so that it lies below 2^15, within
// fp16's largest binade, and is rounded to the nearest fp16 number: 11 significant bits, as TF32
// keeps, for every element within 2^-28 of its row's largest (smaller ones become fp16 subnormals).
// Products of two fp16 numbers are exact in f32; cuBLAS sums them in f32, and a last pass multiplies
// each output by 2^(e_a + e_b - 30), exactly. Rows whose largest magnitude is not finite give NaN.

#define FP16_SCALED_SHIFT 15

__device__ __forceinline__ u32 f32_to_f16_bits(float x) {
    unsigned short h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(x));
    return (u32)h;
}

// out[r * k_padded + kk] = the fp16 bits of element (r, kk) of the view times 2^(15 - e_r), zero
// past k and in rows that are not finite; exponent[r] = e_r. k_padded is a multiple of 8, so a
// thread's four elements are one aligned 8-byte store.
extern "C" __global__ void fp16_scaled_convert(const float* __restrict__ src, int rows, int k,
                                               long long row_stride, long long k_stride,
                                               const u32* __restrict__ row_max_bits,
                                               int k_padded, u16* __restrict__ out,
                                               int* __restrict__ exponent) {
    split_rows_by_quads(
        src, rows, k, row_stride, k_stride, row_max_bits, k_padded, exponent,
        [=](int r, int kk, int e, const float* quad) {
            uint2 packed = make_uint2(0u, 0u);
            if (e != INT8_SPLIT_NONFINITE) {
                // ldexpf is exact wherever the result is a normal f32; below that the value lies
                // far under fp16's smallest subnormal and rounds to zero either way.
                const int shift = FP16_SCALED_SHIFT - e;
                packed.x = f32_to_f16_bits(ldexpf(quad[0], shift)) |
                           (f32_to_f16_bits(ldexpf(quad[1], shift)) << 16);
                packed.y = f32_to_f16_bits(ldexpf(quad[2], shift)) |
                           (f32_to_f16_bits(ldexpf(quad[3], shift)) << 16);
            }
            *(uint2*)(out + (size_t)r * k_padded + kk) = packed;
        });
}

// c[i + j * ldc] *= 2^(e_a[i] + e_b[j] - 30), or NaN where either row is not finite. x-blocks span
// i, y-blocks stride over j.
extern "C" __global__ void fp16_scaled_unscale(float* __restrict__ c, int m, int n, int ldc,
                                               const int* __restrict__ exponent_a,
                                               const int* __restrict__ exponent_b) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= m) return;
    const int ea = exponent_a[i];
    for (int j = blockIdx.y; j < n; j += gridDim.y) {
        float* at = c + (size_t)j * ldc + i;
        const int eb = exponent_b[j];
        *at = (ea == INT8_SPLIT_NONFINITE || eb == INT8_SPLIT_NONFINITE)
                  ? __int_as_float(0x7fc00000)
                  : ldexpf(*at, ea + eb - 2 * FP16_SCALED_SHIFT);
    }
}
