// jpeg_compression (CORRUPTIONS.md §3.16): the reference saves each image with Pillow
// (`save('JPEG', quality=q)`: baseline, 4:2:0, IJG tables scaled by q, no smoothing) and decodes
// it again with Pillow's defaults (islow IDCT, fancy upsampling). Pillow 13 bundles
// libjpeg-turbo; this kernel repeats that codec's integer arithmetic step by step, so the
// output matches it value for value:
//   encode: RGB -> YCbCr (jccolor.c fixed point), 2x2 chroma averaging with alternating bias
//           (jcsample.c h2v2), islow forward DCT (jfdctint.c), quantisation by reciprocal
//           multiplication (jcdctmgr.c);
//   decode: dequantisation, islow inverse DCT (jidctint.c), triangle ("fancy") h2v2 chroma
//           upsampling with edge rows/columns replicated (jdsample.c), YCbCr -> RGB (jdcolor.c).
// Huffman coding sits between the two halves; it is lossless, so it is skipped.
//
// One block per image. A 32x32 image is 4 MCUs of 16x16: 16 luma and 4 + 4 chroma 8x8 blocks,
// kept in shared memory as one array of 1536 samples (Y 32x32, then Cb 16x16, then Cr 16x16).
#include "corrupt_common.cuh"

namespace corrupt_jpeg {

// The example tables of ITU-T T.81 Annex K (libjpeg's defaults), natural (row-major) order.
__constant__ unsigned char kLumaBase[64] = {
    16, 11, 10, 16, 24,  40,  51,  61,  12, 12, 14, 19, 26,  58,  60,  55,
    14, 13, 16, 24, 40,  57,  69,  56,  14, 17, 22, 29, 51,  87,  80,  62,
    18, 22, 37, 56, 68,  109, 103, 77,  24, 35, 55, 64, 81,  104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99};
__constant__ unsigned char kChromaBase[64] = {
    17, 18, 24, 47, 99, 99, 99, 99, 18, 21, 26, 66, 99, 99, 99, 99,
    24, 26, 56, 99, 99, 99, 99, 99, 47, 66, 99, 99, 99, 99, 99, 99,
    99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99,
    99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99};

constexpr int kLumaSamples = CORRUPT_PIXELS;       // 32x32
constexpr int kChromaSide = CORRUPT_SIZE / 2;      // 16
constexpr int kChromaSamples = kChromaSide * kChromaSide;
constexpr int kSamples = kLumaSamples + 2 * kChromaSamples;
constexpr int kBlocks = 16 + 4 + 4;                // 8x8 blocks per image
constexpr int kLines = kBlocks * 8;                // rows (or columns) of all blocks

// Fixed-point constants of the islow DCTs: FIX(c) = round(c * 2^13).
constexpr int kConstBits = 13;
constexpr int kPass1Bits = 2;
constexpr int FIX_0_298631336 = 2446;
constexpr int FIX_0_390180644 = 3196;
constexpr int FIX_0_541196100 = 4433;
constexpr int FIX_0_765366865 = 6270;
constexpr int FIX_0_899976223 = 7373;
constexpr int FIX_1_175875602 = 9633;
constexpr int FIX_1_501321110 = 12299;
constexpr int FIX_1_847759065 = 15137;
constexpr int FIX_1_961570560 = 16069;
constexpr int FIX_2_053119869 = 16819;
constexpr int FIX_2_562915447 = 20995;
constexpr int FIX_3_072711026 = 25172;

// Colour conversion constants: FIX(c) = round(c * 2^16).
constexpr int kScaleBits = 16;
constexpr int kHalf = 1 << (kScaleBits - 1);
constexpr int kChromaOffset = 128 << kScaleBits;

__device__ __forceinline__ int descale(int x, int n) { return (x + (1 << (n - 1))) >> n; }

// jpeg_quality_scaling + jpeg_add_quant_table with force_baseline (Pillow passes TRUE).
__device__ __forceinline__ int quant_value(int base, int quality) {
    const int scale = quality < 50 ? 5000 / quality : 200 - 2 * quality;
    const int q = (base * scale + 50) / 100;
    return q < 1 ? 1 : (q > 255 ? 255 : q);
}

// Where the 8x8 block `b` (0..15 luma in raster order, 16..19 Cb, 20..23 Cr) starts in the sample
// array, and its row pitch.
__device__ __forceinline__ int block_origin(int b, int* pitch) {
    if (b < 16) {
        *pitch = CORRUPT_SIZE;
        return (b >> 2) * 8 * CORRUPT_SIZE + (b & 3) * 8;
    }
    const int c = b - 16;  // chroma block: plane c / 4, position c % 4 in a 2x2 grid
    *pitch = kChromaSide;
    return kLumaSamples + (c >> 2) * kChromaSamples + ((c >> 1) & 1) * 8 * kChromaSide + (c & 1) * 8;
}

// jfdctint.c on 8 values with stride `s`: `last` = the column pass (descales by the pass-1
// scaling), else the row pass (scales up by 2^kPass1Bits).
__device__ __forceinline__ void forward_dct_1d(int* d, int s, bool last) {
    const int t0 = d[0] + d[7 * s], t7 = d[0] - d[7 * s];
    const int t1 = d[s] + d[6 * s], t6 = d[s] - d[6 * s];
    const int t2 = d[2 * s] + d[5 * s], t5 = d[2 * s] - d[5 * s];
    const int t3 = d[3 * s] + d[4 * s], t4 = d[3 * s] - d[4 * s];
    const int t10 = t0 + t3, t13 = t0 - t3, t11 = t1 + t2, t12 = t1 - t2;
    const int shift = last ? kConstBits + kPass1Bits : kConstBits - kPass1Bits;
    d[0] = last ? descale(t10 + t11, kPass1Bits) : (t10 + t11) * (1 << kPass1Bits);
    d[4 * s] = last ? descale(t10 - t11, kPass1Bits) : (t10 - t11) * (1 << kPass1Bits);
    const int z1e = (t12 + t13) * FIX_0_541196100;
    d[2 * s] = descale(z1e + t13 * FIX_0_765366865, shift);
    d[6 * s] = descale(z1e - t12 * FIX_1_847759065, shift);
    // Odd part.
    int z1 = t4 + t7, z2 = t5 + t6, z3 = t4 + t6, z4 = t5 + t7;
    const int z5 = (z3 + z4) * FIX_1_175875602;
    const int o4 = t4 * FIX_0_298631336, o5 = t5 * FIX_2_053119869;
    const int o6 = t6 * FIX_3_072711026, o7 = t7 * FIX_1_501321110;
    z1 *= -FIX_0_899976223;
    z2 *= -FIX_2_562915447;
    z3 = z3 * -FIX_1_961570560 + z5;
    z4 = z4 * -FIX_0_390180644 + z5;
    d[7 * s] = descale(o4 + z1 + z3, shift);
    d[5 * s] = descale(o5 + z2 + z4, shift);
    d[3 * s] = descale(o6 + z2 + z3, shift);
    d[s] = descale(o7 + z1 + z4, shift);
}

// jidctint.c on 8 (dequantised) values with stride `s`, descaled by `shift` (the column pass
// keeps kPass1Bits extra bits; the row pass removes them and the factor 8).
__device__ __forceinline__ void inverse_dct_1d(int* d, int s, int shift) {
    // Even part.
    const int z1e = (d[2 * s] + d[6 * s]) * FIX_0_541196100;
    const int e2 = z1e - d[6 * s] * FIX_1_847759065;
    const int e3 = z1e + d[2 * s] * FIX_0_765366865;
    const int e0 = (d[0] + d[4 * s]) * (1 << kConstBits);
    const int e1 = (d[0] - d[4 * s]) * (1 << kConstBits);
    const int t10 = e0 + e3, t13 = e0 - e3, t11 = e1 + e2, t12 = e1 - e2;
    // Odd part.
    int o0 = d[7 * s], o1 = d[5 * s], o2 = d[3 * s], o3 = d[s];
    int z1 = o0 + o3, z2 = o1 + o2, z3 = o0 + o2, z4 = o1 + o3;
    const int z5 = (z3 + z4) * FIX_1_175875602;
    o0 *= FIX_0_298631336;
    o1 *= FIX_2_053119869;
    o2 *= FIX_3_072711026;
    o3 *= FIX_1_501321110;
    z1 *= -FIX_0_899976223;
    z2 *= -FIX_2_562915447;
    z3 = z3 * -FIX_1_961570560 + z5;
    z4 = z4 * -FIX_0_390180644 + z5;
    o0 += z1 + z3;
    o1 += z2 + z4;
    o2 += z2 + z3;
    o3 += z1 + z4;
    d[0] = descale(t10 + o3, shift);
    d[7 * s] = descale(t10 - o3, shift);
    d[s] = descale(t11 + o2, shift);
    d[6 * s] = descale(t11 - o2, shift);
    d[2 * s] = descale(t12 + o1, shift);
    d[5 * s] = descale(t12 - o1, shift);
    d[3 * s] = descale(t13 + o0, shift);
    d[4 * s] = descale(t13 - o0, shift);
}

// libjpeg-turbo's quantisation (jcdctmgr.c, 16-bit DCT elements as in its SIMD builds): the
// divisor is 8 * q (the islow DCT output is scaled by 8), and division with rounding is done as
// a multiplication by a reciprocal with a correction term, which this repeats exactly.
__device__ __forceinline__ int quantize(int coef, int q) {
    const int divisor = q << 3;
    const int b = 31 - __clz(divisor);  // floor(log2(divisor))
    int r = 16 + b;
    unsigned long long reciprocal = (1ull << r) / (unsigned)divisor;
    const unsigned remainder = (unsigned)((1ull << r) % (unsigned)divisor);
    unsigned correction = (unsigned)divisor / 2;
    if (remainder == 0) {  // a power of two
        reciprocal >>= 1;
        --r;
    } else if (remainder <= (unsigned)divisor / 2) {
        ++correction;
    } else {
        ++reciprocal;
    }
    const unsigned magnitude = (unsigned)(coef < 0 ? -coef : coef);
    const int level = (int)(((magnitude + correction) * reciprocal) >> r);
    return coef < 0 ? -level : level;
}

}  // namespace corrupt_jpeg

// out, in: (n, 32, 32, 3). quality: Pillow's quality (1..100).
extern "C" __global__ void corrupt_jpeg_compression(float* __restrict__ out, const float* __restrict__ in,
                                                    int quality) {
    using namespace corrupt_jpeg;
    __shared__ int samples[kSamples];
    const float* img = in + (long long)blockIdx.x * CORRUPT_LEN;
    float* dst = out + (long long)blockIdx.x * CORRUPT_LEN;

    // RGB -> YCbCr (jccolor.c): luma per pixel, chroma summed over 2x2 pixels and averaged with
    // the bias 1, 2, 1, 2, ... along each chroma row (jcsample.c h2v2_downsample). The samples are
    // stored level-shifted by -128, as the forward DCT takes them.
    const int fr = 19595, fg = 38470, fb = 7471;  // FIX(0.29900), FIX(0.58700), FIX(0.11400)
    for (int p = threadIdx.x; p < kLumaSamples; p += blockDim.x) {
        const int r = (int)img[3 * p], g = (int)img[3 * p + 1], b = (int)img[3 * p + 2];
        samples[p] = ((fr * r + fg * g + fb * b + kHalf) >> kScaleBits) - 128;
    }
    for (int c = threadIdx.x; c < kChromaSamples; c += blockDim.x) {
        const int cy = c / kChromaSide, cx = c % kChromaSide;
        int cb_sum = 0, cr_sum = 0;
        for (int k = 0; k < 4; ++k) {
            const int p = (2 * cy + (k >> 1)) * CORRUPT_SIZE + 2 * cx + (k & 1);
            const int r = (int)img[3 * p], g = (int)img[3 * p + 1], b = (int)img[3 * p + 2];
            // FIX(0.16874), FIX(0.33126), FIX(0.5); FIX(0.5), FIX(0.41869), FIX(0.08131). The
            // rounding constant is ONE_HALF - 1 (jccolor.c folds it into the B/R table).
            cb_sum += (-11059 * r - 21709 * g + 32768 * b + kChromaOffset + kHalf - 1) >> kScaleBits;
            cr_sum += (32768 * r - 27439 * g - 5329 * b + kChromaOffset + kHalf - 1) >> kScaleBits;
        }
        const int bias = 1 + (cx & 1);
        samples[kLumaSamples + c] = ((cb_sum + bias) >> 2) - 128;
        samples[kLumaSamples + kChromaSamples + c] = ((cr_sum + bias) >> 2) - 128;
    }
    __syncthreads();

    // Forward DCT, pass 1: the rows of every block.
    for (int line = threadIdx.x; line < kLines; line += blockDim.x) {
        int pitch;
        const int origin = block_origin(line >> 3, &pitch);
        forward_dct_1d(samples + origin + (line & 7) * pitch, 1, false);
    }
    __syncthreads();

    // Per column of every block: forward DCT pass 2, quantise and dequantise each coefficient,
    // inverse DCT pass 1 (all three work on the same column).
    for (int line = threadIdx.x; line < kLines; line += blockDim.x) {
        const int block = line >> 3, col = line & 7;
        int pitch;
        int* d = samples + block_origin(block, &pitch) + col;
        forward_dct_1d(d, pitch, true);
        const unsigned char* base = block < 16 ? kLumaBase : kChromaBase;
        for (int row = 0; row < 8; ++row) {
            const int q = quant_value(base[row * 8 + col], quality);
            d[row * pitch] = quantize(d[row * pitch], q) * q;
        }
        inverse_dct_1d(d, pitch, kConstBits - kPass1Bits);
    }
    __syncthreads();

    // Inverse DCT pass 2: the rows, descaled to samples and clamped to 0..255 (libjpeg-turbo's
    // SIMD IDCT saturates; the C range-limit table agrees for any value a real image gives).
    for (int line = threadIdx.x; line < kLines; line += blockDim.x) {
        int pitch;
        int* d = samples + block_origin(line >> 3, &pitch) + (line & 7) * pitch;
        inverse_dct_1d(d, 1, kConstBits + kPass1Bits + 3);
        for (int k = 0; k < 8; ++k) {
            const int v = d[k] + 128;
            d[k] = v < 0 ? 0 : (v > 255 ? 255 : v);
        }
    }
    __syncthreads();

    // Fancy upsampling (jdsample.c h2v2_fancy_upsample): each output chroma sample is
    // (9 * nearest + 3 * horizontal + 3 * vertical + diagonal neighbour) / 16, with the
    // rounding 8 for even and 7 for odd output columns; rows and columns beyond the image repeat
    // the edge. Then YCbCr -> RGB (jdcolor.c) and clamping.
    for (int p = threadIdx.x; p < kLumaSamples; p += blockDim.x) {
        const int y = p / CORRUPT_SIZE, x = p % CORRUPT_SIZE;
        const int cy = y >> 1, cx = x >> 1;
        const int ny = clamp_index(cy + ((y & 1) ? 1 : -1), kChromaSide);
        const int nx = clamp_index(cx + ((x & 1) ? 1 : -1), kChromaSide);
        const int rounding = (x & 1) ? 7 : 8;
        int chroma[2];
        for (int k = 0; k < 2; ++k) {
            const int* plane = samples + kLumaSamples + k * kChromaSamples;
            const int near_sum = 3 * plane[cy * kChromaSide + cx] + plane[ny * kChromaSide + cx];
            const int side_sum = 3 * plane[cy * kChromaSide + nx] + plane[ny * kChromaSide + nx];
            chroma[k] = (3 * near_sum + side_sum + rounding) >> 4;
        }
        const int luma = samples[p];
        const int cb = chroma[0] - 128, cr = chroma[1] - 128;
        // FIX(1.40200), FIX(1.77200), FIX(0.34414), FIX(0.71414).
        const int r = luma + ((91881 * cr + kHalf) >> kScaleBits);
        const int g = luma + ((-22554 * cb - 46802 * cr + kHalf) >> kScaleBits);
        const int b = luma + ((116130 * cb + kHalf) >> kScaleBits);
        dst[3 * p] = (float)(r < 0 ? 0 : (r > 255 ? 255 : r));
        dst[3 * p + 1] = (float)(g < 0 ? 0 : (g > 255 ? 255 : g));
        dst[3 * p + 2] = (float)(b < 0 ? 0 : (b > 255 ? 255 : b));
    }
}
