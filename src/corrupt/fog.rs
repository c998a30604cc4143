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
    gpu::launch(
        device,
        "corrupt_fog",
        per_image(device, n),
        &[
            out.arg(),
            input.arg(),
            Arg::F64(strength),
            Arg::F64(decay),
            seed,
            first_image,
            Arg::I32(Corruption::Fog.id()),
            Arg::I32(i32::from(severity)),
        ],
    )?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::Device;
    use crate::rng::{Philox, Purpose};

    /// The reference's plasma_fractal written the way numpy computes it (whole-grid sums with
    /// wrap-around rolls, one level at a time), drawing its uniforms in order from the image's
    /// stream: an independent formulation of the kernel's per-point index arithmetic.
    fn plasma_fractal(decay: f64, rng: &mut Philox) -> Vec<f64> {
        const SIZE: usize = 32;
        let mut map = vec![0.0f64; SIZE * SIZE];
        let (mut step, mut wibble) = (SIZE, 100.0f64);
        while step >= 2 {
            let (n, half) = (SIZE / step, step / 2);
            let grid = |map: &[f64], r0: usize, c0: usize| -> Vec<f64> {
                (0..n * n).map(|k| map[(r0 + (k / n) * step) * SIZE + c0 + (k % n) * step]).collect()
            };
            // np.roll(a, shift, axis) on an n x n grid: element (i, j) takes (i - shift, j) or
            // (i, j - shift), wrapping.
            let roll = |a: &[f64], shift: isize, axis: usize| -> Vec<f64> {
                let w = |i: usize| (i as isize - shift).rem_euclid(n as isize) as usize;
                (0..n * n)
                    .map(|k| if axis == 0 { a[w(k / n) * n + k % n] } else { a[k / n * n + w(k % n)] })
                    .collect()
            };
            let add = |a: &[f64], b: &[f64]| -> Vec<f64> { a.iter().zip(b).map(|(x, y)| x + y).collect() };
            let fill = |map: &mut Vec<f64>, sums: Vec<f64>, r0: usize, c0: usize, rng: &mut Philox| {
                for (k, s) in sums.into_iter().enumerate() {
                    let u = -wibble + 2.0 * wibble * rng.uniform_f64();
                    map[(r0 + (k / n) * step) * SIZE + c0 + (k % n) * step] = s / 4.0 + wibble * u;
                }
            };
            let corners = grid(&map, 0, 0);
            let accum = add(&corners, &roll(&corners, -1, 0));
            fill(&mut map, add(&accum, &roll(&accum, -1, 1)), half, half, rng);
            let (centres, corners) = (grid(&map, half, half), grid(&map, 0, 0));
            let top = add(&add(&centres, &roll(&centres, 1, 0)), &add(&corners, &roll(&corners, -1, 1)));
            let left = add(&add(&centres, &roll(&centres, 1, 1)), &add(&corners, &roll(&corners, -1, 0)));
            fill(&mut map, top, 0, half, rng);
            fill(&mut map, left, half, 0, rng);
            step /= 2;
            wibble /= decay;
        }
        let lo = map.iter().copied().fold(f64::INFINITY, f64::min);
        map.iter_mut().for_each(|v| *v -= lo);
        let hi = map.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        map.iter().map(|v| v / hi).collect()
    }

    #[test]
    fn kernel_matches_the_reference_formulation_on_the_same_draws() {
        let n = 3;
        let mut rng = Philox::new(7, Purpose::Corruption, 0);
        let pixels: Vec<f32> = (0..n * 32 * 32 * 3).map(|_| (rng.next_u32() % 256) as f32).collect();
        let input = Tensor::from_vec(&[n, 32, 32, 3], pixels.clone()).to_device(Device::Emu).unwrap();
        let key = StreamKey { seed: 11, first_image: 40 };
        for severity in 1..=5u8 {
            let ours = apply(&input, severity, key).unwrap().to_host().unwrap();
            let (strength, decay) = PARAMS[usize::from(severity - 1)];
            for image in 0..n {
                let global = key.first_image + image as u64;
                let index = (global << 16) | ((Corruption::Fog.id() as u64) << 8) | u64::from(severity);
                let fractal = plasma_fractal(decay, &mut Philox::new(key.seed, Purpose::Corruption, index));
                let x = &pixels[image * 3072..(image + 1) * 3072];
                let max_val = x.iter().copied().fold(0.0f32, f32::max) as f64 / 255.0;
                for (i, &v) in x.iter().enumerate() {
                    let blended =
                        (v as f64 / 255.0 + strength * fractal[i / 3]) * max_val / (max_val + strength);
                    let expected = (blended.clamp(0.0, 1.0) * 255.0) as u8 as f32;
                    assert_eq!(
                        ours[image * 3072 + i],
                        expected,
                        "severity {severity} image {image} value {i}"
                    );
                }
            }
        }
    }
}
