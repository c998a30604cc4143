// Batch normalisation over the channels (last axis) of [rows, c] activations.
//
// Reductions are deterministic: bn_partial_sums_f64 writes one partial sum per part of the rows
// (in double), and the finalize kernels add the parts in order, like the CPU device does.
#include "bn_relu.cuh"
#include "common.cuh"

// The gradient that reaches batch norm's output: dy itself, or where a relu follows it (beta not
// null: batch norm's shift), dy where the relu passed its input and 0 where it clipped it, the
// decision recomputed from x (bn_relu.cuh) rather than read from the relu's output.
__device__ __forceinline__ float through_relu(const float* __restrict__ dy, long long i, float x, int ch,
                                              const float* __restrict__ mean, const float* __restrict__ inv_std,
                                              const float* __restrict__ gamma, const float* __restrict__ beta) {
    return (beta == nullptr || relu_passed(x, ch, mean, inv_std, gamma, beta)) ? dy[i] : 0.0f;
}

// grid (ceil(c / 32), parts), block (32, 8). partial: [parts][2][c].
// Statistics (dy == nullptr): s0 = sum x, s1 = sum x^2.
// Gradient: s0 = sum dy, s1 = sum dy * (x - mean) * inv_std, dy through the relu when
// relu_beta is set (with relu_gamma: batch norm's affine parameters).
extern "C" __global__ void bn_partial_sums_f64(double* __restrict__ partial, const float* __restrict__ x,
                                               const float* __restrict__ dy, const float* __restrict__ relu_gamma,
                                               const float* __restrict__ relu_beta, const float* __restrict__ mean,
                                               const float* __restrict__ inv_std, int rows, int c,
                                               int rows_per_part) {
    __shared__ double s0[8][32];
    __shared__ double s1[8][32];
    const int ch = blockIdx.x * 32 + threadIdx.x;
    const int part = blockIdx.y;
    const int begin = part * rows_per_part;
    const int end = min(rows, begin + rows_per_part);
    double a = 0.0, b = 0.0;
    if (ch < c) {
        for (int r = begin + threadIdx.y; r < end; r += 8) {
            const float v = x[(long long)r * c + ch];
            if (dy == nullptr) {
                a += v;
                b += (double)v * v;
            } else {
                const float g = through_relu(dy, (long long)r * c + ch, v, ch, mean, inv_std, relu_gamma, relu_beta);
                a += g;
                b += (double)(g * ((v - mean[ch]) * inv_std[ch]));
            }
        }
    }
    s0[threadIdx.y][threadIdx.x] = a;
    s1[threadIdx.y][threadIdx.x] = b;
    __syncthreads();
    if (threadIdx.y == 0 && ch < c) {
        double ta = 0.0, tb = 0.0;
        for (int k = 0; k < 8; ++k) {
            ta += s0[k][threadIdx.x];
            tb += s1[k][threadIdx.x];
        }
        partial[((long long)part * 2) * c + ch] = ta;
        partial[((long long)part * 2 + 1) * c + ch] = tb;
    }
}

// Batch statistics from the partial sums ([parts][2][c]: bn_partial_sums_f64's, or a forward
// convolution's, which sums its output as it writes it): mean, inv_std = 1/sqrt(var + eps) with
// the biased variance, and the unbiased variance for the running average. grid ceil(c / 32),
// block (32, 16): thread row y adds parts y, y + 16, ... in order (a convolution writes one part
// per tile of 128 or 256 rows, so up to thousands), then row 0 adds the 16 rows' sums in order.
extern "C" __global__ void bn_stats_finalize_f32(float* __restrict__ mean, float* __restrict__ inv_std,
                                                 float* __restrict__ var_unbiased,
                                                 const double* __restrict__ partial, int parts, int rows,
                                                 int c, float eps) {
    __shared__ double s0[16][32];
    __shared__ double s1[16][32];
    const int ch = blockIdx.x * 32 + threadIdx.x;
    double a = 0.0, b = 0.0;
    if (ch < c) {
        for (int p = threadIdx.y; p < parts; p += 16) {
            a += partial[((long long)p * 2) * c + ch];
            b += partial[((long long)p * 2 + 1) * c + ch];
        }
    }
    s0[threadIdx.y][threadIdx.x] = a;
    s1[threadIdx.y][threadIdx.x] = b;
    __syncthreads();
    if (threadIdx.y == 0 && ch < c) {
        double sum = 0.0, sum_sq = 0.0;
        for (int k = 0; k < 16; ++k) {
            sum += s0[k][threadIdx.x];
            sum_sq += s1[k][threadIdx.x];
        }
        const double m = sum / rows;
        double var = sum_sq / rows - m * m;
        if (var < 0.0) var = 0.0;
        const float var_f = (float)var;
        mean[ch] = (float)m;
        inv_std[ch] = 1.0f / sqrtf(var_f + eps);
        var_unbiased[ch] = var_f * ((float)rows / (float)(rows - 1));
    }
}

// Gradient sums from the partial sums: sum_dy (= dbeta) and sum_dy_xhat (= dgamma).
extern "C" __global__ void bn_grad_finalize_f32(float* __restrict__ sum_dy, float* __restrict__ sum_dy_xhat,
                                                const double* __restrict__ partial, int parts, int c) {
    for (int ch = blockIdx.x * blockDim.x + threadIdx.x; ch < c; ch += blockDim.x * gridDim.x) {
        double a = 0.0, b = 0.0;
        for (int p = 0; p < parts; ++p) {
            a += partial[(p * 2) * c + ch];
            b += partial[(p * 2 + 1) * c + ch];
        }
        sum_dy[ch] = (float)a;
        sum_dy_xhat[ch] = (float)b;
    }
}

extern "C" __global__ void bn_inv_std_f32(float* __restrict__ inv_std, const float* __restrict__ var,
                                          float eps, int c) {
    for (int ch = blockIdx.x * blockDim.x + threadIdx.x; ch < c; ch += blockDim.x * gridDim.x)
        inv_std[ch] = 1.0f / sqrtf(var[ch] + eps);
}

// y = (x - mean) * inv_std * gamma + beta, as one multiply-add per element (bn_relu.cuh), then
// relu(y) when relu is set (a NaN propagates, as in relu_fwd_f32).
extern "C" __global__ void bn_apply_f32(float* __restrict__ y, const float* __restrict__ x,
                                        const float* __restrict__ mean, const float* __restrict__ inv_std,
                                        const float* __restrict__ gamma, const float* __restrict__ beta, int n,
                                        int c, int relu) {
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += blockDim.x * gridDim.x) {
        const int ch = i % c;
        const float scale = bn_scale(gamma[ch], inv_std[ch]);
        const float v = bn_normalised(x[i], scale, bn_shift(beta[ch], mean[ch], scale));
        y[i] = relu ? relu_of(v) : v;
    }
}

// Training mode: dx = gamma * inv_std * (dy - mean(dy) - xhat * mean(dy * xhat)), dy through
// the relu when relu_beta is set.
extern "C" __global__ void bn_train_bwd_dx_f32(float* __restrict__ dx, const float* __restrict__ dy,
                                               const float* __restrict__ relu_beta, const float* __restrict__ x,
                                               const float* __restrict__ mean,
                                               const float* __restrict__ inv_std,
                                               const float* __restrict__ gamma,
                                               const float* __restrict__ sum_dy,
                                               const float* __restrict__ sum_dy_xhat, int n, int c, int rows) {
    const float inv_rows = 1.0f / (float)rows;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += blockDim.x * gridDim.x) {
        const int ch = i % c;
        const float xhat = (x[i] - mean[ch]) * inv_std[ch];
        const float g = through_relu(dy, i, x[i], ch, mean, inv_std, gamma, relu_beta);
        dx[i] = gamma[ch] * inv_std[ch] * (g - sum_dy[ch] * inv_rows - xhat * (sum_dy_xhat[ch] * inv_rows));
    }
}

// Evaluation mode: a fixed affine map (the running mean), dx = dy * gamma * inv_std, dy through
// the relu when relu_beta is set (x and mean are read only then).
extern "C" __global__ void bn_eval_bwd_dx_f32(float* __restrict__ dx, const float* __restrict__ dy,
                                              const float* __restrict__ relu_beta, const float* __restrict__ x,
                                              const float* __restrict__ mean, const float* __restrict__ inv_std,
                                              const float* __restrict__ gamma, int n, int c) {
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += blockDim.x * gridDim.x) {
        const int ch = i % c;
        const float x_i = relu_beta == nullptr ? 0.0f : x[i];
        dx[i] = through_relu(dy, i, x_i, ch, mean, inv_std, gamma, relu_beta) * (gamma[ch] * inv_std[ch]);
    }
}

// The per-channel coefficients of relu(batch_norm(x)) that a convolution applies as it reads x
// (ChannelMap): scale = gamma * inv_std, shift = beta - mean * scale.
extern "C" __global__ void bn_relu_coefficients_f32(float* __restrict__ scale, float* __restrict__ shift,
                                                    const float* __restrict__ mean,
                                                    const float* __restrict__ inv_std,
                                                    const float* __restrict__ gamma,
                                                    const float* __restrict__ beta, int c) {
    for (int ch = blockIdx.x * blockDim.x + threadIdx.x; ch < c; ch += blockDim.x * gridDim.x) {
        const float s = bn_scale(gamma[ch], inv_std[ch]);
        scale[ch] = s;
        shift[ch] = bn_shift(beta[ch], mean[ch], s);
    }
}
