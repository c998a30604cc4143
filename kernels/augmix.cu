// AugMix (Hendrycks et al. 2020) restricted to the operations that overlap no test corruption:
// autocontrast, equalize, posterize, solarize, and the affine maps of rotate, shear x/y and
// translate x/y. Each repeats Pillow's arithmetic (ImageOps, and Image.transform with BILINEAR
// resampling, which AugMix calls), so outputs equal Pillow's value for value
// (tests/augmix.rs against tests/data/augmix_reference.npz).
//
// Images are float arrays (n, 32, 32, 3), NHWC, in [0, 1], in and out. One block per image, any
// blockDim.x that is a multiple of 32 (block-stride loops). An operation works on the uint8
// values of the image in shared memory, as Pillow works on a uint8 image; the plans (the
// operations, their parameters and the mixing weights, drawn on the host per image) come in a
// buffer of structs laid out as in src/data/augmix.rs.
#include "common.cuh"

#define AUGMIX_SIZE 32
#define AUGMIX_PIXELS (AUGMIX_SIZE * AUGMIX_SIZE)
#define AUGMIX_LEN (AUGMIX_PIXELS * 3)
#define AUGMIX_WIDTH 3
#define AUGMIX_MAX_DEPTH 3

// Operation kinds (AugmixOp::kind in src/data/augmix.rs).
#define AUGMIX_AUTOCONTRAST 0
#define AUGMIX_EQUALIZE 1
#define AUGMIX_POSTERIZE 2
#define AUGMIX_SOLARIZE 3
#define AUGMIX_AFFINE 4

// One operation. `level`: posterize's bits kept, solarize's threshold. `affine`: for the affine
// kinds, Image.transform's data (a0..a5: the input point of output pixel centre (x, y) is
// (a0 x + a1 y + a2, a3 x + a4 y + a5)), computed on the host in double precision as Pillow does.
struct AugmixOp {
    int kind;
    int level;
    double affine[6];
};

// One image's AugMix: `depth[c]` operations in chain c, the chains' Dirichlet weights, and the
// Beta weight of the mixture against the original.
struct AugmixPlan {
    float weights[AUGMIX_WIDTH];
    float mix;
    int depth[AUGMIX_WIDTH];
    int pad;
    AugmixOp ops[AUGMIX_WIDTH][AUGMIX_MAX_DEPTH];
};

namespace augmix_detail {

__device__ __forceinline__ unsigned char to_u8(float v) { return (unsigned char)__float2int_rn(v * 255.0f); }

// ImageOps.posterize (keep the high `bits`) and ImageOps.solarize (invert from the threshold
// up): the same table for every band.
__device__ void point_table(const AugmixOp& op, unsigned char* lut) {
    for (int i = threadIdx.x; i < 3 * 256; i += blockDim.x) {
        const int v = i & 255;
        if (op.kind == AUGMIX_POSTERIZE) {
            lut[i] = (unsigned char)(v & ~((1 << (8 - op.level)) - 1));
        } else {
            lut[i] = (unsigned char)(v < op.level ? v : 255 - v);
        }
    }
}

// ImageOps.autocontrast (no cutoff) for one band: the band's lowest and highest values
// stretched to 0 and 255, int() of the float64 line, clipped; identity for a single value.
__device__ void autocontrast_band(const int* h, unsigned char* lut) {
    int lo = 0;
    while (lo < 256 && h[lo] == 0) ++lo;
    int hi = 255;
    while (hi >= 0 && h[hi] == 0) --hi;
    if (hi <= lo) {
        for (int i = 0; i < 256; ++i) lut[i] = (unsigned char)i;
        return;
    }
    const double scale = 255.0 / (double)(hi - lo);
    const double offset = __dmul_rn((double)(-lo), scale);
    for (int i = 0; i < 256; ++i) {
        const int v = (int)__dadd_rn(__dmul_rn((double)i, scale), offset);
        lut[i] = (unsigned char)(v < 0 ? 0 : (v > 255 ? 255 : v));
    }
}

// ImageOps.equalize for one band: step = (pixels - count of the highest value present) // 255;
// value i maps to (step // 2 + pixels below i) // step; identity when the band has one value or
// step is 0. Pillow clips the table to 0..255 when it applies it.
__device__ void equalize_band(const int* h, unsigned char* lut) {
    int total = 0, last = 0, distinct = 0;
    for (int i = 0; i < 256; ++i) {
        if (h[i] != 0) {
            total += h[i];
            last = h[i];
            ++distinct;
        }
    }
    const int step = (total - last) / 255;
    if (distinct <= 1 || step == 0) {
        for (int i = 0; i < 256; ++i) lut[i] = (unsigned char)i;
        return;
    }
    int n = step / 2;
    for (int i = 0; i < 256; ++i) {
        const int v = n / step;
        lut[i] = (unsigned char)(v > 255 ? 255 : v);
        n += h[i];
    }
}

// Image.transform(AFFINE, BILINEAR) of an RGB image, Pillow's generic transform: the input
// point of the output pixel's centre; outside the image the pixel is 0; else bilinear between
// the 4 neighbours of (x - 0.5, y - 0.5) with columns clamped to the image, the first row
// clamped and a missing second row replaced by the first; each band truncated to uint8.
__device__ void affine_bilinear(const double* a, const unsigned char* src, unsigned char* dst) {
    for (int p = threadIdx.x; p < AUGMIX_PIXELS; p += blockDim.x) {
        const double xo = (double)(p % AUGMIX_SIZE) + 0.5, yo = (double)(p / AUGMIX_SIZE) + 0.5;
        double xin = __dadd_rn(__dadd_rn(__dmul_rn(a[0], xo), __dmul_rn(a[1], yo)), a[2]);
        double yin = __dadd_rn(__dadd_rn(__dmul_rn(a[3], xo), __dmul_rn(a[4], yo)), a[5]);
        unsigned char* out = dst + 3 * p;
        if (xin < 0.0 || xin >= AUGMIX_SIZE || yin < 0.0 || yin >= AUGMIX_SIZE) {
            out[0] = out[1] = out[2] = 0;
            continue;
        }
        xin -= 0.5;
        yin -= 0.5;
        const int x = (int)floor(xin), y = (int)floor(yin);
        const double dx = xin - x, dy = yin - y;
        const int x0 = x < 0 ? 0 : (x > AUGMIX_SIZE - 1 ? AUGMIX_SIZE - 1 : x);
        const int x1 = x + 1 < 0 ? 0 : (x + 1 > AUGMIX_SIZE - 1 ? AUGMIX_SIZE - 1 : x + 1);
        const int y0 = y < 0 ? 0 : (y > AUGMIX_SIZE - 1 ? AUGMIX_SIZE - 1 : y);
        const bool second_row = y + 1 >= 0 && y + 1 < AUGMIX_SIZE;
        for (int b = 0; b < 3; ++b) {
            const unsigned char* r0 = src + y0 * AUGMIX_SIZE * 3 + b;
            double v1 = __dadd_rn((double)r0[3 * x0], __dmul_rn((double)(r0[3 * x1] - r0[3 * x0]), dx));
            double v2 = v1;
            if (second_row) {
                const unsigned char* r1 = src + (y + 1) * AUGMIX_SIZE * 3 + b;
                v2 = __dadd_rn((double)r1[3 * x0], __dmul_rn((double)(r1[3 * x1] - r1[3 * x0]), dx));
            }
            out[b] = (unsigned char)(int)__dadd_rn(v1, __dmul_rn(__dsub_rn(v2, v1), dy));
        }
    }
}

// Shared working memory of one block.
struct Scratch {
    unsigned char original[AUGMIX_LEN];
    unsigned char ping[AUGMIX_LEN];
    unsigned char pong[AUGMIX_LEN];
    int histogram[3 * 256];
    unsigned char lut[3 * 256];
};

// Applies `op` to `src` into `dst` (both in shared memory); every thread of the block calls it.
__device__ void apply(const AugmixOp& op, const unsigned char* src, unsigned char* dst, Scratch& s) {
    if (op.kind == AUGMIX_AFFINE) {
        affine_bilinear(op.affine, src, dst);
        __syncthreads();
        return;
    }
    if (op.kind == AUGMIX_AUTOCONTRAST || op.kind == AUGMIX_EQUALIZE) {
        for (int i = threadIdx.x; i < 3 * 256; i += blockDim.x) s.histogram[i] = 0;
        __syncthreads();
        for (int i = threadIdx.x; i < AUGMIX_LEN; i += blockDim.x) atomicAdd(&s.histogram[(i % 3) * 256 + src[i]], 1);
        __syncthreads();
        if (threadIdx.x < 3) {
            const int* h = s.histogram + threadIdx.x * 256;
            unsigned char* lut = s.lut + threadIdx.x * 256;
            if (op.kind == AUGMIX_AUTOCONTRAST) {
                autocontrast_band(h, lut);
            } else {
                equalize_band(h, lut);
            }
        }
    } else {
        point_table(op, s.lut);
    }
    __syncthreads();
    for (int i = threadIdx.x; i < AUGMIX_LEN; i += blockDim.x) dst[i] = s.lut[(i % 3) * 256 + src[i]];
    __syncthreads();
}

}  // namespace augmix_detail

// One operation per image: out[i] = ops[i] applied to in[i] (for the tests against Pillow).
extern "C" __global__ void augmix_op_f32(float* __restrict__ out, const float* __restrict__ in,
                                         const AugmixOp* __restrict__ ops) {
    using namespace augmix_detail;
    __shared__ Scratch s;
    const float* x = in + (size_t)blockIdx.x * AUGMIX_LEN;
    float* y = out + (size_t)blockIdx.x * AUGMIX_LEN;
    for (int i = threadIdx.x; i < AUGMIX_LEN; i += blockDim.x) s.original[i] = to_u8(x[i]);
    __syncthreads();
    apply(ops[blockIdx.x], s.original, s.ping, s);
    for (int i = threadIdx.x; i < AUGMIX_LEN; i += blockDim.x) y[i] = (float)s.ping[i] / 255.0f;
}

// AugMix of each image: every chain applies its operations in turn to the uint8 image, and the
// result is (1 - mix) x + mix sum_c weights[c] chain_c, in float32 on the [0, 1] scale (AugMix
// mixes after its normalisation, which is affine with weights summing to 1: the same image).
extern "C" __global__ void augmix_f32(float* __restrict__ out, const float* __restrict__ in,
                                      const AugmixPlan* __restrict__ plans) {
    using namespace augmix_detail;
    __shared__ Scratch s;
    const AugmixPlan& plan = plans[blockIdx.x];
    const float* x = in + (size_t)blockIdx.x * AUGMIX_LEN;
    float* y = out + (size_t)blockIdx.x * AUGMIX_LEN;
    for (int i = threadIdx.x; i < AUGMIX_LEN; i += blockDim.x) {
        s.original[i] = to_u8(x[i]);
        y[i] = 0.0f;
    }
    __syncthreads();
    for (int c = 0; c < AUGMIX_WIDTH; ++c) {
        const unsigned char* src = s.original;
        unsigned char* dst = s.ping;
        for (int d = 0; d < plan.depth[c]; ++d) {
            apply(plan.ops[c][d], src, dst, s);
            src = dst;
            dst = dst == s.ping ? s.pong : s.ping;
        }
        // Each thread accumulates the same elements in every chain: no race, a fixed order.
        for (int i = threadIdx.x; i < AUGMIX_LEN; i += blockDim.x) y[i] += plan.weights[c] * ((float)src[i] / 255.0f);
        __syncthreads();
    }
    for (int i = threadIdx.x; i < AUGMIX_LEN; i += blockDim.x) {
        y[i] = (1.0f - plan.mix) * ((float)s.original[i] / 255.0f) + plan.mix * y[i];
    }
}
