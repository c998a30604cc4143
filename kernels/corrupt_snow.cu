// snow (docs/CORRUPTIONS.md §3.10): a normal snow field, clipped_zoom'ed, thresholded and
// cast to an 8-bit 'L' layer, motion-blurred as ImageMagick does, added to the greyed image once
// as is and once rotated by 180 degrees. One block per image, any blockDim.x (multiple of 32).
#include "corrupt_blur.cuh"

namespace corrupt_snow_detail {

// Random blocks of an image's stream: 0..511 the field (two normals each), 512 the blur angle.
constexpr unsigned kAngleBlock = CORRUPT_PIXELS / 2;

}  // namespace corrupt_snow_detail

// Parameters (float64): the field's mean and std, the zoom factor, the threshold,
// ImageMagick's blur radius and sigma, and blend and 1 - blend (computed in float64 as Python
// does; the kernel rounds them to float32 like numpy's scalar-times-float32-array).
extern "C" __global__ void corrupt_snow(float* out, const float* in, double mean,
                                        double stddev, double zoom,
                                        double threshold, double blur_radius,
                                        double blur_sigma, double blend_f64,
                                        double one_minus_blend_f64, unsigned long long seed,
                                        unsigned long long first_image, int corruption, int severity) {
  __shared__ double field[CORRUPT_PIXELS];
  __shared__ unsigned char layer[CORRUPT_PIXELS];
  __shared__ unsigned char blurred[CORRUPT_PIXELS];
  __shared__ corrupt_blur::MotionTaps taps;
  const CorruptionKey key = corruption_key(seed, first_image + blockIdx.x, corruption, severity);

  // 1. The field S ~ N(mean, std^2), 32x32 float64; 4. the angle U(-135, -45) of its blur.
  for (int b = threadIdx.x; b < CORRUPT_PIXELS / 2; b += blockDim.x) {
    double z0, z1;
    normal_pair_f64(corruption_block(key, (unsigned)b), &z0, &z1);
    field[2 * b] = __dadd_rn(mean, __dmul_rn(stddev, z0));
    field[2 * b + 1] = __dadd_rn(mean, __dmul_rn(stddev, z1));
  }
  if (threadIdx.x == 0) {
    const Philox4 r = corruption_block(key, corrupt_snow_detail::kAngleBlock);
    const double angle = -135.0 + 90.0 * uniform_f64(r.v[0], r.v[1]);
    corrupt_blur::motion_taps(blur_radius,
                              blur_sigma, angle, &taps);
  }
  __syncthreads();

  // 2-3. clipped_zoom (float64), S < threshold -> 0, uint8(clip(S, 0, 1) * 255).
  const corrupt_blur::ZoomAxis axis = corrupt_blur::zoom_axis(zoom);
  for (int p = threadIdx.x; p < CORRUPT_PIXELS; p += blockDim.x) {
    const corrupt_blur::ZoomTap ty = corrupt_blur::zoom_tap(axis, p / CORRUPT_SIZE);
    const corrupt_blur::ZoomTap tx = corrupt_blur::zoom_tap(axis, p % CORRUPT_SIZE);
    double s = corrupt_blur::clipped_zoom_at(ty, tx, 0, [&](int y, int x, int) { return field[y * CORRUPT_SIZE + x]; });
    if (s < threshold) s = 0.0;
    layer[p] = (unsigned char)trunc_unit_to_u8(s);
  }
  __syncthreads();

  // 4. ImageMagick motion blur of the 'L' layer, 8-bit result.
  for (int p = threadIdx.x; p < CORRUPT_PIXELS; p += blockDim.x) {
    blurred[p] = (unsigned char)corrupt_blur::motion_blur_u8(
        taps, p / CORRUPT_SIZE, p % CORRUPT_SIZE, 0, [&](int y, int x, int) { return layer[y * CORRUPT_SIZE + x]; });
  }
  __syncthreads();

  // 5. x' = blend * x + (1 - blend) * max(x, 1.5 * gray + 0.5) in float32 (gray as cv2 RGB2GRAY
  //    computes it: fma(B, .114, fma(R, .299, G * .587)), which matches OpenCV bit for bit);
  // 6. clip(x' + S + rot180(S), 0, 1) * 255 in float64, S = layer / 255.
  const float blend = (float)blend_f64;
  const float keep = (float)one_minus_blend_f64;
  const float* src = in + (size_t)blockIdx.x * CORRUPT_LEN;
  float* dst = out + (size_t)blockIdx.x * CORRUPT_LEN;
  for (int p = threadIdx.x; p < CORRUPT_PIXELS; p += blockDim.x) {
    float x[3];
    for (int c = 0; c < 3; ++c) x[c] = src[p * 3 + c] / 255.0f;
    const float gray = __fmaf_rn(x[2], 0.114f, __fmaf_rn(x[0], 0.299f, __fmul_rn(x[1], 0.587f)));
    const float bright = __fadd_rn(__fmul_rn(gray, 1.5f), 0.5f);
    const double snow = (double)blurred[p] / 255.0;
    const double snow_rotated = (double)blurred[CORRUPT_PIXELS - 1 - p] / 255.0;
    for (int c = 0; c < 3; ++c) {
      const float lifted = x[c] > bright ? x[c] : bright;
      const float base = __fadd_rn(__fmul_rn(blend, x[c]), __fmul_rn(keep, lifted));
      dst[p * 3 + c] = trunc_unit_to_u8(__dadd_rn(__dadd_rn((double)base, snow), snow_rotated));
    }
  }
}
