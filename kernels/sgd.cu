// SGD with momentum, weight decay and optional Nesterov momentum (PyTorch's formulation):
// g' = g + wd * w; v = momentum * v + g'; step = nesterov ? g' + momentum * v : v; w -= lr * step.
#include "common.cuh"

// Every parameter of a model in one launch: table holds, per tensor, the addresses of w_out,
// v_out, w, v, g and the length (six 64-bit words); blockIdx.y is the tensor.
// When skip is set and *skip is nonzero (a non-finite loss or gradient was flagged there), w and
// v are copied out unchanged instead: the step is refused on the device, without a read-back.
// lr_at (null: lr) is where the learning rate is read on the device (a graph's replays change
// it there). w_out and v_out may be w and v themselves (in place).
extern "C" __global__ void sgd_update_f32(const unsigned long long* __restrict__ table, int count, float lr,
                                          float momentum, float weight_decay, int nesterov,
                                          const unsigned* __restrict__ skip, const float* __restrict__ lr_at) {
    const bool refused = skip != nullptr && *skip != 0u;
    if (lr_at != nullptr) lr = *lr_at;
    for (int t = blockIdx.y; t < count; t += gridDim.y) {
        const unsigned long long* e = table + 6 * t;
        float* w_out = reinterpret_cast<float*>(e[0]);  // not restrict: may be w (in place)
        float* v_out = reinterpret_cast<float*>(e[1]);
        const float* w = reinterpret_cast<const float*>(e[2]);
        const float* v = reinterpret_cast<const float*>(e[3]);
        const float* __restrict__ g = reinterpret_cast<const float*>(e[4]);
        const long long n = (long long)e[5];
        for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
             i += (long long)blockDim.x * gridDim.x) {
            if (refused) {
                w_out[i] = w[i];
                v_out[i] = v[i];
                continue;
            }
            const float grad = g[i] + weight_decay * w[i];
            const float vel = momentum * v[i] + grad;
            const float step = nesterov ? grad + momentum * vel : vel;
            v_out[i] = vel;
            w_out[i] = w[i] - lr * step;
        }
    }
}
