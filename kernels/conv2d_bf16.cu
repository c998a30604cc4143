// 2-D convolution on the tensor cores: the implicit GEMMs of conv2d.cu (the same operands
// gathered from the same layouts, the same grid with blockIdx.z the group, so all experts run
// in one launch) with bf16 operands and f32 accumulation, through mma.sync m16n8k16 (mma.cuh).
// Activations stay f32 in memory (a thread rounds what it gathers to bf16); forward and backward
// data read their weights packed in bf16 (pack_conv_weights_bf16, at the end).
//
// A block of 256 threads (8 warps) owns a BM x BN tile of the result, each warp a WM x WN part
// of it: (WM / 16) x (WN / 8) mma tiles accumulated in registers. The reduction runs in slices
// of BK = 32, one barrier per slice, each operand through a ring of shared slices. Activations
// (f32 in memory, rounded and perhaps mapped by batch norm + ReLU on the way) are staged through
// registers: while the warps multiply slice s, each thread has its loads of slice s + 1 in
// flight and stores them as bf16 pairs after (two slices). Weights already packed in bf16 go
// straight to shared memory by cp.async (async_copy.cuh), slices s + 1 and s + 2 in flight while
// s is multiplied (three slices), and take no registers.
//
// A shared slice is rows of 16 words (32 bf16 along k); the 4-word chunks of row r are permuted
// by chunk ^ ((r >> 1) & 3). The fragment loads (8 rows x 4 words per instruction) and every
// staging pattern below (Gather) then touch 32 distinct banks per instruction (16-byte stores:
// per quarter warp): no bank conflicts, by construction.
#include "common.cuh"
#include "conv2d.cuh"
#include "async_copy.cuh"
#include "mma.cuh"

namespace tc {

constexpr int THREADS = 256;
constexpr int BK = 32;         // a slice of the reduction, in elements
constexpr int WORDS = BK / 2;  // 32-bit words (bf16 pairs) per shared row

__device__ __forceinline__ int swizzled(int row, int word) {
    return row * WORDS + ((((word >> 2) ^ (row >> 1)) & 3) << 2) + (word & 3);
}

// Which ROWS x BK part of a slice thread `tid` stages: the same word column (k pair) at every
// slice, in rows row(tid, p) for p < PASSES. An operand whose consecutive k are adjacent in
// memory goes 16 threads along each row (a warp reads 2 rows x 32 k); any other 8 lanes down 8
// consecutive rows (a warp reads 8 rows x 8 k), so that neighbouring lanes read neighbours.
template <int ROWS, bool K_CONTIGUOUS>
struct Staging {
    static_assert(ROWS % 16 == 0, "a pass covers 16 rows");
    static constexpr int PASSES = ROWS * WORDS / THREADS;
    __device__ static int word(int tid) { return K_CONTIGUOUS ? tid % WORDS : (tid / 32 % 4) * 4 + tid % 32 / 8; }
    __device__ static int row(int tid, int p) {
        return K_CONTIGUOUS ? tid / WORDS + p * (THREADS / WORDS) : (2 * p + tid / 128) * 8 + tid % 8;
    }
};

// One operand of the GEMM as ROWS rows of the block's tile: its row infos (decomposed once per
// block into shared memory) and this thread's staged words of the next slice.
// How an operand is staged: element pairs (any shape), chunks of 8 consecutive k (Op::by8),
// blocks of 8 consecutive rows at a pair of k (Op::rows8), or 16-byte copies of weights already
// in bf16 and in the GEMM's order (Op::packed).
enum class Gather { Pairs, ChunksOfK, BlocksOfRows, Packed };

template <class Op, bool WIDE>
struct GatherOf {
    static constexpr Gather value = Op::packed ? Gather::Packed
                                    : !WIDE    ? Gather::Pairs
                                    : Op::by8  ? Gather::ChunksOfK
                                    : Op::rows8 ? Gather::BlocksOfRows
                                                : Gather::Pairs;
};

template <int ROWS, class Op, Gather HOW>
struct Operand;

template <int ROWS, class Op>
struct Operand<ROWS, Op, Gather::Pairs> {
    static constexpr bool ASYNC = false;
    static constexpr int STAGES = 2;
    using S = Staging<ROWS, Op::k_contiguous>;
    using RowInfo = decltype(Op{}.row(0));
    Op op;
    int count;  // rows [0, count) of the tile exist
    unsigned staged[S::PASSES];

    // Gathers slice [k0, k0 + BK) of the reduction [k_begin, k_end); what lies outside is 0.
    __device__ __forceinline__ void gather(const RowInfo* rows, int k0, int k_begin, int k_end) {
        const int tid = threadIdx.x, k = k0 + 2 * S::word(tid);
        const bool lo_in = k < k_end, hi_in = k + 1 < k_end;
        const auto lo = op.col(lo_in ? k : k_begin);
        const auto hi = op.col(hi_in ? k + 1 : k_begin);
        for (int p = 0; p < S::PASSES; ++p) {
            const int r = S::row(tid, p);
            const bool in = r < count;
            const float a = in && lo_in ? op.at(rows[r], lo) : 0.0f;
            const float b = in && hi_in ? op.at(rows[r], hi) : 0.0f;
            staged[p] = pack_bf16x2(a, b);
        }
    }

    __device__ __forceinline__ void store(unsigned* slice) const {
        const int tid = threadIdx.x;
        for (int p = 0; p < S::PASSES; ++p) slice[swizzled(S::row(tid, p), S::word(tid))] = staged[p];
    }
};

// The same for an operand that gathers eight consecutive k at once (Op::by8): each thread stages
// whole 4-word chunks (8 bf16, one 16-byte shared store), 4 threads along each row, so a warp
// reads 8 rows x 32 k.
template <int ROWS, class Op>
struct Operand<ROWS, Op, Gather::ChunksOfK> {
    static constexpr bool ASYNC = false;
    static constexpr int STAGES = 2;
    static constexpr int CHUNKS = BK / 8, PASSES = ROWS * CHUNKS / THREADS;
    static_assert(ROWS * CHUNKS % THREADS == 0, "whole passes");
    using RowInfo = decltype(Op{}.row(0));
    Op op;
    int count;  // rows [0, count) of the tile exist
    uint4 staged[PASSES];

    __device__ static int chunk(int tid) { return tid % CHUNKS; }
    __device__ static int row(int tid, int p) { return tid / CHUNKS + p * (THREADS / CHUNKS); }

    // Eight consecutive k are eight aligned channels of one tap (the host launches these kernels
    // only for channels per group a multiple of 8), so K is a multiple of 8 too and a chunk lies
    // wholly inside the reduction or wholly past it.
    __device__ __forceinline__ void gather(const RowInfo* rows, int k0, int k_begin, int k_end) {
        const int tid = threadIdx.x, k = k0 + 8 * chunk(tid);
        const bool k_in = k < k_end;
        const auto c = op.col(k_in ? k : k_begin);
        for (int p = 0; p < PASSES; ++p) {
            const int r = row(tid, p);
            float v[8];
            if (k_in && r < count) {
                op.at8(rows[r], c, v);
            } else {
                for (int i = 0; i < 8; ++i) v[i] = 0.0f;
            }
            staged[p] = uint4{pack_bf16x2(v[0], v[1]), pack_bf16x2(v[2], v[3]), pack_bf16x2(v[4], v[5]),
                              pack_bf16x2(v[6], v[7])};
        }
    }

    __device__ __forceinline__ void store(unsigned* slice) const {
        const int tid = threadIdx.x;
        for (int p = 0; p < PASSES; ++p)
            *reinterpret_cast<uint4*>(&slice[swizzled(row(tid, p), 4 * chunk(tid))]) = staged[p];
    }
};

// The same for an operand whose reduction runs over pixels (backward weight's, Op::rows8): each
// thread stages a block of 8 rows (8 aligned channels, two 16-byte loads) at a pair of k, as 8
// words, one per row. A warp's lanes take 2 neighbouring blocks at 16 pairs of k: at each pixel
// 64 contiguous bytes, whole 32-byte sectors. The odd block keeps its words with adjacent rows
// swapped (word j is row j ^ 1), so that at each of the 8 stores the two blocks write rows of
// opposite parity: with the swizzle, 32 distinct banks.
template <int ROWS, class Op>
struct Operand<ROWS, Op, Gather::BlocksOfRows> {
    static constexpr bool ASYNC = false;
    static constexpr int STAGES = 2;
    static constexpr int BLOCKS = ROWS / 8, PAIRS = BK / 2;
    static constexpr int UNITS = BLOCKS * PAIRS, PASSES = (UNITS + THREADS - 1) / THREADS;
    static_assert(BLOCKS % 2 == 0, "blocks of rows in pairs");
    using RowInfo = decltype(Op{}.row(0));
    Op op;
    int count;  // rows [0, count) of the tile exist
    unsigned staged[PASSES][8];

    __device__ static int block(int unit) { return unit % 2 + 2 * (unit / (2 * PAIRS)); }
    __device__ static int pair(int unit) { return unit / 2 % PAIRS; }

    __device__ __forceinline__ void gather(const RowInfo* rows, int k0, int /*k_begin*/, int k_end) {
        for (int p = 0; p < PASSES; ++p) {
            const int unit = threadIdx.x + p * THREADS, b = block(unit), k = k0 + 2 * pair(unit);
            float lo[8], hi[8];
            // count is a multiple of 8 here (channels per group are), so a block exists wholly or not.
            const bool in = unit < UNITS && 8 * b < count;
            if (in && k < k_end) {
                op.rows8_at(rows[8 * b], op.col(k), lo);
            } else {
                for (int i = 0; i < 8; ++i) lo[i] = 0.0f;
            }
            if (in && k + 1 < k_end) {
                op.rows8_at(rows[8 * b], op.col(k + 1), hi);
            } else {
                for (int i = 0; i < 8; ++i) hi[i] = 0.0f;
            }
            const bool odd = b & 1;
            for (int i = 0; i < 8; ++i)
                staged[p][i] = odd ? pack_bf16x2(lo[i ^ 1], hi[i ^ 1]) : pack_bf16x2(lo[i], hi[i]);
        }
    }

    __device__ __forceinline__ void store(unsigned* slice) const {
        for (int p = 0; p < PASSES; ++p) {
            const int unit = threadIdx.x + p * THREADS;
            if (unit >= UNITS) continue;
            const int b = block(unit), w = pair(unit);
            for (int i = 0; i < 8; ++i) slice[swizzled(8 * b + (i ^ (b & 1)), w)] = staged[p][i];
        }
    }
};

// Weights packed by pack_conv_weights_bf16: row n of the GEMM is K bf16 values, contiguous and
// 16-byte aligned (K is a multiple of 8), so a thread stages a 4-word chunk with one 16-byte load
// and one 16-byte store, no conversion, no index arithmetic beyond the row's start.
struct PackedWeightRows {
    static constexpr bool k_contiguous = true, by8 = false, rows8 = false, packed = true;
    const unsigned short* w;
    int K, first_row;  // the group's first row among all groups' rows
    __device__ __forceinline__ long long row(int n) const { return (long long)(first_row + n) * K; }
    __device__ __forceinline__ int col(int k) const { return k; }
};

template <int ROWS, class Op>
struct Operand<ROWS, Op, Gather::Packed> {
    static constexpr bool ASYNC = true;
    static constexpr int STAGES = 3;  // slices in flight while one is multiplied: STAGES - 1
    static constexpr int CHUNKS = BK / 8, UNITS = ROWS * CHUNKS, PASSES = (UNITS + THREADS - 1) / THREADS;
    using RowInfo = long long;
    Op op;
    int count;  // rows [0, count) of the tile exist
    async_copy::Pipeline<STAGES * PASSES> copies;

    // Issues the copies of slice [k0, k0 + BK) into `slice`; what lies outside is filled with 0.
    __device__ __forceinline__ void issue(const RowInfo* rows, int k0, int k_begin, int k_end, unsigned* slice) {
        const int k = k0 + 8 * (threadIdx.x % CHUNKS), c = op.col(k < k_end ? k : k_begin);
        for (int p = 0; p < PASSES; ++p) {
            const int unit = threadIdx.x + p * THREADS, r = unit / CHUNKS;
            if (unit >= UNITS) continue;
            const bool in = r < count && k < k_end;
            copies.copy16(&slice[swizzled(r, 4 * (unit % CHUNKS))], in ? op.w + rows[r] + c : op.w, in);
        }
    }
};

// The pipeline over an operand's ring of STAGES shared slices of ROWS rows. Register-staged
// operands (STAGES 2) gather slice s + 1 into registers while slice s is multiplied and store it
// after; copied ones (ASYNC) keep slices s + 1 .. s + STAGES - 1 in flight and wait for s + 1
// after. Either way slice s + 1 is whole in its slot, for every thread, once the barrier that
// ends step s has passed. Step s = -1 is the prologue, which readies slice 0.
template <int ROWS, class O, class RowInfo>
__device__ __forceinline__ void load_ahead(O& o, const RowInfo* rows, int s, int slices, int k_begin, int k_end,
                                           unsigned* ring) {
    if constexpr (O::ASYNC) {
        const int ahead = s + O::STAGES - 1;
        if (ahead < slices)
            o.issue(rows, k_begin + ahead * BK, k_begin, k_end, ring + ahead % O::STAGES * ROWS * WORDS);
        o.copies.commit();  // a group per step, empty or not, so that waits count steps
    } else if (s + 1 < slices) {
        o.gather(rows, k_begin + (s + 1) * BK, k_begin, k_end);
    }
}

template <int ROWS, class O>
__device__ __forceinline__ void land_next(O& o, int s, int slices, unsigned* ring) {
    if constexpr (O::ASYNC) {
        o.copies.template wait<O::STAGES - 2>();
    } else if (s + 1 < slices) {
        o.store(ring + (s + 1) % O::STAGES * ROWS * WORDS);
    }
}

template <int ROWS, class O, class RowInfo>
__device__ __forceinline__ void prologue(O& o, const RowInfo* rows, int slices, int k_begin, int k_end,
                                         unsigned* ring) {
    for (int s = -(O::STAGES - 1); s < 0; ++s) load_ahead<ROWS>(o, rows, s, slices, k_begin, k_end, ring);
    land_next<ROWS>(o, -1, slices, ring);
}

// C[m0.., n0..] = sum over k in [k_begin, k_end) of A(m, k) * B(n, k), stored with
// store(m, n, C[m][n], C[m][n + 1], whether column n + 1 exists), which returns what it stored
// (a float2); that is summed per column into `sums` when sums.partial is set. Both operands are
// given by rows (A: m, B: n), each staged as GatherOf<Op, WIDE> says.
template <int BM, int BN, int WM, int WN, bool WIDE, class A, class B, class Store, class Sums = NoColumnSums>
__device__ void tile_gemm(int M, int N, int k_begin, int k_end, int m0, int n0, const A& a, const B& b,
                          Store store, const Sums& sums = {}) {
    static_assert((BM / WM) * (BN / WN) == THREADS / 32, "one warp per WM x WN part");
    static_assert(WM % 16 == 0 && WN % 16 == 0, "whole mma tiles, B's in pairs (ldmatrix x4)");
    constexpr int MI = WM / 16, NI = WN / 8, WARPS_N = BN / WN;
    using OperandA = Operand<BM, A, GatherOf<A, WIDE>::value>;
    using OperandB = Operand<BN, B, GatherOf<B, WIDE>::value>;
    __shared__ __align__(16) unsigned a_ring[OperandA::STAGES * BM * WORDS];
    __shared__ __align__(16) unsigned b_ring[OperandB::STAGES * BN * WORDS];
    __shared__ typename OperandA::RowInfo a_rows[BM];
    __shared__ typename OperandB::RowInfo b_rows[BN];
    const int tid = threadIdx.x;
    for (int i = tid; i < BM; i += THREADS) a_rows[i] = a.row(m0 + i);
    for (int i = tid; i < BN; i += THREADS) b_rows[i] = b.row(n0 + i);
    OperandA sa{a, M - m0, {}};
    OperandB sb{b, N - n0, {}};
    const int slices = (k_end - k_begin + BK - 1) / BK;
    __syncthreads();
    prologue<BM>(sa, a_rows, slices, k_begin, k_end, a_ring);
    prologue<BN>(sb, b_rows, slices, k_begin, k_end, b_ring);
    __syncthreads();

    const int warp = tid / 32, lane = tid % 32, group = lane >> 2, tig = lane & 3;
    const int wm = (warp / WARPS_N) * WM, wn = (warp % WARPS_N) * WN;
    float acc[MI][NI][4];
    for (int i = 0; i < MI; ++i)
        for (int j = 0; j < NI; ++j)
            for (int c = 0; c < 4; ++c) acc[i][j][c] = 0.0f;
    for (int s = 0; s < slices; ++s) {
        load_ahead<BM>(sa, a_rows, s, slices, k_begin, k_end, a_ring);
        load_ahead<BN>(sb, b_rows, s, slices, k_begin, k_end, b_ring);
        const unsigned* as = a_ring + s % OperandA::STAGES * BM * WORDS;
        const unsigned* bs = b_ring + s % OperandB::STAGES * BN * WORDS;
        for (int half = 0; half < 2; ++half) {
            // The fragments by ldmatrix: an 8x8 matrix is 8 rows of one 4-word chunk (chunk
            // 2 half holds k = 16 half .. + 7, chunk 2 half + 1 the next 8). A: rows 0-7 and
            // 8-15 of the mma tile at each chunk; B: two neighbouring 8-row tiles at each chunk.
            unsigned fa[MI][4], fb[NI][2];
            for (int i = 0; i < MI; ++i)
                mma::ldmatrix_x4(fa[i], [&](int m, int r) {
                    return &as[swizzled(wm + i * 16 + 8 * (m & 1) + r, 4 * (2 * half + (m >> 1)))];
                });
            for (int j = 0; j < NI; j += 2) {
                unsigned f[4];
                mma::ldmatrix_x4(f, [&](int m, int r) {
                    return &bs[swizzled(wn + (j + (m >> 1)) * 8 + r, 4 * (2 * half + (m & 1)))];
                });
                fb[j][0] = f[0], fb[j][1] = f[1], fb[j + 1][0] = f[2], fb[j + 1][1] = f[3];
            }
            mma::mma_bf16_grid<MI, NI>(acc, fa, fb);
        }
        land_next<BM>(sa, s, slices, a_ring);
        land_next<BN>(sb, s, slices, b_ring);
        __syncthreads();
    }
    // Elements c and c + 1 of a fragment are neighbours in a row: stored as a pair. Unrolled
    // whole, so that acc stays in registers however heavy the store is. A thread's columns are
    // wn + 8 j + 2 tig and the next, the same for c = 0 and 2 (rows group and group + 8).
    float col_sum[NI][2], col_squares[NI][2];
    MOCSE_UNROLL
    for (int j = 0; j < NI; ++j) col_sum[j][0] = col_sum[j][1] = col_squares[j][0] = col_squares[j][1] = 0.0f;
    MOCSE_UNROLL
    for (int i = 0; i < MI; ++i)
        MOCSE_UNROLL
        for (int j = 0; j < NI; ++j)
            MOCSE_UNROLL
            for (int c = 0; c < 4; c += 2) {
                const int m = m0 + wm + i * 16 + mma::c_row(group, c);
                const int n = n0 + wn + j * 8 + mma::c_col(tig, c);
                if (m < M && n < N) {
                    const float2 v = store(m, n, acc[i][j][c], acc[i][j][c + 1], n + 1 < N);
                    col_sum[j][0] += v.x, col_squares[j][0] += v.x * v.x;
                    col_sum[j][1] += v.y, col_squares[j][1] += v.y * v.y;
                }
            }
    if constexpr (Sums::wanted) {
        if (sums.partial != nullptr) {  // the same for every thread: the barriers inside are safe
            // The slots of a column: the 8 row groups of the WARPS_M warps along m. The slices
            // are free since the loop's last barrier.
            constexpr int SLOTS = 8 * (BM / WM);
            static_assert(2 * SLOTS * BN <= OperandA::STAGES * BM * WORDS, "the column sums fit in the A slices");
            const TileColumnSums<SLOTS, BN> tile{sums, reinterpret_cast<float*>(a_ring)};
            const int slot = (warp / WARPS_N) * 8 + group;
            MOCSE_UNROLL
            for (int j = 0; j < NI; ++j)
                MOCSE_UNROLL
                for (int e = 0; e < 2; ++e)
                    tile.put(slot, wn + j * 8 + 2 * tig + e, col_sum[j][e], col_squares[j][e]);
            tile.write(N - n0);
        }
    }
}

// The B operands by rows (n), reduction along k.

// Forward: W[n = o][k = (kh, kw, ci)] of group g, from OIHW.
struct ForwardWeightRows {
    static constexpr bool k_contiguous = true;  // taps apart: the nearer of the two
    static constexpr bool by8 = false, rows8 = false, packed = false;
    const float* w;
    ConvShape s;
    int g;
    __device__ __forceinline__ long long row(int n) const {
        return (long long)(g * s.out_per_group() + n) * s.in_per_group() * s.taps();
    }
    __device__ __forceinline__ int col(int k) const {
        const int ipg = s.in_per_group();
        return (k % ipg) * s.taps() + k / ipg;
    }
    __device__ __forceinline__ float at(long long r, int c) const { return w[r + c]; }
};

// Backward data: W'[n = ci][k = (kh, kw, o)] of group g, from OIHW.
struct BackwardWeightRows {
    static constexpr bool k_contiguous = false;  // along n: taps apart; along k: a filter apart
    static constexpr bool by8 = false, rows8 = false, packed = false;
    const float* w;
    ConvShape s;
    int g;
    __device__ __forceinline__ int row(int ci) const { return ci * s.taps(); }
    __device__ __forceinline__ long long col(int k) const {
        const int opg = s.out_per_group();
        return (long long)(g * opg + k % opg) * s.in_per_group() * s.taps() + k / opg;
    }
    __device__ __forceinline__ float at(int r, long long c) const { return w[c + r]; }
};

// Backward weight: the forward input at pixel k for column n = (kh, kw, ci).
struct InputByPixelRows {
    static constexpr bool k_contiguous = false;  // along n: channels
    static constexpr bool by8 = false, rows8 = true, packed = false;
    const float* x;
    ChannelMap map;
    ConvShape s;
    int g;
    __device__ __forceinline__ TapColumn row(int n) const { return tap_column(s, g, n); }
    __device__ __forceinline__ PixelRow col(int p) const { return pixel_row(s, p); }
    __device__ __forceinline__ float at(const TapColumn& r, const PixelRow& c) const {
        return input_at(x, map, s, c, r);
    }
    // Rows n..n + 7 (channels of one tap, in_per_group a multiple of 8) at pixel c.
    __device__ __forceinline__ void rows8_at(const TapColumn& r, const PixelRow& c, float (&v)[8]) const {
        ForwardInput{x, map, s, g}.at8(c, r, v);
    }
};

// Backward data at stride s > 1, one phase (ph, pw) of the input at a time: the input pixels
// (ph + s i, pw + s j) receive only from the taps kh = kh0 + s t with kh0 = (ph + padding) % s
// (likewise kw), the others never reaching an output pixel. So each phase is its own GEMM with
// K = taps of the phase x out_per_group, blockIdx.z = phase * groups + g, and no product of the
// zeros the whole-input GEMM would gather: at stride 2, a quarter of its work for a 3x3 kernel.
struct StridePhase {
    int stride, ph, pw, rows_h, rows_w, kh0, kw0, taps_h, taps_w;
    StridePhase() = default;
    __device__ StridePhase(const ConvShape& s, int phase) {
        stride = s.stride, ph = phase / stride, pw = phase % stride;
        rows_h = (s.height - ph + stride - 1) / stride, rows_w = (s.width - pw + stride - 1) / stride;
        kh0 = (ph + s.padding) % stride, kw0 = (pw + s.padding) % stride;
        taps_h = kh0 < s.kernel ? (s.kernel - kh0 + stride - 1) / stride : 0;
        taps_w = kw0 < s.kernel ? (s.kernel - kw0 + stride - 1) / stride : 0;
    }
    __device__ __forceinline__ int rows(int batch) const { return batch * rows_h * rows_w; }
    __device__ __forceinline__ int taps() const { return taps_h * taps_w; }
    // Row m of the phase as an input pixel.
    __device__ __forceinline__ InputPixel pixel(int m) const {
        const int j = m % rows_w, i = (m / rows_w) % rows_h;
        return InputPixel{m / (rows_w * rows_h), ph + stride * i, pw + stride * j};
    }
    // The phase's tap t (in (kh, kw) order) as (kh, kw).
    __device__ __forceinline__ int kh(int t) const { return kh0 + stride * (t / max(taps_w, 1)); }
    __device__ __forceinline__ int kw(int t) const { return kw0 + stride * (t % max(taps_w, 1)); }
};

struct PhaseGradOut {
    static constexpr bool k_contiguous = true, by8 = true, rows8 = false, packed = false;
    BackwardGradOut whole;
    StridePhase phase;
    __device__ __forceinline__ InputPixel row(int m) const { return phase.pixel(m); }
    __device__ __forceinline__ TapOutput col(int k) const {
        const int opg = whole.s.out_per_group(), t = k / opg;
        return TapOutput{phase.kh(t), phase.kw(t), k % opg};
    }
    __device__ __forceinline__ float at(const InputPixel& r, const TapOutput& c) const { return whole.at(r, c); }
    __device__ __forceinline__ void at8(const InputPixel& r, const TapOutput& c, float (&v)[8]) const {
        whole.at8(r, c, v);
    }
};

// The packed backward-data weights (row ci: (tap, o)) read at the phase's taps.
struct PhaseWeightRows {
    static constexpr bool k_contiguous = true, by8 = false, rows8 = false, packed = true;
    const unsigned short* w;
    int K, first_row, out_per_group, kernel;
    StridePhase phase;
    __device__ __forceinline__ long long row(int n) const { return (long long)(first_row + n) * K; }
    __device__ __forceinline__ int col(int k) const {
        const int t = k / out_per_group;
        return (phase.kh(t) * kernel + phase.kw(t)) * out_per_group + k % out_per_group;
    }
};

// The weights: f32 gathered from OIHW (the _any kernels), or packed (pack_conv_weights_bf16).
__device__ __forceinline__ ForwardWeightRows forward_weights(const float* w, const ConvShape& s) {
    return ForwardWeightRows{w, s, (int)blockIdx.z};
}
__device__ __forceinline__ PackedWeightRows forward_weights(const unsigned short* w, const ConvShape& s) {
    return PackedWeightRows{w, s.taps() * s.in_per_group(), (int)blockIdx.z * s.out_per_group()};
}
__device__ __forceinline__ BackwardWeightRows backward_data_weights(const float* w, const ConvShape& s) {
    return BackwardWeightRows{w, s, (int)blockIdx.z};
}
__device__ __forceinline__ PackedWeightRows backward_data_weights(const unsigned short* w, const ConvShape& s) {
    return PackedWeightRows{w, s.taps() * s.out_per_group(), (int)blockIdx.z * s.in_per_group()};
}

// WIDE: gather activations eight channels at a time (the channels reduced over, or those of a
// block of rows in backward weight, a multiple of 8 per group), else one by one. W: the weights'
// type, float (OIHW) or unsigned short (packed bf16).
template <int BM, int BN, int WM, int WN, bool WIDE, class W>
__device__ void forward(float* __restrict__ y, const float* __restrict__ x, const W* __restrict__ w,
                        const ChannelMap& map, const float* __restrict__ residual, double* __restrict__ column_sums,
                        const ConvShape& s) {
    const int g = blockIdx.z, opg = s.out_per_group();
    const int M = s.batch * s.out_height * s.out_width, K = s.taps() * s.in_per_group();
    tile_gemm<BM, BN, WM, WN, WIDE>(M, opg, 0, K, blockIdx.x * BM, blockIdx.y * BN, ForwardInput{x, map, s, g},
                                    forward_weights(w, s),
                                    [&](int m, int n, float v0, float v1, bool both) {
                                        const long long at = (long long)m * s.out_channels + g * opg + n;
                                        return store_two(y, residual, at, v0, v1, both);
                                    },
                                    ColumnSumsOut{column_sums, g * opg + (int)blockIdx.y * BN, s.out_channels});
}

template <int BM, int BN, int WM, int WN, bool WIDE, class W>
__device__ void backward_data(float* __restrict__ dx, const float* __restrict__ dy, const W* __restrict__ w,
                              const ConvShape& s) {
    const int g = blockIdx.z, ipg = s.in_per_group();
    const int M = s.batch * s.height * s.width, K = s.taps() * s.out_per_group();
    tile_gemm<BM, BN, WM, WN, WIDE>(M, ipg, 0, K, blockIdx.x * BM, blockIdx.y * BN, BackwardGradOut{dy, s, g},
                              backward_data_weights(w, s),
                              [&](int m, int n, float v0, float v1, bool both) {
                                  return store_two(dx, nullptr, (long long)m * s.in_channels + g * ipg + n, v0, v1,
                                                   both);
                              });
}

// Backward data at stride > 1, phase by phase (StridePhase); weights packed.
template <int BM, int BN, int WM, int WN>
__device__ void backward_data_strided(float* __restrict__ dx, const float* __restrict__ dy,
                                      const unsigned short* __restrict__ w, const ConvShape& s) {
    const int g = blockIdx.z % s.groups, ipg = s.in_per_group(), opg = s.out_per_group();
    const StridePhase phase(s, blockIdx.z / s.groups);
    const int M = phase.rows(s.batch), K = phase.taps() * opg;
    if ((int)blockIdx.x * BM >= M) return;  // the grid covers the largest phase
    tile_gemm<BM, BN, WM, WN, true>(
        M, ipg, 0, K, blockIdx.x * BM, blockIdx.y * BN, PhaseGradOut{BackwardGradOut{dy, s, g}, phase},
        PhaseWeightRows{w, s.taps() * opg, g * ipg, opg, s.kernel, phase},
        [&](int m, int n, float v0, float v1, bool both) {
            const InputPixel p = phase.pixel(m);
            const long long pixel = ((long long)p.b * s.height + p.ih) * s.width + p.iw;
            return store_two(dx, nullptr, pixel * s.in_channels + g * ipg + n, v0, v1, both);
        });
}

// One split of the pixel reduction (WeightGradientSplit) of group g, as conv2d.cu's.
template <int BM, int BN, int WM, int WN, bool WIDE>
__device__ void backward_weight(float* __restrict__ partial, const float* __restrict__ x,
                                const float* __restrict__ dy, const ChannelMap& map, const ConvShape& s,
                                int chunk) {
    const WeightGradientSplit w(partial, s, chunk);
    tile_gemm<BM, BN, WM, WN, WIDE>(s.out_per_group(), w.K, w.begin, w.end, blockIdx.x * BM, blockIdx.y * BN,
                                    GradOutChannel{dy, s, w.g}, InputByPixelRows{x, map, s, w.g},
                                    [&](int o, int k, float v0, float v1, bool both) {
                                        if (WIDE) return w.store_two(s, o, k, v0, v1, both);
                                        // One by one: the _any kernel has no register to spare.
                                        w.store(s, o, k, v0);
                                        if (both) w.store(s, o, k + 1, v1);
                                        return float2{v0, v1};
                                    });
}

}  // namespace tc

// Tiles: 128 x 64 (warps of 32 x 32), and for groups of 16 columns or fewer 256 x 16 (warps of
// 32 x 16); backward weight's narrow tile is 16 x 256 (16 output channels, warps of 16 x 32).
// All gather activations eight channels at a time, and forward and backward data take their
// weights packed (pack_conv_weights_bf16, below); backward data at stride > 1 runs phase by
// phase (_strided); the _any kernels gather activations one by one
// and weights from OIHW, for channel counts per group that are not multiples of 8 (the stem's 3
// input channels).
// Two blocks per SM (__launch_bounds__(256, 2): at most 128 registers, which NVRTC 12.9 and 13.0
// meet without spilling on sm_90 and sm_80), so one block's loads overlap the other's mma.
// Otherwise the same arguments as conv2d.cu's kernels of the same names with _f32.
extern "C" __global__ void __launch_bounds__(256, 2) conv2d_fwd_bf16(float* y, const float* x,
                                                                  const unsigned short* w,
                                                                  const float* scale, const float* shift,
                                                                  const float* residual, double* column_sums,
                                                                  CONV_SHAPE_PARAMS) {
    tc::forward<128, 64, 32, 32, true>(y, x, w, ChannelMap{scale, shift}, residual, column_sums, CONV_SHAPE);
}

extern "C" __global__ void __launch_bounds__(256, 2) conv2d_fwd_any_bf16(float* y, const float* x, const float* w,
                                                                      const float* scale, const float* shift,
                                                                      const float* residual, double* column_sums,
                                                                  CONV_SHAPE_PARAMS) {
    tc::forward<128, 64, 32, 32, false>(y, x, w, ChannelMap{scale, shift}, residual, column_sums, CONV_SHAPE);
}

extern "C" __global__ void __launch_bounds__(256, 2) conv2d_fwd_narrow_bf16(float* y, const float* x,
                                                                         const unsigned short* w,
                                                                         const float* scale, const float* shift,
                                                                         const float* residual, double* column_sums,
                                                                  CONV_SHAPE_PARAMS) {
    tc::forward<256, 16, 32, 16, true>(y, x, w, ChannelMap{scale, shift}, residual, column_sums, CONV_SHAPE);
}

extern "C" __global__ void __launch_bounds__(256, 2) conv2d_bwd_data_bf16(float* dx, const float* dy,
                                                                       const unsigned short* w,
                                                                       CONV_SHAPE_PARAMS) {
    tc::backward_data<128, 64, 32, 32, true>(dx, dy, w, CONV_SHAPE);
}

extern "C" __global__ void __launch_bounds__(256, 2) conv2d_bwd_data_any_bf16(float* dx, const float* dy,
                                                                           const float* w, CONV_SHAPE_PARAMS) {
    tc::backward_data<128, 64, 32, 32, false>(dx, dy, w, CONV_SHAPE);
}

extern "C" __global__ void __launch_bounds__(256, 2) conv2d_bwd_data_narrow_bf16(float* dx, const float* dy,
                                                                              const unsigned short* w,
                                                                              CONV_SHAPE_PARAMS) {
    tc::backward_data<256, 16, 32, 16, true>(dx, dy, w, CONV_SHAPE);
}

extern "C" __global__ void __launch_bounds__(256, 2) conv2d_bwd_data_strided_bf16(float* dx, const float* dy,
                                                                               const unsigned short* w,
                                                                               CONV_SHAPE_PARAMS) {
    tc::backward_data_strided<128, 64, 32, 32>(dx, dy, w, CONV_SHAPE);
}

extern "C" __global__ void __launch_bounds__(256, 2) conv2d_bwd_data_strided_narrow_bf16(float* dx, const float* dy,
                                                                                      const unsigned short* w,
                                                                                      CONV_SHAPE_PARAMS) {
    tc::backward_data_strided<256, 16, 32, 16>(dx, dy, w, CONV_SHAPE);
}

extern "C" __global__ void __launch_bounds__(256, 2) conv2d_bwd_weight_bf16(float* partial, const float* x,
                                                                         const float* dy, const float* scale,
                                                                         const float* shift, CONV_SHAPE_PARAMS,
                                                                         int chunk) {
    tc::backward_weight<128, 64, 32, 32, true>(partial, x, dy, ChannelMap{scale, shift}, CONV_SHAPE, chunk);
}

extern "C" __global__ void __launch_bounds__(256, 2) conv2d_bwd_weight_any_bf16(float* partial, const float* x,
                                                                             const float* dy, const float* scale,
                                                                             const float* shift, CONV_SHAPE_PARAMS,
                                                                             int chunk) {
    tc::backward_weight<128, 64, 32, 32, false>(partial, x, dy, ChannelMap{scale, shift}, CONV_SHAPE, chunk);
}

extern "C" __global__ void __launch_bounds__(256, 2) conv2d_bwd_weight_narrow_bf16(float* partial, const float* x,
                                                                                const float* dy, const float* scale,
                                                                                const float* shift,
                                                                                CONV_SHAPE_PARAMS, int chunk) {
    tc::backward_weight<16, 256, 16, 32, true>(partial, x, dy, ChannelMap{scale, shift}, CONV_SHAPE, chunk);
}

// The weights of a convolution in bf16, in the order its forward (backward_data = 0) or backward
// data (1) GEMM reads them: forward row o = (tap, ci) of filter o (OHWI); backward data, row ci of
// group g = (tap, o) over the group's filters. One thread per weight.
extern "C" __global__ void pack_conv_weights_bf16(unsigned short* packed, const float* w, int out_channels,
                                                  int in_per_group, int taps, int groups, int backward_data) {
    const long long n = (long long)out_channels * in_per_group * taps;
    const int opg = out_channels / groups;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x) {
        const int tap = (int)(i % taps), ci = (int)(i / taps % in_per_group), o = (int)(i / taps / in_per_group);
        const long long at = backward_data
                                 ? (((long long)(o / opg) * in_per_group + ci) * taps + tap) * opg + o % opg
                                 : ((long long)o * taps + tap) * in_per_group + ci;
        packed[at] = (unsigned short)bf16_bits(w[i]);
    }
}
