//! Writing corrupted sets to disk in the CIFAR-10-C layout (what `mocse corrupt` does): one
//! `<corruption>.npy` per corruption, rows grouped by severity in ascending order, each block
//! all input images in input order; `labels.npy` (the labels repeated per severity) when the
//! labels are known; and `corrupt.json` recording how the set was made.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use anyhow::{Context, Result, bail};
use indicatif::ProgressBar;

use super::{Corruption, StreamKey, corrupt, upload_images};
use crate::atomic_file::write_atomic;
use crate::data::cifar10c::{CorruptManifest, MANIFEST_FILE, read_manifest};
use crate::data::{DataSpec, Dataset, IMAGE_LEN, Split};
use crate::device::Device;
use crate::npy::{NpyU8, write_u8};

/// `--input`: a `.npy` file of uint8 (N, 32, 32, 3) RGB images, or the test split of a data set.
#[derive(Clone, Debug)]
pub enum ImageInput {
    Npy(PathBuf),
    Data(DataSpec),
}

impl FromStr for ImageInput {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s == "synthetic" || s.starts_with("cifar10:") {
            return s.parse::<DataSpec>().map(ImageInput::Data).map_err(|e| e.to_string());
        }
        if s.ends_with(".npy") {
            return Ok(ImageInput::Npy(PathBuf::from(s)));
        }
        Err(format!("invalid input '{s}': expected FILE.npy, cifar10:DIR or synthetic"))
    }
}

impl fmt::Display for ImageInput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ImageInput::Npy(p) => write!(f, "{}", p.display()),
            ImageInput::Data(d) => write!(f, "{d} (test split)"),
        }
    }
}

/// Clean images in memory, NHWC uint8, with their labels when known.
pub struct CleanImages {
    pub pixels: Vec<u8>,
    pub labels: Option<Vec<u8>>,
    pub len: usize,
}

impl CleanImages {
    /// Loads `input`; `limit` keeps the first N images. `synthetic_seed` selects the synthetic set.
    pub fn load(input: &ImageInput, limit: Option<usize>, synthetic_seed: u64) -> Result<CleanImages> {
        match input {
            ImageInput::Npy(path) => {
                let file = NpyU8::open(path)?;
                let shape = file.shape();
                if shape.len() != 4 || shape[1..] != [32, 32, 3] {
                    bail!(
                        "{} holds shape {shape:?}; expected uint8 images of shape (N, 32, 32, 3), RGB",
                        path.display()
                    );
                }
                let len = limit.map_or(shape[0], |l| l.min(shape[0]));
                if len == 0 {
                    bail!("{} holds no images", path.display());
                }
                Ok(CleanImages { pixels: file.data()[..len * IMAGE_LEN].to_vec(), labels: None, len })
            }
            ImageInput::Data(spec) => {
                let data = Dataset::load(spec, Split::Test, limit, synthetic_seed)?;
                let mut pixels = vec![0u8; data.len() * IMAGE_LEN];
                data.images_u8(0, &mut pixels);
                Ok(CleanImages { pixels, labels: Some(data.labels()), len: data.len() })
            }
        }
    }

    pub fn image(&self, i: usize) -> &[u8] {
        &self.pixels[i * IMAGE_LEN..(i + 1) * IMAGE_LEN]
    }
}

/// How to corrupt and where to write.
pub struct ExportSettings<'a> {
    pub corruptions: &'a [Corruption],
    pub severities: &'a [u8],
    pub seed: u64,
    pub out_dir: &'a Path,
    pub batch_size: usize,
    pub device: Device,
    pub input_name: String,
}

/// Corrupts `images` and writes the set. Returns, per corruption, the corrupted versions of
/// image `keep` at each severity (for a gallery).
pub fn export(
    images: &CleanImages,
    settings: &ExportSettings,
    keep: usize,
    progress: &ProgressBar,
) -> Result<Vec<(Corruption, Vec<Vec<u8>>)>> {
    let ExportSettings { corruptions, severities, seed, out_dir, batch_size, device, .. } = *settings;
    if batch_size == 0 {
        bail!("--batch-size must be at least 1");
    }
    super::prepare(corruptions)?;
    std::fs::create_dir_all(out_dir).with_context(|| format!("cannot create {}", out_dir.display()))?;
    let n = images.len;
    // The manifest and the labels first: an interrupted export leaves a directory that a rerun
    // recognises as its own and completes. Adding corruptions to an earlier set is allowed only
    // with the same images, severities and seed, or its rows would be read under wrong labels.
    let mut manifest = CorruptManifest {
        input: settings.input_name.clone(),
        num_images: n,
        severities: severities.to_vec(),
        seed,
        corruptions: Vec::new(),
        mocse: crate::BUILD.to_string(),
    };
    let mut listed: Vec<Corruption> = corruptions.to_vec();
    if let Some(old) = read_manifest(out_dir)? {
        let differs = [
            ("input", old.input != manifest.input, format!("{} / {}", old.input, manifest.input)),
            ("images", old.num_images != n, format!("{} / {n}", old.num_images)),
            (
                "severities",
                old.severities != manifest.severities,
                format!("{:?} / {:?}", old.severities, manifest.severities),
            ),
            ("seed", old.seed != seed, format!("{} / {seed}", old.seed)),
        ];
        let differs: Vec<String> = differs
            .into_iter()
            .filter(|(_, d, _)| *d)
            .map(|(what, _, values)| format!("{what} {values}"))
            .collect();
        if !differs.is_empty() {
            bail!(
                "{} holds a set made with other settings (recorded / now: {}); adding to it would mix two sets. \
                 Choose another --out, or repeat the recorded settings",
                out_dir.display(),
                differs.join(", ")
            );
        }
        listed.extend(Corruption::ALL.into_iter().filter(|c| old.corruptions.iter().any(|n| n == c.name())));
    }
    manifest.corruptions =
        Corruption::ALL.into_iter().filter(|c| listed.contains(c)).map(|c| c.name().to_string()).collect();
    write_atomic(&out_dir.join(MANIFEST_FILE), serde_json::to_string_pretty(&manifest)?.as_bytes())?;
    if let Some(labels) = &images.labels {
        write_u8(&out_dir.join("labels.npy"), &[severities.len() * n], &labels.repeat(severities.len()))?;
    }
    let mut kept = Vec::new();
    // Corruption by corruption, so only one corruption's output (S x N images) is held at a time;
    // the clean batches are uploaded again for each, which costs far less than corrupting them.
    for &c in corruptions {
        progress.set_prefix(c.name());
        let mut out = vec![0u8; severities.len() * n * IMAGE_LEN];
        for first in (0..n).step_by(batch_size) {
            let count = batch_size.min(n - first);
            let clean =
                upload_images(&images.pixels[first * IMAGE_LEN..(first + count) * IMAGE_LEN], device)?;
            for (k, &s) in severities.iter().enumerate() {
                let y = corrupt(&clean, c, s, StreamKey { seed, first_image: first as u64 })?.to_host()?;
                let rows = &mut out[(k * n + first) * IMAGE_LEN..(k * n + first + count) * IMAGE_LEN];
                for (dst, v) in rows.iter_mut().zip(y) {
                    *dst = v as u8; // whole numbers in 0..255 by construction
                }
                progress.inc(count as u64);
            }
        }
        let path = out_dir.join(format!("{}.npy", c.name()));
        write_u8(&path, &[severities.len() * n, 32, 32, 3], &out)?;
        kept.push((
            c,
            (0..severities.len())
                .map(|k| out[(k * n + keep) * IMAGE_LEN..(k * n + keep + 1) * IMAGE_LEN].to_vec())
                .collect(),
        ));
    }
    Ok(kept)
}
