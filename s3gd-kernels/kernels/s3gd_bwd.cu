// s3gd_bwd.cu: the sparse (S3GD) backward of a LIF layer from its active entries alone.
//
// s3gd_bwd_weights_*: dW[i, j] = sum over active (b, t, j) of e[b, t, i] d[b, t, j], with
// d = dS sigma'(V) and the input trace e[b, t, i] = sum over input spikes (b, k, i), k < t, of
// beta^(t-1-k), recomputed from the compact input spikes (bits by unit for hidden layers, event times
// by unit for the uploaded input). A segment's entries come sorted by t, so each thread carries its
// trace forward from one entry's t to the next (e <- beta^dt e, plus the spikes in between).
// Grid: x = segment tile (32 columns j), y = sample group, z = chunk of inputs i; thread = input i,
// accumulating its own 32 columns in shared memory (no atomics); per-group partials are summed by
// sum_groups_f32 in a fixed order.
//
// s3gd_bwd_input_f32: dS_in at the active entries of the layer below only:
// dS_in[b, t, i] = sum over active (b, tau, j), tau > t, of W[i, j] beta^(tau-t-1) d[b, tau, j],
// plus the layer below's regulariser gradients. Block per below segment; the sample's active
// entries of this layer are staged in shared memory chunk by chunk.

#define MAX_TIME_WORDS 16

__device__ __forceinline__ void load_pow_table(float* pw, int T, double beta) {
    for (int k = threadIdx.x; k < T; k += blockDim.x) pw[k] = (float)pow(beta, (double)k);
}

#define STAGE 256

// Stages up to STAGE entries of one segment (from slot `first`) in shared memory as (t, lane, d).
__device__ __forceinline__ void stage_segment(const u16* act_idx, const float* act_val,
                                              const float* ds, size_t first, u32 count,
                                              int* st_t, int* st_lane, float* st_d) {
    for (u32 q = threadIdx.x; q < count; q += blockDim.x) {
        const size_t slot = first + q;
        const u32 entry = act_idx[slot];
        st_t[q] = entry >> 5;
        st_lane[q] = entry & 31;
        st_d[q] = ds[slot] * surrogate_of_offset(act_val[slot]);
    }
}

// Shared memory: 32 * blockDim.x floats (accumulators), T floats (powers of beta), STAGE staged
// entries (3 words each), and MAX_TIME_WORDS * blockDim.x words (each thread's input bits).
// in_cols: unit-major bits of the input (b, i, time words); T <= 32 * MAX_TIME_WORDS.
extern "C" __global__ void s3gd_bwd_weights_bits_f32(
    const u32* in_cols, const u16* act_idx, const float* act_val, const u32* seg_count, int cap,
    const float* ds, int B, int T, int NI, int N, int groups, double beta, float* partial) {
    extern __shared__ float shared[];
    float* acc = shared;
    float* pw = acc + 32 * blockDim.x;
    float* st_d = pw + T;
    int* st_t = (int*)(st_d + STAGE);
    int* st_lane = st_t + STAGE;
    u32* my_words = (u32*)(st_lane + STAGE) + threadIdx.x;  // word w at my_words[w * blockDim.x]
    const int tile = blockIdx.x, group = blockIdx.y;
    const int i = blockIdx.z * blockDim.x + threadIdx.x;
    const int words_n = words_for(N), words_t = words_for(T);
    load_pow_table(pw, T, beta);
    for (int k = 0; k < 32; ++k) acc[k * blockDim.x + threadIdx.x] = 0.0f;
    const int b0 = (int)((long long)group * B / groups);
    const int b1 = (int)((long long)(group + 1) * B / groups);
    for (int b = b0; b < b1; ++b) {
        const size_t seg = (size_t)b * words_n + tile;
        const u32 n = min(seg_count[seg], (u32)cap);
        if (n == 0) continue;
        bool any = false;
        for (int w = 0; w < words_t; ++w) {
            const u32 word = i < NI ? in_cols[((size_t)b * NI + i) * words_t + w] : 0u;
            my_words[w * blockDim.x] = word;
            any |= word != 0u;
        }
        float e = 0.0f;  // the trace at time `at`
        int at = 0;
        for (u32 k0 = 0; k0 < n; k0 += STAGE) {
            const u32 m = min((u32)STAGE, n - k0);
            __syncthreads();
            stage_segment(act_idx, act_val, ds, seg * cap + k0, m, st_t, st_lane, st_d);
            __syncthreads();
            if (!any) continue;
            for (u32 q = 0; q < m; ++q) {
                const int t = st_t[q];
                if (t > at) {
                    e *= pw[t - at];
                    for (int w = at >> 5; w <= (t - 1) >> 5; ++w) {
                        u32 bits = my_words[w * blockDim.x];
                        const int lo = max(at - w * 32, 0), hi = min(t - w * 32, 32);
                        bits &= (hi >= 32 ? FULL_MASK : ((1u << hi) - 1u)) & ~((1u << lo) - 1u);
                        while (bits) {
                            const int k = w * 32 + __ffs(bits) - 1;
                            bits &= bits - 1;
                            e += pw[t - 1 - k];
                        }
                    }
                    at = t;
                }
                acc[st_lane[q] * blockDim.x + threadIdx.x] += st_d[q] * e;
            }
        }
    }
    if (i >= NI) return;
    for (int lane = 0; lane < 32; ++lane) {
        const int j = tile * 32 + lane;
        if (j < N) partial[((size_t)group * NI + i) * N + j] = acc[lane * blockDim.x + threadIdx.x];
    }
}

// The same for the uploaded input: unit-major event times in increasing order (repeats for counts).
extern "C" __global__ void s3gd_bwd_weights_events_f32(
    const u32* unit_offsets, const u32* unit_times, const u16* act_idx, const float* act_val,
    const u32* seg_count, int cap, const float* ds, int B, int T, int NI, int N, int groups,
    double beta, float* partial) {
    extern __shared__ float shared[];
    float* acc = shared;
    float* pw = acc + 32 * blockDim.x;
    float* st_d = pw + T;
    int* st_t = (int*)(st_d + STAGE);
    int* st_lane = st_t + STAGE;
    const int tile = blockIdx.x, group = blockIdx.y;
    const int i = blockIdx.z * blockDim.x + threadIdx.x;
    const int words_n = words_for(N);
    load_pow_table(pw, T, beta);
    for (int k = 0; k < 32; ++k) acc[k * blockDim.x + threadIdx.x] = 0.0f;
    const int b0 = (int)((long long)group * B / groups);
    const int b1 = (int)((long long)(group + 1) * B / groups);
    for (int b = b0; b < b1; ++b) {
        const size_t seg = (size_t)b * words_n + tile;
        const u32 n = min(seg_count[seg], (u32)cap);
        if (n == 0) continue;
        u32 next = 0, end = 0;  // this input's next spike not yet in the trace, and the end
        if (i < NI) {
            next = unit_offsets[(size_t)b * NI + i];
            end = unit_offsets[(size_t)b * NI + i + 1];
        }
        int next_time = next < end ? (int)unit_times[next] : T;
        float e = 0.0f;  // the trace at time `at`
        int at = 0;
        for (u32 k0 = 0; k0 < n; k0 += STAGE) {
            const u32 m = min((u32)STAGE, n - k0);
            __syncthreads();
            stage_segment(act_idx, act_val, ds, seg * cap + k0, m, st_t, st_lane, st_d);
            __syncthreads();
            if (next_time >= T && e == 0.0f) continue;
            for (u32 q = 0; q < m; ++q) {
                const int t = st_t[q];
                if (t > at) {
                    e *= pw[t - at];
                    while (next_time < t) {
                        e += pw[t - 1 - next_time];
                        ++next;
                        next_time = next < end ? (int)unit_times[next] : T;
                    }
                    at = t;
                }
                acc[st_lane[q] * blockDim.x + threadIdx.x] += st_d[q] * e;
            }
        }
    }
    if (i >= NI) return;
    for (int lane = 0; lane < 32; ++lane) {
        const int j = tile * 32 + lane;
        if (j < N) partial[((size_t)group * NI + i) * N + j] = acc[lane * blockDim.x + threadIdx.x];
    }
}

extern "C" __global__ void sum_groups_f32(const float* partial, int groups, size_t len, float* out) {
    const size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= len) return;
    float acc = 0.0f;
    for (int g = 0; g < groups; ++g) acc += partial[(size_t)g * len + idx];
    out[idx] = acc;
}

// Shared memory: T floats, chunk * (float + 2 words), and words(N) + 1 words (segment starts).
// Block per below segment; each pass takes up to 8 below slots per thread and streams this sample's
// active entries (staged in parallel, chunk by chunk) past them.
#define SLOTS_PER_THREAD 8
extern "C" __global__ void s3gd_bwd_input_f32(
    const u16* act_idx, const float* act_val, const u32* seg_count, int cap, const float* ds, int N,
    const u16* below_idx, const u32* below_count, int below_cap, int NI, const float* W, int B,
    int T, double beta, const float* u_below, const float* l_below, int chunk, int w_rows_staged,
    float* out) {
    extern __shared__ float shared[];
    const int words_ni = words_for(NI), words_n = words_for(N);
    float* pw = shared;
    float* sh_d = pw + T;
    int* sh_time = (int*)(sh_d + chunk);
    int* sh_j = sh_time + chunk;
    u32* seg_start = (u32*)(sh_j + chunk);
    // The weight rows of this below tile, when the launch gave room for them (w_rows_staged).
    float* sh_w = (float*)(seg_start + words_n + 1);
    const int b = blockIdx.x / words_ni, below_tile = blockIdx.x % words_ni;
    if (b >= B) return;
    const size_t below_seg = (size_t)b * words_ni + below_tile;
    const u32 below_n = min(below_count[below_seg], (u32)below_cap);
    if (below_n == 0) return;
    load_pow_table(pw, T, beta);
    for (int tile = threadIdx.x; tile < words_n; tile += blockDim.x)
        seg_start[tile + 1] = min(seg_count[(size_t)b * words_n + tile], (u32)cap);
    const int rows_here = min(32, NI - below_tile * 32);
    if (w_rows_staged) {
        const float* src = W + (size_t)below_tile * 32 * N;
        for (int q = threadIdx.x; q < rows_here * N; q += blockDim.x) sh_w[q] = src[q];
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        seg_start[0] = 0;
        for (int tile = 0; tile < words_n; ++tile) seg_start[tile + 1] += seg_start[tile];
    }
    __syncthreads();
    const u32 total = seg_start[words_n];
    const u32 per_pass = blockDim.x * SLOTS_PER_THREAD;
    for (u32 base = 0; base < below_n; base += per_pass) {
        float acc[SLOTS_PER_THREAD];
        int t_of[SLOTS_PER_THREAD];
        const float* row_of[SLOTS_PER_THREAD];
        const u32 used = min((u32)SLOTS_PER_THREAD, (below_n - base + blockDim.x - 1) / blockDim.x);
#pragma unroll
        for (int r = 0; r < SLOTS_PER_THREAD; ++r) {
            acc[r] = 0.0f;
            const u32 k = base + threadIdx.x + r * blockDim.x;
            t_of[r] = T;  // no tau exceeds T - 1: an inert slot
            row_of[r] = W;
            if (k < below_n) {
                const u32 entry = below_idx[below_seg * below_cap + k];
                t_of[r] = entry >> 5;
                row_of[r] = w_rows_staged ? sh_w + (size_t)(entry & 31) * N
                                          : W + (size_t)(below_tile * 32 + (entry & 31)) * N;
            }
        }
        for (u32 c0 = 0; c0 < total; c0 += chunk) {
            const u32 count = min((u32)chunk, total - c0);
            __syncthreads();
            for (u32 q = threadIdx.x; q < count; q += blockDim.x) {
                const u32 e = c0 + q;
                int lo = 0, hi = words_n;  // the tile whose [start, next start) holds e
                while (hi - lo > 1) {
                    const int mid = (lo + hi) / 2;
                    if (seg_start[mid] <= e) lo = mid; else hi = mid;
                }
                const size_t slot = ((size_t)b * words_n + lo) * cap + (e - seg_start[lo]);
                const u32 entry = act_idx[slot];
                sh_time[q] = entry >> 5;
                sh_j[q] = lo * 32 + (entry & 31);
                sh_d[q] = ds[slot] * surrogate_of_offset(act_val[slot]);
            }
            __syncthreads();
#pragma unroll
            for (int r = 0; r < SLOTS_PER_THREAD; ++r) {
                if (r >= used) break;
                float sum = acc[r];
                const int t = t_of[r];
                const float* w_row = row_of[r];
#pragma unroll 4
                for (u32 q = 0; q < count; ++q) {
                    const int lag = sh_time[q] - t - 1;  // >= 0 only for tau > t
                    const float w = w_row[sh_j[q]];
                    const float decay = lag >= 0 ? pw[max(lag, 0)] : 0.0f;
                    sum += w * decay * sh_d[q];
                }
                acc[r] = sum;
            }
        }
#pragma unroll
        for (int r = 0; r < SLOTS_PER_THREAD; ++r) {
            const u32 k = base + threadIdx.x + r * blockDim.x;
            if (k < below_n) {
                const u32 entry = below_idx[below_seg * below_cap + k];
                const int i = below_tile * 32 + (entry & 31);
                out[below_seg * below_cap + k] =
                    (acc[r] + u_below[b]) + l_below[(size_t)b * NI + i];
            }
        }
    }
}
