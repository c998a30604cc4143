//! Data sets (CIFAR-10 binary files or a built-in synthetic set),
//! augmentation and batch assembly.
//!
//! Images are 32x32 RGB in NHWC (channels-last) order. Data sets hand out
//! `u8` pixels; batches carry `f32` in [0, 1]. Normalisation belongs to the
//! model, not to this module.

mod augment;
pub mod augmix;
mod cifar10;
pub mod cifar10c;
pub mod resident;
mod synthetic;

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use anyhow::{Result, bail};
use rayon::prelude::*;

use crate::input_file::files_in;

pub use augment::{Augment, Batch, batches, epoch_order, make_batch};
pub use cifar10::CIFAR10_CLASSES;
pub use synthetic::{SYNTHETIC_CLASSES, SYNTHETIC_TEST_LEN, SYNTHETIC_TRAIN_LEN};

pub const IMAGE_SIZE: usize = 32;
pub const CHANNELS: usize = 3;
pub const IMAGE_LEN: usize = IMAGE_SIZE * IMAGE_SIZE * CHANNELS;
pub const NUM_CLASSES: usize = 10;

/// Errors from parsing command-line / config strings.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error(
        "unknown data set {0:?}: expected \"synthetic\", \"cifar10:DIR\" (DIR holds the CIFAR-10 binary \
         files data_batch_1.bin .. data_batch_5.bin and test_batch.bin) or \"npy:DIR\" (a test set: \
         DIR/images.npy and DIR/labels.npy)"
    )]
    DataSpec(String),
    #[error("data set \"cifar10:\" needs a directory, e.g. \"cifar10:data/cifar-10-batches-bin\"")]
    EmptyCifarDir,
    #[error("unknown augmentation {0:?}: expected \"none\", \"standard\" or \"augmix\"")]
    Augment(String),
    #[error("unknown split {0:?}: expected \"train\" or \"test\"")]
    Split(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Split {
    Train,
    Test,
}

impl fmt::Display for Split {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Split::Train => "train",
            Split::Test => "test",
        })
    }
}

impl FromStr for Split {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Split, ParseError> {
        match s {
            "train" => Ok(Split::Train),
            "test" => Ok(Split::Test),
            _ => Err(ParseError::Split(s.to_string())),
        }
    }
}

/// Which data set to use; written as `synthetic`, `cifar10:DIR` or `npy:DIR`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DataSpec {
    Synthetic,
    Cifar10(PathBuf),
    /// A test set of one's own: DIR/images.npy (uint8 (N, 32, 32, 3), RGB) and DIR/labels.npy
    /// (uint8 (N,), 0..9). Test split only.
    Npy(PathBuf),
}

/// The files of an `npy:DIR` test set.
pub const NPY_IMAGES: &str = "images.npy";
pub const NPY_LABELS: &str = "labels.npy";

impl FromStr for DataSpec {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<DataSpec, ParseError> {
        if s == "synthetic" {
            return Ok(DataSpec::Synthetic);
        }
        if let Some(dir) = s.strip_prefix("npy:") {
            return if dir.is_empty() {
                Err(ParseError::DataSpec(s.to_string()))
            } else {
                Ok(DataSpec::Npy(PathBuf::from(dir)))
            };
        }
        match s.strip_prefix("cifar10:") {
            Some("") => Err(ParseError::EmptyCifarDir),
            Some(dir) => Ok(DataSpec::Cifar10(PathBuf::from(dir))),
            None => Err(ParseError::DataSpec(s.to_string())),
        }
    }
}

impl DataSpec {
    /// The files this data set is read from (none for the built-in set): the regular files of a
    /// CIFAR-10 directory and of its `cifar-10-batches-bin/`.
    pub fn files(&self) -> Vec<PathBuf> {
        match self {
            DataSpec::Synthetic => Vec::new(),
            DataSpec::Cifar10(dir) => [files_in(dir), files_in(&dir.join("cifar-10-batches-bin"))].concat(),
            DataSpec::Npy(dir) => vec![dir.join(NPY_IMAGES), dir.join(NPY_LABELS)],
        }
    }
}

impl fmt::Display for DataSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DataSpec::Synthetic => f.write_str("synthetic"),
            // Non-UTF-8 paths are shown lossily and would not round-trip;
            // such paths are not expected in configs.
            DataSpec::Cifar10(dir) => write!(f, "cifar10:{}", dir.display()),
            DataSpec::Npy(dir) => write!(f, "npy:{}", dir.display()),
        }
    }
}

enum Source {
    /// Generated on load and kept in memory (NHWC).
    Synthetic { images: Vec<u8> },
    /// Memory-mapped binary files, decoded per image.
    Cifar10(cifar10::Cifar10Files),
    /// A memory-mapped `images.npy` (NHWC uint8).
    Npy(crate::npy::NpyU8),
}

/// A loaded split of a data set (possibly a prefix subset of it).
pub struct Dataset {
    source: Source,
    split: Split,
    labels: Vec<u8>,
}

/// Class names of a test set that brings none.
const NUMBERED_CLASSES: [&str; NUM_CLASSES] = ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"];

/// Opens and checks an `npy:DIR` test set: the images and their labels.
fn open_npy_set(dir: &std::path::Path) -> Result<(crate::npy::NpyU8, Vec<u8>)> {
    let images = crate::npy::NpyU8::open(&dir.join(NPY_IMAGES))?;
    let labels = crate::npy::NpyU8::open(&dir.join(NPY_LABELS))?;
    let n = match images.shape() {
        [n, 32, 32, 3] => *n,
        shape => {
            bail!("{} has shape {shape:?}; expected uint8 images (N, 32, 32, 3)", images.path().display())
        }
    };
    if labels.shape() != [n] {
        bail!(
            "{} has shape {:?}; expected one label per image, ({n},)",
            labels.path().display(),
            labels.shape()
        );
    }
    if n == 0 {
        bail!("{} holds no images", images.path().display());
    }
    if let Some(bad) = labels.data().iter().find(|&&l| usize::from(l) >= NUM_CLASSES) {
        bail!("{} holds label {bad}; labels are 0..9", labels.path().display());
    }
    let labels = labels.data().to_vec();
    Ok((images, labels))
}

impl Dataset {
    /// Loads `split` of `spec`. `subset` keeps only the first N images; `seed`
    /// selects which synthetic set is generated and is ignored for CIFAR-10.
    pub fn load(spec: &DataSpec, split: Split, subset: Option<usize>, seed: u64) -> Result<Dataset> {
        let npy = match spec {
            DataSpec::Npy(dir) if split == Split::Test => Some(open_npy_set(dir)?),
            DataSpec::Npy(_) => bail!("{spec} holds a test set only; train on synthetic or cifar10:DIR"),
            _ => None,
        };
        let available = match spec {
            DataSpec::Synthetic => synthetic::split_len(split),
            DataSpec::Cifar10(_) => cifar10::split_len(split),
            DataSpec::Npy(_) => npy.as_ref().map_or(0, |(_, labels)| labels.len()),
        };
        let n = match subset {
            None => available,
            Some(0) => bail!("subset of 0 images requested for {spec} {split}: need at least 1"),
            Some(n) if n > available => {
                bail!("subset of {n} images requested but {spec} {split} has only {available}")
            }
            Some(n) => n,
        };
        let (source, labels) = match spec {
            DataSpec::Synthetic => {
                let (images, labels) = synthetic::generate(seed, split, n);
                (Source::Synthetic { images }, labels)
            }
            DataSpec::Cifar10(dir) => {
                let files = cifar10::Cifar10Files::open(dir, split)?;
                let labels = files.labels(n)?;
                (Source::Cifar10(files), labels)
            }
            DataSpec::Npy(_) => {
                let (images, mut labels) = npy.expect("opened above");
                labels.truncate(n);
                (Source::Npy(images), labels)
            }
        };
        Ok(Dataset { source, split, labels })
    }

    /// An in-memory data set of NHWC images, for tests of code that takes a
    /// `Dataset`.
    #[cfg(test)]
    pub(crate) fn from_images(images: Vec<u8>, labels: Vec<u8>) -> Dataset {
        assert_eq!(images.len(), labels.len() * IMAGE_LEN);
        Dataset { source: Source::Synthetic { images }, split: Split::Train, labels }
    }

    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    pub fn num_classes(&self) -> usize {
        NUM_CLASSES
    }

    pub fn split(&self) -> Split {
        self.split
    }

    /// Panics if `i >= len()`.
    pub fn label(&self, i: usize) -> u8 {
        self.labels[i]
    }

    pub fn labels(&self) -> Vec<u8> {
        self.labels.clone()
    }

    /// Writes image `i` as NHWC `u8` into `out` (`IMAGE_LEN` bytes).
    ///
    /// Panics if `i >= len()` or `out.len() != IMAGE_LEN`.
    pub fn image_u8(&self, i: usize, out: &mut [u8]) {
        assert!(i < self.len(), "image index {i} out of range (len {})", self.len());
        assert_eq!(out.len(), IMAGE_LEN, "image buffer must hold IMAGE_LEN bytes");
        match &self.source {
            Source::Synthetic { images } => {
                out.copy_from_slice(&images[i * IMAGE_LEN..(i + 1) * IMAGE_LEN]);
            }
            Source::Cifar10(files) => files.image_u8(i, out),
            Source::Npy(file) => out.copy_from_slice(&file.data()[i * IMAGE_LEN..(i + 1) * IMAGE_LEN]),
        }
    }

    /// Writes images `first..first + out.len() / IMAGE_LEN` as NHWC `u8` into `out`.
    ///
    /// Panics if the range passes `len()` or `out.len()` is not a multiple of `IMAGE_LEN`.
    pub fn images_u8(&self, first: usize, out: &mut [u8]) {
        assert_eq!(out.len() % IMAGE_LEN, 0, "image buffer must hold whole images");
        for (i, chunk) in out.chunks_exact_mut(IMAGE_LEN).enumerate() {
            self.image_u8(first + i, chunk);
        }
    }

    /// E.g. `synthetic/train` or `cifar10/test`.
    pub fn name(&self) -> String {
        let kind = match self.source {
            Source::Synthetic { .. } => "synthetic",
            Source::Cifar10(_) => "cifar10",
            Source::Npy(_) => "npy",
        };
        format!("{kind}/{}", self.split)
    }

    pub fn class_names(&self) -> &'static [&'static str] {
        match self.source {
            Source::Synthetic { .. } => &SYNTHETIC_CLASSES,
            Source::Cifar10(_) => &CIFAR10_CLASSES,
            Source::Npy(_) => &NUMBERED_CLASSES,
        }
    }

    /// Per-channel mean and (population) standard deviation over all pixels,
    /// in [0, 1] units.
    pub fn channel_stats(&self) -> ([f32; 3], [f32; 3]) {
        // Integer sums are exact, so the result does not depend on how rayon
        // splits the work.
        let (sum, sum_sq) = (0..self.len())
            .into_par_iter()
            .fold(
                || ([0u64; 3], [0u64; 3], vec![0u8; IMAGE_LEN]),
                |(mut sum, mut sum_sq, mut buf), i| {
                    self.image_u8(i, &mut buf);
                    for px in buf.chunks_exact(CHANNELS) {
                        for c in 0..CHANNELS {
                            let v = u64::from(px[c]);
                            sum[c] += v;
                            sum_sq[c] += v * v;
                        }
                    }
                    (sum, sum_sq, buf)
                },
            )
            .map(|(sum, sum_sq, _)| (sum, sum_sq))
            .reduce(
                || ([0u64; 3], [0u64; 3]),
                |(a, a2), (b, b2)| {
                    (std::array::from_fn(|c| a[c] + b[c]), std::array::from_fn(|c| a2[c] + b2[c]))
                },
            );
        let count = (self.len() * IMAGE_SIZE * IMAGE_SIZE) as u128;
        let mut mean = [0f32; 3];
        let mut std = [0f32; 3];
        if count == 0 {
            return (mean, std);
        }
        for c in 0..CHANNELS {
            let (s, s2) = (u128::from(sum[c]), u128::from(sum_sq[c]));
            // n * sum(x^2) - sum(x)^2 is exact and never negative in integers.
            let numerator = count * s2 - s * s;
            let denom = (count as f64) * (count as f64) * 255.0 * 255.0;
            mean[c] = (s as f64 / (count as f64 * 255.0)) as f32;
            std[c] = (numerator as f64 / denom).sqrt() as f32;
        }
        (mean, std)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_spec_round_trips() {
        for s in ["synthetic", "cifar10:/data/cifar-10-batches-bin", "cifar10:rel/dir"] {
            let spec: DataSpec = s.parse().unwrap();
            assert_eq!(spec.to_string(), s);
            assert_eq!(spec.to_string().parse::<DataSpec>().unwrap(), spec);
        }
        assert_eq!("cifar10:x".parse::<DataSpec>().unwrap(), DataSpec::Cifar10(PathBuf::from("x")));
    }

    #[test]
    fn data_spec_rejects_bad_strings() {
        for s in ["", "cifar10", "cifar100:/x", "Synthetic", "synthetic:x", "mnist"] {
            let err = s.parse::<DataSpec>().unwrap_err();
            let msg = err.to_string();
            assert!(msg.contains("synthetic") && msg.contains("cifar10:DIR"), "{msg}");
        }
        let err = "cifar10:".parse::<DataSpec>().unwrap_err();
        assert_eq!(err, ParseError::EmptyCifarDir);
        assert!(err.to_string().contains("needs a directory"));
    }

    #[test]
    fn split_parses() {
        assert_eq!("train".parse::<Split>().unwrap(), Split::Train);
        assert_eq!(Split::Test.to_string().parse::<Split>().unwrap(), Split::Test);
        assert!("val".parse::<Split>().is_err());
    }

    #[test]
    fn subset_errors() {
        let err = Dataset::load(&DataSpec::Synthetic, Split::Train, Some(0), 1).err().unwrap();
        assert!(err.to_string().contains("at least 1"), "{err}");
        let err = Dataset::load(&DataSpec::Synthetic, Split::Test, Some(10_001), 1).err().unwrap();
        assert!(err.to_string().contains("only 10000"), "{err}");
    }

    #[test]
    fn dataset_basics() {
        let ds = Dataset::load(&DataSpec::Synthetic, Split::Test, Some(50), 9).unwrap();
        assert_eq!(ds.len(), 50);
        assert!(!ds.is_empty());
        assert_eq!(ds.num_classes(), 10);
        assert_eq!(ds.name(), "synthetic/test");
        assert_eq!(ds.class_names(), &SYNTHETIC_CLASSES);
        assert_eq!(ds.labels().len(), 50);
        assert_eq!(ds.label(3), ds.labels()[3]);
    }

    #[test]
    fn channel_stats_of_constant_images() {
        let images = vec![0u8; 4 * IMAGE_LEN].chunks_exact(CHANNELS).flat_map(|_| [51u8, 102, 255]).collect();
        let ds = Dataset::from_images(images, vec![0; 4]);
        let (mean, std) = ds.channel_stats();
        assert_eq!(mean, [0.2, 0.4, 1.0]);
        assert_eq!(std, [0.0, 0.0, 0.0]);
    }

    #[test]
    fn channel_stats_of_two_levels() {
        // Half the images black, half white: mean 0.5, std 0.5 in every channel.
        let mut images = vec![0u8; 2 * IMAGE_LEN];
        images[IMAGE_LEN..].fill(255);
        let ds = Dataset::from_images(images, vec![0; 2]);
        let (mean, std) = ds.channel_stats();
        assert_eq!(mean, [0.5; 3]);
        assert_eq!(std, [0.5; 3]);
    }
}
