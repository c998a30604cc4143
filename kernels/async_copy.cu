// The selftest's check of the cp.async wrapper (async_copy.cuh): one warp copies three groups of
// 16-byte chunks (some zero fills) into scattered shared slots and reads them back at the points
// the PTX rules allow.
#include "async_copy.cuh"

// in: 3 groups x 32 lanes x 4 words. out: own[3][32][4], what each lane reads of its own copies
// once each group must have landed; early[2][32][4], what a lane sees in its group-1 and group-2
// slots while those may be pending (the GPU may show either contents; the emulator's twin must
// show the old ones); all[3][32][4],
// the three shared slices after a barrier. Lane t's copy of group g goes to slot (5 t + g) % 32 of
// slice g and is a zero fill when (t + g) % 7 == 0. Slots start as 0xDEAD0000 | index.
extern "C" __global__ void cp_async_check(unsigned* __restrict__ out, const unsigned* __restrict__ in) {
  __shared__ __align__(16) unsigned slices[3][32 * 4];
  const int t = static_cast<int>(threadIdx.x & 31);
  for (int g = 0; g < 3; ++g)
    for (int w = 0; w < 4; ++w) slices[g][4 * t + w] = 0xDEAD0000u | static_cast<unsigned>(g * 128 + 4 * t + w);
  __syncthreads();
  async_copy::Pipeline<3> copies;
  auto slot = [&](int g) { return &slices[g][4 * ((5 * t + g) % 32)]; };
  for (int g = 0; g < 3; ++g) {
    copies.copy16(slot(g), in + 4 * (32 * g + t), (t + g) % 7 != 0);
    copies.commit();
  }
  unsigned* own = out;
  unsigned* early = out + 3 * 128;
  unsigned* all = out + 5 * 128;
  copies.wait<2>();  // group 0 has landed
  for (int w = 0; w < 4; ++w) own[4 * t + w] = slot(0)[w];
  for (int w = 0; w < 4; ++w) early[4 * t + w] = slot(1)[w], early[128 + 4 * t + w] = slot(2)[w];
  copies.wait<1>();
  for (int w = 0; w < 4; ++w) own[128 + 4 * t + w] = slot(1)[w];
  copies.wait<0>();
  for (int w = 0; w < 4; ++w) own[256 + 4 * t + w] = slot(2)[w];
  __syncthreads();
  for (int i = t; i < 3 * 128; i += 32) all[i] = slices[i / 128][i % 128];
}
