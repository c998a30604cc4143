// The MoCSE aggregator: expert logits [B, N, 2] -> class scores [B, N].
// mode 0 (prob): sigmoid(l_True - l_False); mode 1 (logodds): l_True - l_False.
#include "common.cuh"

extern "C" __global__ void aggregate_fwd_f32(float* __restrict__ scores, const float* __restrict__ logits,
                                             int n, int mode) {
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += blockDim.x * gridDim.x) {
        const float z = logits[2 * i + 1] - logits[2 * i];
        scores[i] = mode == 0 ? 1.0f / (1.0f + expf(-z)) : z;
    }
}

extern "C" __global__ void aggregate_bwd_f32(float* __restrict__ dlogits, const float* __restrict__ dscores,
                                             const float* __restrict__ scores, int n, int mode) {
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += blockDim.x * gridDim.x) {
        const float s = scores[i];
        const float dz = mode == 0 ? dscores[i] * s * (1.0f - s) : dscores[i];
        dlogits[2 * i + 1] = dz;
        dlogits[2 * i] = -dz;
    }
}
