// s3gd_bwd.cu: the sparse (S3GD) backward of a LIF layer from its active entries alone.
//
// s3gd_bwd_weights_*: dW[i, j] = sum over active (b, t, j) of e[b, t, i] d[b, t, j], with
// d = dS sigma'(V) and the input trace e[b, t, i] = sum over input spikes (b, k, i), k < t, of
// beta^(t-1-k), recomputed from the compact input spikes (bits by unit for hidden layers, event times
// by unit for the uploaded input). Grid: x = segment tile (32 columns j), y = sample group,
// z = chunk of inputs i; thread = input i, accumulating its own 32 columns in shared memory (no
// atomics); per-group partials are summed by sum_groups_f32 in a fixed order.
//
// s3gd_bwd_input_f32: dS_in at the active entries of the layer below only:
// dS_in[b, t, i] = sum over active (b, tau, j), tau > t, of W[i, j] beta^(tau-t-1) d[b, tau, j],
// plus the layer below's regulariser gradients. Block per below segment; the sample's active
// entries of this layer are staged in shared memory chunk by chunk.

#define MAX_TIME_WORDS 16

__device__ __forceinline__ float trace_from_words(const u32* words, int t, const float* pw) {
    float e = 0.0f;
#pragma unroll
    for (int w = 0; w < MAX_TIME_WORDS; ++w) {
        const int base = w * 32;
        if (base < t) {
            u32 m = words[w];
            if (t - base < 32) m &= (1u << (t - base)) - 1u;
            while (m) {
                const int k = base + __ffs(m) - 1;
                m &= m - 1;
                e += pw[t - 1 - k];
            }
        }
    }
    return e;
}

__device__ __forceinline__ void load_pow_table(float* pw, int T, double beta) {
    for (int k = threadIdx.x; k < T; k += blockDim.x) pw[k] = (float)pow(beta, (double)k);
}

// Shared memory: 32 * blockDim.x floats (accumulators) + T floats (powers of beta).
// in_cols: unit-major bits of the input (b, i, time words); T <= 32 * MAX_TIME_WORDS.
extern "C" __global__ void s3gd_bwd_weights_bits_f32(
    const u32* in_cols, const u16* act_idx, const float* act_val, const u32* seg_count, int cap,
    const float* ds, int B, int T, int NI, int N, int groups, double beta, float* partial) {
    extern __shared__ float shared[];
    float* acc = shared;
    float* pw = shared + 32 * blockDim.x;
    const int tile = blockIdx.x, group = blockIdx.y;
    const int i = blockIdx.z * blockDim.x + threadIdx.x;
    const int words_n = words_for(N), words_t = words_for(T);
    load_pow_table(pw, T, beta);
    for (int k = 0; k < 32; ++k) acc[k * blockDim.x + threadIdx.x] = 0.0f;
    __syncthreads();
    const int b0 = (int)((long long)group * B / groups);
    const int b1 = (int)((long long)(group + 1) * B / groups);
    u32 words[MAX_TIME_WORDS];
    for (int b = b0; b < b1; ++b) {
        const size_t seg = (size_t)b * words_n + tile;
        const u32 n = min(seg_count[seg], (u32)cap);
        if (n == 0) continue;
#pragma unroll
        for (int w = 0; w < MAX_TIME_WORDS; ++w)
            words[w] = (i < NI && w < words_t) ? in_cols[((size_t)b * NI + i) * words_t + w] : 0u;
        for (u32 k = 0; k < n; ++k) {
            const size_t slot = seg * cap + k;
            const u32 entry = act_idx[slot];
            const int t = entry >> 5, lane = entry & 31;
            const float d = ds[slot] * surrogate_of_offset(act_val[slot]);
            const float e = trace_from_words(words, t, pw);
            acc[lane * blockDim.x + threadIdx.x] += d * e;
        }
    }
    if (i >= NI) return;
    for (int lane = 0; lane < 32; ++lane) {
        const int j = tile * 32 + lane;
        if (j < N) partial[((size_t)group * NI + i) * N + j] = acc[lane * blockDim.x + threadIdx.x];
    }
}

// The same for the uploaded input: unit-major event times (with repeats for counts).
extern "C" __global__ void s3gd_bwd_weights_events_f32(
    const u32* unit_offsets, const u16* unit_times, const u16* act_idx, const float* act_val,
    const u32* seg_count, int cap, const float* ds, int B, int T, int NI, int N, int groups,
    double beta, float* partial) {
    extern __shared__ float shared[];
    float* acc = shared;
    float* pw = shared + 32 * blockDim.x;
    const int tile = blockIdx.x, group = blockIdx.y;
    const int i = blockIdx.z * blockDim.x + threadIdx.x;
    const int words_n = words_for(N);
    load_pow_table(pw, T, beta);
    for (int k = 0; k < 32; ++k) acc[k * blockDim.x + threadIdx.x] = 0.0f;
    __syncthreads();
    const int b0 = (int)((long long)group * B / groups);
    const int b1 = (int)((long long)(group + 1) * B / groups);
    for (int b = b0; b < b1; ++b) {
        const size_t seg = (size_t)b * words_n + tile;
        const u32 n = min(seg_count[seg], (u32)cap);
        if (n == 0 || i >= NI) continue;
        const u32 begin = unit_offsets[(size_t)b * NI + i];
        const u32 end = unit_offsets[(size_t)b * NI + i + 1];
        if (begin == end) continue;
        for (u32 k = 0; k < n; ++k) {
            const size_t slot = seg * cap + k;
            const u32 entry = act_idx[slot];
            const int t = entry >> 5, lane = entry & 31;
            float e = 0.0f;
            for (u32 q = begin; q < end; ++q) {
                const int when = unit_times[q];
                if (when < t) e += pw[t - 1 - when];
            }
            const float d = ds[slot] * surrogate_of_offset(act_val[slot]);
            acc[lane * blockDim.x + threadIdx.x] += d * e;
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

// Shared memory: chunk * (u32 + u32 + float) + T floats. Block per below segment; each pass
// takes up to 8 below slots per thread and streams this sample's active entries past them.
#define SLOTS_PER_THREAD 8
extern "C" __global__ void s3gd_bwd_input_f32(
    const u16* act_idx, const float* act_val, const u32* seg_count, int cap, const float* ds, int N,
    const u16* below_idx, const u32* below_count, int below_cap, int NI, const float* W, int B,
    int T, double beta, const float* u_below, const float* l_below, int chunk, float* out) {
    extern __shared__ float shared[];
    float* pw = shared;
    float* sh_d = pw + T;
    u32* sh_time = (u32*)(sh_d + chunk);
    u32* sh_j = sh_time + chunk;
    __shared__ u32 staged;
    const int words_ni = words_for(NI), words_n = words_for(N);
    const int b = blockIdx.x / words_ni, below_tile = blockIdx.x % words_ni;
    if (b >= B) return;
    const size_t below_seg = (size_t)b * words_ni + below_tile;
    const u32 below_n = min(below_count[below_seg], (u32)below_cap);
    if (below_n == 0) return;
    load_pow_table(pw, T, beta);
    const u32 per_pass = blockDim.x * SLOTS_PER_THREAD;
    for (u32 base = 0; base < below_n; base += per_pass) {
        float acc[SLOTS_PER_THREAD];
        int t_of[SLOTS_PER_THREAD];
        const float* row_of[SLOTS_PER_THREAD];
#pragma unroll
        for (int r = 0; r < SLOTS_PER_THREAD; ++r) {
            acc[r] = 0.0f;
            const u32 k = base + threadIdx.x + r * blockDim.x;
            t_of[r] = T;  // no tau exceeds T - 1: inert slot
            row_of[r] = W;
            if (k < below_n) {
                const u32 entry = below_idx[below_seg * below_cap + k];
                t_of[r] = entry >> 5;
                row_of[r] = W + (size_t)(below_tile * 32 + (entry & 31)) * N;
            }
        }
        int tile = 0;
        u32 k_in_tile = 0;
        while (true) {
            __syncthreads();
            if (threadIdx.x == 0) {
                u32 filled = 0;
                while (tile < words_n && filled < (u32)chunk) {
                    const size_t seg = (size_t)b * words_n + tile;
                    const u32 n = min(seg_count[seg], (u32)cap);
                    while (k_in_tile < n && filled < (u32)chunk) {
                        const size_t slot = seg * cap + k_in_tile;
                        const u32 entry = act_idx[slot];
                        sh_time[filled] = entry >> 5;
                        sh_j[filled] = tile * 32 + (entry & 31);
                        sh_d[filled] = ds[slot] * surrogate_of_offset(act_val[slot]);
                        ++filled;
                        ++k_in_tile;
                    }
                    if (k_in_tile >= n) {
                        ++tile;
                        k_in_tile = 0;
                    }
                }
                staged = filled;
            }
            __syncthreads();
            const u32 count = staged;
            if (count == 0) break;
            const u32 used = min((u32)SLOTS_PER_THREAD, (below_n - base + blockDim.x - 1) / blockDim.x);
#pragma unroll
            for (int r = 0; r < SLOTS_PER_THREAD; ++r) {
                if (r >= used) break;
                float sum = acc[r];
                for (u32 q = 0; q < count; ++q) {
                    const int tau = sh_time[q];
                    if (tau > t_of[r]) sum += row_of[r][sh_j[q]] * pw[tau - t_of[r] - 1] * sh_d[q];
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
