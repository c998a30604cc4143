// 2-D convolution, NHWC activations, OIHW weights, with stride, zero padding and groups.
// Groups = N runs all N experts' convolutions in one launch: blockIdx.z is the group.
//
// Every direction is an implicit GEMM (nothing is unfolded in memory) computed by one tiled
// routine: a block of 256 threads owns a BM x BN tile of the result, walks the reduction in
// steps of BK, stages BK-deep slices of both operands in shared memory and accumulates a 4 x 4
// sub-tile per thread in registers. The operands are gathered on the fly:
//   forward        y[m, n]   = sum_k A[m, k] W[k, n]    m = (b, oh, ow), n = out channel,
//                                                       k = (kh, kw, in channel)
//   backward data  dx[m, n]  = sum_k dY[m, k] W'[k, n]  m = (b, ih, iw), n = in channel,
//                                                       k = (kh, kw, out channel)
//   backward weight dW[m, n] = sum_p dY[p, m] A[p, n]   m = out channel, n = (kh, kw, in channel),
//                                                       p = output pixel, split over blockIdx.z
// Three tile shapes serve the channel counts of the models: 64x64, and 256x16 / 16x256 for
// groups of 16 channels or fewer (a width-16 expert's first stage), so small groups waste no
// threads.
#include "common.cuh"

// Everything about one convolution, passed by value.
struct ConvShape {
    int batch, height, width, in_channels, out_channels, kernel, stride, padding, groups, out_height,
        out_width;
    __device__ int in_per_group() const { return in_channels / groups; }
    __device__ int out_per_group() const { return out_channels / groups; }
    __device__ int taps() const { return kernel * kernel; }
};

static constexpr int BK = 16;

// C[m0.., n0..] = sum over k in [k_begin, k_end) of a(m, k) * b(k, n), stored with store(m, n, v).
// Loaders return 0 outside the matrix; store is called only inside M x N.
template <int BM, int BN, class LoadA, class LoadB, class Store>
__device__ void tile_gemm(int M, int N, int k_begin, int k_end, int m0, int n0, LoadA a, LoadB b, Store store) {
    static_assert((BM / 4) * (BN / 4) == 256, "a tile is 256 threads of 4x4 results");
    constexpr int TX = BN / 4;  // threads along n
    __shared__ float As[BK][BM + 4];
    __shared__ float Bs[BK][BN + 4];
    const int tid = threadIdx.x;
    const int tx = tid % TX, ty = tid / TX;
    float acc[4][4];
    for (int i = 0; i < 4; ++i)
        for (int j = 0; j < 4; ++j) acc[i][j] = 0.0f;

    for (int k0 = k_begin; k0 < k_end; k0 += BK) {
        // Stage the BK-deep slices; consecutive threads take consecutive k (for A) or n (for B).
        for (int e = tid; e < BM * BK; e += 256) {
            const int mm = e / BK, kk = e % BK;
            const int m = m0 + mm, k = k0 + kk;
            As[kk][mm] = (m < M && k < k_end) ? a(m, k) : 0.0f;
        }
        for (int e = tid; e < BK * BN; e += 256) {
            const int kk = e / BN, nn = e % BN;
            const int n = n0 + nn, k = k0 + kk;
            Bs[kk][nn] = (n < N && k < k_end) ? b(k, n) : 0.0f;
        }
        __syncthreads();
        for (int kk = 0; kk < BK; ++kk) {
            float av[4], bv[4];
            for (int i = 0; i < 4; ++i) av[i] = As[kk][ty + i * (BM / 4)];
            for (int j = 0; j < 4; ++j) bv[j] = Bs[kk][tx + j * TX];
            for (int i = 0; i < 4; ++i)
                for (int j = 0; j < 4; ++j) acc[i][j] = fmaf(av[i], bv[j], acc[i][j]);
        }
        __syncthreads();
    }
    for (int i = 0; i < 4; ++i) {
        const int m = m0 + ty + i * (BM / 4);
        for (int j = 0; j < 4; ++j) {
            const int n = n0 + tx + j * TX;
            if (m < M && n < N) store(m, n, acc[i][j]);
        }
    }
}

// The input value that output pixel m sees at reduction index k = (kh, kw, ci) of group g.
__device__ __forceinline__ float gather_input(const float* __restrict__ x, const ConvShape& s, int g, int m, int k) {
    const int ipg = s.in_per_group();
    const int ow = m % s.out_width, oh = (m / s.out_width) % s.out_height, b = m / (s.out_width * s.out_height);
    const int tap = k / ipg, ci = k % ipg;
    const int ih = oh * s.stride - s.padding + tap / s.kernel;
    const int iw = ow * s.stride - s.padding + tap % s.kernel;
    if (ih < 0 || iw < 0 || ih >= s.height || iw >= s.width) return 0.0f;
    return x[(((long long)b * s.height + ih) * s.width + iw) * s.in_channels + g * ipg + ci];
}

template <int BM, int BN>
__device__ void conv_forward(float* __restrict__ y, const float* __restrict__ x, const float* __restrict__ w,
                             const ConvShape& s) {
    const int g = blockIdx.z, ipg = s.in_per_group(), opg = s.out_per_group();
    const int M = s.batch * s.out_height * s.out_width, K = s.taps() * ipg;
    tile_gemm<BM, BN>(
        M, opg, 0, K, blockIdx.x * BM, blockIdx.y * BN,
        [&](int m, int k) { return gather_input(x, s, g, m, k); },
        [&](int k, int n) { return w[((g * opg + n) * ipg + k % ipg) * s.taps() + k / ipg]; },
        [&](int m, int n, float v) { y[(long long)m * s.out_channels + g * opg + n] = v; });
}

template <int BM, int BN>
__device__ void conv_backward_data(float* __restrict__ dx, const float* __restrict__ dy,
                                   const float* __restrict__ w, const ConvShape& s) {
    const int g = blockIdx.z, ipg = s.in_per_group(), opg = s.out_per_group();
    const int M = s.batch * s.height * s.width, K = s.taps() * opg;
    tile_gemm<BM, BN>(
        M, ipg, 0, K, blockIdx.x * BM, blockIdx.y * BN,
        [&](int m, int k) {
            // Input pixel m receives from output pixel (oh, ow) through tap (kh, kw) when
            // oh * stride - padding + kh == ih.
            const int iw = m % s.width, ih = (m / s.width) % s.height, b = m / (s.width * s.height);
            const int tap = k / opg, o = k % opg;
            const int th = ih + s.padding - tap / s.kernel, tw = iw + s.padding - tap % s.kernel;
            if (th < 0 || tw < 0 || th % s.stride != 0 || tw % s.stride != 0) return 0.0f;
            const int oh = th / s.stride, ow = tw / s.stride;
            if (oh >= s.out_height || ow >= s.out_width) return 0.0f;
            return dy[(((long long)b * s.out_height + oh) * s.out_width + ow) * s.out_channels + g * opg + o];
        },
        [&](int k, int n) { return w[((g * opg + k % opg) * ipg + n) * s.taps() + k / opg]; },
        [&](int m, int n, float v) { dx[(long long)m * s.in_channels + g * ipg + n] = v; });
}

// blockIdx.z = split * groups + g; split covers output pixels [split * chunk, (split + 1) * chunk).
// partial: [splits][out_channels][taps * in_per_group], reduction index order (kh, kw, ci).
template <int BM, int BN>
__device__ void conv_backward_weight(float* __restrict__ partial, const float* __restrict__ x,
                                     const float* __restrict__ dy, const ConvShape& s, int chunk) {
    const int g = blockIdx.z % s.groups, split = blockIdx.z / s.groups;
    const int ipg = s.in_per_group(), opg = s.out_per_group(), K = s.taps() * ipg;
    const int pixels = s.batch * s.out_height * s.out_width;
    const int begin = split * chunk, end = min(pixels, begin + chunk);
    float* out = partial + (long long)split * s.out_channels * K;
    tile_gemm<BM, BN>(
        opg, K, begin, end, blockIdx.x * BM, blockIdx.y * BN,
        [&](int o, int p) { return dy[(long long)p * s.out_channels + g * opg + o]; },
        [&](int p, int k) { return gather_input(x, s, g, p, k); },
        [&](int o, int k, float v) { out[(long long)(g * opg + o) * K + k] = v; });
}

#define CONV_SHAPE_PARAMS                                                                                 \
    int batch, int height, int width, int in_channels, int out_channels, int kernel, int stride,         \
        int padding, int groups, int out_height, int out_width
#define CONV_SHAPE                                                                                        \
    ConvShape { batch, height, width, in_channels, out_channels, kernel, stride, padding, groups,         \
                out_height, out_width }

extern "C" __global__ void __launch_bounds__(256) conv2d_fwd_f32(float* y, const float* x, const float* w,
                                                                 CONV_SHAPE_PARAMS) {
    conv_forward<64, 64>(y, x, w, CONV_SHAPE);
}

extern "C" __global__ void __launch_bounds__(256) conv2d_fwd_narrow_f32(float* y, const float* x, const float* w,
                                                                        CONV_SHAPE_PARAMS) {
    conv_forward<256, 16>(y, x, w, CONV_SHAPE);
}

extern "C" __global__ void __launch_bounds__(256) conv2d_bwd_data_f32(float* dx, const float* dy, const float* w,
                                                                      CONV_SHAPE_PARAMS) {
    conv_backward_data<64, 64>(dx, dy, w, CONV_SHAPE);
}

extern "C" __global__ void __launch_bounds__(256) conv2d_bwd_data_narrow_f32(float* dx, const float* dy,
                                                                             const float* w,
                                                                             CONV_SHAPE_PARAMS) {
    conv_backward_data<256, 16>(dx, dy, w, CONV_SHAPE);
}

extern "C" __global__ void __launch_bounds__(256) conv2d_bwd_weight_f32(float* partial, const float* x,
                                                                        const float* dy, CONV_SHAPE_PARAMS,
                                                                        int chunk) {
    conv_backward_weight<64, 64>(partial, x, dy, CONV_SHAPE, chunk);
}

extern "C" __global__ void __launch_bounds__(256) conv2d_bwd_weight_narrow_f32(float* partial, const float* x,
                                                                               const float* dy,
                                                                               CONV_SHAPE_PARAMS, int chunk) {
    conv_backward_weight<16, 256>(partial, x, dy, CONV_SHAPE, chunk);
}

// dw (OIHW) = sum over splits, in order, of the partial weight gradients ((kh, kw, ci) order).
extern "C" __global__ void conv2d_bwd_weight_reduce_f32(float* __restrict__ dw, const float* __restrict__ partial,
                                                        int splits, int out_channels, int in_per_group,
                                                        int taps) {
    const int K = taps * in_per_group, n = out_channels * K;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += blockDim.x * gridDim.x) {
        const int o = i / K, ci = (i % K) / taps, tap = i % taps;  // i indexes dw in OIHW order
        const int k = tap * in_per_group + ci;
        float sum = 0.0f;
        for (int sp = 0; sp < splits; ++sp) sum += partial[((long long)sp * out_channels + o) * K + k];
        dw[i] = sum;
    }
}
