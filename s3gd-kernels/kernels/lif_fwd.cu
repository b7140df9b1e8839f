// lif_fwd.cu: the LIF layer forward pass, in two launches per chunk of samples.
//
// spike_current_*: thread per neuron j over a few rows b*T + t sums the input current of each step,
// the weight rows of that step's input spikes in the input's event order, in f64, into I (a chunk
// of samples at a time, so I stays small); the rows' spike ids are staged in shared memory first,
// so each step costs one round of independent weight loads.
// lif_scan_f32: thread per neuron j of sample b (blocks of whole warps) runs v = (beta v + I) - s in
// f64 over all steps, reading I eight steps ahead, and writes: spike bits by row (b, t) (one ballot
// word per warp), spike bits by unit (b, j) over time, spike counts, and the tape (V - theta for
// dense; for sparse the in-band entries of the warp's segment of 32 neurons).

struct EventsInput {  // CSR by (b, t): uploaded input with counts
    const u32* offsets;
    const u32* ids;
};

struct BitsInput {  // bit rows by (b, t): hidden spikes
    const u32* rows;
    int words;
};

__device__ __forceinline__ double input_current(const EventsInput& in, size_t row, const float* W,
                                                int N, int j) {
    const u32 begin = in.offsets[row], end = in.offsets[row + 1];
    double acc = 0.0;
    for (u32 k = begin; k < end; ++k) acc = acc + (double)W[(size_t)in.ids[k] * N + j];
    return acc;
}

__device__ __forceinline__ double input_current(const BitsInput& in, size_t row, const float* W,
                                                int N, int j) {
    double acc = 0.0;
    const u32* words = in.rows + row * in.words;
    for (int w = 0; w < in.words; ++w) {
        u32 m = words[w];
        while (m) {
            const int bit = __ffs(m) - 1;
            m &= m - 1;
            acc = acc + (double)W[(size_t)(w * 32 + bit) * N + j];
        }
    }
    return acc;
}

#define CURRENT_ROWS 8
#define CURRENT_ID_CAP 2048

// Stages the input spike ids of rows [row0, row0 + rows) in shared memory: ids[start[r]..start[r+1]]
// are row r's, in the input's event order. Returns false (nothing staged) when they exceed the cap.
__device__ bool stage_rows(const EventsInput& in, size_t row0, int rows, u32* start, u32* ids) {
    const u32 base = in.offsets[row0];
    const u32 total = in.offsets[row0 + rows] - base;
    if (total > CURRENT_ID_CAP) return false;
    for (int q = threadIdx.x; q <= rows; q += blockDim.x) start[q] = in.offsets[row0 + q] - base;
    for (u32 q = threadIdx.x; q < total; q += blockDim.x) ids[q] = in.ids[base + q];
    __syncthreads();
    return true;
}

// The rows' bit words are split into contiguous runs, one per thread; the runs' spike counts are
// scanned across the block (warp shuffles, then the warps' totals), so that no thread walks all
// the words (at N = 4096 a row has 128 words: one thread's serial prefix over 1024 words had made
// the staging cost more than the gather).
__device__ bool stage_rows(const BitsInput& in, size_t row0, int rows, u32* start, u32* ids) {
    __shared__ u32 word_start[CURRENT_ROWS * 130];
    __shared__ u32 warp_totals[32];
    const int items = rows * in.words;
    if (items + 1 > CURRENT_ROWS * 130) return false;
    const u32* words = in.rows + row0 * in.words;
    const int per = (items + blockDim.x - 1) / blockDim.x;
    const int q0 = min(items, (int)threadIdx.x * per), q1 = min(items, q0 + per);
    u32 mine = 0;
    for (int q = q0; q < q1; ++q) mine += __popc(words[q]);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    u32 inclusive = warp_inclusive_sum_u32(mine);
    if (lane == 31) warp_totals[warp] = inclusive;
    __syncthreads();
    if (warp == 0) {
        const u32 total = lane < (int)(blockDim.x >> 5) ? warp_totals[lane] : 0u;
        u32 scan = warp_inclusive_sum_u32(total);
        warp_totals[lane] = scan - total;
    }
    __syncthreads();
    u32 run = warp_totals[warp] + inclusive - mine;
    for (int q = q0; q < q1; ++q) {
        word_start[q] = run;
        run += __popc(words[q]);
    }
    if (q1 == items && q0 < q1) word_start[items] = run;
    __syncthreads();
    const u32 total = word_start[items];
    if (total > CURRENT_ID_CAP) return false;  // uniform: every thread read the same total
    for (int q = threadIdx.x; q < items; q += blockDim.x) {
        u32 m = words[q];
        u32 at = word_start[q];
        const int w = q % in.words;
        while (m) {
            const int bit = __ffs(m) - 1;
            m &= m - 1;
            ids[at++] = w * 32 + bit;
        }
    }
    for (int r = threadIdx.x; r <= rows; r += blockDim.x) start[r] = word_start[r * in.words];
    __syncthreads();
    return true;
}

// Grid: x = groups of CURRENT_ROWS rows of the chunk (samples b0.., times T), y = neuron tiles.
// The rows' spike ids are staged in shared memory; each thread then loads the weight rows of a
// step's spikes AHEAD at a time and adds them in event order. The kernel waits on those loads
// (ncu, N = 4096: 16 cycles between a warp's instructions, 40% of them on L1/L2 loads, 12% of the
// memory's bandwidth), so a step's spikes are loaded together where they fit in AHEAD.
template <class Input, int AHEAD>
__device__ void spike_current(const Input in, const float* __restrict__ W, int T, int N, int b0,
                              int samples, double* __restrict__ out) {
    __shared__ u32 start[CURRENT_ROWS + 1];
    __shared__ u32 ids[CURRENT_ID_CAP];
    const size_t chunk_rows = (size_t)samples * T;
    const size_t r0 = (size_t)blockIdx.x * CURRENT_ROWS;
    if (r0 >= chunk_rows) return;
    const int rows = (int)min((size_t)CURRENT_ROWS, chunk_rows - r0);
    const size_t row0 = (size_t)b0 * T + r0;
    const int j = blockIdx.y * blockDim.x + threadIdx.x;
    const bool staged = stage_rows(in, row0, rows, start, ids);
    if (j >= N) return;
    for (int r = 0; r < rows; ++r) {
        const size_t row = row0 + r;
        double acc = 0.0;
        if ((int)(row % T) < T - 1) {
            if (!staged) {
                acc = input_current(in, row, W, N, j);
            } else {
                const u32 end = start[r + 1];
                u32 k = start[r];
                if (AHEAD > 4) {
                    // Predicated: a step's spikes (about 14 at N = 4096) in one round of loads.
                    for (; k < end; k += AHEAD) {
                        float w[AHEAD];
#pragma unroll
                        for (int a = 0; a < AHEAD; ++a)
                            w[a] = k + a < end ? W[(size_t)ids[k + a] * N + j] : 0.0f;
#pragma unroll
                        for (int a = 0; a < AHEAD; ++a)
                            if (k + a < end) acc = acc + (double)w[a];
                    }
                } else {
                    // Whole groups of four, then one at a time (as before v106): no predicated
                    // slots where steps have few spikes.
                    for (; k + 4 <= end; k += 4) {
                        const float w0 = W[(size_t)ids[k] * N + j];
                        const float w1 = W[(size_t)ids[k + 1] * N + j];
                        const float w2 = W[(size_t)ids[k + 2] * N + j];
                        const float w3 = W[(size_t)ids[k + 3] * N + j];
                        acc = acc + (double)w0;
                        acc = acc + (double)w1;
                        acc = acc + (double)w2;
                        acc = acc + (double)w3;
                    }
                    for (; k < end; ++k) acc = acc + (double)W[(size_t)ids[k] * N + j];
                }
            }
        }
        out[(r0 + r) * N + j] = acc;
    }
}

// Four loads ahead, and the same with sixteen (`_wide`) for wide layers: separate kernels, so that
// the narrow one keeps its own registers (one kernel with both paths made N = 200's layer-2
// forward 15% slower).
extern "C" __global__ void spike_current_events_f64(const u32* offsets, const u32* ids,
                                                    const float* W, int T, int N, int b0,
                                                    int samples, double* out) {
    EventsInput in{offsets, ids};
    spike_current<EventsInput, 4>(in, W, T, N, b0, samples, out);
}

extern "C" __global__ void spike_current_events_wide_f64(const u32* offsets, const u32* ids,
                                                         const float* W, int T, int N, int b0,
                                                         int samples, double* out) {
    EventsInput in{offsets, ids};
    spike_current<EventsInput, 16>(in, W, T, N, b0, samples, out);
}

extern "C" __global__ void spike_current_bits_f64(const u32* rows, int words_in, const float* W,
                                                  int T, int N, int b0, int samples, double* out) {
    BitsInput in{rows, words_in};
    spike_current<BitsInput, 4>(in, W, T, N, b0, samples, out);
}

extern "C" __global__ void spike_current_bits_wide_f64(const u32* rows, int words_in,
                                                       const float* W, int T, int N, int b0,
                                                       int samples, double* out) {
    BitsInput in{rows, words_in};
    spike_current<BitsInput, 16>(in, W, T, N, b0, samples, out);
}

// keep: 0 nothing, 1 dense (V - theta of every step), 2 sparse (in-band entries).
// stats: [0] spikes, [1] active entries, [2] largest segment count.
// Block = blockDim.x neurons (a multiple of 32) of one sample b0 + blockIdx.x / blocks_per_sample.
// Currents are f64 sums of spike inputs, or f32 rows of a GEMM for float inputs (widened exactly).
// KEEP is a template parameter and every pointer advances by a fixed stride per step, so a step is
// one straight run of instructions (the kernel is bound by how many it issues on wide layers).
template <typename Current, int PREFETCH, int KEEP>
__device__ void lif_scan(const Current* __restrict__ current, int B, int T, int N, int b0,
                         int samples, double beta, double band, u32* __restrict__ rows_out,
                         u32* __restrict__ cols_out, float* __restrict__ counts,
                         u32* __restrict__ stats, float* __restrict__ vmt_out,
                         u16* __restrict__ act_idx, float* __restrict__ act_val,
                         u32* __restrict__ seg_count, int cap) {
    const int blocks_per_sample = (N + blockDim.x - 1) / blockDim.x;
    const int local = blockIdx.x / blocks_per_sample;
    const int b = b0 + local;
    const int j = (blockIdx.x % blocks_per_sample) * blockDim.x + threadIdx.x;
    const int lane = threadIdx.x & 31;
    const int tile = j >> 5;
    const int words_n = words_for(N);
    const int words_t = words_for(T);
    if (local >= samples || b >= B || tile >= words_n) return;  // whole warps only
    const bool live = j < N;
    const size_t seg = (size_t)b * words_n + tile;
    // Lanes past N read column 0 and integrate nothing, so they never fire.
    const Current* cur = current + (size_t)local * T * N + (live ? j : 0);
    u32* row_word = rows_out + (size_t)b * T * words_n + tile;
    u32* col_word_out = cols_out + ((size_t)b * N + (live ? j : 0)) * words_t;
    float* vmt = vmt_out + ((size_t)b * T * N + (live ? j : 0));
    const u32 lanes_below = (1u << lane) - 1u;

    double v = 0.0, s = 0.0;
    u32 col_word = 0, seg_n = 0, spikes = 0;
    if (lane == 0) *row_word = 0u;
    if (KEEP == 1 && live) *vmt = -1.0f;
    const int last = T - 1;  // steps 1 .. T - 1 integrate the currents of rows 0 .. T - 2
    for (int t0 = 0; t0 < last; t0 += PREFETCH) {
        const bool whole = t0 + PREFETCH <= last;
        Current ahead[PREFETCH];
#pragma unroll
        for (int k = 0; k < PREFETCH; ++k)
            ahead[k] = (whole || t0 + k < last) ? cur[(size_t)k * N] : (Current)0;
        cur += (size_t)PREFETCH * N;
#pragma unroll
        for (int k = 0; k < PREFETCH; ++k) {
            if (!whole && t0 + k >= last) break;
            const int step = t0 + k + 1;
            v = (beta * v + (live ? (double)ahead[k] : 0.0)) - s;
            const bool fire = v > 1.0;
            s = fire ? 1.0 : 0.0;
            const u32 fired = __ballot_sync(FULL_MASK, fire);
            row_word += words_n;
            if (lane == 0) *row_word = fired;
            spikes += fire ? 1u : 0u;
            col_word |= (fire ? 1u : 0u) << (step & 31);
            if ((step & 31) == 31) {
                if (live) *col_word_out = col_word;
                ++col_word_out;
                col_word = 0;
            }
            if (KEEP == 1) {
                vmt += N;
                if (live) *vmt = (float)(v - 1.0);
            } else if (KEEP == 2) {
                const double offset = v - 1.0;
                const bool active = live && fabs(offset) < band;
                const u32 ballot = __ballot_sync(FULL_MASK, active);
                if (active) {
                    const u32 pos = seg_n + __popc(ballot & lanes_below);
                    if (pos < (u32)cap) {
                        act_idx[seg * cap + pos] = (u16)((step << 5) | lane);
                        act_val[seg * cap + pos] = (float)offset;
                    }
                }
                seg_n += __popc(ballot);
            }
        }
    }
    if ((last & 31) != 31 && live) *col_word_out = col_word;  // the last, partial word
    // A NaN membrane stays NaN, and carries NaN to the loss through the count.
    if (live) counts[(size_t)b * N + j] = isnan(v) ? __int_as_float(0x7fc00000) : (float)spikes;
    spikes = warp_sum_u32(spikes);
    if (lane == 0) {
        atomicAdd(&stats[0], spikes);
        if (KEEP == 2) {
            seg_count[seg] = seg_n;
            atomicAdd(&stats[1], seg_n);
            atomicMax(&stats[2], seg_n);
        }
    }
}

template <typename Current, int PREFETCH>
__device__ void lif_scan_keep(const Current* current, int B, int T, int N, int b0, int samples,
                              double beta, int keep, double band, u32* rows_out, u32* cols_out,
                              float* counts, u32* stats, float* vmt_out, u16* act_idx,
                              float* act_val, u32* seg_count, int cap) {
    if (keep == 1)
        lif_scan<Current, PREFETCH, 1>(current, B, T, N, b0, samples, beta, band, rows_out,
                                       cols_out, counts, stats, vmt_out, act_idx, act_val,
                                       seg_count, cap);
    else if (keep == 2)
        lif_scan<Current, PREFETCH, 2>(current, B, T, N, b0, samples, beta, band, rows_out,
                                       cols_out, counts, stats, vmt_out, act_idx, act_val,
                                       seg_count, cap);
    else
        lif_scan<Current, PREFETCH, 0>(current, B, T, N, b0, samples, beta, band, rows_out,
                                       cols_out, counts, stats, vmt_out, act_idx, act_val,
                                       seg_count, cap);
}

extern "C" __global__ void lif_scan_f32(const double* current, int B, int T, int N, int b0,
                                        int samples, double beta, int keep, double band,
                                        u32* rows_out, u32* cols_out, float* counts, u32* stats,
                                        float* vmt_out, u16* act_idx, float* act_val,
                                        u32* seg_count, int cap) {
    lif_scan_keep<double, 8>(current, B, T, N, b0, samples, beta, keep, band, rows_out, cols_out,
                             counts, stats, vmt_out, act_idx, act_val, seg_count, cap);
}

// Float currents come from a GEMM over the whole batch: B*N threads, often few per SM, so each
// keeps 16 steps of loads in flight (8 left the H200's bandwidth unused; 32 was slower again).
extern "C" __global__ void lif_scan_float_current_f32(const float* current, int B, int T, int N,
                                                      int b0, int samples, double beta, int keep,
                                                      double band, u32* rows_out, u32* cols_out,
                                                      float* counts, u32* stats, float* vmt_out,
                                                      u16* act_idx, float* act_val,
                                                      u32* seg_count, int cap) {
    lif_scan_keep<float, 16>(current, B, T, N, b0, samples, beta, keep, band, rows_out, cols_out,
                             counts, stats, vmt_out, act_idx, act_val, seg_count, cap);
}

// The uploaded input's events regrouped by unit: unit_offsets[b*U + i] .. [b*U + i + 1] index
// unit_times, each unit's event times in increasing order (the sparse backward's input traces).
// Block per sample: counts in shared memory, an exclusive scan, then one warp places the events
// in CSR order, 32 at a time, lanes of the same unit in lane order (warp_claim_in_order: stable,
// so the result is the same on every run). Shared memory: U + 1 words.
extern "C" __global__ void events_by_unit(const u32* offsets, const u32* ids, int B, int T, int U,
                                          u32* unit_offsets, u32* unit_times) {
    extern __shared__ u32 cursor[];
    const int b = blockIdx.x;
    if (b >= B) return;
    const u32 begin = offsets[(size_t)b * T], end = offsets[(size_t)(b + 1) * T];
    for (int i = threadIdx.x; i <= U; i += blockDim.x) cursor[i] = 0;
    __syncthreads();
    for (u32 e = begin + threadIdx.x; e < end; e += blockDim.x) atomicAdd(&cursor[ids[e]], 1u);
    __syncthreads();
    if (threadIdx.x == 0) cursor[U] = serial_exclusive_prefix(cursor, U);
    __syncthreads();
    for (int i = threadIdx.x; i < U; i += blockDim.x)
        unit_offsets[(size_t)b * U + i] = begin + cursor[i];
    if (b == B - 1 && threadIdx.x == 0) unit_offsets[(size_t)B * U] = end;
    __syncthreads();
    if (threadIdx.x >= 32) return;
    const int lane = threadIdx.x;
    const u32* steps = offsets + (size_t)b * T;
    for (u32 base = begin; base < end; base += 32) {
        const u32 e = base + lane;
        const bool valid = e < end;
        const u32 unit = valid ? ids[e] : 0xffffffffu;
        int t = 0;
        if (valid) {  // the step whose event range holds e
            int lo = 0, hi = T;
            while (hi - lo > 1) {
                const int mid = (lo + hi) / 2;
                if (steps[mid] <= e) lo = mid; else hi = mid;
            }
            t = lo;
        }
        const u32 at = warp_claim_in_order(cursor, unit, valid);
        if (valid) unit_times[begin + at] = (u32)t;
    }
}
