//! Corrupted test sets in the CIFAR-10-C layout (CORRUPTIONS.md §5): a directory of
//! `<corruption>.npy` files, uint8 (S·N, 32, 32, 3) with rows grouped by severity in ascending
//! order (each block the N test images in order), and `labels.npy` (S·N labels, the N test
//! labels repeated S times). The published files have S = 5 and N = 10,000. `mocse corrupt`
//! writes the same layout plus `corrupt.json`, which records the severities it wrote when they
//! are not all five. Files are memory-mapped and validated when opened.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use super::IMAGE_LEN;
use crate::corrupt::{Corruption, SEVERITIES};
use crate::input_file::{SMALL_FILE_LIMIT, open_optional_input, read_bounded};
use crate::npy::NpyU8;

/// What `mocse corrupt` records beside the files it writes.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CorruptManifest {
    pub input: String,
    pub num_images: usize,
    pub severities: Vec<u8>,
    pub seed: u64,
    pub corruptions: Vec<String>,
    pub mocse: String,
}

pub const MANIFEST_FILE: &str = "corrupt.json";

/// `DIR/corrupt.json` if there is one, checked: an unreadable or invalid manifest is an error,
/// never taken for an absent one, and its severities must be the ascending order the rows are in.
pub fn read_manifest(dir: &Path) -> Result<Option<CorruptManifest>> {
    let path = dir.join(MANIFEST_FILE);
    let Some(file) = open_optional_input(&path, "manifest")? else {
        return Ok(None);
    };
    let bytes = read_bounded(file, &path, "manifest", SMALL_FILE_LIMIT)?;
    let m: CorruptManifest = serde_json::from_slice(&bytes)
        .with_context(|| format!("{} is not a valid manifest", path.display()))?;
    if let Some(unknown) =
        m.corruptions.iter().find(|n| !Corruption::ALL.iter().any(|c| c.name() == n.as_str()))
    {
        bail!("{} lists corruption {unknown:?}, which is not one of the 19", path.display());
    }
    if m.severities.is_empty()
        || m.severities.iter().any(|s| !SEVERITIES.contains(s))
        || m.severities.windows(2).any(|w| w[0] >= w[1])
    {
        bail!(
            "{} lists severities {:?}; expected distinct severities within 1-5 in ascending order (the order of \
             the rows)",
            path.display(),
            m.severities
        );
    }
    Ok(Some(m))
}

/// An opened CIFAR-10-C style directory.
pub struct Cifar10C {
    dir: PathBuf,
    severities: Vec<u8>,
    /// Test images per severity block.
    per_block: usize,
    /// The labels of one block.
    labels: Vec<u8>,
    /// The corruptions `corrupt.json` lists (all 19 for the published files).
    corruptions: Vec<Corruption>,
}

/// One corruption's images.
pub struct CorruptedImages {
    file: NpyU8,
    severities: Vec<u8>,
    per_block: usize,
}

impl Cifar10C {
    /// Opens `dir`, reading `labels.npy` (and `corrupt.json` when present) and checking that
    /// the labels are the same test labels repeated once per severity.
    pub fn open(dir: &Path) -> Result<Cifar10C> {
        if !dir.is_dir() {
            bail!(
                "{} is not a directory (expected the CIFAR-10-C folder holding <corruption>.npy and labels.npy)",
                dir.display()
            );
        }
        let manifest = read_manifest(dir)?;
        let severities = manifest.as_ref().map_or_else(|| SEVERITIES.collect(), |m| m.severities.clone());
        let path = dir.join("labels.npy");
        let labels = NpyU8::open(&path).context("CIFAR-10-C labels")?;
        let [total] = labels.shape() else {
            bail!(
                "{} has shape {:?}; expected one label per row, shape (n,)",
                path.display(),
                labels.shape()
            );
        };
        let total = *total;
        if total == 0 || total % severities.len() != 0 {
            bail!(
                "{} holds {total} labels, not a multiple of the {} severities {:?}",
                path.display(),
                severities.len(),
                severities
            );
        }
        let per_block = total / severities.len();
        if let Some(m) = manifest.as_ref().filter(|m| m.num_images != per_block) {
            bail!(
                "{} holds {total} labels, {per_block} per severity, but {} says the set has {} images",
                path.display(),
                dir.join(MANIFEST_FILE).display(),
                m.num_images
            );
        }
        let all = labels.data();
        let first = &all[..per_block];
        if let Some(k) = (1..severities.len()).find(|&k| &all[k * per_block..(k + 1) * per_block] != first) {
            bail!(
                "{}: the labels of severity block {} differ from block 1; expected the test labels repeated per severity",
                path.display(),
                k + 1
            );
        }
        if let Some(bad) = first.iter().find(|&&l| l >= 10) {
            bail!("{} holds label {bad}; CIFAR-10 labels are 0..9", path.display());
        }
        let corruptions = match &manifest {
            None => Corruption::ALL.to_vec(),
            Some(m) => {
                Corruption::ALL.into_iter().filter(|c| m.corruptions.iter().any(|n| n == c.name())).collect()
            }
        };
        Ok(Cifar10C { dir: dir.to_owned(), severities, per_block, labels: first.to_vec(), corruptions })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn severities(&self) -> &[u8] {
        &self.severities
    }

    /// The corruptions the directory holds: those its `corrupt.json` lists, else all 19.
    pub fn corruptions(&self) -> &[Corruption] {
        &self.corruptions
    }

    /// Test images per severity.
    pub fn images_per_severity(&self) -> usize {
        self.per_block
    }

    /// The labels of the test images (one severity block).
    pub fn labels(&self) -> &[u8] {
        &self.labels
    }

    /// Opens and validates `<corruption>.npy`.
    pub fn open_corruption(&self, corruption: Corruption) -> Result<CorruptedImages> {
        let path = self.dir.join(format!("{}.npy", corruption.name()));
        if std::fs::symlink_metadata(&path).is_err() {
            bail!("{} is missing (asked for corruption {corruption})", path.display());
        }
        let file = NpyU8::open(&path)?;
        let rows = self.per_block * self.severities.len();
        if file.shape() != [rows, 32, 32, 3] {
            bail!(
                "{} has shape {:?}; expected ({rows}, 32, 32, 3): {} severities x {} images, as labels.npy says",
                path.display(),
                file.shape(),
                self.severities.len(),
                self.per_block
            );
        }
        Ok(CorruptedImages { file, severities: self.severities.clone(), per_block: self.per_block })
    }
}

impl CorruptedImages {
    /// Images `first..first + count` of the test set at `severity`, NHWC uint8.
    pub fn images(&self, severity: u8, first: usize, count: usize) -> Result<&[u8]> {
        let Some(block) = self.severities.iter().position(|&s| s == severity) else {
            bail!("{} holds severities {:?}, not {severity}", self.file.path().display(), self.severities);
        };
        if first.checked_add(count).is_none_or(|end| end > self.per_block) {
            bail!("images {first}..{} asked of {} per severity", first + count, self.per_block);
        }
        let start = (block * self.per_block + first) * IMAGE_LEN;
        Ok(&self.file.data()[start..start + count * IMAGE_LEN])
    }
}
