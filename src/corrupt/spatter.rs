//! spatter (CORRUPTIONS.md §3.19): a blurred, thresholded normal field turned into water drops
//! (severities 1-3: Canny edges, distance transform, equalised and embossed) or mud (4-5).
//! `kernels/corrupt_spatter.cu` does every step on the device, one block per image.

use anyhow::Result;

use super::blur::gaussian_weights_on;
use super::{Corruption, StreamKey, per_image};
use crate::gpu::{self, Arg};
use crate::tensor::Tensor;

/// Per severity 1..5 (CIFAR values): (mean, std, sigma, threshold, intensity or mud sigma, mode),
/// mode 0 = water, 1 = mud.
const PARAMS: [(f64, f64, f64, f64, f64, i32); 5] = [
    (0.62, 0.1, 0.7, 0.7, 0.5, 0),
    (0.65, 0.1, 0.8, 0.7, 0.5, 0),
    (0.65, 0.3, 1.0, 0.69, 0.5, 0),
    (0.65, 0.1, 0.7, 0.69, 0.6, 1),
    (0.65, 0.1, 0.5, 0.68, 0.6, 1),
];

pub(super) fn apply(input: &Tensor, severity: u8, key: StreamKey) -> Result<Tensor> {
    let device = input.device();
    let n = input.shape()[0];
    let out = Tensor::output_on(device, input.shape())?;
    let (mean, std, sigma, threshold, intensity, mode) = PARAMS[usize::from(severity - 1)];
    let [seed, first_image] = key.args();
    let (sigma_weights, sigma_radius) = gaussian_weights_on(device, sigma)?;
    // Water reads no mud weights; the intensity then is no sigma.
    let mud_sigma = if mode == 1 { intensity } else { sigma };
    let (mud_weights, mud_radius) = gaussian_weights_on(device, mud_sigma)?;
    gpu::launch(
        device,
        "corrupt_spatter",
        per_image(device, n),
        &[
            out.arg(),
            input.arg(),
            Arg::F64(mean),
            Arg::F64(std),
            sigma_weights.arg(),
            sigma_radius,
            Arg::F64(threshold),
            Arg::F64(intensity),
            mud_weights.arg(),
            mud_radius,
            Arg::I32(mode),
            seed,
            first_image,
            Arg::I32(Corruption::Spatter.id()),
            Arg::I32(i32::from(severity)),
        ],
    )?;
    Ok(out)
}
