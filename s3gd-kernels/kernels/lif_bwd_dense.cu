// lif_bwd_dense.cu: the dense (BPTT) backward of a LIF layer: the adjoint scan over time, the
// shifted dense input-spike matrix the weight-gradient GEMM reads, and the un-shift of the input
// gradient GEMM's output with the layer below's regulariser gradients added.
//
// dV[t] = dS[t] sigma'(V[t]) + beta dV[t+1] (surrogate zeroed outside the band when truncate);
// dW = Sd^T dV with Sd[b, t+1] = S_in[b, t]; dS_in[b, t] = dV[b, t+1] W^T (GEMMs in cuBLAS).

extern "C" __global__ void lif_bwd_dense_scan_f32(const float* vmt, const float* ds, int B, int T,
                                                  int N, float beta, int truncate, float band,
                                                  float* dv) {
    const size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (size_t)B * N) return;
    const int b = idx / N, j = idx % N;
    float later = 0.0f;
    for (int t = T - 1; t >= 1; --t) {
        const size_t at = ((size_t)b * T + t) * N + j;
        const float offset = vmt[at];
        const float sg = (truncate && !(fabsf(offset) < band)) ? 0.0f : surrogate_of_offset(offset);
        const float d = ds[at] * sg + beta * later;
        dv[at] = d;
        later = d;
    }
    dv[(size_t)b * T * N + j] = 0.0f;
}

// Dense input spikes shifted one step later: out[b, t+1, i] = count of input i at (b, t); row t = 0
// is zero. Thread per (b, t) row of the events (counts may repeat a unit); out must be zeroed first.
extern "C" __global__ void spikes_events_to_dense_shifted_f32(const u32* offsets, const u32* ids,
                                                              int B, int T, int U, float* out) {
    const size_t row = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (row >= (size_t)B * T) return;
    const int t = row % T;
    if (t == T - 1) return;
    float* dst = out + (row + 1) * U;
    for (u32 k = offsets[row]; k < offsets[row + 1]; ++k) dst[ids[k]] += 1.0f;
}

extern "C" __global__ void spikes_bits_to_dense_shifted_f32(const u32* rows, int B, int T, int U,
                                                            float* out) {
    const size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (size_t)B * T * U) return;
    const int i = idx % U;
    const int t = (idx / U) % T;
    const size_t b = idx / ((size_t)U * T);
    float value = 0.0f;
    if (t >= 1) {
        const u32 word = rows[(b * T + t - 1) * words_for(U) + (i >> 5)];
        value = (float)((word >> (i & 31)) & 1u);
    }
    out[idx] = value;
}

// out[b, t, i] = (shifted[b, t + 1, i] or 0 at t = T - 1) + u[b]) + l[b, i].
extern "C" __global__ void unshift_add_reg_f32(const float* shifted, int B, int T, int U,
                                               const float* u, const float* l, float* out) {
    const size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (size_t)B * T * U) return;
    const int i = idx % U;
    const int t = (idx / U) % T;
    const size_t b = idx / ((size_t)U * T);
    const float from_above = (t + 1 < T) ? shifted[idx + U] : 0.0f;
    out[idx] = with_regularisers(from_above, u[b], l[b * U + i]);
}
