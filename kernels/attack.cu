// Adversarial attacks on images in [0, 1]: the random start inside the eps-ball and the fused
// projected-gradient step (step, projection onto the eps-ball around the clean image, clamp to
// [0, 1]). One block per image, since the L2 norms are per-image reductions; the reductions are
// block_sum's fixed order, so a step is deterministic.
#include "common.cuh"
#include "rng.cuh"

#define ATTACK_PURPOSE 7u  // Purpose::Attack in src/rng.rs

__device__ __forceinline__ float clamp01(float v) { return fminf(fmaxf(v, 0.0f), 1.0f); }

// The 4 uniform numbers of block `j` of image `image`'s stream for restart `restart`.
__device__ __forceinline__ Philox4 attack_block(unsigned long long seed, int image, int restart, int j) {
    const unsigned long long index = ((unsigned long long)(unsigned)restart << 32) | (unsigned)image;
    return philox_block(seed, ATTACK_PURPOSE, index, (unsigned)j);
}

// x_adv = clamp01(x + delta). kind 0: delta uniform in the L-infinity eps-ball, eps * (2u - 1)
// per value; kind 1: uniform in the L2 eps-ball's directions, a Gaussian direction (Box-Muller
// on the stream's uniforms, a pair per block word pair) scaled to the length eps * u, u the
// first word of block per_image / 2; kind 2: Gaussian, eps * N(0, 1) per value (TRADES).
// `image_index[b]` names image b's stream, so a start does not depend on the batch it is in.
extern "C" __global__ void attack_random_start_f32(float* __restrict__ x_adv, const float* __restrict__ x,
                                                   const int* __restrict__ image_index, int per_image,
                                                   float eps, int kind, unsigned long long seed, int restart) {
    __shared__ double scratch[32];
    const int b = blockIdx.x;
    const int image = image_index[b];
    const float* xb = x + (size_t)b * per_image;
    float* ob = x_adv + (size_t)b * per_image;
    if (kind == 0) {
        for (int j = threadIdx.x; j * 4 < per_image; j += blockDim.x) {
            const Philox4 r = attack_block(seed, image, restart, j);
            for (int k = 0; k < 4 && j * 4 + k < per_image; ++k) {
                const int i = j * 4 + k;
                ob[i] = clamp01(xb[i] + eps * (2.0f * philox_uniform(r.v[k]) - 1.0f));
            }
        }
        return;
    }
    // Gaussian values, two per pair of uniforms: block j gives values 4j .. 4j + 3.
    double sum_sq = 0.0;
    for (int j = threadIdx.x; j * 4 < per_image; j += blockDim.x) {
        const Philox4 r = attack_block(seed, image, restart, j);
        for (int k = 0; k < 4 && j * 4 + k < per_image; k += 2) {
            const float u1 = 1.0f - philox_uniform(r.v[k]);  // in (0, 1]: log is finite
            const float u2 = philox_uniform(r.v[k + 1]);
            const float radius = sqrtf(-2.0f * logf(u1));
            const float g0 = radius * cosf(6.28318530717958647692f * u2);
            const float g1 = radius * sinf(6.28318530717958647692f * u2);
            ob[j * 4 + k] = g0;
            sum_sq += (double)g0 * g0;
            if (j * 4 + k + 1 < per_image) {
                ob[j * 4 + k + 1] = g1;
                sum_sq += (double)g1 * g1;
            }
        }
    }
    if (kind == 2) {
        // Each thread scales the values it wrote itself.
        for (int j = threadIdx.x; j * 4 < per_image; j += blockDim.x)
            for (int k = 0; k < 4 && j * 4 + k < per_image; ++k) ob[j * 4 + k] = clamp01(xb[j * 4 + k] + eps * ob[j * 4 + k]);
        return;
    }
    __shared__ float scale;
    const double total = block_sum(sum_sq, scratch);
    if (threadIdx.x == 0) {
        const int last = (per_image + 3) / 4;
        const float u = philox_uniform(attack_block(seed, image, restart, last).v[0]);
        scale = total > 0.0 ? (float)((double)eps * u / sqrt(total)) : 0.0f;
    }
    __syncthreads();
    for (int i = threadIdx.x; i < per_image; i += blockDim.x) ob[i] = clamp01(xb[i] + scale * ob[i]);
}

// delta = v - x scaled down to length eps when longer (L2), or clipped to [-eps, eps] per value
// (L-infinity), then x + delta clamped to [0, 1]: the projection of APGD's two half-steps.
// `ob` holds v on entry and the projected point on exit; every thread touches the same indices
// in every loop, so the in-place passes need no barrier between them.
__device__ __forceinline__ void project_into_ball(float* ob, const float* xb, int per_image, float eps, int l2,
                                                  double* scratch, float* factor) {
    if (!l2) {
        for (int i = threadIdx.x; i < per_image; i += blockDim.x)
            ob[i] = clamp01(fminf(fmaxf(ob[i], xb[i] - eps), xb[i] + eps));
        return;
    }
    double d_sq = 0.0;
    for (int i = threadIdx.x; i < per_image; i += blockDim.x) {
        const float d = ob[i] - xb[i];
        ob[i] = d;
        d_sq += (double)d * d;
    }
    const double total = block_sum(d_sq, scratch);
    if (threadIdx.x == 0) *factor = total > (double)eps * eps ? (float)(eps / sqrt(total)) : 1.0f;
    __syncthreads();
    const float shrink = *factor;
    __syncthreads();
    for (int i = threadIdx.x; i < per_image; i += blockDim.x) ob[i] = clamp01(xb[i] + shrink * ob[i]);
}

// out = x_adv + size * dir(grad) for one image (every thread of the block calls it): dir the
// sign (L-infinity) or grad / |grad| (L2; no step where the gradient is zero). `scratch` and
// `factor` are the caller's shared memory.
__device__ __forceinline__ void take_step(float* out, const float* x_adv, const float* grad, int per_image, float size, int l2,
                                          double* scratch, float* factor) {
    if (l2) {
        double g_sq = 0.0;
        for (int i = threadIdx.x; i < per_image; i += blockDim.x) g_sq += (double)grad[i] * grad[i];
        const double g_total = block_sum(g_sq, scratch);
        if (threadIdx.x == 0) *factor = g_total > 0.0 ? (float)(size / sqrt(g_total)) : 0.0f;
        __syncthreads();
        size = *factor;
        __syncthreads();
    }
    for (int i = threadIdx.x; i < per_image; i += blockDim.x) {
        const float g = grad[i];
        out[i] = x_adv[i] + size * (l2 ? g : (g > 0.0f ? 1.0f : (g < 0.0f ? -1.0f : 0.0f)));
    }
}

// One projected-gradient step on every image: L-infinity, x_adv + alpha * sign(grad), then
// clipped to x +- eps; L2, x_adv + alpha * grad / |grad| (no step where the gradient is zero),
// then delta = x' - x scaled down to length eps when longer. Then clamped to [0, 1].
extern "C" __global__ void pgd_step_f32(float* __restrict__ out, const float* __restrict__ x_adv,
                                        const float* __restrict__ grad, const float* __restrict__ x,
                                        int per_image, float alpha, float eps, int l2) {
    __shared__ double scratch[32];
    __shared__ float factor;
    const size_t base = (size_t)blockIdx.x * per_image;
    const float* ab = x_adv + base;
    const float* gb = grad + base;
    const float* xb = x + base;
    float* ob = out + base;
    take_step(ob, ab, gb, per_image, alpha, l2, scratch, &factor);
    project_into_ball(ob, xb, per_image, eps, l2, scratch, &factor);
}

// One APGD step (Croce & Hein 2020) on every image b, with its own step size step[b]:
// z = P(x_adv + step[b] * dir(grad)), dir the sign (L-infinity) or grad / |grad| (L2, no step
// where the gradient is zero); then
// out = P(x_adv + momentum * (z - x_adv) + (1 - momentum) * (x_adv - x_prev)),
// P the projection onto the eps-ball around x and [0, 1].
extern "C" __global__ void apgd_step_f32(float* __restrict__ out, const float* __restrict__ x_adv,
                                         const float* __restrict__ x_prev, const float* __restrict__ grad,
                                         const float* __restrict__ x, const float* __restrict__ step,
                                         int per_image, float momentum, float eps, int l2) {
    __shared__ double scratch[32];
    __shared__ float factor;
    const size_t base = (size_t)blockIdx.x * per_image;
    const float* ab = x_adv + base;
    const float* pb = x_prev + base;
    const float* gb = grad + base;
    const float* xb = x + base;
    float* ob = out + base;
    take_step(ob, ab, gb, per_image, step[blockIdx.x], l2, scratch, &factor);
    project_into_ball(ob, xb, per_image, eps, l2, scratch, &factor);
    for (int i = threadIdx.x; i < per_image; i += blockDim.x)
        ob[i] = ab[i] + momentum * (ob[i] - ab[i]) + (1.0f - momentum) * (ab[i] - pb[i]);
    project_into_ball(ob, xb, per_image, eps, l2, scratch, &factor);
}

// out[b] = take[b] ? a[b] : b[b], per image.
extern "C" __global__ void select_images_f32(float* __restrict__ out, const float* __restrict__ a,
                                             const float* __restrict__ b, const int* __restrict__ take,
                                             int per_image) {
    const size_t base = (size_t)blockIdx.x * per_image;
    const float* src = (take[blockIdx.x] ? a : b) + base;
    for (int i = threadIdx.x; i < per_image; i += blockDim.x) out[base + i] = src[i];
}
