// bf16 from f32 by rounding to nearest even, as half::bf16::from_f32 and PyTorch's casts do; a
// NaN stays a NaN. Integer arithmetic, so the GPU and the emulator give the same bits.
#pragma once

__device__ __forceinline__ unsigned bf16_bits(float v) {
    const unsigned u = __float_as_uint(v);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (u >> 16) | 0x40u;
    return (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
}

__device__ __forceinline__ float bf16_bits_to_float(unsigned bits) { return __uint_as_float((bits & 0xffffu) << 16); }

// Two values as one 32-bit word (a tensor-core fragment register): lo in the low half. On the
// GPU one cvt.rn.bf16x2.f32 (the same rounding; its first source goes to the high half), which
// differs from bf16_bits only in a NaN's payload (canonical 0x7fff there); the emulator keeps
// the integer twin.
__device__ __forceinline__ unsigned pack_bf16x2(float lo, float hi) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800 && !defined(CUEMU)
    unsigned packed;
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(packed) : "f"(hi), "f"(lo));
    return packed;
#else
    return bf16_bits(lo) | (bf16_bits(hi) << 16);
#endif
}
