// gemm_int8.cu: f32 GEMMs from exact int8 tensor-core products (GemmPrecision::Int8Split).
//
// Each row of op(A) and each column of op(B) (a "row" here: the vector a dot product runs along)
// is scaled by the power of two 2^-e just above its largest magnitude and split into S slices of
// 7 bits, x = 2^e (s_1 2^-6 + s_2 2^-13 + ... + s_S 2^-(7S-1)) with |s_p| <= 64, so a row keeps 7S - 1
// bits below 2^e, rounded to nearest. The slice products with p + q <= S + 1 are summed exactly in
// int32 by cuBLAS (one GEMM per p + q, the slices stacked along k) and combined here in f64, then
// rounded once to f32. Rows whose largest magnitude is not finite give NaN, as an f32 GEMM would.

// Marks a row with a non-finite element: its products are NaN.
#define INT8_SPLIT_NONFINITE 0x7fffffff

// Columns of k a tile spans: a block of 32 x 8 threads splits 32 rows x 128 elements, each thread
// four consecutive elements of four rows.
#define INT8_SPLIT_TILE_K 128

// Element (r, kk) of a row view sits at src[r * row_stride + kk * k_stride]; one stride is 1. The
// tile is read along the unit stride, so both layouts read coalesced; zero past the view.
__device__ __forceinline__ void int8_split_load_tile(const float* __restrict__ src, int rows, int k,
                                                     long long row_stride, long long k_stride,
                                                     int r0, int k0,
                                                     float tile[32][INT8_SPLIT_TILE_K + 1]) {
    if (k_stride == 1) {
        for (int y = threadIdx.y; y < 32; y += 8) {
            const int r = r0 + y;
#pragma unroll
            for (int q = 0; q < INT8_SPLIT_TILE_K; q += 32) {
                const int kk = k0 + q + threadIdx.x;
                tile[y][q + threadIdx.x] =
                    r < rows && kk < k ? src[(long long)r * row_stride + kk] : 0.0f;
            }
        }
    } else {
        const int r = r0 + threadIdx.x;
        for (int q = threadIdx.y; q < INT8_SPLIT_TILE_K; q += 8) {
            const int kk = k0 + q;
            tile[threadIdx.x][q] = r < rows && kk < k ? src[r + (long long)kk * k_stride] : 0.0f;
        }
    }
}

__device__ __forceinline__ u32 warp_max_u32(u32 x) {
    for (int d = 16; d > 0; d >>= 1) x = max(x, __shfl_xor_sync(FULL_MASK, x, d));
    return x;
}

// row_max_bits[r] = max over kk of the bits of |x| (zeroed by the caller): as unsigned integers the
// bits of non-negative floats order as the floats do, and NaN's lie above infinity's.
extern "C" __global__ void int8_split_row_max(const float* __restrict__ src, int rows, int k,
                                              long long row_stride, long long k_stride,
                                              u32* __restrict__ row_max_bits) {
    __shared__ float tile[32][INT8_SPLIT_TILE_K + 1];
    const int r0 = blockIdx.y * 32;
    u32 running[4] = {0u, 0u, 0u, 0u};
    for (int k0 = blockIdx.x * INT8_SPLIT_TILE_K; k0 < k; k0 += gridDim.x * INT8_SPLIT_TILE_K) {
        int8_split_load_tile(src, rows, k, row_stride, k_stride, r0, k0, tile);
        __syncthreads();
#pragma unroll
        for (int i = 0; i < 4; ++i)
#pragma unroll
            for (int q = 0; q < INT8_SPLIT_TILE_K; q += 32)
                running[i] = max(running[i],
                                 __float_as_uint(fabsf(tile[threadIdx.y + 8 * i][q + threadIdx.x])));
        __syncthreads();
    }
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const u32 m = warp_max_u32(running[i]);
        const int r = r0 + threadIdx.y + 8 * i;
        if (threadIdx.x == 0 && r < rows && m != 0u) atomicMax(&row_max_bits[r], m);
    }
}

// 2^e for the exponents the split uses (|e| < 1023): exact, and cheaper than ldexp.
__device__ __forceinline__ double int8_split_pow2(int e) {
    return __hiloint2double((e + 1023) << 20, 0);
}

// The exponent e with |x| < 2^e for every x of a row whose largest magnitude has these bits; 0 for
// a row of zeros, INT8_SPLIT_NONFINITE for one holding infinity or NaN.
__device__ __forceinline__ int int8_split_exponent(u32 max_bits) {
    if (max_bits >= 0x7f800000u) return INT8_SPLIT_NONFINITE;
    if (max_bits == 0u) return 0;
    int e;
    frexpf(__uint_as_float(max_bits), &e);
    return e;
}

// The tile walk both splits share: each thread meets four consecutive elements (from kk, below
// k_padded, zero past k) of some rows r of the view, and calls emit(r, kk, e, quad) with the row's
// exponent e; exponent[r] = e is written once per row.
template <typename Emit>
__device__ __forceinline__ void split_rows_by_quads(const float* __restrict__ src, int rows, int k,
                                                    long long row_stride, long long k_stride,
                                                    const u32* __restrict__ row_max_bits,
                                                    int k_padded, int* __restrict__ exponent,
                                                    Emit emit) {
    __shared__ float tile[32][INT8_SPLIT_TILE_K + 1];
    const int r0 = blockIdx.y * 32;
    for (int k0 = blockIdx.x * INT8_SPLIT_TILE_K; k0 < k_padded;
         k0 += gridDim.x * INT8_SPLIT_TILE_K) {
        int8_split_load_tile(src, rows, k, row_stride, k_stride, r0, k0, tile);
        __syncthreads();
        const int kk = k0 + 4 * threadIdx.x;
        for (int y = threadIdx.y; y < 32; y += 8) {
            const int r = r0 + y;
            if (r >= rows || kk >= k_padded) continue;
            const int e = int8_split_exponent(row_max_bits[r]);
            if (k0 == 0 && threadIdx.x == 0) exponent[r] = e;
            emit(r, kk, e, &tile[y][4 * threadIdx.x]);
        }
        __syncthreads();
    }
}

// out[(r * slices + slot) * k_padded + kk] = slice p of element (r, kk), slot = p - 1, or
// slices - p when `reversed` (op(B)'s order, so that one GEMM over a run of slots pairs slice p of
// A with slice g - p of B); zero past k. exponent[r] = the row's e. k_padded is a multiple of 16,
// so a thread's four bytes of a slot are one aligned word.
extern "C" __global__ void int8_split_slices(const float* __restrict__ src, int rows, int k,
                                             long long row_stride, long long k_stride,
                                             const u32* __restrict__ row_max_bits, int slices,
                                             int reversed, int k_padded,
                                             signed char* __restrict__ out,
                                             int* __restrict__ exponent) {
    split_rows_by_quads(
        src, rows, k, row_stride, k_stride, row_max_bits, k_padded, exponent,
        [=](int r, int kk, int e, const float* quad) {
            const double scale = e == INT8_SPLIT_NONFINITE ? 0.0 : int8_split_pow2(6 - e);
            double scaled[4];
#pragma unroll
            for (int c = 0; c < 4; ++c) scaled[c] = (double)quad[c] * scale;
            u32* row = (u32*)(out + (size_t)r * slices * k_padded + kk);
            for (int p = 0; p < slices; ++p) {
                u32 packed = 0u;
#pragma unroll
                for (int c = 0; c < 4; ++c) {
                    const double s = rint(scaled[c]);
                    packed |= ((u32)(int)s & 0xffu) << (8 * c);
                    scaled[c] = (scaled[c] - s) * 128.0;
                }
                const int slot = reversed ? slices - 1 - p : p;
                row[(size_t)slot * (k_padded / 4)] = packed;
            }
        });
}

// c[i + j * ldc] = 2^(e_a[i] + e_b[j]) * sum over groups g of groups[g][i + (j - j0) * m] 2^(-12 - 7g)
// for the columns j0 <= j < j_end whose products `groups` holds, the least significant group first,
// in f64, rounded once to f32 (NaN where a row is not finite). x-blocks span i, y-blocks stride over
// j.
extern "C" __global__ void int8_split_combine(const int* __restrict__ groups, int slices, int m,
                                              int j0, int j_end,
                                              const int* __restrict__ exponent_a,
                                              const int* __restrict__ exponent_b,
                                              float* __restrict__ c, int ldc) {
    const size_t group_len = (size_t)m * (j_end - j0);
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= m) return;
    const int ea = exponent_a[i];
    for (int j = j0 + blockIdx.y; j < j_end; j += gridDim.y) {
        const size_t idx = (size_t)(j - j0) * m + i;
        const int eb = exponent_b[j];
        float out;
        if (ea == INT8_SPLIT_NONFINITE || eb == INT8_SPLIT_NONFINITE) {
            out = __int_as_float(0x7fc00000);
        } else {
            double sum = 0.0;
            for (int g = slices - 1; g >= 0; --g)
                sum += (double)groups[(size_t)g * group_len + idx] * int8_split_pow2(-12 - 7 * g);
            out = (float)(sum * int8_split_pow2(ea + eb));
        }
        c[(size_t)j * ldc + i] = out;
    }
}
