// Device helpers of the blur family (corrupt_blur.cu), reused by snow and spatter: the
// skimage/scipy separable Gaussian filter, the ImageMagick motion-blur model and clipped_zoom
// (docs/CORRUPTIONS.md §3.5, §3.8, §3.9). Everything works on 32x32 planes with C
// interleaved channels (element (y, x, c) at (y * 32 + x) * C + c).
//
// Exactness: the reference truncates to uint8, so a flat region whose weights sum to 1 - 1ulp
// drops a whole level. The helpers therefore repeat the reference's float operations in its
// order, and use the explicitly rounded __dmul_rn / __dadd_rn (never fused into FMAs; NVRTC fuses
// plain a * b + c by default, the reference's x86-64 builds do not).
#pragma once
#include "corrupt_common.cuh"

namespace corrupt_blur {


// ---------------------------------------------------------------------------------------------
// Gaussian filter: skimage.filters.gaussian(mode='nearest', truncate=4) = scipy gaussian_filter
// over the two image axes (rows first, then columns; the channel axis has sigma 0 and is skipped).
// ---------------------------------------------------------------------------------------------

// Largest radius the helpers take: int(4 * sigma + 0.5) <= 8, i.e. sigma < 2.125 (all CIFAR
// parameters: at most 1.0).
constexpr int kMaxGaussRadius = 8;

// The weights come from the host (src/corrupt/blur.rs, gaussian_weights: scipy's
// _gaussian_kernel1d with glibc's exp, as the reference generator computes them; a GPU's exp may
// differ in the last bit, enough to move a flat region by one level). A kernel copies them into
// its registers: w[0..radius], w[0] the centre.
__device__ __forceinline__ void load_gaussian_weights(const double* __restrict__ from, int radius, double* w) {
  for (int k = 0; k <= radius && k <= kMaxGaussRadius; ++k) w[k] = from[k];
}

// One output of scipy correlate1d with a symmetric kernel: centre * w0, then the mirrored pairs
// from the outermost inward, (v[-k] + v[+k]) * w[k] (NI_Correlate1D's symmetric branch).
template <class Sample>
__device__ __forceinline__ double correlate_symmetric(const double* w, int radius, Sample sample) {
  double acc = __dmul_rn(sample(0), w[0]);
  for (int k = radius; k >= 1; --k) acc = __dadd_rn(acc, __dmul_rn(__dadd_rn(sample(-k), sample(k)), w[k]));
  return acc;
}

// Gaussian filter of a 32x32 image with C channels, mode 'nearest' (edge replicate).
//   w, radius: from load_gaussian_weights;
//   tmp: 32*32*C doubles of shared memory (the row pass's result);
//   load(y, x, c) -> double: the input (already in its final scale, e.g. uint8 / 255.);
//   store(y, x, c, double): receives each output once.
// Every thread of the block must call it; what `load` reads must be complete (barrier before
// the call) and stays read until the one barrier inside. There is no barrier after: if `store`
// writes shared memory that is read next, the caller puts one.
template <int C, class Load, class Store>
__device__ void gaussian_filter_32(const double* w, int radius, double* tmp, Load load, Store store) {
  constexpr int N = CORRUPT_SIZE;
  for (int i = threadIdx.x; i < N * N * C; i += blockDim.x) {
    const int c = i % C, x = (i / C) % N, y = i / (C * N);
    tmp[i] = correlate_symmetric(w, radius, [&](int k) { return load(clamp_index(y + k, N), x, c); });
  }
  __syncthreads();
  for (int i = threadIdx.x; i < N * N * C; i += blockDim.x) {
    const int c = i % C, x = (i / C) % N, y = i / (C * N);
    store(y, x, c,
          correlate_symmetric(w, radius, [&](int k) { return tmp[(y * N + clamp_index(x + k, N)) * C + c]; }));
  }
}

// ---------------------------------------------------------------------------------------------
// Motion blur: ImageMagick 6 MotionBlurImage (Q16, not HDRI) as modelled in §3.8.
// ---------------------------------------------------------------------------------------------

// 2 * ceil(radius) + 1 taps; snow's largest radius (14) gives 29.
constexpr int kMaxMotionTaps = 29;
// Room for 32 taps: NVRTC 13.0 reads the last 1-3 taps' offsets with one 16-byte load, which
// for 29 taps reached past dy[28] and out of the block's shared memory (compute-sanitizer, H200).
constexpr int kMotionTapSlots = 32;

struct MotionTaps {
  int width;
  double weight[kMotionTapSlots];
  int dx[kMotionTapSlots];  // column offset of tap i
  int dy[kMotionTapSlots];  // row offset of tap i (+y is down)
};

// Fills the taps for (radius, sigma, angle in degrees) the way ImageMagick computes them: one-
// sided Gaussian weights exp(-i^2 / (2 sigma^2)) / (sqrt(2 pi) sigma), normalised by their running
// sum; offsets ceil(i * width * cos / hypot(width * sin, width * cos) - 0.5) (ties round down).
// One thread calls it (e.g. into shared memory, before a barrier).
__device__ __forceinline__ void motion_taps(double radius, double sigma, double angle_degrees, MotionTaps* t) {
  int width = 2 * (int)ceil(radius) + 1;
  if (width > kMaxMotionTaps) width = kMaxMotionTaps;  // outside the supported range
  t->width = width;
  const double sq2pi = 2.50662827463100024161235523934010416269302368164062;
  double total = 0.0;
  for (int i = 0; i < width; ++i) {
    t->weight[i] = exp(-((double)i * i) / (2.0 * sigma * sigma)) / (sq2pi * sigma);
    total += t->weight[i];
  }
  for (int i = 0; i < width; ++i) t->weight[i] /= total;
  const double radians = 3.14159265358979323846264338327950288419716939937510 * angle_degrees / 180.0;
  const double px = (double)width * sin(radians), py = (double)width * cos(radians);
  const double length = hypot(px, py);
  for (int i = 0; i < width; ++i) {
    t->dx[i] = (int)ceil((double)i * py / length - 0.5);
    t->dy[i] = (int)ceil((double)i * px / length - 0.5);
  }
}

// One 8-bit output of the motion blur at (y, x), channel c. load(y, x, c) returns the 8-bit input
// (0..255) at an in-range position; out-of-range samples clamp to the edge. The Q16 result is
// round(sum of w_i * 257 * v_i); the 8-bit PNG value is floor(Q16 / 257) (as observed).
template <class Load>
__device__ __forceinline__ int motion_blur_u8(const MotionTaps& t, int y, int x, int c, Load load) {
  constexpr int N = CORRUPT_SIZE;
  double acc = 0.0;
  for (int i = 0; i < t.width; ++i) {
    const double q16 = 257.0 * (double)load(clamp_index(y + t.dy[i], N), clamp_index(x + t.dx[i], N), c);
    acc = __dadd_rn(acc, __dmul_rn(t.weight[i], q16));
  }
  double q = floor(acc + 0.5);
  q = q < 0.0 ? 0.0 : (q > 65535.0 ? 65535.0 : q);
  return (int)q / 257;
}

// ---------------------------------------------------------------------------------------------
// clipped_zoom of the reference: crop the central ch x ch square (ch = ceil(32 / z), top =
// (32 - ch) // 2), scipy.ndimage.zoom(order=1) it to round(ch * z) (align corners: output i
// samples input i * (ch - 1) / (out - 1)), keep 32 rows/columns from (out - 32) // 2.
// ---------------------------------------------------------------------------------------------

// The sampling of one axis, the same for rows and columns (the crop is square).
struct ZoomAxis {
  int crop;      // ch
  int top;       // first cropped row/column of the source
  int trim;      // first kept row/column of the zoomed crop
  double scale;  // (ch - 1) / (out - 1), scipy's zoom for grid_mode=False
};

// The zoom factor arrives as the reference's float64 value (e.g. from np.arange).
__device__ __forceinline__ ZoomAxis zoom_axis(double zoom) {
  constexpr int N = CORRUPT_SIZE;
  ZoomAxis a;
  a.crop = (int)ceil((double)N / zoom);
  a.top = (N - a.crop) / 2;
  const int out = (int)rint((double)a.crop * zoom);  // Python round(): half to even
  a.trim = (out - N) / 2;
  a.scale = out > 1 ? (double)(a.crop - 1) / (double)(out - 1) : 1.0;
  return a;
}

// Where output index i (0..31 of the kept window) samples: source index `lo` (absolute, in the
// 32-wide image) and the weights of lo and lo + 1, as scipy's order-1 spline computes them
// (t = cc - floor(cc), w0 = 1 - t, w1 = 1 - w0).
struct ZoomTap {
  int lo;
  int hi;
  double w0;
  double w1;
};

__device__ __forceinline__ ZoomTap zoom_tap(const ZoomAxis& a, int i) {
  const double cc = (double)(i + a.trim) * a.scale;
  const double f = floor(cc);
  ZoomTap t;
  int start = (int)f;
  const double frac = cc - f;
  t.w0 = 1.0 - frac;
  t.w1 = 1.0 - t.w0;
  if (start > a.crop - 1) start = a.crop - 1;
  t.lo = a.top + start;
  // The second tap falls outside the crop only with weight 0 at the last sample: reuse lo.
  t.hi = a.top + (start + 1 < a.crop ? start + 1 : start);
  return t;
}

// One output of clipped_zoom (float64, before any cast): the 2x2 sum in scipy's order,
// ((v00 * wy0 * wx0 + v01 * wy0 * wx1) + v10 * wy1 * wx0) + v11 * wy1 * wx1.
template <class Load>
__device__ __forceinline__ double clipped_zoom_at(const ZoomTap& ty, const ZoomTap& tx, int c, Load load) {
  double acc = __dmul_rn(__dmul_rn((double)load(ty.lo, tx.lo, c), ty.w0), tx.w0);
  acc = __dadd_rn(acc, __dmul_rn(__dmul_rn((double)load(ty.lo, tx.hi, c), ty.w0), tx.w1));
  acc = __dadd_rn(acc, __dmul_rn(__dmul_rn((double)load(ty.hi, tx.lo, c), ty.w1), tx.w0));
  acc = __dadd_rn(acc, __dmul_rn(__dmul_rn((double)load(ty.hi, tx.hi, c), ty.w1), tx.w1));
  return acc;
}

}  // namespace corrupt_blur
