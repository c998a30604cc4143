// Shared by the corruption kernels (corrupt_*.cu): image layout, the random streams keyed by
// (seed, image, corruption, severity), and the reference generator's final uint8 truncation.
//
// Images are float arrays of shape (n, 32, 32, 3), NHWC, RGB, holding integer values 0..255
// (the uint8 data widened), in and out. Launch: one block per image (blockIdx.x = image within
// the batch), any blockDim.x that is a multiple of 32; kernels loop over pixels with a
// block-stride loop, so the emulator may run fewer threads per block than a GPU.
#pragma once
#include "common.cuh"
#include "rng.cuh"

#define CORRUPT_SIZE 32
#define CORRUPT_PIXELS (CORRUPT_SIZE * CORRUPT_SIZE)
#define CORRUPT_LEN (CORRUPT_PIXELS * 3)

// Purpose::Corruption of src/rng.rs.
#define PURPOSE_CORRUPTION 6u

// The stream of one image: Philox index = (global image index << 16) | (corruption << 8) |
// severity, so each (seed, image, corruption, severity) has its own stream and a batch split
// differently draws the same numbers. `block` selects a 4-word block within the stream; kernels
// give each random draw site its own block numbers so threads draw independently.
struct CorruptionKey {
    unsigned long long seed;
    unsigned long long index;
};

__device__ __forceinline__ CorruptionKey corruption_key(unsigned long long seed, unsigned long long image,
                                                        int corruption, int severity) {
    CorruptionKey k;
    k.seed = seed;
    k.index = (image << 16) | ((unsigned long long)corruption << 8) | (unsigned long long)severity;
    return k;
}

__device__ __forceinline__ Philox4 corruption_block(CorruptionKey k, unsigned block) {
    return philox_block(k.seed, PURPOSE_CORRUPTION, k.index, block);
}

// Uniform in [0, 1) with 53 bits from two words (lo, hi), as Philox::uniform_f64.
__device__ __forceinline__ double uniform_f64(unsigned lo, unsigned hi) {
    const unsigned long long x = ((unsigned long long)hi << 32) | lo;
    return (double)(x >> 11) * (1.0 / 9007199254740992.0);
}

// Two independent standard normals (Box-Muller, both branches) from the four words of a block.
__device__ __forceinline__ void normal_pair_f64(Philox4 r, double* z0, double* z1) {
    const double u1 = 1.0 - uniform_f64(r.v[0], r.v[1]);  // (0, 1]: the logarithm is finite
    const double u2 = uniform_f64(r.v[2], r.v[3]);
    const double radius = sqrt(-2.0 * log(u1));
    const double angle = 6.283185307179586 * u2;
    *z0 = radius * cos(angle);
    *z1 = radius * sin(angle);
}

// np.uint8(clip(v, 0, 1) * 255) of the reference: truncation toward zero, not rounding.
__device__ __forceinline__ float trunc_unit_to_u8(double v) {
    v = v < 0.0 ? 0.0 : (v > 1.0 ? 1.0 : v);
    return (float)(int)(v * 255.0);
}

// np.uint8(v) for v already on the 0..255 scale (clipped first).
__device__ __forceinline__ float trunc_u8(double v) {
    v = v < 0.0 ? 0.0 : (v > 255.0 ? 255.0 : v);
    return (float)(int)v;
}

// Edge-replicating index clamp (scipy mode 'nearest', ImageMagick's edge virtual pixels).
__device__ __forceinline__ int clamp_index(int i, int n) { return i < 0 ? 0 : (i >= n ? n - 1 : i); }

// OpenCV BORDER_REFLECT_101 (gfedcb|abcdefgh|gfedcba); valid for |overshoot| < n.
__device__ __forceinline__ int reflect101_index(int i, int n) {
    if (i < 0) i = -i;
    if (i >= n) i = 2 * n - 2 - i;
    return i;
}

// scipy mode 'reflect' (half-sample symmetric: dcba|abcd|dcba); valid for |overshoot| <= n.
__device__ __forceinline__ int reflect_index(int i, int n) {
    if (i < 0) i = -i - 1;
    if (i >= n) i = 2 * n - 1 - i;
    return i;
}
