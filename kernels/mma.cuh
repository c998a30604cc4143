// Tensor-core matrix multiply-accumulate behind one project wrapper: on a GPU the PTX
// instruction mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 (sm_80 and later); under the
// emulator a twin written from the PTX ISA's fragment tables for that shape ("Matrix Fragments
// for mma.m16n8k16 with floating point type"). Both are checked against the cpu device by the
// selftest case "mma.sync bf16 m16n8k16", so the next GPU run tests the twin against hardware.
//
// Fragments, per lane (groupID = lane >> 2, tig = lane % 4); each .b32 register holds two bf16,
// the lower-numbered element in its low half:
//   A, 16x16 row-major, elements a0..a7 in 4 registers: row groupID (+8 for a2, a3, a6, a7),
//      column 2 * tig + (i & 1) (+8 for a4..a7);
//   B, 16x8 (K x N) column-major, elements b0..b3 in 2 registers: row 2 * tig + (i & 1) (+8 for
//      b2, b3), column groupID;
//   C and D, 16x8 f32, elements c0..c3: row groupID (+8 for c2, c3), column 2 * tig + (i & 1).
// All 32 lanes of the warp call it together.
#pragma once

#include "bf16.cuh"
#include "common.cuh"

namespace mma {

// Where fragment element i of each operand sits in its matrix, for this lane.
__device__ __forceinline__ int a_row(int group, int i) { return group + ((i & 2) ? 8 : 0); }
__device__ __forceinline__ int a_col(int tig, int i) { return 2 * tig + (i & 1) + ((i & 4) ? 8 : 0); }
__device__ __forceinline__ int b_row(int tig, int i) { return 2 * tig + (i & 1) + ((i & 2) ? 8 : 0); }
__device__ __forceinline__ int c_row(int group, int i) { return group + ((i & 2) ? 8 : 0); }
__device__ __forceinline__ int c_col(int tig, int i) { return 2 * tig + (i & 1); }

// acc[i][j] += A_i * B_j over one k16 step for a warp's grid of MI x NI 16x8 tiles: A_i is the
// 16x16 tile of fragment a[i], B_j the 16x8 tile of fragment b[j]. All 32 lanes call it together.
template <int MI, int NI>
__device__ __forceinline__ void mma_bf16_grid(float (&acc)[MI][NI][4], const unsigned (&a)[MI][4],
                                              const unsigned (&b)[NI][2]) {
#ifdef CUEMU
  // The twin: every lane puts its fragment elements into the warp's whole tiles (one pair of
  // warp barriers per grid, not per tile: the emulator switches fibers at each), then computes
  // its own outputs.
  __shared__ float tile_a[32][MI][16][16];
  __shared__ float tile_b[32][NI][16][8];
  const unsigned linear = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
  const unsigned warp = linear / 32, lane = linear % 32;
  const int group = static_cast<int>(lane >> 2), tig = static_cast<int>(lane & 3);
  for (int t = 0; t < MI; ++t)
    for (int i = 0; i < 8; ++i)
      tile_a[warp][t][a_row(group, i)][a_col(tig, i)] = bf16_bits_to_float(a[t][i / 2] >> (16 * (i & 1)));
  for (int t = 0; t < NI; ++t)
    for (int i = 0; i < 4; ++i)
      tile_b[warp][t][b_row(tig, i)][group] = bf16_bits_to_float(b[t][i / 2] >> (16 * (i & 1)));
  __syncwarp();
  for (int ti = 0; ti < MI; ++ti)
    for (int tj = 0; tj < NI; ++tj)
      for (int i = 0; i < 4; ++i) {
        float sum = acc[ti][tj][i];
        for (int k = 0; k < 16; ++k)
          sum = fmaf(tile_a[warp][ti][c_row(group, i)][k], tile_b[warp][tj][k][c_col(tig, i)], sum);
        acc[ti][tj][i] = sum;
      }
  __syncwarp();  // the tiles are rewritten by the warp's next call
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  for (int i = 0; i < MI; ++i)
    for (int j = 0; j < NI; ++j)
      asm volatile(
          "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
          "{%0, %1, %2, %3};\n"
          : "+f"(acc[i][j][0]), "+f"(acc[i][j][1]), "+f"(acc[i][j][2]), "+f"(acc[i][j][3])
          : "r"(a[i][0]), "r"(a[i][1]), "r"(a[i][2]), "r"(a[i][3]), "r"(b[j][0]), "r"(b[j][1]));
#else
  __trap();  // tensor cores with bf16 need sm_80 or later
#endif
}

// ldmatrix.sync.aligned.m8n8.x4.shared.b16: four 8x8 matrices of 16-bit elements from shared
// memory, each row 16 contiguous bytes. Lane l gives the address of row l % 8 of matrix l / 8;
// lane t receives in d[j] the word at row t / 4, word t % 4 of matrix j (its elements 2 (t % 4)
// and 2 (t % 4) + 1): the mma fragments' layout. `row(j, r)` names the address of row r of
// matrix j, so that the emulator's twin, from that table, reads the same rows the GPU does.
template <class Row>
__device__ __forceinline__ void ldmatrix_x4(unsigned (&d)[4], Row row) {
#ifdef CUEMU
  const unsigned lane = (threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z)) % 32;
  for (int j = 0; j < 4; ++j) d[j] = row(j, static_cast<int>(lane / 4))[lane % 4];
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  const int lane = static_cast<int>(threadIdx.x & 31);
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(d[0]), "=r"(d[1]), "=r"(d[2]), "=r"(d[3])
               : "r"(shared_address(row(lane / 8, lane % 8)))
               : "memory");
#else
  __trap();  // the tensor-core path needs sm_80 or later
#endif
}

// d = a * b + c for one warp's 16x8x16 tile (bf16 inputs, f32 accumulation).
__device__ __forceinline__ void mma_bf16_m16n8k16(float d[4], const unsigned a[4], const unsigned b[2],
                                                  const float c[4]) {
  float acc[1][1][4] = {{{c[0], c[1], c[2], c[3]}}};
  const unsigned fa[1][4] = {{a[0], a[1], a[2], a[3]}};
  const unsigned fb[1][2] = {{b[0], b[1]}};
  mma_bf16_grid<1, 1>(acc, fa, fb);
  for (int i = 0; i < 4; ++i) d[i] = acc[0][0][i];
}

}  // namespace mma
