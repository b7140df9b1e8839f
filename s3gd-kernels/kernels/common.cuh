// common.cuh: types and the per-step math shared by every s3gd kernel.
//
// Compiled with NVRTC with fused multiply-add contraction off (--fmad=false), so that a*b + c rounds
// twice exactly as the CPU reference's Rust code does; the forward pass then matches it bit for bit.
// Sparse tapes are segments of one warp (32 neurons) of one sample: segment = b * words_n + tile,
// entry = (t << 5) | lane as u16 (so T <= 2047), value V - theta as f32.

typedef unsigned int u32;
typedef unsigned short u16;
typedef unsigned long long u64;

#define FULL_MASK 0xffffffffu

__device__ __forceinline__ float surrogate_of_offset(float offset) {
    float x = 100.0f * fabsf(offset) + 1.0f;
    return 1.0f / (x * x);
}

// A spike gradient plus the regularisers' terms, summed in f64 and rounded once (they often nearly
// cancel); the CPU's with_regularisers does the same.
__device__ __forceinline__ float with_regularisers(double from_above, float u, float l) {
    return (float)((from_above + (double)u) + (double)l);
}

__device__ __forceinline__ u32 warp_sum_u32(u32 x) {
    for (int d = 16; d > 0; d >>= 1) x += __shfl_down_sync(FULL_MASK, x, d);
    return x;
}

// Inclusive prefix sum over the warp's lanes: lane k gets the sum of lanes 0 .. k's x.
__device__ __forceinline__ u32 warp_inclusive_sum_u32(u32 x) {
    const int lane = threadIdx.x & 31;
    for (int d = 1; d < 32; d <<= 1) {
        const u32 below = __shfl_up_sync(FULL_MASK, x, d);
        if (lane >= d) x += below;
    }
    return x;
}

__device__ __forceinline__ int words_for(int bits) { return (bits + 31) >> 5; }

// A stable counting sort's placing step for one round of a warp: where each lane's item goes,
// cursor[key] (the next free place of its key, in the warp's shared memory) plus the lanes below
// with the same key, and each key's cursor moves past the round's items. Lanes in order, so the
// places are the same each run. Lanes without an item (`has` false) take part and claim nothing.
__device__ __forceinline__ u32 warp_claim_in_order(u32* cursor, u32 key, bool has) {
    const int lane = threadIdx.x & 31;
    const u32 peers = __match_any_sync(FULL_MASK, has ? key : 0xFFFFFFFFu);
    const u32 rank = __popc(peers & ((1u << lane) - 1u));
    const u32 base = has ? cursor[key] : 0u;
    __syncwarp();
    if (has && rank == 0) cursor[key] = base + __popc(peers);
    __syncwarp();
    return base + rank;
}

// Exclusive prefix, in place, of n counts by one warp (each lane a contiguous run).
__device__ __forceinline__ void warp_exclusive_prefix(u32* v, int n) {
    const int lane = threadIdx.x & 31, per_lane = (n + 31) / 32;
    const int k0 = min(n, lane * per_lane), k1 = min(n, k0 + per_lane);
    u32 own = 0;
    for (int k = k0; k < k1; ++k) own += v[k];
    u32 inclusive = warp_inclusive_sum_u32(own);
    u32 run = inclusive - own;
    for (int k = k0; k < k1; ++k) {
        const u32 count = v[k];
        v[k] = run;
        run += count;
    }
}

// Exclusive prefix, in place, of n counts by one thread (for a few counts: a block's warps);
// returns their total.
__device__ __forceinline__ u32 serial_exclusive_prefix(u32* v, int n) {
    u32 running = 0;
    for (int k = 0; k < n; ++k) {
        const u32 count = v[k];
        v[k] = running;
        running += count;
    }
    return running;
}

// A float of the block's shared memory by its 32-bit shared-window address, and a store to one.
// NVVM addresses shared arrays through the 64-bit generic symbol: under the 64-register cap of
// 1024 threads ptxas then rebuilds the window's base for every load (a special-register read and
// three integer ops), and elsewhere keeps an index apart from the base (three ops an address).
__device__ __forceinline__ float ld_shared_f32(u32 address) {
    float v;
    asm volatile("ld.shared.f32 %0, [%1];" : "=f"(v) : "r"(address));
    return v;
}

__device__ __forceinline__ void st_shared_f32(u32 address, float v) {
    asm volatile("st.shared.f32 [%0], %1;" ::"r"(address), "f"(v) : "memory");
}

// Copies `len` elements from global memory with eight loads in flight per thread (the block's
// threads stride the range), handing each to store(index, value): one round trip per eight
// elements rather than one per element.
template <typename T, typename Store>
__device__ __forceinline__ void copy_eight_in_flight(const T* from, size_t len, Store store) {
    const size_t stride = (size_t)blockDim.x * 8;
    for (size_t q0 = threadIdx.x; q0 < len; q0 += stride) {
        T v[8];
#pragma unroll
        for (int u = 0; u < 8; ++u) {
            const size_t q = q0 + (size_t)u * blockDim.x;
            if (q < len) v[u] = from[q];
        }
#pragma unroll
        for (int u = 0; u < 8; ++u) {
            const size_t q = q0 + (size_t)u * blockDim.x;
            if (q < len) store(q, v[u]);
        }
    }
}

// Exclusive prefix, from `base`, over a block's per-warp counts per step, counts[w * steps + s],
// taken step by step and within a step warp by warp: each count becomes where its (warp, step)
// cell starts, and at_step(s, start) is called once per step with where that step starts (its warp
// 0 cell). The stable counting sorts by step use it: warp w's entries of step s go after every
// entry of an earlier step and after warps 0 .. w - 1's entries of step s. Every thread of the
// block calls it (it synchronises); warp_total is shared scratch of 32 words.
template <typename AtStep>
__device__ void exclusive_prefix_by_step(u32* counts, int warps, int steps, u32 base,
                                         u32* warp_total, AtStep at_step) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int cells = warps * steps;
    const int per_thread = (cells + blockDim.x - 1) / blockDim.x, c0 = threadIdx.x * per_thread;
    const int c1 = min(cells, c0 + per_thread);
    const auto cell = [&](int k) -> u32& { return counts[(k % warps) * steps + k / warps]; };
    u32 own = 0;
    for (int k = c0; k < c1; ++k) own += cell(k);
    u32 inclusive = warp_inclusive_sum_u32(own);
    if (lane == 31) warp_total[warp] = inclusive;
    __syncthreads();
    u32 run = base + inclusive - own;
    for (int w = 0; w < warp; ++w) run += warp_total[w];
    for (int k = c0; k < c1; ++k) {
        u32& at = cell(k);
        const u32 count = at;
        at = run;
        if (k % warps == 0) at_step(k / warps, run);
        run += count;
    }
    __syncthreads();
}
