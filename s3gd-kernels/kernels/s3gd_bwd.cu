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

#define STAGE 512

// The block's sample group [b0, b1) of one segment tile: per-sample entry counts and their prefix
// (group_start[q] .. group_start[q + 1] are sample b0 + q's), in shared memory.
__device__ u32 count_group(const u32* seg_count, int cap, int words_n, int tile, int b0, int b1,
                           u32* group_start) {
    const int samples = b1 - b0;
    for (int q = threadIdx.x; q < samples; q += blockDim.x)
        group_start[q + 1] = min(seg_count[(size_t)(b0 + q) * words_n + tile], (u32)cap);
    __syncthreads();
    if (threadIdx.x == 0) {
        group_start[0] = 0;
        for (int q = 0; q < samples; ++q) group_start[q + 1] += group_start[q];
    }
    __syncthreads();
    return group_start[samples];
}

// Stages the group's entries [e0, e0 + count) as (t, lane, d, sample offset q).
__device__ void stage_group(const u16* act_idx, const float* act_val, const float* ds, int cap,
                            int words_n, int tile, int b0, int samples, const u32* group_start,
                            u32 e0, u32 count, int* st_t, int* st_lane, float* st_d, int* st_q) {
    for (u32 k = threadIdx.x; k < count; k += blockDim.x) {
        const u32 e = e0 + k;
        int lo = 0, hi = samples;  // the sample whose range holds e
        while (hi - lo > 1) {
            const int mid = (lo + hi) / 2;
            if (group_start[mid] <= e) lo = mid; else hi = mid;
        }
        const size_t slot = ((size_t)(b0 + lo) * words_n + tile) * cap + (e - group_start[lo]);
        const u32 entry = act_idx[slot];
        st_t[k] = entry >> 5;
        st_lane[k] = entry & 31;
        st_d[k] = ds[slot] * surrogate_of_offset(act_val[slot]);
        st_q[k] = lo;
    }
}

// Where a thread's input trace e[b, t, i] comes from. `begin` moves to input i of sample b and
// says whether its trace can be non-zero there; `at` returns the trace at time t, for t
// non-decreasing within a sample (a segment's entries come sorted by t).

// Hidden spikes: the unit-major bit words of (b, i), kept in the thread's column of shared memory;
// the trace is carried forward, e <- beta^dt e plus the spikes in between.
struct BitsTrace {
    const u32* cols;
    int NI, words_t;
    const float* pw;
    u32* my_words;  // word w at my_words[w * blockDim.x]
    float e;
    int time;
    __device__ bool begin(int b, int i) {
        bool any = false;
        for (int w = 0; w < words_t; ++w) {
            const u32 word = cols[((size_t)b * NI + i) * words_t + w];
            my_words[w * blockDim.x] = word;
            any |= word != 0u;
        }
        e = 0.0f;
        time = 0;
        return any;
    }
    __device__ float at(int t) {
        if (t > time) {
            e *= pw[t - time];
            for (int w = time >> 5; w <= (t - 1) >> 5; ++w) {
                u32 bits = my_words[w * blockDim.x];
                const int lo = max(time - w * 32, 0), hi = min(t - w * 32, 32);
                bits &= (hi >= 32 ? FULL_MASK : ((1u << hi) - 1u)) & ~((1u << lo) - 1u);
                while (bits) {
                    const int spike = w * 32 + __ffs(bits) - 1;
                    bits &= bits - 1;
                    e += pw[t - 1 - spike];
                }
            }
            time = t;
        }
        return e;
    }
};

// The uploaded input: event times by unit, in increasing order (repeats for counts).
struct EventsTrace {
    const u32* unit_offsets;
    const u32* unit_times;
    int NI, T;
    const float* pw;
    u32 next, end;
    int next_time;
    float e;
    int time;
    __device__ bool begin(int b, int i) {
        next = unit_offsets[(size_t)b * NI + i];
        end = unit_offsets[(size_t)b * NI + i + 1];
        next_time = next < end ? (int)unit_times[next] : T;
        e = 0.0f;
        time = 0;
        return next < end;
    }
    __device__ float at(int t) {
        if (t > time) {
            e *= pw[t - time];
            while (next_time < t) {
                e += pw[t - 1 - next_time];
                ++next;
                next_time = next < end ? (int)unit_times[next] : T;
            }
            time = t;
        }
        return e;
    }
};

// Float inputs: the trace precomputed by input_trace_f32.
struct DenseTrace {
    const float* trace;
    int NI, T;
    size_t row;
    int unit;
    __device__ bool begin(int b, int i) {
        row = (size_t)b * T;
        unit = i;
        return true;
    }
    __device__ float at(int t) { return trace[(row + t) * NI + unit]; }
};

// Grid: x = 32-column segment tile, y = sample group, z = chunk of inputs; thread = input i.
// Shared memory: 32 * blockDim.x floats (accumulators), STAGE staged entries (4 words each), the
// group's samples + 1 counts, then what the trace source needs (see the launch code).
template <class Trace>
__device__ void weight_grad(Trace trace, const u16* act_idx, const float* act_val,
                            const u32* seg_count, int cap, const float* ds, int B, int NI, int N,
                            int groups, float* shared, float* partial) {
    const int words_n = words_for(N);
    float* acc = shared;
    float* st_d = acc + 32 * blockDim.x;
    int* st_t = (int*)(st_d + STAGE);
    int* st_lane = st_t + STAGE;
    int* st_q = st_lane + STAGE;
    u32* group_start = (u32*)(st_q + STAGE);
    const int tile = blockIdx.x, group = blockIdx.y;
    const int i = blockIdx.z * blockDim.x + threadIdx.x;
    for (int k = 0; k < 32; ++k) acc[k * blockDim.x + threadIdx.x] = 0.0f;
    const int b0 = (int)((long long)group * B / groups);
    const int b1 = (int)((long long)(group + 1) * B / groups);
    const u32 total = count_group(seg_count, cap, words_n, tile, b0, b1, group_start);
    int current = -1;  // the sample the trace is on
    bool live = false;
    for (u32 e0 = 0; e0 < total; e0 += STAGE) {
        const u32 count = min((u32)STAGE, total - e0);
        __syncthreads();
        stage_group(act_idx, act_val, ds, cap, words_n, tile, b0, b1 - b0, group_start, e0, count,
                    st_t, st_lane, st_d, st_q);
        __syncthreads();
        if (i >= NI) continue;
        for (u32 k = 0; k < count; ++k) {
            const int q = st_q[k];
            if (q != current) {
                current = q;
                live = trace.begin(b0 + q, i);
            }
            if (!live) continue;
            acc[st_lane[k] * blockDim.x + threadIdx.x] += st_d[k] * trace.at(st_t[k]);
        }
    }
    if (i >= NI) return;
    for (int lane = 0; lane < 32; ++lane) {
        const int j = tile * 32 + lane;
        if (j < N) partial[((size_t)group * NI + i) * N + j] = acc[lane * blockDim.x + threadIdx.x];
    }
}

// The offset, in floats, where the trace source's shared memory starts.
__device__ __forceinline__ float* trace_shared(float* shared, int samples_per_group) {
    return shared + 32 * blockDim.x + 4 * STAGE + samples_per_group + 1;
}

// Hidden spikes (bits by unit). Extra shared memory: T floats (powers of beta) and
// words(T) * blockDim.x words (each thread's bits).
extern "C" __global__ void s3gd_bwd_weights_bits_f32(
    const u32* in_cols, const u16* act_idx, const float* act_val, const u32* seg_count, int cap,
    const float* ds, int B, int T, int NI, int N, int groups, int samples_per_group, double beta,
    float* partial) {
    extern __shared__ float shared[];
    float* pw = trace_shared(shared, samples_per_group);
    load_pow_table(pw, T, beta);
    BitsTrace trace{in_cols, NI, words_for(T), pw, (u32*)(pw + T) + threadIdx.x, 0.0f, 0};
    weight_grad(trace, act_idx, act_val, seg_count, cap, ds, B, NI, N, groups, shared, partial);
}

// The uploaded input (event times by unit). Extra shared memory: T floats (powers of beta).
extern "C" __global__ void s3gd_bwd_weights_events_f32(
    const u32* unit_offsets, const u32* unit_times, const u16* act_idx, const float* act_val,
    const u32* seg_count, int cap, const float* ds, int B, int T, int NI, int N, int groups,
    int samples_per_group, double beta, float* partial) {
    extern __shared__ float shared[];
    float* pw = trace_shared(shared, samples_per_group);
    load_pow_table(pw, T, beta);
    EventsTrace trace{unit_offsets, unit_times, NI, T, pw, 0u, 0u, T, 0.0f, 0};
    weight_grad(trace, act_idx, act_val, seg_count, cap, ds, B, NI, N, groups, shared, partial);
}

// Float inputs x (b, t, i): the trace e[b, t, i] = beta e[b, t-1, i] + x[b, t-1, i], e[b, 0] = 0,
// for the sparse backward of a float-input layer. Thread per (b, i).
extern "C" __global__ void input_trace_f32(const float* __restrict__ x, int B, int T, int NI,
                                           float beta, float* __restrict__ trace) {
    const size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (size_t)B * NI) return;
    const size_t b = idx / NI, i = idx % NI;
    const float* mine = x + b * T * NI + i;
    float* out = trace + b * T * NI + i;
    float e = 0.0f;
    out[0] = 0.0f;
    // Sixteen steps loaded ahead of the recursion (few threads, long rows: latency-bound otherwise).
    for (int t0 = 1; t0 < T; t0 += 16) {
        float ahead[16];
#pragma unroll
        for (int k = 0; k < 16; ++k) ahead[k] = t0 + k < T ? mine[(size_t)(t0 + k - 1) * NI] : 0.0f;
#pragma unroll
        for (int k = 0; k < 16; ++k) {
            if (t0 + k >= T) break;
            e = beta * e + ahead[k];
            out[(size_t)(t0 + k) * NI] = e;
        }
    }
}

// Float inputs, from the trace above. No extra shared memory.
extern "C" __global__ void s3gd_bwd_weights_trace_f32(
    const float* trace, const u16* act_idx, const float* act_val, const u32* seg_count, int cap,
    const float* ds, int B, int T, int NI, int N, int groups, float* partial) {
    extern __shared__ float shared[];
    DenseTrace source{trace, NI, T, 0, 0};
    weight_grad(source, act_idx, act_val, seg_count, cap, ds, B, NI, N, groups, shared, partial);
}

// Tape segments (32 neurons each) and inputs of a block of float_weight_grad_tiles_f32.
#define FLOAT_TILE_SEGMENTS 4
#define FLOAT_TILE_I 256
// Entries the tiles kernel may read past a run's end (unused): the runs' allocation has as many
// slots past its last segment (FLOAT_RUNS_PAD in backend.rs).
#define FLOAT_RUNS_PAD 4
// Entries of a warp's quarter a chunk the tiles kernel stages in shared memory with the chunk's
// trace rows (FLOAT_TILE_STAGED_ENTRIES in backend.rs); any further ones it reads from the list.
#define FLOAT_TILE_STAGED_ENTRIES 64

// The float-input tiles' entry runs: each tape segment's entries (32 neurons of one sample, in
// tape order, so by step) re-ordered by (chunk of chunk_steps steps, neuron), each neuron's entries
// of a chunk in step order, placed from the segment's first slot; an entry as (byte offset of its
// step's row in a staged chunk of the tiles kernel, bits of d = dS sigma'(V)). starts[(bins + 1) *
// seg + chunk * 32 + neuron] is where that run begins (relative to the segment's first slot),
// starts[(bins + 1) * seg + bins] the segment's count; bins = chunks a sample x 32. A warp per
// segment, its counts by bin in shared memory (bins words a warp): a counting pass, the prefix
// (warp_exclusive_prefix), then a placing pass, each over groups of 32 entries whose equal bins
// rank by lane (warp_claim_in_order: stable).
extern "C" __global__ void neuron_runs_f32(const u16* __restrict__ act_idx,
                                           const float* __restrict__ act_val,
                                           const u32* __restrict__ seg_count, int cap,
                                           const float* __restrict__ ds, int segments,
                                           int chunk_steps, int bins, uint2* __restrict__ runs,
                                           u32* __restrict__ starts) {
    extern __shared__ u32 bin_counts[];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const size_t seg = (size_t)blockIdx.x * (blockDim.x >> 5) + warp;
    if (seg >= (size_t)segments) return;
    u32* counts = bin_counts + (size_t)warp * bins;
    for (int k = lane; k < bins; k += 32) counts[k] = 0u;
    __syncwarp();
    const int count = (int)min(seg_count[seg], (u32)cap);
    const size_t first = seg * cap;
    auto bin_of = [&](u32 entry) { return (entry >> 5) / chunk_steps * 32u + (entry & 31u); };
    // Counting is claiming places from zero; the places themselves are not needed yet.
    for (int k0 = 0; k0 < count; k0 += 32) {
        const bool listed = k0 + lane < count;
        const u32 entry = listed ? act_idx[first + k0 + lane] : 0u;
        warp_claim_in_order(counts, bin_of(entry), listed);
    }
    __syncwarp();
    warp_exclusive_prefix(counts, bins);
    __syncwarp();
    u32* out = starts + (size_t)(bins + 1) * seg;
    for (int k = lane; k < bins; k += 32) out[k] = counts[k];
    if (lane == 0) out[bins] = (u32)count;
    for (int k0 = 0; k0 < count; k0 += 32) {
        const int at = k0 + lane;
        const bool listed = at < count;
        const u32 entry = listed ? act_idx[first + at] : 0u;
        const u32 to = warp_claim_in_order(counts, bin_of(entry), listed);
        if (listed) {
            const u32 step_in_chunk = (entry >> 5) % (u32)chunk_steps;
            const float d = ds[first + at] * surrogate_of_offset(act_val[first + at]);
            runs[first + to] = make_uint2(step_in_chunk * (FLOAT_TILE_I * 4), __float_as_uint(d));
        }
    }
}

// A 16-byte copy from global to shared memory that does not wait for the data (cp.async, sm_80 and
// later; a plain copy before), and the fences that commit and wait for such copies.
__device__ __forceinline__ void copy16_async(void* to_shared, const void* from_global) {
#if __CUDA_ARCH__ >= 800
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(
                     (u32)__cvta_generic_to_shared(to_shared)),
                 "l"(from_global));
#else
    *(float4*)to_shared = *(const float4*)from_global;
#endif
}
// An 8-byte copy from global to shared memory that does not wait for the data (through L1).
__device__ __forceinline__ void copy8_async(void* to_shared, const void* from_global) {
#if __CUDA_ARCH__ >= 800
    asm volatile("cp.async.ca.shared.global [%0], [%1], 8;\n" ::"r"(
                     (u32)__cvta_generic_to_shared(to_shared)),
                 "l"(from_global));
#else
    *(uint2*)to_shared = *(const uint2*)from_global;
#endif
}
__device__ __forceinline__ void copies_commit() {
#if __CUDA_ARCH__ >= 800
    asm volatile("cp.async.commit_group;\n" ::);
#endif
}
// Waits until at most one committed group of copies is still in flight.
__device__ __forceinline__ void copies_wait_all_but_one() {
#if __CUDA_ARCH__ >= 800
    asm volatile("cp.async.wait_group 1;\n" ::);
#endif
}

// Tensor copies (sm_90 and later): one instruction by one thread moves a whole box of a tensor
// from global to shared memory and completes on an mbarrier that counts the bytes still to come,
// instead of 16 bytes a thread and a wait for the thread's copies.
__device__ __forceinline__ u32 shared_address(const void* p) {
    return (u32)__cvta_generic_to_shared(p);
}
__device__ __forceinline__ void bulk_barrier_init(u64* barrier) {
#if __CUDA_ARCH__ >= 900
    asm volatile("mbarrier.init.shared::cta.b64 [%0], 1;\n" ::"r"(shared_address(barrier)));
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
#endif
}
// The one arrival of the barrier's phase, with the bytes its copies will bring.
__device__ __forceinline__ void bulk_barrier_expect(u64* barrier, u32 bytes) {
#if __CUDA_ARCH__ >= 900
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(
                     shared_address(barrier)),
                 "r"(bytes)
                 : "memory");
#endif
}
// A tensor map (CUtensorMap) as the driver encodes it on the host; passed by value as a
// __grid_constant__ parameter, whose address the copies take.
struct __align__(64) TensorMap {
    u64 opaque[16];
};
// Copies the box of `map` at (x, y) (x the contiguous dimension) into shared memory; elements past
// the tensor's edge arrive as zeros, and the whole box's bytes count on the barrier.
__device__ __forceinline__ void tensor_copy_2d(void* to_shared, const TensorMap* map, int x, int y,
                                               u64* barrier) {
#if __CUDA_ARCH__ >= 900
    asm volatile(
        "cp.async.bulk.tensor.2d.shared::cluster.global.tile.mbarrier::complete_tx::bytes [%0], "
        "[%1, {%2, %3}], [%4];\n" ::"r"(shared_address(to_shared)),
        "l"((u64)map), "r"(x), "r"(y), "r"(shared_address(barrier))
        : "memory");
#endif
}
// Orders this thread's earlier shared-memory accesses before its later tensor copies.
__device__ __forceinline__ void bulk_fence() {
#if __CUDA_ARCH__ >= 900
    asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
#endif
}
// Waits until the barrier's phase of parity `parity` has completed.
__device__ __forceinline__ void bulk_barrier_wait(u64* barrier, u32 parity) {
#if __CUDA_ARCH__ >= 900
    u32 done = 0;
    do {
        asm volatile(
            "{\n\t.reg .pred p;\n\tmbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n"
            "\tselp.u32 %0, 1, 0, p;\n\t}\n"
            : "=r"(done)
            : "r"(shared_address(barrier)), "r"(parity)
            : "memory");
    } while (!done);
#endif
}

// dW of a float-input layer from its sparse tape and the input trace, for layers so active that
// nearly every trace row meets an entry of a few neighbouring neurons (the Linear + LIF harness:
// ~5% of entries): dW[i, j] = sum over active (b, t, j) of e[b, t, i] d[b, t, j], with a tile of
// dW in registers instead of one GEMM over the scattered d.
// Block: FLOAT_TILE_SEGMENTS tape segments (32 neurons each) x FLOAT_TILE_I inputs, 512 threads;
// warp: a quarter (8 neurons) of one segment; lane: inputs 4 lane .. 4 lane + 3 and 128 + 4 lane ..
// 128 + 4 lane + 3 of the block's 256, so a thread holds 8 x 8 sums and each of a warp's two
// 16-byte loads of a trace row reads 512 contiguous bytes (four shared-memory wavefronts; with 8
// consecutive inputs a lane, lanes 32 bytes apart took eight). The trace rows of the block's
// inputs are staged chunk_steps steps at a time, two chunks in flight. On sm_90 (with a tensor map
// of the trace: trace_map_set) a chunk's rows come by one tensor copy, completed on the buffer's
// mbarrier, which every thread waits on; the last warp done with a buffer copies the chunk two on
// into it, so no warp waits for the others (v111-v112). Else by cp.async of 16 bytes a thread,
// with a block barrier before and after each chunk. In a chunk, a warp walks its quarter's
// entries as neuron_runs_f32 left them: neuron by
// neuron (so that each sum's register is known at compile time), each neuron's run in step
// order, every lane reading the same entry (one load for the warp) two entries ahead of its
// adds, and each entry's row by the byte offset the list holds. Each sum is one thread's, in
// sample and step order: the same bits every run. Its multiply-adds are fused (__fmaf_rn, one
// rounding), as in the tiled dS_in kernel: held to the f64 path, not to the CPU's bits.
// Dynamic shared memory: two chunk buffers (2 x chunk_steps x FLOAT_TILE_I floats), then two
// buffers of FLOAT_TILE_STAGED_ENTRIES entries a warp and FLOAT_RUNS_PAD entries of padding, then
// the two buffers' barriers (8 bytes each) and counts of warps done (4 bytes each).

// sums[0 .. 8) += dd * the lane's 8 inputs (lo, hi) of one entry's trace row, each fused.
__device__ __forceinline__ void add_trace_row(float (&sums)[8], float dd, float4 lo, float4 hi) {
    sums[0] = __fmaf_rn(dd, lo.x, sums[0]);
    sums[1] = __fmaf_rn(dd, lo.y, sums[1]);
    sums[2] = __fmaf_rn(dd, lo.z, sums[2]);
    sums[3] = __fmaf_rn(dd, lo.w, sums[3]);
    sums[4] = __fmaf_rn(dd, hi.x, sums[4]);
    sums[5] = __fmaf_rn(dd, hi.y, sums[5]);
    sums[6] = __fmaf_rn(dd, hi.z, sums[6]);
    sums[7] = __fmaf_rn(dd, hi.w, sums[7]);
}

// A warp's adds of one chunk: its quarter's runs (bounds), neuron by neuron, each entry's trace row
// from the staged chunk (rows: the lane's first float4 of the chunk's first row). Entry k is read
// from the staged entries (staged_list[k]: the first FLOAT_TILE_STAGED_ENTRIES), or from the list
// past them; ALL_STAGED where the quarter has no more entries than are staged, so that no load
// chooses (its loads past a run's end read the next warp's buffer or the padding after the last).
// The list has FLOAT_RUNS_PAD slots past its last segment, so its loads past a run's end (unused)
// stay in the allocation too. e0, e1: entries k and k + 1, loaded ahead.
template <bool ALL_STAGED>
__device__ __forceinline__ void add_runs(float (&acc)[8][8], const int (&bound)[9],
                                         const uint2* staged_list, const uint2* list,
                                         const char* rows) {
    const int staged_end = bound[0] + FLOAT_TILE_STAGED_ENTRIES;
    auto entry = [&](int k) {
        return ALL_STAGED || k < staged_end ? staged_list[k] : list[k];
    };
    int k = bound[0];
    if (k >= bound[8]) return;
    uint2 e0 = entry(k), e1 = entry(k + 1);
#pragma unroll
    for (int q = 0; q < 8; ++q) {
        const int end = bound[q + 1];
        while (k + 1 < end) {
            const uint2 n0 = entry(k + 2), n1 = entry(k + 3);
            const float4 a0 = *(const float4*)(rows + e0.x);
            const float4 a1 = *(const float4*)(rows + e0.x + 512);
            const float4 b0 = *(const float4*)(rows + e1.x);
            const float4 b1 = *(const float4*)(rows + e1.x + 512);
            add_trace_row(acc[q], __uint_as_float(e0.y), a0, a1);
            add_trace_row(acc[q], __uint_as_float(e1.y), b0, b1);
            e0 = n0;
            e1 = n1;
            k += 2;
        }
        if (k < end) {
            const uint2 n1 = entry(k + 2);
            const float4 a0 = *(const float4*)(rows + e0.x);
            const float4 a1 = *(const float4*)(rows + e0.x + 512);
            add_trace_row(acc[q], __uint_as_float(e0.y), a0, a1);
            e0 = e1;
            e1 = n1;
            k += 1;
        }
    }
}

extern "C" __global__ void __launch_bounds__(512, 1) float_weight_grad_tiles_f32(
    const float* __restrict__ trace, const uint2* __restrict__ runs,
    const u32* __restrict__ run_starts, int cap, int B, int T, int NI, int N, int chunk_steps,
    float* __restrict__ dw, const __grid_constant__ TensorMap trace_map, int trace_map_set) {
    extern __shared__ __align__(128) float4 staged[];
    constexpr int ROW4 = FLOAT_TILE_I / 4;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int quarter = warp & 3, seg_in_block = warp >> 2;
    const int words_n = words_for(N);
    const int g = blockIdx.x * FLOAT_TILE_SEGMENTS + seg_in_block;
    // Warps past the layer's last segment add nothing but take part in every barrier.
    const bool has_segment = g < words_n;
    const int i0 = blockIdx.y * FLOAT_TILE_I;
    const bool aligned_rows = (NI & 3) == 0;
    const int chunks_per_sample = (T + chunk_steps - 1) / chunk_steps;
    const int bins = chunks_per_sample * 32;
    const int chunks = B * chunks_per_sample;
    // The staged entries: two buffers (chunks in turn) of FLOAT_TILE_STAGED_ENTRIES a warp.
    uint2* staged_entries = (uint2*)(staged + 2 * chunk_steps * ROW4);
    auto entry_buffer = [&](int c) {
        return staged_entries + ((c & 1) * (blockDim.x >> 5) + warp) * FLOAT_TILE_STAGED_ENTRIES;
    };
    auto list_of = [&](int c) {
        return runs + ((size_t)(c / chunks_per_sample) * words_n + g) * cap;
    };
    // With tensor copies, after the entry buffers and their padding: a barrier a chunk buffer
    // (full), and a count a buffer of the warps done with it.
#if __CUDA_ARCH__ >= 900
    const bool bulk_rows = trace_map_set != 0;
#else
    const bool bulk_rows = false;
#endif
    const int warps = blockDim.x >> 5;
    u64* row_barriers =
        (u64*)(staged_entries + 2 * warps * FLOAT_TILE_STAGED_ENTRIES + FLOAT_RUNS_PAD);
    u32* warps_done = (u32*)(row_barriers + 2);
    // Chunk c's trace rows in one copy, by one thread: the box of chunk_steps rows x FLOAT_TILE_I
    // inputs, rows past the sample's end included (unused) and inputs past NI as zeros.
    auto load_rows = [&](int c) {
        const int b = c / chunks_per_sample, t0 = (c % chunks_per_sample) * chunk_steps;
        u64* barrier = row_barriers + (c & 1);
        bulk_fence();
        bulk_barrier_expect(barrier, (u32)chunk_steps * FLOAT_TILE_I * 4u);
        tensor_copy_2d(staged + (c & 1) * chunk_steps * ROW4, &trace_map, i0, b * T + t0,
                       barrier);
    };
    if (bulk_rows && threadIdx.x == 0) {
        bulk_barrier_init(row_barriers);
        bulk_barrier_init(row_barriers + 1);
        warps_done[0] = 0u;
        warps_done[1] = 0u;
    }
    __syncthreads();
    if (bulk_rows && threadIdx.x == 0) {
        load_rows(0);
        if (chunks > 1) load_rows(1);
    }
    // Chunk c's trace rows, and the first entries of each warp's quarter (bounds: run_bound(c)).
    auto stage = [&](int c, u32 bounds) {
        const int b = c / chunks_per_sample, t0 = (c % chunks_per_sample) * chunk_steps;
        const int steps = min(chunk_steps, T - t0);
        const int first = (int)__shfl_sync(FULL_MASK, bounds, 0);
        const int listed = min((int)__shfl_sync(FULL_MASK, bounds, 8) - first,
                               FLOAT_TILE_STAGED_ENTRIES);
        const uint2* from_list = list_of(c) + first;
        uint2* to_entries = entry_buffer(c);
        for (int e = lane; e < listed; e += 32) copy8_async(to_entries + e, from_list + e);
        float4* to = staged + (c & 1) * chunk_steps * ROW4;
        if (bulk_rows) {
            copies_commit();
            return;
        }
        for (int q = threadIdx.x; q < steps * ROW4; q += blockDim.x) {
            const int r = q / ROW4, i = i0 + 4 * (q % ROW4);
            const float* from = trace + ((size_t)b * T + t0 + r) * NI + i;
            if (aligned_rows && i + 3 < NI) {
                copy16_async(to + q, from);
            } else {
                to[q] = make_float4(i < NI ? from[0] : 0.0f, i + 1 < NI ? from[1] : 0.0f,
                                    i + 2 < NI ? from[2] : 0.0f, i + 3 < NI ? from[3] : 0.0f);
            }
        }
        copies_commit();
    };
    // Lane k <= 8 of the result: where neuron 8 quarter + k's run of chunk c begins (k = 8: where
    // the quarter's entries of the chunk end).
    auto run_bound = [&](int c) -> u32 {
        if (!has_segment || lane > 8) return 0u;
        const int b = c / chunks_per_sample, in_sample = c % chunks_per_sample;
        const size_t seg = (size_t)b * words_n + g;
        return run_starts[(size_t)(bins + 1) * seg + in_sample * 32 + quarter * 8 + lane];
    };
    float acc[8][8];
#pragma unroll
    for (int q = 0; q < 8; ++q)
#pragma unroll
        for (int c = 0; c < 8; ++c) acc[q][c] = 0.0f;
    // Bounds two chunks ahead: a chunk's are needed where it is staged, one chunk before its use.
    u32 bound_here = run_bound(0);
    u32 bound_next = chunks > 1 ? run_bound(1) : 0u;
    stage(0, bound_here);
    for (int c = 0; c < chunks; ++c) {
        if (c + 1 < chunks) stage(c + 1, bound_next);
        else copies_commit();
        const u32 bound_after = c + 2 < chunks ? run_bound(c + 2) : 0u;
        copies_wait_all_but_one();
        // Each warp stages its own entries, so with the rows on the barrier a warp need not wait
        // for the others.
        if (bulk_rows) {
            bulk_barrier_wait(row_barriers + (c & 1), (u32)(c >> 1) & 1u);
            __syncwarp();
        } else {
            __syncthreads();
        }
        const char* rows = (const char*)(staged + (c & 1) * chunk_steps * ROW4 + lane);
        const uint2* list = list_of(c);
        int bound[9];
#pragma unroll
        for (int q = 0; q < 9; ++q) bound[q] = (int)__shfl_sync(FULL_MASK, bound_here, q);
        bound_here = bound_next;
        bound_next = bound_after;
        const uint2* staged_list = entry_buffer(c) - bound[0];
        if (bound[8] - bound[0] <= FLOAT_TILE_STAGED_ENTRIES) {
            add_runs<true>(acc, bound, staged_list, list, rows);
        } else {
            add_runs<false>(acc, bound, staged_list, list, rows);
        }
        if (bulk_rows) {
            // The last warp done with the buffer loads chunk c + 2 into it: the others go on to
            // chunk c + 1 without waiting.
            __syncwarp();
            if (lane == 0) {
                __threadfence_block();
                const u32 done_before = atomicAdd(warps_done + (c & 1), 1u);
                if (done_before == (u32)((c >> 1) + 1) * warps - 1u && c + 2 < chunks) {
                    __threadfence_block();
                    load_rows(c + 2);
                }
            }
        } else {
            __syncthreads();  // this chunk's buffer is free for chunk c + 2
        }
    }
    if (!has_segment) return;
    const int j0 = g * 32 + quarter * 8;
#pragma unroll
    for (int c = 0; c < 8; ++c) {
        const int i = i0 + (c < 4 ? 4 * lane + c : 128 + 4 * lane + c - 4);
        if (i >= NI) continue;
        float* out = dw + (size_t)i * N + j0;
        if ((N & 3) == 0 && j0 + 7 < N) {
            ((float4*)out)[0] = make_float4(acc[0][c], acc[1][c], acc[2][c], acc[3][c]);
            ((float4*)out)[1] = make_float4(acc[4][c], acc[5][c], acc[6][c], acc[7][c]);
        } else {
#pragma unroll
            for (int q = 0; q < 8; ++q)
                if (j0 + q < N) out[q] = acc[q][c];
        }
    }
}

// Decodes tape slot `slot` of a sparse tape with `units` neurons (segments of 32, `cap` slots
// each): false for a slot past the tape or past its segment's count, else its sample, step and
// neuron.
__device__ __forceinline__ bool decode_slot(size_t slot, const u16* idx, const u32* count, int cap,
                                            int B, int units, int* b, int* t, int* unit) {
    const int words_u = words_for(units);
    if (slot >= (size_t)B * words_u * cap) return false;
    const size_t seg = slot / cap;
    if (slot % cap >= min(count[seg], (u32)cap)) return false;
    const u32 entry = idx[slot];
    *b = (int)(seg / words_u);
    *t = entry >> 5;
    *unit = (int)(seg % words_u) * 32 + (entry & 31);
    return true;
}

// d = dS sigma'(V) of every active entry, scattered into a zeroed dense `batch x steps x N` array
// (for layers so active that one GEMM beats the per-entry kernel), or into its transpose
// `N x (batch x steps)` where `transposed`. Thread per tape slot.
extern "C" __global__ void scatter_active_grad_f32(const u16* act_idx, const float* act_val,
                                                  const u32* seg_count, int cap, const float* ds,
                                                  int B, int T, int N, int transposed,
                                                  float* dense) {
    const size_t slot = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    int b, t, j;
    if (!decode_slot(slot, act_idx, seg_count, cap, B, N, &b, &t, &j)) return;
    const size_t row = (size_t)b * T + t;
    const size_t at = transposed ? (size_t)j * B * T + row : row * N + j;
    dense[at] = ds[slot] * surrogate_of_offset(act_val[slot]);
}

// The dense later adjoint G (batch x steps x N) straight from a sparse tape, without a zeroed d
// array: G[T-1] = 0, G[t] = d[t+1] + beta G[t+1], d = dS sigma'(V) at active entries, 0 elsewhere
// (the f32 operations of the recursion over a zeroed array with d scattered into it).
// Warp per (sample, 32-neuron segment), lane = neuron; the segment's entries, sorted by
// (t, lane), are read from the end 32 at a time (lane l loads the l-th next one with its d), and
// each is passed to every lane by a shuffle: a step waits on no load of its own. The step of the
// next entry stays in a register, so a step without one costs its store, a compare and the
// multiply: most steps of a segment have none.
extern "C" __global__ void later_adjoint_from_tape_f32(const u16* act_idx, const float* act_val,
                                                       const u32* seg_count, int cap,
                                                       const float* ds, int B, int T, int N,
                                                       float beta, float* G) {
    const size_t seg = ((size_t)blockIdx.x * blockDim.x + threadIdx.x) / 32;
    const int lane = threadIdx.x & 31;
    const int words_n = words_for(N);
    if (seg >= (size_t)B * words_n) return;
    const int b = (int)(seg / words_n), j = (int)(seg % words_n) * 32 + lane;
    const bool in_layer = j < N;
    const size_t first = seg * cap;
    int k = (int)min(seg_count[seg], (u32)cap) - 1;  // the next entry, counting from the end
    // The window: lane l holds entry k - l, and its d; `pos` is entry k's place in it.
    u32 window_entry = 0u;
    float window_d = 0.0f;
    int pos = 0;
    int next_step = -1;  // the step of entry k; -1 when none is left
    if (k >= 0) {
        const int mine = max(k - lane, 0);
        window_entry = (u32)act_idx[first + mine];
        window_d = ds[first + mine] * surrogate_of_offset(act_val[first + mine]);
        next_step = (int)(__shfl_sync(FULL_MASK, window_entry, 0) >> 5);
    }
    // Unsigned, so that stepping past sample 0's first row wraps harmlessly instead of going negative.
    size_t at = ((size_t)b * T + (T - 1)) * N + j;
    float g = 0.0f;
    int t = T - 1;
    for (;;) {
        for (; t > next_step; --t) {
            if (in_layer) G[at] = g;
            at -= N;
            g = 0.0f + beta * g;
        }
        if (t < 0) break;
        if (in_layer) G[at] = g;
        at -= N;
        float here = 0.0f;
        do {
            const u32 entry = __shfl_sync(FULL_MASK, window_entry, pos);
            const float d = __shfl_sync(FULL_MASK, window_d, pos);
            if ((int)(entry & 31) == lane) here = d;
            --k;
            ++pos;
            next_step = -1;
            if (k >= 0) {
                if (pos == 32) {
                    const int mine = max(k - lane, 0);
                    window_entry = (u32)act_idx[first + mine];
                    window_d = ds[first + mine] * surrogate_of_offset(act_val[first + mine]);
                    pos = 0;
                }
                next_step = (int)(__shfl_sync(FULL_MASK, window_entry, pos) >> 5);
            }
        } while (next_step == t);
        g = here + beta * g;
        --t;
    }
}

// dS_in at the layer below's active entries, read from a dense `batch x steps x NI` array, plus
// the layer below's regulariser terms. Thread per below tape slot.
extern "C" __global__ void gather_below_grad_f32(const float* dense, const u16* below_idx,
                                                 const u32* below_count, int below_cap, int B,
                                                 int T, int NI, const float* u, const float* l,
                                                 float* out) {
    const size_t slot = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    int b, t, i;
    if (!decode_slot(slot, below_idx, below_count, below_cap, B, NI, &b, &t, &i)) return;
    out[slot] = with_regularisers(dense[((size_t)b * T + t) * NI + i], u[b], l[(size_t)b * NI + i]);
}

// The layer below's tape slots of each sample in order of step, for the sampled dots: the warps
// that run together then take entries of one (sample, step) and share its row of G, read from
// memory once for the row's entries instead of once for each (v99; taken where W does not fit in
// L2: with W in L2 the tape's order, a 32-unit segment's rows of W together, ran faster). Sample b's slots are listed
// in order[b * words(NI) * cap ...], its entries first and the rest of its region NO_SLOT. Within
// a step the order is whatever the atomics give: each slot's dot is the same wherever it runs.
// Block per sample; shared memory T + 1 words.
#define NO_SLOT 0xFFFFFFFFu
extern "C" __global__ void below_slots_by_step(const u16* below_idx, const u32* below_count,
                                               int below_cap, int B, int T, int NI, u32* order) {
    extern __shared__ u32 step_cursor[];
    __shared__ u32 warp_total[32];
    const int b = blockIdx.x;
    if (b >= B) return;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    const int words_ni = words_for(NI);
    const size_t region = (size_t)b * words_ni * below_cap;
    for (int k = threadIdx.x; k <= T; k += blockDim.x) step_cursor[k] = 0u;
    __syncthreads();
    for (int g = warp; g < words_ni; g += warps) {
        const size_t seg = (size_t)b * words_ni + g;
        const int count = (int)min(below_count[seg], (u32)below_cap);
        for (int k = lane; k < count; k += 32)
            atomicAdd(&step_cursor[below_idx[seg * below_cap + k] >> 5], 1u);
    }
    __syncthreads();
    exclusive_prefix_by_step(step_cursor, 1, T + 1, 0u, warp_total, [](int, u32) {});
    const u32 listed = step_cursor[T];  // no entry has step T: the total
    for (int g = warp; g < words_ni; g += warps) {
        const size_t seg = (size_t)b * words_ni + g;
        const int count = (int)min(below_count[seg], (u32)below_cap);
        for (int k = lane; k < count; k += 32) {
            const size_t slot = seg * below_cap + k;
            const u32 at = atomicAdd(&step_cursor[below_idx[slot] >> 5], 1u);
            order[region + at] = (u32)slot;
        }
    }
    for (size_t k = listed + threadIdx.x; k < (size_t)words_ni * below_cap; k += blockDim.x)
        order[region + k] = NO_SLOT;
}

// dS_in at the layer below's active entries as one dot each, W[i, :] . G[b, t, :], over the dense
// later adjoint G (later_adjoint_from_tape_f32) plus the regulariser terms: work in proportion to the entries
// below times N, neither to every pair of entries (s3gd_bwd_input_f32) nor to the whole GEMM.
// Warp per below tape slot, taken in the order of `order` where it is not null
// (below_slots_by_step); lane l sums j = l, l + 32, ... in order, then a fixed shuffle tree.
extern "C" __global__ void sampled_input_grad_f32(const float* G, const float* W,
                                                  const u16* below_idx, const u32* below_count,
                                                  int below_cap, const u32* order, int B, int T,
                                                  int NI, int N, const float* u, const float* l,
                                                  float* out) {
    const size_t position = ((size_t)blockIdx.x * blockDim.x + threadIdx.x) / 32;
    const int lane = threadIdx.x & 31;
    size_t slot = position;
    if (order) {
        if (position >= (size_t)B * words_for(NI) * below_cap) return;
        const u32 listed = order[position];
        if (listed == NO_SLOT) return;
        slot = listed;
    }
    int b, t, i;
    // Warp-uniform: every lane of a warp decodes the same slot.
    if (!decode_slot(slot, below_idx, below_count, below_cap, B, NI, &b, &t, &i)) return;
    const float* w_row = W + (size_t)i * N;
    const float* g_row = G + ((size_t)b * T + t) * N;
    float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    int j = lane;
    // Four loads of each row in flight per lane.
    for (; j + 96 < N; j += 128) {
#pragma unroll
        for (int u4 = 0; u4 < 4; ++u4) acc[u4] += w_row[j + 32 * u4] * g_row[j + 32 * u4];
    }
    for (; j < N; j += 32) acc[0] += w_row[j] * g_row[j];
    float sum = (acc[0] + acc[1]) + (acc[2] + acc[3]);
    for (int d = 16; d > 0; d >>= 1) sum += __shfl_xor_sync(FULL_MASK, sum, d);
    if (lane == 0) out[slot] = with_regularisers(sum, u[b], l[(size_t)b * NI + i]);
}

// dW from the dense later adjoint G and the layer's input spikes: dW[i, j] = sum over spikes
// (b, s) of unit i of G[b, s, j], which equals the sum over active entries of e[b, t, i] d[b, t, j]
// (the trace form). Samples [b0, b1) only, split into `groups` consecutive ranges (z = group, each
// adding to its own NI x N part of dw, summed later in group order by sum_groups_f32), added to
// that part when `accumulate` (launches over consecutive sample chunks keep a chunk of G in L2, in
// a fixed order). Warp per (unit i, 256-column tile, group); lane l holds columns
// j = tile * 256 + l + 32 k, k < 8; each sample's spikes are added in time order, as the spike
// source's `walk` hands them over (the same (b, s) to every lane).
#define ADJ_COLS_PER_LANE 8
template <class Spikes>
__device__ __forceinline__ void weight_grad_from_adjoint(const Spikes& spikes, const float* G,
                                                         int T, int NI, int N, int b0, int b1,
                                                         int groups, int accumulate, float* dw) {
    const int lane = threadIdx.x & 31;
    const int i = blockIdx.y * (blockDim.x / 32) + threadIdx.x / 32;
    if (i >= NI) return;
    const int group = blockIdx.z;
    const int g0 = b0 + (int)((long long)group * (b1 - b0) / groups);
    const int g1 = b0 + (int)((long long)(group + 1) * (b1 - b0) / groups);
    dw += (size_t)group * NI * N;
    const int j0 = blockIdx.x * 32 * ADJ_COLS_PER_LANE + lane;
    float acc[ADJ_COLS_PER_LANE];
#pragma unroll
    for (int k = 0; k < ADJ_COLS_PER_LANE; ++k) {
        const int j = j0 + 32 * k;
        acc[k] = accumulate && j < N ? dw[(size_t)i * N + j] : 0.0f;
    }
    spikes.walk(i, g0, g1, lane, [&](int b, int s) {
        const float* g_row = G + ((size_t)b * T + s) * N;
#pragma unroll
        for (int k = 0; k < ADJ_COLS_PER_LANE; ++k) {
            const int j = j0 + 32 * k;
            if (j < N) acc[k] += g_row[j];
        }
    });
#pragma unroll
    for (int k = 0; k < ADJ_COLS_PER_LANE; ++k) {
        const int j = j0 + 32 * k;
        if (j < N) dw[(size_t)i * N + j] = acc[k];
    }
}

// Hidden spikes, bits by unit. One load brings the bit words of 32 / words_t samples (lane =
// sample offset x word), so a sample costs no round trip of its own; words are then taken in
// (sample, word) order.
struct SpikeBitsByUnit {
    const u32* in_cols;
    int NI, words_t;
    template <class Add>
    __device__ __forceinline__ void walk(int i, int g0, int g1, int lane, Add add) const {
        const int per_pass = 32 / words_t;
        const int q = lane / words_t, w = lane % words_t;
        for (int p0 = g0; p0 < g1; p0 += per_pass) {
            const int bq = p0 + q;
            const u32 mine =
                q < per_pass && bq < g1 ? in_cols[((size_t)bq * NI + i) * words_t + w] : 0u;
            u32 words_left = __ballot_sync(FULL_MASK, mine != 0u);
            while (words_left) {
                const int src = __ffs(words_left) - 1;
                words_left &= words_left - 1;
                u32 bits = __shfl_sync(FULL_MASK, mine, src);
                const int b = p0 + src / words_t, first_step = (src % words_t) * 32;
                while (bits) {
                    add(b, first_step + __ffs(bits) - 1);
                    bits &= bits - 1;
                }
            }
        }
    }
};

// The uploaded input, event times by unit (repeats for counts). One load brings the event
// ranges of 32 samples (lane = sample offset); samples with events are then taken in order, each
// event's time read by all lanes at once.
struct SpikeEventsByUnit {
    const u32* unit_offsets;
    const u32* unit_times;
    int NI;
    template <class Add>
    __device__ __forceinline__ void walk(int i, int g0, int g1, int lane, Add add) const {
        for (int p0 = g0; p0 < g1; p0 += 32) {
            const int bq = p0 + lane;
            u32 first = 0u, end = 0u;
            if (bq < g1) {
                first = unit_offsets[(size_t)bq * NI + i];
                end = unit_offsets[(size_t)bq * NI + i + 1];
            }
            u32 samples_left = __ballot_sync(FULL_MASK, end > first);
            while (samples_left) {
                const int src = __ffs(samples_left) - 1;
                samples_left &= samples_left - 1;
                const u32 e1 = __shfl_sync(FULL_MASK, end, src);
                for (u32 e = __shfl_sync(FULL_MASK, first, src); e < e1; ++e)
                    add(p0 + src, (int)unit_times[e]);
            }
        }
    }
};

extern "C" __global__ void weight_grad_from_adjoint_bits_f32(const u32* in_cols, const float* G,
                                                             int T, int NI, int N, int b0, int b1,
                                                             int groups, int accumulate,
                                                             float* dw) {
    const SpikeBitsByUnit spikes{in_cols, NI, words_for(T)};
    weight_grad_from_adjoint(spikes, G, T, NI, N, b0, b1, groups, accumulate, dw);
}

extern "C" __global__ void weight_grad_from_adjoint_events_f32(const u32* unit_offsets,
                                                               const u32* unit_times,
                                                               const float* G, int T, int NI,
                                                               int N, int b0, int b1, int groups,
                                                               int accumulate, float* dw) {
    const SpikeEventsByUnit spikes{unit_offsets, unit_times, NI};
    weight_grad_from_adjoint(spikes, G, T, NI, N, b0, b1, groups, accumulate, dw);
}

extern "C" __global__ void sum_groups_f32(const float* partial, int groups, size_t len, float* out) {
    const size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= len) return;
    float acc = 0.0f;
    for (int g = 0; g < groups; ++g) acc += partial[(size_t)g * len + idx];
    out[idx] = acc;
}

// Block per sample. Shared memory: T floats, chunk * (float + 2 words), words(N) + 1 and
// words(NI) + 1 words (segment starts of this layer and of the layer below), and, when
// stage_weights, all NI * N weights (so that every gather hits shared memory). Each pass takes up
// to SLOTS_PER_THREAD of the sample's below entries per thread and streams this layer's active
// entries of the sample (staged in parallel, chunk by chunk) past them.
#define SLOTS_PER_THREAD 8
extern "C" __global__ void s3gd_bwd_input_f32(
    const u16* act_idx, const float* act_val, const u32* seg_count, int cap, const float* ds, int N,
    const u16* below_idx, const u32* below_count, int below_cap, int NI, const float* W, int B,
    int T, double beta, const float* u_below, const float* l_below, int chunk, int stage_weights,
    float* out) {
    extern __shared__ float shared[];
    const int words_ni = words_for(NI), words_n = words_for(N);
    float* pw = shared;
    float* sh_d = pw + T;
    int* sh_time = (int*)(sh_d + chunk);
    int* sh_j = sh_time + chunk;
    u32* seg_start = (u32*)(sh_j + chunk);
    u32* below_start = seg_start + words_n + 1;
    float* sh_w = (float*)(below_start + words_ni + 1);
    const int b = blockIdx.x;
    if (b >= B) return;
    load_pow_table(pw, T, beta);
    for (int tile = threadIdx.x; tile < words_n; tile += blockDim.x)
        seg_start[tile + 1] = min(seg_count[(size_t)b * words_n + tile], (u32)cap);
    for (int tile = threadIdx.x; tile < words_ni; tile += blockDim.x)
        below_start[tile + 1] = min(below_count[(size_t)b * words_ni + tile], (u32)below_cap);
    // Staged rows are N | 1 apart: an odd stride puts the 32 rows a warp reads in 32 banks.
    const int w_stride = stage_weights ? (N | 1) : N;
    if (stage_weights) {
        copy_eight_in_flight(W, (size_t)NI * N, [&](size_t q, float v) {
            sh_w[(q / N) * w_stride + q % N] = v;
        });
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        seg_start[0] = 0;
        for (int tile = 0; tile < words_n; ++tile) seg_start[tile + 1] += seg_start[tile];
        below_start[0] = 0;
        for (int tile = 0; tile < words_ni; ++tile) below_start[tile + 1] += below_start[tile];
    }
    __syncthreads();
    const float* weights = stage_weights ? sh_w : W;
    const u32 total = seg_start[words_n];
    const u32 below_n = below_start[words_ni];
    const u32 per_pass = blockDim.x * SLOTS_PER_THREAD;
    for (u32 base = 0; base < below_n; base += per_pass) {
        float acc[SLOTS_PER_THREAD];
        int t_of[SLOTS_PER_THREAD];
        const float* row_of[SLOTS_PER_THREAD];
        size_t slot_of[SLOTS_PER_THREAD];
        int i_of[SLOTS_PER_THREAD];
        const u32 used = min((u32)SLOTS_PER_THREAD, (below_n - base + blockDim.x - 1) / blockDim.x);
#pragma unroll
        for (int r = 0; r < SLOTS_PER_THREAD; ++r) {
            acc[r] = 0.0f;
            const u32 k = base + threadIdx.x + r * blockDim.x;
            t_of[r] = T;  // no tau exceeds T - 1: an inert slot
            row_of[r] = weights;
            slot_of[r] = 0;
            i_of[r] = -1;
            if (k < below_n) {
                int lo = 0, hi = words_ni;  // the below tile whose range holds k
                while (hi - lo > 1) {
                    const int mid = (lo + hi) / 2;
                    if (below_start[mid] <= k) lo = mid; else hi = mid;
                }
                const size_t slot = ((size_t)b * words_ni + lo) * below_cap + (k - below_start[lo]);
                const u32 entry = below_idx[slot];
                t_of[r] = entry >> 5;
                i_of[r] = lo * 32 + (entry & 31);
                row_of[r] = weights + (size_t)i_of[r] * w_stride;
                slot_of[r] = slot;
            }
        }
        for (u32 c0 = 0; c0 < total; c0 += chunk) {
            const u32 count = min((u32)chunk, total - c0);
            __syncthreads();
            for (u32 q = threadIdx.x; q < count; q += blockDim.x) {
                const u32 e = c0 + q;
                int lo = 0, hi = words_n;  // the tile whose range holds e
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
            if (i_of[r] >= 0)
                out[slot_of[r]] =
                    with_regularisers(acc[r], u_below[b], l_below[(size_t)b * NI + i_of[r]]);
        }
    }
}
