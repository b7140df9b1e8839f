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

__device__ __forceinline__ int words_for(int bits) { return (bits + 31) >> 5; }

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
