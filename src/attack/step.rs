//! The device operations of an attack, on images [B, ...] in [0, 1] (each image's values
//! contiguous): the random start inside the eps-ball and the fused projected-gradient step.
//! Kernels `attack_random_start_f32` and `pgd_step_f32` (kernels/attack.cu) on cuda and emu;
//! the cpu device runs the twins below, value for value the same arithmetic (the L2 sums in
//! f64, in a different order).

use anyhow::{Result, ensure};
use rayon::prelude::*;

use crate::attack::Norm;
use crate::device::Device;
use crate::gpu::{self, Arg, GpuBuffer, LaunchConfig, int};
use crate::rng::{Philox, Purpose};
use crate::tensor::Tensor;

/// Threads per block of the attack kernels: one block per image.
const THREADS: u32 = 256;

fn launch_per_image(batch: usize) -> LaunchConfig {
    LaunchConfig::new([batch as u32, 1, 1], [THREADS, 1, 1])
}

/// Image b's random stream for `restart`: keyed by the image's index in its data set, so a
/// start does not depend on the batch the image is in.
fn stream(seed: u64, image: u32, restart: u32) -> Philox {
    Philox::new(seed, Purpose::Attack, (u64::from(restart) << 32) | u64::from(image))
}

/// `x` plus a random point of the eps-ball, clamped to [0, 1]: L-infinity, uniform per value;
/// L2, a uniformly random direction at a length uniform in [0, eps]. `image_index[b]` is image
/// b's index in its data set.
pub fn random_start(
    x: &Tensor,
    image_index: &[u32],
    eps: f32,
    norm: Norm,
    seed: u64,
    restart: u32,
) -> Result<Tensor> {
    let batch = x.shape()[0];
    ensure!(
        image_index.len() == batch,
        "random start: {} image indices for {batch} images",
        image_index.len()
    );
    let per_image = x.len() / batch.max(1);
    let device = x.device();
    if device != Device::Cpu {
        let out = Tensor::output_on(device, x.shape())?;
        let index: Vec<i32> = image_index.iter().map(|&i| i as i32).collect();
        let index = GpuBuffer::upload(device, &index)?;
        let args = [
            out.arg(),
            x.arg(),
            index.arg(),
            int(per_image),
            Arg::F32(eps),
            Arg::I32((norm == Norm::L2) as i32),
            Arg::U64(seed),
            Arg::I32(restart as i32),
        ];
        gpu::launch(device, "attack_random_start_f32", launch_per_image(batch), &args)?;
        return Ok(out);
    }
    let mut out = vec![0.0f32; x.len()];
    out.par_chunks_mut(per_image).zip(x.as_slice().par_chunks(per_image)).zip(image_index).for_each(
        |((out, x), &image)| {
            let mut rng = stream(seed, image, restart);
            match norm {
                Norm::Linf => {
                    for (o, &v) in out.iter_mut().zip(x) {
                        *o = (v + eps * (2.0 * rng.uniform() - 1.0)).clamp(0.0, 1.0);
                    }
                }
                Norm::L2 => {
                    // Box-Muller, two values per pair of words, as the kernel.
                    let mut sum_sq = 0.0f64;
                    for pair in out.chunks_mut(2) {
                        let u1 = 1.0 - rng.uniform();
                        let u2 = rng.uniform();
                        let radius = (-2.0 * u1.ln()).sqrt();
                        let angle = std::f32::consts::TAU * u2;
                        pair[0] = radius * angle.cos();
                        if pair.len() > 1 {
                            pair[1] = radius * angle.sin();
                        }
                        sum_sq += pair.iter().map(|&g| f64::from(g) * f64::from(g)).sum::<f64>();
                    }
                    // The length comes from the first word of the block after the directions.
                    for _ in per_image.next_multiple_of(2)..per_image.next_multiple_of(4) {
                        rng.next_u32();
                    }
                    let u = rng.uniform();
                    let scale = if sum_sq > 0.0 {
                        (f64::from(eps) * f64::from(u) / sum_sq.sqrt()) as f32
                    } else {
                        0.0
                    };
                    for (o, &v) in out.iter_mut().zip(x) {
                        *o = (v + scale * *o).clamp(0.0, 1.0);
                    }
                }
            }
        },
    );
    Ok(Tensor::from_vec(x.shape(), out))
}

/// One projected-gradient step: L-infinity, `x_adv + alpha * sign(grad)` clipped to
/// `x +- eps`; L2, `x_adv + alpha * grad / |grad|` (no step for a zero gradient) with the
/// perturbation scaled back to length eps when longer; then clamped to [0, 1]. Per image.
pub fn pgd_step(
    x_adv: &Tensor,
    grad: &Tensor,
    x: &Tensor,
    alpha: f32,
    eps: f32,
    norm: Norm,
) -> Result<Tensor> {
    ensure!(
        x_adv.shape() == x.shape() && grad.shape() == x.shape(),
        "pgd step: adversarial images {:?}, gradient {:?} and images {:?} differ",
        x_adv.shape(),
        grad.shape(),
        x.shape()
    );
    let batch = x.shape()[0];
    let per_image = x.len() / batch.max(1);
    let device = x.device();
    if device != Device::Cpu {
        let out = Tensor::output_on(device, x.shape())?;
        let args = [
            out.arg(),
            x_adv.arg(),
            grad.arg(),
            x.arg(),
            int(per_image),
            Arg::F32(alpha),
            Arg::F32(eps),
            Arg::I32((norm == Norm::L2) as i32),
        ];
        gpu::launch(device, "pgd_step_f32", launch_per_image(batch), &args)?;
        return Ok(out);
    }
    let mut out = vec![0.0f32; x.len()];
    let inputs = x_adv.as_slice().par_chunks(per_image).zip(grad.as_slice().par_chunks(per_image));
    out.par_chunks_mut(per_image).zip(inputs).zip(x.as_slice().par_chunks(per_image)).for_each(
        |((out, (adv, grad)), x)| match norm {
            Norm::Linf => {
                for (((o, &a), &g), &v) in out.iter_mut().zip(adv).zip(grad).zip(x) {
                    let sign = if g > 0.0 {
                        1.0
                    } else if g < 0.0 {
                        -1.0
                    } else {
                        0.0
                    };
                    *o = (a + alpha * sign).max(v - eps).min(v + eps).clamp(0.0, 1.0);
                }
            }
            Norm::L2 => {
                let g_sq: f64 = grad.iter().map(|&g| f64::from(g) * f64::from(g)).sum();
                let step = if g_sq > 0.0 { (f64::from(alpha) / g_sq.sqrt()) as f32 } else { 0.0 };
                let mut d_sq = 0.0f64;
                for (((o, &a), &g), &v) in out.iter_mut().zip(adv).zip(grad).zip(x) {
                    *o = a + step * g - v;
                    d_sq += f64::from(*o) * f64::from(*o);
                }
                let eps2 = f64::from(eps) * f64::from(eps);
                let shrink = if d_sq > eps2 { (f64::from(eps) / d_sq.sqrt()) as f32 } else { 1.0 };
                for (o, &v) in out.iter_mut().zip(x) {
                    *o = (v + shrink * *o).clamp(0.0, 1.0);
                }
            }
        },
    );
    Ok(Tensor::from_vec(x.shape(), out))
}
