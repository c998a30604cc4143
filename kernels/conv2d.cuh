// What both convolution kernel files share (conv2d.cu: f32 on the SIMT cores; conv2d_bf16.cu:
// bf16 on the tensor cores): the convolution's sizes and the index arithmetic that gathers the
// implicit GEMM's operands from NHWC activations.
#pragma once

#include "bn_relu.cuh"

// Everything about one convolution, passed by value.
struct ConvShape {
    int batch, height, width, in_channels, out_channels, kernel, stride, padding, groups, out_height,
        out_width;
    __device__ int in_per_group() const { return in_channels / groups; }
    __device__ int out_per_group() const { return out_channels / groups; }
    __device__ int taps() const { return kernel * kernel; }
};

// An output pixel: where its receptive field starts in the input.
struct PixelRow {
    long long image;  // offset of the image in the input
    int ih0, iw0;     // top-left input position of the window (may be negative: padding)
};

// A reduction index k = (kh, kw, ci) of the forward pass.
struct TapColumn {
    int kh, kw, channel;  // channel includes the group offset
};

__device__ __forceinline__ PixelRow pixel_row(const ConvShape& s, int m) {
    const int ow = m % s.out_width, oh = (m / s.out_width) % s.out_height, b = m / (s.out_width * s.out_height);
    return PixelRow{(long long)b * s.height * s.width * s.in_channels, oh * s.stride - s.padding,
                    ow * s.stride - s.padding};
}

__device__ __forceinline__ TapColumn tap_column(const ConvShape& s, int g, int k) {
    const int ipg = s.in_per_group(), tap = k / ipg;
    return TapColumn{tap / s.kernel, tap % s.kernel, g * ipg + k % ipg};
}

// The input under a window's tap, through the map a mapped convolution applies (relu(bn(x)));
// padding is 0 after the map, as it is for the stored activation.
__device__ __forceinline__ float input_at(const float* __restrict__ x, const ChannelMap& map, const ConvShape& s,
                                          const PixelRow& r, const TapColumn& c) {
    const int ih = r.ih0 + c.kh, iw = r.iw0 + c.kw;
    if (ih < 0 || iw < 0 || ih >= s.height || iw >= s.width) return 0.0f;
    return map(x[r.image + ((long long)ih * s.width + iw) * s.in_channels + c.channel], c.channel);
}

// Eight consecutive floats as two 16-byte loads (`at` 32-byte aligned: 8 aligned channels).
__device__ __forceinline__ void load8(const float* __restrict__ at, float (&v)[8]) {
    const float4 lo = reinterpret_cast<const float4*>(at)[0], hi = reinterpret_cast<const float4*>(at)[1];
    v[0] = lo.x, v[1] = lo.y, v[2] = lo.z, v[3] = lo.w, v[4] = hi.x, v[5] = hi.y, v[6] = hi.z, v[7] = hi.w;
}

// Channels [channel, channel + 8) of one pixel through the map.
__device__ __forceinline__ void mapped8(const float* __restrict__ at, const ChannelMap& map, int channel,
                                        float (&v)[8]) {
    load8(at, v);
    map.apply8(v, channel);
}

// The A operands (rows x reduction) of the three directions. Each gathers through three calls,
// so that index arithmetic is not redone per element: row(r) decomposes a row index once,
// col(k) a reduction index once, and at(row, col) is then a few adds and one load. Loads
// outside the input are never made (padding reads as 0). `k_contiguous`: whether consecutive
// reduction indices are adjacent in memory (the tensor-core kernels stage those along k).
// `rows8`: rows8_at(row, col, v) gives rows row..row + 7 at one reduction index (8 aligned
// channels, the launcher checks), for operands whose reduction runs over pixels.
// `by8`: at8(row, col, v) gives reduction indices col..col + 7 at once (one address, one bounds
// test, two 16-byte loads) when the channels reduced over per group are a multiple of 8, so that
// eight consecutive k are eight aligned channels of one tap (the kernel's launcher checks).

// Forward A: the input gathered under each output pixel's window.
struct ForwardInput {
    static constexpr bool k_contiguous = true;  // channels
    static constexpr bool by8 = true;
    static constexpr bool rows8 = false, packed = false;
    const float* x;
    ChannelMap map;
    ConvShape s;
    int g;
    __device__ __forceinline__ PixelRow row(int m) const { return pixel_row(s, m); }
    __device__ __forceinline__ TapColumn col(int k) const { return tap_column(s, g, k); }
    __device__ __forceinline__ float at(const PixelRow& r, const TapColumn& c) const {
        return input_at(x, map, s, r, c);
    }
    __device__ __forceinline__ void at8(const PixelRow& r, const TapColumn& c, float (&v)[8]) const {
        const int ih = r.ih0 + c.kh, iw = r.iw0 + c.kw;
        if (ih < 0 || iw < 0 || ih >= s.height || iw >= s.width) {
            for (int i = 0; i < 8; ++i) v[i] = 0.0f;
            return;
        }
        mapped8(x + r.image + ((long long)ih * s.width + iw) * s.in_channels + c.channel, map, c.channel, v);
    }
};

// Backward data A: dY gathered for input pixel m through tap (kh, kw) from output channel o:
// input (ih, iw) receives from output (oh, ow) when oh * stride - padding + kh == ih.
struct InputPixel {
    int b, ih, iw;
};

struct TapOutput {
    int kh, kw, o;
};

struct BackwardGradOut {
    static constexpr bool k_contiguous = true;  // output channels
    static constexpr bool by8 = true;
    static constexpr bool rows8 = false, packed = false;
    const float* dy;
    ConvShape s;
    int g;
    __device__ __forceinline__ InputPixel row(int m) const {
        return InputPixel{m / (s.width * s.height), (m / s.width) % s.height, m % s.width};
    }
    __device__ __forceinline__ TapOutput col(int k) const {
        const int opg = s.out_per_group(), tap = k / opg;
        return TapOutput{tap / s.kernel, tap % s.kernel, k % opg};
    }
    // Where dY's element for (r, c) is, or -1 where the tap reaches no output pixel.
    __device__ __forceinline__ long long offset(const InputPixel& r, const TapOutput& c) const {
        const int th = r.ih + s.padding - c.kh, tw = r.iw + s.padding - c.kw;
        if (th < 0 || tw < 0 || th % s.stride != 0 || tw % s.stride != 0) return -1;
        const int oh = th / s.stride, ow = tw / s.stride;
        if (oh >= s.out_height || ow >= s.out_width) return -1;
        return (((long long)r.b * s.out_height + oh) * s.out_width + ow) * s.out_channels + g * s.out_per_group() +
               c.o;
    }
    __device__ __forceinline__ float at(const InputPixel& r, const TapOutput& c) const {
        const long long at = offset(r, c);
        return at < 0 ? 0.0f : dy[at];
    }
    __device__ __forceinline__ void at8(const InputPixel& r, const TapOutput& c, float (&v)[8]) const {
        const long long at = offset(r, c);
        if (at < 0) {
            for (int i = 0; i < 8; ++i) v[i] = 0.0f;
            return;
        }
        load8(dy + at, v);
    }
};

// Backward weight A: dY transposed, rows = output channels of group g, reduction = pixels.
struct GradOutChannel {
    static constexpr bool k_contiguous = false;  // pixels, out_channels apart
    static constexpr bool by8 = false;
    static constexpr bool rows8 = true, packed = false;
    const float* dy;
    ConvShape s;
    int g;
    __device__ __forceinline__ int row(int o) const { return g * s.out_per_group() + o; }
    __device__ __forceinline__ long long col(int p) const { return (long long)p * s.out_channels; }
    __device__ __forceinline__ float at(int channel, long long pixel) const { return dy[pixel + channel]; }
    // Rows channel..channel + 7 at one pixel (out_per_group a multiple of 8: two 16-byte loads).
    __device__ __forceinline__ void rows8_at(int channel, long long pixel, float (&v)[8]) const {
        load8(dy + pixel + channel, v);
    }
};

// y[m, n] of group g = v, plus the residual's element when there is one (the residual add of a
// pre-activation block, done as the convolution writes); returns what it stored.
__device__ __forceinline__ float store_output(float* __restrict__ y, const float* __restrict__ residual,
                                             const ConvShape& s, int g, int m, int n, float v) {
    const long long at = (long long)m * s.out_channels + g * s.out_per_group() + n;
    if (residual != nullptr) v += residual[at];
    y[at] = v;
    return v;
}

// The tensor-core kernels' stores, two columns at a time (an mma fragment's neighbours):
// dst[at] = v0 and, when both, dst[at + 1] = v1, each plus the residual's element when there is
// one; one 8-byte store (and residual load) where `at` is even. Returns what it stored (0 for
// the second value when not both).
__device__ __forceinline__ float2 store_two(float* __restrict__ dst, const float* __restrict__ residual,
                                           long long at, float v0, float v1, bool both) {
    if (both && (at & 1) == 0) {
        if (residual != nullptr) {
            const float2 r = *reinterpret_cast<const float2*>(residual + at);
            v0 += r.x, v1 += r.y;
        }
        *reinterpret_cast<float2*>(dst + at) = float2{v0, v1};
        return float2{v0, v1};
    }
    if (residual != nullptr) v0 += residual[at];
    dst[at] = v0;
    if (!both) return float2{v0, 0.0f};
    if (residual != nullptr) v1 += residual[at + 1];
    dst[at + 1] = v1;
    return float2{v0, v1};
}

// Where a forward convolution sums its output per channel as it writes it, for the batch norm
// that follows (its statistics without another pass over the output): partial[part][0][c] = sum
// and partial[part][1][c] = sum of squares of channel c over the rows of tile part = blockIdx.x,
// in double, the layout bn_stats_finalize_f32 reads. Null: not summed (and the other directions).
struct ColumnSumsOut {
    static constexpr bool wanted = true;
    double* partial;
    int first_channel, channels;  // the tile's first column among all channels; all of them
};

// The other directions' (and a forward launch's without it: partial null) sums: none compiled.
struct NoColumnSums {
    static constexpr bool wanted = false;
};

// A block's share: every thread adds the values it stores into f32 sums of its columns (a few
// rows each), puts them into its slot of each column, and write() adds each column's SLOTS
// slots in order, in double: deterministic, as bn_partial_sums_f64 is. `scratch` is shared
// memory of 2 * SLOTS * BN floats that nothing else uses by the first put().
template <int SLOTS, int BN>
struct TileColumnSums {
    ColumnSumsOut out;
    float* scratch;
    __device__ __forceinline__ void put(int slot, int col, float sum, float squares) const {
        scratch[slot * BN + col] = sum;
        scratch[(SLOTS + slot) * BN + col] = squares;
    }
    // Columns [0, columns) of the tile exist. Every thread of the block calls it, after its puts.
    __device__ void write(int columns) const {
        __syncthreads();
        for (int t = threadIdx.x; t < 2 * BN; t += blockDim.x) {
            const int quantity = t / BN, col = t % BN;
            if (col >= columns) continue;
            double total = 0.0;
            for (int slot = 0; slot < SLOTS; ++slot) total += scratch[(quantity * SLOTS + slot) * BN + col];
            out.partial[((long long)blockIdx.x * 2 + quantity) * out.channels + out.first_channel + col] = total;
        }
    }
};

// Backward weight's share of one block: blockIdx.z = split * groups + g covers the output pixels
// [begin, end) (the reduction), and its partial sums go to split's slice of `partial`
// ([splits][out_channels][taps * in_per_group], reduction index order (kh, kw, ci)), added in
// order by conv2d_bwd_weight_reduce_f32.
struct WeightGradientSplit {
    int g, begin, end, K;
    float* out;
    __device__ WeightGradientSplit(float* partial, const ConvShape& s, int chunk) {
        g = blockIdx.z % s.groups;
        const int split = blockIdx.z / s.groups;
        K = s.taps() * s.in_per_group();
        begin = split * chunk;
        end = min(s.batch * s.out_height * s.out_width, begin + chunk);
        out = partial + (long long)split * s.out_channels * K;
    }
    __device__ __forceinline__ void store(const ConvShape& s, int o, int k, float v) const {
        out[(long long)(g * s.out_per_group() + o) * K + k] = v;
    }
    __device__ __forceinline__ float2 store_two(const ConvShape& s, int o, int k, float v0, float v1,
                                                bool both) const {
        return ::store_two(out, nullptr, (long long)(g * s.out_per_group() + o) * K + k, v0, v1, both);
    }
};

#define CONV_SHAPE_PARAMS                                                                                 \
    int batch, int height, int width, int in_channels, int out_channels, int kernel, int stride,         \
        int padding, int groups, int out_height, int out_width
#define CONV_SHAPE                                                                                        \
    ConvShape { batch, height, width, in_channels, out_channels, kernel, stride, padding, groups,         \
                out_height, out_width }
