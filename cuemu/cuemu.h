// cuemu.h -- shim that lets kernels/*.cu compile as host C++ and run on the CPU.
//
// The build compiles the kernel sources with `-DCUEMU -include cuemu/cuemu.h`, so a kernel
// never includes this file itself. Design and the rules for kernels: cuemu/README.md
// (section 1 for the design, section 2 for the rules every kernel follows).
//
// What it emulates: one CUDA thread = one fiber; all fibers of a block run on one OS thread
// (see scheduler.cpp). `__shared__` is `thread_local`, so a block's fibers share it. The
// built-in index variables are thread_local globals the scheduler rewrites on each switch.
#pragma once

#ifndef CUEMU
#define CUEMU 1
#endif

// Standard headers first: some of them use identifiers this file turns into macros
// (libstdc++'s shared_ptr_base.h spells `__attribute__((__noinline__))`), and their include
// guards keep later includes from seeing our macros.
#include <atomic>
#include <bit>
#include <cassert>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>
#include <type_traits>
#include <utility>

// ------------------------------------------------------------------------------------------
// Qualifiers
// ------------------------------------------------------------------------------------------
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline __attribute__((always_inline))
#define __noinline__ __attribute__((noinline))
#define __launch_bounds__(...)
#define __constant__ static
#define __align__(n) __attribute__((aligned(n)))
// __restrict__ is a GCC keyword already.

// TLS model of every thread_local the shim creates. initial-exec gives plain %fs-relative
// accesses even in -fPIC code (the cc crate builds with -fPIC), which is valid because the
// emulator is linked into the executable. Define CUEMU_TLS_MODEL empty before including this
// header if the code must go into a dlopen()ed shared library.
#ifndef CUEMU_TLS_MODEL
#define CUEMU_TLS_MODEL __attribute__((tls_model("initial-exec")))
#endif

// One copy per OS thread; a block's fibers all run on one OS thread, so they share it. It keeps
// its contents from the previous block that ran on that thread (on a GPU it is garbage).
#define __shared__ thread_local CUEMU_TLS_MODEL

// ------------------------------------------------------------------------------------------
// Vector types (same size and alignment as CUDA's)
// ------------------------------------------------------------------------------------------
#define CUEMU_VEC1(T, N, A) \
  struct alignas(A) N##1 { T x; }; \
  inline constexpr N##1 make_##N##1(T x) { return N##1{x}; }
#define CUEMU_VEC2(T, N, A) \
  struct alignas(A) N##2 { T x, y; }; \
  inline constexpr N##2 make_##N##2(T x, T y) { return N##2{x, y}; }
#define CUEMU_VEC3(T, N) \
  struct N##3 { T x, y, z; }; \
  inline constexpr N##3 make_##N##3(T x, T y, T z) { return N##3{x, y, z}; }
#define CUEMU_VEC4(T, N, A) \
  struct alignas(A) N##4 { T x, y, z, w; }; \
  inline constexpr N##4 make_##N##4(T x, T y, T z, T w) { return N##4{x, y, z, w}; }

CUEMU_VEC1(signed char, char, 1)
CUEMU_VEC2(signed char, char, 2)
CUEMU_VEC3(signed char, char)
CUEMU_VEC4(signed char, char, 4)
CUEMU_VEC1(unsigned char, uchar, 1)
CUEMU_VEC2(unsigned char, uchar, 2)
CUEMU_VEC3(unsigned char, uchar)
CUEMU_VEC4(unsigned char, uchar, 4)
CUEMU_VEC2(short, short, 4)
CUEMU_VEC3(short, short)
CUEMU_VEC4(short, short, 8)
CUEMU_VEC2(unsigned short, ushort, 4)
CUEMU_VEC3(unsigned short, ushort)
CUEMU_VEC4(unsigned short, ushort, 8)
CUEMU_VEC1(int, int, 4)
CUEMU_VEC2(int, int, 8)
CUEMU_VEC3(int, int)
CUEMU_VEC4(int, int, 16)
CUEMU_VEC1(unsigned int, uint, 4)
CUEMU_VEC2(unsigned int, uint, 8)
CUEMU_VEC3(unsigned int, uint)
CUEMU_VEC4(unsigned int, uint, 16)
CUEMU_VEC1(float, float, 4)
CUEMU_VEC2(float, float, 8)
CUEMU_VEC3(float, float)
CUEMU_VEC4(float, float, 16)
CUEMU_VEC1(double, double, 8)
CUEMU_VEC2(double, double, 16)
CUEMU_VEC3(double, double)
CUEMU_VEC2(long long, longlong, 16)
CUEMU_VEC2(unsigned long long, ulonglong, 16)
#undef CUEMU_VEC1
#undef CUEMU_VEC2
#undef CUEMU_VEC3
#undef CUEMU_VEC4

struct dim3 {
  unsigned int x, y, z;
  constexpr dim3(unsigned int vx = 1, unsigned int vy = 1, unsigned int vz = 1) : x(vx), y(vy), z(vz) {}
  constexpr dim3(uint3 v) : x(v.x), y(v.y), z(v.z) {}
  constexpr operator uint3() const { return uint3{x, y, z}; }
};

// ------------------------------------------------------------------------------------------
// Built-in variables. Constant-initialized, so accesses are plain TLS loads (no TLS wrapper).
// The compiler reloads them after every (opaque) call into the runtime, which is where fiber
// switches happen; a fiber never moves to another OS thread, so cached TLS addresses stay right.
// ------------------------------------------------------------------------------------------
inline thread_local uint3 threadIdx CUEMU_TLS_MODEL = {0, 0, 0};
inline thread_local uint3 blockIdx CUEMU_TLS_MODEL = {0, 0, 0};
inline thread_local dim3 blockDim CUEMU_TLS_MODEL;
inline thread_local dim3 gridDim CUEMU_TLS_MODEL;
static constexpr int warpSize = 32;

// ------------------------------------------------------------------------------------------
// Runtime entry points (scheduler.cpp)
// ------------------------------------------------------------------------------------------
namespace cuemu {
namespace detail {
inline thread_local void* tl_dynamic_smem CUEMU_TLS_MODEL = nullptr;

void syncthreads();
int syncthreads_count(int pred);
void syncwarp(unsigned mask);
// Shuffle of 8 raw bytes with PTX shfl.sync semantics: mode 0 idx, 1 up, 2 down, 3 bfly;
// b = lane / delta / lane mask, c = clamp value | (segment mask << 8).
std::uint64_t shfl(unsigned mask, std::uint64_t v, int mode, int b, int c);
// Warp exchange: every lane named in `mask` publishes v; returns the warp's 32 slots
// (lanes outside the mask hold stale values). The caller must call syncwarp(mask) after reading.
const std::uint64_t* warp_exchange(unsigned mask, std::uint64_t v);
unsigned lane_id();
unsigned ballot(unsigned mask, int pred, unsigned* participants);

enum : int { kShflIdx = 0, kShflUp = 1, kShflDown = 2, kShflBfly = 3 };

template <class T>
inline T shfl_t(unsigned mask, T var, int mode, int b, int c) {
  static_assert(std::is_trivially_copyable_v<T> && sizeof(T) <= 8,
                "cuemu: shuffles move trivially copyable values of at most 8 bytes");
  std::uint64_t bits = 0;
  std::memcpy(&bits, &var, sizeof(T));
  bits = shfl(mask, bits, mode, b, c);
  T r;
  std::memcpy(&r, &bits, sizeof(T));
  return r;
}
}  // namespace detail

// Start of the launch's dynamic shared memory (16-byte aligned, exactly `dynamic_smem` bytes,
// one buffer per worker OS thread reused across blocks).
inline void* dynamic_smem() { return detail::tl_dynamic_smem; }
}  // namespace cuemu

// The project's single form of dynamic shared memory (NVRTC twin in nvrtc_prelude.cuh):
//   MOCSE_DYNAMIC_SMEM(float, buf);   // then use buf[i]
#define MOCSE_DYNAMIC_SMEM(T, name) T* name = reinterpret_cast<T*>(::cuemu::dynamic_smem())

// ------------------------------------------------------------------------------------------
// Synchronization and warp functions
// ------------------------------------------------------------------------------------------
inline void __syncthreads() { cuemu::detail::syncthreads(); }
inline int __syncthreads_count(int pred) { return cuemu::detail::syncthreads_count(pred); }
inline int __syncthreads_and(int pred) {
  return cuemu::detail::syncthreads_count(pred) ==
         static_cast<int>(blockDim.x * blockDim.y * blockDim.z);
}
inline int __syncthreads_or(int pred) { return cuemu::detail::syncthreads_count(pred) != 0; }
inline void __syncwarp(unsigned mask = 0xffffffffu) { cuemu::detail::syncwarp(mask); }
inline void __threadfence() { std::atomic_thread_fence(std::memory_order_seq_cst); }
inline void __threadfence_block() { std::atomic_thread_fence(std::memory_order_seq_cst); }
inline void __threadfence_system() { std::atomic_thread_fence(std::memory_order_seq_cst); }
[[noreturn]] inline void __trap() { __builtin_trap(); }

template <class T>
inline T __shfl_sync(unsigned mask, T var, int srcLane, int width = warpSize) {
  return cuemu::detail::shfl_t(mask, var, cuemu::detail::kShflIdx, srcLane, ((warpSize - width) << 8) | 0x1f);
}
template <class T>
inline T __shfl_up_sync(unsigned mask, T var, unsigned delta, int width = warpSize) {
  return cuemu::detail::shfl_t(mask, var, cuemu::detail::kShflUp, static_cast<int>(delta), (warpSize - width) << 8);
}
template <class T>
inline T __shfl_down_sync(unsigned mask, T var, unsigned delta, int width = warpSize) {
  return cuemu::detail::shfl_t(mask, var, cuemu::detail::kShflDown, static_cast<int>(delta),
                               ((warpSize - width) << 8) | 0x1f);
}
template <class T>
inline T __shfl_xor_sync(unsigned mask, T var, int laneMask, int width = warpSize) {
  return cuemu::detail::shfl_t(mask, var, cuemu::detail::kShflBfly, laneMask, ((warpSize - width) << 8) | 0x1f);
}
inline unsigned __ballot_sync(unsigned mask, int pred) { return cuemu::detail::ballot(mask, pred, nullptr); }
inline int __any_sync(unsigned mask, int pred) { return cuemu::detail::ballot(mask, pred, nullptr) != 0; }
inline int __all_sync(unsigned mask, int pred) {
  unsigned participants = 0;
  unsigned b = cuemu::detail::ballot(mask, pred, &participants);
  return b == participants;
}
// sm_80 warp reductions.
#define CUEMU_WARP_REDUCE(NAME, T, INIT, OP)                                              \
  inline T NAME(unsigned mask, T value) {                                                 \
    std::uint64_t bits = 0;                                                               \
    std::memcpy(&bits, &value, sizeof(T));                                                \
    const std::uint64_t* s = cuemu::detail::warp_exchange(mask, bits);                    \
    unsigned m = mask | (1u << cuemu::detail::lane_id());                                 \
    T acc = INIT;                                                                         \
    for (int l = 0; l < 32; ++l)                                                          \
      if (m & (1u << l)) {                                                                \
        T v;                                                                              \
        std::memcpy(&v, &s[l], sizeof(T));                                                \
        acc = OP;                                                                         \
      }                                                                                   \
    cuemu::detail::syncwarp(mask);                                                        \
    return acc;                                                                           \
  }
CUEMU_WARP_REDUCE(__reduce_add_sync, unsigned, 0u, acc + v)
CUEMU_WARP_REDUCE(__reduce_add_sync, int, 0, static_cast<int>(static_cast<unsigned>(acc) + static_cast<unsigned>(v)))
CUEMU_WARP_REDUCE(__reduce_min_sync, unsigned, 0xffffffffu, (v < acc ? v : acc))
CUEMU_WARP_REDUCE(__reduce_min_sync, int, 0x7fffffff, (v < acc ? v : acc))
CUEMU_WARP_REDUCE(__reduce_max_sync, unsigned, 0u, (v > acc ? v : acc))
CUEMU_WARP_REDUCE(__reduce_max_sync, int, static_cast<int>(0x80000000u), (v > acc ? v : acc))
CUEMU_WARP_REDUCE(__reduce_and_sync, unsigned, 0xffffffffu, acc & v)
CUEMU_WARP_REDUCE(__reduce_or_sync, unsigned, 0u, acc | v)
CUEMU_WARP_REDUCE(__reduce_xor_sync, unsigned, 0u, acc ^ v)
#undef CUEMU_WARP_REDUCE

// ------------------------------------------------------------------------------------------
// Atomics (relaxed, like CUDA's). Within a block nothing preempts a fiber; across blocks on
// different OS threads these are real atomic operations.
// ------------------------------------------------------------------------------------------
namespace cuemu {
namespace detail {
template <class T>
inline std::atomic_ref<T> aref(T* p) {
  return std::atomic_ref<T>(*p);
}
template <class T, class F>
inline T cas_loop(T* p, F f) {
  std::atomic_ref<T> r(*p);
  T old = r.load(std::memory_order_relaxed);
  while (!r.compare_exchange_weak(old, f(old), std::memory_order_relaxed)) {
  }
  return old;
}
}  // namespace detail
}  // namespace cuemu

#define CUEMU_RELAXED std::memory_order_relaxed
inline float atomicAdd(float* p, float v) { return cuemu::detail::aref(p).fetch_add(v, CUEMU_RELAXED); }
inline double atomicAdd(double* p, double v) { return cuemu::detail::aref(p).fetch_add(v, CUEMU_RELAXED); }
inline int atomicAdd(int* p, int v) { return cuemu::detail::aref(p).fetch_add(v, CUEMU_RELAXED); }
inline unsigned atomicAdd(unsigned* p, unsigned v) { return cuemu::detail::aref(p).fetch_add(v, CUEMU_RELAXED); }
inline unsigned long long atomicAdd(unsigned long long* p, unsigned long long v) {
  return cuemu::detail::aref(p).fetch_add(v, CUEMU_RELAXED);
}
inline int atomicSub(int* p, int v) { return cuemu::detail::aref(p).fetch_sub(v, CUEMU_RELAXED); }
inline unsigned atomicSub(unsigned* p, unsigned v) { return cuemu::detail::aref(p).fetch_sub(v, CUEMU_RELAXED); }
#define CUEMU_ATOMIC_MINMAX(T)                                                                          \
  inline T atomicMax(T* p, T v) { return cuemu::detail::cas_loop(p, [v](T o) { return o < v ? v : o; }); } \
  inline T atomicMin(T* p, T v) { return cuemu::detail::cas_loop(p, [v](T o) { return v < o ? v : o; }); }
CUEMU_ATOMIC_MINMAX(int)
CUEMU_ATOMIC_MINMAX(unsigned)
CUEMU_ATOMIC_MINMAX(long long)
CUEMU_ATOMIC_MINMAX(unsigned long long)
#undef CUEMU_ATOMIC_MINMAX
#define CUEMU_ATOMIC_BITS(T)                                                                           \
  inline T atomicAnd(T* p, T v) { return cuemu::detail::aref(p).fetch_and(v, CUEMU_RELAXED); }        \
  inline T atomicOr(T* p, T v) { return cuemu::detail::aref(p).fetch_or(v, CUEMU_RELAXED); }          \
  inline T atomicXor(T* p, T v) { return cuemu::detail::aref(p).fetch_xor(v, CUEMU_RELAXED); }        \
  inline T atomicExch(T* p, T v) { return cuemu::detail::aref(p).exchange(v, CUEMU_RELAXED); }        \
  inline T atomicCAS(T* p, T cmp, T v) {                                                               \
    cuemu::detail::aref(p).compare_exchange_strong(cmp, v, CUEMU_RELAXED);                             \
    return cmp;                                                                                        \
  }
CUEMU_ATOMIC_BITS(int)
CUEMU_ATOMIC_BITS(unsigned)
CUEMU_ATOMIC_BITS(unsigned long long)
#undef CUEMU_ATOMIC_BITS
inline float atomicExch(float* p, float v) { return cuemu::detail::aref(p).exchange(v, CUEMU_RELAXED); }
inline unsigned atomicInc(unsigned* p, unsigned v) {
  return cuemu::detail::cas_loop(p, [v](unsigned o) { return o >= v ? 0u : o + 1u; });
}
inline unsigned atomicDec(unsigned* p, unsigned v) {
  return cuemu::detail::cas_loop(p, [v](unsigned o) { return (o == 0u || o > v) ? v : o - 1u; });
}
#undef CUEMU_RELAXED

// ------------------------------------------------------------------------------------------
// Math: CUDA's global min/max overloads (std::min(int, unsigned) would not compile)
// ------------------------------------------------------------------------------------------
#define CUEMU_MINMAX(R, A, B)                                                                 \
  inline constexpr R min(A a, B b) { return static_cast<R>(a) < static_cast<R>(b) ? static_cast<R>(a) : static_cast<R>(b); } \
  inline constexpr R max(A a, B b) { return static_cast<R>(a) > static_cast<R>(b) ? static_cast<R>(a) : static_cast<R>(b); }
CUEMU_MINMAX(int, int, int)
CUEMU_MINMAX(unsigned, unsigned, unsigned)
CUEMU_MINMAX(unsigned, int, unsigned)
CUEMU_MINMAX(unsigned, unsigned, int)
CUEMU_MINMAX(long, long, long)
CUEMU_MINMAX(unsigned long, unsigned long, unsigned long)
CUEMU_MINMAX(unsigned long, long, unsigned long)
CUEMU_MINMAX(unsigned long, unsigned long, long)
CUEMU_MINMAX(long long, long long, long long)
CUEMU_MINMAX(unsigned long long, unsigned long long, unsigned long long)
CUEMU_MINMAX(unsigned long long, long long, unsigned long long)
CUEMU_MINMAX(unsigned long long, unsigned long long, long long)
#undef CUEMU_MINMAX
inline float min(float a, float b) { return fminf(a, b); }
inline float max(float a, float b) { return fmaxf(a, b); }
inline double min(double a, double b) { return fmin(a, b); }
inline double max(double a, double b) { return fmax(a, b); }
inline double min(float a, double b) { return fmin(a, b); }
inline double max(float a, double b) { return fmax(a, b); }
inline double min(double a, float b) { return fmin(a, b); }
inline double max(double a, float b) { return fmax(a, b); }
inline constexpr unsigned umin(unsigned a, unsigned b) { return a < b ? a : b; }
inline constexpr unsigned umax(unsigned a, unsigned b) { return a > b ? a : b; }
inline constexpr long long llmin(long long a, long long b) { return a < b ? a : b; }
inline constexpr long long llmax(long long a, long long b) { return a > b ? a : b; }
inline constexpr unsigned long long ullmin(unsigned long long a, unsigned long long b) { return a < b ? a : b; }
inline constexpr unsigned long long ullmax(unsigned long long a, unsigned long long b) { return a > b ? a : b; }

// ------------------------------------------------------------------------------------------
// Intrinsics. Results differ from the GPU's approximate versions: compare with tolerances.
// ------------------------------------------------------------------------------------------
inline constexpr int __float_as_int(float x) { return std::bit_cast<int>(x); }
inline constexpr float __int_as_float(int x) { return std::bit_cast<float>(x); }
inline constexpr unsigned __float_as_uint(float x) { return std::bit_cast<unsigned>(x); }
inline constexpr float __uint_as_float(unsigned x) { return std::bit_cast<float>(x); }
inline constexpr long long __double_as_longlong(double x) { return std::bit_cast<long long>(x); }
inline constexpr double __longlong_as_double(long long x) { return std::bit_cast<double>(x); }

#ifndef CUDART_INF_F
#define CUDART_INF_F __int_as_float(0x7f800000)
#endif
#ifndef CUDART_NAN_F
#define CUDART_NAN_F __int_as_float(0x7fffffff)
#endif

namespace cuemu {
namespace detail {
// Keeps g++ from contracting an explicitly rounded op with its neighbours into an FMA (as
// NVRTC's __fmul_rn / __fadd_rn never are): applied to a product's result, and to a sum's
// operands, which may themselves be plain products.
template <typename T>
inline T opaque(T x) {
#if defined(__x86_64__)
  asm("" : "+x"(x));
#else
  volatile T v = x;
  x = v;
#endif
  return x;
}
}  // namespace detail
}  // namespace cuemu

inline float __expf(float x) { return expf(x); }
inline float __exp10f(float x) { return exp10f(x); }
inline float __logf(float x) { return logf(x); }
inline float __log2f(float x) { return log2f(x); }
inline float __log10f(float x) { return log10f(x); }
inline float __sinf(float x) { return sinf(x); }
inline float __cosf(float x) { return cosf(x); }
inline float __tanf(float x) { return tanf(x); }
inline float __powf(float x, float y) { return powf(x, y); }
inline void __sincosf(float x, float* s, float* c) { *s = sinf(x); *c = cosf(x); }
inline float __fdividef(float a, float b) { return a / b; }
inline float fdividef(float a, float b) { return a / b; }
inline float __frcp_rn(float x) { return 1.0f / x; }
inline float __fsqrt_rn(float x) { return sqrtf(x); }
inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
inline double rsqrt(double x) { return 1.0 / sqrt(x); }
inline float __frsqrt_rn(float x) { return 1.0f / sqrtf(x); }
inline float __saturatef(float x) { return x > 0.0f ? (x < 1.0f ? x : 1.0f) : 0.0f; }  // NaN -> 0
inline float __fmaf_rn(float a, float b, float c) { return fmaf(a, b, c); }
inline double __fma_rn(double a, double b, double c) { return fma(a, b, c); }
inline float __fadd_rn(float a, float b) {
  return cuemu::detail::opaque(cuemu::detail::opaque(a) + cuemu::detail::opaque(b));
}
inline float __fsub_rn(float a, float b) {
  return cuemu::detail::opaque(cuemu::detail::opaque(a) - cuemu::detail::opaque(b));
}
inline float __fmul_rn(float a, float b) { return cuemu::detail::opaque(a * b); }
inline double __dadd_rn(double a, double b) {
  return cuemu::detail::opaque(cuemu::detail::opaque(a) + cuemu::detail::opaque(b));
}
inline double __dsub_rn(double a, double b) {
  return cuemu::detail::opaque(cuemu::detail::opaque(a) - cuemu::detail::opaque(b));
}
inline double __dmul_rn(double a, double b) { return cuemu::detail::opaque(a * b); }
inline float __fdiv_rn(float a, float b) { return a / b; }
// The conversion intrinsics as the GPU defines them (cvt.rni/rzi/rmi/rpi.s32.f32 and .u32): a
// NaN gives 0 and values out of range saturate, where a host cast would give INT_MIN (x86) or
// be undefined. Plain (int) casts in kernels are host casts here; the sanitizer build adds
// -fsanitize=float-cast-overflow, so a kernel whose cast meets a NaN or an out-of-range value
// fails under the emulator instead of silently differing from the GPU.
namespace cuemu::detail {
inline int saturating_int(float v) {
  if (v != v) return 0;
  if (v >= 2147483648.0f) return 2147483647;
  if (v < -2147483648.0f) return -2147483647 - 1;
  return static_cast<int>(v);
}
inline unsigned saturating_uint(float v) {
  if (!(v > 0.0f)) return 0u;  // NaN and negatives
  if (v >= 4294967296.0f) return 4294967295u;
  return static_cast<unsigned>(v);
}
}  // namespace cuemu::detail
inline int __float2int_rn(float x) { return cuemu::detail::saturating_int(nearbyintf(x)); }
inline int __float2int_rz(float x) { return cuemu::detail::saturating_int(truncf(x)); }
inline int __float2int_rd(float x) { return cuemu::detail::saturating_int(floorf(x)); }
inline int __float2int_ru(float x) { return cuemu::detail::saturating_int(ceilf(x)); }
inline unsigned __float2uint_rn(float x) { return cuemu::detail::saturating_uint(nearbyintf(x)); }
inline unsigned __float2uint_rz(float x) { return cuemu::detail::saturating_uint(truncf(x)); }
inline float __int2float_rn(int x) { return static_cast<float>(x); }
inline float __uint2float_rn(unsigned x) { return static_cast<float>(x); }
inline float __double2float_rn(double x) { return static_cast<float>(x); }

template <class T>
inline T __ldg(const T* p) { return *p; }
template <class T>
inline T __ldcg(const T* p) { return *p; }
template <class T>
inline T __ldcs(const T* p) { return *p; }
template <class T>
inline void __stcg(T* p, T v) { *p = v; }
template <class T>
inline void __stcs(T* p, T v) { *p = v; }

inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
inline int __clz(int x) { return x == 0 ? 32 : __builtin_clz(static_cast<unsigned>(x)); }
inline int __clzll(long long x) { return x == 0 ? 64 : __builtin_clzll(static_cast<unsigned long long>(x)); }
inline int __ffs(int x) { return __builtin_ffs(x); }
inline int __ffsll(long long x) { return __builtin_ffsll(x); }
inline unsigned __brev(unsigned x) {
  x = ((x >> 1) & 0x55555555u) | ((x & 0x55555555u) << 1);
  x = ((x >> 2) & 0x33333333u) | ((x & 0x33333333u) << 2);
  x = ((x >> 4) & 0x0f0f0f0fu) | ((x & 0x0f0f0f0fu) << 4);
  return __builtin_bswap32(x);
}
inline int __mul24(int a, int b) {
  // Low 32 bits of the product of the sign-extended low 24 bits.
  long long ea = static_cast<int>(static_cast<unsigned>(a) << 8) >> 8;
  long long eb = static_cast<int>(static_cast<unsigned>(b) << 8) >> 8;
  return static_cast<int>(static_cast<unsigned>(static_cast<unsigned long long>(ea * eb)));
}
inline unsigned __umul24(unsigned a, unsigned b) { return (a & 0xffffffu) * (b & 0xffffffu); }
inline int __mulhi(int a, int b) { return static_cast<int>((static_cast<long long>(a) * b) >> 32); }
inline unsigned __umulhi(unsigned a, unsigned b) {
  return static_cast<unsigned>((static_cast<unsigned long long>(a) * b) >> 32);
}
inline long long __mul64hi(long long a, long long b) {
  return static_cast<long long>((static_cast<__int128>(a) * b) >> 64);
}
inline unsigned long long __umul64hi(unsigned long long a, unsigned long long b) {
  return static_cast<unsigned long long>((static_cast<unsigned __int128>(a) * b) >> 64);
}

// ------------------------------------------------------------------------------------------
// __half (IEEE binary16 via GCC's _Float16; build with -mf16c) and __nv_bfloat16.
// Arithmetic is done in float and rounded once: float holds every exact +,-,*,/ result of two
// halves well enough (24 >= 2*11+2 bits) that the double rounding is harmless.
// ------------------------------------------------------------------------------------------
struct __half {
  _Float16 v;
  __half() = default;
  constexpr __half(float f) : v(static_cast<_Float16>(f)) {}
  constexpr __half(double d) : v(static_cast<_Float16>(static_cast<float>(d))) {}
  constexpr __half(int i) : v(static_cast<_Float16>(static_cast<float>(i))) {}
  constexpr operator float() const { return static_cast<float>(v); }
};
struct alignas(4) __half2 {
  __half x, y;
};
typedef __half half;
typedef __half2 half2;

inline __half __float2half(float f) { return __half(f); }
inline __half __float2half_rn(float f) { return __half(f); }
inline float __half2float(__half h) { return static_cast<float>(h.v); }
inline __half __int2half_rn(int i) { return __half(static_cast<float>(i)); }
inline int __half2int_rn(__half h) { return static_cast<int>(nearbyintf(__half2float(h))); }
inline int __half2int_rz(__half h) { return static_cast<int>(__half2float(h)); }
inline unsigned short __half_as_ushort(__half h) { return std::bit_cast<unsigned short>(h.v); }
inline short __half_as_short(__half h) { return std::bit_cast<short>(h.v); }
inline __half __ushort_as_half(unsigned short u) {
  __half h;
  h.v = std::bit_cast<_Float16>(u);
  return h;
}
inline __half __short_as_half(short s) { return __ushort_as_half(static_cast<unsigned short>(s)); }
inline __half __hadd(__half a, __half b) { return __half(__half2float(a) + __half2float(b)); }
inline __half __hsub(__half a, __half b) { return __half(__half2float(a) - __half2float(b)); }
inline __half __hmul(__half a, __half b) { return __half(__half2float(a) * __half2float(b)); }
inline __half __hdiv(__half a, __half b) { return __half(__half2float(a) / __half2float(b)); }
inline __half __hfma(__half a, __half b, __half c) {
  return __half(static_cast<float>(static_cast<double>(__half2float(a)) * __half2float(b) + __half2float(c)));
}
inline __half __hneg(__half a) { return __ushort_as_half(static_cast<unsigned short>(__half_as_ushort(a) ^ 0x8000u)); }
inline __half __habs(__half a) { return __ushort_as_half(static_cast<unsigned short>(__half_as_ushort(a) & 0x7fffu)); }
inline __half __hmax(__half a, __half b) { return __half(fmaxf(__half2float(a), __half2float(b))); }
inline __half __hmin(__half a, __half b) { return __half(fminf(__half2float(a), __half2float(b))); }
inline bool __heq(__half a, __half b) { return __half2float(a) == __half2float(b); }
inline bool __hne(__half a, __half b) { return __half2float(a) != __half2float(b); }
inline bool __hlt(__half a, __half b) { return __half2float(a) < __half2float(b); }
inline bool __hle(__half a, __half b) { return __half2float(a) <= __half2float(b); }
inline bool __hgt(__half a, __half b) { return __half2float(a) > __half2float(b); }
inline bool __hge(__half a, __half b) { return __half2float(a) >= __half2float(b); }
inline bool __hisnan(__half a) { return std::isnan(__half2float(a)); }
inline int __hisinf(__half a) {
  float f = __half2float(a);
  return std::isinf(f) ? (f < 0 ? -1 : 1) : 0;
}
inline __half hsqrt(__half a) { return __half(sqrtf(__half2float(a))); }
inline __half hexp(__half a) { return __half(expf(__half2float(a))); }
inline __half hlog(__half a) { return __half(logf(__half2float(a))); }
inline __half operator+(__half a, __half b) { return __hadd(a, b); }
inline __half operator-(__half a, __half b) { return __hsub(a, b); }
inline __half operator*(__half a, __half b) { return __hmul(a, b); }
inline __half operator/(__half a, __half b) { return __hdiv(a, b); }
inline __half operator-(__half a) { return __hneg(a); }
inline __half operator+(__half a) { return a; }
inline __half& operator+=(__half& a, __half b) { return a = __hadd(a, b); }
inline __half& operator-=(__half& a, __half b) { return a = __hsub(a, b); }
inline __half& operator*=(__half& a, __half b) { return a = __hmul(a, b); }
inline __half& operator/=(__half& a, __half b) { return a = __hdiv(a, b); }
inline bool operator==(__half a, __half b) { return __heq(a, b); }
inline bool operator!=(__half a, __half b) { return __hne(a, b); }
inline bool operator<(__half a, __half b) { return __hlt(a, b); }
inline bool operator<=(__half a, __half b) { return __hle(a, b); }
inline bool operator>(__half a, __half b) { return __hgt(a, b); }
inline bool operator>=(__half a, __half b) { return __hge(a, b); }

inline __half2 __halves2half2(__half a, __half b) { return __half2{a, b}; }
inline __half2 __floats2half2_rn(float a, float b) { return __half2{__half(a), __half(b)}; }
inline __half2 __float2half2_rn(float a) { return __half2{__half(a), __half(a)}; }
inline __half2 __float22half2_rn(float2 f) { return __half2{__half(f.x), __half(f.y)}; }
inline float2 __half22float2(__half2 h) { return float2{__half2float(h.x), __half2float(h.y)}; }
inline float __low2float(__half2 h) { return __half2float(h.x); }
inline float __high2float(__half2 h) { return __half2float(h.y); }
inline __half __low2half(__half2 h) { return h.x; }
inline __half __high2half(__half2 h) { return h.y; }
inline __half2 __hadd2(__half2 a, __half2 b) { return __half2{__hadd(a.x, b.x), __hadd(a.y, b.y)}; }
inline __half2 __hsub2(__half2 a, __half2 b) { return __half2{__hsub(a.x, b.x), __hsub(a.y, b.y)}; }
inline __half2 __hmul2(__half2 a, __half2 b) { return __half2{__hmul(a.x, b.x), __hmul(a.y, b.y)}; }
inline __half2 __h2div(__half2 a, __half2 b) { return __half2{__hdiv(a.x, b.x), __hdiv(a.y, b.y)}; }
inline __half2 __hfma2(__half2 a, __half2 b, __half2 c) {
  return __half2{__hfma(a.x, b.x, c.x), __hfma(a.y, b.y, c.y)};
}

struct __nv_bfloat16 {
  unsigned short bits;
  static constexpr unsigned short from_float(float f) {
    unsigned u = std::bit_cast<unsigned>(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<unsigned short>((u >> 16) | 0x40u);  // quiet NaN
    u += 0x7fffu + ((u >> 16) & 1u);  // round to nearest even
    return static_cast<unsigned short>(u >> 16);
  }
  __nv_bfloat16() = default;
  constexpr __nv_bfloat16(float f) : bits(from_float(f)) {}
  constexpr __nv_bfloat16(double d) : bits(from_float(static_cast<float>(d))) {}
  constexpr __nv_bfloat16(int i) : bits(from_float(static_cast<float>(i))) {}
  constexpr operator float() const { return std::bit_cast<float>(static_cast<unsigned>(bits) << 16); }
};
struct alignas(4) __nv_bfloat162 {
  __nv_bfloat16 x, y;
};
typedef __nv_bfloat16 nv_bfloat16;
typedef __nv_bfloat162 nv_bfloat162;

inline __nv_bfloat16 __float2bfloat16(float f) { return __nv_bfloat16(f); }
inline __nv_bfloat16 __float2bfloat16_rn(float f) { return __nv_bfloat16(f); }
inline float __bfloat162float(__nv_bfloat16 b) { return static_cast<float>(b); }
inline unsigned short __bfloat16_as_ushort(__nv_bfloat16 b) { return b.bits; }
inline __nv_bfloat16 __ushort_as_bfloat16(unsigned short u) {
  __nv_bfloat16 b;
  b.bits = u;
  return b;
}
inline __nv_bfloat162 __floats2bfloat162_rn(float a, float b) { return __nv_bfloat162{__nv_bfloat16(a), __nv_bfloat16(b)}; }
inline float2 __bfloat1622float2(__nv_bfloat162 h) { return float2{static_cast<float>(h.x), static_cast<float>(h.y)}; }
inline float __low2float(__nv_bfloat162 h) { return static_cast<float>(h.x); }
inline float __high2float(__nv_bfloat162 h) { return static_cast<float>(h.y); }
#define CUEMU_BF16_BIN(NAME, OP) \
  inline __nv_bfloat16 NAME(__nv_bfloat16 a, __nv_bfloat16 b) { return __nv_bfloat16(static_cast<float>(a) OP static_cast<float>(b)); }
CUEMU_BF16_BIN(__hadd, +)
CUEMU_BF16_BIN(__hsub, -)
CUEMU_BF16_BIN(__hmul, *)
CUEMU_BF16_BIN(__hdiv, /)
CUEMU_BF16_BIN(operator+, +)
CUEMU_BF16_BIN(operator-, -)
CUEMU_BF16_BIN(operator*, *)
CUEMU_BF16_BIN(operator/, /)
#undef CUEMU_BF16_BIN
inline __nv_bfloat16 __hfma(__nv_bfloat16 a, __nv_bfloat16 b, __nv_bfloat16 c) {
  return __nv_bfloat16(fmaf(static_cast<float>(a), static_cast<float>(b), static_cast<float>(c)));
}
inline __nv_bfloat16 operator-(__nv_bfloat16 a) { return __ushort_as_bfloat16(static_cast<unsigned short>(a.bits ^ 0x8000u)); }
inline __nv_bfloat16& operator+=(__nv_bfloat16& a, __nv_bfloat16 b) { return a = a + b; }
inline __nv_bfloat16& operator-=(__nv_bfloat16& a, __nv_bfloat16 b) { return a = a - b; }
inline __nv_bfloat16& operator*=(__nv_bfloat16& a, __nv_bfloat16 b) { return a = a * b; }
inline __nv_bfloat16& operator/=(__nv_bfloat16& a, __nv_bfloat16 b) { return a = a / b; }
inline bool operator==(__nv_bfloat16 a, __nv_bfloat16 b) { return static_cast<float>(a) == static_cast<float>(b); }
inline bool operator!=(__nv_bfloat16 a, __nv_bfloat16 b) { return static_cast<float>(a) != static_cast<float>(b); }
inline bool operator<(__nv_bfloat16 a, __nv_bfloat16 b) { return static_cast<float>(a) < static_cast<float>(b); }
inline bool operator<=(__nv_bfloat16 a, __nv_bfloat16 b) { return static_cast<float>(a) <= static_cast<float>(b); }
inline bool operator>(__nv_bfloat16 a, __nv_bfloat16 b) { return static_cast<float>(a) > static_cast<float>(b); }
inline bool operator>=(__nv_bfloat16 a, __nv_bfloat16 b) { return static_cast<float>(a) >= static_cast<float>(b); }

// ------------------------------------------------------------------------------------------
// Launch glue used by harness.cpp: unpack cuLaunchKernel-style `void** args` into a kernel's
// own parameter types. Kernels are plain functions `void k(T0, T1, ...)` under the shim.
// ------------------------------------------------------------------------------------------
namespace cuemu {
using Invoke = void (*)(void** args);
// Adds a kernel to the registry (scheduler.cpp). `name` must outlive the program (a literal).
void register_kernel(const char* name, Invoke invoke, int num_params);

template <auto K>
struct Invoker;
template <class... A, void (*K)(A...)>
struct Invoker<K> {
  static_assert((!std::is_reference_v<A> && ...), "cuemu: kernel parameters cannot be references");
  static constexpr int num_params = static_cast<int>(sizeof...(A));
  template <std::size_t... I>
  static void unpack(void** args, std::index_sequence<I...>) {
    K(*static_cast<std::remove_cv_t<A>*>(args[I])...);
  }
  static void call(void** args) {
    (void)args;  // unused for kernels without parameters
    unpack(args, std::index_sequence_for<A...>{});
  }
};
struct Registrar {
  Registrar(const char* name, Invoke invoke, int num_params) { register_kernel(name, invoke, num_params); }
};
}  // namespace cuemu
