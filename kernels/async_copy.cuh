// Asynchronous copies from global to shared memory behind one project wrapper: on a GPU the PTX
// instructions cp.async.cg.shared.global (16 bytes, sm_80 and later), cp.async.commit_group and
// cp.async.wait_group; under the emulator a twin written from the PTX ISA's rules for them
// ("Data Movement and Conversion Instructions: cp.async").
//
// The rules: a thread's copies are issued in order and gathered into groups by commit_group (the
// copies issued since its last commit); wait_group N returns once at most N of the thread's
// committed groups are still pending, and nothing is said of when a copy lands before that. Only
// the thread that waited may then read the data; other threads see it after a barrier that
// follows the wait. The twin makes each copy land as late as the rules allow (at the first wait
// that must see it complete), so a kernel that reads a shared slice before waiting for it, or
// before the barrier, reads the slice's old contents under the emulator, not by luck the new ones.
//
// A Pipeline is one thread's view of its copies, a local object. On a GPU it holds nothing (the
// hardware tracks the groups); under the emulator it holds up to CAPACITY copies not yet landed.
#pragma once

#include "common.cuh"

namespace async_copy {

template <int CAPACITY>
struct Pipeline {
#ifdef CUEMU
  struct Copy {
    unsigned* dst;
    const unsigned* src;  // null: a zero fill
    int group;            // the number of groups committed before it was issued
  };
  Copy pending[CAPACITY];
  int count = 0, committed = 0;
#endif

  // Copies 16 bytes from global `src` to shared `dst` (both 16-byte aligned), or, when !valid,
  // writes 16 zero bytes to `dst` and reads nothing (src-size 0: `src` may be any address).
  __device__ __forceinline__ void copy16(void* dst, const void* src, bool valid) {
#ifdef CUEMU
    if (count == CAPACITY) __trap();  // more copies in flight than the kernel declared
    pending[count++] = Copy{static_cast<unsigned*>(dst), valid ? static_cast<const unsigned*>(src) : nullptr,
                            committed};
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(shared_address(dst)), "l"(src),
                 "r"(valid ? 16 : 0)
                 : "memory");
#else
    __trap();  // cp.async needs sm_80 or later
#endif
  }

  // Closes the group of the copies issued since the last commit (possibly none).
  __device__ __forceinline__ void commit() {
#ifdef CUEMU
    ++committed;
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    asm volatile("cp.async.commit_group;\n" ::: "memory");
#endif
  }

  // Returns once at most N committed groups are pending: the older ones have landed.
  template <int N>
  __device__ __forceinline__ void wait() {
#ifdef CUEMU
    // Land the copies of groups [0, committed - N), in issue order; keep the rest.
    int kept = 0;
    for (int i = 0; i < count; ++i) {
      const Copy c = pending[i];
      if (c.group < committed - N) {
        for (int w = 0; w < 4; ++w) c.dst[w] = c.src != nullptr ? c.src[w] : 0u;
      } else {
        pending[kept++] = c;
      }
    }
    count = kept;
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
#endif
  }
};

}  // namespace async_copy
