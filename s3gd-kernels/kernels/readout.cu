// readout.cu: the leaky readout forward and backward, and the spike gradient dS2 it sends to hidden
// layer 2 (dense, or at layer 2's active entries).
//
// Forward (thread per (b, c), f64 trace as the CPU's): y[t+1] = beta y[t] + (1 - beta) (S2[t] . W3);
// logits = max over t (first maximum, y[0] = 0 included, NaN sticks) or sum over t.
// Backward: a[t] = dy[t] + beta a[t+1]; g[t] = (1 - beta) a[t+1] (g[T-1] = 0); dW3[j, c] = sum over
// spikes (b, t, j) of g[b, t, c]; dS2[b, t, j] = (sum_c g[b, t, c] W3[j, c] + u[b]) + l[b, j].

// Block per sample. The input terms r[t][c] = S2[t] . W3[:, c] of a chunk of steps are summed in
// parallel (f64, spikes in ascending j as the CPU adds them), then threads c < C run the recursion.
// Shared memory: chunk * C doubles.
extern "C" __global__ void readout_fwd_f32(const u32* rows, const float* W3, int B, int T, int N,
                                           int C, double beta, int mode_sum, int chunk,
                                           float* logits, u32* argmax) {
    extern __shared__ double r[];
    const int b = blockIdx.x;
    if (b >= B) return;
    const int words_n = words_for(N);
    const double gain = 1.0 - beta;
    double y = 0.0, logit = 0.0;
    u32 arg = 0;
    for (int t0 = 0; t0 < T - 1; t0 += chunk) {
        const int steps = min(chunk, T - 1 - t0);
        for (int p = threadIdx.x; p < steps * C; p += blockDim.x) {
            const int t = t0 + p / C, c = p % C;
            const u32* words = rows + ((size_t)b * T + t) * words_n;
            double acc = 0.0;
            for (int w = 0; w < words_n; ++w) {
                u32 m = words[w];
                while (m) {
                    const int bit = __ffs(m) - 1;
                    m &= m - 1;
                    acc = acc + (double)W3[(size_t)(w * 32 + bit) * C + c];
                }
            }
            r[p] = acc;
        }
        __syncthreads();
        if (threadIdx.x < C) {
            const int c = threadIdx.x;
            for (int k = 0; k < steps; ++k) {
                y = beta * y + gain * r[k * C + c];
                if (mode_sum) {
                    logit = logit + y;
                } else if (!isnan(logit) && (isnan(y) || y > logit)) {
                    logit = y;
                    arg = t0 + k + 1;
                }
            }
        }
        __syncthreads();
    }
    if (threadIdx.x < C) {
        logits[(size_t)b * C + threadIdx.x] = (float)logit;
        if (!mode_sum) argmax[(size_t)b * C + threadIdx.x] = arg;
    }
}

extern "C" __global__ void readout_bwd_g_f32(const float* grad_logits, const u32* argmax, int B,
                                             int T, int C, float beta, float gain, int mode_sum,
                                             float* g) {
    const int idx = blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= B * C) return;
    const int b = idx / C, c = idx % C;
    const float dz = grad_logits[idx];
    float a = 0.0f;
    g[((size_t)b * T + T - 1) * C + c] = 0.0f;
    for (int t = T - 1; t >= 1; --t) {
        const float dy = (mode_sum || argmax[idx] == (u32)t) ? dz : 0.0f;
        a = dy + beta * a;
        g[((size_t)b * T + t - 1) * C + c] = gain * a;
    }
}

// Block per neuron j; thread per sample (strided), accumulating up to 32 classes in registers over
// the spikes of (b, j) read from the unit-major bits; per-thread partials are then summed in thread
// order by threads c < C. Shared memory: blockDim.x * min(C, 32) floats. Classes come in groups of 32.
#define READOUT_MAX_C 32
extern "C" __global__ void readout_bwd_w_f32(const u32* cols, const float* g, int B, int T, int N,
                                             int C, float* dW3) {
    extern __shared__ float part[];
    const int j = blockIdx.x;
    if (j >= N) return;
    const int words_t = words_for(T);
    for (int c0 = 0; c0 < C; c0 += READOUT_MAX_C) {
        const int cc = min(READOUT_MAX_C, C - c0);
        float acc[READOUT_MAX_C];
#pragma unroll
        for (int c = 0; c < READOUT_MAX_C; ++c) acc[c] = 0.0f;
        for (int b = threadIdx.x; b < B; b += blockDim.x) {
            const u32* words = cols + ((size_t)b * N + j) * words_t;
            for (int w = 0; w < words_t; ++w) {
                u32 m = words[w];
                while (m) {
                    const int t = w * 32 + __ffs(m) - 1;
                    m &= m - 1;
                    if (t > T - 2) continue;
                    const float* gt = g + ((size_t)b * T + t) * C + c0;
#pragma unroll
                    for (int c = 0; c < READOUT_MAX_C; ++c)
                        if (c < cc) acc[c] = acc[c] + gt[c];
                }
            }
        }
#pragma unroll
        for (int c = 0; c < READOUT_MAX_C; ++c)
            if (c < cc) part[c * blockDim.x + threadIdx.x] = acc[c];
        __syncthreads();
        if (threadIdx.x < cc) {
            float total = 0.0f;
            for (int k = 0; k < blockDim.x; ++k) total = total + part[threadIdx.x * blockDim.x + k];
            dW3[(size_t)j * C + c0 + threadIdx.x] = total;
        }
        __syncthreads();
    }
}

__device__ __forceinline__ float readout_spike_grad_at(const float* g, const float* W3, int T,
                                                       int C, int N, int b, int t, int j,
                                                       const float* u, const float* l) {
    const float* gt = g + ((size_t)b * T + t) * C;
    const float* w = W3 + (size_t)j * C;
    double dot = 0.0;
    for (int c = 0; c < C; ++c) dot = dot + (double)gt[c] * (double)w[c];
    return with_regularisers(dot, u[b], l[(size_t)b * N + j]);
}

// A thread per neuron j (x-blocks of READOUT_GRAD_THREADS span a row), y-blocks over groups of
// READOUT_GRAD_ROWS rows (b, t). The block's rows of W3, and each group's g and per-sample terms,
// are widened to f64 once, in shared memory, so a thread converts only its l and its output
// (f32 <-> f64 conversions run at a quarter of the f64 rate); the group's dot products are summed
// class by class over all its rows at once, so the per-class loop costs little even when C = 1.
// Same sums in the same order as readout_spike_grad_at (c ascending from 0.0), so the same bits.
// C <= READOUT_GRAD_MAX_C; dynamic shared memory: readout_grad_shared_bytes(C).
#define READOUT_GRAD_THREADS 128
#define READOUT_GRAD_ROWS 16
#define READOUT_GRAD_MAX_C 32
extern "C" __global__ void __launch_bounds__(READOUT_GRAD_THREADS)
    readout_spike_grad_dense_f32(const float* __restrict__ g, const float* __restrict__ W3, int B,
                                 int T, int N, int C, const float* __restrict__ u,
                                 const float* __restrict__ l, float* __restrict__ out) {
    extern __shared__ double wide[];
    double* w_wide = wide;                                  // [C][READOUT_GRAD_THREADS]
    double* g_wide = w_wide + C * READOUT_GRAD_THREADS;     // [C][READOUT_GRAD_ROWS]
    double* u_wide = g_wide + C * READOUT_GRAD_ROWS;        // [READOUT_GRAD_ROWS]
    size_t* l_row = (size_t*)(u_wide + READOUT_GRAD_ROWS);  // [READOUT_GRAD_ROWS]: b * N
    const int j0 = blockIdx.x * READOUT_GRAD_THREADS;
    const int j = j0 + threadIdx.x;
    const size_t rows = (size_t)B * T;
    // Rows j0 .. of W3 are contiguous: consecutive threads read consecutive floats.
    for (int q = threadIdx.x; q < READOUT_GRAD_THREADS * C; q += READOUT_GRAD_THREADS) {
        const int jj = q / C, c = q % C;
        w_wide[c * READOUT_GRAD_THREADS + jj] =
            j0 + jj < N ? (double)W3[(size_t)(j0 + jj) * C + c] : 0.0;
    }
    for (size_t row0 = (size_t)blockIdx.y * READOUT_GRAD_ROWS; row0 < rows;
         row0 += (size_t)gridDim.y * READOUT_GRAD_ROWS) {
        const int group = (int)min((size_t)READOUT_GRAD_ROWS, rows - row0);
        __syncthreads();  // the previous group's readers are done
        for (int q = threadIdx.x; q < READOUT_GRAD_ROWS * C; q += READOUT_GRAD_THREADS) {
            const int r = q / C, c = q % C;
            g_wide[c * READOUT_GRAD_ROWS + r] = r < group ? (double)g[row0 * C + q] : 0.0;
        }
        if (threadIdx.x < READOUT_GRAD_ROWS) {
            const int r = threadIdx.x;
            const int b = r < group ? (int)((row0 + r) / T) : 0;
            u_wide[r] = (double)u[b];
            l_row[r] = (size_t)b * N;
        }
        __syncthreads();
        if (j >= N) continue;
        double dot[READOUT_GRAD_ROWS];
#pragma unroll
        for (int r = 0; r < READOUT_GRAD_ROWS; ++r) dot[r] = 0.0;
        for (int c = 0; c < C; ++c) {
            const double w = w_wide[c * READOUT_GRAD_THREADS + threadIdx.x];
            const double* gc = g_wide + c * READOUT_GRAD_ROWS;
#pragma unroll
            for (int r = 0; r < READOUT_GRAD_ROWS; ++r) dot[r] = dot[r] + gc[r] * w;
        }
        float* dst = out + row0 * N + j;
#pragma unroll
        for (int r = 0; r < READOUT_GRAD_ROWS; ++r) {
            if (r < group)
                dst[(size_t)r * N] = (float)((dot[r] + u_wide[r]) + (double)l[l_row[r] + j]);
        }
    }
}

// The same for any C: a thread per output, W3 and g widened as they are read.
extern "C" __global__ void readout_spike_grad_dense_any_c_f32(const float* __restrict__ g,
                                                              const float* __restrict__ W3, int B,
                                                              int T, int N, int C,
                                                              const float* __restrict__ u,
                                                              const float* __restrict__ l,
                                                              float* __restrict__ out) {
    const int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= N) return;
    for (int row = blockIdx.y; row < B * T; row += gridDim.y) {
        const int b = row / T, t = row % T;
        out[(size_t)row * N + j] = readout_spike_grad_at(g, W3, T, C, N, b, t, j, u, l);
    }
}

// Thread per tape slot (segment, k); slots past the segment's count are left alone.
extern "C" __global__ void readout_spike_grad_sparse_f32(const float* g, const float* W3, int B,
                                                         int T, int N, int C, const float* u,
                                                         const float* l, const u16* act_idx,
                                                         const u32* seg_count, int cap,
                                                         float* out) {
    const size_t slot = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    const int words_n = words_for(N);
    if (slot >= (size_t)B * words_n * cap) return;
    const size_t seg = slot / cap;
    const u32 k = slot % cap;
    if (k >= min(seg_count[seg], (u32)cap)) return;
    const int b = seg / words_n, tile = seg % words_n;
    const u32 entry = act_idx[slot];
    const int t = entry >> 5, j = tile * 32 + (entry & 31);
    out[slot] = readout_spike_grad_at(g, W3, T, C, N, b, t, j, u, l);
}
