//! fog (CORRUPTIONS.md §3.12): a diamond-square plasma fractal (mapsize 32) added to the image,
//! which is then rescaled so that its maximum stays below 1. `kernels/corrupt_fog.cu` builds
//! each image's fractal from its own 1023 uniforms on the device.

use anyhow::Result;

use super::{Corruption, StreamKey, per_image};
use crate::gpu::{self, Arg};
use crate::tensor::Tensor;

/// (strength, wibble decay) per severity 1..5 (CIFAR values).
const PARAMS: [(f64, f64); 5] = [(0.2, 3.0), (0.5, 3.0), (0.75, 2.5), (1.0, 2.0), (1.5, 1.75)];

pub(super) fn apply(input: &Tensor, severity: u8, key: StreamKey) -> Result<Tensor> {
    let device = input.device();
    let n = input.shape()[0];
    let out = Tensor::output_on(device, input.shape())?;
    let (strength, decay) = PARAMS[usize::from(severity - 1)];
    let [seed, first_image] = key.args();
    // f64 parameters travel as their bits (the kernels take `unsigned long long`).
    gpu::launch(
        device,
        "corrupt_fog",
        per_image(device, n),
        &[
            out.arg(),
            input.arg(),
            Arg::U64(strength.to_bits()),
            Arg::U64(decay.to_bits()),
            seed,
            first_image,
            Arg::I32(Corruption::Fog.id()),
            Arg::I32(i32::from(severity)),
        ],
    )?;
    Ok(out)
}
