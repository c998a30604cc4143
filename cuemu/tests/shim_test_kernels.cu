// Test kernels of the kernel emulator. They follow the rules of
// cuemu/README.md, "Rules for kernels" (except the two that break them on purpose:
// cuemu_test_missing_sync and cuemu_test_deadlock*) and compile for NVRTC as well.
// Names carry a cuemu_test_ prefix: all kernel sources share one translation unit.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

// ---- block reduction with shared memory and __syncthreads (blockDim.x a power of two <= 1024)
extern "C" __global__ void cuemu_test_block_reduce(const float* __restrict__ x, float* __restrict__ out, int n) {
  __shared__ float s[1024];
  const unsigned t = threadIdx.x;
  const unsigned i = blockIdx.x * blockDim.x + t;
  s[t] = (i < static_cast<unsigned>(n)) ? x[i] : 0.0f;
  __syncthreads();
  for (unsigned stride = blockDim.x / 2; stride > 0; stride >>= 1) {
    if (t < stride) s[t] += s[t + stride];
    __syncthreads();
  }
  if (t == 0) out[blockIdx.x] = s[0];
}

// ---- warp reduction: __shfl_xor_sync, then __shfl_down_sync inside `if (warp == 0)`
__device__ __forceinline__ float cuemu_test_warp_sum_xor(float v) {
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
  return v;
}

extern "C" __global__ void cuemu_test_warp_reduce(const float* __restrict__ x, float* __restrict__ out, int n) {
  __shared__ float warp_sums[32];
  const unsigned t = threadIdx.x;
  const unsigned lane = t % 32, warp = t / 32, nwarps = (blockDim.x + 31) / 32;
  const unsigned i = blockIdx.x * blockDim.x + t;
  float v = (i < static_cast<unsigned>(n)) ? x[i] : 0.0f;
  v = cuemu_test_warp_sum_xor(v);
  if (lane == 0) warp_sums[warp] = v;
  __syncthreads();
  if (warp == 0) {
    float w = (lane < nwarps) ? warp_sums[lane] : 0.0f;
    for (int off = 16; off > 0; off >>= 1) w += __shfl_down_sync(0xffffffffu, w, off);
    if (lane == 0) out[blockIdx.x] = w;
  }
}

// ---- every shuffle flavour with a width; out[4 * t + k] for k = idx, up, down, xor.
extern "C" __global__ void cuemu_test_shuffles(int* out, int src, int delta, int width) {
  const int t = static_cast<int>(threadIdx.x);
  const int v = 1000 + t;
  out[4 * t + 0] = __shfl_sync(0xffffffffu, v, src, width);
  out[4 * t + 1] = __shfl_up_sync(0xffffffffu, v, static_cast<unsigned>(delta), width);
  out[4 * t + 2] = __shfl_down_sync(0xffffffffu, v, static_cast<unsigned>(delta), width);
  out[4 * t + 3] = __shfl_xor_sync(0xffffffffu, v, delta, width);
}

// ---- votes: per warp ballot / any / all of pred[t]
extern "C" __global__ void cuemu_test_ballot(const int* __restrict__ pred, unsigned* __restrict__ out) {
  const unsigned t = blockIdx.x * blockDim.x + threadIdx.x;
  const int p = pred[t];
  const unsigned b = __ballot_sync(0xffffffffu, p);
  const int any = __any_sync(0xffffffffu, p);
  const int all = __all_sync(0xffffffffu, p);
  if (threadIdx.x % 32 == 0) {
    const unsigned w = t / 32;
    out[3 * w + 0] = b;
    out[3 * w + 1] = static_cast<unsigned>(any);
    out[3 * w + 2] = static_cast<unsigned>(all);
  }
}

// ---- atomics across blocks
extern "C" __global__ void cuemu_test_atomics(const float* __restrict__ x, int n, float* sum, int* count,
                                              int* maxv, unsigned* minv) {
  const int i = static_cast<int>(blockIdx.x * blockDim.x + threadIdx.x);
  if (i < n) {
    atomicAdd(sum, x[i]);
    atomicAdd(count, 1);
    atomicMax(maxv, i);
    atomicMin(minv, static_cast<unsigned>(i) + 5u);
  }
}

// ---- BROKEN ON PURPOSE: missing __syncthreads between the write and the read of s[255 - t].
// Launch with 256 threads. `seed` changes every launch so stale shared memory never looks right.
extern "C" __global__ void cuemu_test_missing_sync(float* out, int seed) {
  __shared__ float s[256];
  const unsigned t = threadIdx.x;
  s[t] = static_cast<float>(t * 7 + static_cast<unsigned>(seed));
  // __syncthreads();   <- missing
  out[blockIdx.x * 256 + t] = s[255 - t];
}

// ---- BROKEN ON PURPOSE: a barrier only half of the block reaches (deadlock in the shim).
extern "C" __global__ void cuemu_test_deadlock(float* out) {
  if (threadIdx.x < 16) __syncthreads();
  out[threadIdx.x] = 1.0f;
}

// ---- BROKEN ON PURPOSE: a full-warp __syncwarp only half of the lanes reach.
extern "C" __global__ void cuemu_test_deadlock_warp(float* out) {
  if (threadIdx.x % 32 < 16) __syncwarp();
  out[threadIdx.x] = 2.0f;
}

// ---- dynamic shared memory: reverse each block's chunk through the launch's buffer.
extern "C" __global__ void cuemu_test_dyn_smem(const float* __restrict__ x, float* __restrict__ out, int n) {
  MOCSE_DYNAMIC_SMEM(float, buf);
  const unsigned t = threadIdx.x;
  const unsigned i = blockIdx.x * blockDim.x + t;
  buf[t] = (i < static_cast<unsigned>(n)) ? x[i] : 0.0f;
  __syncthreads();
  const unsigned j = blockIdx.x * blockDim.x + (blockDim.x - 1 - t);
  if (j < static_cast<unsigned>(n)) out[j] = buf[t];
}

// ---- 2-D / 3-D grid and block indexing: every thread writes its coordinates.
extern "C" __global__ void cuemu_test_index3d(unsigned* out) {
  const unsigned bx = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
  const unsigned tx = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
  const unsigned nt = blockDim.x * blockDim.y * blockDim.z;
  const unsigned g = bx * nt + tx;
  out[g] = (blockIdx.z << 24) | (blockIdx.y << 20) | (blockIdx.x << 16) | (threadIdx.z << 8) |
           (threadIdx.y << 4) | threadIdx.x;
}

// ---- __syncthreads_count / _and / _or
extern "C" __global__ void cuemu_test_sync_count(const int* __restrict__ pred, int* __restrict__ out) {
  const unsigned t = threadIdx.x;
  const int c = __syncthreads_count(pred[t]);
  const int a = __syncthreads_and(pred[t]);
  const int o = __syncthreads_or(pred[t]);
  if (t == 0) {
    out[0] = c;
    out[1] = a;
    out[2] = o;
  }
}

// ---- __half and bf16 round trips and arithmetic
extern "C" __global__ void cuemu_test_half(const float* __restrict__ x, float* __restrict__ out, int n) {
  const int i = static_cast<int>(blockIdx.x * blockDim.x + threadIdx.x);
  if (i < n) {
    const __half h = __float2half(x[i]);
    const __half h2 = __hmul(h, __float2half(2.0f));
    const __nv_bfloat16 b = __float2bfloat16(x[i]);
    out[3 * i + 0] = __half2float(h);
    out[3 * i + 1] = __half2float(h2 + h);
    out[3 * i + 2] = __bfloat162float(b);
  }
}

// ---- float-to-int intrinsics with the GPU's semantics: NaN -> 0, out of range saturates
extern "C" __global__ void cuemu_test_float2int(int* out) {
  if (threadIdx.x != 0) return;
  const float nan = __int_as_float(0x7fc00000);
  out[0] = __float2int_rz(nan);
  out[1] = __float2int_rn(3.0e9f);
  out[2] = __float2int_rd(-3.0e9f);
  out[3] = __float2int_rn(2.5f);
  out[4] = static_cast<int>(__float2uint_rz(-1.0f));
  out[5] = static_cast<int>(__float2uint_rn(nan));
  out[6] = __float2int_ru(-0.5f);
}

// ---- benchmarks
extern "C" __global__ void cuemu_test_noop() {}

extern "C" __global__ void cuemu_test_barrier_loop(int iters, float* out) {
  float acc = 0.0f;
  for (int k = 0; k < iters; ++k) {
    acc += static_cast<float>(threadIdx.x);
    __syncthreads();
  }
  if (threadIdx.x == 0) out[blockIdx.x] = acc;
}

extern "C" __global__ void cuemu_test_shfl_loop(int iters, float* out) {
  float v = static_cast<float>(threadIdx.x);
  for (int k = 0; k < iters; ++k) v = __shfl_xor_sync(0xffffffffu, v, k & 31) * 0.5f + 1.0f;
  if (threadIdx.x == 0) out[blockIdx.x] = v;
}
