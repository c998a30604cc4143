// Philox 4x32-10 (Salmon et al., Random123), the project's one random number generator, the
// twin of src/rng.rs: a stream is keyed by (seed, purpose, index), so a corruption or an
// attack's random start draws the same numbers on every device, whatever the thread layout.
#pragma once

struct Philox4 {
    unsigned v[4];
};

__device__ __forceinline__ Philox4 philox4x32_10(Philox4 ctr, unsigned k0, unsigned k1) {
    for (int round = 0; round < 10; ++round) {
        const unsigned long long p0 = 0xD2511F53ull * ctr.v[0];
        const unsigned long long p1 = 0xCD9E8D57ull * ctr.v[2];
        const unsigned hi0 = (unsigned)(p0 >> 32), lo0 = (unsigned)p0;
        const unsigned hi1 = (unsigned)(p1 >> 32), lo1 = (unsigned)p1;
        Philox4 next;
        next.v[0] = hi1 ^ ctr.v[1] ^ k0;
        next.v[1] = lo1;
        next.v[2] = hi0 ^ ctr.v[3] ^ k1;
        next.v[3] = lo0;
        ctr = next;
        k0 += 0x9E3779B9u;
        k1 += 0xBB67AE85u;
    }
    return ctr;
}

// Block `block` of the stream (seed, purpose, index): counter = [block, purpose, index lo, hi].
__device__ __forceinline__ Philox4 philox_block(unsigned long long seed, unsigned purpose,
                                                unsigned long long index, unsigned block) {
    Philox4 ctr;
    ctr.v[0] = block;
    ctr.v[1] = purpose;
    ctr.v[2] = (unsigned)index;
    ctr.v[3] = (unsigned)(index >> 32);
    return philox4x32_10(ctr, (unsigned)seed, (unsigned)(seed >> 32));
}

// Uniform in [0, 1) from the top 24 bits, as Philox::uniform in Rust.
__device__ __forceinline__ float philox_uniform(unsigned x) { return (float)(x >> 8) * (1.0f / 16777216.0f); }

// A stream's words in order, as Philox::next_u32 in src/rng.rs (four per block, blocks 0, 1, ...).
struct PhiloxStream {
    unsigned long long seed, index;
    unsigned purpose, block;
    int pos;
    Philox4 buffer;

    __device__ PhiloxStream(unsigned long long seed_, unsigned purpose_, unsigned long long index_)
        : seed(seed_), index(index_), purpose(purpose_), block(0), pos(4), buffer() {}

    __device__ unsigned next_u32() {
        if (pos == 4) {
            buffer = philox_block(seed, purpose, index, block++);
            pos = 0;
        }
        return buffer.v[pos++];
    }

    // Uniform on [0, n), n > 0, as Philox::below: the high word of a 64-bit product, rejecting
    // the few low products that would over-represent some values.
    __device__ unsigned below(unsigned n) {
        unsigned long long m = (unsigned long long)next_u32() * n;
        if ((unsigned)m < n) {
            const unsigned threshold = (0u - n) % n;
            while ((unsigned)m < threshold) m = (unsigned long long)next_u32() * n;
        }
        return (unsigned)(m >> 32);
    }
};
