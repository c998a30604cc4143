// Global average pooling: [B, H, W, C] -> [B, C], and its backward.
#include "common.cuh"

// One thread per (b, c): threads of a warp read neighbouring channels of one pixel.
extern "C" __global__ void gap_fwd_f32(float* __restrict__ y, const float* __restrict__ x, int batch, int hw,
                                       int c) {
    const int n = batch * c;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += blockDim.x * gridDim.x) {
        const int b = i / c, ch = i % c;
        float sum = 0.0f;
        for (int p = 0; p < hw; ++p) sum += x[((long long)b * hw + p) * c + ch];
        y[i] = sum / (float)hw;
    }
}

extern "C" __global__ void gap_bwd_f32(float* __restrict__ dx, const float* __restrict__ dy, int batch, int hw,
                                       int c) {
    const long long n = (long long)batch * hw * c;
    for (long long i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += blockDim.x * gridDim.x) {
        const long long b = i / ((long long)hw * c);
        dx[i] = dy[b * c + i % c] / (float)hw;
    }
}
