// s3gd_bwd_tiled.cu: dS_in of the sparse backward of wide hidden layers by tiles of input units,
// pair by pair, with the tile's rows of W in shared memory.
//
// At N ~ 4096 and ~0.5% activity a sample holds millions of pairs (active entry below, later
// active entry of this layer), and the per-sample pairs kernel gathers W[i, j] from L2 for each.
// Here a block owns input units i0 .. i0 + w: every weight a pair needs is a shared-memory load,
// and this layer's active entries of each sample are read from a flat list (the tape compacted per
// sample, d already formed), 8 bytes an entry. It needs no dense later adjoint, so it runs beside
// the kernels that build one for dW.
//
// Powers of beta: a listed entry carries dd = beta^(tau - t_ref) d, so a pair's factor
// beta^(tau - t - 1) is dd times beta^(t_ref - t - 1), one factor per entry below and one
// multiply-add per pair. t_ref = T / 2; the caller checks that both factors stay within e^(+-40).
// That multiply-add is fused (__fmaf_rn, one rounding) although the program is compiled with
// contraction off: these sums are held to the f64 path, not to the CPU's bits.

#define TILED_UNIT_BITS 21
#define TILED_UNIT_MASK ((1u << TILED_UNIT_BITS) - 1u)

// Where each (sample, segment)'s entries start in the flat list: sample b owns slots from
// b * words_n * cap (as in the tape) and lists its segments' entries back to back from there:
// starts[b * (words_n + 1) + g] for segment g, starts[b * (words_n + 1) + words_n] its end.
// Warp per sample.
extern "C" __global__ void tape_starts(const u32* seg_count, int cap, int B, int words_n,
                                       u32* starts) {
    const int b = (int)(((size_t)blockIdx.x * blockDim.x + threadIdx.x) >> 5);
    const int lane = threadIdx.x & 31;
    if (b >= B) return;
    u32 run = (u32)((size_t)b * words_n * cap);
    u32* mine = starts + (size_t)b * (words_n + 1);
    for (int g0 = 0; g0 < words_n; g0 += 32) {
        const int g = g0 + lane;
        const u32 count = g < words_n ? min(seg_count[(size_t)b * words_n + g], (u32)cap) : 0u;
        u32 inclusive = warp_inclusive_sum_u32(count);
        if (g < words_n) mine[g] = run + inclusive - count;
        run += __shfl_sync(FULL_MASK, inclusive, 31);
    }
    if (lane == 0) mine[words_n] = run;
}

// The flat list: key = (tau << 21) | j and dd = beta^(tau - t_ref) dS sigma'(V) (the power from
// `step_factors`), in tape order; where `live` is not null, also each neuron's samples with an
// active entry (bit b % 32 of live[j * words(B) + b / 32], zeroed by the caller), for dW by
// columns. Thread per tape slot.
extern "C" __global__ void flatten_tape_f32(const u16* act_idx, const float* act_val,
                                            const u32* seg_count, int cap, const float* ds, int B,
                                            int N, const u32* starts, const double* step_factors,
                                            u32* key, float* dd, u32* live) {
    const size_t slot = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    int b, t, j;
    if (!decode_slot(slot, act_idx, seg_count, cap, B, N, &b, &t, &j)) return;
    const int words_n = words_for(N);
    const size_t seg = slot / cap;
    const size_t at = starts[(size_t)b * (words_n + 1) + seg % words_n] + slot % cap;
    key[at] = ((u32)t << TILED_UNIT_BITS) | (u32)j;
    const float d = ds[slot] * surrogate_of_offset(act_val[slot]);
    dd[at] = (float)((double)d * step_factors[t]);
    if (live) atomicOr(&live[(size_t)j * words_for(B) + (b >> 5)], 1u << (b & 31));
}

// Most groups of 32 entries deal_by_bank deals a block of the list into (its registers).
#define TILED_DEAL_MAX_GROUPS 8

// Re-orders each block of 32 x groups entries of a sample's list [e0, e1) (blocks counted from e0)
// so that the 32 entries a warp's load of the tiled kernel takes hold as few neurons of one
// shared-memory bank as can be: the block's entries ranked by (bank j % 32, position) go in turn
// to its groups of 32 (rank r to group r % groups, place r / groups). The tiled kernel gathers
// W[row, j] for 32 entries at once, and entries in list order put 3.5 distinct neurons on the
// busiest bank on average (3.1-way conflicts measured by ncu); dealt blocks of 128 give 2.2 in a
// simulation of random neurons. Entries move only within their block, so a pass that starts at
// the block holding its first entry with tau > t still meets every later one. A short last block
// deals its whole groups and leaves the rest in place. The ranks are the same each run (ties by
// position), and so is the order. Warp per block; counts: the warp's 32 words of shared memory.
__device__ void deal_by_bank(uint2* entries, u32 e0, u32 e1, int groups, u32* counts) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    const u32 block_len = 32u * (u32)groups;
    for (u32 b0 = e0 + (u32)warp * block_len; b0 < e1; b0 += (u32)warps * block_len) {
        const int here = (int)min((u32)groups, (e1 - b0) / 32u);
        if (here < 2) continue;
        uint2 v[TILED_DEAL_MAX_GROUPS];
        u32 bank[TILED_DEAL_MAX_GROUPS], rank[TILED_DEAL_MAX_GROUPS];
        counts[lane] = 0u;
        __syncwarp();
#pragma unroll
        for (int p = 0; p < TILED_DEAL_MAX_GROUPS; ++p) {
            if (p < here) {
                v[p] = entries[b0 + 32u * p + lane];
                bank[p] = v[p].x & 31u;  // j % 32: the key's low bits are j's
                atomicAdd(&counts[bank[p]], 1u);
            }
        }
        __syncwarp();
        const u32 total = counts[lane];
        const u32 first = warp_inclusive_sum_u32(total) - total;
        __syncwarp();
        counts[lane] = first;
        __syncwarp();
#pragma unroll
        for (int p = 0; p < TILED_DEAL_MAX_GROUPS; ++p)
            if (p < here) rank[p] = warp_claim_in_order(counts, bank[p], true);
#pragma unroll
        for (int p = 0; p < TILED_DEAL_MAX_GROUPS; ++p) {
            if (p < here)
                entries[b0 + 32u * (rank[p] % (u32)here) + rank[p] / (u32)here] = v[p];
        }
        __syncwarp();
    }
}

// The flat list re-ordered by step within each sample, for the tiled dS_in kernel: a pass over the
// list then starts at the first entry after its earliest entry below (about half the pairs have
// tau <= t and add nothing). step_start[b * (T + 1) + t] is where sample b's entries with tau >= t
// begin. A stable counting sort: warp w of the block takes the w-th of its warps' contiguous runs
// of the sample's list, counts its entries per step, and places them after every entry of an
// earlier step and after the earlier warps' entries of the same step, 32 at a time, a lane each,
// ranked among the lanes of the same step. So entries of one step keep their order in the flat
// list, and every sum over the list is the same each run. Each entry is written as one 8-byte
// word, its key and its dd's bits (`entries[e].x`, `.y`), which the tiled kernel reads in one
// load (v87). Where step_start is null (an A/B of walking whole lists), the entries keep the flat
// list's order. Where deal_groups >= 2, each block of 32 x deal_groups entries from the sample's
// first is then dealt by bank (deal_by_bank) and step_start[t] is the start of the block that holds
// the first entry with tau >= t. Block per sample; shared memory (warps x (T + 1)) words.
extern "C" __global__ void flat_by_step(const u32* key, const float* dd, const u32* starts,
                                        int words_n, int B, int T, int deal_groups,
                                        uint2* entries, u32* step_start) {
    extern __shared__ u32 cursor[];
    __shared__ u32 warp_total[32];
    __shared__ u32 bank_counts[32 * 32];
    const int b = blockIdx.x, lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int warps = blockDim.x >> 5, steps = T + 1;
    if (b >= B) return;
    const u32* sample_starts = starts + (size_t)b * (words_n + 1);
    const u32 e0 = sample_starts[0], e1 = sample_starts[words_n];
    if (!step_start) {
        for (u32 e = e0 + threadIdx.x; e < e1; e += blockDim.x)
            entries[e] = make_uint2(key[e], __float_as_uint(dd[e]));
        return;
    }
    const u32 run_len = (e1 - e0 + warps - 1) / warps;
    const u32 r0 = min(e1, e0 + warp * run_len), r1 = min(e1, r0 + run_len);
    u32* mine = cursor + warp * steps;
    for (int k = threadIdx.x; k < warps * steps; k += blockDim.x) cursor[k] = 0u;
    __syncthreads();
    for (u32 e = r0 + lane; e < r1; e += 32) atomicAdd(&mine[key[e] >> TILED_UNIT_BITS], 1u);
    __syncthreads();
    const u32 deal_len = deal_groups >= 2 ? 32u * (u32)deal_groups : 1u;
    exclusive_prefix_by_step(cursor, warps, steps, e0, warp_total, [&](int t, u32 start) {
        step_start[(size_t)b * steps + t] =
            start < e1 ? e0 + (start - e0) / deal_len * deal_len : start;
    });
    for (u32 c = r0; c < r1; c += 32) {
        const u32 e = c + lane;
        const bool in = e < r1;
        const u32 k = in ? key[e] : 0u;
        const float v = in ? dd[e] : 0.0f;
        const u32 at = warp_claim_in_order(mine, k >> TILED_UNIT_BITS, in);
        if (in) entries[at] = make_uint2(k, __float_as_uint(v));
    }
    if (deal_groups < 2) return;
    __syncthreads();  // every entry of the sample placed, and visible to the block
    deal_by_bank(entries, e0, e1, deal_groups, bank_counts + warp * 32);
}

// Each sample's work in the tiled dS_in kernel, as its flat list's length times its entries below
// plus one: every tile's warp reads the list once per pass, and the passes follow the entries
// below. Warp per sample.
extern "C" __global__ void tiled_sample_work(const u32* starts, int words_n,
                                             const u32* below_count, int below_cap, int words_ni,
                                             int B, u64* work) {
    const int b = (int)(((size_t)blockIdx.x * blockDim.x + threadIdx.x) >> 5);
    const int lane = threadIdx.x & 31;
    if (b >= B) return;
    u32 below = 0;
    for (int g = lane; g < words_ni; g += 32)
        below += min(below_count[(size_t)b * words_ni + g], (u32)below_cap);
    below = warp_sum_u32(below);
    if (lane == 0) {
        const u32* sample_starts = starts + (size_t)b * (words_n + 1);
        work[b] = (u64)(sample_starts[words_n] - sample_starts[0]) * ((u64)below + 1);
    }
}

// The samples in order of decreasing work, ties by index: order[rank] = b, the rank of b being
// how many samples come before it. Thread per sample, each reading every sample's work (B is a
// batch: thousands at most).
extern "C" __global__ void samples_by_work(const u64* work, int B, u32* order) {
    const int b = blockIdx.x * blockDim.x + threadIdx.x;
    if (b >= B) return;
    const u64 mine = work[b];
    u32 rank = 0;
    for (int c = 0; c < B; ++c) {
        const u64 theirs = work[c];
        rank += (theirs > mine || (theirs == mine && c < b)) ? 1u : 0u;
    }
    order[rank] = (u32)b;
}

// Entries a lane loads per round, entries below summed per pass over a sample's list, entries below
// a warp lists at once. Small, so that 1024 threads fit the registers (v30 in docs/gpu.md: the
// kernel's time follows the warps resident, not the loads in flight nor the entries per pass).
#define TILED_ROUND 2
#define TILED_BATCH 4
#define TILED_LIST 32
// Rounds ahead of their use a lane loads its entries of the list (two measured the same as one,
// v74 in docs/gpu.md).
#define TILED_AHEAD 1

// The split powers of beta per step t < T, computed once per backward: factor[t] = beta^(t - t_ref)
// (a listed entry's, in flatten_tape_f32) and factor[T + t] = beta^(t_ref - t - 1) (an entry
// below's, in the tiled dS_in kernel, whose lanes had each computed their own: a third of its
// instructions, one lane at a time).
extern "C" __global__ void step_factors_f64(double beta, int t_ref, int T, double* factor) {
    const int t = blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= T) return;
    factor[t] = pow(beta, (double)(t - t_ref));
    factor[T + t] = pow(beta, (double)(t_ref - t - 1));
}

// One pass of a batch over the list from `first`: acc[q] += dd W[row q, j] over the entries with
// tau > t_of[q]. SHARES, bit q: slot q holds the same row as slot q - 1 at a later step, so it
// takes that slot's weight (loaded whenever this one's is needed) instead of a load of its own;
// a template, so that each pattern's loop has no test for it.
// TILED_ROUND entries per lane per round, their loads issued together and TILED_AHEAD rounds ahead
// of their use (a load from L2 takes longer than a round's arithmetic): TILED_AHEAD + 1 sets of
// registers taken in turn, so that no set is copied into another (a copy waits for its load). A
// key of 0 is inert: no tau = 0 comes after an entry below. Each lane takes its entries in list
// order.
template <u32 SHARES>
__device__ __forceinline__ void tiled_pass(const uint2* entries, u32 first, u32 e1,
                                           const int* t_of, const u32* row_address, float* acc) {
    const int lane = threadIdx.x & 31;
    u32 kv[TILED_AHEAD + 1][TILED_ROUND];
    float d[TILED_AHEAD + 1][TILED_ROUND];
    const u32 round = TILED_ROUND * 32;
    const auto load_round = [&](u32 base, u32* round_kv, float* round_d) {
#pragma unroll
        for (int r = 0; r < TILED_ROUND; ++r) {
            const u32 x = base + lane + 32 * r;
            const uint2 entry = x < e1 ? entries[x] : make_uint2(0u, 0u);
            round_kv[r] = entry.x;
            round_d[r] = __uint_as_float(entry.y);
        }
    };
    const auto use_round = [&](const u32* round_kv, const float* round_d) {
#pragma unroll
        for (int r = 0; r < TILED_ROUND; ++r) {
            const int tau = (int)(round_kv[r] >> TILED_UNIT_BITS);
            const u32 column_offset = 4u * (round_kv[r] & TILED_UNIT_MASK);
            float w = 0.0f;
#pragma unroll
            for (int q = 0; q < TILED_BATCH; ++q) {
                if (tau > t_of[q]) {
                    if (!(SHARES >> q & 1u)) w = ld_shared_f32(row_address[q] + column_offset);
                    acc[q] = __fmaf_rn(round_d[r], w, acc[q]);
                }
            }
        }
    };
#pragma unroll
    for (int k = 0; k <= TILED_AHEAD; ++k) load_round(first + k * round, kv[k], d[k]);
    for (u32 base = first; base < e1; base += (TILED_AHEAD + 1) * round) {
#pragma unroll
        for (int k = 0; k <= TILED_AHEAD; ++k) {
            if (base + k * round >= e1) break;
            use_round(kv[k], d[k]);
            load_round(base + (TILED_AHEAD + 1 + k) * round, kv[k], d[k]);
        }
    }
}

// Sums, for a warp's listed entries below (t, row, slot) of sample b, every later entry of this
// layer in [e0, e1) times its weight, and writes dS_in with the regulariser terms. Lanes take the
// entries 32 apart; each lane's partial sums then meet in a fixed shuffle tree. The list is first
// sorted by row and step, so that entries of one unit at several steps sit side by side in a batch
// and share each weight's load (at N = 4096 a unit with an entry below has 1.8 of them on
// average: a third fewer gathers from the tile), where `share_rows` (the caller's choice: at
// N <= 2000 the sort cost more than it saved). Which batch slot takes an entry changes no sum.
__device__ void tiled_input_grad_flush(int* list, int listed, const uint2* entries,
                                       const u32* sample_step_start, u32 e0,
                                       u32 e1, const float* w_tile, int N, int T,
                                       const double* step_factor, int b, int NI, int i0,
                                       const float* u, const float* l, float* out,
                                       bool share_rows) {
    const int lane = threadIdx.x & 31;
    const u32 tile_address = (u32)__cvta_generic_to_shared(w_tile);
    if (share_rows) {
        // Rank by (the row's earliest step, row, t) (distinct: one entry per step and unit;
        // steps < 2048 and rows < 32 fit the key's fields), so that a batch's steps stay close
        // (a pass starts after its earliest entry below), then place.
        const bool mine = lane < listed;
        const int t = mine ? list[lane] : 0, row = mine ? list[TILED_LIST + lane] : 0;
        const int slot = mine ? list[2 * TILED_LIST + lane] : 0;
        int row_first = t;
        for (int k = 0; k < listed; ++k) {
            const int row_k = __shfl_sync(FULL_MASK, row, k), t_k = __shfl_sync(FULL_MASK, t, k);
            if (row_k == row) row_first = min(row_first, t_k);
        }
        const int sort_key = row_first << 16 | row << 11 | t;
        int rank = 0;
        for (int k = 0; k < listed; ++k) rank += __shfl_sync(FULL_MASK, sort_key, k) < sort_key;
        __syncwarp();
        if (mine) {
            list[rank] = t;
            list[TILED_LIST + rank] = row;
            list[2 * TILED_LIST + rank] = slot;
        }
        __syncwarp();
    }
    for (int p0 = 0; p0 < listed; p0 += TILED_BATCH) {
        int t_of[TILED_BATCH];
        u32 row_address[TILED_BATCH];
        float acc[TILED_BATCH];
        int earliest = T;
        // Bit q: slot q holds the same row as slot q - 1 (and a later step): its weight is
        // that slot's, loaded whenever this one's is needed.
        u32 shares = 0;
#pragma unroll
        for (int q = 0; q < TILED_BATCH; ++q) {
            const bool has = p0 + q < listed;
            const int row = has ? list[TILED_LIST + p0 + q] : -1;
            t_of[q] = has ? list[p0 + q] : T;  // no tau exceeds T - 1: an inert slot
            row_address[q] = tile_address + (has ? 4u * (u32)(row * N) : 0u);
            if (share_rows && q > 0 && has && row == list[TILED_LIST + p0 + q - 1])
                shares |= 1u << q;
            acc[q] = 0.0f;
            earliest = min(earliest, t_of[q]);
        }
        // With the list by step, the entries up to the earliest entry below add nothing.
        const u32 first = sample_step_start ? sample_step_start[min(earliest + 1, T)] : e0;
        switch (shares) {
#define TILED_PASS(SHARES)                                                                          \
    case SHARES:                                                                                   \
        tiled_pass<SHARES>(entries, first, e1, t_of, row_address, acc);                            \
        break;
            TILED_PASS(0u)
            TILED_PASS(2u)
            TILED_PASS(4u)
            TILED_PASS(6u)
            TILED_PASS(8u)
            TILED_PASS(10u)
            TILED_PASS(12u)
            TILED_PASS(14u)
#undef TILED_PASS
        }
        // Every lane ends the shuffle tree with the same bits of each sum (each step adds the
        // same two values), so lane q takes sum q and the batch's outputs are written together.
        float mine = 0.0f;
#pragma unroll
        for (int q = 0; q < TILED_BATCH; ++q) {
            float sum = acc[q];
            for (int s = 16; s > 0; s >>= 1) sum += __shfl_xor_sync(FULL_MASK, sum, s);
            if (lane == q) mine = sum;
        }
        if (lane < TILED_BATCH && p0 + lane < listed) {
            const int i = i0 + list[TILED_LIST + p0 + lane];
            const double scaled = (double)mine * step_factor[list[p0 + lane]];
            out[(u32)list[2 * TILED_LIST + p0 + lane]] =
                with_regularisers(scaled, u[b], l[(size_t)b * NI + i]);
        }
    }
}

// dS_in at the layer below's active entries (b, t, i) with i in the block's tile:
// dS_in[b, t, i] = sum over active (b, tau, j), tau > t, of W[i, j] beta^(tau-t-1) d[b, tau, j],
// plus the layer below's regulariser terms. Grid: x = tile of w input units, y = sample group
// (group y takes every gridDim.y-th sample of `sample_order`, or of 0 .. B - 1 where it is null).
// A warp per sample at a time, each warp taking the group's next sample when done with one (a
// shared counter), so that warps do not wait at the block's end for the one dealt the heaviest
// samples: the block's shared memory holds the tile until its last warp is done. Which warp takes
// a sample changes no sum. Shared memory: the tile's rows of W (w * N floats), then per warp a
// list of up to 32 entries below (t, row in the tile, slot), then the counter.
extern "C" __global__ void __launch_bounds__(1024) tiled_input_grad_f32(
    const uint2* entries, const u32* starts, const u32* step_start, int words_n,
    const u16* below_idx, const u32* below_count, int below_cap, int NI, const float* W, int N,
    int B, int T, const double* step_factor, int tile_w, const u32* sample_order, const float* u,
    const float* l, int share_rows, float* out) {
    extern __shared__ __align__(16) float shared[];
    const int i0 = blockIdx.x * tile_w;
    const int rows = min(tile_w, NI - i0);
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, warps = blockDim.x >> 5;
    float* w_tile = shared;
    int* lists = (int*)(w_tile + (size_t)tile_w * N);
    int* list = lists + warp * 3 * TILED_LIST;
    u32* next_sample = (u32*)(lists + warps * 3 * TILED_LIST);
    if (threadIdx.x == 0) *next_sample = 0u;
    const size_t tile_len = (size_t)rows * N;
    const float* w_rows = W + (size_t)i0 * N;
    // Eight loads in flight per thread (W comes from HBM), four floats each where aligned.
    if ((((size_t)i0 * N) & 3) == 0 && (tile_len & 3) == 0) {
        float4* to = (float4*)w_tile;
        copy_eight_in_flight((const float4*)w_rows, tile_len / 4,
                             [&](size_t q, float4 v) { to[q] = v; });
    } else {
        copy_eight_in_flight(w_rows, tile_len, [&](size_t q, float v) { w_tile[q] = v; });
    }
    __syncthreads();
    const int words_ni = words_for(NI);
    const int g_first = i0 >> 5, g_last = (i0 + rows - 1) >> 5;
    while (true) {
        u32 taken = 0u;
        if (lane == 0) taken = atomicAdd(next_sample, 1u);
        const size_t position = blockIdx.y + (size_t)__shfl_sync(FULL_MASK, taken, 0) * gridDim.y;
        if (position >= (size_t)B) break;
        const int b = sample_order ? (int)sample_order[position] : (int)position;
        const u32* sample_starts = starts + (size_t)b * (words_n + 1);
        const u32 e0 = sample_starts[0], e1 = sample_starts[words_n];
        const u32* sample_step_start = step_start ? step_start + (size_t)b * (T + 1) : nullptr;
        int listed = 0;
        for (int g = g_first; g <= g_last; ++g) {
            const size_t seg = (size_t)b * words_ni + g;
            const int count = (int)min(below_count[seg], (u32)below_cap);
            for (int c0 = 0; c0 < count; c0 += 32) {
                const int k = c0 + lane;
                int t = 0, row = -1;
                if (k < count) {
                    const u32 entry = below_idx[seg * below_cap + k];
                    const int i = g * 32 + (int)(entry & 31);
                    if (i >= i0 && i < i0 + rows) {
                        t = (int)(entry >> 5);
                        row = i - i0;
                    }
                }
                const u32 inside = __ballot_sync(FULL_MASK, row >= 0);
                if (inside == 0u) continue;
                if (listed + __popc(inside) > TILED_LIST) {
                    tiled_input_grad_flush(list, listed, entries, sample_step_start, e0, e1,
                                           w_tile, N, T, step_factor, b, NI, i0, u, l, out,
                                           share_rows != 0);
                    listed = 0;
                    __syncwarp();
                }
                if (row >= 0) {
                    const int at = listed + __popc(inside & ((1u << lane) - 1u));
                    list[at] = t;
                    list[TILED_LIST + at] = row;
                    list[2 * TILED_LIST + at] = (int)(seg * below_cap + k);
                }
                listed += __popc(inside);
                __syncwarp();
            }
        }
        if (listed > 0)
            tiled_input_grad_flush(list, listed, entries, sample_step_start, e0, e1, w_tile, N,
                                   T, step_factor, b, NI, i0, u, l, out, share_rows != 0);
        __syncwarp();
    }
}
