// The noise corruptions (CORRUPTIONS.md §3.1-3.4): gaussian, shot (Poisson), impulse (salt and
// pepper) and speckle noise, each an independent draw per element of x = in / 255 (float64),
// then np.uint8(clip(., 0, 1) * 255).
//
// Random draws: element e (= 3 * pixel + channel) owns Philox block e of the image's stream,
// so the result does not depend on the thread layout. The normal noises draw a Box-Muller pair
// per block, so elements 2q and 2q+1 share block q. The Poisson sampler's rejection loop takes
// its further attempts from blocks e + 3072 * attempt.
#include "corrupt_common.cuh"

namespace corrupt_noise_detail {

// Poisson means below this use inversion; from it on, transformed rejection (PTRS). numpy
// switches at the same mean, though the distribution is all that has to match.
constexpr double ptrs_min_mean = 10.0;
// Caps that only matter if rounding stalls a loop (probability far below 1e-15).
constexpr int inversion_max_k = 100;
constexpr unsigned ptrs_max_attempts = 64;

// log(k!) for integer k >= 0: a direct sum below 10, else Stirling's series for lgamma(k + 1)
// (error < 1e-10 there). Written out because libm's lgamma writes the global `signgam`.
__device__ __forceinline__ double log_factorial(double k) {
    if (k < 10.0) {
        double s = 0.0;
        for (int i = 2; i <= (int)k; ++i) s += log((double)i);
        return s;
    }
    const double x = k + 1.0;
    const double inv = 1.0 / x, inv2 = inv * inv;
    return (x - 0.5) * log(x) - x + 0.91893853320467274178 +
           inv * (1.0 / 12.0 - inv2 * (1.0 / 360.0 - inv2 * (1.0 / 1260.0)));
}

// Poisson(mean) by sequential inversion of the CDF with one uniform.
__device__ __forceinline__ double poisson_inversion(double mean, double u) {
    double p = exp(-mean), cdf = p;
    int k = 0;
    while (u > cdf && k < inversion_max_k) {
        ++k;
        p *= mean / k;
        cdf += p;
    }
    return (double)k;
}

// Poisson(mean), mean >= 10, by Hormann's transformed rejection with squeeze (PTRS, 1993);
// each attempt takes one Philox block (two 53-bit uniforms), acceptance is above 90%.
__device__ double poisson_ptrs(double mean, CorruptionKey key, unsigned element) {
    const double root = sqrt(mean), log_mean = log(mean);
    const double b = 0.931 + 2.53 * root;
    const double a = -0.059 + 0.02483 * b;
    const double log_inv_alpha = log(1.1239 + 1.1328 / (b - 3.4));
    const double v_r = 0.9277 - 3.6224 / (b - 2.0);
    double k = mean;  // only if every attempt were rejected
    for (unsigned attempt = 0; attempt < ptrs_max_attempts; ++attempt) {
        const Philox4 r = corruption_block(key, element + attempt * CORRUPT_LEN);
        const double u = uniform_f64(r.v[0], r.v[1]) - 0.5;
        const double v = uniform_f64(r.v[2], r.v[3]);
        const double us = 0.5 - fabs(u);
        const double candidate = floor((2.0 * a / us + b) * u + mean + 0.43);
        if (us >= 0.07 && v <= v_r) return candidate;  // the squeeze: accepted outright
        if (candidate < 0.0 || (us < 0.013 && v > us)) continue;
        if (log(v) + log_inv_alpha - log(a / (us * us) + b) <=
            -mean + candidate * log_mean - log_factorial(candidate)) {
            return candidate;
        }
        k = candidate;
    }
    return k;
}

// Additive (gaussian) or multiplicative (speckle) normal noise of standard deviation sigma.
__device__ __forceinline__ void normal_noise(float* __restrict__ out, const float* __restrict__ in,
                                             double sigma, bool multiplicative, CorruptionKey key) {
    const float* x = in + (size_t)blockIdx.x * CORRUPT_LEN;
    float* y = out + (size_t)blockIdx.x * CORRUPT_LEN;
    for (int q = threadIdx.x; q < CORRUPT_LEN / 2; q += blockDim.x) {
        double z[2];
        normal_pair_f64(corruption_block(key, q), &z[0], &z[1]);
        for (int j = 0; j < 2; ++j) {
            const double v = (double)x[2 * q + j] / 255.0;
            const double noise = sigma * z[j];
            y[2 * q + j] = trunc_unit_to_u8(multiplicative ? v + v * noise : v + noise);
        }
    }
}

}  // namespace corrupt_noise_detail

// out = clip(x + N(0, sigma^2)) (§3.1).
extern "C" __global__ void corrupt_gaussian_noise(float* __restrict__ out, const float* __restrict__ in,
                                                  double sigma, int corruption,
                                                  int severity, unsigned long long seed,
                                                  unsigned long long first_image) {
    const CorruptionKey key = corruption_key(seed, first_image + blockIdx.x, corruption, severity);
    corrupt_noise_detail::normal_noise(out, in, sigma, false, key);
}

// out = clip(x + x * N(0, sigma^2)) (§3.4): multiplicative.
extern "C" __global__ void corrupt_speckle_noise(float* __restrict__ out, const float* __restrict__ in,
                                                 double sigma, int corruption,
                                                 int severity, unsigned long long seed,
                                                 unsigned long long first_image) {
    const CorruptionKey key = corruption_key(seed, first_image + blockIdx.x, corruption, severity);
    corrupt_noise_detail::normal_noise(out, in, sigma, true, key);
}

// out = clip(Poisson(x * photons) / photons) (§3.2), photons = c of the severity table.
extern "C" __global__ void corrupt_shot_noise(float* __restrict__ out, const float* __restrict__ in,
                                              double photons, int corruption, int severity,
                                              unsigned long long seed, unsigned long long first_image) {
    using namespace corrupt_noise_detail;
    const CorruptionKey key = corruption_key(seed, first_image + blockIdx.x, corruption, severity);
    const float* x = in + (size_t)blockIdx.x * CORRUPT_LEN;
    float* y = out + (size_t)blockIdx.x * CORRUPT_LEN;
    for (int e = threadIdx.x; e < CORRUPT_LEN; e += blockDim.x) {
        const double mean = (double)x[e] / 255.0 * photons;
        double count;
        if (mean >= ptrs_min_mean) {
            count = poisson_ptrs(mean, key, (unsigned)e);
        } else {
            const Philox4 r = corruption_block(key, (unsigned)e);
            count = poisson_inversion(mean, uniform_f64(r.v[0], r.v[1]));
        }
        y[e] = trunc_unit_to_u8(count / photons);
    }
}

// skimage random_noise(mode='s&p', amount) (§3.3): each element flips with probability amount
// (uniform <= amount, as skimage compares), then becomes 1 or 0 with equal odds; two
// independent uniforms per element, so the impulses are coloured, not grey.
extern "C" __global__ void corrupt_impulse_noise(float* __restrict__ out, const float* __restrict__ in,
                                                 double amount, int corruption,
                                                 int severity, unsigned long long seed,
                                                 unsigned long long first_image) {
    const CorruptionKey key = corruption_key(seed, first_image + blockIdx.x, corruption, severity);
    const float* x = in + (size_t)blockIdx.x * CORRUPT_LEN;
    float* y = out + (size_t)blockIdx.x * CORRUPT_LEN;
    for (int e = threadIdx.x; e < CORRUPT_LEN; e += blockDim.x) {
        const Philox4 r = corruption_block(key, (unsigned)e);
        const bool flipped = uniform_f64(r.v[0], r.v[1]) <= amount;
        const bool salted = uniform_f64(r.v[2], r.v[3]) <= 0.5;
        // Unflipped elements still go through x / 255 * 255, which gives back every k exactly.
        y[e] = flipped ? (salted ? 255.0f : 0.0f) : trunc_unit_to_u8((double)x[e] / 255.0);
    }
}
