// lif_fwd.cu: the LIF layer forward pass over all time steps in one launch.
//
// Block = one sample b and blockDim.x consecutive neurons (a multiple of 32); thread = neuron j.
// Per step: the input current (sum of the weight rows of the step's input spikes, in f64, in the
// input's event order), the membrane update v = (beta v + I) - s in f64, the spike, then the outputs:
// spike bits by row (b, t) (one ballot word per warp), spike bits by unit (b, j) over time, spike
// counts, and the tape (V - theta for dense; for sparse the in-band entries of the warp's segment).

struct EventsInput {  // CSR by (b, t): uploaded input with counts
    const u32* offsets;
    const u32* ids;
};

struct BitsInput {  // bit rows by (b, t): hidden spikes
    const u32* rows;
    int words;
};

__device__ __forceinline__ double input_current(const EventsInput& in, int row, const float* W,
                                                int N, int j) {
    u32 begin = in.offsets[row], end = in.offsets[row + 1];
    double acc = 0.0;
    for (u32 k = begin; k < end; ++k) acc = acc + (double)W[(size_t)in.ids[k] * N + j];
    return acc;
}

__device__ __forceinline__ double input_current(const BitsInput& in, int row, const float* W,
                                                int N, int j) {
    double acc = 0.0;
    const u32* words = in.rows + (size_t)row * in.words;
    for (int w = 0; w < in.words; ++w) {
        u32 m = words[w];
        while (m) {
            int bit = __ffs(m) - 1;
            m &= m - 1;
            acc = acc + (double)W[(size_t)(w * 32 + bit) * N + j];
        }
    }
    return acc;
}

// keep: 0 nothing, 1 dense (V - theta of every step), 2 sparse (in-band entries).
// stats: [0] spikes, [1] active entries, [2] largest segment count.
template <class Input>
__device__ void lif_forward(const Input in, const float* __restrict__ W, int B, int T, int N,
                            double beta, int keep, double band, u32* __restrict__ rows_out,
                            u32* __restrict__ cols_out, float* __restrict__ counts,
                            u32* __restrict__ stats, float* __restrict__ vmt_out,
                            u16* __restrict__ act_idx, float* __restrict__ act_val,
                            u32* __restrict__ seg_count, int cap) {
    const int blocks_per_sample = (N + blockDim.x - 1) / blockDim.x;
    const int b = blockIdx.x / blocks_per_sample;
    const int j = (blockIdx.x % blocks_per_sample) * blockDim.x + threadIdx.x;
    const int lane = threadIdx.x & 31;
    const int tile = j >> 5;
    const int words_n = words_for(N);
    const int words_t = words_for(T);
    if (b >= B || tile >= words_n) return;  // whole warps only
    const bool live = j < N;
    const size_t seg = (size_t)b * words_n + tile;

    double v = 0.0, s = 0.0;
    float count = 0.0f;
    u32 col_word = 0, seg_n = 0, spikes = 0;
    if (lane == 0) rows_out[(size_t)b * T * words_n + tile] = 0u;
    if (keep == 1 && live) vmt_out[(size_t)b * T * N + j] = -1.0f;
    for (int t = 0; t < T - 1; ++t) {
        const double current = live ? input_current(in, b * T + t, W, N, j) : 0.0;
        v = (beta * v + current) - s;
        const bool fire = live && v > 1.0;
        s = fire ? 1.0 : 0.0;
        const int step = t + 1;
        const u32 fired = __ballot_sync(FULL_MASK, fire);
        if (lane == 0) rows_out[((size_t)b * T + step) * words_n + tile] = fired;
        if (fire) {
            col_word |= 1u << (step & 31);
            count += 1.0f;
            ++spikes;
        } else if (live && isnan(v)) {
            count = __int_as_float(0x7fc00000);  // a NaN membrane carries NaN to the loss
        }
        if ((step & 31) == 31 || step == T - 1) {
            if (live) cols_out[((size_t)b * N + j) * words_t + (step >> 5)] = col_word;
            col_word = 0;
        }
        if (keep == 1) {
            if (live) vmt_out[((size_t)b * T + step) * N + j] = (float)(v - 1.0);
        } else if (keep == 2) {
            const double offset = v - 1.0;
            const bool active = live && fabs(offset) < band;
            const u32 ballot = __ballot_sync(FULL_MASK, active);
            if (active) {
                const u32 pos = seg_n + __popc(ballot & ((1u << lane) - 1u));
                if (pos < (u32)cap) {
                    act_idx[seg * cap + pos] = (u16)((step << 5) | lane);
                    act_val[seg * cap + pos] = (float)offset;
                }
            }
            seg_n += __popc(ballot);
        }
    }
    if (T == 1 && live) cols_out[(size_t)b * N + j] = 0u;
    if (live) counts[(size_t)b * N + j] = count;
    spikes = warp_sum_u32(spikes);
    if (lane == 0) {
        atomicAdd(&stats[0], spikes);
        if (keep == 2) {
            seg_count[seg] = seg_n;
            atomicAdd(&stats[1], seg_n);
            atomicMax(&stats[2], seg_n);
        }
    }
}

extern "C" __global__ void lif_fwd_events_f32(
    const u32* offsets, const u32* ids, const float* W, int B, int T, int N, double beta, int keep,
    double band, u32* rows_out, u32* cols_out, float* counts, u32* stats, float* vmt_out,
    u16* act_idx, float* act_val, u32* seg_count, int cap) {
    EventsInput in{offsets, ids};
    lif_forward(in, W, B, T, N, beta, keep, band, rows_out, cols_out, counts, stats, vmt_out,
                act_idx, act_val, seg_count, cap);
}

extern "C" __global__ void lif_fwd_bits_f32(
    const u32* rows, int words_in, const float* W, int B, int T, int N, double beta, int keep,
    double band, u32* rows_out, u32* cols_out, float* counts, u32* stats, float* vmt_out,
    u16* act_idx, float* act_val, u32* seg_count, int cap) {
    BitsInput in{rows, words_in};
    lif_forward(in, W, B, T, N, beta, keep, band, rows_out, cols_out, counts, stats, vmt_out,
                act_idx, act_val, seg_count, cap);
}
