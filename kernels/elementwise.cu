// Element-wise ops: relu, add, scale, linear interpolation, and column copies (concatenation
// along the last axis and its inverse). One thread per element, grid-stride loops.
#include "bf16.cuh"
#include "common.cuh"

extern "C" __global__ void relu_fwd_f32(float* __restrict__ y, const float* __restrict__ x, int n) {
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += blockDim.x * gridDim.x) {
        const float v = x[i];
        y[i] = v < 0.0f ? 0.0f : v;  // a NaN propagates, as on the CPU device
    }
}

// The output's sign pattern is the derivative.
extern "C" __global__ void relu_bwd_f32(float* __restrict__ dx, const float* __restrict__ dy,
                                        const float* __restrict__ y, int n) {
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += blockDim.x * gridDim.x)
        dx[i] = y[i] > 0.0f ? dy[i] : 0.0f;
}

extern "C" __global__ void add_f32(float* __restrict__ y, const float* __restrict__ a,
                                   const float* __restrict__ b, int n) {
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += blockDim.x * gridDim.x)
        y[i] = a[i] + b[i];
}

extern "C" __global__ void scale_f32(float* __restrict__ y, const float* __restrict__ x, float s, int n) {
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += blockDim.x * gridDim.x)
        y[i] = x[i] * s;
}

// y = (1 - t) * a + t * b (running statistics).
extern "C" __global__ void lerp_f32(float* __restrict__ y, const float* __restrict__ a,
                                    const float* __restrict__ b, float t, int n) {
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += blockDim.x * gridDim.x)
        y[i] = (1.0f - t) * a[i] + t * b[i];
}

// dst[r, dst_offset + j] = src[r, src_offset + j] for r < rows, j < width (row strides given).
extern "C" __global__ void copy_columns_f32(float* __restrict__ dst, int dst_stride, int dst_offset,
                                            const float* __restrict__ src, int src_stride,
                                            int src_offset, int rows, int width) {
    const int n = rows * width;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += blockDim.x * gridDim.x) {
        const int r = i / width, j = i % width;
        dst[r * dst_stride + dst_offset + j] = src[r * src_stride + src_offset + j];
    }
}

// y[b, c, r] = x[b, r, c] for b < batches, r < rows, c < cols: the filter layouts OIHW <-> OHWI
// (b = O; rows x cols = I x HW one way, HW x I back) for cuDNN's NHWC filters.
extern "C" __global__ void transpose_batched_f32(float* __restrict__ y, const float* __restrict__ x,
                                                 int batches, int rows, int cols) {
    const int per = rows * cols, n = batches * per;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += blockDim.x * gridDim.x) {
        const int b = i / per, k = i % per, r = k / cols, c = k % cols;
        y[b * per + c * rows + r] = x[i];
    }
}

// y = x rounded to bf16 (its bits), and back: the operands and results of cuDNN's bf16 mode.
extern "C" __global__ void round_to_bf16(unsigned short* __restrict__ y, const float* __restrict__ x, int n) {
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += blockDim.x * gridDim.x)
        y[i] = static_cast<unsigned short>(bf16_bits(x[i]));
}

extern "C" __global__ void widen_bf16(float* __restrict__ y, const unsigned short* __restrict__ x, int n) {
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += blockDim.x * gridDim.x)
        y[i] = bf16_bits_to_float(x[i]);
}

// flag[0] becomes nonzero when any element of the tensors is infinite or NaN (exponent bits all
// ones). table holds (address, length) of each of `count` tensors; blockIdx.y is the tensor, so
// one launch checks them all (a training step checks every parameter, gradient and buffer).
extern "C" __global__ void flag_nonfinite_f32(unsigned* __restrict__ flag, const unsigned long long* __restrict__ table,
                                              int count) {
    for (int t = blockIdx.y; t < count; t += gridDim.y) {
        const float* x = reinterpret_cast<const float*>(table[2 * t]);
        const long long n = (long long)table[2 * t + 1];
        bool bad = false;
        for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
             i += (long long)blockDim.x * gridDim.x)
            bad |= (__float_as_uint(x[i]) & 0x7f800000u) == 0x7f800000u;
        if (bad) atomicOr(flag, 1u);
    }
}

// dst = src unless *flag is set: a training step's new running statistics, written over the
// old ones in place unless the step was refused (a graph's replay keeps its tensors' addresses).
extern "C" __global__ void copy_unless_flagged_f32(float* __restrict__ dst, const float* __restrict__ src,
                                                   const unsigned* __restrict__ flag, int n) {
    if (*flag != 0u) return;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += blockDim.x * gridDim.x) dst[i] = src[i];
}
