// The digital corruptions (CORRUPTIONS.md §3.13-3.15, 3.17, 3.18): brightness and saturate
// (through skimage's HSV), contrast, pixelate (Pillow's BOX resampling) and the elastic
// transform (random affine + smoothed random displacement).
//
// Brightness, saturate, contrast and pixelate are deterministic and must match the reference
// value for value after np.uint8's truncation (§1), so they repeat the reference's float64
// operations in its order, each product rounded on its own (__dmul_rn: never fused into an FMA).
#include "corrupt_common.cuh"

namespace corrupt_digital_detail {

__device__ __forceinline__ double clip_unit(double v) { return v < 0.0 ? 0.0 : (v > 1.0 ? 1.0 : v); }

// ---- skimage 0.26 rgb2hsv / hsv2rgb, operation for operation ----

struct Hsv {
    double h, s, v;
};

__device__ __forceinline__ Hsv rgb_to_hsv(double r, double g, double b) {
    Hsv out;
    out.v = fmax(r, fmax(g, b));
    const double delta = out.v - fmin(r, fmin(g, b));  // np.ptp
    out.s = delta == 0.0 ? 0.0 : delta / out.v;
    if (delta == 0.0) {
        out.h = 0.0;
        return out;
    }
    // skimage assigns red, then green, then blue where each is the max: the last one wins ties.
    double h;
    if (b == out.v) {
        h = 4.0 + (r - g) / delta;
    } else if (g == out.v) {
        h = 2.0 + (b - r) / delta;
    } else {
        h = (g - b) / delta;
    }
    // (h / 6) % 1.0 with Python's sign convention (np.remainder): fmod, then + 1 if negative.
    h = fmod(h / 6.0, 1.0);
    out.h = h < 0.0 ? h + 1.0 : h;
    return out;
}

// hsv2rgb: sector hi = floor(6h) mod 6, fraction f = 6h - floor(6h).
__device__ __forceinline__ void hsv_to_rgb(Hsv c, double rgb[3]) {
    const double h6 = __dmul_rn(c.h, 6.0);
    const double hi = floor(h6);
    const double f = h6 - hi;
    const double p = __dmul_rn(c.v, 1.0 - c.s);
    const double q = __dmul_rn(c.v, 1.0 - __dmul_rn(f, c.s));
    const double t = __dmul_rn(c.v, 1.0 - __dmul_rn(1.0 - f, c.s));
    const double v = c.v;
    switch ((int)hi % 6) {
        case 0: rgb[0] = v, rgb[1] = t, rgb[2] = p; break;
        case 1: rgb[0] = q, rgb[1] = v, rgb[2] = p; break;
        case 2: rgb[0] = p, rgb[1] = v, rgb[2] = t; break;
        case 3: rgb[0] = p, rgb[1] = q, rgb[2] = v; break;
        case 4: rgb[0] = t, rgb[1] = p, rgb[2] = v; break;
        default: rgb[0] = v, rgb[1] = p, rgb[2] = q; break;
    }
}

// Brightness (add_value, V += add_value) or saturate (S = S * scale + add_value), then back.
__device__ __forceinline__ void hsv_adjust(float* __restrict__ out, const float* __restrict__ in,
                                           bool saturation, double scale, double add_value) {
    const float* x = in + (size_t)blockIdx.x * CORRUPT_LEN;
    float* y = out + (size_t)blockIdx.x * CORRUPT_LEN;
    for (int p = threadIdx.x; p < CORRUPT_PIXELS; p += blockDim.x) {
        Hsv c = rgb_to_hsv((double)x[3 * p] / 255.0, (double)x[3 * p + 1] / 255.0, (double)x[3 * p + 2] / 255.0);
        if (saturation) {
            c.s = clip_unit(__dmul_rn(c.s, scale) + add_value);
        } else {
            c.v = clip_unit(c.v + add_value);
        }
        double rgb[3];
        hsv_to_rgb(c, rgb);
        for (int k = 0; k < 3; ++k) y[3 * p + k] = trunc_unit_to_u8(rgb[k]);
    }
}

// ---- Pillow's BOX resampling of 8-bit images (ImagingResample) ----

// Pillow's fixed point: coefficients scaled by 2^22, sums rounded by adding half and shifting.
constexpr int resample_precision_bits = 22;
constexpr int box_max_taps = 4;  // support 0.5 * 32/20 covers at most 3 source pixels

// The taps of output sample `index` when resizing in_size -> out_size along one axis: the first
// source index and up to box_max_taps fixed-point weights (the rest zero). Pillow evaluates its
// box filter at the source pixel centres within the support and normalises to sum 1, so a
// source pixel counts fully or not at all ("fractional overlaps" are not weighted).
__device__ __forceinline__ int box_taps(int in_size, int out_size, int index, int weights[box_max_taps]) {
    const double scale = (double)in_size / out_size;
    const double filter_scale = scale < 1.0 ? 1.0 : scale;
    const double support = 0.5 * filter_scale;
    const double center = __dmul_rn(index + 0.5, scale);
    const double inv_filter_scale = 1.0 / filter_scale;
    int first = (int)(center - support + 0.5);
    if (first < 0) first = 0;
    int last = (int)(center + support + 0.5);
    if (last > in_size) last = in_size;
    const int count = min(last - first, box_max_taps);
    double w[box_max_taps];
    double sum = 0.0;
    for (int j = 0; j < box_max_taps; ++j) {
        const double u = (j + first - center + 0.5) * inv_filter_scale;
        w[j] = (j < count && u > -0.5 && u <= 0.5) ? 1.0 : 0.0;
        sum += w[j];
    }
    for (int j = 0; j < box_max_taps; ++j) {
        const double k = sum != 0.0 ? w[j] / sum : w[j];
        weights[j] = (int)(0.5 + __dmul_rn(k, (double)(1 << resample_precision_bits)));
    }
    return first;
}

// One fixed-point output value from up to box_max_taps samples `stride` apart.
__device__ __forceinline__ unsigned char box_sample(const unsigned char* src, int stride,
                                                    const int weights[box_max_taps]) {
    int acc = 1 << (resample_precision_bits - 1);
    for (int j = 0; j < box_max_taps; ++j) {
        if (weights[j] != 0) acc += (int)src[j * stride] * weights[j];
    }
    acc >>= resample_precision_bits;
    return (unsigned char)(acc < 0 ? 0 : (acc > 255 ? 255 : acc));
}

// ---- elastic transform ----

constexpr int elastic_max_radius = 31;  // scipy's radius int(3 sigma + 0.5); reflect needs <= 32

// OpenCV BORDER_REFLECT_101 for any overshoot (the affine map may reach a few pixels out).
__device__ __forceinline__ int reflect101_any(int i, int n) {
    while (i < 0 || i >= n) i = i < 0 ? -i : 2 * n - 2 - i;
    return i;
}

}  // namespace corrupt_digital_detail

// skimage rgb2hsv, V = clip(V + delta, 0, 1), hsv2rgb (§3.13).
extern "C" __global__ void corrupt_brightness(float* __restrict__ out, const float* __restrict__ in,
                                              double delta) {
    corrupt_digital_detail::hsv_adjust(out, in, false, 1.0, delta);
}

// skimage rgb2hsv, S = clip(S * scale + offset, 0, 1), hsv2rgb (§3.15). Greys have H = 0, so a
// positive offset tints them red (the reference's quirk, kept).
extern "C" __global__ void corrupt_saturate(float* __restrict__ out, const float* __restrict__ in,
                                            double scale, double offset) {
    corrupt_digital_detail::hsv_adjust(out, in, true, scale,
                                       offset);
}

// out = clip((x - mean) * c + mean) with the per-channel mean over the image (§3.14). numpy's
// mean over axes (0, 1) adds the 1024 pixels one after another (the kept channel axis is the
// inner loop, so no pairwise summation), then divides: one thread per channel does the same.
extern "C" __global__ void corrupt_contrast(float* __restrict__ out, const float* __restrict__ in,
                                            double factor) {
    using namespace corrupt_digital_detail;
    __shared__ double channel_mean[3];
    const float* x = in + (size_t)blockIdx.x * CORRUPT_LEN;
    float* y = out + (size_t)blockIdx.x * CORRUPT_LEN;
    if (threadIdx.x < 3) {
        double sum = 0.0;
        for (int p = 0; p < CORRUPT_PIXELS; ++p) sum += (double)x[3 * p + threadIdx.x] / 255.0;
        channel_mean[threadIdx.x] = sum / CORRUPT_PIXELS;
    }
    __syncthreads();
    for (int i = threadIdx.x; i < CORRUPT_LEN; i += blockDim.x) {
        const double mean = channel_mean[i % 3];
        y[i] = trunc_unit_to_u8(__dmul_rn((double)x[i] / 255.0 - mean, factor) + mean);
    }
}

// PIL resize(BOX) to size x size, then back to 32 x 32 with BOX (§3.17). Each resize is
// Pillow's two passes, horizontal then vertical, each rounded to 8 bits. Upscaling, every output
// pixel has one tap of weight 1 (a copy: BOX up equals NEAREST), so the way back is a gather.
// The taps are the same for rows and columns; they are computed once per block.
extern "C" __global__ void corrupt_pixelate(float* __restrict__ out, const float* __restrict__ in, int size) {
    using namespace corrupt_digital_detail;
    __shared__ unsigned char image[CORRUPT_LEN];
    __shared__ unsigned char narrow[CORRUPT_SIZE * CORRUPT_SIZE * 3];  // 32 rows x size columns
    __shared__ unsigned char small[CORRUPT_SIZE * CORRUPT_SIZE * 3];   // size x size
    __shared__ int down_first[CORRUPT_SIZE];
    __shared__ int down_weights[CORRUPT_SIZE][box_max_taps];
    __shared__ int up_source[CORRUPT_SIZE];
    const float* x = in + (size_t)blockIdx.x * CORRUPT_LEN;
    float* y = out + (size_t)blockIdx.x * CORRUPT_LEN;
    for (int i = threadIdx.x; i < CORRUPT_LEN; i += blockDim.x) image[i] = (unsigned char)x[i];
    for (int i = threadIdx.x; i < 2 * CORRUPT_SIZE; i += blockDim.x) {
        if (i < CORRUPT_SIZE) {
            if (i < size) down_first[i] = box_taps(CORRUPT_SIZE, size, i, down_weights[i]);
        } else {
            int unit_weight[box_max_taps];
            up_source[i - CORRUPT_SIZE] = box_taps(size, CORRUPT_SIZE, i - CORRUPT_SIZE, unit_weight);
        }
    }
    __syncthreads();
    // Horizontal pass: 32 rows, `size` columns. Pillow also limits it to the rows the vertical
    // pass reads, which for a downscale of the full image are all of them.
    for (int p = threadIdx.x; p < CORRUPT_SIZE * size; p += blockDim.x) {
        const int col = p % size, row = p / size;
        const unsigned char* src = &image[(row * CORRUPT_SIZE + down_first[col]) * 3];
        for (int k = 0; k < 3; ++k) narrow[3 * p + k] = box_sample(src + k, 3, down_weights[col]);
    }
    __syncthreads();
    for (int p = threadIdx.x; p < size * size; p += blockDim.x) {
        const int col = p % size, row = p / size;
        const unsigned char* src = &narrow[(down_first[row] * size + col) * 3];
        for (int k = 0; k < 3; ++k) small[3 * p + k] = box_sample(src + k, 3 * size, down_weights[row]);
    }
    __syncthreads();
    for (int p = threadIdx.x; p < CORRUPT_PIXELS; p += blockDim.x) {
        const unsigned char* src = &small[(up_source[p / CORRUPT_SIZE] * size + up_source[p % CORRUPT_SIZE]) * 3];
        for (int k = 0; k < 3; ++k) y[3 * p + k] = (float)src[k];
    }
}

// Elastic transform (§3.18), per image:
// 1. random affine: the points (26,26), (26,6), (6,6) (x, y) move by U(-jitter, jitter) each
//    coordinate (float32); cv2.warpAffine, bilinear on float32, BORDER_REFLECT_101, with
//    OpenCV's source coordinates quantised to 1/32 pixel;
// 2. two fields U(-1, 1) over the 32x32 grid, smoothed by scipy's gaussian_filter (mode
//    'reflect', truncate 3), times alpha, cast to float32: dx (columns) and dy (rows);
// 3. map_coordinates(order=1, mode='reflect') of the warped image at (row + dy, col + dx);
//    clip, x255 in float32, truncate.
// Draws: blocks 0-2 the six jitters (two per block), block 3 + pixel the pixel's dx and dy
// uniforms. Parameters are float64; sigma 0 leaves the displacement at zero.
extern "C" __global__ void corrupt_elastic_transform(float* __restrict__ out, const float* __restrict__ in,
                                                     double alpha,
                                                     double sigma,
                                                     double jitter, int corruption,
                                                     int severity, unsigned long long seed,
                                                     unsigned long long first_image) {
    using namespace corrupt_digital_detail;
    __shared__ float warped[CORRUPT_LEN];
    __shared__ double field[2][CORRUPT_PIXELS];     // the uniforms, then the displacements
    __shared__ double row_pass[2][CORRUPT_PIXELS];  // smoothed along rows only
    __shared__ double kernel[2 * elastic_max_radius + 1];
    __shared__ double inverse_affine[6];            // source (x, y) of destination (x, y)
    const CorruptionKey key = corruption_key(seed, first_image + blockIdx.x, corruption, severity);
    const float* x = in + (size_t)blockIdx.x * CORRUPT_LEN;
    float* y = out + (size_t)blockIdx.x * CORRUPT_LEN;
    int radius = (int)(3.0 * sigma + 0.5);
    if (radius > elastic_max_radius) radius = elastic_max_radius;
    const bool displaced = sigma > 0.0;

    if (threadIdx.x == 0) {
        // getAffineTransform(source, target) maps source to target; warpAffine samples the
        // source at the inverse map, so solve directly for the map target -> source.
        const float source[6] = {26.0f, 26.0f, 26.0f, 6.0f, 6.0f, 6.0f};
        float target[6];
        for (int j = 0; j < 6; ++j) {
            const Philox4 r = corruption_block(key, j / 2);
            const double u = uniform_f64(r.v[2 * (j % 2)], r.v[2 * (j % 2) + 1]);
            target[j] = source[j] + (float)(-jitter + 2.0 * jitter * u);
        }
        const double d1x = (double)target[2] - target[0], d1y = (double)target[3] - target[1];
        const double d2x = (double)target[4] - target[0], d2y = (double)target[5] - target[1];
        const double s1x = (double)source[2] - source[0], s1y = (double)source[3] - source[1];
        const double s2x = (double)source[4] - source[0], s2y = (double)source[5] - source[1];
        const double det = d1x * d2y - d2x * d1y;
        // A = S D^-1 with D = [d1 d2], S = [s1 s2] (columns); t = source0 - A target0.
        const double a00 = (s1x * d2y - s2x * d1y) / det, a01 = (s2x * d1x - s1x * d2x) / det;
        const double a10 = (s1y * d2y - s2y * d1y) / det, a11 = (s2y * d1x - s1y * d2x) / det;
        inverse_affine[0] = a00;
        inverse_affine[1] = a01;
        inverse_affine[2] = source[0] - a00 * target[0] - a01 * target[1];
        inverse_affine[3] = a10;
        inverse_affine[4] = a11;
        inverse_affine[5] = source[1] - a10 * target[0] - a11 * target[1];
    }
    if (threadIdx.x == 1 && displaced) {
        double sum = 0.0;
        for (int j = -radius; j <= radius; ++j) {
            kernel[j + radius] = exp(-0.5 / (sigma * sigma) * (double)(j * j));
            sum += kernel[j + radius];
        }
        for (int j = 0; j <= 2 * radius; ++j) kernel[j] /= sum;
    }
    if (displaced) {
        for (int p = threadIdx.x; p < CORRUPT_PIXELS; p += blockDim.x) {
            const Philox4 r = corruption_block(key, 3 + p);
            field[0][p] = -1.0 + 2.0 * uniform_f64(r.v[0], r.v[1]);
            field[1][p] = -1.0 + 2.0 * uniform_f64(r.v[2], r.v[3]);
        }
    }
    __syncthreads();

    // 1. The affine warp.
    for (int p = threadIdx.x; p < CORRUPT_PIXELS; p += blockDim.x) {
        const int row = p / CORRUPT_SIZE, col = p % CORRUPT_SIZE;
        const double sx = inverse_affine[0] * col + inverse_affine[1] * row + inverse_affine[2];
        const double sy = inverse_affine[3] * col + inverse_affine[4] * row + inverse_affine[5];
        const int qx = (int)floor(sx * 32.0 + 0.5), qy = (int)floor(sy * 32.0 + 0.5);
        const int x0 = qx >> 5, y0 = qy >> 5;  // arithmetic shifts: floor for negatives too
        const float fx = (float)(qx & 31) * (1.0f / 32.0f), fy = (float)(qy & 31) * (1.0f / 32.0f);
        const int c0 = reflect101_any(x0, CORRUPT_SIZE), c1 = reflect101_any(x0 + 1, CORRUPT_SIZE);
        const int r0 = reflect101_any(y0, CORRUPT_SIZE), r1 = reflect101_any(y0 + 1, CORRUPT_SIZE);
        for (int k = 0; k < 3; ++k) {
            const float v00 = x[(r0 * CORRUPT_SIZE + c0) * 3 + k] / 255.0f;
            const float v01 = x[(r0 * CORRUPT_SIZE + c1) * 3 + k] / 255.0f;
            const float v10 = x[(r1 * CORRUPT_SIZE + c0) * 3 + k] / 255.0f;
            const float v11 = x[(r1 * CORRUPT_SIZE + c1) * 3 + k] / 255.0f;
            warped[3 * p + k] = (1.0f - fy) * ((1.0f - fx) * v00 + fx * v01) + fy * ((1.0f - fx) * v10 + fx * v11);
        }
    }
    // 2. Smooth the two fields: along rows into row_pass, then along columns back into field.
    if (displaced) {
        for (int i = threadIdx.x; i < 2 * CORRUPT_PIXELS; i += blockDim.x) {
            const int f = i / CORRUPT_PIXELS, p = i % CORRUPT_PIXELS;
            const int row = p / CORRUPT_SIZE, col = p % CORRUPT_SIZE;
            double acc = 0.0;
            for (int j = -radius; j <= radius; ++j)
                acc += kernel[j + radius] * field[f][row * CORRUPT_SIZE + reflect_index(col + j, CORRUPT_SIZE)];
            row_pass[f][p] = acc;
        }
        __syncthreads();
        for (int i = threadIdx.x; i < 2 * CORRUPT_PIXELS; i += blockDim.x) {
            const int f = i / CORRUPT_PIXELS, p = i % CORRUPT_PIXELS;
            const int row = p / CORRUPT_SIZE, col = p % CORRUPT_SIZE;
            double acc = 0.0;
            for (int j = -radius; j <= radius; ++j)
                acc += kernel[j + radius] * row_pass[f][reflect_index(row + j, CORRUPT_SIZE) * CORRUPT_SIZE + col];
            field[f][p] = (double)(float)(acc * alpha);
        }
    }
    __syncthreads();

    // 3. Linear interpolation at the displaced coordinates, mode 'reflect' for both neighbours.
    for (int p = threadIdx.x; p < CORRUPT_PIXELS; p += blockDim.x) {
        const int row = p / CORRUPT_SIZE, col = p % CORRUPT_SIZE;
        const double sr = row + (displaced ? field[1][p] : 0.0);
        const double sc = col + (displaced ? field[0][p] : 0.0);
        const double fr = floor(sr), fc = floor(sc);
        const double wr = sr - fr, wc = sc - fc;
        const int r0 = reflect_index((int)fr, CORRUPT_SIZE), r1 = reflect_index((int)fr + 1, CORRUPT_SIZE);
        const int c0 = reflect_index((int)fc, CORRUPT_SIZE), c1 = reflect_index((int)fc + 1, CORRUPT_SIZE);
        for (int k = 0; k < 3; ++k) {
            const double v = (1.0 - wr) * ((1.0 - wc) * warped[(r0 * CORRUPT_SIZE + c0) * 3 + k] +
                                           wc * warped[(r0 * CORRUPT_SIZE + c1) * 3 + k]) +
                             wr * ((1.0 - wc) * warped[(r1 * CORRUPT_SIZE + c0) * 3 + k] +
                                   wc * warped[(r1 * CORRUPT_SIZE + c1) * 3 + k]);
            float unit = (float)v;
            unit = unit < 0.0f ? 0.0f : (unit > 1.0f ? 1.0f : unit);
            y[3 * p + k] = (float)(int)(unit * 255.0f);
        }
    }
}
