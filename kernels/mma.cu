// The selftest's check of the tensor-core wrapper (mma.cuh): one warp multiplies a 16x16 by a
// 16x8 bf16 matrix and adds a 16x8 f32 one, each operand gathered into its fragments by the
// PTX tables and the result scattered back by them.
#include "mma.cuh"

// a: 16x16 bf16 bits, row-major; b: 16x8 (K x N) bf16 bits, row-major; c, d: 16x8 f32,
// row-major. One block of 32 threads.
extern "C" __global__ void mma_bf16_m16n8k16_check(float* __restrict__ d, const unsigned short* __restrict__ a,
                                                   const unsigned short* __restrict__ b,
                                                   const float* __restrict__ c) {
  const int lane = static_cast<int>(threadIdx.x & 31), group = lane >> 2, tig = lane & 3;
  unsigned ra[4], rb[2];
  float rc[4], rd[4];
  for (int r = 0; r < 4; ++r) {
    const int lo = 2 * r, hi = 2 * r + 1;
    ra[r] = static_cast<unsigned>(a[mma::a_row(group, lo) * 16 + mma::a_col(tig, lo)]) |
            (static_cast<unsigned>(a[mma::a_row(group, hi) * 16 + mma::a_col(tig, hi)]) << 16);
  }
  for (int r = 0; r < 2; ++r) {
    const int lo = 2 * r, hi = 2 * r + 1;
    rb[r] = static_cast<unsigned>(b[mma::b_row(tig, lo) * 8 + group]) |
            (static_cast<unsigned>(b[mma::b_row(tig, hi) * 8 + group]) << 16);
  }
  for (int i = 0; i < 4; ++i) rc[i] = c[mma::c_row(group, i) * 8 + mma::c_col(tig, i)];
  mma::mma_bf16_m16n8k16(rd, ra, rb, rc);
  for (int i = 0; i < 4; ++i) d[mma::c_row(group, i) * 8 + mma::c_col(tig, i)] = rd[i];
}
