// fog (CORRUPTIONS.md §3.12): a plasma fractal (diamond-square on a 32x32 torus, mapsize 32)
// scaled to [0, 1], added to every channel, then the image rescaled by max / (max + strength).
// float64 throughout, as the reference.
//
// One block per image; the map lives in shared memory. The 1023 uniforms are numbered in the
// reference's draw order (per level: squares, first diamonds, second diamonds, each in C order
// over its grid) and uniform i comes from words 2 (i % 2) and 2 (i % 2) + 1 of Philox block i / 2,
// so any thread may draw any of them.
#include "corrupt_common.cuh"

namespace corrupt_fog_detail {

constexpr int kMapSize = CORRUPT_SIZE;

__device__ __forceinline__ double uniform_draw(CorruptionKey key, int i) {
    const Philox4 r = corruption_block(key, (unsigned)(i >> 1));
    const int w = (i & 1) * 2;
    return uniform_f64(r.v[w], r.v[w + 1]);
}

// The reference's wibbledmean: sum / 4 + wibble * U(-wibble, wibble), with numpy's uniform
// low + (high - low) * u. The noise amplitude is wibble squared (wibble is applied twice).
__device__ __forceinline__ double wibbled_mean(double sum, double wibble, double u) {
    return sum / 4.0 + wibble * (-wibble + (2.0 * wibble) * u);
}

}  // namespace corrupt_fog_detail

// out, in: (n, 32, 32, 3). strength: the fractal's weight; wibble_decay: the noise amplitude's
// divisor per level (the severity's pair).
extern "C" __global__ void corrupt_fog(float* __restrict__ out, const float* __restrict__ in,
                                      double strength, double wibble_decay,
                                      unsigned long long seed, unsigned long long first_image, int corruption,
                                      int severity) {
    using namespace corrupt_fog_detail;
    __shared__ double map[kMapSize * kMapSize];
    __shared__ double partial_min[32], partial_max[32], partial_image_max[32];
    const CorruptionKey key = corruption_key(seed, first_image + blockIdx.x, corruption, severity);
    const float* img = in + (long long)blockIdx.x * CORRUPT_LEN;
    float* dst = out + (long long)blockIdx.x * CORRUPT_LEN;

    if (threadIdx.x == 0) map[0] = 0.0;
    __syncthreads();
    double wibble = 100.0;
    int first_draw = 0;
    for (int step = kMapSize; step >= 2; step >>= 1) {
        const int n = kMapSize / step, half = step / 2, cells = n * n;
        auto at = [&](int row, int col) -> double& {
            return map[(row & (kMapSize - 1)) * kMapSize + (col & (kMapSize - 1))];
        };
        // Squares: each cell centre gets the mean of its 4 corners, summed as the reference does
        // ((c[i,j] + c[i+1,j]) + (c[i,j+1] + c[i+1,j+1])), neighbours wrapping around.
        for (int k = threadIdx.x; k < cells; k += blockDim.x) {
            const int r = (k / n) * step, c = (k % n) * step;
            const double sum = (at(r, c) + at(r + step, c)) + (at(r, c + step) + at(r + step, c + step));
            at(r + half, c + half) = wibbled_mean(sum, wibble, uniform_draw(key, first_draw + k));
        }
        __syncthreads();
        // Diamonds, both sets at once (each reads only corners and centres): the top edge
        // midpoints (vertical centres + horizontal corners), then the left edge midpoints
        // (horizontal centres + vertical corners).
        for (int k = threadIdx.x; k < 2 * cells; k += blockDim.x) {
            const int cell = k % cells;
            const int r = (cell / n) * step, c = (cell % n) * step;
            double sum;
            if (k < cells) {
                sum = (at(r + half, c + half) + at(r - half, c + half)) + (at(r, c) + at(r, c + step));
                at(r, c + half) = wibbled_mean(sum, wibble, uniform_draw(key, first_draw + cells + k));
            } else {
                sum = (at(r + half, c + half) + at(r + half, c - half)) + (at(r, c) + at(r + step, c));
                at(r + half, c) = wibbled_mean(sum, wibble, uniform_draw(key, first_draw + cells + k));
            }
        }
        __syncthreads();
        first_draw += 3 * cells;
        wibble /= wibble_decay;
    }

    // The map's min and max and the image's max: the first warp reduces strided slices, then
    // every thread combines the 32 partial results.
    if (threadIdx.x < 32) {
        double lo = map[threadIdx.x], hi = lo, image_max = 0.0;
        for (int i = threadIdx.x; i < kMapSize * kMapSize; i += 32) {
            lo = fmin(lo, map[i]);
            hi = fmax(hi, map[i]);
        }
        for (int i = threadIdx.x; i < CORRUPT_LEN; i += 32) image_max = fmax(image_max, (double)img[i]);
        partial_min[threadIdx.x] = lo;
        partial_max[threadIdx.x] = hi;
        partial_image_max[threadIdx.x] = image_max;
    }
    __syncthreads();
    double lo = partial_min[0], hi = partial_max[0], image_max = partial_image_max[0];
    for (int w = 1; w < 32; ++w) {
        lo = fmin(lo, partial_min[w]);
        hi = fmax(hi, partial_max[w]);
        image_max = fmax(image_max, partial_image_max[w]);
    }
    const double max_val = image_max / 255.0;  // max(x) of x = image / 255., before the fog
    const double range = hi - lo;

    for (int i = threadIdx.x; i < CORRUPT_LEN; i += blockDim.x) {
        const double fractal = (map[i / 3] - lo) / range;
        const double x = (double)img[i] / 255.0 + strength * fractal;
        dst[i] = trunc_unit_to_u8(x * max_val / (max_val + strength));
    }
}
