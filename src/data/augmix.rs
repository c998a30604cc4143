//! AugMix (Hendrycks et al. 2020) as mocse's "CIFAR-10 Augmented" training set: chains of the
//! operations that overlap no test corruption, mixed with the original (`kernels/augmix.cu`).
//!
//! The operations are the nine of AugMix's CIFAR recipe (brightness, contrast, colour and
//! sharpness left out, since they are test corruptions or close to them): autocontrast,
//! equalize, posterize, solarize, rotate, shear x/y and translate x/y, each repeating Pillow's
//! arithmetic (tested against Pillow's outputs). The random choices (operations, their levels
//! at severity 3, chain depths 1-3, Dirichlet(1) chain weights, the Beta(1, 1) mix) are drawn on
//! the host per image from its own Philox stream; the pixels never leave the device.

use std::fmt;
use std::str::FromStr;

use anyhow::{Result, bail, ensure};
use bytemuck::{Pod, Zeroable};

use super::{CHANNELS, IMAGE_SIZE};
use crate::corrupt::per_image;
use crate::device::Device;
use crate::gpu::{self, GpuBuffer};
use crate::rng::{Philox, Purpose};
use crate::tensor::Tensor;

/// AugMix's severity for CIFAR: operation levels are drawn uniformly from [0.1, 3).
pub const SEVERITY: f64 = 3.0;
/// Chains mixed per image.
pub const WIDTH: usize = 3;
/// The most operations in a chain (each chain draws its depth from 1..=3).
pub const MAX_DEPTH: usize = 3;

/// One of AugMix's operations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AugmixOp {
    Autocontrast,
    Equalize,
    Posterize,
    Solarize,
    Rotate,
    ShearX,
    ShearY,
    TranslateX,
    TranslateY,
}

impl AugmixOp {
    pub const ALL: [AugmixOp; 9] = [
        AugmixOp::Autocontrast,
        AugmixOp::Equalize,
        AugmixOp::Posterize,
        AugmixOp::Solarize,
        AugmixOp::Rotate,
        AugmixOp::ShearX,
        AugmixOp::ShearY,
        AugmixOp::TranslateX,
        AugmixOp::TranslateY,
    ];

    pub fn name(self) -> &'static str {
        match self {
            AugmixOp::Autocontrast => "autocontrast",
            AugmixOp::Equalize => "equalize",
            AugmixOp::Posterize => "posterize",
            AugmixOp::Solarize => "solarize",
            AugmixOp::Rotate => "rotate",
            AugmixOp::ShearX => "shear_x",
            AugmixOp::ShearY => "shear_y",
            AugmixOp::TranslateX => "translate_x",
            AugmixOp::TranslateY => "translate_y",
        }
    }

    /// AugMix's parameter for a level drawn from [0.1, severity): posterize's bits kept
    /// (`4 - int(level * 4 / 10)`), solarize's threshold (`256 - int(level * 256 / 10)`),
    /// rotate's whole degrees (`int(level * 30 / 10)`), shear (`level * 0.3 / 10`) and translate
    /// (`int(level * (32 / 3) / 10)` pixels), negated when `negate` for the last three kinds.
    pub fn parameter(self, level: f64, negate: bool) -> f64 {
        let sign = if negate { -1.0 } else { 1.0 };
        let int_parameter = |max: f64| (level * max / 10.0).trunc();
        match self {
            AugmixOp::Autocontrast | AugmixOp::Equalize => 0.0,
            AugmixOp::Posterize => 4.0 - int_parameter(4.0),
            AugmixOp::Solarize => 256.0 - int_parameter(256.0),
            AugmixOp::Rotate => sign * int_parameter(30.0),
            AugmixOp::ShearX | AugmixOp::ShearY => sign * level * 0.3 / 10.0,
            AugmixOp::TranslateX | AugmixOp::TranslateY => sign * int_parameter(IMAGE_SIZE as f64 / 3.0),
        }
    }
}

impl fmt::Display for AugmixOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for AugmixOp {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        AugmixOp::ALL.into_iter().find(|op| op.name() == s).ok_or_else(|| {
            let names: Vec<&str> = AugmixOp::ALL.iter().map(|op| op.name()).collect();
            format!("unknown AugMix operation '{s}'; expected one of {}", names.join(", "))
        })
    }
}

/// The kernel's form of one operation (`struct AugmixOp` in kernels/augmix.cu).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
pub struct OpPlan {
    kind: i32,
    level: i32,
    affine: [f64; 6],
}

const KIND_AUTOCONTRAST: i32 = 0;
const KIND_EQUALIZE: i32 = 1;
const KIND_POSTERIZE: i32 = 2;
const KIND_SOLARIZE: i32 = 3;
const KIND_AFFINE: i32 = 4;

/// Python's `round(x, 15)`: the nearest 15-decimal number, correctly rounded both ways.
fn round_15(x: f64) -> f64 {
    format!("{x:.15}").parse().expect("a formatted f64 parses")
}

/// Image.rotate's data for `degrees` (counter-clockwise) about the centre of a 32x32 image, as
/// Pillow computes it: the angle reduced modulo 360, cos and sin rounded to 15 decimals.
fn rotation(degrees: f64) -> [f64; 6] {
    let angle = -(degrees.rem_euclid(360.0) * (std::f64::consts::PI / 180.0));
    let (cos, sin) = (round_15(angle.cos()), round_15(angle.sin()));
    let mut a = [cos, sin, 0.0, round_15(-angle.sin()), cos, 0.0];
    let centre = IMAGE_SIZE as f64 / 2.0;
    a[2] = a[0] * -centre + a[1] * -centre + a[2] + centre;
    a[5] = a[3] * -centre + a[4] * -centre + a[5] + centre;
    a
}

impl OpPlan {
    /// `op` with its parameter (see [`AugmixOp::parameter`]): bits for posterize (1-8), the
    /// threshold for solarize (0-256), degrees for rotate, the shear factor, or pixels.
    pub fn new(op: AugmixOp, parameter: f64) -> Result<OpPlan> {
        let plan = |kind, level, affine| OpPlan { kind, level, affine };
        let affine = |a: [f64; 6]| {
            ensure!(a.iter().all(|v| v.is_finite()), "{op} {parameter} is not a finite parameter");
            Ok(plan(KIND_AFFINE, 0, a))
        };
        match op {
            AugmixOp::Autocontrast => Ok(plan(KIND_AUTOCONTRAST, 0, [0.0; 6])),
            AugmixOp::Equalize => Ok(plan(KIND_EQUALIZE, 0, [0.0; 6])),
            AugmixOp::Posterize => {
                ensure!(
                    (1.0..=8.0).contains(&parameter) && parameter.fract() == 0.0,
                    "posterize keeps 1 to 8 bits"
                );
                Ok(plan(KIND_POSTERIZE, parameter as i32, [0.0; 6]))
            }
            AugmixOp::Solarize => {
                ensure!(
                    (0.0..=256.0).contains(&parameter) && parameter.fract() == 0.0,
                    "solarize's threshold is a whole number from 0 to 256"
                );
                Ok(plan(KIND_SOLARIZE, parameter as i32, [0.0; 6]))
            }
            AugmixOp::Rotate => affine(rotation(parameter)),
            AugmixOp::ShearX => affine([1.0, parameter, 0.0, 0.0, 1.0, 0.0]),
            AugmixOp::ShearY => affine([1.0, 0.0, 0.0, parameter, 1.0, 0.0]),
            AugmixOp::TranslateX => affine([1.0, 0.0, parameter, 0.0, 1.0, 0.0]),
            AugmixOp::TranslateY => affine([1.0, 0.0, 0.0, 0.0, 1.0, parameter]),
        }
    }
}

/// One image's AugMix (`struct AugmixPlan` in kernels/augmix.cu).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
pub struct AugmixPlan {
    /// The chains' weights, Dirichlet(1, 1, 1).
    pub weights: [f32; WIDTH],
    /// The weight of the mixture against the original, Beta(1, 1).
    pub mix: f32,
    depth: [i32; WIDTH],
    pad: i32,
    ops: [[OpPlan; MAX_DEPTH]; WIDTH],
}

impl AugmixPlan {
    /// Chains of the given (operation, parameter) lists (1 to 3 each), their weights and the mix.
    pub fn new(
        chains: &[Vec<(AugmixOp, f64)>; WIDTH],
        weights: [f32; WIDTH],
        mix: f32,
    ) -> Result<AugmixPlan> {
        let mut plan = AugmixPlan::zeroed();
        plan.weights = weights;
        plan.mix = mix;
        for (c, chain) in chains.iter().enumerate() {
            ensure!(
                (1..=MAX_DEPTH).contains(&chain.len()),
                "an AugMix chain has 1 to {MAX_DEPTH} operations"
            );
            plan.depth[c] = chain.len() as i32;
            for (d, &(op, parameter)) in chain.iter().enumerate() {
                plan.ops[c][d] = OpPlan::new(op, parameter)?;
            }
        }
        Ok(plan)
    }

    /// The plan that leaves the image as it is (no chain, mix 0).
    pub fn identity() -> AugmixPlan {
        AugmixPlan::zeroed()
    }

    /// AugMix's random choices for view `view` (0-3) of image `image` (below 2^32) in `epoch`,
    /// from its own Philox stream: each chain's depth (1-3), operations (uniform over the
    /// nine), levels (uniform in [0.1, 3)) and signs, the Dirichlet(1) chain weights and the
    /// Beta(1, 1) mix.
    pub fn draw(seed: u64, epoch: u64, image: u64, view: u64) -> AugmixPlan {
        let mut rng = Philox::new(seed, Purpose::AugMix, (epoch << 34) | (view << 32) | image);
        // Dirichlet(1, 1, 1): normalised standard exponentials.
        let exponentials: [f64; WIDTH] = std::array::from_fn(|_| -(1.0 - rng.uniform_f64()).ln());
        let total: f64 = exponentials.iter().sum();
        let weights = exponentials.map(|e| (e / total) as f32);
        let mix = rng.uniform();
        let chains: [Vec<(AugmixOp, f64)>; WIDTH] = std::array::from_fn(|_| {
            let depth = 1 + rng.below(MAX_DEPTH as u32) as usize;
            (0..depth)
                .map(|_| {
                    let op = AugmixOp::ALL[rng.below(AugmixOp::ALL.len() as u32) as usize];
                    let level = 0.1 + (SEVERITY - 0.1) * rng.uniform_f64();
                    (op, op.parameter(level, rng.uniform() < 0.5))
                })
                .collect()
        });
        AugmixPlan::new(&chains, weights, mix).expect("AugMix's own parameters are valid")
    }
}

fn check_images(images: &Tensor, plans: usize) -> Result<()> {
    let shape = images.shape();
    if shape.len() != 4 || shape[1] != IMAGE_SIZE || shape[2] != IMAGE_SIZE || shape[3] != CHANNELS {
        bail!("AugMix takes images of shape (n, 32, 32, 3); got {shape:?}");
    }
    ensure!(shape[0] == plans, "{} images but {plans} plans", shape[0]);
    Ok(())
}

/// Runs `kernel` with one plan per image; the cpu device runs it through the emulator.
fn launch<T: Pod>(kernel: &str, images: &Tensor, plans: &[T]) -> Result<Tensor> {
    if plans.is_empty() {
        return Ok(images.clone());
    }
    let on_cpu = images.device() == Device::Cpu;
    let input = if on_cpu { images.to_device(Device::Emu)? } else { images.clone() };
    let device = input.device();
    let out = Tensor::output_on(device, input.shape())?;
    let plans = GpuBuffer::upload(device, plans)?;
    let config = per_image(device, input.shape()[0]);
    gpu::launch(device, kernel, config, &[out.arg(), input.arg(), plans.arg()])?;
    if on_cpu { out.to_device(Device::Cpu) } else { Ok(out) }
}

/// One operation per image: images (n, 32, 32, 3) with values k/255 in [0, 1], on any device.
pub fn apply_ops(images: &Tensor, ops: &[OpPlan]) -> Result<Tensor> {
    check_images(images, ops.len())?;
    launch("augmix_op_f32", images, ops)
}

/// AugMix of a training batch (after crop and flip): image `indices[i]` of the training set
/// gets the plan of its own stream for `epoch`, whatever batch it is in.
pub fn augment_batch(images: &Tensor, indices: &[u32], seed: u64, epoch: u64) -> Result<Tensor> {
    let plans: Vec<AugmixPlan> =
        indices.iter().map(|&i| AugmixPlan::draw(seed, epoch, u64::from(i), 0)).collect();
    augmix(images, &plans)
}

/// The three views of AugMix's consistency loss from three copies of a batch (after crop and
/// flip), [3 B] images: the first copy stays as it is, the second and third get two
/// independent AugMix plans per image (views 1 and 2 of its stream).
pub fn clean_and_augmented_views(copies: &Tensor, indices: &[u32], seed: u64, epoch: u64) -> Result<Tensor> {
    let mut plans = vec![AugmixPlan::identity(); indices.len()];
    for view in 1..=2 {
        plans.extend(indices.iter().map(|&i| AugmixPlan::draw(seed, epoch, u64::from(i), view)));
    }
    augmix(copies, &plans)
}

/// AugMix of each image by its plan: images (n, 32, 32, 3) with values k/255 in [0, 1], on any
/// device; the result is in [0, 1] (not whole 255ths: the chains are mixed in float).
pub fn augmix(images: &Tensor, plans: &[AugmixPlan]) -> Result<Tensor> {
    check_images(images, plans.len())?;
    launch("augmix_f32", images, plans)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kernel_structs_have_the_kernel_layout() {
        assert_eq!(std::mem::size_of::<OpPlan>(), 56);
        assert_eq!(std::mem::size_of::<AugmixPlan>(), 32 + 9 * 56);
        assert_eq!(std::mem::offset_of!(AugmixPlan, ops), 32);
    }

    #[test]
    fn rotation_is_pillows_matrix() {
        // Image.rotate(90) of a 32x32 image: the matrix Pillow builds, exactly.
        assert_eq!(rotation(90.0), [0.0, -1.0, 32.0, 1.0, 0.0, 0.0]);
        assert_eq!(rotation(0.0), [1.0, -0.0, 0.0, 0.0, 1.0, 0.0]);
        assert_eq!(round_15(2.0 / 3.0), 0.666666666666667);
    }

    #[test]
    fn parameters_follow_augmix_at_severity_3() {
        assert_eq!(AugmixOp::Posterize.parameter(2.9, false), 3.0);
        assert_eq!(AugmixOp::Posterize.parameter(0.1, false), 4.0);
        assert_eq!(AugmixOp::Solarize.parameter(2.9, false), 256.0 - 74.0);
        assert_eq!(AugmixOp::Rotate.parameter(2.9, true), -8.0);
        assert_eq!(AugmixOp::TranslateX.parameter(2.9, false), 3.0);
        assert!((AugmixOp::ShearY.parameter(2.0, true) + 0.06).abs() < 1e-15);
        for seed in 0..50 {
            let plan = AugmixPlan::draw(seed, 1, 7, 0);
            assert!((plan.weights.iter().sum::<f32>() - 1.0).abs() < 1e-6, "{plan:?}");
            assert!((0.0..1.0).contains(&plan.mix));
            assert!(plan.depth.iter().all(|d| (1..=3).contains(d)));
            assert_eq!(plan, AugmixPlan::draw(seed, 1, 7, 0));
            assert_ne!(plan, AugmixPlan::draw(seed, 2, 7, 0));
            assert_ne!(plan, AugmixPlan::draw(seed, 1, 7, 1));
        }
    }
}
