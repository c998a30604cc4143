//! The device operations of an attack, on images [B, ...] in [0, 1] (each image's values
//! contiguous): the random start inside the eps-ball, the fused projected-gradient step, APGD's
//! momentum step with a step size per image, and a per-image select. Kernels
//! `attack_random_start_f32`, `pgd_step_f32`, `apgd_step_f32` and `select_images_f32`
//! (kernels/attack.cu) on cuda and emu; the cpu device runs the twins below, value for value the
//! same arithmetic (the L2 sums in f64, in a different order).

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
    let kind = match norm {
        Norm::Linf => StartKind::Linf,
        Norm::L2 => StartKind::L2,
    };
    start_point(x, image_index, eps, kind, seed, restart)
}

/// `x` plus Gaussian noise of standard deviation `sigma` per value, clamped to [0, 1] (the start
/// of TRADES's inner maximisation).
pub fn gaussian_start(
    x: &Tensor,
    image_index: &[u32],
    sigma: f32,
    seed: u64,
    restart: u32,
) -> Result<Tensor> {
    start_point(x, image_index, sigma, StartKind::Gaussian, seed, restart)
}

/// The kernel's `kind`.
#[derive(Clone, Copy, PartialEq)]
enum StartKind {
    Linf = 0,
    L2 = 1,
    Gaussian = 2,
}

fn start_point(
    x: &Tensor,
    image_index: &[u32],
    eps: f32,
    kind: StartKind,
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
            Arg::I32(kind as i32),
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
            match kind {
                StartKind::Linf => {
                    for (o, &v) in out.iter_mut().zip(x) {
                        *o = (v + eps * (2.0 * rng.uniform() - 1.0)).clamp(0.0, 1.0);
                    }
                }
                StartKind::L2 | StartKind::Gaussian => {
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
                    if kind == StartKind::Gaussian {
                        for (o, &v) in out.iter_mut().zip(x) {
                            *o = (v + eps * *o).clamp(0.0, 1.0);
                        }
                        return;
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
        |((out, (adv, grad)), x)| {
            let step = match norm {
                Norm::Linf => alpha,
                Norm::L2 => {
                    let g_sq: f64 = grad.iter().map(|&g| f64::from(g) * f64::from(g)).sum();
                    if g_sq > 0.0 { (f64::from(alpha) / g_sq.sqrt()) as f32 } else { 0.0 }
                }
            };
            for ((o, &a), &g) in out.iter_mut().zip(adv).zip(grad) {
                *o = a + step * step_direction(g, norm);
            }
            project_into_ball(out, x, eps, norm);
        },
    );
    Ok(Tensor::from_vec(x.shape(), out))
}

/// A gradient value's step direction: its sign (L-infinity, 0 for 0), or itself (L2, scaled per
/// image by the caller).
fn step_direction(g: f32, norm: Norm) -> f32 {
    match norm {
        Norm::L2 => g,
        Norm::Linf if g > 0.0 => 1.0,
        Norm::Linf if g < 0.0 => -1.0,
        Norm::Linf => 0.0,
    }
}

/// `v - x` scaled down to length eps when longer (L2) or clipped to [-eps, eps] per value
/// (L-infinity), added back to `x` and clamped to [0, 1]; `v` is replaced by the result.
fn project_into_ball(v: &mut [f32], x: &[f32], eps: f32, norm: Norm) {
    match norm {
        Norm::Linf => {
            for (o, &xv) in v.iter_mut().zip(x) {
                *o = o.max(xv - eps).min(xv + eps).clamp(0.0, 1.0);
            }
        }
        Norm::L2 => {
            let mut d_sq = 0.0f64;
            for (o, &xv) in v.iter_mut().zip(x) {
                *o -= xv;
                d_sq += f64::from(*o) * f64::from(*o);
            }
            let eps2 = f64::from(eps) * f64::from(eps);
            let shrink = if d_sq > eps2 { (f64::from(eps) / d_sq.sqrt()) as f32 } else { 1.0 };
            for (o, &xv) in v.iter_mut().zip(x) {
                *o = (xv + shrink * *o).clamp(0.0, 1.0);
            }
        }
    }
}

/// One APGD step (Croce & Hein 2020) with image b's own step size `step[b]`:
/// `z = P(x_adv + step[b] * dir(grad))`, dir the sign (L-infinity) or `grad / |grad|` (L2, no
/// step for a zero gradient), then `P(x_adv + momentum * (z - x_adv) + (1 - momentum) *
/// (x_adv - x_prev))`, P the projection onto the eps-ball around `x` and [0, 1].
#[allow(clippy::too_many_arguments)]
pub fn apgd_step(
    x_adv: &Tensor,
    x_prev: &Tensor,
    grad: &Tensor,
    x: &Tensor,
    step: &[f32],
    momentum: f32,
    eps: f32,
    norm: Norm,
) -> Result<Tensor> {
    let batch = x.shape()[0];
    ensure!(
        [x_adv, x_prev, grad].iter().all(|t| t.shape() == x.shape()) && step.len() == batch,
        "apgd step: shapes {:?}, {:?}, {:?}, {:?} and {} step sizes disagree",
        x_adv.shape(),
        x_prev.shape(),
        grad.shape(),
        x.shape(),
        step.len()
    );
    let per_image = x.len() / batch.max(1);
    let device = x.device();
    if device != Device::Cpu {
        let out = Tensor::output_on(device, x.shape())?;
        let step = GpuBuffer::upload(device, step)?;
        let args = [
            out.arg(),
            x_adv.arg(),
            x_prev.arg(),
            grad.arg(),
            x.arg(),
            step.arg(),
            int(per_image),
            Arg::F32(momentum),
            Arg::F32(eps),
            Arg::I32((norm == Norm::L2) as i32),
        ];
        gpu::launch(device, "apgd_step_f32", launch_per_image(batch), &args)?;
        return Ok(out);
    }
    let mut out = vec![0.0f32; x.len()];
    let images = x_adv.as_slice().par_chunks(per_image).zip(x_prev.as_slice().par_chunks(per_image));
    let images = images.zip(grad.as_slice().par_chunks(per_image)).zip(x.as_slice().par_chunks(per_image));
    out.par_chunks_mut(per_image).zip(images).zip(step).for_each(
        |((out, (((adv, prev), grad), x)), &step)| {
            let scale = match norm {
                Norm::Linf => step,
                Norm::L2 => {
                    let g_sq: f64 = grad.iter().map(|&g| f64::from(g) * f64::from(g)).sum();
                    if g_sq > 0.0 { (f64::from(step) / g_sq.sqrt()) as f32 } else { 0.0 }
                }
            };
            for ((o, &a), &g) in out.iter_mut().zip(adv).zip(grad) {
                *o = a + scale * step_direction(g, norm);
            }
            project_into_ball(out, x, eps, norm);
            for ((o, &a), &p) in out.iter_mut().zip(adv).zip(prev) {
                *o = a + momentum * (*o - a) + (1.0 - momentum) * (a - p);
            }
            project_into_ball(out, x, eps, norm);
        },
    );
    Ok(Tensor::from_vec(x.shape(), out))
}

/// Image b of `a` where `take[b]`, else image b of `b`.
pub fn select_images(take: &[bool], a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let batch = a.shape()[0];
    ensure!(
        a.shape() == b.shape() && take.len() == batch,
        "select images: shapes {:?} and {:?} with {} choices",
        a.shape(),
        b.shape(),
        take.len()
    );
    let device = a.device();
    if device != Device::Cpu {
        let per_image = a.len() / batch.max(1);
        let out = Tensor::output_on(device, a.shape())?;
        let take: Vec<i32> = take.iter().map(|&t| t as i32).collect();
        let take = GpuBuffer::upload(device, &take)?;
        let args = [out.arg(), a.arg(), b.arg(), take.arg(), int(per_image)];
        gpu::launch(device, "select_images_f32", launch_per_image(batch), &args)?;
        return Ok(out);
    }
    let per_image = a.len() / batch.max(1);
    let rows = a.as_slice().chunks(per_image.max(1)).zip(b.as_slice().chunks(per_image.max(1)));
    let out = rows.zip(take).flat_map(|((ra, rb), &t)| if t { ra } else { rb }).copied().collect();
    Ok(Tensor::from_vec(a.shape(), out))
}
