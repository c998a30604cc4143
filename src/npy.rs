//! NumPy `.npy` files of `uint8` arrays (images in the CIFAR-10-C layout, labels) and `.npz`
//! archives of them: memory-mapped reading with the header validated, atomic writing.
//! The format itself is parsed and written by the `npyz` crate.

use std::io::{Cursor, Read};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use memmap2::Mmap;
use npyz::WriterBuilder;

use crate::atomic_file::write_atomic;

/// A C-order `uint8` array of a `.npy` file, memory-mapped.
pub struct NpyU8 {
    path: PathBuf,
    map: Mmap,
    data_offset: usize,
    shape: Vec<usize>,
}

impl NpyU8 {
    /// Opens `path` and checks that it holds a C-order `uint8` array whose data is all there.
    pub fn open(path: &Path) -> Result<NpyU8> {
        let file = std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        // SAFETY: the map is read-only; a file changed underneath by another process gives wrong
        // pixel values, not memory unsafety of this process's own data structures.
        let map = unsafe { Mmap::map(&file) }.with_context(|| format!("cannot map {}", path.display()))?;
        let (shape, data_offset) = parse_u8_header(&map).with_context(|| format!("{}", path.display()))?;
        Ok(NpyU8 { path: path.to_owned(), map, data_offset, shape })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// The array's elements, in C order.
    pub fn data(&self) -> &[u8] {
        &self.map[self.data_offset..]
    }
}

/// Validates an `.npy` header for a C-order `uint8` array and returns (shape, data offset).
fn parse_u8_header(bytes: &[u8]) -> Result<(Vec<usize>, usize)> {
    let mut cursor = Cursor::new(bytes);
    let file = npyz::NpyFile::new(&mut cursor).context("not a NumPy .npy file")?;
    let dtype = file.dtype().descr();
    if !matches!(dtype.as_str(), "'|u1'" | "'<u1'" | "'>u1'") {
        bail!("holds dtype {dtype}, expected uint8 ('|u1')");
    }
    if file.order() != npyz::Order::C {
        bail!("is in Fortran order, expected C order");
    }
    let shape: Vec<usize> = file.shape().iter().map(|&d| d as usize).collect();
    let offset = cursor.position() as usize;
    let expected: usize = shape.iter().product();
    let actual = bytes.len() - offset;
    if actual != expected {
        bail!("header says shape {shape:?} ({expected} bytes of data) but the file holds {actual}");
    }
    Ok((shape, offset))
}

/// The bytes of a `.npy` file holding a C-order `uint8` array of `shape`.
pub fn u8_npy_bytes(shape: &[usize], data: &[u8]) -> Result<Vec<u8>> {
    let expected: usize = shape.iter().product();
    if data.len() != expected {
        bail!("{} bytes do not fill an array of shape {shape:?}", data.len());
    }
    let shape: Vec<u64> = shape.iter().map(|&d| d as u64).collect();
    let mut out = Vec::with_capacity(data.len() + 128);
    let mut writer = npyz::WriteOptions::new().default_dtype().shape(&shape).writer(&mut out).begin_nd()?;
    writer.extend(data.iter().copied())?;
    writer.finish()?;
    Ok(out)
}

/// Writes a C-order `uint8` array of `shape` to `path` atomically.
pub fn write_u8(path: &Path, shape: &[usize], data: &[u8]) -> Result<()> {
    write_atomic(path, &u8_npy_bytes(shape, data)?)
}

/// Reads every `uint8` array of an `.npz` archive (NumPy's `savez`/`savez_compressed`):
/// (name without `.npy`, shape, data). Other dtypes are skipped with their names returned
/// separately, so a caller can tell a missing array from one of another type.
pub struct Npz {
    archive: zip::ZipArchive<std::fs::File>,
    path: PathBuf,
}

impl Npz {
    pub fn open(path: &Path) -> Result<Npz> {
        let file = std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        let archive =
            zip::ZipArchive::new(file).with_context(|| format!("{} is not a zip archive", path.display()))?;
        Ok(Npz { archive, path: path.to_owned() })
    }

    fn entry_bytes(&mut self, name: &str) -> Result<Vec<u8>> {
        let mut entry = self
            .archive
            .by_name(&format!("{name}.npy"))
            .with_context(|| format!("{} has no array '{name}'", self.path.display()))?;
        let mut bytes = Vec::with_capacity(entry.size() as usize);
        entry.read_to_end(&mut bytes)?;
        Ok(bytes)
    }

    /// Array `name` as `uint8` (shape, data).
    pub fn u8_array(&mut self, name: &str) -> Result<(Vec<usize>, Vec<u8>)> {
        let bytes = self.entry_bytes(name)?;
        let (shape, offset) =
            parse_u8_header(&bytes).with_context(|| format!("array '{name}' of {}", self.path.display()))?;
        Ok((shape, bytes[offset..].to_vec()))
    }

    /// Array `name` as `float64`, flattened.
    pub fn f64_array(&mut self, name: &str) -> Result<Vec<f64>> {
        let bytes = self.entry_bytes(name)?;
        let file = npyz::NpyFile::new(&bytes[..])?;
        file.into_vec::<f64>()
            .with_context(|| format!("array '{name}' of {} is not float64", self.path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn u8_round_trip_and_validation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.npy");
        let data: Vec<u8> = (0..24).collect();
        write_u8(&path, &[2, 3, 4], &data).unwrap();
        let file = NpyU8::open(&path).unwrap();
        assert_eq!(file.shape(), &[2, 3, 4]);
        assert_eq!(file.data(), &data[..]);

        // Truncated data is reported with the shape the header promised.
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 1]).unwrap();
        let err = format!("{:#}", NpyU8::open(&path).err().unwrap());
        assert!(err.contains("[2, 3, 4]") && err.contains("23"), "{err}");

        // Another dtype is refused by name.
        let mut out = Vec::new();
        let mut w =
            npyz::WriteOptions::new().default_dtype().shape(&[2]).writer(&mut out).begin_nd().unwrap();
        w.extend([1.0f32, 2.0]).unwrap();
        w.finish().unwrap();
        std::fs::write(&path, &out).unwrap();
        let err = format!("{:#}", NpyU8::open(&path).err().unwrap());
        assert!(err.contains("<f4") && err.contains("uint8"), "{err}");

        std::fs::write(&path, b"not numpy").unwrap();
        assert!(format!("{:#}", NpyU8::open(&path).err().unwrap()).contains("not a NumPy"));
    }
}
