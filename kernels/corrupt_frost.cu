// Frost (CORRUPTIONS.md §3.11): one of five frost photographs, subsampled 5x, is cropped at a
// random 32x32 window and added to the image on the 0..255 scale:
//     out = trunc(clip(img_coef * x + frost_coef * crop, 0, 255)), in float64 as numpy does.
#include "corrupt_common.cuh"

namespace corrupt_frost_detail {

// randint(0, n) of the reference: uniform on 0..n-1, from the 53-bit uniform of two words
// (the clamp only guards against a product that rounds up to n).
__device__ __forceinline__ int uniform_below(unsigned lo, unsigned hi, int n) {
    const int k = (int)(uniform_f64(lo, hi) * (double)n);
    return k < n ? k : n - 1;
}

}  // namespace corrupt_frost_detail

// textures: the subsampled textures, HWC RGB bytes, one after another. layout[3 t + 0, 1, 2]:
// byte offset, width and height of texture t.
// Draws (each thread makes them all, from the same two Philox blocks, so no thread has to
// share them): block 0 words 0-1 the texture, words 2-3 the first row, block 1 words 0-1 the
// first column.
extern "C" __global__ void corrupt_frost(float* __restrict__ out, const float* __restrict__ in,
                                         const unsigned char* __restrict__ textures,
                                         const int* __restrict__ layout, int num_textures,
                                         double img_coef,
                                         double frost_coef, int corruption, int severity,
                                         unsigned long long seed, unsigned long long first_image) {
    using namespace corrupt_frost_detail;
    const CorruptionKey key = corruption_key(seed, first_image + blockIdx.x, corruption, severity);
    const Philox4 r0 = corruption_block(key, 0);
    const Philox4 r1 = corruption_block(key, 1);
    const int t = uniform_below(r0.v[0], r0.v[1], num_textures);
    const int offset = layout[3 * t], width = layout[3 * t + 1], height = layout[3 * t + 2];
    // randint(0, H - 32): the upper bound is exclusive, so the last row/column is never used.
    const int row0 = uniform_below(r0.v[2], r0.v[3], height - CORRUPT_SIZE);
    const int col0 = uniform_below(r1.v[0], r1.v[1], width - CORRUPT_SIZE);
    const unsigned char* crop = textures + offset + 3 * (row0 * width + col0);

    const float* x = in + (size_t)blockIdx.x * CORRUPT_LEN;
    float* y = out + (size_t)blockIdx.x * CORRUPT_LEN;
    for (int i = threadIdx.x; i < CORRUPT_LEN; i += blockDim.x) {
        const int pixel = i / 3, channel = i - 3 * pixel;
        const int row = pixel / CORRUPT_SIZE, col = pixel % CORRUPT_SIZE;
        const double f = (double)crop[3 * (row * width + col) + channel];
        y[i] = trunc_u8(__dmul_rn(img_coef, (double)x[i]) + __dmul_rn(frost_coef, f));
    }
}
