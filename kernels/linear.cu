// Grouped linear layer: y[b, g*O + o] = bias[g*O + o] + sum_i w[g*O + o, i] * x[b, g*I + i].
// Small (a classifier head), so one thread per output value with a plain loop; every sum runs
// in a fixed order. The _bf16 kernels round the products' operands to bf16 (--precision bf16)
// and accumulate in f32 like the _f32 ones; the bias and its gradient stay f32.
#include "bf16.cuh"
#include "common.cuh"

// A product's operand in precision P (false: f32, true: bf16).
template <bool BF16>
__device__ __forceinline__ float operand(float v) {
    return BF16 ? bf16_bits_to_float(bf16_bits(v)) : v;
}

template <bool BF16>
__device__ void linear_fwd(float* __restrict__ y, const float* __restrict__ x, const float* __restrict__ w,
                           const float* __restrict__ bias, int batch, int groups, int in_per_group,
                           int out_per_group) {
    const int outs = groups * out_per_group, ins = groups * in_per_group;
    const int n = batch * outs;
    for (int idx = blockIdx.x * blockDim.x + threadIdx.x; idx < n; idx += blockDim.x * gridDim.x) {
        const int b = idx / outs, row = idx % outs, g = row / out_per_group;
        const float* xr = x + b * ins + g * in_per_group;
        const float* wr = w + row * in_per_group;
        float acc = 0.0f;
        for (int i = 0; i < in_per_group; ++i) acc += operand<BF16>(xr[i]) * operand<BF16>(wr[i]);
        y[idx] = bias[row] + acc;
    }
}

template <bool BF16>
__device__ void linear_bwd_data(float* __restrict__ dx, const float* __restrict__ dy, const float* __restrict__ w,
                                int batch, int groups, int in_per_group, int out_per_group) {
    const int outs = groups * out_per_group, ins = groups * in_per_group;
    const int n = batch * ins;
    for (int idx = blockIdx.x * blockDim.x + threadIdx.x; idx < n; idx += blockDim.x * gridDim.x) {
        const int b = idx / ins, col = idx % ins, g = col / in_per_group, i = col % in_per_group;
        float acc = 0.0f;
        for (int o = 0; o < out_per_group; ++o) {
            const int row = g * out_per_group + o;
            acc += operand<BF16>(dy[b * outs + row]) * operand<BF16>(w[row * in_per_group + i]);
        }
        dx[idx] = acc;
    }
}

// dw[row, i] = sum_b dy[b, row] * x[b, g*I + i]; the thread of i == 0 also sums the bias gradient.
template <bool BF16>
__device__ void linear_bwd_weight(float* __restrict__ dw, float* __restrict__ dbias, const float* __restrict__ dy,
                                  const float* __restrict__ x, int batch, int groups, int in_per_group,
                                  int out_per_group) {
    const int outs = groups * out_per_group, ins = groups * in_per_group;
    const int n = outs * in_per_group;
    for (int idx = blockIdx.x * blockDim.x + threadIdx.x; idx < n; idx += blockDim.x * gridDim.x) {
        const int row = idx / in_per_group, i = idx % in_per_group, g = row / out_per_group;
        float acc = 0.0f, bias_acc = 0.0f;
        for (int b = 0; b < batch; ++b) {
            const float d = dy[b * outs + row];
            acc += operand<BF16>(d) * operand<BF16>(x[b * ins + g * in_per_group + i]);
            bias_acc += d;
        }
        dw[idx] = acc;
        if (i == 0) dbias[row] = bias_acc;
    }
}

extern "C" __global__ void grouped_linear_fwd_f32(float* y, const float* x, const float* w, const float* bias,
                                                   int batch, int groups, int in_per_group, int out_per_group) {
    linear_fwd<false>(y, x, w, bias, batch, groups, in_per_group, out_per_group);
}

extern "C" __global__ void grouped_linear_bwd_data_f32(float* dx, const float* dy, const float* w, int batch,
                                                        int groups, int in_per_group, int out_per_group) {
    linear_bwd_data<false>(dx, dy, w, batch, groups, in_per_group, out_per_group);
}

extern "C" __global__ void grouped_linear_bwd_weight_f32(float* dw, float* dbias, const float* dy, const float* x,
                                                          int batch, int groups, int in_per_group,
                                                          int out_per_group) {
    linear_bwd_weight<false>(dw, dbias, dy, x, batch, groups, in_per_group, out_per_group);
}

extern "C" __global__ void grouped_linear_fwd_bf16(float* y, const float* x, const float* w, const float* bias,
                                                   int batch, int groups, int in_per_group, int out_per_group) {
    linear_fwd<true>(y, x, w, bias, batch, groups, in_per_group, out_per_group);
}

extern "C" __global__ void grouped_linear_bwd_data_bf16(float* dx, const float* dy, const float* w, int batch,
                                                        int groups, int in_per_group, int out_per_group) {
    linear_bwd_data<true>(dx, dy, w, batch, groups, in_per_group, out_per_group);
}

extern "C" __global__ void grouped_linear_bwd_weight_bf16(float* dw, float* dbias, const float* dy, const float* x,
                                                          int batch, int groups, int in_per_group,
                                                          int out_per_group) {
    linear_bwd_weight<true>(dw, dbias, dy, x, batch, groups, in_per_group, out_per_group);
}
