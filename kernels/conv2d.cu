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
#include "conv2d.cuh"

static constexpr int BK = 16;

// C[m0.., n0..] = sum over k in [k_begin, k_end) of A(m, k) * B(k, n), stored with store(m, n, v),
// which returns what it stored; that is summed per column into `sums` when sums.partial is set.
//
// The operands are gathered through small objects so that index arithmetic is not redone for
// every staged element: with 256 threads, a thread stages the same BM-tile rows of A and the
// same k column of the A slice at every step, and the same n column of B. So
//   a.row(m)     decomposes row m once per block (kept in shared memory),
//   a.col(k)     decomposes the reduction index once per step per thread,
//   a.at(r, c)   is then a few adds and one load;
//   b.col(n)     decomposes column n once per thread, b.at(k, c) loads element (k, n).
// Loads outside the matrix are never made: out-of-range rows, columns and k read as 0.
template <int BM, int BN, class A, class B, class Store, class Sums = NoColumnSums>
__device__ void tile_gemm(int M, int N, int k_begin, int k_end, int m0, int n0, const A& a, const B& b,
                          Store store, const Sums& sums = {}) {
    static_assert((BM / 4) * (BN / 4) == 256, "a tile is 256 threads of 4x4 results");
    static_assert(256 % BK == 0 && 256 % BN == 0, "each thread stages fixed columns");
    using RowInfo = decltype(a.row(0));
    constexpr int TX = BN / 4;  // threads along n
    __shared__ float As[BK][BM + 4];
    __shared__ float Bs[BK][BN + 4];
    __shared__ RowInfo rows[BM];
    const int tid = threadIdx.x;
    const int tx = tid % TX, ty = tid / TX;
    for (int i = tid; i < BM; i += 256) rows[i] = a.row(m0 + i);
    const int a_k = tid % BK;   // this thread's column of every A slice
    const int b_n = tid % BN;   // and of every B slice
    const auto b_col = b.col(n0 + b_n);
    float acc[4][4];
    for (int i = 0; i < 4; ++i)
        for (int j = 0; j < 4; ++j) acc[i][j] = 0.0f;
    __syncthreads();

    for (int k0 = k_begin; k0 < k_end; k0 += BK) {
        const int ka = k0 + a_k;
        const auto a_col = a.col(ka < k_end ? ka : k_begin);
        for (int mm = tid / BK; mm < BM; mm += 256 / BK)
            As[a_k][mm] = (m0 + mm < M && ka < k_end) ? a.at(rows[mm], a_col) : 0.0f;
        // Not unrolled: with BN = 256 this loop is 16 gathers, unrolled it spills on sm_90.
        MOCSE_NO_UNROLL
        for (int kk = tid / BN; kk < BK; kk += 256 / BN) {
            const int k = k0 + kk;
            Bs[kk][b_n] = (n0 + b_n < N && k < k_end) ? b.at(k, b_col) : 0.0f;
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
    float col_sum[4] = {0.0f, 0.0f, 0.0f, 0.0f}, col_squares[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    for (int i = 0; i < 4; ++i) {
        const int m = m0 + ty + i * (BM / 4);
        for (int j = 0; j < 4; ++j) {
            const int n = n0 + tx + j * TX;
            if (m < M && n < N) {
                const float v = store(m, n, acc[i][j]);
                col_sum[j] += v;
                col_squares[j] += v * v;
            }
        }
    }
    if constexpr (Sums::wanted) {
        if (sums.partial != nullptr) {  // the same for every thread: the barriers inside are safe
            // The slots of a column: the BM / 4 threads along m (ty), 4 rows each.
            __shared__ float scratch[2 * (BM / 4) * BN];
            const TileColumnSums<BM / 4, BN> tile{sums, scratch};
            for (int j = 0; j < 4; ++j) tile.put(ty, tx + j * TX, col_sum[j], col_squares[j]);
            tile.write(N - n0);
        }
    }
}

// Forward B: W[k = (kh, kw, ci), n = o] of group g (OIHW storage).
struct ForwardWeight {
    const float* w;
    ConvShape s;
    int g;
    __device__ __forceinline__ long long col(int n) const { return (long long)(g * s.out_per_group() + n) * s.in_per_group() * s.taps(); }
    __device__ __forceinline__ float at(int k, long long col) const {
        const int ipg = s.in_per_group();
        return w[col + (long long)(k % ipg) * s.taps() + k / ipg];
    }
};

// Backward data B: W'[k = (kh, kw, o), n = ci] of group g.
struct BackwardWeight {
    const float* w;
    ConvShape s;
    int g;
    __device__ __forceinline__ int col(int n) const { return n; }
    __device__ __forceinline__ float at(int k, int ci) const {
        const int opg = s.out_per_group();
        return w[((long long)(g * opg + k % opg) * s.in_per_group() + ci) * s.taps() + k / opg];
    }
};

// Backward weight B: the forward input gathered at pixel p (the reduction) for column (kh, kw, ci).
struct InputByPixel {
    const float* x;
    ChannelMap map;
    ConvShape s;
    int g;
    __device__ __forceinline__ TapColumn col(int k) const { return tap_column(s, g, k); }
    __device__ __forceinline__ float at(int p, const TapColumn& c) const {
        return input_at(x, map, s, pixel_row(s, p), c);
    }
};

// y = conv(map(x), w) + residual (map and residual optional), summed per channel into
// column_sums (ColumnSumsOut; null: not).
template <int BM, int BN>
__device__ void conv_forward(float* __restrict__ y, const float* __restrict__ x, const float* __restrict__ w,
                             const ChannelMap& map, const float* __restrict__ residual,
                             double* __restrict__ column_sums, const ConvShape& s) {
    const int g = blockIdx.z, opg = s.out_per_group();
    const int M = s.batch * s.out_height * s.out_width, K = s.taps() * s.in_per_group();
    tile_gemm<BM, BN>(M, opg, 0, K, blockIdx.x * BM, blockIdx.y * BN, ForwardInput{x, map, s, g},
                      ForwardWeight{w, s, g},
                      [&](int m, int n, float v) { return store_output(y, residual, s, g, m, n, v); },
                      ColumnSumsOut{column_sums, g * opg + (int)blockIdx.y * BN, s.out_channels});
}

template <int BM, int BN>
__device__ void conv_backward_data(float* __restrict__ dx, const float* __restrict__ dy,
                                   const float* __restrict__ w, const ConvShape& s) {
    const int g = blockIdx.z, ipg = s.in_per_group();
    const int M = s.batch * s.height * s.width, K = s.taps() * s.out_per_group();
    tile_gemm<BM, BN>(M, ipg, 0, K, blockIdx.x * BM, blockIdx.y * BN, BackwardGradOut{dy, s, g},
                      BackwardWeight{w, s, g},
                      [&](int m, int n, float v) { return dx[(long long)m * s.in_channels + g * ipg + n] = v; });
}

// One split of the pixel reduction (WeightGradientSplit) of group g.
template <int BM, int BN>
__device__ void conv_backward_weight(float* __restrict__ partial, const float* __restrict__ x,
                                     const float* __restrict__ dy, const ChannelMap& map, const ConvShape& s,
                                     int chunk) {
    const WeightGradientSplit w(partial, s, chunk);
    tile_gemm<BM, BN>(s.out_per_group(), w.K, w.begin, w.end, blockIdx.x * BM, blockIdx.y * BN,
                      GradOutChannel{dy, s, w.g}, InputByPixel{x, map, s, w.g},
                      [&](int o, int k, float v) {
                          w.store(s, o, k, v);
                          return v;
                      });
}

// Forward kernels: scale and shift (ChannelMap; null: none) map x as it is read, residual (null:
// none) is added as y is written, and y is summed per channel into column_sums for batch norm's
// statistics (null: not; [gridDim.x][2][out_channels] doubles, ColumnSumsOut).
extern "C" __global__ void __launch_bounds__(256) conv2d_fwd_f32(float* y, const float* x, const float* w,
                                                                 const float* scale, const float* shift,
                                                                 const float* residual, double* column_sums,
                                                                 CONV_SHAPE_PARAMS) {
    conv_forward<64, 64>(y, x, w, ChannelMap{scale, shift}, residual, column_sums, CONV_SHAPE);
}

extern "C" __global__ void __launch_bounds__(256) conv2d_fwd_narrow_f32(float* y, const float* x, const float* w,
                                                                        const float* scale, const float* shift,
                                                                        const float* residual,
                                                                        double* column_sums, CONV_SHAPE_PARAMS) {
    conv_forward<256, 16>(y, x, w, ChannelMap{scale, shift}, residual, column_sums, CONV_SHAPE);
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

// Backward weight kernels: x mapped as in the forward pass (scale null: not).
extern "C" __global__ void __launch_bounds__(256) conv2d_bwd_weight_f32(float* partial, const float* x,
                                                                        const float* dy, const float* scale,
                                                                        const float* shift, CONV_SHAPE_PARAMS,
                                                                        int chunk) {
    conv_backward_weight<64, 64>(partial, x, dy, ChannelMap{scale, shift}, CONV_SHAPE, chunk);
}

extern "C" __global__ void __launch_bounds__(256) conv2d_bwd_weight_narrow_f32(float* partial, const float* x,
                                                                               const float* dy, const float* scale,
                                                                               const float* shift,
                                                                               CONV_SHAPE_PARAMS, int chunk) {
    conv_backward_weight<16, 256>(partial, x, dy, ChannelMap{scale, shift}, CONV_SHAPE, chunk);
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
