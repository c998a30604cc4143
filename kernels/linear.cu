// Grouped linear layer: y[b, g*O + o] = bias[g*O + o] + sum_i w[g*O + o, i] * x[b, g*I + i].
// Small (a classifier head), so one thread per output value with a plain loop; every sum runs
// in a fixed order.
#include "common.cuh"

extern "C" __global__ void grouped_linear_fwd_f32(float* __restrict__ y, const float* __restrict__ x,
                                                  const float* __restrict__ w, const float* __restrict__ bias,
                                                  int batch, int groups, int in_per_group, int out_per_group) {
    const int outs = groups * out_per_group, ins = groups * in_per_group;
    const int n = batch * outs;
    for (int idx = blockIdx.x * blockDim.x + threadIdx.x; idx < n; idx += blockDim.x * gridDim.x) {
        const int b = idx / outs, row = idx % outs, g = row / out_per_group;
        const float* xr = x + b * ins + g * in_per_group;
        const float* wr = w + row * in_per_group;
        float acc = 0.0f;
        for (int i = 0; i < in_per_group; ++i) acc += xr[i] * wr[i];
        y[idx] = bias[row] + acc;
    }
}

extern "C" __global__ void grouped_linear_bwd_data_f32(float* __restrict__ dx, const float* __restrict__ dy,
                                                       const float* __restrict__ w, int batch, int groups,
                                                       int in_per_group, int out_per_group) {
    const int outs = groups * out_per_group, ins = groups * in_per_group;
    const int n = batch * ins;
    for (int idx = blockIdx.x * blockDim.x + threadIdx.x; idx < n; idx += blockDim.x * gridDim.x) {
        const int b = idx / ins, col = idx % ins, g = col / in_per_group, i = col % in_per_group;
        float acc = 0.0f;
        for (int o = 0; o < out_per_group; ++o) {
            const int row = g * out_per_group + o;
            acc += dy[b * outs + row] * w[row * in_per_group + i];
        }
        dx[idx] = acc;
    }
}

// dw[row, i] = sum_b dy[b, row] * x[b, g*I + i]; the thread of i == 0 also sums the bias gradient.
extern "C" __global__ void grouped_linear_bwd_weight_f32(float* __restrict__ dw, float* __restrict__ dbias,
                                                         const float* __restrict__ dy,
                                                         const float* __restrict__ x, int batch, int groups,
                                                         int in_per_group, int out_per_group) {
    const int outs = groups * out_per_group, ins = groups * in_per_group;
    const int n = outs * in_per_group;
    for (int idx = blockIdx.x * blockDim.x + threadIdx.x; idx < n; idx += blockDim.x * gridDim.x) {
        const int row = idx / in_per_group, i = idx % in_per_group, g = row / out_per_group;
        float acc = 0.0f, bias_acc = 0.0f;
        for (int b = 0; b < batch; ++b) {
            const float d = dy[b * outs + row];
            acc += d * x[b * ins + g * in_per_group + i];
            bias_acc += d;
        }
        dw[idx] = acc;
        if (i == 0) dbias[row] = bias_acc;
    }
}
