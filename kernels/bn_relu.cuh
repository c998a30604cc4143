// Batch norm's affine map per channel and the ReLU after it, computed the one way every kernel
// that applies or differentiates them does: scale = gamma * inv_std and shift = beta - mean *
// scale, each rounded once (__fmul_rn / __fsub_rn are never contracted), then
// v = fma(x, scale, shift) and relu(v) = v < 0 ? 0 : v (a NaN passes). So a convolution that
// applies the map as it reads its input (conv2d*.cu) sees exactly what bn_apply_f32 writes,
// and batch norm's backward recomputes the same relu decisions from x (v > 0) instead of
// reading the relu's output.
#pragma once

__device__ __forceinline__ float bn_scale(float gamma, float inv_std) { return __fmul_rn(gamma, inv_std); }

__device__ __forceinline__ float bn_shift(float beta, float mean, float scale) {
    return __fsub_rn(beta, __fmul_rn(mean, scale));
}

__device__ __forceinline__ float bn_normalised(float x, float scale, float shift) { return fmaf(x, scale, shift); }

__device__ __forceinline__ float relu_of(float v) { return v < 0.0f ? 0.0f : v; }

// Whether the relu after batch norm passed element x of channel ch: its input was > 0.
__device__ __forceinline__ bool relu_passed(float x, int ch, const float* __restrict__ mean,
                                            const float* __restrict__ inv_std, const float* __restrict__ gamma,
                                            const float* __restrict__ beta) {
    const float scale = bn_scale(gamma[ch], inv_std[ch]);
    return bn_normalised(x, scale, bn_shift(beta[ch], mean[ch], scale)) > 0.0f;
}

// The map a convolution applies to its input as it reads it: relu(bn(x)) per channel from
// precomputed coefficients (bn_relu_coefficients_f32), or nothing when scale is null.
struct ChannelMap {
    const float* scale;
    const float* shift;
    __device__ __forceinline__ float operator()(float x, int channel) const {
        return scale == nullptr ? x : relu_of(bn_normalised(x, scale[channel], shift[channel]));
    }
    // The same map on channels [channel, channel + 8) (8-aligned: the coefficients as 16-byte loads).
    __device__ __forceinline__ void apply8(float (&v)[8], int channel) const {
        if (scale == nullptr) return;
        const float4* sc = reinterpret_cast<const float4*>(scale + channel);
        const float4* sh = reinterpret_cast<const float4*>(shift + channel);
        const float4 s0 = sc[0], s1 = sc[1], h0 = sh[0], h1 = sh[1];
        const float scales[8] = {s0.x, s0.y, s0.z, s0.w, s1.x, s1.y, s1.z, s1.w};
        const float shifts[8] = {h0.x, h0.y, h0.z, h0.w, h1.x, h1.y, h1.z, h1.w};
        for (int i = 0; i < 8; ++i) v[i] = relu_of(bn_normalised(v[i], scales[i], shifts[i]));
    }
};
