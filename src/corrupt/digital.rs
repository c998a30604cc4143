//! The digital corruptions (CORRUPTIONS.md §3.13-3.15, 3.17, 3.18): brightness, contrast,
//! saturate, pixelate and the elastic transform (`kernels/corrupt_digital.cu`). All but the
//! elastic transform are deterministic and repeat the reference's arithmetic exactly.

use anyhow::{Result, bail};

use super::{Corruption, StreamKey, per_image};
use crate::gpu::{self, Arg};
use crate::tensor::Tensor;

/// Brightness: added to the HSV value, per severity.
const BRIGHTNESS_DELTA: [f64; 5] = [0.05, 0.1, 0.15, 0.2, 0.3];
/// Contrast: factor applied to the distance from the per-channel mean, per severity.
const CONTRAST_FACTOR: [f64; 5] = [0.75, 0.5, 0.4, 0.3, 0.15];
/// Saturate: (scale, offset) of the HSV saturation, per severity (not monotone, §3.15).
const SATURATE_SCALE_OFFSET: [(f64, f64); 5] = [(0.3, 0.0), (0.1, 0.0), (1.5, 0.0), (2.0, 0.1), (2.5, 0.2)];
/// Pixelate: the reference's factors; the intermediate size is int(32 * factor).
const PIXELATE_FACTOR: [f64; 5] = [0.95, 0.9, 0.85, 0.75, 0.65];
/// The reference's image size for the elastic parameters, which it gives as multiples of it.
const ELASTIC_IMSIZE: f64 = 32.0;
/// Elastic: (alpha = displacement gain, sigma = smoothing, affine jitter) as fractions of the
/// image size, per severity.
const ELASTIC_FRACTIONS: [(f64, f64, f64); 5] =
    [(0.0, 0.0, 0.08), (0.05, 0.2, 0.07), (0.08, 0.06, 0.06), (0.1, 0.04, 0.05), (0.1, 0.03, 0.03)];

/// int(32 * factor): truncation, so 28.8 gives 28 (§3.17).
fn pixelate_size(severity: u8) -> i32 {
    (32.0 * PIXELATE_FACTOR[usize::from(severity - 1)]) as i32
}

pub(super) fn apply(corruption: Corruption, input: &Tensor, severity: u8, key: StreamKey) -> Result<Tensor> {
    let config = per_image(input.device(), input.shape()[0]);
    let level = usize::from(severity - 1);
    let device = input.device();
    let out = Tensor::output_on(device, input.shape())?;
    let [seed, first_image] = key.args();
    let (kernel, args) = match corruption {
        Corruption::Brightness => {
            ("corrupt_brightness", vec![out.arg(), input.arg(), Arg::F64(BRIGHTNESS_DELTA[level])])
        }
        Corruption::Contrast => {
            ("corrupt_contrast", vec![out.arg(), input.arg(), Arg::F64(CONTRAST_FACTOR[level])])
        }
        Corruption::Saturate => {
            let (scale, offset) = SATURATE_SCALE_OFFSET[level];
            ("corrupt_saturate", vec![out.arg(), input.arg(), Arg::F64(scale), Arg::F64(offset)])
        }
        Corruption::Pixelate => {
            ("corrupt_pixelate", vec![out.arg(), input.arg(), Arg::I32(pixelate_size(severity))])
        }
        Corruption::ElasticTransform => {
            let (alpha, sigma, jitter) = ELASTIC_FRACTIONS[level];
            let args = vec![
                out.arg(),
                input.arg(),
                Arg::F64(ELASTIC_IMSIZE * alpha),
                Arg::F64(ELASTIC_IMSIZE * sigma),
                Arg::F64(ELASTIC_IMSIZE * jitter),
                Arg::I32(corruption.id()),
                Arg::I32(i32::from(severity)),
                seed,
                first_image,
            ];
            ("corrupt_elastic_transform", args)
        }
        other => bail!("{other} is not a digital corruption"),
    };
    gpu::launch(device, kernel, config, &args)?;
    Ok(out)
}
