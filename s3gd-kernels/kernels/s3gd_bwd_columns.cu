// s3gd_bwd_columns.cu: dW of the sparse backward of wide hidden-spike layers, a column of dW per
// warp, from the flat list of this layer's entries and each sample's spiking inputs.
//
// dW[i, j] = sum over samples b and spikes (b, s) of unit i of G[b, s, j], with the later adjoint
// G[b, s, j] = sum over active (b, tau, j), tau > s, of beta^(tau-1-s) d[b, tau, j]. At N ~ 4096
// and ~0.5% activity a neuron j has active entries in about a fifth of the samples, and in each
// such sample G[b, ., j] is zero from its last active step on. So a warp owns column j in shared
// memory and visits only the samples where j is active (a bit mask per neuron); there it forms
// G[b, ., j] (T floats) from j's entries and adds, for each input unit whose first spike comes
// before j's last active step, G at that unit's spikes. Each sample's spiking units are listed
// sorted by their first spike, so those units are a prefix of the list, and the lanes of a round
// read G at one or two steps (a broadcast). No dense G is written, and no row of it is read per
// spike (the adjoint form reads a 4N-byte row of G per input spike).
//
// Every dW[i, j] is one warp's: its terms are added sample by sample in increasing b, each
// sample's by one lane, so the sums depend neither on the order of a sample's list (by unit within
// one first step) nor on the order of the columns (heaviest first, ties in the order of
// shared-memory atomics). G is formed as
// beta^(t_ref-1-s) times the sum of the flat list's dd = beta^(tau - t_ref) d over tau > s (as in
// s3gd_bwd_tiled.cu); these sums are held to the f64 path, not to the CPU's bits.

// A listed spiking unit: unit index (16 bits), first spike step, second spike step (8 bits each;
// the second is T when the unit spiked once, where G holds a zero). A sample's list is padded to
// whole chunks with the unit NI (a trash slot of the column) at steps T. Units that spiked three
// times or more are also listed among the sample's repeat units, with their third to tenth spike
// steps packed in two words (T for none) and, past ten spikes, a flag (bit 31) that sends the lane
// to the unit's spike words: a lane adds those later spikes after the whole list, so that each
// dW[i, j] takes its unit's spikes in time order.
#define COLUMN_MAX_STEPS 254
#define COLUMN_STEP_WORDS ((COLUMN_MAX_STEPS + 31) / 32)
// uint4 loads of a sample's list per lane and chunk (a chunk: 128 x COLUMN_CHUNK_LOADS units).
#define COLUMN_CHUNK_LOADS 8
#define COLUMN_CHUNK_UNITS (COLUMN_CHUNK_LOADS * 128)
#define COLUMN_MANY_SPIKES 0x80000000u

// A unit's spike steps from its words: the first two as first | second << 8 (T for each missing
// one; first == T: it never spiked), the third to tenth packed in `later` (T for none), and
// whether it spiked more than ten times.
struct UnitSpikes {
    u32 first_two;
    u32 later[2];
    bool more_than_two, more_than_ten;
};

__device__ __forceinline__ UnitSpikes unit_spikes(const u32* words, int words_t, int T) {
    UnitSpikes out;
    const u32 none = (u32)T * 0x01010101u;
    out.first_two = (u32)T | (u32)T << 8;
    out.later[0] = none;
    out.later[1] = none;
    out.more_than_two = false;
    out.more_than_ten = false;
    int n = 0;
    for (int w = 0; w < words_t; ++w) {
        u32 bits = words[w];
        while (bits) {
            const u32 step = (u32)(w * 32 + __ffs(bits) - 1);
            bits &= bits - 1;
            if (n < 2) {
                const int shift = 8 * n;
                out.first_two = (out.first_two & ~(0xFFu << shift)) | step << shift;
            } else if (n < 10) {
                const int shift = 8 * ((n - 2) & 3);
                if (n < 6) {
                    out.later[0] = (out.later[0] & ~(0xFFu << shift)) | step << shift;
                } else {
                    out.later[1] = (out.later[1] & ~(0xFFu << shift)) | step << shift;
                }
                out.more_than_two = true;
            } else {
                out.more_than_ten = true;
                return out;
            }
            ++n;
        }
    }
    return out;
}

// Each sample's spiking units (hidden spikes, bits by unit), sorted by first spike and then by
// unit: sample b's list at list[b * stride ..] (stride a multiple of COLUMN_CHUNK_UNITS, at least
// NI, the list padded to whole chunks), first_start[b * (T + 1) + t] how many of them first
// spiked before step t, and its repeat units at repeats[b * NI ..] (unit | COLUMN_MANY_SPIKES past
// ten spikes) with their later steps at repeat_steps[2 (b * NI + slot) ..], repeat_count[b] of
// them, by unit. Block per sample, COLUMN_BUILD_WARPS warps, warp w taking the w-th run of units: a
// stable counting sort (the first pass reads only each unit's first spike and spike count), so
// units of one first step stay in unit order. T <= COLUMN_MAX_STEPS, NI < 65536.
#define COLUMN_BUILD_WARPS 32
extern "C" __global__ void __launch_bounds__(32 * COLUMN_BUILD_WARPS)
    spiking_units_by_first_step(const u32* cols, int B, int T, int NI, int stride, u32* list,
                                u32* first_start, u32* repeats, u32* repeat_steps,
                                u32* repeat_count) {
    __shared__ u32 at[COLUMN_BUILD_WARPS * (COLUMN_MAX_STEPS + 1)];
    __shared__ u32 repeat_at[COLUMN_BUILD_WARPS];
    __shared__ u32 warp_total[32];
    const int b = blockIdx.x;
    if (b >= B) return;
    const int words_t = words_for(T), lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int warps = COLUMN_BUILD_WARPS, steps = T + 1;
    const u32 below = (1u << lane) - 1u;
    const u32* sample_cols = cols + (size_t)b * NI * words_t;
    const int run = (NI + warps - 1) / warps;
    const int i0 = min(NI, warp * run), i1 = min(NI, i0 + run);
    u32* mine = at + warp * steps;
    for (int k = threadIdx.x; k < warps * steps; k += blockDim.x) at[k] = 0u;
    __syncthreads();
    u32 repeats_mine = 0;
    for (int c = i0; c < i1; c += 32) {
        const int i = c + lane;
        u32 first = (u32)T, spikes = 0;
        if (i < i1) {
            const u32* words = sample_cols + (size_t)i * words_t;
            for (int w = words_t - 1; w >= 0; --w) {
                const u32 bits = words[w];
                spikes += __popc(bits);
                if (bits) first = (u32)(w * 32 + __ffs(bits) - 1);
            }
        }
        if ((int)first < T) atomicAdd(&mine[first], 1u);
        repeats_mine += __popc(__ballot_sync(FULL_MASK, spikes > 2));
    }
    if (lane == 0) repeat_at[warp] = repeats_mine;
    __syncthreads();
    exclusive_prefix_by_step(at, warps, steps, 0u, warp_total, [&](int t, u32 start) {
        first_start[(size_t)b * steps + t] = start;
    });
    if (threadIdx.x == 0) {
        u32 total = 0;
        for (int w = 0; w < warps; ++w) {
            const u32 count = repeat_at[w];
            repeat_at[w] = total;
            total += count;
        }
        repeat_count[b] = total;
    }
    // The padding: unit NI at steps T, up to the next whole chunk (step T's start is the total).
    {
        const u32 total = at[T];
        const u32 padded = (total + COLUMN_CHUNK_UNITS - 1) / COLUMN_CHUNK_UNITS * COLUMN_CHUNK_UNITS;
        for (u32 q = total + threadIdx.x; q < padded; q += blockDim.x)
            list[(size_t)b * stride + q] = (u32)NI | ((u32)T * 0x0101u) << 16;
    }
    __syncthreads();
    for (int c = i0; c < i1; c += 32) {
        const int i = c + lane;
        UnitSpikes spikes;
        if (i < i1) {
            spikes = unit_spikes(sample_cols + (size_t)i * words_t, words_t, T);
        } else {
            spikes.first_two = (u32)T | (u32)T << 8;
            spikes.more_than_two = false;
            spikes.more_than_ten = false;
        }
        const u32 first = spikes.first_two & 0xFFu;
        const u32 peers = __match_any_sync(FULL_MASK, first);
        const u32 rank = __popc(peers & below);
        const u32 base = (int)first < T ? mine[first] : 0u;
        const u32 repeat_peers = __ballot_sync(FULL_MASK, spikes.more_than_two);
        const u32 repeat_base = repeat_at[warp];
        __syncwarp();
        if ((int)first < T) {
            list[(size_t)b * stride + base + rank] = (u32)i | spikes.first_two << 16;
            if (rank == 0) mine[first] = base + __popc(peers);
        }
        if (spikes.more_than_two) {
            const size_t slot = (size_t)b * NI + repeat_base + __popc(repeat_peers & below);
            repeats[slot] = (u32)i | (spikes.more_than_ten ? COLUMN_MANY_SPIKES : 0u);
            repeat_steps[2 * slot] = spikes.later[0];
            repeat_steps[2 * slot + 1] = spikes.later[1];
        }
        if (lane == 0) repeat_at[warp] = repeat_base + __popc(repeat_peers);
        __syncwarp();
    }
}

// The columns of dW in order of decreasing work (their live samples, from the masks that
// flatten_tape_f32 sets: bit b % 32 of live[j * words(B) + b / 32]), so that the heaviest start
// first and the kernel's tail is short; within one count, in the order of
// shared-memory atomics (each column's sums are its own warp's, so the order changes no bits).
// One block.
#define COLUMN_WORK_BINS 1024
extern "C" __global__ void columns_by_work(const u32* live, int N, int words_b, u32* order) {
    __shared__ u32 bins[COLUMN_WORK_BINS];
    for (int k = threadIdx.x; k < COLUMN_WORK_BINS; k += blockDim.x) bins[k] = 0u;
    __syncthreads();
    const auto bin_of = [&](int j) {
        u32 count = 0;
        for (int w = 0; w < words_b; ++w) count += __popc(live[(size_t)j * words_b + w]);
        return COLUMN_WORK_BINS - 1 - min(count, (u32)COLUMN_WORK_BINS - 1);
    };
    for (int j = threadIdx.x; j < N; j += blockDim.x) atomicAdd(&bins[bin_of(j)], 1u);
    __syncthreads();
    // Exclusive prefix over the bins: the first warp, a run of COLUMN_WORK_BINS / 32 bins a lane.
    if (threadIdx.x < 32) {
        const int per_lane = COLUMN_WORK_BINS / 32, k0 = threadIdx.x * per_lane;
        u32 own = 0;
        for (int k = 0; k < per_lane; ++k) own += bins[k0 + k];
        u32 inclusive = own;
        for (int d = 1; d < 32; d <<= 1) {
            const u32 below = __shfl_up_sync(FULL_MASK, inclusive, d);
            if ((int)threadIdx.x >= d) inclusive += below;
        }
        u32 run = inclusive - own;
        for (int k = 0; k < per_lane; ++k) {
            const u32 count = bins[k0 + k];
            bins[k0 + k] = run;
            run += count;
        }
    }
    __syncthreads();
    for (int j = threadIdx.x; j < N; j += blockDim.x) order[atomicAdd(&bins[bin_of(j)], 1u)] = (u32)j;
}

// What a warp loads for one sample ahead of using it: the first chunk of the sample's list (lane l
// holds units 128 k + 4 l .. + 3 of load k), the first 32 entries of j's segment in the flat list,
// and a repeat unit with its later steps per lane.
struct ColumnSample {
    uint4 units[COLUMN_CHUNK_LOADS];
    u32 key;
    float dd;
    u32 repeat;
    u32 repeat_steps[2];
};

__device__ __forceinline__ void load_units(const u32* sample_list, u32 q0, int lane, uint4* out) {
#pragma unroll
    for (int k = 0; k < COLUMN_CHUNK_LOADS; ++k)
        out[k] = *(const uint4*)(sample_list + q0 + 128 * k + 4 * lane);
}

__device__ __forceinline__ void load_sample(const u32* key, const float* dd, const u32* list,
                                            const u32* repeats, const u32* repeat_steps, int b,
                                            u32 r0, u32 r1, u32 units, u32 repeat_units, int NI,
                                            int stride, int lane, ColumnSample* out) {
    if (units > 0) load_units(list + (size_t)b * stride, 0, lane, out->units);
    const bool in = r0 + lane < r1;
    out->key = in ? key[r0 + lane] : 0u;
    out->dd = in ? dd[r0 + lane] : 0.0f;
    const size_t slot = (size_t)b * NI + lane;
    const bool repeat = lane < (int)repeat_units;
    out->repeat = repeat ? repeats[slot] : 0u;
    out->repeat_steps[0] = repeat ? repeat_steps[2 * slot] : 0u;
    out->repeat_steps[1] = repeat ? repeat_steps[2 * slot + 1] : 0u;
}

// Adds G at the first two spikes of 8 listed units (a lane's slots of two loads): every load
// first, then every store.
__device__ __forceinline__ void add_units(float* acc, const float* g, const u32* listed) {
    int at[8];
    float old[8], first[8], second[8];
#pragma unroll
    for (int u = 0; u < 8; ++u) {
        at[u] = (int)(listed[u] & 0xFFFFu);
        old[u] = acc[at[u]];
        first[u] = g[(listed[u] >> 16) & 0xFFu];
        second[u] = g[listed[u] >> 24];
    }
#pragma unroll
    for (int u = 0; u < 8; ++u) acc[at[u]] = (old[u] + first[u]) + second[u];
}

// Adds G over a chunk of the list held as loads of 4 slots, up to the first 256 slots that cover
// `units` (warp-uniform).
__device__ __forceinline__ void add_chunk(float* acc, const float* g, const uint4* chunk,
                                          u32 units) {
#pragma unroll
    for (int k = 0; k < COLUMN_CHUNK_LOADS; k += 2) {
        if (128u * k >= units) break;
        const u32 listed[8] = {chunk[k].x,     chunk[k].y,     chunk[k].z,     chunk[k].w,
                               chunk[k + 1].x, chunk[k + 1].y, chunk[k + 1].z, chunk[k + 1].w};
        add_units(acc, g, listed);
    }
}

// Adds G at a repeat unit's third spike on: its packed third to tenth (all loads first, then the
// adds in time order), then past ten spikes, from its words.
__device__ __forceinline__ void add_repeat(float* acc, const float* g, u32 repeat,
                                           const u32* steps, const u32* cols, int words_t, int T) {
    const int i = (int)(repeat & 0xFFFFu);
    float at_step[8];
#pragma unroll
    for (int k = 0; k < 8; ++k) at_step[k] = g[(steps[k >> 2] >> (8 * (k & 3))) & 0xFFu];
    float v = acc[i];
#pragma unroll
    for (int k = 0; k < 8; ++k) v += at_step[k];
    if (repeat & COLUMN_MANY_SPIKES) {
        int seen = 0;
        for (int w = 0; w < words_t; ++w) {
            u32 bits = cols[(size_t)i * words_t + w];
            while (bits) {
                const int s = w * 32 + __ffs(bits) - 1;
                bits &= bits - 1;
                if (++seen > 10) v += g[s];
            }
        }
    }
    acc[i] = v;
}

// dW (NI x N) by columns, written as its transpose dw_t (N x NI, a row per column of dW, so that
// the writes are whole lines): block x holds warps / parts columns, warp w part w % parts of
// column j = order[x * (warps / parts) + w / parts], each part a copy of the column in shared
// memory over its share of the samples; at the end the first part's warp adds the others' copies
// in order and writes the column (a column of many live samples thus runs as `parts` shorter
// chains). Shared
// memory: T floats (beta^(t_ref-1-s)), then per warp T + 1 floats (its G[b, ., j], and a zero at
// T), then per warp NI + 1 floats (its column of dW, and the trash slot NI of the padding).
// T <= COLUMN_MAX_STEPS, NI < 65536, the flat list as built for the tiled dS_in kernel.
// The warp takes j's live samples 32 at a time: lane p first finds sample p's range of j's segment
// in the flat list, j's last active step there and the listed units before it (three round trips
// for 32 samples); then the samples one by one, each forming G and adding it over its list's
// chunks up to those units, while the next sample's first chunk, entries and repeat units load.
// A lane's slots of one sample hold distinct units (or the trash slot), so a batch of its slots
// loads every value before it stores any; slots past the units first spiking before j's last
// active step, up to a multiple of 256, add G's zeros.
// STEP_WORDS: words of 32 steps a lane's suffix sums cover, T <= 32 STEP_WORDS (kernels for up to
// 128 and up to COLUMN_MAX_STEPS steps, below).
#define COLUMN_KERNEL_PARAMS                                                                       \
    const u32 *key, const float *dd, const u32 *starts, const u32 *live, const u32 *order,        \
        const u32 *list, const u32 *first_start, const u32 *repeats, const u32 *repeat_steps,     \
        const u32 *repeat_count, const u32 *cols, int B, int T, int NI, int stride, int N,        \
        double beta, int t_ref, int parts, float *dw_t
#define COLUMN_KERNEL_ARGS                                                                         \
    key, dd, starts, live, order, list, first_start, repeats, repeat_steps, repeat_count, cols, B, \
        T, NI, stride, N, beta, t_ref, parts, dw_t
template <int STEP_WORDS>
__device__ __forceinline__ void weight_grad_by_columns(COLUMN_KERNEL_PARAMS) {
    extern __shared__ float shared[];
    const int warps = blockDim.x >> 5, warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    float* pw = shared;
    float* g = pw + T + warp * (T + 1);
    float* acc = pw + T + warps * (T + 1) + (size_t)warp * (NI + 1);
    const int part = warp % parts, column = blockIdx.x * (warps / parts) + warp / parts;
    const int j = column < N ? (int)order[column] : N;
    for (int s = threadIdx.x; s < T; s += blockDim.x)
        pw[s] = (float)pow(beta, (double)(t_ref - 1 - s));
    for (int i = lane; i <= NI; i += 32) acc[i] = 0.0f;
    if (lane == 0) g[T] = 0.0f;
    __syncthreads();
    const int words_n = words_for(N), words_b = words_for(B), words_t = words_for(T);
    const int seg = j >> 5;
    // Part p of the column takes the samples of mask words [p words_b / parts, (p + 1) ...); a
    // warp past the last column takes none (it still meets the block's last barrier).
    int wb = j < N ? part * words_b / parts : 0;
    const int wb_end = j < N ? (part + 1) * words_b / parts : 0;
    u32 pending = wb < wb_end ? live[(size_t)j * words_b + wb] : 0u;
    while (true) {
        // Up to 32 live samples, lane p holding the p-th.
        int got = 0, my_b = -1;
        while (got < 32 && wb < wb_end) {
            if (pending == 0u) {
                if (++wb < wb_end) pending = live[(size_t)j * words_b + wb];
                continue;
            }
            const int take = min(__popc(pending), 32 - got);
            if (lane >= got && lane < got + take) {
                u32 m = pending;
                for (int k = 0; k < lane - got; ++k) m &= m - 1;
                my_b = wb * 32 + __ffs(m) - 1;
            }
            for (int k = 0; k < take; ++k) pending &= pending - 1;
            got += take;
        }
        if (got == 0) break;
        u32 my_r0 = 0, my_r1 = 0, my_units = 0, my_repeats = 0;
        int my_last = 0;
        if (my_b >= 0) {
            my_r0 = starts[(size_t)my_b * (words_n + 1) + seg];
            my_r1 = starts[(size_t)my_b * (words_n + 1) + seg + 1];
            my_repeats = repeat_count[my_b];
#pragma unroll 4
            for (u32 r = my_r0; r < my_r1; ++r) {
                const u32 k = key[r];
                if ((k & TILED_UNIT_MASK) == (u32)j) my_last = (int)(k >> TILED_UNIT_BITS);
            }
            my_units = first_start[(size_t)my_b * (T + 1) + my_last];
        }
        ColumnSample here;
        load_sample(key, dd, list, repeats, repeat_steps, __shfl_sync(FULL_MASK, my_b, 0),
                    __shfl_sync(FULL_MASK, my_r0, 0), __shfl_sync(FULL_MASK, my_r1, 0),
                    __shfl_sync(FULL_MASK, my_units, 0), __shfl_sync(FULL_MASK, my_repeats, 0), NI,
                    stride, lane, &here);
        for (int p = 0; p < got; ++p) {
            const int b = __shfl_sync(FULL_MASK, my_b, p);
            const u32 r0 = __shfl_sync(FULL_MASK, my_r0, p), r1 = __shfl_sync(FULL_MASK, my_r1, p);
            const u32 units = __shfl_sync(FULL_MASK, my_units, p);
            const u32 repeat_units = __shfl_sync(FULL_MASK, my_repeats, p);
            const int n = p + 1 < got ? p + 1 : p;
            const int next_b = __shfl_sync(FULL_MASK, my_b, n);
            const u32 next_r0 = __shfl_sync(FULL_MASK, my_r0, n);
            const u32 next_r1 = __shfl_sync(FULL_MASK, my_r1, n);
            const u32 next_units = __shfl_sync(FULL_MASK, my_units, n);
            const u32 next_repeats = __shfl_sync(FULL_MASK, my_repeats, n);
            ColumnSample ahead;
            if (p + 1 < got) {
                load_sample(key, dd, list, repeats, repeat_steps, next_b, next_r0, next_r1,
                            next_units, next_repeats, NI, stride, lane, &ahead);
            }
            // suffix[k]: sum of dd over j's entries with tau > lane + 32 k, in step order.
            float suffix[STEP_WORDS];
#pragma unroll
            for (int k = 0; k < STEP_WORDS; ++k) suffix[k] = 0.0f;
            for (u32 r = r0; r < r1; r += 32) {
                const bool in = r + lane < r1;
                const u32 chunk_key = r == r0 ? here.key : in ? key[r + lane] : 0u;
                const float chunk_dd = r == r0 ? here.dd : in ? dd[r + lane] : 0.0f;
                u32 mine =
                    __ballot_sync(FULL_MASK, in && (chunk_key & TILED_UNIT_MASK) == (u32)j);
                while (mine) {
                    const int src = __ffs(mine) - 1;
                    mine &= mine - 1;
                    const int tau =
                        (int)(__shfl_sync(FULL_MASK, chunk_key, src) >> TILED_UNIT_BITS);
                    const float x = __shfl_sync(FULL_MASK, chunk_dd, src);
#pragma unroll
                    for (int k = 0; k < STEP_WORDS; ++k)
                        if (lane + 32 * k < tau) suffix[k] += x;
                }
            }
#pragma unroll
            for (int k = 0; k < STEP_WORDS; ++k) {
                const int s = lane + 32 * k;
                if (s < T) g[s] = pw[s] * suffix[k];
            }
            __syncwarp();
            const u32* sample_list = list + (size_t)b * stride;
            if (units > 0) add_chunk(acc, g, here.units, units);
            for (u32 q0 = COLUMN_CHUNK_UNITS; q0 < units; q0 += COLUMN_CHUNK_UNITS) {
                uint4 chunk[COLUMN_CHUNK_LOADS];
                load_units(sample_list, q0, lane, chunk);
                add_chunk(acc, g, chunk, units - q0);
            }
            // Repeat units after the list (distinct units: no two lanes share an address).
            __syncwarp();
            const u32* sample_cols = cols + (size_t)b * NI * words_t;
            if (lane < (int)repeat_units)
                add_repeat(acc, g, here.repeat, here.repeat_steps, sample_cols, words_t, T);
            for (u32 q = 32 + lane; q < repeat_units; q += 32) {
                const size_t slot = (size_t)b * NI + q;
                const u32 steps[2] = {repeat_steps[2 * slot], repeat_steps[2 * slot + 1]};
                add_repeat(acc, g, repeats[slot], steps, sample_cols, words_t, T);
            }
            __syncwarp();
            if (p + 1 < got) here = ahead;
        }
    }
    // The column's parts meet: part 0's warp adds the others' copies in order.
    __syncthreads();
    if (part == 0 && j < N) {
        for (int i = lane; i < NI; i += 32) {
            float v = acc[i];
            for (int p = 1; p < parts; ++p) v += acc[(size_t)p * (NI + 1) + i];
            dw_t[(size_t)j * NI + i] = v;
        }
    }
}

// T <= COLUMN_SHORT_STEPS: half the suffix sums (and their registers) of the general kernel.
#define COLUMN_SHORT_STEPS 128
extern "C" __global__ void weight_grad_by_columns_bits_f32(COLUMN_KERNEL_PARAMS) {
    weight_grad_by_columns<COLUMN_STEP_WORDS>(COLUMN_KERNEL_ARGS);
}
extern "C" __global__ void weight_grad_by_columns_short_bits_f32(COLUMN_KERNEL_PARAMS) {
    weight_grad_by_columns<(COLUMN_SHORT_STEPS + 31) / 32>(COLUMN_KERNEL_ARGS);
}
