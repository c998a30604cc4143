// harness.cpp -- the kernel registry of the emulator build.
//
// Compiled with `-DCUEMU -include cuemu/cuemu.h` and an include path on which the build finds a
// generated `cuemu_kernels.inc` that looks like this:
//
//   #include "/abs/path/kernels/conv.cu"
//   #include "/abs/path/kernels/softmax.cu"
//   CUEMU_KERNEL(conv2d_fwd_f32)
//   CUEMU_KERNEL(softmax_fwd_f32)
//
// i.e. every kernel source first, then one CUEMU_KERNEL line per `extern "C" __global__`
// kernel. All sources share this one translation unit, so helper names (static functions,
// __constant__ and __device__ variables) must be unique across kernels/*.cu, and shared
// *.cuh headers need include guards (#pragma once).
//
// CUEMU_KERNEL(k) registers a launcher that unpacks cuLaunchKernel-style `void** args` with k's
// own parameter types. Templated kernels are supported only through explicit extern "C"
// wrappers (also what NVRTC lookup by name needs):
//
//   template <int BS> __device__ void reduce_impl(const float* x, float* y) { ... }
//   extern "C" __global__ void reduce_256(const float* x, float* y) { reduce_impl<256>(x, y); }
//   CUEMU_KERNEL(reduce_256)
#include "cuemu_api.h"

#define CUEMU_KERNEL(k) \
  static const ::cuemu::Registrar cuemu_registrar_##k(#k, &::cuemu::Invoker<&k>::call, ::cuemu::Invoker<&k>::num_params);

#include "cuemu_kernels.inc"

#undef CUEMU_KERNEL

// Referenced by scheduler.cpp so that linking the runtime from a static library also pulls in
// this object and runs the registrars above.
extern "C" const int cuemu_harness_anchor = 1;
