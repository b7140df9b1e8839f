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

// The flat list and everything the tiled dS_in kernel and dW by columns read besides it, built in
// one launch, a block per sample (v102; until then six kernels one after another, about 64 us
// alone at N = 4096, 38 us as one):
// - step_factors: the split powers of beta per step t < T, factor[t] = beta^(t - t_ref) (a listed
//   entry's) and factor[T + t] = beta^(t_ref - t - 1) (an entry below's, in the tiled kernel and
//   dW by columns), written by block 0; every block computes the first half for itself.
// - starts: where each (sample, segment)'s entries start in the flat list. Sample b owns slots from
//   b * words_n * cap (as in the tape) and lists its segments' entries back to back from there:
//   starts[b * (words_n + 1) + g] for segment g, starts[b * (words_n + 1) + words_n] its end.
// - the flat list: key = (tau << 21) | j and dd = beta^(tau - t_ref) dS sigma'(V), in tape order;
//   where `live` is not null, also each neuron's samples with an active entry (bit b % 32 of
//   live[j * words(B) + b / 32], zeroed by the caller), for dW by columns.
// - entries: the flat list as the tiled kernel reads it, each entry one 8-byte word (key, dd's
//   bits). Where step_start is not null, re-ordered by step within the sample: a pass of the tiled
//   kernel then starts at the first entry after its earliest entry below (about half the pairs
//   have tau <= t and add nothing); step_start[b * (T + 1) + t] is where sample b's entries with
//   tau >= t begin. A stable counting sort: warp w takes the w-th of the warps' contiguous runs of
//   the sample's list, counts its entries per step, and places them after every entry of an
//   earlier step and after the earlier warps' entries of the same step, 32 at a time, ranked among
//   the lanes of the same step, so that every sum over the list is the same each run. Where
//   deal_groups >= 2, each block of 32 x deal_groups entries from the sample's first is then dealt
//   by bank (deal_by_bank) and step_start[t] is the start of the block that holds the first entry
//   with tau >= t. Without step_start the entries keep the flat list's order.
// - order (where not null): the samples by decreasing work in the tiled kernel, ties by index.
//   A sample's work is its list's length times its entries below plus one (every tile's warp reads
//   the list once per pass, and the passes follow the entries below). Each block writes its own
//   (`work`); the last block to do so, counted by `blocks_done` (zeroed by the caller), ranks them.
// Every phase spreads over the block's warps, the loads of a round issued together: the segments'
// counts (a warp per 32 segments), then the flat list by contiguous runs of it, FLATTEN_ENTRIES_
// AT_ONCE rounds of 32 entries at a time (each position's segment found by a search of the starts
// in shared memory), counting each run's entries per step as it goes, then the placing by step
// (each lane re-reading the positions it wrote), then the dealing. The block is bound by the
// latency of these chains (ncu, N = 4096: about 1,900 instructions a warp, 22 cycles apart).
// Shared memory: T doubles, warps x (T + 1) words, words_n words, words(words_n) words.
#define FLATTEN_ENTRIES_AT_ONCE 4
extern "C" __global__ void __launch_bounds__(1024)
    flatten_by_sample(const u16* act_idx, const float* act_val, const u32* seg_count, int cap,
                      const float* ds, int B, int T, int N, double beta, int t_ref,
                      const u32* below_count, int below_cap, int words_ni, int deal_groups,
                      u32* starts, double* step_factors, u32* key, float* dd, u32* live,
                      uint2* entries, u32* step_start, u64* work, u32* order, u32* blocks_done) {
    extern __shared__ double listed_factor[];
    const int b = blockIdx.x, lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int warps = blockDim.x >> 5, steps = T + 1, words_n = words_for(N);
    const int chunks = words_for(words_n), words_b = words_for(B);
    u32* cursor = (u32*)(listed_factor + T);
    u32* seg_start = cursor + warps * steps;
    u32* chunk_total = seg_start + words_n;
    __shared__ u32 warp_total[32];
    __shared__ u32 bank_counts[32 * 32];
    __shared__ u32 below_total;
    __shared__ bool last_block;
    if (b >= B) return;
    for (int t = threadIdx.x; t < T; t += blockDim.x) {
        const double listed = pow(beta, (double)(t - t_ref));
        listed_factor[t] = listed;
        if (b == 0) {
            step_factors[t] = listed;
            step_factors[T + t] = pow(beta, (double)(t_ref - t - 1));
        }
    }
    for (int k = threadIdx.x; k < warps * steps; k += blockDim.x) cursor[k] = 0u;
    const u32* sample_counts = seg_count + (size_t)b * words_n;
    for (int c = warp; c < chunks; c += warps) {
        const int g = 32 * c + lane;
        const u32 count = g < words_n ? min(sample_counts[g], (u32)cap) : 0u;
        const u32 inclusive = warp_inclusive_sum_u32(count);
        if (g < words_n) seg_start[g] = inclusive - count;
        if (lane == 31) chunk_total[c] = inclusive;
    }
    if (warp == warps - 1 && order) {
        u32 below = 0;
        for (int g = lane; g < words_ni; g += 32)
            below += min(below_count[(size_t)b * words_ni + g], (u32)below_cap);
        below = warp_sum_u32(below);
        if (lane == 0) below_total = below;
    }
    __syncthreads();
    const u32 e0 = (u32)((size_t)b * words_n * cap);
    u32 e1 = e0;
    for (int c = 0; c < chunks; ++c) e1 += chunk_total[c];
    u32* sample_starts = starts + (size_t)b * (words_n + 1);
    for (int c = warp; c < chunks; c += warps) {
        u32 base = e0;
        for (int earlier = 0; earlier < c; ++earlier) base += chunk_total[earlier];
        const int g = 32 * c + lane;
        if (g < words_n) {
            seg_start[g] += base;
            sample_starts[g] = seg_start[g];
        }
    }
    if (threadIdx.x == 0) sample_starts[words_n] = e1;
    if (order && threadIdx.x == 0) {
        work[b] = (u64)(e1 - e0) * ((u64)below_total + 1);
        __threadfence();
        last_block = atomicAdd(blocks_done, 1u) == (u32)B - 1u;
    }
    __syncthreads();
    if (order && last_block) {
        __threadfence();
        for (int c = threadIdx.x; c < B; c += blockDim.x) {
            const u64 mine = __ldcg(&work[c]);
            u32 rank = 0;
            for (int other = 0; other < B; ++other) {
                const u64 theirs = __ldcg(&work[other]);
                rank += (theirs > mine || (theirs == mine && other < c)) ? 1u : 0u;
            }
            order[rank] = (u32)c;
        }
    }
    // The flat list: warp w takes the w-th contiguous run of the sample's positions, a lane a
    // position, FLATTEN_ENTRIES_AT_ONCE rounds of loads at a time, and counts its entries by step.
    const u32 run_len = (e1 - e0 + warps - 1) / warps;
    const u32 r0 = min(e1, e0 + warp * run_len), r1 = min(e1, r0 + run_len);
    u32* mine = cursor + warp * steps;
    for (u32 c = r0; c < r1; c += 32 * FLATTEN_ENTRIES_AT_ONCE) {
        u32 packed[FLATTEN_ENTRIES_AT_ONCE], seg[FLATTEN_ENTRIES_AT_ONCE];
        float grad[FLATTEN_ENTRIES_AT_ONCE], offset[FLATTEN_ENTRIES_AT_ONCE];
#pragma unroll
        for (int k = 0; k < FLATTEN_ENTRIES_AT_ONCE; ++k) {
            const u32 e = c + 32 * k + lane;
            if (e < r1) {
                // The segment holding position e: the last whose start is at most e.
                int lo = 0, hi = words_n - 1;
                while (lo < hi) {
                    const int mid = (lo + hi + 1) >> 1;
                    if (seg_start[mid] <= e) lo = mid; else hi = mid - 1;
                }
                seg[k] = (u32)lo;
                const size_t slot = ((size_t)b * words_n + lo) * cap + (e - seg_start[lo]);
                packed[k] = act_idx[slot];
                grad[k] = ds[slot];
                offset[k] = act_val[slot];
            }
        }
#pragma unroll
        for (int k = 0; k < FLATTEN_ENTRIES_AT_ONCE; ++k) {
            const u32 e = c + 32 * k + lane;
            if (e < r1) {
                const int t = (int)(packed[k] >> 5), j = (int)(32u * seg[k] + (packed[k] & 31u));
                const float d = grad[k] * surrogate_of_offset(offset[k]);
                const u32 entry_key = ((u32)t << TILED_UNIT_BITS) | (u32)j;
                const float entry_dd = (float)((double)d * listed_factor[t]);
                key[e] = entry_key;
                dd[e] = entry_dd;
                if (step_start) {
                    atomicAdd(&mine[t], 1u);
                } else {
                    entries[e] = make_uint2(entry_key, __float_as_uint(entry_dd));
                }
                if (live) atomicOr(&live[(size_t)j * words_b + (b >> 5)], 1u << (b & 31));
            }
        }
    }
    if (!step_start) return;
    __syncthreads();  // every run counted, its flat list written and visible to the block
    const u32 deal_len = deal_groups >= 2 ? 32u * (u32)deal_groups : 1u;
    exclusive_prefix_by_step(cursor, warps, steps, e0, warp_total, [&](int t, u32 start) {
        step_start[(size_t)b * steps + t] =
            start < e1 ? e0 + (start - e0) / deal_len * deal_len : start;
    });
    // Each lane re-reads the positions it wrote, then the rounds claim their places in order.
    for (u32 c = r0; c < r1; c += 32 * FLATTEN_ENTRIES_AT_ONCE) {
        u32 entry_key[FLATTEN_ENTRIES_AT_ONCE];
        float entry_dd[FLATTEN_ENTRIES_AT_ONCE];
#pragma unroll
        for (int k = 0; k < FLATTEN_ENTRIES_AT_ONCE; ++k) {
            const u32 e = c + 32 * k + lane;
            entry_key[k] = e < r1 ? key[e] : 0u;
            entry_dd[k] = e < r1 ? dd[e] : 0.0f;
        }
#pragma unroll
        for (int k = 0; k < FLATTEN_ENTRIES_AT_ONCE; ++k) {
            const bool in = c + 32 * k + lane < r1;
            const u32 at = warp_claim_in_order(mine, entry_key[k] >> TILED_UNIT_BITS, in);
            if (in) entries[at] = make_uint2(entry_key[k], __float_as_uint(entry_dd[k]));
        }
    }
    if (deal_groups < 2) return;
    __syncthreads();  // every entry of the sample placed, and visible to the block
    deal_by_bank(entries, e0, e1, deal_groups, bank_counts + warp * 32);
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
