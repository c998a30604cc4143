//! The noise corruptions (CORRUPTIONS.md §3.1-3.4): gaussian, shot, impulse and speckle noise,
//! one independent draw per element from the image's Philox stream (`kernels/corrupt_noise.cu`).

use anyhow::{Result, bail};

use super::{Corruption, StreamKey, per_image};
use crate::gpu::{self, Arg};
use crate::tensor::Tensor;

/// Gaussian noise: standard deviation on the [0, 1] scale, per severity.
const GAUSSIAN_SIGMA: [f64; 5] = [0.04, 0.06, 0.08, 0.09, 0.10];
/// Shot noise: photons per unit intensity (the Poisson mean is x * c), per severity.
const SHOT_PHOTONS: [f64; 5] = [500.0, 250.0, 100.0, 75.0, 50.0];
/// Impulse noise: fraction of elements replaced by salt or pepper, per severity.
const IMPULSE_AMOUNT: [f64; 5] = [0.01, 0.02, 0.03, 0.05, 0.07];
/// Speckle noise: standard deviation of the multiplicative noise, per severity.
const SPECKLE_SIGMA: [f64; 5] = [0.06, 0.10, 0.12, 0.16, 0.20];

pub(super) fn apply(corruption: Corruption, input: &Tensor, severity: u8, key: StreamKey) -> Result<Tensor> {
    let config = per_image(input.device(), input.shape()[0]);
    let level = usize::from(severity - 1);
    let (kernel, parameter) = match corruption {
        Corruption::GaussianNoise => ("corrupt_gaussian_noise", GAUSSIAN_SIGMA[level]),
        Corruption::ShotNoise => ("corrupt_shot_noise", SHOT_PHOTONS[level]),
        Corruption::ImpulseNoise => ("corrupt_impulse_noise", IMPULSE_AMOUNT[level]),
        Corruption::SpeckleNoise => ("corrupt_speckle_noise", SPECKLE_SIGMA[level]),
        other => bail!("{other} is not a noise corruption"),
    };
    let device = input.device();
    let out = Tensor::output_on(device, input.shape())?;
    let [seed, first_image] = key.args();
    let args = [
        out.arg(),
        input.arg(),
        Arg::F64(parameter),
        Arg::I32(corruption.id()),
        Arg::I32(i32::from(severity)),
        seed,
        first_image,
    ];
    gpu::launch(device, kernel, config, &args)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::Device;

    /// The Poisson sampler's first two moments on flat images, in both of its regimes
    /// (inversion below mean 10, rejection from 10 on). The reference test sees them only
    /// through clipping and truncation on real images.
    #[test]
    fn shot_noise_counts_have_poisson_moments() {
        let photons = SHOT_PHOTONS[4];
        // At 50 photons the output step 255/50 = 5.1 exceeds 1, so truncation keeps the count.
        for level in [25u8, 51, 127] {
            let n = 8;
            let x = Tensor::from_vec(&[n, 32, 32, 3], vec![f32::from(level); n * 3072]);
            let y =
                super::super::corrupt(&x, Corruption::ShotNoise, 5, StreamKey { seed: 7, first_image: 0 })
                    .unwrap()
                    .to_device(Device::Cpu)
                    .unwrap();
            let counts: Vec<f64> =
                y.as_slice().iter().map(|&v| (f64::from(v) * photons / 255.0).round()).collect();
            let samples = counts.len() as f64;
            let mean = counts.iter().sum::<f64>() / samples;
            let variance = counts.iter().map(|k| (k - mean).powi(2)).sum::<f64>() / (samples - 1.0);
            let expected = f64::from(level) / 255.0 * photons;
            // Standard errors: sqrt(mean / n) for the mean, about sqrt(2 / n) relative for the
            // variance (n = 24576); the bounds are over four of them.
            assert!(
                (mean - expected).abs() < 4.0 * (expected / samples).sqrt(),
                "level {level}: mean {mean} vs {expected}"
            );
            assert!(
                (variance / expected - 1.0).abs() < 0.04,
                "level {level}: variance {variance} vs {expected}"
            );
        }
    }
}
