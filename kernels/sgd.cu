// SGD with momentum, weight decay and optional Nesterov momentum (PyTorch's formulation):
// g' = g + wd * w; v = momentum * v + g'; step = nesterov ? g' + momentum * v : v; w -= lr * step.
#include "common.cuh"

extern "C" __global__ void sgd_update_f32(float* __restrict__ w_out, float* __restrict__ v_out,
                                          const float* __restrict__ w, const float* __restrict__ v,
                                          const float* __restrict__ g, int n, float lr, float momentum,
                                          float weight_decay, int nesterov) {
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += blockDim.x * gridDim.x) {
        const float grad = g[i] + weight_decay * w[i];
        const float vel = momentum * v[i] + grad;
        const float step = nesterov ? grad + momentum * vel : vel;
        v_out[i] = vel;
        w_out[i] = w[i] - lr * step;
    }
}
