//! NumPy `.npy` files of `uint8` arrays (images in the CIFAR-10-C layout, labels) and `.npz`
//! archives of them: memory-mapped reading with the header validated, atomic writing.
//! The format itself is parsed and written by the `npyz` crate.

use std::io::{Cursor, Read};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use npyz::WriterBuilder;

use crate::atomic_file::write_atomic;
use crate::input_file::open_input;
use crate::mapped_file::MappedFile;

/// A C-order `uint8` array of a `.npy` file, memory-mapped.
pub struct NpyU8 {
    map: MappedFile,
    data_offset: usize,
    shape: Vec<usize>,
}

impl NpyU8 {
    /// Opens `path` and checks that it holds a C-order `uint8` array whose data is all there.
    pub fn open(path: &Path) -> Result<NpyU8> {
        let map = MappedFile::open(path, "NumPy file")?;
        let (shape, data_offset) = parse_u8_header(&map).with_context(|| format!("{}", path.display()))?;
        Ok(NpyU8 { map, data_offset, shape })
    }

    pub fn path(&self) -> &Path {
        self.map.path()
    }

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// The array's elements, in C order.
    pub fn data(&self) -> &[u8] {
        &self.map[self.data_offset..]
    }
}

/// NumPy's own limit on the header it reads from untrusted files (`max_header_size`).
const MAX_HEADER_LEN: usize = 10_000;

/// Checks the magic, version and header length, and that the header text nests brackets at
/// most twice (the dict and the shape tuple of a plain array), before the header reaches the
/// Python-literal parser of `npyz`: that parser takes exponential time on deeply nested
/// brackets, and a v2 header length would otherwise size an allocation of up to 4 GiB.
fn check_preamble(bytes: &[u8]) -> Result<()> {
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        bail!("not a NumPy .npy file (no \\x93NUMPY magic)");
    }
    let (len, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 if bytes.len() >= 12 => {
            (u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize, 12)
        }
        v => bail!("not a NumPy .npy file of a known version (version {v})"),
    };
    if len > MAX_HEADER_LEN || start + len > bytes.len() {
        bail!("not a NumPy .npy file: its header claims {len} bytes (NumPy reads at most {MAX_HEADER_LEN})");
    }
    let (mut depth, mut quote) = (0usize, None);
    for &c in &bytes[start..start + len] {
        match (quote, c) {
            (Some(q), _) if c == q => quote = None,
            (Some(_), _) => {}
            (None, b'\'' | b'"') => quote = Some(c),
            (None, b'(' | b'[' | b'{') => {
                depth += 1;
                if depth > 2 {
                    bail!("not a plain NumPy array: its header nests brackets more than twice");
                }
            }
            (None, b')' | b']' | b'}') => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

/// The number of elements of `shape`, unless it overflows.
fn element_count(shape: &[usize]) -> Option<usize> {
    shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d))
}

/// Validates an `.npy` header for a C-order `uint8` array and returns (shape, data offset).
/// The shape comes from the file: its element count is computed without overflow before it is
/// compared with the bytes that follow the header.
pub fn parse_u8_header(bytes: &[u8]) -> Result<(Vec<usize>, usize)> {
    check_preamble(bytes)?;
    let mut cursor = Cursor::new(bytes);
    let file = npyz::NpyFile::new(&mut cursor).context("not a NumPy .npy file")?;
    let dtype = file.dtype().descr();
    if !matches!(dtype.as_str(), "'|u1'" | "'<u1'" | "'>u1'") {
        bail!("holds dtype {dtype}, expected uint8 ('|u1')");
    }
    if file.order() != npyz::Order::C {
        bail!("is in Fortran order, expected C order");
    }
    let shape: Vec<usize> =
        file.shape().iter().map(|&d| usize::try_from(d)).collect::<Result<_, _>>().map_err(|_| {
            anyhow::anyhow!("has a dimension too large for this machine in shape {:?}", file.shape())
        })?;
    let offset = cursor.position() as usize;
    let Some(expected) = element_count(&shape) else {
        bail!("header says shape {shape:?}, whose element count overflows");
    };
    let actual = bytes.len() - offset;
    if actual != expected {
        bail!("header says shape {shape:?} ({expected} bytes of data) but the file holds {actual}");
    }
    Ok((shape, offset))
}

/// The bytes of a `.npy` file holding a C-order array of `shape` (`u8` or `f32` elements).
pub fn npy_bytes<T: npyz::Serialize + npyz::AutoSerialize + Copy>(
    shape: &[usize],
    data: &[T],
) -> Result<Vec<u8>> {
    if element_count(shape) != Some(data.len()) {
        bail!("{} values do not fill an array of shape {shape:?}", data.len());
    }
    let shape: Vec<u64> = shape.iter().map(|&d| d as u64).collect();
    let mut out = Vec::with_capacity(std::mem::size_of_val(data) + 128);
    let mut writer = npyz::WriteOptions::new().default_dtype().shape(&shape).writer(&mut out).begin_nd()?;
    writer.extend(data.iter().copied())?;
    writer.finish()?;
    Ok(out)
}

/// The bytes of a `.npy` file holding a C-order `uint8` array of `shape`.
pub fn u8_npy_bytes(shape: &[usize], data: &[u8]) -> Result<Vec<u8>> {
    npy_bytes(shape, data)
}

/// Writes an `.npz` archive (NumPy's `savez_compressed`: a zip of deflated `.npy` files) of
/// (name, `.npy` bytes) atomically.
pub fn write_npz(path: &Path, arrays: &[(String, Vec<u8>)]) -> Result<()> {
    use std::io::Write;
    let mut zip = zip::ZipWriter::new(Cursor::new(Vec::new()));
    let options = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated)
        .large_file(arrays.iter().any(|(_, b)| b.len() as u64 >= u32::MAX as u64));
    for (name, bytes) in arrays {
        zip.start_file(format!("{name}.npy"), options)?;
        zip.write_all(bytes)?;
    }
    write_atomic(path, &zip.finish()?.into_inner())
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

/// The largest array read out of an `.npz` archive, whatever its entry claims.
const NPZ_ENTRY_LIMIT: u64 = 256 << 20;

impl Npz {
    pub fn open(path: &Path) -> Result<Npz> {
        let file = open_input(path, "NumPy archive")?;
        let archive =
            zip::ZipArchive::new(file).with_context(|| format!("{} is not a zip archive", path.display()))?;
        Ok(Npz { archive, path: path.to_owned() })
    }

    fn entry_bytes(&mut self, name: &str) -> Result<Vec<u8>> {
        let mut entry = self
            .archive
            .by_name(&format!("{name}.npy"))
            .with_context(|| format!("{} has no array '{name}'", self.path.display()))?;
        // The entry's stated size comes from the archive: it bounds nothing until checked, and the
        // decompressed stream is cut off at the limit whatever the header says.
        if entry.size() > NPZ_ENTRY_LIMIT {
            bail!(
                "{}: array '{name}' says it is {} bytes, more than the {NPZ_ENTRY_LIMIT} read",
                self.path.display(),
                entry.size()
            );
        }
        let mut bytes = Vec::with_capacity(entry.size() as usize);
        (&mut entry).take(NPZ_ENTRY_LIMIT + 1).read_to_end(&mut bytes)?;
        if bytes.len() as u64 > NPZ_ENTRY_LIMIT {
            bail!("{}: array '{name}' unpacks to more than {NPZ_ENTRY_LIMIT} bytes", self.path.display());
        }
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
        self.typed_array(name, "float64")
    }

    /// Array `name` as `float32`, flattened.
    pub fn f32_array(&mut self, name: &str) -> Result<Vec<f32>> {
        self.typed_array(name, "float32")
    }

    fn typed_array<T: npyz::Deserialize>(&mut self, name: &str, dtype: &str) -> Result<Vec<T>> {
        let bytes = self.entry_bytes(name)?;
        check_preamble(&bytes).with_context(|| format!("array '{name}' of {}", self.path.display()))?;
        let file = npyz::NpyFile::new(&bytes[..])?;
        file.into_vec::<T>()
            .with_context(|| format!("array '{name}' of {} is not {dtype}", self.path.display()))
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

        // A shape whose element count overflows is refused, not wrapped to 0 bytes.
        let header = "{'descr': '|u1', 'fortran_order': False, 'shape': (18014398509481984, 32, 32, 3), }";
        let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
        let padded = format!("{header:<117}\n");
        bytes.extend_from_slice(&(padded.len() as u16).to_le_bytes());
        bytes.extend_from_slice(padded.as_bytes());
        std::fs::write(&path, &bytes).unwrap();
        let err = format!("{:#}", NpyU8::open(&path).err().unwrap());
        assert!(err.contains("overflows"), "{err}");

        // Deeply nested brackets (which the Python-literal parser takes exponential time on) and a
        // header length beyond the file are refused before parsing.
        let header = format!("{{'descr': '|u1', 'fortran_order': False, 'shape': (3,{}), }}", "[".repeat(60));
        let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
        bytes.extend_from_slice(&(header.len() as u16).to_le_bytes());
        bytes.extend_from_slice(header.as_bytes());
        std::fs::write(&path, &bytes).unwrap();
        let err = format!("{:#}", NpyU8::open(&path).err().unwrap());
        assert!(err.contains("nests brackets"), "{err}");
        bytes[6] = 2;
        bytes.splice(8..10, [0xff, 0xff, 0xff, 0xff]);
        std::fs::write(&path, &bytes).unwrap();
        let err = format!("{:#}", NpyU8::open(&path).err().unwrap());
        assert!(err.contains("header claims 4294967295 bytes"), "{err}");
    }
}
