// lif_bwd_dense.cu: the dense (BPTT) backward of a LIF layer: the adjoint scan over time (reading dS
// laid out, or computing it from the readout's operands), the shifted dense input-spike matrix the
// weight-gradient GEMM reads, and the un-shift of the input gradient GEMM's output with the layer
// below's regulariser gradients added.
//
// dV[t] = dS[t] sigma'(V[t]) + beta dV[t+1] (surrogate zeroed outside the band when truncate);
// dW = Sd^T dV with Sd[b, t+1] = S_in[b, t]; dS_in[b, t] = dV[b, t+1] W^T (GEMMs in cuBLAS).

// Steps loaded ahead of the recursion: a thread per (b, j) leaves few threads per SM, so each must
// keep many loads in flight to approach the memory bandwidth.
#define BWD_AHEAD 16
// Threads of a block of the transposed scan (its staging buffer is sized for them).
#define BWD_SCAN_BLOCK 256

// One step of the recursion, dV[t] from dV[t+1] (`later`), V[t] - theta (`offset`) and dS[t]
// (`grad`), with the surrogate zeroed outside the band when `truncate`.
__device__ __forceinline__ float adjoint_step(float offset, float grad, float later, float beta,
                                              int truncate, float band) {
    const float sg = (truncate && !(fabsf(offset) < band)) ? 0.0f : surrogate_of_offset(offset);
    return grad * sg + beta * later;
}

// Where a thread's dS comes from: read from ds (C = 0), or computed from the readout's g
// (B x T x C) and W3 (N x C) and the regularisers u (B) and l (B x N) as readout_spike_grad_at
// computes it (same products, same order: the same bits as laying dS out first, without writing
// and reading the B x T x N array). The scans load a value per step ahead (ds, or g for C = 1)
// and finish it when the recursion reaches the step; the thread's own W3, u and l are read once.
#define SPIKE_GRAD_PARAMS                                                                   \
    const float *__restrict__ ds, const float *__restrict__ g, const float *__restrict__ W3, \
        int C, const float *__restrict__ u, const float *__restrict__ l
struct SpikeGradSource {
    const float* ds;
    const float* g_row;  // g + b * T * C
    const float* w_row;  // W3 + j * C
    int C;
    double w0, u_b, l_bj;
};
__device__ __forceinline__ SpikeGradSource spike_grad_source(SPIKE_GRAD_PARAMS, int T, int N,
                                                             int b, int j) {
    SpikeGradSource s;
    s.ds = ds;
    s.C = C;
    s.g_row = g + (size_t)b * T * (C > 0 ? C : 1);
    s.w_row = W3 + (size_t)j * (C > 0 ? C : 1);
    s.w0 = C > 0 ? (double)s.w_row[0] : 0.0;
    s.u_b = C > 0 ? (double)u[b] : 0.0;
    s.l_bj = C > 0 ? (double)l[(size_t)b * N + j] : 0.0;
    return s;
}
// The value loaded ahead for step t (`at` indexes ds).
__device__ __forceinline__ float spike_grad_load(const SpikeGradSource& s, int t, size_t at) {
    return s.C == 0 ? s.ds[at] : s.C == 1 ? s.g_row[t] : 0.0f;
}
// dS at step t from the value loaded ahead.
__device__ __forceinline__ float spike_grad_finish(const SpikeGradSource& s, float loaded, int t) {
    if (s.C == 0) return loaded;
    double dot = 0.0;
    if (s.C == 1) {
        dot = dot + (double)loaded * s.w0;
    } else {
        const float* gt = s.g_row + (size_t)t * s.C;
        for (int c = 0; c < s.C; ++c) dot = dot + (double)gt[c] * (double)s.w_row[c];
    }
    return (float)((dot + s.u_b) + s.l_bj);
}

// shift_out = 1 writes dV[t] to row t - 1 and zeroes row T - 1 (what the float-input weight GEMM
// reads, sum over t >= 1 of x[t-1]^T dV[t]); shift_out = 0 writes row t and zeroes row 0.
extern "C" __global__ void lif_bwd_dense_scan_f32(const float* __restrict__ vmt,
                                                  SPIKE_GRAD_PARAMS, int B, int T, int N,
                                                  float beta, int truncate, float band,
                                                  int shift_out, float* __restrict__ dv) {
    const size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (size_t)B * N) return;
    const int b = idx / N, j = idx % N;
    const size_t base = (size_t)b * T * N + j;
    const size_t out_shift = shift_out ? (size_t)N : 0;
    const SpikeGradSource source = spike_grad_source(ds, g, W3, C, u, l, T, N, b, j);
    float later = 0.0f;
    for (int t0 = T - 1; t0 >= 1; t0 -= BWD_AHEAD) {
        float offsets[BWD_AHEAD], grads[BWD_AHEAD];
#pragma unroll
        for (int k = 0; k < BWD_AHEAD; ++k) {
            const int t = t0 - k;
            offsets[k] = t >= 1 ? vmt[base + (size_t)t * N] : 0.0f;
            grads[k] = t >= 1 ? spike_grad_load(source, t, base + (size_t)t * N) : 0.0f;
        }
#pragma unroll
        for (int k = 0; k < BWD_AHEAD; ++k) {
            const int t = t0 - k;
            if (t < 1) break;
            const float grad = spike_grad_finish(source, grads[k], t);
            const float d = adjoint_step(offsets[k], grad, later, beta, truncate, band);
            dv[base + (size_t)t * N - out_shift] = d;
            later = d;
        }
    }
    dv[base + (shift_out ? (size_t)(T - 1) * N : 0)] = 0.0f;
}

// The same scan writing dV transposed, N x (B*T) (column b*T + t of row j, shifted as above), so
// that a TF32 weight GEMM takes its fast NN form without a transposed copy of its input (v98).
// A thread's steps are staged in shared memory 32 at a time, in windows aligned to 128 bytes of
// its row of the output, and its warp writes each lane's window as one aligned 128-byte store
// (unaligned 32-step runs took 868 us at N = 16384, B = 16, T = 500, aligned ones 559 us, and one
// float a neuron a store 1038 us; the scan by rows plus a transposed copy of the input, 744 us).
// The windows of a warp's lanes differ where the warp spans two samples; the warp walks as many
// windows as its longest lane, a lane without steps in one staging nothing.
extern "C" __global__ void __launch_bounds__(BWD_SCAN_BLOCK) lif_bwd_dense_scan_transposed_f32(
    const float* __restrict__ vmt, SPIKE_GRAD_PARAMS, int B, int T, int N, float beta,
    int truncate, float band, int shift_out, float* __restrict__ dv) {
    __shared__ float staged[BWD_SCAN_BLOCK / 32][32][33];
    const size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    const bool active = idx < (size_t)B * N;
    const int b = active ? (int)(idx / N) : 0, j = active ? (int)(idx % N) : 0;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const size_t base = (size_t)b * T * N + j;
    const size_t rows = (size_t)B * T;
    const SpikeGradSource source = spike_grad_source(ds, g, W3, C, u, l, T, N, b, j);
    // Step t of this lane goes to column_base + t of dv (unsigned: the shift may wrap it below
    // zero, and every step written adds at least 1 back).
    const size_t column_base = (size_t)j * rows + (size_t)b * T - (shift_out ? 1 : 0);
    // Windows [w, w + 31] of steps with column_base + w a multiple of 32, from the one holding
    // T - 1 down to the one holding step 1.
    const int phase = (int)(column_base & 31u);
    const int top = ((T - 1 + phase) & ~31) - phase;
    const int windows = active ? (top - ((1 + phase) & ~31) + phase) / 32 + 1 : 0;
    int warp_windows = windows;
    for (int d = 16; d > 0; d >>= 1)
        warp_windows = max(warp_windows, __shfl_xor_sync(FULL_MASK, warp_windows, d));
    float later = 0.0f;
    for (int w_index = 0; w_index < warp_windows; ++w_index) {
        const int w = top - 32 * w_index;
        const bool mine = w_index < windows;
#pragma unroll
        for (int part = 0; part < 32 / BWD_AHEAD; ++part) {
            const int t0 = w + 31 - part * BWD_AHEAD;
            float offsets[BWD_AHEAD], grads[BWD_AHEAD];
#pragma unroll
            for (int k = 0; k < BWD_AHEAD; ++k) {
                const int t = t0 - k;
                const bool in = mine && t >= 1 && t < T;
                offsets[k] = in ? vmt[base + (size_t)t * N] : 0.0f;
                grads[k] = in ? spike_grad_load(source, t, base + (size_t)t * N) : 0.0f;
            }
#pragma unroll
            for (int k = 0; k < BWD_AHEAD; ++k) {
                const int t = t0 - k;
                if (!(mine && t >= 1 && t < T)) continue;
                const float grad = spike_grad_finish(source, grads[k], t);
                const float d = adjoint_step(offsets[k], grad, later, beta, truncate, band);
                staged[warp][lane][t - w] = d;
                later = d;
            }
        }
        __syncwarp();
#pragma unroll 4
        for (int source = 0; source < 32; ++source) {
            const size_t source_base = __shfl_sync(FULL_MASK, column_base, source);
            const int source_windows = __shfl_sync(FULL_MASK, windows, source);
            const int t = __shfl_sync(FULL_MASK, w, source) + lane;
            if (w_index < source_windows && t >= 1 && t < T)
                dv[source_base + t] = staged[warp][source][lane];
        }
        __syncwarp();
    }
    if (active) dv[(size_t)j * rows + (size_t)b * T + (shift_out ? T - 1 : 0)] = 0.0f;
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

// Element kernels over a B*T x U array: x-blocks span a row, y-blocks stride over the rows, so no
// thread divides a 64-bit index.
extern "C" __global__ void spikes_bits_to_dense_shifted_f32(const u32* __restrict__ rows, int B,
                                                            int T, int U, float* __restrict__ out) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= U) return;
    const int words_u = words_for(U);
    for (int row = blockIdx.y; row < B * T; row += gridDim.y) {
        float value = 0.0f;
        if (row % T >= 1) {
            const u32 word = rows[(size_t)(row - 1) * words_u + (i >> 5)];
            value = (float)((word >> (i & 31)) & 1u);
        }
        out[(size_t)row * U + i] = value;
    }
}

// out[b, t, i] = (shifted[b, t + 1, i] or 0 at t = T - 1) + u[b]) + l[b, i].
extern "C" __global__ void unshift_add_reg_f32(const float* __restrict__ shifted, int B, int T,
                                               int U, const float* __restrict__ u,
                                               const float* __restrict__ l,
                                               float* __restrict__ out) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= U) return;
    for (int row = blockIdx.y; row < B * T; row += gridDim.y) {
        const int b = row / T, t = row % T;
        const size_t at = (size_t)row * U + i;
        const float from_above = (t + 1 < T) ? shifted[at + U] : 0.0f;
        out[at] = with_regularisers(from_above, u[b], l[(size_t)b * U + i]);
    }
}

// The nearest TF32 number to x (10-bit mantissa; ties away from zero), by integer rounding of the
// f32 bits so that no sm_80 instruction is needed. Non-finite x, and the few finite x that would
// round past the largest float, are returned as they are (truncated to TF32 in the latter case).
__device__ __forceinline__ float round_to_tf32(float x) {
    const u32 bits = __float_as_uint(x);
    if ((bits & 0x7f800000u) == 0x7f800000u) return x;
    const u32 rounded = (bits + 0x1000u) & 0xffffe000u;
    if ((rounded & 0x7f800000u) == 0x7f800000u) return __uint_as_float(bits & 0xffffe000u);
    return __uint_as_float(rounded);
}

// The remainder x - hi as the nearest TF32 number; 0 for non-finite x (where x - hi is NaN).
__device__ __forceinline__ float tf32_remainder(float x, float hi) {
    return isfinite(x) ? round_to_tf32(x - hi) : 0.0f;
}

// x = hi + lo with hi the nearest TF32 number to x and lo the nearest to the rest (which f32 holds
// exactly): the split of the three-product TF32 GEMM. Four elements a thread where they align.
extern "C" __global__ void split_tf32_f32(const float* __restrict__ x, size_t len,
                                          float* __restrict__ hi, float* __restrict__ lo) {
    const size_t quads = len / 4;
    const size_t stride = (size_t)gridDim.x * blockDim.x;
    for (size_t q = (size_t)blockIdx.x * blockDim.x + threadIdx.x; q < quads; q += stride) {
        const float4 v = ((const float4*)x)[q];
        float4 h, r;
        h.x = round_to_tf32(v.x);
        h.y = round_to_tf32(v.y);
        h.z = round_to_tf32(v.z);
        h.w = round_to_tf32(v.w);
        r.x = tf32_remainder(v.x, h.x);
        r.y = tf32_remainder(v.y, h.y);
        r.z = tf32_remainder(v.z, h.z);
        r.w = tf32_remainder(v.w, h.w);
        ((float4*)hi)[q] = h;
        ((float4*)lo)[q] = r;
    }
    for (size_t k = quads * 4 + (size_t)blockIdx.x * blockDim.x + threadIdx.x; k < len;
         k += stride) {
        const float h = round_to_tf32(x[k]);
        hi[k] = h;
        lo[k] = tf32_remainder(x[k], h);
    }
}
