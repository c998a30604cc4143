// The blur corruptions of CIFAR-10-C (docs/CORRUPTIONS.md §3.5-3.9): gaussian, glass,
// defocus, motion and zoom blur. One block per image (blockIdx.x = image within the batch), any
// blockDim.x that is a multiple of 32. Helpers shared with snow and spatter: corrupt_blur.cuh.
#include "corrupt_blur.cuh"

namespace corrupt_blur_kernels {

// Pixel (y, x), channel c of an interleaved 32x32 RGB image.
__device__ __forceinline__ int rgb_index(int y, int x, int c) { return (y * CORRUPT_SIZE + x) * 3 + c; }

// The reference's x = np.array(img) / 255. (float64).
__device__ __forceinline__ double unit(float v) { return (double)v / 255.0; }

// Half width of the defocus kernel window the host passes (5x5: every nonzero CIFAR tap).
constexpr int kDefocusHalf = 2;
constexpr int kDefocusSide = 2 * kDefocusHalf + 1;

}  // namespace corrupt_blur_kernels

// gaussian_blur (§3.5): clip(skimage gaussian(x / 255., sigma, mode 'nearest'), 0, 1) * 255, uint8.
// weights[0..radius]: scipy's one-sided Gaussian weights for sigma, from the host.
extern "C" __global__ void corrupt_gaussian_blur(float* out, const float* in, const double* weights, int radius) {
  using namespace corrupt_blur_kernels;
  __shared__ double row_pass[CORRUPT_LEN];
  double w[corrupt_blur::kMaxGaussRadius + 1];
  corrupt_blur::load_gaussian_weights(weights, radius, w);
  const float* src = in + (size_t)blockIdx.x * CORRUPT_LEN;
  float* dst = out + (size_t)blockIdx.x * CORRUPT_LEN;
  corrupt_blur::gaussian_filter_32<3>(
      w, radius, row_pass, [&](int y, int x, int c) { return unit(src[rgb_index(y, x, c)]); },
      [&](int y, int x, int c, double v) { dst[rgb_index(y, x, c)] = trunc_unit_to_u8(v); });
}

// glass_blur (§3.6), CIFAR's max_delta 1 only: uint8(gaussian(x / 255.) * 255); `iterations`
// times every pixel (h, w) with 2 <= h, w <= 31 takes the value of (h + dy, w + dx), dx and dy
// uniform on {-1, 0} (randint's exclusive upper bound); then clip(gaussian(x / 255.)) * 255.
// The reference's descending "swap" loop is a one-way copy whose sources are never visited
// before they are read, so each iteration is a parallel gather from the previous state.
// Random draws: block (iteration << 10 | h * 32 + w) of the image's stream, word 0 for dx, word 1
// for dy.
extern "C" __global__ void corrupt_glass_blur(float* out, const float* in, const double* weights, int radius,
                                              int iterations, unsigned long long seed,
                                              unsigned long long first_image, int corruption, int severity) {
  using namespace corrupt_blur_kernels;
  __shared__ double row_pass[CORRUPT_LEN];
  __shared__ unsigned char state[2][CORRUPT_LEN];
  double w[corrupt_blur::kMaxGaussRadius + 1];
  corrupt_blur::load_gaussian_weights(weights, radius, w);
  const CorruptionKey key = corruption_key(seed, first_image + blockIdx.x, corruption, severity);
  const float* src = in + (size_t)blockIdx.x * CORRUPT_LEN;
  float* dst = out + (size_t)blockIdx.x * CORRUPT_LEN;

  // np.uint8(gaussian(...) * 255): no clip before the cast (the blur stays within [0, 1]).
  corrupt_blur::gaussian_filter_32<3>(
      w, radius, row_pass, [&](int y, int x, int c) { return unit(src[rgb_index(y, x, c)]); },
      [&](int y, int x, int c, double v) { state[0][rgb_index(y, x, c)] = (unsigned char)trunc_u8(v * 255.0); });
  __syncthreads();

  int current = 0;
  for (int it = 0; it < iterations; ++it) {
    const unsigned char* from = state[current];
    unsigned char* to = state[current ^ 1];
    for (int p = threadIdx.x; p < CORRUPT_PIXELS; p += blockDim.x) {
      const int h = p / CORRUPT_SIZE, x = p % CORRUPT_SIZE;
      int source = p;
      if (h >= 2 && x >= 2) {
        const Philox4 r = corruption_block(key, ((unsigned)it << 10) | (unsigned)p);
        const int dx = -(int)(r.v[0] >> 31), dy = -(int)(r.v[1] >> 31);
        source = (h + dy) * CORRUPT_SIZE + x + dx;
      }
      for (int c = 0; c < 3; ++c) to[p * 3 + c] = from[source * 3 + c];
    }
    __syncthreads();
    current ^= 1;
  }

  const unsigned char* shuffled = state[current];
  corrupt_blur::gaussian_filter_32<3>(
      w, radius, row_pass, [&](int y, int x, int c) { return (double)shuffled[rgb_index(y, x, c)] / 255.0; },
      [&](int y, int x, int c, double v) { dst[rgb_index(y, x, c)] = trunc_unit_to_u8(v); });
}

// defocus_blur (§3.7): cv2.filter2D (correlation, BORDER_REFLECT_101) of each channel of x / 255.
// with the aliased-disk kernel, clip, * 255, uint8. `kernel` is the central 5x5 window of the
// reference's float32 17x17 kernel (the host builds it as OpenCV does and checks that every tap
// outside the window is zero); accumulated in float64, row by row, as filter2D's direct path.
extern "C" __global__ void corrupt_defocus_blur(float* out, const float* in, const float* kernel) {
  using namespace corrupt_blur_kernels;
  __shared__ double taps[kDefocusSide * kDefocusSide];
  for (int i = threadIdx.x; i < kDefocusSide * kDefocusSide; i += blockDim.x) taps[i] = (double)kernel[i];
  __syncthreads();
  const float* src = in + (size_t)blockIdx.x * CORRUPT_LEN;
  float* dst = out + (size_t)blockIdx.x * CORRUPT_LEN;
  for (int p = threadIdx.x; p < CORRUPT_PIXELS; p += blockDim.x) {
    const int y = p / CORRUPT_SIZE, x = p % CORRUPT_SIZE;
    double acc[3] = {0.0, 0.0, 0.0};
    for (int i = 0; i < kDefocusSide; ++i) {
      const int sy = reflect101_index(y + i - kDefocusHalf, CORRUPT_SIZE);
      for (int j = 0; j < kDefocusSide; ++j) {
        const double t = taps[i * kDefocusSide + j];
        if (t == 0.0) continue;  // adds +0 in the reference: no change
        const int sx = reflect101_index(x + j - kDefocusHalf, CORRUPT_SIZE);
        for (int c = 0; c < 3; ++c)
          acc[c] = __dadd_rn(acc[c], __dmul_rn(unit(src[rgb_index(sy, sx, c)]), t));
      }
    }
    for (int c = 0; c < 3; ++c) dst[p * 3 + c] = trunc_unit_to_u8(acc[c]);
  }
}

// motion_blur (§3.8): ImageMagick's motion blur of the 8-bit image with (radius, sigma) and an
// angle uniform in [-45, 45) degrees (block 0 of the image's stream), 8-bit output.
extern "C" __global__ void corrupt_motion_blur(float* out, const float* in, double radius,
                                               double sigma, unsigned long long seed,
                                               unsigned long long first_image, int corruption, int severity) {
  using namespace corrupt_blur_kernels;
  __shared__ corrupt_blur::MotionTaps taps;
  __shared__ unsigned char image[CORRUPT_LEN];
  const float* src = in + (size_t)blockIdx.x * CORRUPT_LEN;
  float* dst = out + (size_t)blockIdx.x * CORRUPT_LEN;
  if (threadIdx.x == 0) {
    const CorruptionKey key = corruption_key(seed, first_image + blockIdx.x, corruption, severity);
    const Philox4 r = corruption_block(key, 0);
    const double angle = -45.0 + 90.0 * uniform_f64(r.v[0], r.v[1]);
    corrupt_blur::motion_taps(radius,
                              sigma, angle, &taps);
  }
  for (int i = threadIdx.x; i < CORRUPT_LEN; i += blockDim.x) image[i] = (unsigned char)src[i];
  __syncthreads();
  for (int i = threadIdx.x; i < CORRUPT_LEN; i += blockDim.x) {
    const int c = i % 3, x = (i / 3) % CORRUPT_SIZE, y = i / (3 * CORRUPT_SIZE);
    dst[i] = (float)corrupt_blur::motion_blur_u8(taps, y, x, c,
                                                 [&](int sy, int sx, int sc) { return image[rgb_index(sy, sx, sc)]; });
  }
}

// zoom_blur (§3.9), all in float32 as the reference (x = float32(img / 255.)): the sum over the
// zoom factors 1 + i * delta (np.arange(1, stop, 0.01); delta = (1 + 0.01) - 1 as numpy fills
// it), i < count, of clipped_zoom(x, z) cast to float32, then (x + sum) / (count + 1), clip, * 255.
extern "C" __global__ void corrupt_zoom_blur(float* out, const float* in, int count) {
  using namespace corrupt_blur_kernels;
  constexpr int kMaxFactors = 32;
  __shared__ float x32[CORRUPT_LEN];
  __shared__ corrupt_blur::ZoomTap table[kMaxFactors][CORRUPT_SIZE];
  if (count > kMaxFactors) count = kMaxFactors;
  const float* src = in + (size_t)blockIdx.x * CORRUPT_LEN;
  float* dst = out + (size_t)blockIdx.x * CORRUPT_LEN;
  for (int i = threadIdx.x; i < CORRUPT_LEN; i += blockDim.x) x32[i] = (float)unit(src[i]);
  const double delta = __dadd_rn(1.0, 0.01) - 1.0;
  for (int i = threadIdx.x; i < count * CORRUPT_SIZE; i += blockDim.x) {
    const int f = i / CORRUPT_SIZE;
    const corrupt_blur::ZoomAxis axis = corrupt_blur::zoom_axis(__dadd_rn(1.0, __dmul_rn((double)f, delta)));
    table[f][i % CORRUPT_SIZE] = corrupt_blur::zoom_tap(axis, i % CORRUPT_SIZE);
  }
  __syncthreads();
  const float divisor = (float)(count + 1);
  for (int p = threadIdx.x; p < CORRUPT_PIXELS; p += blockDim.x) {
    const int y = p / CORRUPT_SIZE, x = p % CORRUPT_SIZE;
    float sum[3] = {0.0f, 0.0f, 0.0f};
    for (int f = 0; f < count; ++f) {
      const corrupt_blur::ZoomTap ty = table[f][y], tx = table[f][x];
      for (int c = 0; c < 3; ++c) {
        const double v = corrupt_blur::clipped_zoom_at(ty, tx, c, [&](int sy, int sx, int sc) { return x32[rgb_index(sy, sx, sc)]; });
        sum[c] = __fadd_rn(sum[c], (float)v);
      }
    }
    for (int c = 0; c < 3; ++c) {
      float v = __fadd_rn(x32[p * 3 + c], sum[c]) / divisor;
      v = v < 0.0f ? 0.0f : (v > 1.0f ? 1.0f : v);
      dst[p * 3 + c] = (float)(int)__fmul_rn(v, 255.0f);
    }
  }
}
