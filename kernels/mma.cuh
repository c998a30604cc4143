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

namespace mma {

// Where fragment element i of each operand sits in its matrix, for this lane.
__device__ __forceinline__ int a_row(int group, int i) { return group + ((i & 2) ? 8 : 0); }
__device__ __forceinline__ int a_col(int tig, int i) { return 2 * tig + (i & 1) + ((i & 4) ? 8 : 0); }
__device__ __forceinline__ int b_row(int tig, int i) { return 2 * tig + (i & 1) + ((i & 2) ? 8 : 0); }
__device__ __forceinline__ int c_row(int group, int i) { return group + ((i & 2) ? 8 : 0); }
__device__ __forceinline__ int c_col(int tig, int i) { return 2 * tig + (i & 1); }

__device__ __forceinline__ float bf16_bits_to_float(unsigned bits) { return __uint_as_float((bits & 0xffffu) << 16); }

// d = a * b + c for one warp's 16x8x16 tile (bf16 inputs, f32 accumulation).
__device__ __forceinline__ void mma_bf16_m16n8k16(float d[4], const unsigned a[4], const unsigned b[2],
                                                  const float c[4]) {
#ifdef CUEMU
  // Every lane puts its elements into the warp's whole tiles, then computes its own outputs.
  __shared__ float tile_a[32][16][16];
  __shared__ float tile_b[32][16][8];
  const unsigned linear = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
  const unsigned warp = linear / 32, lane = linear % 32;
  const int group = static_cast<int>(lane >> 2), tig = static_cast<int>(lane & 3);
  for (int i = 0; i < 8; ++i)
    tile_a[warp][a_row(group, i)][a_col(tig, i)] = bf16_bits_to_float(a[i / 2] >> (16 * (i & 1)));
  for (int i = 0; i < 4; ++i) tile_b[warp][b_row(tig, i)][group] = bf16_bits_to_float(b[i / 2] >> (16 * (i & 1)));
  __syncwarp();
  for (int i = 0; i < 4; ++i) {
    float acc = c[i];
    for (int k = 0; k < 16; ++k) acc = fmaf(tile_a[warp][c_row(group, i)][k], tile_b[warp][k][c_col(tig, i)], acc);
    d[i] = acc;
  }
  __syncwarp();  // the tiles are rewritten by the warp's next call
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%10, %11, %12, %13};\n"
      : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]), "f"(c[1]), "f"(c[2]),
        "f"(c[3]));
#else
  __trap();  // tensor cores with bf16 need sm_80 or later
#endif
}

}  // namespace mma
