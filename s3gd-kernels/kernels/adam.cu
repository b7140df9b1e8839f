// adam.cu: Adam in PyTorch's form, elementwise; with fused multiply-add off it rounds as the CPU's.
// p -= step_size * (m / (sqrt(v) * inv_sqrt_bias2 + eps)).

extern "C" __global__ void adam_f32(float* p, const float* g, float* m, float* v, size_t n,
                                    float beta1, float beta2, float one_minus_beta1,
                                    float one_minus_beta2, float step_size, float inv_sqrt_bias2,
                                    float eps) {
    const size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= n) return;
    const float gi = g[idx];
    const float mi = beta1 * m[idx] + one_minus_beta1 * gi;
    const float vi = beta2 * v[idx] + one_minus_beta2 * (gi * gi);
    m[idx] = mi;
    v[idx] = vi;
    const float denom = __fsqrt_rn(vi) * inv_sqrt_bias2 + eps;
    p[idx] = p[idx] - step_size * (mi / denom);
}
