// nvrtc_prelude.cuh -- prepended to every kernel source compiled with NVRTC (which has no CUDA
// headers). It gives the GPU build the project macros that cuemu.h gives the emulator build;
// keep the two in step (same names, same meaning).
#pragma once
#ifndef CUEMU

// Dynamic shared memory, the project's single form:   MOCSE_DYNAMIC_SMEM(float, buf);
// All extern __shared__ arrays alias the same address, so one byte array (one type for every
// kernel of the module, 16-byte aligned) is declared and `name` is a typed pointer into it.
#define MOCSE_DYNAMIC_SMEM(T, name)                                     \
  extern __shared__ __align__(16) unsigned char mocse_dynamic_smem_[]; \
  T* name = reinterpret_cast<T*>(mocse_dynamic_smem_)

#ifndef CUDART_INF_F
#define CUDART_INF_F __int_as_float(0x7f800000)
#endif
#ifndef CUDART_NAN_F
#define CUDART_NAN_F __int_as_float(0x7fffffff)
#endif

#endif
