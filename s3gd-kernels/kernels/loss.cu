// loss.cu: cross-entropy (batch mean) and the two spike-count regularisers of both hidden layers.
//
// loss_sample_f32: block per sample; writes dlogits, the regulariser gradients u[b] (upper, same
// for every (t, j)) and l[b, j] (lower), and six per-sample partial terms. loss_reduce_f32: one
// block sums the partials in a fixed order (deterministic) into the terms
// [total, ce, upper1, lower1, upper2, lower2, correct].

__device__ double block_sum(double x, double* scratch) {
    const int tid = threadIdx.x;
    scratch[tid] = x;
    __syncthreads();
    for (int stride = blockDim.x / 2; stride > 0; stride >>= 1) {
        if (tid < stride) scratch[tid] += scratch[tid + stride];
        __syncthreads();
    }
    const double total = scratch[0];
    __syncthreads();
    return total;
}

__device__ void regulariser(const float* counts, int b, int N, int B, float upper_w, float max_rate,
                            float lower_w, float min_count, double* scratch, double* upper_out,
                            double* lower_out, float* u, float* l) {
    const float n = (float)N;
    const float inv_b = 1.0f / (float)B;
    double total = 0.0, lower = 0.0;
    for (int j = threadIdx.x; j < N; j += blockDim.x) {
        const float c = counts[(size_t)b * N + j];
        total += c;
        const float shortfall = min_count - c;
        float grad = 0.0f;
        if (shortfall > 0.0f || isnan(shortfall)) {
            lower += (double)shortfall * shortfall;
            grad = -(2.0f * lower_w / n) * shortfall * inv_b;
        }
        l[(size_t)b * N + j] = grad;
    }
    total = block_sum(total, scratch);
    lower = block_sum(lower, scratch);
    if (threadIdx.x == 0) {
        const double excess = total / N - max_rate;
        double upper = 0.0;
        float grad = 0.0f;
        if (excess > 0.0 || isnan(excess)) {
            upper = (double)upper_w * excess;
            grad = upper_w / n * inv_b;
        }
        u[b] = grad;
        *upper_out = upper;
        *lower_out = (double)lower_w / N * lower;
    }
}

// blockDim.x must be a power of two; shared memory: blockDim.x doubles.
extern "C" __global__ void loss_sample_f32(const float* logits, const u32* labels,
                                           const float* counts1, const float* counts2, int B,
                                           int C, int N, float upper_w, float max_rate,
                                           float lower_w, float min_count, float* grad_logits,
                                           double* partial, float* u1, float* l1, float* u2,
                                           float* l2) {
    extern __shared__ double scratch[];
    const int b = blockIdx.x;
    if (b >= B) return;
    double* out = partial + (size_t)b * 6;
    if (threadIdx.x == 0) {
        const float* z = logits + (size_t)b * C;
        const u32 label = labels[b];
        float best = z[0];
        int best_c = 0;
        for (int c = 1; c < C; ++c)
            if (z[c] > best) {
                best = z[c];
                best_c = c;
            }
        double sum_exp = 0.0;
        for (int c = 0; c < C; ++c) sum_exp += exp((double)z[c] - (double)best);
        out[0] = (double)best + log(sum_exp) - (double)z[label];
        out[5] = (best_c == (int)label) ? 1.0 : 0.0;
        // In f64: when a logit dominates, p -> 1 and p - 1 would cancel to nothing in f32.
        for (int c = 0; c < C; ++c) {
            const double p = exp((double)z[c] - (double)best) / sum_exp;
            grad_logits[(size_t)b * C + c] =
                (float)((p - (c == (int)label ? 1.0 : 0.0)) / (double)B);
        }
    }
    regulariser(counts1, b, N, B, upper_w, max_rate, lower_w, min_count, scratch, &out[1], &out[2],
                u1, l1);
    regulariser(counts2, b, N, B, upper_w, max_rate, lower_w, min_count, scratch, &out[3], &out[4],
                u2, l2);
}

extern "C" __global__ void loss_reduce_f32(const double* partial, int B, float* terms) {
    extern __shared__ double scratch[];
    double sums[6];
    for (int k = 0; k < 6; ++k) {
        double x = 0.0;
        for (int b = threadIdx.x; b < B; b += blockDim.x) x += partial[(size_t)b * 6 + k];
        sums[k] = block_sum(x, scratch);
    }
    if (threadIdx.x == 0) {
        const double mean[5] = {sums[0] / B, sums[1] / B, sums[2] / B, sums[3] / B, sums[4] / B};
        terms[0] = (float)(mean[0] + mean[1] + mean[2] + mean[3] + mean[4]);
        for (int k = 0; k < 5; ++k) terms[1 + k] = (float)mean[k];
        terms[6] = (float)sums[5];
    }
}

// Packs a step's scalars (loss terms as bits, then both layers' [spikes, active, largest segment])
// into one buffer, so that the host reads them with a single copy.
extern "C" __global__ void gather_scalars_f32(const float* terms, int n_terms, const u32* stats1,
                                              const u32* stats2, u32* out) {
    const int i = threadIdx.x;
    if (i < n_terms) out[i] = __float_as_uint(terms[i]);
    if (i < 3) {
        out[n_terms + i] = stats1[i];
        out[n_terms + 3 + i] = stats2[i];
    }
}
