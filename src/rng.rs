//! The project's one random number generator: counter-based Philox 4x32-10
//! (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", Random123).
//!
//! A counter-based generator lets every consumer (an image's augmentation, a
//! synthetic image, a weight tensor, a dropout mask) own an independent stream
//! addressed by `(seed, purpose, index)`, so results do not depend on thread
//! scheduling or on the order in which work is done. The same definition is
//! mirrored in CUDA (`kernels/rng.cuh`); any change here must be made there
//! too, and will change every seeded result of the project.

const PHILOX_M0: u32 = 0xD251_1F53;
const PHILOX_M1: u32 = 0xCD9E_8D57;
const PHILOX_W0: u32 = 0x9E37_79B9;
const PHILOX_W1: u32 = 0xBB67_AE85;

#[inline(always)]
fn mulhilo(a: u32, b: u32) -> (u32, u32) {
    let p = u64::from(a) * u64::from(b);
    ((p >> 32) as u32, p as u32)
}

#[inline(always)]
fn philox_round(ctr: [u32; 4], key: [u32; 2]) -> [u32; 4] {
    let (hi0, lo0) = mulhilo(PHILOX_M0, ctr[0]);
    let (hi1, lo1) = mulhilo(PHILOX_M1, ctr[2]);
    [hi1 ^ ctr[1] ^ key[0], lo1, hi0 ^ ctr[3] ^ key[1], lo0]
}

/// The Random123 Philox4x32 block function with 10 rounds.
#[inline]
pub fn philox4x32_10(counter: [u32; 4], key: [u32; 2]) -> [u32; 4] {
    let mut ctr = counter;
    let mut key = key;
    for round in 0..10 {
        if round > 0 {
            key = [key[0].wrapping_add(PHILOX_W0), key[1].wrapping_add(PHILOX_W1)];
        }
        ctr = philox_round(ctr, key);
    }
    ctr
}

/// What a stream is used for. It becomes word 1 of the Philox counter, so
/// streams for different purposes never overlap even with the same seed and
/// index.
///
/// The numbers are part of the reproducibility contract (they are also used
/// by the CUDA kernels): never change or reuse a number; add new purposes with
/// new numbers.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Purpose {
    /// Epoch order of the training set; index = epoch.
    Shuffle = 1,
    /// Per-image training augmentation; index = (epoch << 32) | image index.
    Augment = 2,
    /// The built-in synthetic data set; index = image index (bit 63 = test split).
    Synthetic = 3,
    /// Weight initialisation; index = parameter tensor number.
    Init = 4,
    /// Dropout masks.
    Dropout = 5,
    /// Image corruptions for robustness evaluation.
    Corruption = 6,
    /// Random starts and restarts of adversarial attacks.
    Attack = 7,
    /// AugMix's operations and mixing weights; index = (epoch << 34) | (view << 32) | image index.
    AugMix = 8,
}

impl Purpose {
    /// The stable number used as counter word 1.
    pub fn id(self) -> u32 {
        self as u32
    }
}

/// A stream of random numbers keyed by `(seed, purpose, index)`.
///
/// Key = `[seed low 32 bits, seed high 32 bits]`; counter = `[block, purpose,
/// index low 32 bits, index high 32 bits]`, where `block` counts the 4-word
/// blocks consumed so far, starting at 0. Words of a block are used in order
/// 0, 1, 2, 3.
#[derive(Debug, Clone)]
pub struct Philox {
    key: [u32; 2],
    counter: [u32; 4],
    buffer: [u32; 4],
    /// Next unused word of `buffer`; 4 means the buffer is exhausted.
    pos: usize,
}

impl Philox {
    pub fn new(seed: u64, purpose: Purpose, index: u64) -> Philox {
        Philox {
            key: [seed as u32, (seed >> 32) as u32],
            counter: [0, purpose.id(), index as u32, (index >> 32) as u32],
            buffer: [0; 4],
            pos: 4,
        }
    }

    #[inline]
    pub fn next_u32(&mut self) -> u32 {
        if self.pos == 4 {
            self.buffer = philox4x32_10(self.counter, self.key);
            // 2^32 blocks (64 GiB of output) per stream is far beyond any use;
            // wrapping keeps the CUDA mirror trivial.
            self.counter[0] = self.counter[0].wrapping_add(1);
            self.pos = 0;
        }
        let x = self.buffer[self.pos];
        self.pos += 1;
        x
    }

    /// Two consecutive words: the first is the low half.
    #[inline]
    pub fn next_u64(&mut self) -> u64 {
        let lo = u64::from(self.next_u32());
        let hi = u64::from(self.next_u32());
        (hi << 32) | lo
    }

    /// Uniform in [0, 1) with 24 bits, so every value is exact in f32.
    #[inline]
    pub fn uniform(&mut self) -> f32 {
        (self.next_u32() >> 8) as f32 * (1.0 / 16_777_216.0)
    }

    /// Uniform in [0, 1) with 53 bits.
    #[inline]
    pub fn uniform_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / 9_007_199_254_740_992.0)
    }

    /// Uniform in `[lo, hi)`.
    #[inline]
    pub fn range(&mut self, lo: f32, hi: f32) -> f32 {
        lo + (hi - lo) * self.uniform()
    }

    /// Unbiased integer in `0..n` (Lemire's multiply-and-reject).
    ///
    /// Panics if `n == 0`, which is a programming error.
    #[inline]
    pub fn below(&mut self, n: u32) -> u32 {
        assert!(n > 0, "Philox::below(0): empty range");
        let mut m = u64::from(self.next_u32()) * u64::from(n);
        if (m as u32) < n {
            // Reject the few low products that would over-represent some values.
            let threshold = n.wrapping_neg() % n;
            while (m as u32) < threshold {
                m = u64::from(self.next_u32()) * u64::from(n);
            }
        }
        (m >> 32) as u32
    }

    /// True with probability `p`.
    #[inline]
    pub fn bernoulli(&mut self, p: f32) -> bool {
        self.uniform() < p
    }

    /// Standard normal via Box–Muller. Always consumes exactly two words and
    /// discards the sine branch, so stream positions stay easy to mirror.
    #[inline]
    pub fn normal(&mut self) -> f32 {
        // 1 - u lies in (0, 1], so the logarithm is finite.
        let u1 = 1.0 - self.uniform();
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos()
    }

    /// Fisher–Yates shuffle, from the last element down.
    ///
    /// Panics if `xs` has more than `u32::MAX` elements.
    pub fn shuffle<T>(&mut self, xs: &mut [T]) {
        assert!(xs.len() <= u32::MAX as usize, "Philox::shuffle: slice too long");
        for i in (1..xs.len()).rev() {
            let j = self.below(i as u32 + 1) as usize;
            xs.swap(i, j);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_answer_vectors() {
        assert_eq!(philox4x32_10([0; 4], [0; 2]), [0x6627_e8d5, 0xe169_c58d, 0xbc57_ac4c, 0x9b00_dbd8]);
        assert_eq!(
            philox4x32_10([u32::MAX; 4], [u32::MAX; 2]),
            [0x408f_276d, 0x41c8_3b0e, 0xa20b_c7c6, 0x6d54_51fd]
        );
        assert_eq!(
            philox4x32_10([0x243f_6a88, 0x85a3_08d3, 0x1319_8a2e, 0x0370_7344], [0xa409_3822, 0x299f_31d0]),
            [0xd16c_fe09, 0x94fd_cceb, 0x5001_e420, 0x2412_6ea1]
        );
    }

    #[test]
    fn stream_layout_matches_block_function() {
        let seed = 0x0123_4567_89ab_cdef_u64;
        let mut rng = Philox::new(seed, Purpose::Augment, 0x1111_2222_3333_4444);
        let key = [0x89ab_cdef, 0x0123_4567];
        for block in 0..3u32 {
            let expected = philox4x32_10([block, 2, 0x3333_4444, 0x1111_2222], key);
            for word in expected {
                assert_eq!(rng.next_u32(), word);
            }
        }
    }

    #[test]
    fn same_key_same_stream() {
        let mut a = Philox::new(42, Purpose::Shuffle, 7);
        let mut b = Philox::new(42, Purpose::Shuffle, 7);
        for _ in 0..1000 {
            assert_eq!(a.next_u32(), b.next_u32());
        }
    }

    #[test]
    fn different_keys_differ() {
        let take = |seed, purpose, index| {
            let mut r = Philox::new(seed, purpose, index);
            (0..8).map(|_| r.next_u32()).collect::<Vec<_>>()
        };
        let base = take(1, Purpose::Shuffle, 0);
        assert_ne!(base, take(1, Purpose::Augment, 0));
        assert_ne!(base, take(1, Purpose::Shuffle, 1));
        assert_ne!(base, take(1, Purpose::Shuffle, 1 << 32));
        assert_ne!(base, take(2, Purpose::Shuffle, 0));
        assert_ne!(base, take(1 << 32, Purpose::Shuffle, 0));
    }

    #[test]
    fn uniform_in_range_with_mean_half() {
        let mut rng = Philox::new(3, Purpose::Synthetic, 0);
        let n = 100_000;
        let mut sum = 0.0f64;
        for _ in 0..n {
            let u = rng.uniform();
            assert!((0.0..1.0).contains(&u));
            sum += f64::from(u);
        }
        let mean = sum / n as f64;
        assert!((mean - 0.5).abs() < 0.005, "mean {mean}");

        let mut sum = 0.0f64;
        for _ in 0..n {
            let u = rng.uniform_f64();
            assert!((0.0..1.0).contains(&u));
            sum += u;
        }
        let mean = sum / n as f64;
        assert!((mean - 0.5).abs() < 0.005, "mean {mean}");
    }

    #[test]
    fn normal_moments() {
        let mut rng = Philox::new(4, Purpose::Init, 0);
        let n = 100_000;
        let (mut s1, mut s2) = (0.0f64, 0.0f64);
        for _ in 0..n {
            let x = f64::from(rng.normal());
            assert!(x.is_finite());
            s1 += x;
            s2 += x * x;
        }
        let mean = s1 / n as f64;
        let std = (s2 / n as f64 - mean * mean).sqrt();
        assert!(mean.abs() < 0.02, "mean {mean}");
        assert!((std - 1.0).abs() < 0.02, "std {std}");
    }

    #[test]
    fn below_in_range_and_roughly_uniform() {
        let mut rng = Philox::new(5, Purpose::Shuffle, 0);
        let n = 10;
        let draws = 100_000;
        let mut counts = [0usize; 10];
        for _ in 0..draws {
            let k = rng.below(n);
            assert!(k < n);
            counts[k as usize] += 1;
        }
        let expected = draws / n as usize;
        for (k, &c) in counts.iter().enumerate() {
            assert!(c.abs_diff(expected) < expected / 20, "value {k}: {c}");
        }
        assert_eq!(rng.below(1), 0);
        // A range that forces rejections still stays in bounds.
        let big = (1u32 << 31) + 1;
        for _ in 0..1000 {
            assert!(rng.below(big) < big);
        }
    }

    #[test]
    fn shuffle_is_a_permutation() {
        let mut rng = Philox::new(6, Purpose::Shuffle, 0);
        let mut xs: Vec<usize> = (0..1000).collect();
        rng.shuffle(&mut xs);
        assert_ne!(xs, (0..1000).collect::<Vec<_>>());
        let mut sorted = xs.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..1000).collect::<Vec<_>>());
        let mut empty: [u8; 0] = [];
        rng.shuffle(&mut empty);
    }
}
