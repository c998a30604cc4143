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

// The selftest's check of ldmatrix_x4: one warp loads four 8x8 matrices of 16-bit pairs
// (m: 4 matrices x 8 rows x 4 words) placed in shared memory with their rows scattered
// (matrix j, row r at slot 5 (4 r + j) % 32, 4 words per slot), and writes what each lane
// received: out[lane * 4 + j] = d[j].
extern "C" __global__ void ldmatrix_x4_check(unsigned* __restrict__ out, const unsigned* __restrict__ m) {
  __shared__ __align__(16) unsigned slots[32 * 4];
  const int lane = static_cast<int>(threadIdx.x & 31);
  for (int i = lane; i < 128; i += 32) {
    const int j = i / 32, r = i / 4 % 8, w = i % 4;
    slots[(5 * (4 * r + j) % 32) * 4 + w] = m[i];
  }
  __syncwarp();
  unsigned d[4];
  mma::ldmatrix_x4(d, [&](int j, int r) { return &slots[(5 * (4 * r + j) % 32) * 4]; });
  for (int j = 0; j < 4; ++j) out[lane * 4 + j] = d[j];
}
