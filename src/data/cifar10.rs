//! Reader for the CIFAR-10 binary version (`cifar-10-binary.tar.gz`).
//!
//! Each file holds records of 3073 bytes: one label byte (0..9), then the
//! red, green and blue planes, 1024 bytes each (row-major 32x32). Files are
//! memory-mapped and converted to NHWC one image at a time, so the data set is
//! never copied into RAM as a whole.

use std::path::{Path, PathBuf};

use anyhow::{Result, bail};

use crate::mapped_file::MappedFile;

use super::{CHANNELS, IMAGE_LEN, IMAGE_SIZE, NUM_CLASSES, Split};

pub const CIFAR10_CLASSES: [&str; 10] =
    ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"];

const RECORD_LEN: usize = 1 + IMAGE_LEN;
const RECORDS_PER_FILE: usize = 10_000;
const TRAIN_FILES: [&str; 5] =
    ["data_batch_1.bin", "data_batch_2.bin", "data_batch_3.bin", "data_batch_4.bin", "data_batch_5.bin"];
const TEST_FILES: [&str; 1] = ["test_batch.bin"];
/// The folder name inside the official tarball.
const TARBALL_DIR: &str = "cifar-10-batches-bin";

fn split_files(split: Split) -> &'static [&'static str] {
    match split {
        Split::Train => &TRAIN_FILES,
        Split::Test => &TEST_FILES,
    }
}

pub(crate) fn split_len(split: Split) -> usize {
    split_files(split).len() * RECORDS_PER_FILE
}

/// The memory-mapped files of one split.
pub(crate) struct Cifar10Files {
    files: Vec<(PathBuf, MappedFile)>,
    records_per_file: usize,
}

impl Cifar10Files {
    pub(crate) fn open(dir: &Path, split: Split) -> Result<Cifar10Files> {
        Self::open_with(dir, split, RECORDS_PER_FILE)
    }

    /// `records_per_file` is a parameter only so tests can use small files.
    fn open_with(dir: &Path, split: Split, records_per_file: usize) -> Result<Cifar10Files> {
        let dir = resolve_dir(dir)?;
        let files = split_files(split)
            .iter()
            .map(|name| {
                let path = dir.join(name);
                let map = map_file(&path, records_per_file)?;
                Ok((path, map))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Cifar10Files { files, records_per_file })
    }

    fn record(&self, i: usize) -> &[u8] {
        let (_, map) = &self.files[i / self.records_per_file];
        let start = (i % self.records_per_file) * RECORD_LEN;
        &map[start..start + RECORD_LEN]
    }

    /// Labels of the first `n` records, validated.
    pub(crate) fn labels(&self, n: usize) -> Result<Vec<u8>> {
        (0..n)
            .map(|i| {
                let label = self.record(i)[0];
                if usize::from(label) >= NUM_CLASSES {
                    let (path, _) = &self.files[i / self.records_per_file];
                    bail!(
                        "{}: record {} has label {label}, expected 0..=9 (corrupt file?)",
                        path.display(),
                        i % self.records_per_file
                    );
                }
                Ok(label)
            })
            .collect()
    }

    pub(crate) fn image_u8(&self, i: usize, out: &mut [u8]) {
        planar_to_nhwc(&self.record(i)[1..], out);
    }
}

/// Planar RGB (R plane, G plane, B plane) to interleaved HWC.
fn planar_to_nhwc(planar: &[u8], out: &mut [u8]) {
    let plane = IMAGE_SIZE * IMAGE_SIZE;
    for (p, px) in out.chunks_exact_mut(CHANNELS).enumerate() {
        for (c, v) in px.iter_mut().enumerate() {
            *v = planar[c * plane + p];
        }
    }
}

/// Accepts either the folder with the `.bin` files or its parent holding the
/// tarball's `cifar-10-batches-bin/`.
fn resolve_dir(dir: &Path) -> Result<PathBuf> {
    if !dir.exists() {
        bail!(
            "CIFAR-10 directory {} does not exist (expected the extracted binary version, \
             cifar-10-binary.tar.gz)",
            dir.display()
        );
    }
    if !dir.is_dir() {
        bail!("CIFAR-10 path {} is not a directory", dir.display());
    }
    let nested = dir.join(TARBALL_DIR);
    let has_files = TRAIN_FILES.iter().chain(&TEST_FILES).any(|name| dir.join(name).exists());
    if !has_files && nested.is_dir() {
        return Ok(nested);
    }
    Ok(dir.to_path_buf())
}

fn map_file(path: &Path, records: usize) -> Result<MappedFile> {
    if std::fs::symlink_metadata(path).is_err() {
        bail!(
            "CIFAR-10 file {} is missing: the directory must contain {} and {} from the \
             binary version of CIFAR-10 (cifar-10-binary.tar.gz, folder {TARBALL_DIR})",
            path.display(),
            TRAIN_FILES.join(", "),
            TEST_FILES.join(", ")
        );
    }
    // A directory, FIFO or symlink loop in its place is named as what it is.
    let map = MappedFile::open(path, "CIFAR-10 file")?;
    let (len, expected) = (map.len() as u64, (records * RECORD_LEN) as u64);
    if len != expected {
        bail!(
            "CIFAR-10 file {} has the wrong size: expected {expected} bytes, got {len} \
             (truncated or not the CIFAR-10 binary version, cifar-10-binary.tar.gz)",
            path.display()
        );
    }
    Ok(map)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::{DataSpec, Dataset};
    use std::fs;

    /// Record `r` of a test file: label `r % 10`, R = r, G = pixel index low
    /// byte, B = 255 - r.
    fn fake_record(r: usize) -> Vec<u8> {
        let plane = IMAGE_SIZE * IMAGE_SIZE;
        let mut rec = vec![(r % 10) as u8];
        rec.extend(std::iter::repeat_n(r as u8, plane));
        rec.extend((0..plane).map(|p| p as u8));
        rec.extend(std::iter::repeat_n(255 - r as u8, plane));
        rec
    }

    fn write_fake_dir(dir: &Path, records: usize) {
        for name in TRAIN_FILES.iter().chain(&TEST_FILES) {
            let bytes: Vec<u8> = (0..records).flat_map(fake_record).collect();
            fs::write(dir.join(name), bytes).unwrap();
        }
    }

    #[test]
    fn reads_small_files_in_binary_format() {
        let tmp = tempfile::tempdir().unwrap();
        write_fake_dir(tmp.path(), 3);
        let files = Cifar10Files::open_with(tmp.path(), Split::Train, 3).unwrap();
        assert_eq!(files.labels(15).unwrap(), [0, 1, 2].repeat(5));
        let mut img = vec![0u8; IMAGE_LEN];
        // Record 1 of the second file.
        files.image_u8(4, &mut img);
        for p in 0..IMAGE_SIZE * IMAGE_SIZE {
            assert_eq!(&img[p * 3..p * 3 + 3], &[1, p as u8, 254], "pixel {p}");
        }
        let test = Cifar10Files::open_with(tmp.path(), Split::Test, 3).unwrap();
        assert_eq!(test.labels(3).unwrap(), [0, 1, 2]);
    }

    #[test]
    fn public_loader_reads_full_size_test_file() {
        let tmp = tempfile::tempdir().unwrap();
        let bytes: Vec<u8> = (0..RECORDS_PER_FILE).flat_map(fake_record).collect();
        fs::write(tmp.path().join("test_batch.bin"), bytes).unwrap();
        let spec = DataSpec::Cifar10(tmp.path().to_path_buf());
        let ds = Dataset::load(&spec, Split::Test, None, 0).unwrap();
        assert_eq!(ds.len(), 10_000);
        assert_eq!(ds.name(), "cifar10/test");
        assert_eq!(ds.class_names()[3], "cat");
        assert_eq!(ds.label(9_999), 9);
        let mut img = vec![0u8; IMAGE_LEN];
        ds.image_u8(300, &mut img);
        assert_eq!(&img[..6], &[44, 0, 211, 44, 1, 211]);
        let sub = Dataset::load(&spec, Split::Test, Some(7), 0).unwrap();
        assert_eq!(sub.labels(), ds.labels()[..7]);
    }

    #[test]
    fn planar_to_nhwc_on_known_pixels() {
        let plane = IMAGE_SIZE * IMAGE_SIZE;
        let mut planar = vec![0u8; IMAGE_LEN];
        // Pixel at row 2, column 5 gets (10, 20, 30); the last pixel (7, 8, 9).
        let p = 2 * IMAGE_SIZE + 5;
        planar[p] = 10;
        planar[plane + p] = 20;
        planar[2 * plane + p] = 30;
        planar[plane - 1] = 7;
        planar[2 * plane - 1] = 8;
        planar[3 * plane - 1] = 9;
        let mut out = vec![0u8; IMAGE_LEN];
        planar_to_nhwc(&planar, &mut out);
        assert_eq!(&out[p * 3..p * 3 + 3], &[10, 20, 30]);
        assert_eq!(&out[IMAGE_LEN - 3..], &[7, 8, 9]);
        assert_eq!(out.iter().map(|&v| usize::from(v)).sum::<usize>(), 10 + 20 + 30 + 7 + 8 + 9);
    }

    #[test]
    fn accepts_tarball_parent_dir() {
        let tmp = tempfile::tempdir().unwrap();
        let inner = tmp.path().join(TARBALL_DIR);
        fs::create_dir(&inner).unwrap();
        write_fake_dir(&inner, 2);
        let files = Cifar10Files::open_with(tmp.path(), Split::Test, 2).unwrap();
        assert_eq!(files.labels(2).unwrap(), [0, 1]);
    }

    #[test]
    fn bad_label_names_file_and_record() {
        let tmp = tempfile::tempdir().unwrap();
        write_fake_dir(tmp.path(), 3);
        let mut bytes = fs::read(tmp.path().join("data_batch_2.bin")).unwrap();
        bytes[2 * RECORD_LEN] = 10;
        fs::write(tmp.path().join("data_batch_2.bin"), bytes).unwrap();
        let files = Cifar10Files::open_with(tmp.path(), Split::Train, 3).unwrap();
        // The bad record is outside a 3-image subset, so that still loads.
        assert!(files.labels(3).is_ok());
        let msg = files.labels(15).unwrap_err().to_string();
        assert!(msg.contains("data_batch_2.bin"), "{msg}");
        assert!(msg.contains("record 2 has label 10"), "{msg}");
    }

    #[test]
    fn public_loader_rejects_truncated_file() {
        let tmp = tempfile::tempdir().unwrap();
        write_fake_dir(tmp.path(), 3);
        let msg = Cifar10Files::open(tmp.path(), Split::Test).err().unwrap().to_string();
        assert!(msg.contains("test_batch.bin"), "{msg}");
        assert!(msg.contains("expected 30730000 bytes, got 9219"), "{msg}");
        assert!(msg.contains("truncated or not the CIFAR-10 binary version"), "{msg}");
    }

    #[test]
    fn public_loader_reports_missing_file() {
        let tmp = tempfile::tempdir().unwrap();
        write_fake_dir(tmp.path(), 3);
        fs::remove_file(tmp.path().join("data_batch_4.bin")).unwrap();
        let msg = Cifar10Files::open_with(tmp.path(), Split::Train, 3).err().unwrap().to_string();
        assert!(msg.contains("data_batch_4.bin is missing"), "{msg}");
        assert!(msg.contains("test_batch.bin"), "{msg}");
        assert!(msg.contains("cifar-10-binary.tar.gz"), "{msg}");
    }

    #[test]
    fn a_directory_or_symlink_loop_in_place_of_a_file_is_named_as_such() {
        let tmp = tempfile::tempdir().unwrap();
        write_fake_dir(tmp.path(), 3);
        fs::remove_file(tmp.path().join("test_batch.bin")).unwrap();
        fs::create_dir(tmp.path().join("test_batch.bin")).unwrap();
        let msg = format!("{:#}", Cifar10Files::open_with(tmp.path(), Split::Test, 3).err().unwrap());
        assert!(msg.contains("test_batch.bin is a directory, not a regular file"), "{msg}");
        fs::remove_dir(tmp.path().join("test_batch.bin")).unwrap();
        std::os::unix::fs::symlink(tmp.path().join("test_batch.bin"), tmp.path().join("test_batch.bin"))
            .unwrap();
        let msg = format!("{:#}", Cifar10Files::open_with(tmp.path(), Split::Test, 3).err().unwrap());
        assert!(msg.contains("loops"), "{msg}");
    }

    #[test]
    fn public_loader_reports_bad_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let missing = tmp.path().join("nope");
        let spec = DataSpec::Cifar10(missing.clone());
        let msg = Dataset::load(&spec, Split::Train, None, 0).err().unwrap().to_string();
        assert!(msg.contains("does not exist") && msg.contains("nope"), "{msg}");

        let file = tmp.path().join("plain.txt");
        fs::write(&file, b"x").unwrap();
        let spec = DataSpec::Cifar10(file);
        let msg = Dataset::load(&spec, Split::Test, None, 0).err().unwrap().to_string();
        assert!(msg.contains("is not a directory"), "{msg}");

        let spec = DataSpec::Cifar10(tmp.path().to_path_buf());
        let msg = Dataset::load(&spec, Split::Test, None, 0).err().unwrap().to_string();
        assert!(msg.contains("test_batch.bin is missing"), "{msg}");
    }
}
