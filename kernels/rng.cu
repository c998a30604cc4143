// Philox streams written out, for checking that the device generator equals src/rng.rs.
#include "rng.cuh"

// out[i * 4 + j] = word j of block i of stream (seed, purpose, index), i < blocks.
extern "C" __global__ void philox_blocks_u32(unsigned* __restrict__ out, unsigned long long seed,
                                             unsigned purpose, unsigned long long index, int blocks) {
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < blocks; i += blockDim.x * gridDim.x) {
        const Philox4 r = philox_block(seed, purpose, index, (unsigned)i);
        for (int j = 0; j < 4; ++j) out[i * 4 + j] = r.v[j];
    }
}
