//! The blur family (CORRUPTIONS.md §3.5-3.9): gaussian, defocus, glass, motion and zoom blur,
//! one kernel each in `kernels/corrupt_blur.cu` (shared helpers in `kernels/corrupt_blur.cuh`).
//! Severity parameters are the CIFAR tables of the reference generator; float64 parameters travel
//! to the kernels as doubles.

use anyhow::{Result, ensure};

use super::{Corruption, StreamKey, per_image};
use crate::device::Device;
use crate::gpu::{self, Arg, GpuBuffer, int};
use crate::tensor::Tensor;

/// gaussian_blur σ (§3.5).
const GAUSSIAN_SIGMA: [f64; 5] = [0.4, 0.6, 0.7, 0.8, 1.0];
/// glass_blur (σ, iterations) (§3.6); max_delta is 1 at every CIFAR severity, which the kernel
/// assumes (it makes each iteration a parallel gather).
const GLASS: [(f64, i32); 5] = [(0.05, 1), (0.25, 1), (0.4, 1), (0.25, 2), (0.4, 2)];
/// defocus_blur (disk radius, alias_blur σ) (§3.7).
const DEFOCUS: [(f32, f64); 5] = [(0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1.0, 0.2), (1.5, 0.1)];
/// motion_blur (radius, sigma) of ImageMagick (§3.8).
const MOTION: [(f64, f64); 5] = [(6.0, 1.0), (6.0, 1.5), (6.0, 2.0), (8.0, 2.0), (9.0, 2.5)];
/// zoom_blur: the stop of np.arange(1, stop, 0.01) (§3.9).
const ZOOM_STOP: [f64; 5] = [1.06, 1.11, 1.16, 1.21, 1.26];

pub(super) fn apply(corruption: Corruption, input: &Tensor, severity: u8, key: StreamKey) -> Result<Tensor> {
    let device = input.device();
    let s = usize::from(severity - 1);
    let out = Tensor::output_on(device, input.shape())?;
    let cfg = per_image(device, input.shape()[0]);
    let (o, i) = (out.arg(), input.arg());
    let [seed, first] = key.args();
    let stream = |c: Corruption| [seed, first, Arg::I32(c.id()), Arg::I32(i32::from(severity))];
    match corruption {
        Corruption::GaussianBlur => {
            let (weights, radius) = gaussian_weights_on(device, GAUSSIAN_SIGMA[s])?;
            gpu::launch(device, "corrupt_gaussian_blur", cfg, &[o, i, weights.arg(), radius])?
        }
        Corruption::GlassBlur => {
            let (sigma, iterations) = GLASS[s];
            let (weights, radius) = gaussian_weights_on(device, sigma)?;
            let mut args = vec![o, i, weights.arg(), radius, Arg::I32(iterations)];
            args.extend(stream(corruption));
            gpu::launch(device, "corrupt_glass_blur", cfg, &args)?
        }
        Corruption::DefocusBlur => {
            let (radius, alias_blur) = DEFOCUS[s];
            let window = defocus_window(&defocus_kernel(radius, alias_blur))?;
            let taps = GpuBuffer::upload(device, &window)?;
            gpu::launch(device, "corrupt_defocus_blur", cfg, &[o, i, taps.arg()])?
        }
        Corruption::MotionBlur => {
            let (radius, sigma) = MOTION[s];
            let mut args = vec![o, i, Arg::F64(radius), Arg::F64(sigma)];
            args.extend(stream(corruption));
            gpu::launch(device, "corrupt_motion_blur", cfg, &args)?
        }
        Corruption::ZoomBlur => {
            gpu::launch(device, "corrupt_zoom_blur", cfg, &[o, i, int(arange_len(1.0, ZOOM_STOP[s], 0.01))])?
        }
        _ => unreachable!("{corruption} is not a blur"),
    }
    Ok(out)
}

/// Largest radius the kernels take (`kMaxGaussRadius` in corrupt_blur.cuh): sigma < 2.125.
const MAX_GAUSS_RADIUS: usize = 8;

/// scipy's one-sided Gaussian weights for `sigma` (truncate 4), w[0] the centre: as
/// `_gaussian_kernel1d`, exp(-0.5 / sigma^2 * x^2) for x = -r..r divided by numpy's sum of
/// them (the first value plus the pairwise sum of the rest: for fewer than 8 a plain loop,
/// else 8 strided partial sums combined as ((0+1)+(2+3))+((4+5)+(6+7)), then the leftovers).
/// Computed on the host with glibc's exp, as the reference generator computes them: a GPU's exp
/// may differ in the last bit, which moves a flat region by one level.
pub(super) fn gaussian_weights(sigma: f64) -> Result<Vec<f64>> {
    let radius = (4.0 * sigma + 0.5) as usize;
    ensure!(radius <= MAX_GAUSS_RADIUS, "a Gaussian of sigma {sigma} is wider than the kernels take");
    let scale = -0.5 / (sigma * sigma);
    let full: Vec<f64> = (-(radius as i64)..=radius as i64).map(|x| (scale * (x * x) as f64).exp()).collect();
    let rest = &full[1..];
    let pairwise = if rest.len() < 8 {
        rest.iter().fold(0.0, |s, v| s + v)
    } else {
        let mut r: [f64; 8] = rest[..8].try_into().expect("8 values");
        let whole = rest.len() / 8 * 8;
        for chunk in rest[8..whole].chunks_exact(8) {
            r.iter_mut().zip(chunk).for_each(|(a, v)| *a += v);
        }
        let s = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
        rest[whole..].iter().fold(s, |s, v| s + v)
    };
    let total = full[0] + pairwise;
    Ok(full[radius..].iter().map(|w| w / total).collect())
}

/// `gaussian_weights` on the device, and its radius as a kernel argument.
pub(super) fn gaussian_weights_on(device: Device, sigma: f64) -> Result<(GpuBuffer, Arg)> {
    let weights = gaussian_weights(sigma)?;
    Ok((GpuBuffer::upload(device, &weights)?, int(weights.len() - 1)))
}

/// The length of np.arange(start, stop, step): ceil((stop - start) / step) in float64, which
/// makes the zoom lists include their stop at severities 1-2 and exclude it at 3-5.
fn arange_len(start: f64, stop: f64, step: f64) -> usize {
    ((stop - start) / step).ceil() as usize
}

/// Side of the reference's defocus kernel grid (offsets -8..8, for radius <= 8).
const DISK_SIDE: usize = 17;
/// Half side of the window passed to the kernel (`kDefocusHalf` in corrupt_blur.cu).
const WINDOW_HALF: usize = 2;

/// The reference's `disk(radius, alias_blur)` as float32, computed as numpy and OpenCV do: the
/// indicator of x² + y² <= r² on the 17x17 grid divided by its count, then cv2.GaussianBlur with
/// a 3x3 kernel (cv2.getGaussianKernel: float64 weights exp(-x² / (2σ²)) normalised, cast to
/// float32), separable in float32, rows then columns, BORDER_REFLECT_101. Each pass computes
/// centre * g1 + (left + right) * g0, which reproduces OpenCV's values bit for bit.
fn defocus_kernel(radius: f32, alias_blur: f64) -> Vec<f32> {
    let n = DISK_SIDE;
    let half = (n / 2) as i32;
    let inside = |i: usize, j: usize| {
        let (y, x) = (i as i32 - half, j as i32 - half);
        ((x * x + y * y) as f32) <= radius * radius
    };
    let count = (0..n * n).filter(|&k| inside(k / n, k % n)).count() as f32;
    let disk: Vec<f32> = (0..n * n).map(|k| if inside(k / n, k % n) { 1.0 / count } else { 0.0 }).collect();

    let scale = -0.5 / (alias_blur * alias_blur);
    let raw = [-1.0f64, 0.0, 1.0].map(|x| (scale * x * x).exp());
    let total = 1.0 / (raw[0] + raw[1] + raw[2]);
    let g: Vec<f32> = raw.iter().map(|t| (t * total) as f32).collect();

    let reflect = |i: i32| -> usize {
        let m = n as i32;
        (if i < 0 {
            -i
        } else if i >= m {
            2 * m - 2 - i
        } else {
            i
        }) as usize
    };
    let smooth = |left: f32, centre: f32, right: f32| centre * g[1] + (left + right) * g[0];
    let mut rows = vec![0f32; n * n];
    for y in 0..n {
        for x in 0..n {
            let at = |dx: i32| disk[y * n + reflect(x as i32 + dx)];
            rows[y * n + x] = smooth(at(-1), at(0), at(1));
        }
    }
    let mut out = vec![0f32; n * n];
    for y in 0..n {
        for x in 0..n {
            let at = |dy: i32| rows[reflect(y as i32 + dy) * n + x];
            out[y * n + x] = smooth(at(-1), at(0), at(1));
        }
    }
    out
}

/// The central (2·WINDOW_HALF+1)² window of the 17x17 kernel; every tap outside it must be zero
/// (true for all CIFAR radii: the disk spans ±1 and the 3x3 smoothing one more).
fn defocus_window(kernel: &[f32]) -> Result<Vec<f32>> {
    let centre = DISK_SIDE / 2;
    let mut window = Vec::new();
    for y in 0..DISK_SIDE {
        for x in 0..DISK_SIDE {
            let v = kernel[y * DISK_SIDE + x];
            if y.abs_diff(centre) <= WINDOW_HALF && x.abs_diff(centre) <= WINDOW_HALF {
                window.push(v);
            } else {
                ensure!(v == 0.0, "defocus kernel tap ({y}, {x}) = {v} lies outside the 5x5 window");
            }
        }
    }
    Ok(window)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// scipy's weights: radius int(4 sigma + 0.5), w[k] proportional to exp(-k^2 / (2 sigma^2)),
    /// the whole symmetric kernel summing to 1; a sigma past the kernels' radius is refused.
    #[test]
    fn gaussian_weights_are_scipys() {
        for sigma in GAUSSIAN_SIGMA.iter().chain(&[0.05, 0.25, 0.5]) {
            let w = gaussian_weights(*sigma).unwrap();
            assert_eq!(w.len() - 1, (4.0 * sigma + 0.5) as usize);
            let total = w[0] + 2.0 * w[1..].iter().sum::<f64>();
            assert!((total - 1.0).abs() < 1e-15, "sigma {sigma}: sum {total}");
            for (k, v) in w.iter().enumerate() {
                let expected = w[0] * (-((k * k) as f64) / (2.0 * sigma * sigma)).exp();
                assert!((v - expected).abs() <= 1e-15, "sigma {sigma}, tap {k}");
            }
        }
        assert!(gaussian_weights(2.1).is_ok() && gaussian_weights(2.125).is_err());
    }

    #[test]
    fn zoom_factor_counts_follow_numpy_arange() {
        // §3.9: the stop is included at severities 1-2 and excluded at 3-5.
        let counts: Vec<usize> = ZOOM_STOP.iter().map(|&stop| arange_len(1.0, stop, 0.01)).collect();
        assert_eq!(counts, [7, 12, 16, 21, 26]);
    }

    #[test]
    fn defocus_kernels_have_the_documented_shapes() {
        // §3.7: severities 1-3 are 3x3 Gaussians [w, 1-2w, w]^2, 4 a plus of 0.2, 5 a 3x3 box.
        let c = DISK_SIDE / 2;
        for (s, w) in [(0, 0.0404), (1, 0.1065), (2, 0.1664)] {
            let k = defocus_kernel(DEFOCUS[s].0, DEFOCUS[s].1);
            let at = |dy: usize, dx: usize| f64::from(k[(c + dy - 1) * DISK_SIDE + c + dx - 1]);
            assert!((at(1, 0) - w * (1.0 - 2.0 * w)).abs() < 2e-4, "severity {}: {}", s + 1, at(1, 0));
            assert!((at(0, 0) - w * w).abs() < 2e-4);
        }
        let plus = defocus_kernel(DEFOCUS[3].0, DEFOCUS[3].1);
        assert!(
            (plus[c * DISK_SIDE + c] - 0.2).abs() < 1e-5 && (plus[c * DISK_SIDE + c + 1] - 0.2).abs() < 1e-4
        );
        let sum: f64 = plus.iter().map(|&v| f64::from(v)).sum();
        assert!((sum - 1.0).abs() < 1e-6);
        let boxed = defocus_kernel(DEFOCUS[4].0, DEFOCUS[4].1);
        assert!((boxed[(c - 1) * DISK_SIDE + c - 1] - 1.0 / 9.0).abs() < 1e-7);
        for (radius, alias_blur) in DEFOCUS {
            assert_eq!(defocus_window(&defocus_kernel(radius, alias_blur)).unwrap().len(), 25);
        }
    }
}
