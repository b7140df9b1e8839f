// gemm_f64.cu: f32 GEMMs on f64 tensor cores (GemmPrecision::Fp64Widened): the operands widened
// to f64 (exactly), one cuBLAS DGEMM (each product of two f32 numbers exact in f64, sums in f64),
// and each output rounded once to f32.

// to[e] = (double)from[e] for e < len: exact.
extern "C" __global__ void widen_f32_f64(const float* __restrict__ from, size_t len,
                                         double* __restrict__ to) {
    const size_t stride = (size_t)gridDim.x * blockDim.x;
    for (size_t e = (size_t)blockIdx.x * blockDim.x + threadIdx.x; e < len; e += stride)
        to[e] = (double)from[e];
}

// The m x n column-major output (leading dimension ld in both): to = from rounded to nearest
// f32; rows m .. ld of each column are left as they were.
extern "C" __global__ void narrow_f64_f32(const double* __restrict__ from, int m, int n, int ld,
                                          float* __restrict__ to) {
    const size_t total = (size_t)m * n, stride = (size_t)gridDim.x * blockDim.x;
    for (size_t e = (size_t)blockIdx.x * blockDim.x + threadIdx.x; e < total; e += stride) {
        const size_t at = (e / m) * ld + e % m;
        to[at] = __double2float_rn(from[at]);
    }
}
