// spatter (CORRUPTIONS.md §3.19): a Gaussian-blurred normal field (the liquid layer) thresholded
// into water drops (mode 0) or mud (mode 1).
//   water: the layer as uint8, OpenCV's Canny(50, 150), the distance to the nearest edge
//          (distanceTransform DIST_L2, 5x5 mask), truncated at 20, box-blurred, histogram-
//          equalised, embossed, box-blurred again; times the layer, normalised, times the
//          intensity, it adds pale turquoise;
//   mud:   the layer above the threshold, Gaussian-blurred, kept where >= 0.8, blends in brown.
// The layer is float64 as in the reference; the rest is float32 (the reference's x is float32).
//
// One block per image, everything in shared memory. The 1024 normals come in pairs from Philox
// block k (pixels 2k and 2k + 1). The three inherently sequential steps (Canny's hysteresis and
// the two raster passes of the distance transform) run on one thread; they cost ~2k steps each.
#include "corrupt_blur.cuh"

namespace corrupt_spatter_detail {

constexpr int N = CORRUPT_SIZE;
constexpr int kPixels = CORRUPT_PIXELS;

// Canny thresholds of the reference (L1 gradient, 3x3 Sobel).
constexpr int kCannyLow = 50;
constexpr int kCannyHigh = 150;
// tan(22.5 degrees) in OpenCV's 15-bit fixed point, for the non-maximum suppression.
constexpr int kCannyShift = 15;
constexpr int kTan22 = 13573;  // round(0.41421356 * 2^15)

enum EdgeState : unsigned char { kNoEdge = 0, kWeakEdge = 1, kStrongEdge = 2, kEdge = 3 };

// OpenCV's 5x5 chamfer weights for DIST_L2 (1, 1.4, 2.1969), accumulated in float: this is what
// opencv-python's distanceTransform returns (checked value for value against it; OpenCV's own
// fixed-point C path differs in the 5th decimal).
constexpr float kChamferStraight = 1.0f;
constexpr float kChamferDiagonal = 1.4f;
constexpr float kChamferKnight = 2.1969f;
constexpr float kFar = 1.0e30f;  // "no edge yet": stays finite when weights are added
constexpr float kDistanceCap = 20.0f;

__device__ __forceinline__ int u8_at(const int* plane, int y, int x) {
    return plane[clamp_index(y, N) * N + clamp_index(x, N)];
}

// OpenCV's 3x3 Sobel derivatives with BORDER_REPLICATE, as Canny computes them.
__device__ __forceinline__ void sobel(const int* plane, int y, int x, int* dx, int* dy) {
    const int a = u8_at(plane, y - 1, x - 1), b = u8_at(plane, y - 1, x), c = u8_at(plane, y - 1, x + 1);
    const int d = u8_at(plane, y, x - 1), f = u8_at(plane, y, x + 1);
    const int g = u8_at(plane, y + 1, x - 1), h = u8_at(plane, y + 1, x), i = u8_at(plane, y + 1, x + 1);
    *dx = (c + 2 * f + i) - (a + 2 * d + g);
    *dy = (g + 2 * h + i) - (a + 2 * b + c);
}

// Gradient magnitude with zeros outside the image (Canny's padded magnitude rows/columns).
__device__ __forceinline__ int magnitude_at(const int* mag, int y, int x) {
    return (y < 0 || y >= N || x < 0 || x >= N) ? 0 : mag[y * N + x];
}

// Canny's non-maximum suppression along the quantised gradient direction, then the double
// threshold: strong above kCannyHigh, weak above kCannyLow.
__device__ __forceinline__ EdgeState classify(const int* mag, int y, int x, int dx, int dy) {
    const int m = mag[y * N + x];
    if (m <= kCannyLow) return kNoEdge;
    const int xs = dx < 0 ? -dx : dx;
    const int ys = (dy < 0 ? -dy : dy) << kCannyShift;
    const int tan22x = xs * kTan22;
    bool is_max;
    if (ys < tan22x) {  // near horizontal gradient: compare left and right
        is_max = m > magnitude_at(mag, y, x - 1) && m >= magnitude_at(mag, y, x + 1);
    } else if (ys > tan22x + (xs << (kCannyShift + 1))) {  // near vertical: above and below
        is_max = m > magnitude_at(mag, y - 1, x) && m >= magnitude_at(mag, y + 1, x);
    } else {  // diagonal: the sign of dx * dy picks the diagonal
        const int s = (dx ^ dy) < 0 ? -1 : 1;
        is_max = m > magnitude_at(mag, y - 1, x - s) && m > magnitude_at(mag, y + 1, x + s);
    }
    if (!is_max) return kNoEdge;
    return m > kCannyHigh ? kStrongEdge : kWeakEdge;
}

// Hysteresis: every weak pixel 8-connected to a strong one becomes an edge (kEdge). Depth-first
// from each strong pixel with an explicit stack; each pixel is pushed at most once. One thread.
__device__ void hysteresis(unsigned char* state, short* stack) {
    int top = 0;
    for (int p = 0; p < kPixels; ++p) {
        if (state[p] != kStrongEdge) continue;
        state[p] = kEdge;
        stack[top++] = (short)p;
        while (top > 0) {
            const int q = stack[--top];
            const int y = q / N, x = q % N;
            for (int dy = -1; dy <= 1; ++dy) {
                for (int dx = -1; dx <= 1; ++dx) {
                    const int ny = y + dy, nx = x + dx;
                    if (ny < 0 || ny >= N || nx < 0 || nx >= N) continue;
                    const int r = ny * N + nx;
                    if (state[r] == kWeakEdge || state[r] == kStrongEdge) {
                        state[r] = kEdge;
                        stack[top++] = (short)r;
                    }
                }
            }
        }
    }
}

__device__ __forceinline__ float far_or(const float* dist, int y, int x) {
    return (y < 0 || y >= N || x < 0 || x >= N) ? kFar : dist[y * N + x];
}

// distanceTransform(255 - edges, DIST_L2, 5): chamfer distance to the nearest edge pixel, a
// forward raster pass over the causal half of the 5x5 mask and a backward pass over the other
// half. One thread.
__device__ void chamfer_distance(const unsigned char* state, float* dist) {
    for (int y = 0; y < N; ++y) {
        for (int x = 0; x < N; ++x) {
            if (state[y * N + x] == kEdge) {
                dist[y * N + x] = 0.0f;
                continue;
            }
            float d = far_or(dist, y - 2, x - 1) + kChamferKnight;
            d = fminf(d, far_or(dist, y - 2, x + 1) + kChamferKnight);
            d = fminf(d, far_or(dist, y - 1, x - 2) + kChamferKnight);
            d = fminf(d, far_or(dist, y - 1, x - 1) + kChamferDiagonal);
            d = fminf(d, far_or(dist, y - 1, x) + kChamferStraight);
            d = fminf(d, far_or(dist, y - 1, x + 1) + kChamferDiagonal);
            d = fminf(d, far_or(dist, y - 1, x + 2) + kChamferKnight);
            d = fminf(d, far_or(dist, y, x - 1) + kChamferStraight);
            dist[y * N + x] = d;
        }
    }
    for (int y = N - 1; y >= 0; --y) {
        for (int x = N - 1; x >= 0; --x) {
            float d = dist[y * N + x];
            d = fminf(d, far_or(dist, y + 2, x + 1) + kChamferKnight);
            d = fminf(d, far_or(dist, y + 2, x - 1) + kChamferKnight);
            d = fminf(d, far_or(dist, y + 1, x + 2) + kChamferKnight);
            d = fminf(d, far_or(dist, y + 1, x + 1) + kChamferDiagonal);
            d = fminf(d, far_or(dist, y + 1, x) + kChamferStraight);
            d = fminf(d, far_or(dist, y + 1, x - 1) + kChamferDiagonal);
            d = fminf(d, far_or(dist, y + 1, x - 2) + kChamferKnight);
            d = fminf(d, far_or(dist, y, x + 1) + kChamferStraight);
            dist[y * N + x] = d;
        }
    }
}

// Sum of the 3x3 neighbourhood with BORDER_REFLECT_101 (cv2.blur's and filter2D's default).
template <class T, class Load>
__device__ __forceinline__ T sum3x3(int y, int x, Load load) {
    T s = 0;
    for (int dy = -1; dy <= 1; ++dy)
        for (int dx = -1; dx <= 1; ++dx) s += load(reflect101_index(y + dy, N), reflect101_index(x + dx, N));
    return s;
}

// The emboss kernel of the reference, applied as filter2D does (correlation, not convolution).
__constant__ int kEmboss[9] = {-2, -1, 0, -1, 1, 1, 0, 1, 2};

}  // namespace corrupt_spatter_detail

// out, in: (n, 32, 32, 3). The severity's tuple (mean, std, sigma, threshold,
// intensity_or_mud_sigma) is a double; mode 0 = water, 1 = mud. The Gaussian weights come from
// the host: for sigma, and (mud) for the mud sigma.
extern "C" __global__ void corrupt_spatter(float* __restrict__ out, const float* __restrict__ in,
                                          double mean, double stddev, const double* sigma_weights,
                                          int sigma_radius, double threshold, double intensity_or_mud_sigma,
                                          const double* mud_weights, int mud_radius, int mode,
                                          unsigned long long seed,
                                          unsigned long long first_image, int corruption, int severity) {
    using namespace corrupt_spatter_detail;
    using corrupt_blur::gaussian_filter_32;
    using corrupt_blur::kMaxGaussRadius;
    using corrupt_blur::load_gaussian_weights;

    __shared__ double layer[kPixels];    // the normal field, then (mud) the mask above threshold
    __shared__ double gauss_tmp[kPixels];
    __shared__ int layer_u8[kPixels];    // water: the thresholded layer as uint8
    __shared__ int magnitude[kPixels];   // Canny's |dx| + |dy|, later the equalised distance
    __shared__ int embossed[kPixels];
    __shared__ short grad_x[kPixels], grad_y[kPixels];
    __shared__ short stack[kPixels];
    __shared__ unsigned char edge_state[kPixels];
    __shared__ float dist[kPixels];      // the distance, then the water mask before normalising
    __shared__ int histogram[256];
    __shared__ int mask_max_bits;        // max of the water mask (>= 0: int order = float order)

    const CorruptionKey key = corruption_key(seed, first_image + blockIdx.x, corruption, severity);
    const float* img = in + (long long)blockIdx.x * CORRUPT_LEN;
    float* dst = out + (long long)blockIdx.x * CORRUPT_LEN;

    // L ~ N(mean, std^2), 32x32.
    for (int k = threadIdx.x; k < kPixels / 2; k += blockDim.x) {
        double z0, z1;
        normal_pair_f64(corruption_block(key, (unsigned)k), &z0, &z1);
        layer[2 * k] = mean + stddev * z0;
        layer[2 * k + 1] = mean + stddev * z1;
    }
    for (int b = threadIdx.x; b < 256; b += blockDim.x) histogram[b] = 0;
    if (threadIdx.x == 0) mask_max_bits = 0;
    __syncthreads();

    double weights[kMaxGaussRadius + 1];
    int radius = sigma_radius;
    load_gaussian_weights(sigma_weights, radius, weights);
    const auto load_layer = [&](int y, int x, int) { return layer[y * N + x]; };

    if (mode == 1) {
        // Mud: b = (L > threshold) (zeroing L below the threshold first changes nothing here).
        gaussian_filter_32<1>(weights, radius, gauss_tmp, load_layer,
                              [&](int y, int x, int, double v) { layer[y * N + x] = v > threshold ? 1.0 : 0.0; });
        __syncthreads();
        radius = mud_radius;
        load_gaussian_weights(mud_weights, radius, weights);
        const float brown[3] = {(float)(63 / 255.0), (float)(42 / 255.0), (float)(20 / 255.0)};
        gaussian_filter_32<1>(weights, radius, gauss_tmp, load_layer, [&](int y, int x, int, double v) {
            float m = (float)v;  // skimage keeps the float32 mask float32
            if (m < 0.8f) m = 0.0f;
            const int p = y * N + x;
            for (int c = 0; c < 3; ++c) {
                const float xc = img[3 * p + c] / 255.0f;
                const float blended = xc * (1.0f - m) + brown[c] * m;
                dst[3 * p + c] = (float)(int)(fminf(fmaxf(blended, 0.0f), 1.0f) * 255.0f);
            }
        });
        return;  // no barrier follows: every thread leaves here
    }

    // Water. Lu = uint8(L * 255) of the thresholded layer; values above 1 wrap, as numpy's cast.
    gaussian_filter_32<1>(weights, radius, gauss_tmp, load_layer, [&](int y, int x, int, double v) {
        const double kept = v < threshold ? 0.0 : v;
        layer_u8[y * N + x] = (int)(kept * 255.0) & 255;
    });
    __syncthreads();

    // Canny: gradients, then suppression and thresholds (needs the neighbours' magnitudes).
    for (int p = threadIdx.x; p < kPixels; p += blockDim.x) {
        int dx, dy;
        sobel(layer_u8, p / N, p % N, &dx, &dy);
        grad_x[p] = (short)dx;
        grad_y[p] = (short)dy;
        magnitude[p] = (dx < 0 ? -dx : dx) + (dy < 0 ? -dy : dy);
    }
    __syncthreads();
    for (int p = threadIdx.x; p < kPixels; p += blockDim.x)
        edge_state[p] = classify(magnitude, p / N, p % N, grad_x[p], grad_y[p]);
    __syncthreads();
    if (threadIdx.x == 0) {
        hysteresis(edge_state, stack);
        chamfer_distance(edge_state, dist);
    }
    __syncthreads();

    // Truncate at 20, 3x3 box blur (float, summed in double as OpenCV), cast to uint8; its
    // histogram (the values are 0..20).
    for (int p = threadIdx.x; p < kPixels; p += blockDim.x) {
        const double s = sum3x3<double>(p / N, p % N, [&](int y, int x) {
            return (double)fminf(dist[y * N + x], kDistanceCap);
        });
        const int v = (int)(float)(s * (1.0 / 9.0));
        magnitude[p] = v;
        atomicAdd(&histogram[v], 1);
    }
    __syncthreads();

    // equalizeHist: lut[v] = round(cdf above the lowest occupied bin * 255 / (total - its count)),
    // computed in float as OpenCV; a constant image stays as it is.
    int lowest = 0;
    while (histogram[lowest] == 0) ++lowest;
    const float scale = 255.0f / (float)(kPixels - histogram[lowest]);
    for (int p = threadIdx.x; p < kPixels; p += blockDim.x) {
        const int v = magnitude[p];
        int equalised = v;
        if (histogram[lowest] != kPixels) {
            int cumulative = 0;
            for (int b = lowest + 1; b <= v; ++b) cumulative += histogram[b];
            equalised = __float2int_rn((float)cumulative * scale);
            equalised = equalised > 255 ? 255 : equalised;
        }
        magnitude[p] = equalised;  // pointwise: only this pixel's own value is read
    }
    __syncthreads();

    // Emboss with filter2D into uint8 (saturating).
    for (int p = threadIdx.x; p < kPixels; p += blockDim.x) {
        const int y = p / N, x = p % N;
        int s = 0;
        for (int k = 0; k < 9; ++k)
            s += kEmboss[k] * magnitude[reflect101_index(y + k / 3 - 1, N) * N + reflect101_index(x + k % 3 - 1, N)];
        embossed[p] = s < 0 ? 0 : (s > 255 ? 255 : s);
    }
    __syncthreads();

    // 3x3 box blur of uint8 (rounded to nearest; s / 9 is never a tie), times the layer.
    for (int p = threadIdx.x; p < kPixels; p += blockDim.x) {
        const int s = sum3x3<int>(p / N, p % N, [&](int y, int x) { return embossed[y * N + x]; });
        const float mask = (float)layer_u8[p] * (float)((2 * s + 9) / 18);
        dist[p] = mask;
        atomicMax(&mask_max_bits, __float_as_int(mask));
    }
    __syncthreads();

    // m / max(m) * intensity (float32), pale turquoise added. An all-zero mask (no water at all;
    // the reference would divide 0 by 0) leaves the image unchanged.
    const float mask_max = __int_as_float(mask_max_bits);
    const float intensity = (float)intensity_or_mud_sigma;
    const float turquoise[3] = {(float)(175 / 255.0), (float)(238 / 255.0), (float)(238 / 255.0)};
    for (int p = threadIdx.x; p < kPixels; p += blockDim.x) {
        const float m = mask_max > 0.0f ? dist[p] / mask_max * intensity : 0.0f;
        for (int c = 0; c < 3; ++c) {
            const float v = img[3 * p + c] / 255.0f + m * turquoise[c];
            dst[3 * p + c] = (float)(int)(fminf(fmaxf(v, 0.0f), 1.0f) * 255.0f);
        }
    }
}
