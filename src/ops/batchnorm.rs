//! Batch normalisation over the channel axis of NHWC activations (the last axis). In a fused
//! MoCSE network the channels of all experts sit side by side, so per-channel statistics are
//! automatically per expert.
//!
//! Sums over the batch run in f64 over a fixed split of the rows, added in order, on every
//! device, so results are deterministic.

use std::mem::MaybeUninit;

use anyhow::{Result, ensure};
use rayon::prelude::*;

use crate::autograd::{Tape, Var};
use crate::device::Device;
use crate::gpu::{self, Arg, GpuBuffer, LaunchConfig, int};
use crate::ops::elementwise::elementwise_kernel;
use crate::parallel;
use crate::tensor::Tensor;

/// The statistics of one training batch, for the running averages.
pub struct BatchStats {
    pub mean: Tensor,
    /// Unbiased (divided by n - 1), as PyTorch keeps in `running_var`.
    pub var_unbiased: Tensor,
}

fn channels_of(x: &Tensor) -> usize {
    *x.shape().last().unwrap_or(&1)
}

/// Rows summed in f32 (vectorised) before they are added into the f64 totals.
const F32_ROWS: usize = 16;

/// Channels summed together: one AVX-512 register of f32.
const LANES: usize = 16;

/// Up to this many channels, each block of rows is summed `LANES` channels at a time with the
/// sums in registers (2.5x faster on 16 channels); wider rows are summed whole, in order (the
/// column-wise walk over them is 10-30% slower).
const REGISTER_CHANNELS: usize = 64;

/// Per-channel sums over all rows of a [rows, C] matrix, two accumulators per channel:
/// `add(at, ch, a, b)` adds the terms of channels `ch..ch + a.len()` of one row, whose first
/// element is at index `at`, into `a` and `b`. Every block of `F32_ROWS` rows is summed in f32,
/// then added into f64 totals.
fn channel_sums(
    rows: usize,
    c: usize,
    add: impl Fn(usize, usize, &mut [f32], &mut [f32]) + Sync + Send,
) -> (Vec<f64>, Vec<f64>) {
    let parts = parallel::map_parts(rows, |range| {
        let (mut a, mut b) = (vec![0.0f64; c], vec![0.0f64; c]);
        let flush = |ch: usize, fa: &mut [f32], fb: &mut [f32], a: &mut [f64], b: &mut [f64]| {
            for (((ta, tb), fa), fb) in a[ch..].iter_mut().zip(&mut b[ch..]).zip(fa).zip(fb) {
                *ta += *fa as f64;
                *tb += *fb as f64;
                (*fa, *fb) = (0.0, 0.0);
            }
        };
        let blocks = range.clone().step_by(F32_ROWS).map(|start| start..(start + F32_ROWS).min(range.end));
        if c <= REGISTER_CHANNELS {
            for block in blocks {
                for ch in (0..c).step_by(LANES) {
                    let (mut fa, mut fb) = ([0.0f32; LANES], [0.0f32; LANES]);
                    let width = LANES.min(c - ch);
                    for r in block.clone() {
                        // A constant width where it is whole, so the sums stay in registers.
                        if width == LANES {
                            add(r * c + ch, ch, &mut fa, &mut fb);
                        } else {
                            add(r * c + ch, ch, &mut fa[..width], &mut fb[..width]);
                        }
                    }
                    flush(ch, &mut fa[..width], &mut fb[..width], &mut a, &mut b);
                }
            }
        } else {
            let (mut fa, mut fb) = (vec![0.0f32; c], vec![0.0f32; c]);
            for block in blocks {
                for r in block {
                    add(r * c, 0, &mut fa, &mut fb);
                }
                flush(0, &mut fa, &mut fb, &mut a, &mut b);
            }
        }
        (a, b)
    });
    let (mut a, mut b) = (vec![0.0f64; c], vec![0.0f64; c]);
    for (pa, pb) in parts {
        for i in 0..c {
            a[i] += pa[i];
            b[i] += pb[i];
        }
    }
    (a, b)
}

/// Kernel devices: the two per-channel sums (statistics when `dy` is None, gradient sums
/// otherwise, through the relu when there is one) as partial sums per part of the rows, in f64.
fn partial_sums_gpu(
    x: &Tensor,
    dy: Option<(&Tensor, Option<&ReluAfter>)>,
    mean: Option<&Tensor>,
    inv_std: Option<&Tensor>,
) -> Result<(GpuBuffer, usize)> {
    let c = channels_of(x);
    let rows = x.len() / c;
    let parts = (rows / 512).clamp(1, 128);
    let rows_per_part = rows.div_ceil(parts);
    let partial = GpuBuffer::for_output(x.device(), parts * 2 * c * 8)?;
    let null = Arg::Ptr(0);
    let (relu_gamma, relu_beta) = ReluAfter::kernel_args(dy.and_then(|(_, relu)| relu));
    let args = [
        partial.arg(),
        x.arg(),
        dy.map_or(null, |(dy, _)| dy.arg()),
        relu_gamma,
        relu_beta,
        mean.map_or(null, Tensor::arg),
        inv_std.map_or(null, Tensor::arg),
        int(rows),
        int(c),
        int(rows_per_part),
    ];
    let cfg = LaunchConfig::new([c.div_ceil(32) as u32, parts as u32, 1], [32, 8, 1]);
    gpu::launch(x.device(), "bn_partial_sums_f64", cfg, &args)?;
    Ok((partial, parts))
}

/// The per-channel sums and sums of squares of a tensor [rows, channels] on a kernel device, in
/// double, as partial sums of `parts` parts of the rows ([parts][2][channels]): what
/// `bn_partial_sums_f64` computes in a pass over the tensor, or a forward convolution as it writes
/// its output (`ColumnSumsOut` in kernels/conv2d.cuh), which saves batch norm that pass.
pub struct ChannelSums {
    pub partial: GpuBuffer,
    pub parts: usize,
    pub rows: usize,
    pub channels: usize,
}

impl ChannelSums {
    /// Space for the sums of `parts` parts of a [rows, channels] tensor on `device`.
    pub fn for_output(device: Device, parts: usize, rows: usize, channels: usize) -> Result<ChannelSums> {
        let partial = GpuBuffer::for_output(device, parts * 2 * channels * 8)?;
        Ok(ChannelSums { partial, parts, rows, channels })
    }

    /// The batch statistics (mean, 1 / sqrt(biased var + eps), unbiased var), the parts added
    /// in a fixed order.
    pub(crate) fn statistics(&self, device: Device, eps: f32) -> Result<(Tensor, Tensor, Tensor)> {
        let c = self.channels;
        let outs = [
            Tensor::output_on(device, &[c])?,
            Tensor::output_on(device, &[c])?,
            Tensor::output_on(device, &[c])?,
        ];
        let args = [
            outs[0].arg(),
            outs[1].arg(),
            outs[2].arg(),
            self.partial.arg(),
            int(self.parts),
            int(self.rows),
            int(c),
            Arg::F32(eps),
        ];
        let cfg = LaunchConfig::new([c.div_ceil(32) as u32, 1, 1], [32, 16, 1]);
        gpu::launch(device, "bn_stats_finalize_f32", cfg, &args)?;
        let [mean, inv_std, unbiased] = outs;
        Ok((mean, inv_std, unbiased))
    }
}

/// Per-channel batch statistics of x [.., C]: (mean, 1 / sqrt(biased var + eps), unbiased var).
pub fn batch_statistics(x: &Tensor, eps: f32) -> Result<(Tensor, Tensor, Tensor)> {
    let c = channels_of(x);
    let rows = x.len() / c;
    match x.device() {
        Device::Cpu => {
            let xs = x.as_slice();
            let (sum, sum_sq) = channel_sums(
                rows,
                c,
                #[inline(always)]
                |at, _, s, s2| {
                    let w = s.len();
                    for ((a, b), v) in s.iter_mut().zip(s2.iter_mut()).zip(&xs[at..][..w]) {
                        *a += v;
                        *b += v * v;
                    }
                },
            );
            let n = rows as f64;
            let mean: Vec<f32> = sum.iter().map(|s| (s / n) as f32).collect();
            let var: Vec<f32> =
                sum_sq.iter().zip(&sum).map(|(s2, s)| (s2 / n - (s / n) * (s / n)).max(0.0) as f32).collect();
            let inv_std = var.iter().map(|v| 1.0 / (v + eps).sqrt()).collect();
            let unbiased = var.iter().map(|v| v * (rows as f32 / (rows - 1) as f32)).collect();
            Ok((
                Tensor::from_vec(&[c], mean),
                Tensor::from_vec(&[c], inv_std),
                Tensor::from_vec(&[c], unbiased),
            ))
        }
        d => {
            let (partial, parts) = partial_sums_gpu(x, None, None, None)?;
            ChannelSums { partial, parts, rows, channels: c }.statistics(d, eps)
        }
    }
}

/// 1 / sqrt(var + eps) per channel.
pub fn inv_std_of(var: &Tensor, eps: f32) -> Result<Tensor> {
    match var.device() {
        Device::Cpu => {
            Ok(Tensor::from_vec(var.shape(), var.as_slice().iter().map(|v| 1.0 / (v + eps).sqrt()).collect()))
        }
        _ => elementwise_kernel("bn_inv_std_f32", var, &[var.arg(), Arg::F32(eps)], &[]),
    }
}

/// What runs on batch norm's output in the same pass. In the network every batch norm is
/// followed by a relu, so fusing them saves a pass over the activations each way (and the
/// normalised values are never stored).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    Identity,
    Relu,
}

/// A relu after batch norm, as the backward pass needs it: every device recomputes its mask
/// from x and the affine map, bit for bit as `bn_apply` made it (kernels/bn_relu.cuh), so the
/// relu's output is never read back (the output of a `Tape::bn_relu_conv2d` is never stored).
pub struct ReluAfter {
    pub gamma: Tensor,
    pub beta: Tensor,
}

impl ReluAfter {
    /// The kernels' (gamma, beta) arguments: null without a relu.
    fn kernel_args(relu: Option<&ReluAfter>) -> (Arg, Arg) {
        relu.map_or((Arg::Ptr(0), Arg::Ptr(0)), |r| (r.gamma.arg(), r.beta.arg()))
    }
}

/// The affine map `bn_apply` runs per channel (`normalised`).
fn affine_coefficients(
    mean: &Tensor,
    inv_std: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
) -> (Vec<f32>, Vec<f32>) {
    let (m, is, g, b) = (mean.as_slice(), inv_std.as_slice(), gamma.as_slice(), beta.as_slice());
    let scale: Vec<f32> = (0..m.len()).map(|i| g[i] * is[i]).collect();
    let shift = (0..m.len()).map(|i| b[i] - m[i] * scale[i]).collect();
    (scale, shift)
}

/// x normalised by the affine map: the one expression the forward output and the backward's
/// recomputed relu mask both use, so the two agree bit for bit.
#[inline(always)]
fn normalised(x: f32, scale: f32, shift: f32) -> f32 {
    x * scale + shift
}

/// A gradient as it reaches batch norm's output: `dy` itself, or, where a relu follows, `dy`
/// where the relu passed its input (`normalised` > 0, as its output was) and 0 where it
/// clipped it.
#[inline(always)]
fn through_relu<const RELU: bool>(dy: f32, x: f32, scale: f32, shift: f32) -> f32 {
    if !RELU || normalised(x, scale, shift) > 0.0 { dy } else { 0.0 }
}

/// `f(row of the output, its index)` for every row of a new [rows, c] vector, in parallel
/// blocks of 64 rows; `f` must write every element.
fn rows_into(len: usize, c: usize, f: impl Fn(&mut [MaybeUninit<f32>], usize) + Sync) -> Vec<f32> {
    let mut out: Vec<f32> = Vec::with_capacity(len);
    out.spare_capacity_mut()[..len].par_chunks_mut(c * 64).enumerate().for_each(|(k, block)| {
        for (r, row) in block.chunks_exact_mut(c).enumerate() {
            f(row, k * 64 + r);
        }
    });
    // SAFETY: `f` wrote every element of every row.
    unsafe { out.set_len(len) };
    out
}

/// y = (x - mean) * inv_std * gamma + beta, then `activation`.
pub fn bn_apply(
    x: &Tensor,
    mean: &Tensor,
    inv_std: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    activation: Activation,
) -> Result<Tensor> {
    let c = channels_of(x);
    match x.device() {
        Device::Cpu => {
            let (scale, shift) = affine_coefficients(mean, inv_std, gamma, beta);
            let y = match activation {
                Activation::Identity => affine::<false>(x.as_slice(), &scale, &shift),
                Activation::Relu => affine::<true>(x.as_slice(), &scale, &shift),
            };
            Ok(Tensor::from_vec(x.shape(), y))
        }
        _ => elementwise_kernel(
            "bn_apply_f32",
            x,
            &[x.arg(), mean.arg(), inv_std.arg(), gamma.arg(), beta.arg()],
            &[int(c), int((activation == Activation::Relu) as usize)],
        ),
    }
}

/// x * scale + shift, then a relu when RELU (`v < 0`, so that a NaN propagates; `through_relu`
/// passes a gradient exactly where this gives a value > 0).
#[inline(always)]
fn activated<const RELU: bool>(x: f32, scale: f32, shift: f32) -> f32 {
    let v = normalised(x, scale, shift);
    if RELU && v < 0.0 { 0.0 } else { v }
}

/// `activated` per channel over rows of `scale.len()` channels.
fn affine<const RELU: bool>(x: &[f32], scale: &[f32], shift: &[f32]) -> Vec<f32> {
    let c = scale.len();
    rows_into(x.len(), c, |out, r| {
        // Zipped iterators: no bounds checks, so the loop vectorises.
        for (((y, x), a), b) in out.iter_mut().zip(&x[r * c..][..c]).zip(scale).zip(shift) {
            y.write(activated::<RELU>(*x, *a, *b));
        }
    })
}

/// relu(batch_norm(x)) as a per-channel map, for a consumer that applies it where it reads its
/// input: the convolutions (`Tape::bn_relu_conv2d`), so that the activation is never stored.
/// Gives the same bits as `bn_apply` with `Activation::Relu` on the same device. The
/// coefficients live on the device of the statistics.
pub struct ReluAffine {
    scale: Tensor,
    shift: Tensor,
}

impl ReluAffine {
    /// The map of batch norm with these statistics and affine parameters (on one device).
    pub fn new(mean: &Tensor, inv_std: &Tensor, gamma: &Tensor, beta: &Tensor) -> Result<Self> {
        let c = mean.len();
        match mean.device() {
            Device::Cpu => {
                let (scale, shift) = affine_coefficients(mean, inv_std, gamma, beta);
                Ok(ReluAffine { scale: Tensor::from_vec(&[c], scale), shift: Tensor::from_vec(&[c], shift) })
            }
            d => {
                let (scale, shift) = (Tensor::output_on(d, &[c])?, Tensor::output_on(d, &[c])?);
                let args =
                    [scale.arg(), shift.arg(), mean.arg(), inv_std.arg(), gamma.arg(), beta.arg(), int(c)];
                gpu::launch(d, "bn_relu_coefficients_f32", LaunchConfig::for_elements(c), &args)?;
                Ok(ReluAffine { scale, shift })
            }
        }
    }

    pub fn channels(&self) -> usize {
        self.scale.len()
    }

    pub fn device(&self) -> Device {
        self.scale.device()
    }

    /// The kernels' (scale, shift) arguments (`ChannelMap` in kernels/bn_relu.cuh).
    pub fn kernel_args(&self) -> [Arg; 2] {
        [self.scale.arg(), self.shift.arg()]
    }

    /// `dst[i]` = the map of `src[i]`, whose channel is `first + i` (cpu).
    #[inline(always)]
    pub fn channels_into(&self, src: &[f32], dst: &mut [f32], first: usize) {
        let (scale, shift) =
            (&self.scale.as_slice()[first..][..src.len()], &self.shift.as_slice()[first..][..src.len()]);
        for (((d, x), a), b) in dst.iter_mut().zip(src).zip(scale).zip(shift) {
            *d = activated::<true>(*x, *a, *b);
        }
    }

    /// The map of whole pixels: `src` and `dst` hold pixels of every channel, in order.
    pub fn pixels_into(&self, src: &[f32], dst: &mut [f32]) {
        let c = self.channels();
        for (s, d) in src.chunks_exact(c).zip(dst.chunks_exact_mut(c)) {
            self.channels_into(s, d, 0);
        }
    }

    /// The map of a whole tensor, stored: for the cpu algorithms that do not apply it as they read.
    pub fn apply(&self, x: &[f32]) -> Vec<f32> {
        affine::<true>(x, self.scale.as_slice(), self.shift.as_slice())
    }
}

/// (sum dy, sum dy * xhat) per channel, xhat = (x - mean) * inv_std: dbeta and dgamma. With
/// `relu`, dy is the gradient of the relu after batch norm (`through_relu`).
pub fn bn_grad_sums(
    x: &Tensor,
    dy: &Tensor,
    relu: Option<&ReluAfter>,
    mean: &Tensor,
    inv_std: &Tensor,
) -> Result<(Tensor, Tensor)> {
    let c = channels_of(x);
    match x.device() {
        Device::Cpu => {
            let (xs, ds, m, is) = (x.as_slice(), dy.as_slice(), mean.as_slice(), inv_std.as_slice());
            let (a, b) = match relu {
                Some(r) => {
                    let (scale, shift) = affine_coefficients(mean, inv_std, &r.gamma, &r.beta);
                    grad_sums::<true>(xs, ds, m, is, &scale, &shift)
                }
                None => grad_sums::<false>(xs, ds, m, is, m, m),
            };
            let to = |v: Vec<f64>| Tensor::from_vec(&[c], v.iter().map(|x| *x as f32).collect());
            Ok((to(a), to(b)))
        }
        d => {
            let (partial, parts) = partial_sums_gpu(x, Some((dy, relu)), Some(mean), Some(inv_std))?;
            let (sum_dy, sum_dy_xhat) = (Tensor::output_on(d, &[c])?, Tensor::output_on(d, &[c])?);
            let args = [sum_dy.arg(), sum_dy_xhat.arg(), partial.arg(), int(parts), int(c)];
            gpu::launch(d, "bn_grad_finalize_f32", LaunchConfig::for_elements(c), &args)?;
            Ok((sum_dy, sum_dy_xhat))
        }
    }
}

/// `bn_grad_sums` on the cpu; `scale` and `shift` are the affine map before the relu when
/// RELU (else unused, any slices of c values).
fn grad_sums<const RELU: bool>(
    xs: &[f32],
    ds: &[f32],
    m: &[f32],
    is: &[f32],
    scale: &[f32],
    shift: &[f32],
) -> (Vec<f64>, Vec<f64>) {
    let c = m.len();
    channel_sums(
        xs.len() / c,
        c,
        #[inline(always)]
        |at, ch, sum_dy, sum_dy_xhat| {
            let w = sum_dy.len();
            let (xr, dr) = (&xs[at..][..w], &ds[at..][..w]);
            let sums = sum_dy.iter_mut().zip(sum_dy_xhat.iter_mut());
            let per_channel =
                m[ch..][..w].iter().zip(&is[ch..][..w]).zip(scale[ch..][..w].iter().zip(&shift[ch..][..w]));
            for ((sd, sx), ((x, d), ((m, is), (a, b)))) in sums.zip(xr.iter().zip(dr).zip(per_channel)) {
                let d = through_relu::<RELU>(*d, *x, *a, *b);
                *sd += d;
                *sx += d * ((x - m) * is);
            }
        },
    )
}

/// Training mode: dx = gamma * inv_std * (dy - mean(dy) - xhat * mean(dy * xhat)), with dy
/// through the relu when `relu` is given (as the sums were).
#[allow(clippy::too_many_arguments)]
pub fn bn_train_backward_data(
    dy: &Tensor,
    relu: Option<&ReluAfter>,
    x: &Tensor,
    mean: &Tensor,
    inv_std: &Tensor,
    gamma: &Tensor,
    sums: &(Tensor, Tensor),
) -> Result<Tensor> {
    let c = channels_of(x);
    let rows = x.len() / c;
    match x.device() {
        Device::Cpu => {
            let (m, is, g) = (mean.as_slice(), inv_std.as_slice(), gamma.as_slice());
            let a: Vec<f32> = (0..c).map(|i| g[i] * is[i]).collect();
            let mdy: Vec<f32> = sums.0.as_slice().iter().map(|s| s / rows as f32).collect();
            let mdx: Vec<f32> = sums.1.as_slice().iter().map(|s| s / rows as f32).collect();
            let k = PerChannel { a: &a, mean: m, inv_std: is, mean_dy: &mdy, mean_dy_xhat: &mdx };
            let (xs, ds) = (x.as_slice(), dy.as_slice());
            let dx = match relu {
                Some(r) => {
                    let (scale, shift) = affine_coefficients(mean, inv_std, &r.gamma, &r.beta);
                    train_dx::<true>(xs, ds, &k, &scale, &shift)
                }
                None => train_dx::<false>(xs, ds, &k, m, m),
            };
            Ok(Tensor::from_vec(x.shape(), dx))
        }
        _ => elementwise_kernel(
            "bn_train_bwd_dx_f32",
            x,
            &[
                dy.arg(),
                ReluAfter::kernel_args(relu).1,
                x.arg(),
                mean.arg(),
                inv_std.arg(),
                gamma.arg(),
                sums.0.arg(),
                sums.1.arg(),
            ],
            &[int(c), int(rows)],
        ),
    }
}

/// The per-channel constants of the training-mode input gradient.
struct PerChannel<'a> {
    /// gamma * inv_std.
    a: &'a [f32],
    mean: &'a [f32],
    inv_std: &'a [f32],
    mean_dy: &'a [f32],
    mean_dy_xhat: &'a [f32],
}

/// `bn_train_backward_data` on the cpu; `scale` and `shift` as in `grad_sums`.
fn train_dx<const RELU: bool>(
    xs: &[f32],
    ds: &[f32],
    k: &PerChannel,
    scale: &[f32],
    shift: &[f32],
) -> Vec<f32> {
    let c = k.a.len();
    rows_into(xs.len(), c, |out, r| {
        let (xr, dr) = (&xs[r * c..][..c], &ds[r * c..][..c]);
        let per_channel =
            k.a.iter()
                .zip(k.mean)
                .zip(k.inv_std)
                .zip(k.mean_dy)
                .zip(k.mean_dy_xhat)
                .zip(scale.iter().zip(shift));
        for ((o, (x, d)), (((((a, m), is), mdy), mdx), (sa, sb))) in
            out.iter_mut().zip(xr.iter().zip(dr)).zip(per_channel)
        {
            let d = through_relu::<RELU>(*d, *x, *sa, *sb);
            o.write(a * (d - mdy - (x - m) * is * mdx));
        }
    })
}

/// Evaluation mode: dx = dy * gamma * inv_std, with dy through the relu when `relu` is given
/// (the cpu then reads `x` and `mean`, the running mean, for its mask).
pub fn bn_eval_backward_data(
    dy: &Tensor,
    relu: Option<&ReluAfter>,
    x: &Tensor,
    mean: &Tensor,
    inv_std: &Tensor,
    gamma: &Tensor,
) -> Result<Tensor> {
    let c = channels_of(dy);
    match dy.device() {
        Device::Cpu => {
            let a: Vec<f32> = gamma.as_slice().iter().zip(inv_std.as_slice()).map(|(g, is)| g * is).collect();
            let ds = dy.as_slice();
            let dx = match relu {
                Some(r) => {
                    let (scale, shift) = affine_coefficients(mean, inv_std, &r.gamma, &r.beta);
                    eval_dx::<true>(ds, x.as_slice(), &a, &scale, &shift)
                }
                None => eval_dx::<false>(ds, ds, &a, &a, &a),
            };
            Ok(Tensor::from_vec(dy.shape(), dx))
        }
        _ => elementwise_kernel(
            "bn_eval_bwd_dx_f32",
            dy,
            &[dy.arg(), ReluAfter::kernel_args(relu).1, x.arg(), mean.arg(), inv_std.arg(), gamma.arg()],
            &[int(c)],
        ),
    }
}

/// `bn_eval_backward_data` on the cpu; `xs`, `scale` and `shift` as in `grad_sums` (unused
/// unless RELU).
fn eval_dx<const RELU: bool>(ds: &[f32], xs: &[f32], a: &[f32], scale: &[f32], shift: &[f32]) -> Vec<f32> {
    let c = a.len();
    rows_into(ds.len(), c, |out, r| {
        let per_channel = a.iter().zip(scale.iter().zip(shift));
        for ((o, (d, x)), (a, (sa, sb))) in
            out.iter_mut().zip(ds[r * c..][..c].iter().zip(&xs[r * c..][..c])).zip(per_channel)
        {
            o.write(through_relu::<RELU>(*d, *x, *sa, *sb) * a);
        }
    })
}

/// What the backward pass keeps of a relu after batch norm.
fn relu_after(activation: Activation, gamma: &Var, beta: &Var) -> Option<ReluAfter> {
    (activation == Activation::Relu)
        .then(|| ReluAfter { gamma: gamma.value().clone(), beta: beta.value().clone() })
}

impl Tape {
    /// The batch statistics of training mode, once the affine parameters are checked against
    /// x's channels: from the sums the convolution that produced x took as it wrote it
    /// (`Tape::offer_channel_sums`) where it did, else by a pass over x (`batch_statistics`,
    /// the unfused path the tests compare with).
    pub(crate) fn train_statistics(
        &self,
        x: &Var,
        gamma: &Var,
        beta: &Var,
        eps: f32,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        let c = channels_of(x.value());
        ensure!(
            gamma.value().len() == c && beta.value().len() == c,
            "batch norm: {c} channels but affine parameters of {:?}",
            gamma.shape()
        );
        let rows = x.value().len() / c;
        ensure!(rows > 1, "batch norm in training mode needs more than one value per channel");
        match self.take_channel_sums(x) {
            Some(sums) if sums.channels == c && sums.rows == rows => sums.statistics(x.value().device(), eps),
            _ => batch_statistics(x.value(), eps),
        }
    }
}

/// Evaluation mode's parameters and running statistics have x's channels.
pub(crate) fn check_eval_parameters(
    x: &Var,
    gamma: &Var,
    beta: &Var,
    running_mean: &Tensor,
    running_var: &Tensor,
) -> Result<()> {
    let c = channels_of(x.value());
    ensure!(
        gamma.value().len() == c
            && beta.value().len() == c
            && running_mean.len() == c
            && running_var.len() == c,
        "batch norm: parameters do not match {c} channels"
    );
    Ok(())
}

impl Tape {
    /// Training mode: normalises with the batch's own statistics, then `activation`, and
    /// returns the statistics.
    pub fn batch_norm_train(
        &self,
        x: &Var,
        gamma: &Var,
        beta: &Var,
        eps: f32,
        activation: Activation,
    ) -> Result<(Var, BatchStats)> {
        let (mean, inv_std, var_unbiased) = self.train_statistics(x, gamma, beta, eps)?;
        let y = bn_apply(x.value(), &mean, &inv_std, gamma.value(), beta.value(), activation)?;
        let stats = BatchStats { mean: mean.clone(), var_unbiased };
        if !self.needs_grad(&[x, gamma, beta]) {
            return Ok((Var::constant(y), stats));
        }
        let (x_saved, gamma_saved) = (x.value().clone(), gamma.value().clone());
        let relu = relu_after(activation, gamma, beta);
        let var = self.record(
            y,
            &[x, gamma, beta],
            Box::new(move |dy, needs| {
                let relu = relu.as_ref();
                let sums = bn_grad_sums(&x_saved, dy, relu, &mean, &inv_std)?;
                let dx = match needs[0] {
                    true => Some(bn_train_backward_data(
                        dy,
                        relu,
                        &x_saved,
                        &mean,
                        &inv_std,
                        &gamma_saved,
                        &sums,
                    )?),
                    false => None,
                };
                let (dbeta, dgamma) = sums;
                Ok(vec![dx, needs[1].then_some(dgamma), needs[2].then_some(dbeta)])
            }),
        );
        Ok((var, stats))
    }

    /// Evaluation mode: normalises with the running statistics (a fixed affine map), then
    /// `activation`.
    #[allow(clippy::too_many_arguments)]
    pub fn batch_norm_eval(
        &self,
        x: &Var,
        gamma: &Var,
        beta: &Var,
        running_mean: &Tensor,
        running_var: &Tensor,
        eps: f32,
        activation: Activation,
    ) -> Result<Var> {
        check_eval_parameters(x, gamma, beta, running_mean, running_var)?;
        let inv_std = inv_std_of(running_var, eps)?;
        let y = bn_apply(x.value(), running_mean, &inv_std, gamma.value(), beta.value(), activation)?;
        if !self.needs_grad(&[x, gamma, beta]) {
            return Ok(Var::constant(y));
        }
        let (x_saved, gamma_saved, mean) = (x.value().clone(), gamma.value().clone(), running_mean.clone());
        let relu = relu_after(activation, gamma, beta);
        Ok(self.record(
            y,
            &[x, gamma, beta],
            Box::new(move |dy, needs| {
                let relu = relu.as_ref();
                let dx = match needs[0] {
                    true => Some(bn_eval_backward_data(dy, relu, &x_saved, &mean, &inv_std, &gamma_saved)?),
                    false => None,
                };
                let (dbeta, dgamma) = match needs[1] || needs[2] {
                    true => {
                        let (a, b) = bn_grad_sums(&x_saved, dy, relu, &mean, &inv_std)?;
                        (Some(a), Some(b))
                    }
                    false => (None, None),
                };
                Ok(vec![dx, dgamma.filter(|_| needs[1]), dbeta.filter(|_| needs[2])])
            }),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::Activation;
    use crate::autograd::{Tape, Var};
    use crate::ops::gradcheck::{check_gradients, random_tensor};
    use crate::tensor::Tensor;

    #[test]
    fn train_mode_normalises_and_reports_statistics() {
        let x = random_tensor(&[4, 3, 5, 6], 1);
        let t = Tape::no_grad();
        let (g, b) = (t.leaf(Tensor::full(&[6], 2.0), false), t.leaf(Tensor::full(&[6], 0.5), false));
        let (y, stats) =
            t.batch_norm_train(&t.leaf(x.clone(), false), &g, &b, 1e-5, Activation::Identity).unwrap();
        let (xs, ys) = (x.as_slice(), y.value().as_slice());
        let n = (xs.len() / 6) as f64;
        for c in 0..6 {
            let vals: Vec<f64> = xs.iter().skip(c).step_by(6).map(|v| *v as f64).collect();
            let mean = vals.iter().sum::<f64>() / n;
            let var = vals.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
            assert!((stats.mean.as_slice()[c] as f64 - mean).abs() < 1e-6);
            assert!((stats.var_unbiased.as_slice()[c] as f64 - var * n / (n - 1.0)).abs() < 1e-5);
            let out: Vec<f64> = ys.iter().skip(c).step_by(6).map(|v| *v as f64).collect();
            let out_mean = out.iter().sum::<f64>() / n;
            let out_var = out.iter().map(|v| (v - out_mean).powi(2)).sum::<f64>() / n;
            assert!((out_mean - 0.5).abs() < 1e-5 && (out_var - 4.0).abs() < 1e-3);
        }
    }

    /// The per-channel sums against f64 loops, on channel counts that take every path of
    /// `channel_sums` (a partial group, whole groups and a tail, whole rows) and 37 rows (a
    /// partial block).
    #[test]
    fn channel_sums_equal_f64_reference() {
        for c in [6, 16, 40, 80] {
            let (x, dy) = (random_tensor(&[37, c], 20), random_tensor(&[37, c], 21));
            let (gamma, beta) = (random_tensor(&[c], 22), random_tensor(&[c], 23));
            let (mean, inv_std, _) = super::batch_statistics(&x, 1e-5).unwrap();
            let relu = super::ReluAfter { gamma: gamma.clone(), beta: beta.clone() };
            let (sum_dy, sum_dy_xhat) = super::bn_grad_sums(&x, &dy, Some(&relu), &mean, &inv_std).unwrap();
            let (xs, ds) = (x.as_slice(), dy.as_slice());
            for ch in 0..c {
                let col = |v: &[f32]| v.iter().skip(ch).step_by(c).map(|v| *v as f64).collect::<Vec<_>>();
                let (xc, dc) = (col(xs), col(ds));
                let m = xc.iter().sum::<f64>() / 37.0;
                let var = xc.iter().map(|v| (v - m).powi(2)).sum::<f64>() / 37.0;
                assert!((mean.as_slice()[ch] as f64 - m).abs() < 1e-6, "c {c} channel {ch}");
                assert!((inv_std.as_slice()[ch] as f64 - 1.0 / (var + 1e-5).sqrt()).abs() < 1e-4);
                let (is, g, b) =
                    (inv_std.as_slice()[ch] as f64, gamma.as_slice()[ch] as f64, beta.as_slice()[ch] as f64);
                let passed = |x: f64| (x - m) * is * g + b > 0.0;
                let sd: f64 = xc.iter().zip(&dc).filter(|(x, _)| passed(**x)).map(|(_, d)| d).sum();
                let sx: f64 =
                    xc.iter().zip(&dc).filter(|(x, _)| passed(**x)).map(|(x, d)| d * (x - m) * is).sum();
                assert!((sum_dy.as_slice()[ch] as f64 - sd).abs() < 1e-4, "c {c} channel {ch}");
                assert!((sum_dy_xhat.as_slice()[ch] as f64 - sx).abs() < 1e-4, "c {c} channel {ch}");
            }
        }
    }

    #[test]
    fn train_mode_gradients() {
        let x = random_tensor(&[3, 5, 3, 4], 2);
        let g = random_tensor(&[4], 3);
        let b = random_tensor(&[4], 4);
        check_gradients(&[x, g, b], |t, v| {
            Ok(t.batch_norm_train(&v[0], &v[1], &v[2], 1e-5, Activation::Identity)?.0)
        });
    }

    #[test]
    fn eval_mode_gradients() {
        let x = random_tensor(&[2, 3, 3, 5], 5);
        let g = random_tensor(&[5], 6);
        let b = random_tensor(&[5], 7);
        let rm = random_tensor(&[5], 8);
        let rv = Tensor::from_vec(&[5], vec![0.5, 1.0, 2.0, 0.1, 3.0]);
        check_gradients(&[x, g, b], |t, v| {
            t.batch_norm_eval(&v[0], &v[1], &v[2], &rm, &rv, 1e-5, Activation::Identity)
        });
    }

    /// relu(batch norm) fused and as two ops give the same bits: output and every gradient,
    /// in training and evaluation mode.
    #[test]
    fn fused_relu_equals_batch_norm_then_relu() {
        let rm = random_tensor(&[6], 9);
        let rv = Tensor::from_vec(&[6], vec![0.5, 1.0, 2.0, 0.1, 3.0, 0.7]);
        // 40 rows: more than one block of parallel rows and of f32 partial sums.
        let inputs = [random_tensor(&[5, 4, 2, 6], 10), random_tensor(&[6], 11), random_tensor(&[6], 12)];
        let dy = random_tensor(&[5, 4, 2, 6], 13);
        for train in [true, false] {
            let run = |fused: bool| {
                let t = Tape::new();
                let v: Vec<Var> = inputs.iter().map(|x| t.leaf(x.clone(), true)).collect();
                let activation = if fused { Activation::Relu } else { Activation::Identity };
                let y = if train {
                    t.batch_norm_train(&v[0], &v[1], &v[2], 1e-5, activation).unwrap().0
                } else {
                    t.batch_norm_eval(&v[0], &v[1], &v[2], &rm, &rv, 1e-5, activation).unwrap()
                };
                let y = if fused { y } else { t.relu(&y).unwrap() };
                let grads = t.backward_from(&y, dy.clone()).unwrap();
                let mut all = vec![y.value().to_vec()];
                all.extend(v.iter().map(|x| grads.get(x).unwrap().to_vec()));
                all
            };
            let (fused, unfused) = (run(true), run(false));
            assert!(fused[0].contains(&0.0) && fused[0].iter().any(|v| *v > 0.0));
            assert_eq!(fused, unfused, "train = {train}");
        }
    }
}
