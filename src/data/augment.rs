//! Epoch order, augmentation and batch assembly.

use std::fmt;
use std::str::FromStr;

use rayon::prelude::*;

use super::{CHANNELS, Dataset, IMAGE_LEN, IMAGE_SIZE, ParseError};
use crate::rng::{Philox, Purpose};

/// Zero padding on each side before the random crop.
const PAD: usize = 4;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Augment {
    /// Pixels as stored.
    None,
    /// The usual CIFAR recipe: pad 4 with zeros, random 32x32 crop, random
    /// horizontal flip with p = 0.5.
    Standard,
    /// "CIFAR-10 Augmented": the standard recipe, then AugMix on the device
    /// ([`super::augmix`]).
    AugMix,
}

impl FromStr for Augment {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Augment, ParseError> {
        match s {
            "none" => Ok(Augment::None),
            "standard" => Ok(Augment::Standard),
            "augmix" => Ok(Augment::AugMix),
            _ => Err(ParseError::Augment(s.to_string())),
        }
    }
}

impl fmt::Display for Augment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Augment::None => "none",
            Augment::Standard => "standard",
            Augment::AugMix => "augmix",
        })
    }
}

/// A batch of images, `[size, 32, 32, 3]` NHWC in [0, 1], and their labels.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    pub images: Vec<f32>,
    pub labels: Vec<u32>,
    pub size: usize,
}

/// The order in which an epoch visits the `n` images: a Fisher–Yates shuffle
/// from `Philox(seed, Shuffle, epoch)`, or `0..n` when `shuffle` is false.
pub fn epoch_order(n: usize, shuffle: bool, seed: u64, epoch: u64) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    if shuffle {
        Philox::new(seed, Purpose::Shuffle, epoch).shuffle(&mut order);
    }
    order
}

/// Consecutive slices of `batch_size` indices; the last one may be shorter.
///
/// Panics if `batch_size == 0`.
pub fn batches(order: &[usize], batch_size: usize) -> impl Iterator<Item = &[usize]> {
    assert!(batch_size > 0, "batch size must be at least 1");
    order.chunks(batch_size)
}

/// The stream that augments dataset image `index` in `epoch`: keyed by the
/// image, not its batch slot, so results do not depend on batch composition
/// or thread scheduling.
fn augment_rng(seed: u64, epoch: u64, index: usize) -> Philox {
    Philox::new(seed, Purpose::Augment, (epoch << 32) | (index as u64 & 0xffff_ffff))
}

/// Loads and augments the images at `indices` of `ds`, in parallel.
///
/// Panics if an index is out of range.
pub fn make_batch(ds: &Dataset, indices: &[usize], augment: Augment, seed: u64, epoch: u64) -> Batch {
    let size = indices.len();
    let mut images = vec![0f32; size * IMAGE_LEN];
    images.par_chunks_mut(IMAGE_LEN).zip(indices.par_iter()).for_each_init(
        || vec![0u8; IMAGE_LEN],
        |src, (out, &index)| {
            ds.image_u8(index, src);
            match augment {
                Augment::None => {
                    for (o, &v) in out.iter_mut().zip(src.iter()) {
                        *o = to_unit(v);
                    }
                }
                // AugMix's chains run later, on the device, on the cropped and flipped image.
                Augment::Standard | Augment::AugMix => {
                    let mut rng = augment_rng(seed, epoch, index);
                    // Draw order (x offset, y offset, flip) is part of the
                    // reproducibility contract.
                    let ox = rng.below(2 * PAD as u32 + 1) as usize;
                    let oy = rng.below(2 * PAD as u32 + 1) as usize;
                    let flip = rng.below(2) == 1;
                    crop_flip(src, out, ox, oy, flip);
                }
            }
        },
    );
    let labels = indices.iter().map(|&i| u32::from(ds.label(i))).collect();
    Batch { images, labels, size }
}

fn to_unit(v: u8) -> f32 {
    f32::from(v) / 255.0
}

/// Crops the 32x32 window at `(ox, oy)` of the image zero-padded by `PAD`,
/// then mirrors it horizontally if `flip`.
fn crop_flip(src: &[u8], out: &mut [f32], ox: usize, oy: usize, flip: bool) {
    let row_len = IMAGE_SIZE * CHANNELS;
    for (y, out_row) in out.chunks_exact_mut(row_len).enumerate() {
        // Source coordinates in the unpadded image; out of range means padding.
        let sy = (y + oy).wrapping_sub(PAD);
        if sy >= IMAGE_SIZE {
            out_row.fill(0.0);
            continue;
        }
        let src_row = &src[sy * row_len..(sy + 1) * row_len];
        for (x, out_px) in out_row.chunks_exact_mut(CHANNELS).enumerate() {
            let cx = if flip { IMAGE_SIZE - 1 - x } else { x };
            let sx = (cx + ox).wrapping_sub(PAD);
            if sx >= IMAGE_SIZE {
                out_px.fill(0.0);
            } else {
                for (o, &v) in out_px.iter_mut().zip(&src_row[sx * CHANNELS..(sx + 1) * CHANNELS]) {
                    *o = to_unit(v);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    /// Images whose pixels encode their position: R = 4x + 1, G = 4y + 1,
    /// B = image index + 1 (never zero, so padding is recognisable).
    fn position_dataset(n: usize) -> Dataset {
        let mut images = Vec::with_capacity(n * IMAGE_LEN);
        for i in 0..n {
            for y in 0..IMAGE_SIZE {
                for x in 0..IMAGE_SIZE {
                    images.extend([4 * x as u8 + 1, 4 * y as u8 + 1, i as u8 + 1]);
                }
            }
        }
        Dataset::from_images(images, (0..n).map(|i| (i % 10) as u8).collect())
    }

    /// Straightforward reference: build the padded 40x40 image, crop, flip.
    fn reference(src: &[u8], ox: usize, oy: usize, flip: bool) -> Vec<f32> {
        let padded_size = IMAGE_SIZE + 2 * PAD;
        let mut padded = vec![0u8; padded_size * padded_size * CHANNELS];
        for y in 0..IMAGE_SIZE {
            for x in 0..IMAGE_SIZE {
                for c in 0..CHANNELS {
                    padded[((y + PAD) * padded_size + x + PAD) * CHANNELS + c] =
                        src[(y * IMAGE_SIZE + x) * CHANNELS + c];
                }
            }
        }
        let mut out = vec![0f32; IMAGE_LEN];
        for y in 0..IMAGE_SIZE {
            for x in 0..IMAGE_SIZE {
                let cx = if flip { IMAGE_SIZE - 1 - x } else { x };
                for c in 0..CHANNELS {
                    out[(y * IMAGE_SIZE + x) * CHANNELS + c] =
                        f32::from(padded[((y + oy) * padded_size + cx + ox) * CHANNELS + c]) / 255.0;
                }
            }
        }
        out
    }

    #[test]
    fn augment_parses() {
        for a in [Augment::None, Augment::Standard] {
            assert_eq!(a.to_string().parse::<Augment>().unwrap(), a);
        }
        let msg = "flip".parse::<Augment>().unwrap_err().to_string();
        assert!(msg.contains("\"flip\"") && msg.contains("none") && msg.contains("standard"));
    }

    #[test]
    fn none_is_u8_over_255() {
        let ds = position_dataset(4);
        let batch = make_batch(&ds, &[2, 0], Augment::None, 1, 0);
        assert_eq!(batch.size, 2);
        assert_eq!(batch.labels, [2, 0]);
        let mut src = vec![0u8; IMAGE_LEN];
        for (slot, &i) in [2usize, 0].iter().enumerate() {
            ds.image_u8(i, &mut src);
            let expected: Vec<f32> = src.iter().map(|&v| f32::from(v) / 255.0).collect();
            assert_eq!(&batch.images[slot * IMAGE_LEN..(slot + 1) * IMAGE_LEN], &expected[..]);
        }
    }

    #[test]
    fn standard_matches_reference_and_varies() {
        let n = 200;
        let ds = position_dataset(n);
        let indices: Vec<usize> = (0..n).collect();
        let batch = make_batch(&ds, &indices, Augment::Standard, 42, 3);
        let mut src = vec![0u8; IMAGE_LEN];
        let mut seen = HashSet::new();
        for (slot, &i) in indices.iter().enumerate() {
            ds.image_u8(i, &mut src);
            let got = &batch.images[slot * IMAGE_LEN..(slot + 1) * IMAGE_LEN];
            assert!(got.iter().all(|v| (0.0..=1.0).contains(v)));
            let params = (0..=2 * PAD)
                .flat_map(|ox| (0..=2 * PAD).flat_map(move |oy| [(ox, oy, false), (ox, oy, true)]))
                .find(|&(ox, oy, flip)| reference(&src, ox, oy, flip) == got);
            let params = params.unwrap_or_else(|| panic!("image {i}: not a pad-crop-flip of its source"));
            seen.insert(params);
        }
        let flips = seen.iter().filter(|p| p.2).count();
        assert!(flips > 0 && flips < seen.len(), "flips never or always happen");
        let offsets: HashSet<_> = seen.iter().map(|p| (p.0, p.1)).collect();
        assert!(offsets.len() > 40, "only {} distinct crops", offsets.len());
    }

    #[test]
    fn standard_is_deterministic_per_seed_epoch_index() {
        let ds = position_dataset(20);
        let a = make_batch(&ds, &[5, 7, 9], Augment::Standard, 1, 2);
        let b = make_batch(&ds, &[5, 7, 9], Augment::Standard, 1, 2);
        assert_eq!(a, b);
        // Independent of the batch it is in and its slot there.
        let alone = make_batch(&ds, &[7], Augment::Standard, 1, 2);
        assert_eq!(&a.images[IMAGE_LEN..2 * IMAGE_LEN], &alone.images[..]);
        // Another epoch or seed gives other crops for at least some images.
        let all: Vec<usize> = (0..20).collect();
        let base = make_batch(&ds, &all, Augment::Standard, 1, 2);
        assert_ne!(base, make_batch(&ds, &all, Augment::Standard, 1, 3));
        assert_ne!(base, make_batch(&ds, &all, Augment::Standard, 2, 2));
    }

    #[test]
    fn epoch_order_is_a_permutation() {
        let n = 1000;
        let identity: Vec<usize> = (0..n).collect();
        assert_eq!(epoch_order(n, false, 1, 0), identity);
        let e0 = epoch_order(n, true, 1, 0);
        let e1 = epoch_order(n, true, 1, 1);
        assert_eq!(e0, epoch_order(n, true, 1, 0));
        assert_ne!(e0, e1);
        assert_ne!(e0, identity);
        assert_ne!(e0, epoch_order(n, true, 2, 0));
        for order in [e0, e1] {
            let mut sorted = order;
            sorted.sort_unstable();
            assert_eq!(sorted, identity);
        }
        assert!(epoch_order(0, true, 1, 0).is_empty());
    }

    #[test]
    fn batches_keep_last_partial_batch() {
        let order: Vec<usize> = (0..10).collect();
        let got: Vec<&[usize]> = batches(&order, 4).collect();
        assert_eq!(got, [&[0, 1, 2, 3][..], &[4, 5, 6, 7], &[8, 9]]);
        assert_eq!(batches(&order, 5).count(), 2);
        assert_eq!(batches(&order, 11).count(), 1);
        assert_eq!(batches(&[], 3).count(), 0);
    }
}
