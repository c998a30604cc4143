//! Frost (CORRUPTIONS.md §3.11): a random 32x32 crop of one of five frost photographs,
//! subsampled 5x, added to the image. Kernel: `kernels/corrupt_frost.cu`.
//!
//! The photographs are not ours to ship (§6: no licence is stated). They come from the
//! `imagecorruptions` 1.1.2 wheel on PyPI, which carries them byte for byte, and are kept in a
//! cache directory ([`texture_dir`]). The first use fetches the wheel with pip (a message on
//! stderr says so) unless `MOCSE_FROST_WHEEL` names a wheel already downloaded. Every file is
//! checked against its SHA-256 whenever it is read: a wrong file is refused, never replaced by
//! a stand-in.
//!
//! Environment: `MOCSE_CACHE` (the cache root, default `$XDG_CACHE_HOME/mocse` or
//! `~/.cache/mocse`), `MOCSE_FROST_WHEEL` (a local `imagecorruptions-1.1.2-*.whl`),
//! `MOCSE_PYTHON` (the Python that runs pip, default `python3`).

use std::fmt::Write as _;
use std::io::{Cursor, Read};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result, bail, ensure};
use sha2::{Digest, Sha256};

use super::{Corruption, StreamKey, per_image};
use crate::atomic_file::write_atomic;
use crate::data::IMAGE_SIZE;
use crate::device::Device;
use crate::gpu::{self, Arg, GpuBuffer, int};
use crate::input_file::{open_optional_input, read_bounded, read_input};
use crate::tensor::Tensor;

/// (img_coef, frost_coef) per severity, the CIFAR values of make_cifar_c.py.
const COEFFICIENTS: [(f64, f64); 5] = [(1.0, 0.2), (1.0, 0.3), (0.9, 0.4), (0.85, 0.4), (0.75, 0.45)];

/// The pip requirement of the wheel that carries the photographs.
pub const WHEEL_REQUIREMENT: &str = "imagecorruptions==1.1.2";
/// Read limits: the wheel is 2.1 MB and its largest texture under 2 MB.
const WHEEL_FILE_LIMIT: u64 = 64 << 20;
const TEXTURE_FILE_LIMIT: u64 = 16 << 20;
/// Where the photographs lie inside the wheel.
const WHEEL_FOLDER: &str = "imagecorruptions/frost/";
/// The reference samples the file with `randint(5)`, so frost6.jpg is never used; frost2 and
/// frost3 hold the same pixels and both stay, which gives that texture probability 2/5.
pub const TEXTURE_FILES: [TextureFile; 5] = [
    TextureFile {
        name: "frost1.png",
        sha256: "ff9f907860bd7a835d459e32f9d588062b7f61ee267343cc7222b56753a14755",
        width: 900,
        height: 600,
    },
    TextureFile {
        name: "frost2.png",
        sha256: "fe211a89b336999c207a852ce05818d4545d0b57c5beadd824b4cc9d9a9b6137",
        width: 560,
        height: 315,
    },
    TextureFile {
        name: "frost3.png",
        sha256: "2d0d50b4a9bb213f38b024ef7768731bb83cc08d2f26b5766bbc167cdfa0e504",
        width: 560,
        height: 315,
    },
    TextureFile {
        name: "frost4.jpg",
        sha256: "3f8b91ca1a9fa7167b09e773da53f5ae60d0a1fd88f02a783f6e328a72887f6e",
        width: 527,
        height: 350,
    },
    TextureFile {
        name: "frost5.jpg",
        sha256: "5fc6a19df4a429ba68abdcc8f8a4278d4c9f81c9ccafd2c92ab0c8cf8992ebd2",
        width: 660,
        height: 495,
    },
];

/// One frost photograph as published (full size).
#[derive(Clone, Copy, Debug)]
pub struct TextureFile {
    pub name: &'static str,
    pub sha256: &'static str,
    pub width: usize,
    pub height: usize,
}

/// A frost photograph as the corruption uses it: subsampled 5x, RGB, row-major HWC bytes.
#[derive(Clone, Debug)]
pub struct Texture {
    pub name: &'static str,
    pub width: usize,
    pub height: usize,
    pub rgb: Vec<u8>,
}

/// Where the photographs are kept: `$MOCSE_CACHE/frost`, else `$XDG_CACHE_HOME/mocse/frost`,
/// else `~/.cache/mocse/frost`.
pub fn texture_dir() -> Result<PathBuf> {
    crate::cache_dir::cache_dir("frost")
}

/// Makes sure the five photographs are in [`texture_dir`], fetching them on first use (see the
/// module documentation); returns that directory. Fails, naming the manual steps, when they
/// are missing and cannot be fetched, and refuses a file whose SHA-256 is wrong.
pub fn ensure_textures() -> Result<PathBuf> {
    load_files().map(|(dir, _)| dir)
}

/// The cache directory and the bytes of the five files, fetched first if any is missing.
fn load_files() -> Result<(PathBuf, Vec<Vec<u8>>)> {
    let _one_fetch_at_a_time = FETCH_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let dir = texture_dir()?;
    if let Some(files) = read_verified(&dir)? {
        return Ok((dir, files));
    }
    fetch_into(&dir, &source_from_env())?;
    let files = read_verified(&dir)?
        .with_context(|| format!("the frost textures vanished from {}", dir.display()))?;
    Ok((dir, files))
}

/// Copies the five photographs out of a downloaded `imagecorruptions` 1.1.2 wheel into
/// [`texture_dir`] (checking their SHA-256); returns that directory.
pub fn install_from_wheel(wheel: &Path) -> Result<PathBuf> {
    let _one_fetch_at_a_time = FETCH_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let dir = texture_dir()?;
    extract_from_wheel(wheel, &dir)?;
    Ok(dir)
}

/// The five textures, decoded as `cv2.imread` then `cv2.resize(fx=fy=0.2)` make them; loaded
/// (and fetched if need be) once per process.
pub fn textures() -> Result<Arc<Vec<Texture>>> {
    static LOADED: Mutex<Option<Arc<Vec<Texture>>>> = Mutex::new(None);
    let mut loaded = LOADED.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(t) = loaded.as_ref() {
        return Ok(t.clone());
    }
    let (dir, files) = load_files()?;
    let decoded = TEXTURE_FILES
        .iter()
        .zip(&files)
        .map(|(file, bytes)| {
            decode_subsampled(file, bytes)
                .with_context(|| format!("decoding {}", dir.join(file.name).display()))
        })
        .collect::<Result<Vec<_>>>()?;
    let decoded = Arc::new(decoded);
    *loaded = Some(decoded.clone());
    Ok(decoded)
}

pub(super) fn apply(input: &Tensor, severity: u8, key: StreamKey) -> Result<Tensor> {
    let on_device = device_textures(input.device())?;
    apply_with(&on_device, input, severity, key)
}

// ---- the kernel ----

/// The textures uploaded to one device: the bytes one after another, and per texture its
/// (byte offset, width, height).
struct DeviceTextures {
    pixels: GpuBuffer,
    layout: GpuBuffer,
    count: usize,
}

impl DeviceTextures {
    fn upload(device: Device, textures: &[Texture]) -> Result<DeviceTextures> {
        let mut pixels = Vec::new();
        let mut layout = Vec::new();
        for t in textures {
            ensure!(t.width > IMAGE_SIZE && t.height > IMAGE_SIZE, "frost texture {} is too small", t.name);
            ensure!(t.rgb.len() == t.width * t.height * 3, "frost texture {}: wrong byte count", t.name);
            layout.extend([pixels.len(), t.width, t.height].map(|v| i32::try_from(v).expect("small")));
            pixels.extend_from_slice(&t.rgb);
        }
        Ok(DeviceTextures {
            pixels: GpuBuffer::upload(device, &pixels)?,
            layout: GpuBuffer::upload(device, &layout)?,
            count: textures.len(),
        })
    }
}

/// The textures on `device`, uploaded once per device and process.
fn device_textures(device: Device) -> Result<Arc<DeviceTextures>> {
    static UPLOADED: Mutex<Vec<(Device, Arc<DeviceTextures>)>> = Mutex::new(Vec::new());
    let mut uploaded = UPLOADED.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, t)) = uploaded.iter().find(|(d, _)| *d == device) {
        return Ok(t.clone());
    }
    let t = Arc::new(DeviceTextures::upload(device, &textures()?)?);
    uploaded.push((device, t.clone()));
    Ok(t)
}

fn apply_with(textures: &DeviceTextures, input: &Tensor, severity: u8, key: StreamKey) -> Result<Tensor> {
    let (img_coef, frost_coef) = COEFFICIENTS[usize::from(severity - 1)];
    let n = input.shape()[0];
    let out = Tensor::output_on(input.device(), input.shape())?;
    let [seed, first_image] = key.args();
    let args = [
        out.arg(),
        input.arg(),
        textures.pixels.arg(),
        textures.layout.arg(),
        int(textures.count),
        Arg::F64(img_coef),
        Arg::F64(frost_coef),
        Arg::I32(Corruption::Frost.id()),
        Arg::I32(i32::from(severity)),
        seed,
        first_image,
    ];
    gpu::launch(input.device(), "corrupt_frost", per_image(input.device(), n), &args)?;
    Ok(out)
}

// ---- fetching and checking the photographs ----

/// Serialises fetches within the process (parallel tests would otherwise each run pip).
static FETCH_LOCK: Mutex<()> = Mutex::new(());

/// Where the wheel comes from.
struct WheelSource {
    /// A wheel already on disk (`MOCSE_FROST_WHEEL`).
    wheel: Option<PathBuf>,
    /// The Python that runs `pip download` otherwise (`MOCSE_PYTHON`, default `python3`).
    python: String,
}

fn source_from_env() -> WheelSource {
    let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
    WheelSource {
        wheel: var("MOCSE_FROST_WHEEL").map(PathBuf::from),
        python: var("MOCSE_PYTHON")
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_else(|| "python3".into()),
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().fold(String::with_capacity(64), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

fn check_hash(file: &TextureFile, bytes: &[u8], origin: &Path) -> Result<()> {
    let actual = sha256_hex(bytes);
    ensure!(
        actual == file.sha256,
        "{} has the wrong content: its SHA-256 is {actual}, expected {} (the {} of the \
         imagecorruptions 1.1.2 wheel)",
        origin.display(),
        file.sha256,
        file.name
    );
    Ok(())
}

/// The five files of `dir`, each checked against its SHA-256; `None` if any is missing.
fn read_verified(dir: &Path) -> Result<Option<Vec<Vec<u8>>>> {
    let mut out = Vec::with_capacity(TEXTURE_FILES.len());
    for file in &TEXTURE_FILES {
        let path = dir.join(file.name);
        let Some(opened) = open_optional_input(&path, "frost texture")? else {
            return Ok(None);
        };
        let bytes = read_bounded(opened, &path, "frost texture", TEXTURE_FILE_LIMIT)?;
        check_hash(file, &bytes, &path).context(
            "refusing a frost texture of the cache (delete it and run again to fetch the right one)",
        )?;
        out.push(bytes);
    }
    Ok(Some(out))
}

/// Fills `dir` from the wheel of `source`, downloading it with pip unless one is given.
fn fetch_into(dir: &Path, source: &WheelSource) -> Result<()> {
    let result = match &source.wheel {
        Some(wheel) => extract_from_wheel(wheel, dir),
        None => {
            eprintln!(
                "mocse: the frost corruption needs 5 photographs from the {WHEEL_REQUIREMENT} wheel on PyPI \
                 (2.1 MB); fetching it with `{} -m pip download` and keeping them in {}",
                source.python,
                dir.display()
            );
            download_wheel(&source.python).and_then(|download| extract_from_wheel(&download.wheel, dir))
        }
    };
    result.map_err(|e| anyhow::anyhow!("{}", manual_steps(dir, &format!("{e:#}"))))
}

/// What to do by hand, after why the automatic fetch failed.
fn manual_steps(dir: &Path, why: &str) -> String {
    let dir = dir.display();
    format!(
        "the frost textures are not in {dir} and could not be fetched: {why}\n\
         To fetch them by hand (needs pip and access to PyPI), run\n    \
         python3 -m pip download {WHEEL_REQUIREMENT} --no-deps --only-binary=:all: -d <download dir>\n\
         (or download imagecorruptions-1.1.2-py3-none-any.whl from \
         https://pypi.org/project/imagecorruptions/1.1.2/#files), then either\n    \
         run again with MOCSE_FROST_WHEEL=<download dir>/imagecorruptions-1.1.2-py3-none-any.whl \
         (mocse copies the textures out of it), or\n    \
         unzip -j <download dir>/imagecorruptions-1.1.2-py3-none-any.whl \
         'imagecorruptions/frost/frost[1-5].*' -d {dir}\n\
         The five files frost1.png, frost2.png, frost3.png, frost4.jpg and frost5.jpg are checked \
         by SHA-256. MOCSE_PYTHON names the Python that runs pip (default python3); MOCSE_CACHE \
         moves the cache."
    )
}

/// A downloaded wheel in a temporary directory, removed on drop.
struct Download {
    dir: PathBuf,
    wheel: PathBuf,
}

impl Drop for Download {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn download_wheel(python: &str) -> Result<Download> {
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    let dir = std::env::temp_dir().join(format!("mocse-frost-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("could not create {}", dir.display()))?;
    let mut download = Download { wheel: PathBuf::new(), dir };
    let output = Command::new(python)
        .args(["-m", "pip", "download", WHEEL_REQUIREMENT, "--no-deps", "--only-binary=:all:", "-d"])
        .arg(&download.dir)
        .env("PIP_DISABLE_PIP_VERSION_CHECK", "1")
        .output()
        .with_context(|| format!("could not run `{python}`"))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(6).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        bail!("`{python} -m pip download` failed ({}):\n{}", output.status, tail.join("\n"));
    }
    let wheel = std::fs::read_dir(&download.dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("imagecorruptions-1.1.2") && n.ends_with(".whl"))
        })
        .with_context(|| {
            format!("pip reported success but left no imagecorruptions wheel in {}", download.dir.display())
        })?;
    download.wheel = wheel;
    Ok(download)
}

/// Copies the five photographs out of `wheel` into `dir`, each checked before it is written.
pub fn extract_from_wheel(wheel: &Path, dir: &Path) -> Result<()> {
    let bytes = read_input(wheel, "wheel", WHEEL_FILE_LIMIT)?;
    let mut archive = zip::ZipArchive::new(Cursor::new(bytes))
        .with_context(|| format!("{} is not a wheel (zip) file", wheel.display()))?;
    let mut contents = Vec::with_capacity(TEXTURE_FILES.len());
    for file in &TEXTURE_FILES {
        let inner = format!("{WHEEL_FOLDER}{}", file.name);
        let mut entry =
            archive.by_name(&inner).with_context(|| format!("{} has no {inner}", wheel.display()))?;
        // The archive's stated sizes are not trusted: a zip bomb or a lying entry is cut off at the
        // limit (every real texture is far below it) before its SHA-256 is even computed.
        ensure!(
            entry.size() <= TEXTURE_FILE_LIMIT,
            "{} says {inner} is {} bytes, more than any frost texture ({TEXTURE_FILE_LIMIT})",
            wheel.display(),
            entry.size()
        );
        let mut data = Vec::with_capacity(entry.size() as usize);
        (&mut entry)
            .take(TEXTURE_FILE_LIMIT + 1)
            .read_to_end(&mut data)
            .with_context(|| format!("could not unpack {inner} from {}", wheel.display()))?;
        ensure!(
            data.len() as u64 <= TEXTURE_FILE_LIMIT,
            "{inner} in {} unpacks to more than {TEXTURE_FILE_LIMIT} bytes",
            wheel.display()
        );
        check_hash(file, &data, &wheel.join(&inner))
            .with_context(|| format!("{} is not the imagecorruptions 1.1.2 wheel", wheel.display()))?;
        contents.push(data);
    }
    std::fs::create_dir_all(dir).with_context(|| format!("could not create {}", dir.display()))?;
    for (file, data) in TEXTURE_FILES.iter().zip(&contents) {
        write_atomic(&dir.join(file.name), data)?;
    }
    Ok(())
}

// ---- decoding ----

/// `cv2.imread` (colour, alpha dropped) then `cv2.resize(fx=fy=0.2)`, returned as RGB. For a
/// factor of exactly 5, OpenCV's bilinear resize samples source coordinate 5 i + 2 with zero
/// weight on its neighbours (§3.11, checked against OpenCV 5.0), so it is point subsampling;
/// the output size is round(size / 5).
fn decode_subsampled(file: &TextureFile, bytes: &[u8]) -> Result<Texture> {
    let (width, height, rgb) =
        if file.name.ends_with(".png") { decode_png(bytes)? } else { decode_jpeg(bytes)? };
    ensure!(
        (width, height) == (file.width, file.height),
        "decoded as {width}x{height}, expected {}x{}",
        file.width,
        file.height
    );
    let (small_w, small_h) = ((width + 2) / 5, (height + 2) / 5);
    let mut small = Vec::with_capacity(small_w * small_h * 3);
    for i in 0..small_h {
        for j in 0..small_w {
            let at = ((5 * i + 2) * width + 5 * j + 2) * 3;
            small.extend_from_slice(&rgb[at..at + 3]);
        }
    }
    Ok(Texture { name: file.name, width: small_w, height: small_h, rgb: small })
}

/// 8-bit RGB of a PNG; alpha is dropped, not composited, as `cv2.imread` does.
fn decode_png(bytes: &[u8]) -> Result<(usize, usize, Vec<u8>)> {
    let mut decoder = png::Decoder::new(Cursor::new(bytes));
    decoder.set_transformations(png::Transformations::EXPAND | png::Transformations::STRIP_16);
    let mut reader = decoder.read_info()?;
    let mut buf = vec![0; reader.output_buffer_size().context("PNG too large")?];
    let info = reader.next_frame(&mut buf)?;
    let (w, h) = (info.width as usize, info.height as usize);
    let channels = match info.color_type {
        png::ColorType::Grayscale => 1,
        png::ColorType::GrayscaleAlpha => 2,
        png::ColorType::Rgb => 3,
        png::ColorType::Rgba => 4,
        other => bail!("unexpected PNG colour type {other:?}"),
    };
    let rgb = buf[..w * h * channels]
        .chunks_exact(channels)
        .flat_map(|p| if channels < 3 { [p[0]; 3] } else { [p[0], p[1], p[2]] })
        .collect();
    Ok((w, h, rgb))
}

fn decode_jpeg(bytes: &[u8]) -> Result<(usize, usize, Vec<u8>)> {
    let mut decoder = jpeg_decoder::Decoder::new(Cursor::new(bytes));
    let pixels = decoder.decode()?;
    let info = decoder.info().context("JPEG without a header")?;
    let rgb = match info.pixel_format {
        jpeg_decoder::PixelFormat::RGB24 => pixels,
        jpeg_decoder::PixelFormat::L8 => pixels.iter().flat_map(|&v| [v; 3]).collect(),
        other => bail!("unexpected JPEG pixel format {other:?}"),
    };
    Ok((usize::from(info.width), usize::from(info.height), rgb))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::philox4x32_10;

    fn synthetic_textures() -> Vec<Texture> {
        // Distinct sizes, so a wrong layout or a swapped width and height shows.
        [(41, 37), (33, 60), (70, 33), (35, 35), (50, 45)]
            .iter()
            .enumerate()
            .map(|(t, &(width, height))| Texture {
                name: TEXTURE_FILES[t].name,
                width,
                height,
                rgb: (0..width * height * 3).map(|i| ((i * 7919 + t * 104_729) % 256) as u8).collect(),
            })
            .collect()
    }

    /// The four Philox words of block `block` of an image's frost stream (src/rng.rs layout).
    fn block(seed: u64, image: u64, severity: u8, block: u32) -> [u32; 4] {
        let index = (image << 16) | ((Corruption::Frost.id() as u64) << 8) | u64::from(severity);
        let counter = [block, crate::rng::Purpose::Corruption.id(), index as u32, (index >> 32) as u32];
        philox4x32_10(counter, [seed as u32, (seed >> 32) as u32])
    }

    fn below(lo: u32, hi: u32, n: usize) -> usize {
        let u = ((u64::from(hi) << 32 | u64::from(lo)) >> 11) as f64 / 9_007_199_254_740_992.0;
        ((u * n as f64) as usize).min(n - 1)
    }

    /// The kernel against an independent host computation, value for value: the draws from
    /// the same stream, and numpy's arithmetic (two products rounded, summed, clipped,
    /// truncated; Rust never fuses them).
    #[test]
    fn kernel_matches_host_formula() {
        let textures = synthetic_textures();
        let n = 40;
        let inputs: Vec<f32> = (0..n * 3072).map(|i| ((i * 31 + i / 7) % 256) as f32).collect();
        let mut devices = vec![Device::Emu];
        if crate::gpu::cuda::probe().is_ok() {
            devices.push(Device::Cuda);
        }
        for device in devices {
            let on_device = DeviceTextures::upload(device, &textures).unwrap();
            let x = Tensor::from_vec(&[n, 32, 32, 3], inputs.clone()).to_device(device).unwrap();
            for severity in 1..=5u8 {
                let key = StreamKey { seed: 11, first_image: 1000 };
                let ours = apply_with(&on_device, &x, severity, key).unwrap().to_host().unwrap();
                let (a, b) = COEFFICIENTS[usize::from(severity - 1)];
                for image in 0..n {
                    let r0 = block(11, 1000 + image as u64, severity, 0);
                    let r1 = block(11, 1000 + image as u64, severity, 1);
                    let t = &textures[below(r0[0], r0[1], 5)];
                    let row0 = below(r0[2], r0[3], t.height - 32);
                    let col0 = below(r1[0], r1[1], t.width - 32);
                    for i in 0..3072 {
                        let (r, c, ch) = (i / 96, i / 3 % 32, i % 3);
                        let f = f64::from(t.rgb[((row0 + r) * t.width + col0 + c) * 3 + ch]);
                        let v = (a * f64::from(inputs[image * 3072 + i]) + b * f).clamp(0.0, 255.0).trunc();
                        assert_eq!(
                            ours[image * 3072 + i],
                            v as f32,
                            "{device} s{severity} image {image} value {i}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn corrupted_cache_file_is_refused_with_both_hashes() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("frost1.png"), b"not a frost image").unwrap();
        let err = format!("{:#}", read_verified(dir.path()).unwrap_err());
        assert!(err.contains(TEXTURE_FILES[0].sha256), "{err}");
        assert!(err.contains(&sha256_hex(b"not a frost image")), "{err}");
        assert!(err.contains("frost1.png") && err.contains("refusing"), "{err}");
        // A missing file is not an error here: it is fetched.
        assert!(read_verified(&dir.path().join("empty")).unwrap().is_none());
    }

    #[test]
    fn failed_fetch_names_the_manual_command() {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("frost");
        let source = WheelSource { wheel: None, python: "/nonexistent/python3".into() };
        let err = format!("{:#}", fetch_into(&cache, &source).unwrap_err());
        for needle in [
            "python3 -m pip download imagecorruptions==1.1.2 --no-deps --only-binary=:all: -d",
            "MOCSE_FROST_WHEEL=",
            "/nonexistent/python3",
            &cache.display().to_string(),
        ] {
            assert!(err.contains(needle), "missing {needle:?} in: {err}");
        }
        assert!(!cache.join("frost1.png").exists());
    }

    #[test]
    fn wheel_with_wrong_files_is_refused() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let wheel = dir.path().join("imagecorruptions-1.1.2-py3-none-any.whl");
        let mut zip = zip::ZipWriter::new(std::fs::File::create(&wheel).unwrap());
        for file in &TEXTURE_FILES {
            zip.start_file(format!("{WHEEL_FOLDER}{}", file.name), zip::write::SimpleFileOptions::default())
                .unwrap();
            zip.write_all(b"tampered").unwrap();
        }
        zip.finish().unwrap();
        let cache = dir.path().join("frost");
        let source = WheelSource { wheel: Some(wheel), python: "python3".into() };
        let err = format!("{:#}", fetch_into(&cache, &source).unwrap_err());
        assert!(err.contains(TEXTURE_FILES[0].sha256) && err.contains(&sha256_hex(b"tampered")), "{err}");
        assert!(!cache.join("frost1.png").exists(), "nothing is written from a bad wheel");
    }

    #[test]
    fn subsampling_takes_the_centre_of_each_5x5_cell() {
        // A 12x8 RGB image whose pixel (r, c) holds (r, c, r + c): the 0.2x image is 2x2 and
        // round(12/5) = 2, round(8/5) = 2 (as cv2.resize sizes it).
        let (w, h) = (12usize, 8usize);
        let rgb: Vec<u8> =
            (0..h).flat_map(|r| (0..w).flat_map(move |c| [r as u8, c as u8, (r + c) as u8])).collect();
        let mut png_bytes = Vec::new();
        {
            let mut enc = png::Encoder::new(&mut png_bytes, w as u32, h as u32);
            enc.set_color(png::ColorType::Rgb);
            enc.set_depth(png::BitDepth::Eight);
            enc.write_header().unwrap().write_image_data(&rgb).unwrap();
        }
        let file = TextureFile { name: "t.png", sha256: "", width: w, height: h };
        let t = decode_subsampled(&file, &png_bytes).unwrap();
        assert_eq!((t.width, t.height), (2, 2));
        assert_eq!(t.rgb, vec![2, 2, 4, 2, 7, 9, 7, 2, 9, 7, 7, 14]);
    }
}
