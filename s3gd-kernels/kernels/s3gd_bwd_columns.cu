// s3gd_bwd_columns.cu: dW of the sparse backward of wide hidden-spike layers, a column of dW per
// warp, from the flat list of this layer's entries and each sample's spiking inputs.
//
// dW[i, j] = sum over samples b and spikes (b, s) of unit i of G[b, s, j], with the later adjoint
// G[b, s, j] = sum over active (b, tau, j), tau > s, of beta^(tau-1-s) d[b, tau, j]. At N ~ 4096
// and ~0.5% activity a neuron j has active entries in about a fifth of the samples, and in each
// such sample G[b, ., j] is zero from its last active step on. So a warp owns column j in shared
// memory and visits only the samples where j is active (a bit mask per neuron); there it forms
// G[b, ., j] (T floats) from j's entries and adds G at the spikes that come before j's last active
// step. No dense G is written, and no row of it is read per spike (the adjoint form reads a
// 4N-byte row of G per input spike).
//
// A sample's spikes are listed in rows of 32 slots, slot c of a row holding a unit of bank c
// (unit % 32 == c) or bank c's trash slot, and lane c of the warp takes slot c: so the 32 updates
// of the column a round makes fall in 32 distinct shared-memory banks, and only lane c ever
// touches units of bank c. Each bank's units are sorted by the step listed, so that the spikes
// before j's last active step are in the rows before a per-step row count. The first list holds
// every spiking unit at its first spike, the second every unit that spiked twice or more at its
// second spike (about a fifth of those the first covers, at N = 4096), and units that spiked three
// times or more are listed apart with their later spikes: a slot then costs one read of G, and the
// rows of a visit cover its spikes rather than its units twice.
//
// Every dW[i, j] is one warp's: its terms are added sample by sample in increasing b, each
// sample's by one lane in time order (first spike, second, then the later ones), so the sums
// depend neither on where a unit sits in its bank's rows nor on the order of the columns (heaviest
// first, ties in the order of shared-memory atomics). G is formed as
// beta^(t_ref-1-s) times the sum of the flat list's dd = beta^(tau - t_ref) d over tau > s (as in
// s3gd_bwd_tiled.cu); these sums are held to the f64 path, not to the CPU's bits.

// A listed spike: the byte offsets of its unit's float in the column (4 x unit, 18 bits) and of
// its step's in G (4 x step, 10 bits) as listed_spike(unit, step), so that each address is one
// add. Bank c's trash slot is unit NI_pad + c (NI_pad: NI rounded up to 32) at step T, where G
// holds a zero; lists are padded to whole chunks of rows with them. Units that spiked three times
// or more are also listed among the sample's repeat units, with their third to tenth spike steps
// packed in two words (T for none) and, past ten spikes, a flag (bit 31) that sends the lane to
// the unit's spike words: a lane adds those later spikes after both lists, so that each dW[i, j]
// takes its unit's spikes in time order.
#define COLUMN_MAX_STEPS 254
#define COLUMN_STEP_WORDS ((COLUMN_MAX_STEPS + 31) / 32)
// uint4 loads of a sample's list per lane and chunk (a chunk: 128 x COLUMN_CHUNK_LOADS slots, 4 x
// COLUMN_CHUNK_LOADS rows). Six rather than eight (v86): the 16 registers freed hold the second
// batch of repeat units, loaded early, and the kernel stays under 168 registers (12 warps an SM).
#define COLUMN_CHUNK_LOADS 6
#define COLUMN_CHUNK_UNITS (COLUMN_CHUNK_LOADS * 128)
#define COLUMN_CHUNK_ROWS (COLUMN_CHUNK_LOADS * 4)
#define COLUMN_MANY_SPIKES 0x80000000u
#define COLUMN_BANKS 32

__device__ __forceinline__ u32 listed_spike(u32 unit, u32 step) { return unit << 2 | step << 20; }
#define LISTED_UNIT_BYTES 0x3FFFFu
#define LISTED_STEP_SHIFT 18

// Slot of row r, bank c in a sample's list: a lane's uint4 load holds four rows of its bank, and a
// warp's load 512 contiguous bytes.
__device__ __forceinline__ u32 bank_slot(u32 row, u32 bank) {
    return (row >> 2) * 128u + 4u * bank + (row & 3u);
}

// The trash slot of bank c beside a column of NI units (rounded up to a whole bank row).
__device__ __forceinline__ u32 bank_trash(int NI, u32 bank) {
    return (((u32)NI + 31u) & ~31u) + bank;
}

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

// Each sample's spikes in the two lists by bank (hidden spikes, bits by unit): sample b's first
// spikes at first_list[b * stride ..] and second spikes at second_list[b * stride ..] (stride a
// multiple of COLUMN_CHUNK_UNITS, at least NI rounded up to 32, each list padded to whole chunks),
// first_rows[b * (T + 1) + t] (second_rows) the rows that hold every first (second) spike before
// step t, and its repeat units at repeats[b * NI ..] (unit | COLUMN_MANY_SPIKES past ten spikes)
// with their later steps at repeat_steps[2 (b * NI + slot) ..], repeat_count[b] of them, by unit.
// Block per sample, COLUMN_BUILD_WARPS warps, warp w taking the w-th run of units (whole banks'
// rows: the lanes of a round hold distinct banks): a counting sort per (list, bank, step), its
// counts, then row cursors, in dynamic shared memory (2 x 32 x (T + 1) words). Within one bank and
// step the rows follow shared-memory atomics; a unit's row changes no sum. T <= COLUMN_MAX_STEPS,
// NI_pad + 31 < 65536.
#define COLUMN_BUILD_WARPS 32
extern "C" __global__ void __launch_bounds__(32 * COLUMN_BUILD_WARPS)
    spiking_units_by_bank(const u32* cols, int B, int T, int NI, int stride, u32* first_list,
                          u32* first_rows, u32* second_list, u32* second_rows, u32* repeats,
                          u32* repeat_steps, u32* repeat_count) {
    extern __shared__ u32 bank_steps[];
    __shared__ u32 repeat_at[COLUMN_BUILD_WARPS];
    const int b = blockIdx.x;
    if (b >= B) return;
    const int words_t = words_for(T), lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int warps = COLUMN_BUILD_WARPS, steps = T + 1;
    const u32 below = (1u << lane) - 1u;
    u32* first_at = bank_steps;
    u32* second_at = bank_steps + COLUMN_BANKS * steps;
    const u32* sample_cols = cols + (size_t)b * NI * words_t;
    const int run = (NI + 32 * warps - 1) / (32 * warps) * 32;
    const int i0 = min(NI, warp * run), i1 = min(NI, i0 + run);
    for (int k = threadIdx.x; k < 2 * COLUMN_BANKS * steps; k += blockDim.x) bank_steps[k] = 0u;
    __syncthreads();
    // Counts: each unit's first two spike steps and whether it spiked three times or more.
    u32 repeats_mine = 0;
    for (int c = i0; c < i1; c += 32) {
        const int i = c + lane;
        u32 first = (u32)T, second = (u32)T, spikes = 0;
        if (i < i1) {
            const u32* words = sample_cols + (size_t)i * words_t;
            for (int w = 0; w < words_t; ++w) {
                u32 bits = words[w];
                while (bits && spikes < 2) {
                    const u32 step = (u32)(w * 32 + __ffs(bits) - 1);
                    bits &= bits - 1;
                    if (spikes == 0) first = step; else second = step;
                    ++spikes;
                }
                spikes += __popc(bits);
            }
        }
        const u32 bank = (u32)i & 31u;
        if ((int)first < T) atomicAdd(&first_at[bank * steps + first], 1u);
        if ((int)second < T) atomicAdd(&second_at[bank * steps + second], 1u);
        repeats_mine += __popc(__ballot_sync(FULL_MASK, spikes > 2));
    }
    if (lane == 0) repeat_at[warp] = repeats_mine;
    __syncthreads();
    // Each (list, bank)'s counts by step become its rows' starts by step, its total at step T.
    for (int list = warp; list < 2 * COLUMN_BANKS; list += warps)
        warp_exclusive_prefix(bank_steps + list * steps, steps);
    if (threadIdx.x == 0) repeat_count[b] = serial_exclusive_prefix(repeat_at, warps);
    __syncthreads();
    // Rows before step t: the longest bank's; then each bank padded with its trash slot (at step T,
    // where G holds a zero) up to the list's whole chunks.
    for (int t = threadIdx.x; t < steps; t += blockDim.x) {
        u32 rows_first = 0, rows_second = 0;
        for (int c = 0; c < COLUMN_BANKS; ++c) {
            rows_first = max(rows_first, first_at[c * steps + t]);
            rows_second = max(rows_second, second_at[c * steps + t]);
        }
        first_rows[(size_t)b * steps + t] = rows_first;
        second_rows[(size_t)b * steps + t] = rows_second;
    }
    for (int list = 0; list < 2; ++list) {
        const u32* at = list == 0 ? first_at : second_at;
        u32* out = (list == 0 ? first_list : second_list) + (size_t)b * stride;
        u32 rows = 0;
        for (int c = 0; c < COLUMN_BANKS; ++c) rows = max(rows, at[c * steps + T]);
        const u32 padded = (rows + COLUMN_CHUNK_ROWS - 1) / COLUMN_CHUNK_ROWS * COLUMN_CHUNK_ROWS;
        for (u32 q = threadIdx.x; q < COLUMN_BANKS * padded; q += blockDim.x) {
            const u32 row = q / COLUMN_BANKS, bank = q % COLUMN_BANKS;
            if (row >= at[bank * steps + T])
                out[bank_slot(row, bank)] = listed_spike(bank_trash(NI, bank), (u32)T);
        }
    }
    __syncthreads();
    // Placement: each spike at its bank's next row of its step.
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
        const u32 bank = (u32)i & 31u;
        const u32 first = spikes.first_two & 0xFFu, second = spikes.first_two >> 8;
        if ((int)first < T) {
            const u32 row = atomicAdd(&first_at[bank * steps + first], 1u);
            first_list[(size_t)b * stride + bank_slot(row, bank)] = listed_spike((u32)i, first);
        }
        if ((int)second < T) {
            const u32 row = atomicAdd(&second_at[bank * steps + second], 1u);
            second_list[(size_t)b * stride + bank_slot(row, bank)] = listed_spike((u32)i, second);
        }
        const u32 repeat_peers = __ballot_sync(FULL_MASK, spikes.more_than_two);
        const u32 repeat_base = repeat_at[warp];
        __syncwarp();
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
// flatten_by_sample sets: bit b % 32 of live[j * words(B) + b / 32]), so that the heaviest start
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
        u32 run = warp_inclusive_sum_u32(own) - own;
        for (int k = 0; k < per_lane; ++k) {
            const u32 count = bins[k0 + k];
            bins[k0 + k] = run;
            run += count;
        }
    }
    __syncthreads();
    for (int j = threadIdx.x; j < N; j += blockDim.x) order[atomicAdd(&bins[bin_of(j)], 1u)] = (u32)j;
}

// What a warp loads for one sample ahead of using it: the first chunk of the sample's first list
// (lane c holds rows 4 k .. 4 k + 3 of bank c in load k) and its second list's first 8 rows, the
// first 32 entries of j's segment in the flat list, and a repeat unit with its later steps per
// lane.
struct ColumnSample {
    uint4 firsts[COLUMN_CHUNK_LOADS];
    uint4 seconds[2];
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

__device__ __forceinline__ void load_rows8(const u32* sample_list, u32 q0, int lane, uint4* out) {
    out[0] = *(const uint4*)(sample_list + q0 + 4 * lane);
    out[1] = *(const uint4*)(sample_list + q0 + 128 + 4 * lane);
}

__device__ __forceinline__ void load_sample(const u32* key, const float* dd, const u32* firsts,
                                            const u32* seconds, const u32* repeats,
                                            const u32* repeat_steps, int b, u32 r0, u32 r1,
                                            u32 first_slots, u32 second_slots, u32 repeat_units,
                                            int NI, int stride, int lane, ColumnSample* out) {
    if (first_slots > 0) load_units(firsts + (size_t)b * stride, 0, lane, out->firsts);
    if (second_slots > 0) load_rows8(seconds + (size_t)b * stride, 0, lane, out->seconds);
    const bool in = r0 + lane < r1;
    out->key = in ? key[r0 + lane] : 0u;
    out->dd = in ? dd[r0 + lane] : 0.0f;
    const size_t slot = (size_t)b * NI + lane;
    const bool repeat = lane < (int)repeat_units;
    out->repeat = repeat ? repeats[slot] : 0u;
    out->repeat_steps[0] = repeat ? repeat_steps[2 * slot] : 0u;
    out->repeat_steps[1] = repeat ? repeat_steps[2 * slot + 1] : 0u;
}

// Adds G at the listed step of a lane's first SLOTS slots of two loads (rows of its own bank: no
// other lane touches those units), every load first, then every store. acc and g are 32-bit
// shared-window addresses of the warp's column and G.
template <int SLOTS>
__device__ __forceinline__ void add_slots(u32 acc, u32 g, const uint4* two) {
    const u32 listed[8] = {two[0].x, two[0].y, two[0].z, two[0].w,
                           two[1].x, two[1].y, two[1].z, two[1].w};
    u32 at[SLOTS];
    float old[SLOTS], add[SLOTS];
#pragma unroll
    for (int u = 0; u < SLOTS; ++u) {
        at[u] = acc + (listed[u] & LISTED_UNIT_BYTES);
        old[u] = ld_shared_f32(at[u]);
        add[u] = ld_shared_f32(g + (listed[u] >> LISTED_STEP_SHIFT));
    }
#pragma unroll
    for (int u = 0; u < SLOTS; ++u) st_shared_f32(at[u], old[u] + add[u]);
}

// Adds G over 8 rows held as two loads, or over their first 4 where `left` (the list's slots from
// these rows on, warp-uniform) ends within them.
__device__ __forceinline__ void add_rows8(u32 acc, u32 g, const uint4* two, u32 left) {
    if (left > 128u) {
        add_slots<8>(acc, g, two);
    } else {
        add_slots<4>(acc, g, two);
    }
}

// Adds G over a chunk of a list held as loads, up to the first multiple of 4 rows that covers
// `slots` (32 per row; warp-uniform).
__device__ __forceinline__ void add_chunk(u32 acc, u32 g, const uint4* chunk, u32 slots) {
#pragma unroll
    for (int k = 0; k < COLUMN_CHUNK_LOADS; k += 2) {
        if (128u * k >= slots) break;
        add_rows8(acc, g, chunk + k, slots - 128u * k);
    }
}

// Adds G over a list's slots [q0, q_end), 8 rows at a time in two buffers taken in turn, the next
// 8 rows loading while these add; `a` holds rows q0 .. q0 + 7, their loads issued by the caller.
__device__ __forceinline__ void add_rows_streamed(u32 acc, u32 g, const u32* list, u32 q0,
                                                  u32 q_end, int lane, uint4* a) {
    uint4 b[2];
    for (u32 q = q0; q < q_end; q += 512) {
        const bool with_b = q + 256 < q_end;
        if (with_b) load_rows8(list, q + 256, lane, b);
        add_rows8(acc, g, a, q_end - q);
        if (!with_b) break;
        if (q + 512 < q_end) load_rows8(list, q + 512, lane, a);
        add_rows8(acc, g, b, q_end - q - 256);
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
// chains). Shared memory: T floats (beta^(t_ref-1-s), the second half of flatten_by_sample's step
// factors), then per warp T + 1 floats (its G[b, ., j], and a zero at T), then per warp NI_pad +
// 32 floats (its column of dW, and the banks' trash slots).
// T <= COLUMN_MAX_STEPS, NI_pad + 31 < 65536, the flat list as built for the tiled dS_in kernel,
// the lists as built by spiking_units_by_bank.
// The warp takes j's live samples 32 at a time: lane p first finds sample p's range of j's segment
// in the flat list, j's last active step there and the rows of both lists before it (three round
// trips for 32 samples); then the samples one by one, each forming G and adding it over both
// lists' rows, while the next sample's first rows, entries and repeat units load. Rows past those
// before j's last active step, up to a multiple of 4, add G's zeros.
// STEP_WORDS: words of 32 steps a lane's suffix sums cover, T <= 32 STEP_WORDS (kernels for up to
// 128 and up to COLUMN_MAX_STEPS steps, below).
#define COLUMN_KERNEL_PARAMS                                                                       \
    const u32 *key, const float *dd, const u32 *starts, const u32 *live, const u32 *order,        \
        const u32 *first_list, const u32 *first_rows, const u32 *second_list,                     \
        const u32 *second_rows, const u32 *repeats, const u32 *repeat_steps,                      \
        const u32 *repeat_count, const u32 *cols, int B, int T, int NI, int stride, int N,        \
        const double *step_factor, int parts, float *dw_t
#define COLUMN_KERNEL_ARGS                                                                         \
    key, dd, starts, live, order, first_list, first_rows, second_list, second_rows, repeats,     \
        repeat_steps, repeat_count, cols, B, T, NI, stride, N, step_factor, parts, dw_t
template <int STEP_WORDS>
__device__ __forceinline__ void weight_grad_by_columns(COLUMN_KERNEL_PARAMS) {
    extern __shared__ float shared[];
    const int warps = blockDim.x >> 5, warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    float* pw = shared;
    float* g = pw + T + warp * (T + 1);
    const int column_len = ((NI + 31) & ~31) + COLUMN_BANKS;
    float* acc = pw + T + warps * (T + 1) + (size_t)warp * column_len;
    const u32 acc_address = (u32)__cvta_generic_to_shared(acc);
    const u32 g_address = (u32)__cvta_generic_to_shared(g);
    const u32 pw_address = (u32)__cvta_generic_to_shared(pw);
    const int part = warp % parts, column = blockIdx.x * (warps / parts) + warp / parts;
    const int j = column < N ? (int)order[column] : N;
    for (int s = threadIdx.x; s < T; s += blockDim.x)
        pw[s] = (float)step_factor[T + s];
    for (int i = lane; i < column_len; i += 32) acc[i] = 0.0f;
    if (lane == 0) g[T] = 0.0f;
    __syncthreads();
    const int words_n = words_for(N), words_b = words_for(B), words_t = words_for(T);
    const int seg = j >> 5;
    // Part p of the column takes its live samples of ranks [p live / parts, (p + 1) live / parts)
    // (v102; until then those of mask words [p words_b / parts, (p + 1) ...), whose counts differ,
    // and a part's warp waited at the last barrier for the other's); a warp past the last column
    // takes none (it still meets the block's last barrier).
    const u32* column_live = live + (size_t)(j < N ? j : 0) * words_b;
    u32 live_samples = 0;
    if (j < N)
        for (int w = lane; w < words_b; w += 32) live_samples += __popc(column_live[w]);
    live_samples = __shfl_sync(FULL_MASK, warp_sum_u32(live_samples), 0);
    const u32 first_rank = (u32)part * live_samples / (u32)parts;
    u32 left = (u32)(part + 1) * live_samples / (u32)parts - first_rank;
    int wb = 0;
    u32 pending = 0u;
    if (left > 0u) {
        u32 skip = first_rank;
        pending = column_live[0];
        while ((u32)__popc(pending) <= skip) {
            skip -= (u32)__popc(pending);
            pending = column_live[++wb];
        }
        for (u32 k = 0; k < skip; ++k) pending &= pending - 1;
    }
    while (true) {
        // Up to 32 live samples, lane p holding the p-th.
        int got = 0, my_b = -1;
        while (got < 32 && left > 0u) {
            if (pending == 0u) {
                pending = column_live[++wb];
                continue;
            }
            const int take = min(min(__popc(pending), 32 - got), (int)left);
            if (lane >= got && lane < got + take) {
                u32 m = pending;
                for (int k = 0; k < lane - got; ++k) m &= m - 1;
                my_b = wb * 32 + __ffs(m) - 1;
            }
            for (int k = 0; k < take; ++k) pending &= pending - 1;
            got += take;
            left -= (u32)take;
        }
        if (got == 0) break;
        u32 my_r0 = 0, my_r1 = 0, my_firsts = 0, my_seconds = 0, my_repeats = 0;
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
            my_firsts = 32u * first_rows[(size_t)my_b * (T + 1) + my_last];
            my_seconds = 32u * second_rows[(size_t)my_b * (T + 1) + my_last];
        }
        ColumnSample here;
        load_sample(key, dd, first_list, second_list, repeats, repeat_steps,
                    __shfl_sync(FULL_MASK, my_b, 0), __shfl_sync(FULL_MASK, my_r0, 0),
                    __shfl_sync(FULL_MASK, my_r1, 0), __shfl_sync(FULL_MASK, my_firsts, 0),
                    __shfl_sync(FULL_MASK, my_seconds, 0), __shfl_sync(FULL_MASK, my_repeats, 0),
                    NI, stride, lane, &here);
        for (int p = 0; p < got; ++p) {
            const int b = __shfl_sync(FULL_MASK, my_b, p);
            const u32 r0 = __shfl_sync(FULL_MASK, my_r0, p), r1 = __shfl_sync(FULL_MASK, my_r1, p);
            const u32 firsts = __shfl_sync(FULL_MASK, my_firsts, p);
            const u32 seconds = __shfl_sync(FULL_MASK, my_seconds, p);
            const u32 repeat_units = __shfl_sync(FULL_MASK, my_repeats, p);
            const int n = p + 1 < got ? p + 1 : p;
            const int next_b = __shfl_sync(FULL_MASK, my_b, n);
            const u32 next_r0 = __shfl_sync(FULL_MASK, my_r0, n);
            const u32 next_r1 = __shfl_sync(FULL_MASK, my_r1, n);
            const u32 next_firsts = __shfl_sync(FULL_MASK, my_firsts, n);
            const u32 next_seconds = __shfl_sync(FULL_MASK, my_seconds, n);
            const u32 next_repeats = __shfl_sync(FULL_MASK, my_repeats, n);
            ColumnSample ahead;
            if (p + 1 < got) {
                load_sample(key, dd, first_list, second_list, repeats, repeat_steps, next_b,
                            next_r0, next_r1, next_firsts, next_seconds, next_repeats, NI, stride,
                            lane, &ahead);
            }
            // The sample's second 32 repeat units load now, to be added after both lists.
            const u32 second_repeat_slot = 32u + (u32)lane;
            u32 second_repeat = 0u, second_repeat_steps[2] = {0u, 0u};
            if (second_repeat_slot < repeat_units) {
                const size_t slot = (size_t)b * NI + second_repeat_slot;
                second_repeat = repeats[slot];
                second_repeat_steps[0] = repeat_steps[2 * slot];
                second_repeat_steps[1] = repeat_steps[2 * slot + 1];
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
                if (s < T)
                    st_shared_f32(g_address + 4u * s, ld_shared_f32(pw_address + 4u * s) * suffix[k]);
            }
            __syncwarp();
            // First spikes, then second spikes (each lane on its own bank's units throughout); rows
            // past those loaded ahead stream in, their first 8 loading while the first chunk adds.
            const u32* sample_firsts = first_list + (size_t)b * stride;
            uint4 later_firsts[2];
            if (firsts > COLUMN_CHUNK_UNITS)
                load_rows8(sample_firsts, COLUMN_CHUNK_UNITS, lane, later_firsts);
            if (firsts > 0) add_chunk(acc_address, g_address, here.firsts, firsts);
            if (firsts > COLUMN_CHUNK_UNITS)
                add_rows_streamed(acc_address, g_address, sample_firsts, COLUMN_CHUNK_UNITS,
                                  firsts, lane, later_firsts);
            const u32* sample_seconds = second_list + (size_t)b * stride;
            uint4 later_seconds[2];
            if (seconds > 256) load_rows8(sample_seconds, 256, lane, later_seconds);
            if (seconds > 0) add_rows8(acc_address, g_address, here.seconds, seconds);
            if (seconds > 256)
                add_rows_streamed(acc_address, g_address, sample_seconds, 256, seconds, lane,
                                  later_seconds);
            // Repeat units after the lists (distinct units, but of any bank: lanes of other banks).
            __syncwarp();
            const u32* sample_cols = cols + (size_t)b * NI * words_t;
            if (lane < (int)repeat_units)
                add_repeat(acc, g, here.repeat, here.repeat_steps, sample_cols, words_t, T);
            if (second_repeat_slot < repeat_units)
                add_repeat(acc, g, second_repeat, second_repeat_steps, sample_cols, words_t, T);
            for (u32 q = 64 + lane; q < repeat_units; q += 32) {
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
            for (int p = 1; p < parts; ++p) v += acc[(size_t)p * column_len + i];
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
