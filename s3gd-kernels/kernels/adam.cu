// adam.cu: Adam in PyTorch's form, elementwise; with fused multiply-add off it rounds as the CPU's.
// p -= step_size * (m / (sqrt(v) * inv_sqrt_bias2 + eps)).

#define ADAM_PARAMS                                                                                \
    float beta1, float beta2, float one_minus_beta1, float one_minus_beta2, float step_size,        \
        float inv_sqrt_bias2, float eps
#define ADAM_ARGS beta1, beta2, one_minus_beta1, one_minus_beta2, step_size, inv_sqrt_bias2, eps

// One element's update: m, v and p in place.
__device__ __forceinline__ void adam_update(float& p, float gi, float& m, float& v, ADAM_PARAMS) {
    const float mi = beta1 * m + one_minus_beta1 * gi;
    const float vi = beta2 * v + one_minus_beta2 * (gi * gi);
    m = mi;
    v = vi;
    const float denom = __fsqrt_rn(vi) * inv_sqrt_bias2 + eps;
    p = p - step_size * (mi / denom);
}

extern "C" __global__ void adam_f32(float* p, const float* g, float* m, float* v, size_t n,
                                    ADAM_PARAMS) {
    const size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= n) return;
    float pi = p[idx], mi = m[idx], vi = v[idx];
    adam_update(pi, g[idx], mi, vi, ADAM_ARGS);
    m[idx] = mi;
    v[idx] = vi;
    p[idx] = pi;
}

// Adam over a rows x cols matrix (p, m, v row-major) whose gradient is stored transposed (g_t,
// cols x rows, as dW by columns writes it): a block of 32 x 8 threads per 32 x 32 tile, the tile
// of the gradient read along g_t's rows and turned in shared memory, so that every array moves in
// whole lines; each thread's four elements of p, m and v load before the tile's barrier. Each
// element's update is adam_f32's, to the bit.
extern "C" __global__ void adam_transposed_grad_f32(float* __restrict__ p,
                                                    const float* __restrict__ g_t,
                                                    float* __restrict__ m, float* __restrict__ v,
                                                    int rows, int cols, ADAM_PARAMS) {
    __shared__ float tile[32][33];
    const int r0 = blockIdx.y * 32, c0 = blockIdx.x * 32;
#pragma unroll
    for (int k = 0; k < 4; ++k) {
        const int c = c0 + threadIdx.y + 8 * k, r = r0 + threadIdx.x;
        if (c < cols && r < rows) tile[threadIdx.y + 8 * k][threadIdx.x] = g_t[(size_t)c * rows + r];
    }
    float p_k[4], m_k[4], v_k[4];
    const int c = c0 + threadIdx.x;
#pragma unroll
    for (int k = 0; k < 4; ++k) {
        const int r = r0 + threadIdx.y + 8 * k;
        if (r < rows && c < cols) {
            const size_t at = (size_t)r * cols + c;
            p_k[k] = p[at];
            m_k[k] = m[at];
            v_k[k] = v[at];
        }
    }
    __syncthreads();
#pragma unroll
    for (int k = 0; k < 4; ++k) {
        const int r = r0 + threadIdx.y + 8 * k;
        if (r < rows && c < cols) {
            const size_t at = (size_t)r * cols + c;
            adam_update(p_k[k], tile[threadIdx.x][threadIdx.y + 8 * k], m_k[k], v_k[k], ADAM_ARGS);
            m[at] = m_k[k];
            v[at] = v_k[k];
            p[at] = p_k[k];
        }
    }
}
