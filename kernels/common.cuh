// Shared by the kernel files: block-wide reductions, and the shared-memory address the PTX
// wrappers (mma.cuh, async_copy.cuh) pass to their instructions. Every kernel in this project follows the
// rules of cuemu/README.md ("Rules for kernels"), so it runs on a GPU and under the emulator alike.
#pragma once

#if !defined(CUEMU) && defined(__CUDA_ARCH__)
// The 32-bit address in the shared state space of `p`, a generic pointer into shared memory.
__device__ __forceinline__ unsigned shared_address(const void* p) {
    unsigned address;
    asm("{ .reg .u64 a; cvta.to.shared.u64 a, %1; cvt.u32.u64 %0, a; }" : "=r"(address) : "l"(p));
    return address;
}
#endif

// Sum over the 32 lanes of a warp; all 32 lanes must call it.
__device__ __forceinline__ double warp_sum(double v) {
    for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_down_sync(0xffffffffu, v, offset);
    return v;
}

// Sum over the block (blockDim.x a multiple of 32, at most 1024, 1-D). Every thread must call it;
// thread 0 gets the total. The order of additions is fixed, so the result is deterministic.
// `scratch` is 32 doubles of shared memory, free again when this returns.
__device__ double block_sum(double v, double* scratch) {
    const int lane = threadIdx.x & 31;
    const int warp = threadIdx.x >> 5;
    v = warp_sum(v);
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    const int warps = blockDim.x >> 5;
    v = (int)threadIdx.x < warps ? scratch[threadIdx.x] : 0.0;
    if (warp == 0) v = warp_sum(v);
    __syncthreads();
    return v;
}

// Before a loop that the GPU compiler must not unroll (register pressure); the host compiler of
// the emulator has no such pragma.
// MOCSE_UNROLL: before a loop that must be unrolled whole (it indexes a register array).
#ifdef CUEMU
#define MOCSE_NO_UNROLL
#define MOCSE_UNROLL
#else
#define MOCSE_NO_UNROLL _Pragma("unroll 1")
#define MOCSE_UNROLL _Pragma("unroll")
#endif
