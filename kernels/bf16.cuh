// bf16 from f32 by rounding to nearest even, as half::bf16::from_f32 and PyTorch's casts do; a
// NaN stays a NaN. Integer arithmetic, so the GPU and the emulator give the same bits.
#pragma once

__device__ __forceinline__ unsigned bf16_bits(float v) {
    const unsigned u = __float_as_uint(v);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (u >> 16) | 0x40u;
    return (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
}

__device__ __forceinline__ float bf16_bits_to_float(unsigned bits) { return __uint_as_float((bits & 0xffffu) << 16); }

// Two values as one 32-bit word (a tensor-core fragment register): lo in the low half.
__device__ __forceinline__ unsigned pack_bf16x2(float lo, float hi) { return bf16_bits(lo) | (bf16_bits(hi) << 16); }
