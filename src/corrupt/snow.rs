//! snow (CORRUPTIONS.md §3.10), one kernel in `kernels/corrupt_snow.cu` built from the blur
//! family's helpers (clipped_zoom and the ImageMagick motion blur of `kernels/corrupt_blur.cuh`).

use anyhow::Result;

use super::{Corruption, StreamKey, per_image};
use crate::gpu::{self, Arg};
use crate::tensor::Tensor;

/// The CIFAR tuple of the reference generator per severity.
struct Snow {
    mean: f64,
    std: f64,
    zoom: f64,
    threshold: f64,
    blur_radius: f64,
    blur_sigma: f64,
    blend: f64,
}

const fn snow(
    mean: f64,
    std: f64,
    zoom: f64,
    threshold: f64,
    blur_radius: f64,
    blur_sigma: f64,
    blend: f64,
) -> Snow {
    Snow { mean, std, zoom, threshold, blur_radius, blur_sigma, blend }
}

const SNOW: [Snow; 5] = [
    snow(0.1, 0.2, 1.0, 0.6, 8.0, 3.0, 0.95),
    snow(0.1, 0.2, 1.0, 0.5, 10.0, 4.0, 0.9),
    snow(0.15, 0.3, 1.75, 0.55, 10.0, 4.0, 0.9),
    snow(0.25, 0.3, 2.25, 0.6, 12.0, 6.0, 0.85),
    snow(0.3, 0.3, 1.25, 0.65, 14.0, 12.0, 0.8),
];

pub(super) fn apply(input: &Tensor, severity: u8, key: StreamKey) -> Result<Tensor> {
    let device = input.device();
    let p = &SNOW[usize::from(severity - 1)];
    let out = Tensor::output_on(device, input.shape())?;
    let [seed, first] = key.args();
    let args = [
        out.arg(),
        input.arg(),
        Arg::F64(p.mean),
        Arg::F64(p.std),
        Arg::F64(p.zoom),
        Arg::F64(p.threshold),
        Arg::F64(p.blur_radius),
        Arg::F64(p.blur_sigma),
        Arg::F64(p.blend),
        Arg::F64(1.0 - p.blend),
        seed,
        first,
        Arg::I32(Corruption::Snow.id()),
        Arg::I32(i32::from(severity)),
    ];
    gpu::launch(device, "corrupt_snow", per_image(device, input.shape()[0]), &args)?;
    Ok(out)
}
