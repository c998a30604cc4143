// Training batches assembled on the device from a data set resident there as uint8
// (src/data/resident.rs): image b of the batch is data set image order[first + b % count], in
// [0, 1] as f32 NHWC (b runs over `copies` repeats of the batch: AugMix's JSD views). With
// `augment`, the standard recipe: zero padding of 4, a random 32x32 crop and a random horizontal
// flip, drawn from the image's own stream in the order src/data/augment.rs draws them (x
// offset, y offset, flip), so the device and the host make the same batch, bit for bit.
// One block per output image, any blockDim.x.
#include "rng.cuh"

namespace batch_detail {
constexpr int kSize = 32, kChannels = 3, kPad = 4, kImage = kSize * kSize * kChannels;
}

extern "C" __global__ void assemble_batch_f32(float* __restrict__ out, const unsigned char* __restrict__ images,
                                              const unsigned* __restrict__ order, int first, int count,
                                              int augment, unsigned long long seed, unsigned purpose,
                                              unsigned long long epoch) {
    using namespace batch_detail;
    __shared__ int window[3];  // x offset, y offset, flip
    const unsigned index = order[first + (int)blockIdx.x % count];
    if (threadIdx.x == 0) {
        int ox = kPad, oy = kPad, flip = 0;  // no augmentation: the image as stored
        if (augment) {
            PhiloxStream rng(seed, purpose, (epoch << 32) | index);
            ox = (int)rng.below(2 * kPad + 1);
            oy = (int)rng.below(2 * kPad + 1);
            flip = (int)rng.below(2);
        }
        window[0] = ox;
        window[1] = oy;
        window[2] = flip;
    }
    __syncthreads();
    const unsigned char* src = images + (long long)index * kImage;
    float* dst = out + (long long)blockIdx.x * kImage;
    for (int i = threadIdx.x; i < kImage; i += blockDim.x) {
        const int c = i % kChannels, x = (i / kChannels) % kSize, y = i / (kChannels * kSize);
        const int sy = y + window[1] - kPad;
        const int sx = (window[2] ? kSize - 1 - x : x) + window[0] - kPad;
        const bool inside = sy >= 0 && sy < kSize && sx >= 0 && sx < kSize;
        dst[i] = inside ? (float)src[(sy * kSize + sx) * kChannels + c] / 255.0f : 0.0f;
    }
}

// A batch's labels where its images are assembled: out[i] = labels[order[first + i]], i < count.
extern "C" __global__ void batch_labels_u32(unsigned* __restrict__ out, const unsigned* __restrict__ labels,
                                            const unsigned* __restrict__ order, int first, int count) {
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < count; i += blockDim.x * gridDim.x)
        out[i] = labels[order[first + i]];
}
