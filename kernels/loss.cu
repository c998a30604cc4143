// Losses, each a mean over its terms, computed by one block of 256 threads so that the
// reduction order is fixed: softmax cross-entropy over class scores, and binary
// cross-entropy with logits of every class expert's (False, True) pair.
#include "common.cuh"

// log(1 + e^z) without overflow.
__device__ __forceinline__ double softplus(double z) { return fmax(z, 0.0) + log1p(exp(-fabs(z))); }

// loss[0] = mean_b -log softmax(logits_b)[labels_b]; probs = softmax(logits), kept for backward.
extern "C" __global__ void softmax_ce_fwd_f32(float* __restrict__ loss, float* __restrict__ probs,
                                              const float* __restrict__ logits,
                                              const unsigned* __restrict__ labels, int rows, int k) {
    __shared__ double scratch[32];
    double total = 0.0;
    for (int r = threadIdx.x; r < rows; r += blockDim.x) {
        const float* l = logits + r * k;
        float mx = l[0];
        for (int j = 1; j < k; ++j) mx = fmaxf(mx, l[j]);
        double sum = 0.0;
        for (int j = 0; j < k; ++j) sum += exp((double)l[j] - mx);
        for (int j = 0; j < k; ++j) probs[r * k + j] = (float)(exp((double)l[j] - mx) / sum);
        total += -((double)l[labels[r]] - mx - log(sum));
    }
    total = block_sum(total, scratch);
    if (threadIdx.x == 0) loss[0] = (float)(total / rows);
}

// dlogits = (probs - onehot) * dloss / rows.
extern "C" __global__ void softmax_ce_bwd_f32(float* __restrict__ dlogits, const float* __restrict__ probs,
                                              const unsigned* __restrict__ labels,
                                              const float* __restrict__ dloss, int rows, int k) {
    const float scale = dloss[0] / (float)rows;
    const int n = rows * k;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += blockDim.x * gridDim.x) {
        const int r = i / k, j = i % k;
        dlogits[i] = (probs[i] - (labels[r] == (unsigned)j ? 1.0f : 0.0f)) * scale;
    }
}

// logits [rows, experts, 2]; loss[0] = mean over (b, n) of softplus(z) - t * z, z = l_True - l_False.
extern "C" __global__ void expert_bce_fwd_f32(float* __restrict__ loss, const float* __restrict__ logits,
                                              const unsigned* __restrict__ labels, int rows, int experts) {
    __shared__ double scratch[32];
    double total = 0.0;
    const int n = rows * experts;
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
        const double z = (double)logits[2 * i + 1] - (double)logits[2 * i];
        const double t = labels[i / experts] == (unsigned)(i % experts) ? 1.0 : 0.0;
        total += softplus(z) - t * z;
    }
    total = block_sum(total, scratch);
    if (threadIdx.x == 0) loss[0] = (float)(total / n);
}

extern "C" __global__ void expert_bce_bwd_f32(float* __restrict__ dlogits, const float* __restrict__ logits,
                                              const unsigned* __restrict__ labels,
                                              const float* __restrict__ dloss, int rows, int experts) {
    const int n = rows * experts;
    const double scale = (double)dloss[0] / n;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += blockDim.x * gridDim.x) {
        const double z = (double)logits[2 * i + 1] - (double)logits[2 * i];
        const double t = labels[i / experts] == (unsigned)(i % experts) ? 1.0 : 0.0;
        const double dz = (1.0 / (1.0 + exp(-z)) - t) * scale;
        dlogits[2 * i + 1] = (float)dz;
        dlogits[2 * i] = (float)-dz;
    }
}
