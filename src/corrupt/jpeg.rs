//! jpeg_compression (CORRUPTIONS.md §3.16): a baseline 4:2:0 JPEG encode and decode at Pillow's
//! quality q, done entirely on the device by `kernels/corrupt_jpeg.cu`, which repeats the integer
//! arithmetic of libjpeg-turbo (the codec Pillow bundles) so the result matches the reference
//! value for value.

use anyhow::Result;

use super::per_image;
use crate::gpu::{self, Arg};
use crate::tensor::Tensor;

/// Pillow quality per severity 1..5 (CIFAR values).
const QUALITY: [i32; 5] = [80, 65, 58, 50, 40];

pub(super) fn apply(input: &Tensor, severity: u8) -> Result<Tensor> {
    let device = input.device();
    let n = input.shape()[0];
    let out = Tensor::output_on(device, input.shape())?;
    let quality = QUALITY[usize::from(severity - 1)];
    gpu::launch(
        device,
        "corrupt_jpeg_compression",
        per_image(device, n),
        &[out.arg(), input.arg(), Arg::I32(quality)],
    )?;
    Ok(out)
}
