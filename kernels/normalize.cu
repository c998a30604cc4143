// Input normalisation per channel (the last axis): y = (x - mean[c]) / std[c], and its backward.
#include "common.cuh"

extern "C" __global__ void normalize_fwd_f32(float* __restrict__ y, const float* __restrict__ x,
                                             const float* __restrict__ mean,
                                             const float* __restrict__ stddev, int n, int c) {
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += blockDim.x * gridDim.x) {
        const int ch = i % c;
        y[i] = (x[i] - mean[ch]) * (1.0f / stddev[ch]);
    }
}

extern "C" __global__ void normalize_bwd_f32(float* __restrict__ dx, const float* __restrict__ dy,
                                             const float* __restrict__ stddev, int n, int c) {
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += blockDim.x * gridDim.x)
        dx[i] = dy[i] * (1.0f / stddev[i % c]);
}
