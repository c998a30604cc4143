//! 2-D convolution over NHWC activations with OIHW weights (PyTorch's weight layout), with
//! stride, zero padding and groups. Groups = N runs the N experts' convolutions as one op.
//!
//! CPU: images are processed in chunks in parallel; a chunk is unfolded (im2col) into rows of
//! `K*K*C_in` values ordered (group, kh, kw, channel) so that every group's columns are
//! contiguous, and each group is one GEMM against its weights transposed to OHWI. Backward
//! data is the transposed GEMM followed by col2im; backward weight accumulates per-part GEMMs
//! that are summed in a fixed order (deterministic). A 1x1 stride-1 convolution needs no
//! unfolding: the NHWC input already is the GEMM operand.

use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};

use anyhow::{Result, bail, ensure};
use gemm::Parallelism;
use rayon::prelude::*;

use crate::autograd::{Tape, Var};
use crate::device::Device;
use crate::gpu::{self, Arg, GpuBuffer, LaunchConfig, int};
use crate::ops::batchnorm::{ChannelSums, ReluAffine};
use crate::ops::elementwise::transpose_matrices;
use crate::ops::{conv_direct, conv_winograd};
use crate::parallel;
use crate::precision::{self, Precision};
use crate::tensor::{Storage, Tensor};

/// Which implementation runs convolutions on the `cuda` device: the project's kernels, or cuDNN
/// as the baseline they are measured against (`--conv-impl`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConvImpl {
    Kernels,
    Cudnn,
}

static USE_CUDNN: AtomicBool = AtomicBool::new(false);

pub fn set_conv_impl(choice: ConvImpl) {
    USE_CUDNN.store(choice == ConvImpl::Cudnn, Ordering::Relaxed);
}

pub fn conv_impl() -> ConvImpl {
    if USE_CUDNN.load(Ordering::Relaxed) { ConvImpl::Cudnn } else { ConvImpl::Kernels }
}

impl ConvImpl {
    /// The name `--conv-impl` takes.
    pub fn name(self) -> &'static str {
        match self {
            ConvImpl::Kernels => "kernels",
            ConvImpl::Cudnn => "cudnn",
        }
    }
}

impl std::str::FromStr for ConvImpl {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "kernels" => Ok(ConvImpl::Kernels),
            "cudnn" => Ok(ConvImpl::Cudnn),
            _ => Err(format!("unknown conv implementation '{s}'; expected kernels or cudnn")),
        }
    }
}

/// How the convolutions of a device run: the one place that chooses, for all three directions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConvEngine {
    /// The cpu device, f32 (its algorithm chosen per shape and direction by `cpu_conv`).
    Cpu,
    /// The project's kernels: f32 on the SIMT cores, or bf16 on the tensor cores.
    Kernels(Precision),
    /// cuDNN on the cuda device (`--conv-impl cudnn`), in the same precision.
    Cudnn(Precision),
}

/// The engine for convolutions on `device` in the calling thread's precision.
pub fn conv_engine(device: Device) -> Result<ConvEngine> {
    let precision = precision::current();
    precision.check_device(device)?;
    Ok(match device {
        Device::Cpu => ConvEngine::Cpu,
        Device::Cuda if conv_impl() == ConvImpl::Cudnn => ConvEngine::Cudnn(precision),
        _ => ConvEngine::Kernels(precision),
    })
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conv2dParams {
    pub stride: usize,
    pub padding: usize,
    pub groups: usize,
}

/// Every size of one convolution, derived from the input and weight shapes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ConvGeometry {
    pub batch: usize,
    pub height: usize,
    pub width: usize,
    pub in_channels: usize,
    pub out_channels: usize,
    pub kernel: usize,
    pub stride: usize,
    pub padding: usize,
    pub groups: usize,
    pub out_height: usize,
    pub out_width: usize,
}

impl ConvGeometry {
    /// `x`: [B, H, W, C_in]; `w`: [C_out, C_in / groups, K, K].
    pub fn new(x: &[usize], w: &[usize], p: Conv2dParams) -> Result<ConvGeometry> {
        ensure!(x.len() == 4, "conv2d input must be [B, H, W, C], got {x:?}");
        ensure!(w.len() == 4, "conv2d weight must be [O, I/g, K, K], got {w:?}");
        ensure!(w[2] == w[3], "conv2d kernel must be square, got {w:?}");
        ensure!(p.stride >= 1 && p.groups >= 1, "conv2d stride and groups must be >= 1");
        let (batch, height, width, in_channels) = (x[0], x[1], x[2], x[3]);
        let (out_channels, kernel) = (w[0], w[2]);
        ensure!(
            in_channels % p.groups == 0 && out_channels % p.groups == 0,
            "conv2d: channels {in_channels} -> {out_channels} not divisible by groups {}",
            p.groups
        );
        ensure!(
            w[1] * p.groups == in_channels,
            "conv2d: weight {w:?} with groups {} does not fit {in_channels} input channels",
            p.groups
        );
        ensure!(
            height + 2 * p.padding >= kernel && width + 2 * p.padding >= kernel,
            "conv2d: kernel {kernel} larger than padded input {height}x{width}"
        );
        Ok(ConvGeometry {
            batch,
            height,
            width,
            in_channels,
            out_channels,
            kernel,
            stride: p.stride,
            padding: p.padding,
            groups: p.groups,
            out_height: (height + 2 * p.padding - kernel) / p.stride + 1,
            out_width: (width + 2 * p.padding - kernel) / p.stride + 1,
        })
    }

    pub fn in_per_group(&self) -> usize {
        self.in_channels / self.groups
    }

    pub fn out_per_group(&self) -> usize {
        self.out_channels / self.groups
    }

    /// Length of one group's unfolded row: the reduction size of its GEMM.
    pub fn group_depth(&self) -> usize {
        self.kernel * self.kernel * self.in_per_group()
    }

    /// Length of a whole unfolded row (all groups).
    fn row_len(&self) -> usize {
        self.kernel * self.kernel * self.in_channels
    }

    fn pixels_out(&self) -> usize {
        self.out_height * self.out_width
    }

    fn pixels_in(&self) -> usize {
        self.height * self.width
    }

    pub fn input_len(&self) -> usize {
        self.batch * self.pixels_in() * self.in_channels
    }

    pub fn output_shape(&self) -> [usize; 4] {
        [self.batch, self.out_height, self.out_width, self.out_channels]
    }

    pub fn weight_shape(&self) -> [usize; 4] {
        [self.out_channels, self.in_per_group(), self.kernel, self.kernel]
    }

    /// Multiply-adds times two of the forward pass.
    pub fn flops(&self) -> f64 {
        2.0 * (self.batch * self.pixels_out() * self.out_channels * self.group_depth()) as f64
    }

    fn is_pointwise(&self) -> bool {
        self.kernel == 1 && self.stride == 1 && self.padding == 0
    }

    /// Images per parallel chunk: enough GEMM rows to be efficient, enough chunks to share.
    pub(crate) fn images_per_chunk(&self) -> usize {
        let for_rows = 256usize.div_ceil(self.pixels_out());
        for_rows.min((self.batch / 4).max(1))
    }

    fn chunks(&self) -> usize {
        self.batch.div_ceil(self.images_per_chunk())
    }
}

thread_local! {
    // Unfolded rows are reused between chunks and calls: fresh pages for every chunk would
    // cost more than the copy itself.
    static SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    SCRATCH.with(|s| {
        let mut s = s.borrow_mut();
        if s.len() < len {
            s.resize(len, 0.0);
        }
        f(&mut s[..len])
    })
}

/// Single-threaded strided GEMM: dst(m x n) = (accumulate ? dst : 0) + lhs(m x k) * rhs(k x n).
/// Strides are (row, column) in elements.
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_f32(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut f32,
    dst_strides: (usize, usize),
    accumulate: bool,
    lhs: *const f32,
    lhs_strides: (usize, usize),
    rhs: *const f32,
    rhs_strides: (usize, usize),
) {
    // SAFETY: the caller guarantees that the strided extents stay inside live slices.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            dst_strides.1 as isize,
            dst_strides.0 as isize,
            accumulate,
            lhs,
            lhs_strides.1 as isize,
            lhs_strides.0 as isize,
            rhs,
            rhs_strides.1 as isize,
            rhs_strides.0 as isize,
            if accumulate { 1.0 } else { 0.0 },
            1.0,
            false,
            false,
            false,
            Parallelism::None,
        )
    }
}

/// Unfolds images [first, first + count) into `col`, one row per output pixel.
fn im2col(x: &[f32], g: &ConvGeometry, first: usize, count: usize, col: &mut [f32]) {
    let (k, cin, cpg, depth) = (g.kernel, g.in_channels, g.in_per_group(), g.group_depth());
    let row_len = g.row_len();
    for i in 0..count {
        let image = &x[(first + i) * g.pixels_in() * cin..][..g.pixels_in() * cin];
        for oh in 0..g.out_height {
            for ow in 0..g.out_width {
                let row = (i * g.out_height + oh) * g.out_width + ow;
                let dst = &mut col[row * row_len..(row + 1) * row_len];
                for kh in 0..k {
                    let ih = (oh * g.stride + kh) as isize - g.padding as isize;
                    for kw in 0..k {
                        let iw = (ow * g.stride + kw) as isize - g.padding as isize;
                        let tap = (kh * k + kw) * cpg;
                        let inside =
                            ih >= 0 && iw >= 0 && (ih as usize) < g.height && (iw as usize) < g.width;
                        for grp in 0..g.groups {
                            let d = &mut dst[grp * depth + tap..][..cpg];
                            if inside {
                                let pixel = (ih as usize * g.width + iw as usize) * cin;
                                d.copy_from_slice(&image[pixel + grp * cpg..][..cpg]);
                            } else {
                                d.fill(0.0);
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Adds unfolded rows back onto the images they came from (the adjoint of `im2col`).
fn col2im(col: &[f32], g: &ConvGeometry, count: usize, dx: &mut [f32]) {
    let (k, cin, cpg, depth) = (g.kernel, g.in_channels, g.in_per_group(), g.group_depth());
    let row_len = g.row_len();
    for i in 0..count {
        let image = &mut dx[i * g.pixels_in() * cin..][..g.pixels_in() * cin];
        for oh in 0..g.out_height {
            for ow in 0..g.out_width {
                let row = (i * g.out_height + oh) * g.out_width + ow;
                let src = &col[row * row_len..(row + 1) * row_len];
                for kh in 0..k {
                    let ih = (oh * g.stride + kh) as isize - g.padding as isize;
                    if ih < 0 || ih as usize >= g.height {
                        continue;
                    }
                    for kw in 0..k {
                        let iw = (ow * g.stride + kw) as isize - g.padding as isize;
                        if iw < 0 || iw as usize >= g.width {
                            continue;
                        }
                        let tap = (kh * k + kw) * cpg;
                        let pixel = (ih as usize * g.width + iw as usize) * cin;
                        for grp in 0..g.groups {
                            let s = &src[grp * depth + tap..][..cpg];
                            let d = &mut image[pixel + grp * cpg..][..cpg];
                            for (a, b) in d.iter_mut().zip(s) {
                                *a += b;
                            }
                        }
                    }
                }
            }
        }
    }
}

/// [O, I, K, K] -> [O, K, K, I]: each output channel's taps in unfolded-row order.
fn oihw_to_ohwi(w: &[f32], g: &ConvGeometry) -> Vec<f32> {
    transpose_matrices(w, g.in_per_group(), g.kernel * g.kernel)
}

pub(crate) fn ohwi_to_oihw(w: &[f32], g: &ConvGeometry) -> Vec<f32> {
    transpose_matrices(w, g.kernel * g.kernel, g.in_per_group())
}

/// The GEMM operand for images [first, first + count): the input itself for a pointwise conv,
/// else the unfolded rows in `col`. Returns (pointer, row stride).
fn operand(x: &[f32], g: &ConvGeometry, first: usize, count: usize, col: &mut [f32]) -> (*const f32, usize) {
    if g.is_pointwise() {
        (x[first * g.pixels_in() * g.in_channels..].as_ptr(), g.in_channels)
    } else {
        im2col(x, g, first, count, col);
        (col.as_ptr(), g.row_len())
    }
}

fn scratch_len(g: &ConvGeometry) -> usize {
    if g.is_pointwise() { 0 } else { g.images_per_chunk() * g.pixels_out() * g.row_len() }
}

fn forward_cpu(x: &[f32], w_ohwi: &[f32], g: &ConvGeometry) -> Vec<f32> {
    let (cout, opg, depth) = (g.out_channels, g.out_per_group(), g.group_depth());
    let per_chunk = g.images_per_chunk();
    let mut out = vec![0.0; g.batch * g.pixels_out() * cout];
    out.par_chunks_mut(per_chunk * g.pixels_out() * cout).enumerate().for_each(|(c, out_chunk)| {
        let count = out_chunk.len() / (g.pixels_out() * cout);
        let rows = count * g.pixels_out();
        with_scratch(scratch_len(g), |col| {
            let (lhs, lhs_row) = operand(x, g, c * per_chunk, count, col);
            for grp in 0..g.groups {
                // SAFETY: every pointer addresses a live slice; the extents follow from
                // the geometry that sized those slices.
                unsafe {
                    gemm_f32(
                        rows,
                        opg,
                        depth,
                        out_chunk.as_mut_ptr().add(grp * opg),
                        (cout, 1),
                        false,
                        lhs.add(grp * depth),
                        (lhs_row, 1),
                        w_ohwi.as_ptr().add(grp * opg * depth),
                        (1, depth),
                    )
                }
            }
        })
    });
    out
}

fn backward_data_cpu(dy: &[f32], w_ohwi: &[f32], g: &ConvGeometry) -> Vec<f32> {
    let (cin, cout) = (g.in_channels, g.out_channels);
    let (opg, depth) = (g.out_per_group(), g.group_depth());
    let per_chunk = g.images_per_chunk();
    let mut dx = vec![0.0; g.input_len()];
    dx.par_chunks_mut(per_chunk * g.pixels_in() * cin).enumerate().for_each(|(c, dx_chunk)| {
        let count = dx_chunk.len() / (g.pixels_in() * cin);
        let rows = count * g.pixels_out();
        let dy_chunk = &dy[c * per_chunk * g.pixels_out() * cout..];
        let direct = g.is_pointwise();
        with_scratch(scratch_len(g), |dcol| {
            let (dst, dst_row) =
                if direct { (dx_chunk.as_mut_ptr(), cin) } else { (dcol.as_mut_ptr(), g.row_len()) };
            for grp in 0..g.groups {
                // SAFETY: as in `forward_cpu`.
                unsafe {
                    gemm_f32(
                        rows,
                        depth,
                        opg,
                        dst.add(grp * depth),
                        (dst_row, 1),
                        false,
                        dy_chunk.as_ptr().add(grp * opg),
                        (cout, 1),
                        w_ohwi.as_ptr().add(grp * opg * depth),
                        (depth, 1),
                    )
                }
            }
            if !direct {
                col2im(dcol, g, count, dx_chunk);
            }
        })
    });
    dx
}

fn backward_weight_cpu(x: &[f32], dy: &[f32], g: &ConvGeometry) -> Vec<f32> {
    let cout = g.out_channels;
    let (opg, depth) = (g.out_per_group(), g.group_depth());
    let per_chunk = g.images_per_chunk();
    let parts = parallel::map_parts(g.chunks(), |chunks| {
        let mut acc = vec![0.0; cout * depth];
        for c in chunks {
            let first = c * per_chunk;
            let count = per_chunk.min(g.batch - first);
            let rows = count * g.pixels_out();
            let dy_chunk = &dy[first * g.pixels_out() * cout..];
            with_scratch(scratch_len(g), |col| {
                let (rhs, rhs_row) = operand(x, g, first, count, col);
                for grp in 0..g.groups {
                    // SAFETY: as in `forward_cpu`.
                    unsafe {
                        gemm_f32(
                            opg,
                            depth,
                            rows,
                            acc.as_mut_ptr().add(grp * opg * depth),
                            (depth, 1),
                            true,
                            dy_chunk.as_ptr().add(grp * opg),
                            (1, cout),
                            rhs.add(grp * depth),
                            (rhs_row, 1),
                        )
                    }
                }
            });
        }
        acc
    });
    ohwi_to_oihw(&parallel::sum_in_order(parts), g)
}

/// The convolutions every check of this op runs (the cpu tests and `mocse selftest`): input
/// [B, H, W, C], weight [O, I/g, K, K] and parameters. Odd sizes, groups 1 and N, stride 1 and
/// 2, 1x1 and 4x4 kernels, both tile shapes of the kernels, and a reduction long enough to be
/// split in backward weight.
pub fn check_shapes() -> Vec<([usize; 4], [usize; 4], Conv2dParams)> {
    let p = |stride, padding, groups| Conv2dParams { stride, padding, groups };
    vec![
        ([2, 5, 7, 3], [4, 3, 3, 3], p(1, 1, 1)),
        ([3, 9, 9, 6], [8, 3, 3, 3], p(2, 1, 2)),
        ([2, 8, 8, 10], [10, 1, 3, 3], p(1, 1, 10)),
        ([5, 7, 7, 20], [30, 2, 3, 3], p(2, 1, 10)),
        ([2, 6, 6, 12], [12, 4, 1, 1], p(1, 0, 3)),
        ([3, 7, 5, 12], [24, 4, 1, 1], p(2, 0, 3)),
        ([1, 4, 4, 4], [2, 4, 4, 4], p(1, 0, 1)),
        ([9, 4, 4, 8], [8, 8, 3, 3], p(1, 1, 1)),
        ([2, 8, 8, 64], [96, 64, 3, 3], p(1, 1, 1)),
        ([2, 6, 6, 160], [320, 16, 3, 3], p(2, 1, 10)),
        ([3, 32, 32, 3], [160, 3, 3, 3], p(1, 1, 1)),
        ([5, 32, 32, 20], [20, 2, 3, 3], p(1, 1, 10)),
        // Strided backward data by phases (bf16): odd sizes, a 4x4 kernel, stride 3.
        ([2, 7, 9, 16], [16, 8, 3, 3], p(2, 1, 2)),
        ([1, 9, 8, 8], [16, 8, 4, 4], p(2, 1, 1)),
        ([2, 10, 11, 8], [8, 8, 3, 3], p(3, 1, 1)),
    ]
}

/// The shape arguments every conv kernel takes, in `ConvShape`'s order.
fn shape_args(g: &ConvGeometry) -> [Arg; 11] {
    [
        int(g.batch),
        int(g.height),
        int(g.width),
        int(g.in_channels),
        int(g.out_channels),
        int(g.kernel),
        int(g.stride),
        int(g.padding),
        int(g.groups),
        int(g.out_height),
        int(g.out_width),
    ]
}

/// What the kernel devices launch for one direction of a convolution: the kernel, the tile of
/// the per-group GEMM one block of 256 threads computes (rows x columns), the grid (z: groups,
/// times the splits of backward weight's pixel reduction) and those splits; whether the kernel
/// takes its weights packed in bf16 (`pack_weights`) rather than as the f32 tensor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConvLaunch {
    pub kernel: String,
    pub tile: [usize; 2],
    pub grid: [u32; 3],
    pub splits: usize,
    pub packed_weights: bool,
}

impl ConvLaunch {
    /// Forward: rows = output pixels, columns = output channels of a group. Backward data:
    /// rows = input pixels, columns = input channels. Backward weight: rows = output channels,
    /// columns = (kh, kw, input channel), the pixels split so that small weights fill the GPU.
    /// Tiles: for 16 columns or fewer (rows for backward weight) the narrow ones (256 x 16,
    /// 16 x 256), else 64 x 64 (f32) or 128 x 64 (bf16); in bf16, 128 x 64 element by element
    /// (`_any`) where the channels it gathers per group are not a multiple of 8, and backward
    /// data at stride > 1 phase by phase (`_strided`).
    pub fn of(direction: Direction, precision: Precision, g: &ConvGeometry) -> ConvLaunch {
        let suffix = precision.kernel_suffix();
        let wide = match precision {
            Precision::F32 => [64, 64],
            Precision::Bf16 => [128, 64],
        };
        let (name, rows, cols, splits) = match direction {
            Direction::Forward => ("conv2d_fwd", g.batch * g.pixels_out(), g.out_per_group(), 1),
            Direction::BackwardData => ("conv2d_bwd_data", g.batch * g.pixels_in(), g.in_per_group(), 1),
            Direction::BackwardWeight => {
                let splits = (g.batch * g.pixels_out() / 2048).clamp(1, 32);
                ("conv2d_bwd_weight", g.out_per_group(), g.group_depth(), splits)
            }
        };
        let narrow = match direction {
            Direction::BackwardWeight => (rows <= 16).then_some([16, 256]),
            _ => (cols <= 16).then_some([256, 16]),
        };
        // The bf16 kernels gather eight channels at a time: those reduced over (forward, backward
        // data), or both operands' (backward weight). Other channel counts (the stem's 3) take
        // `_any`, which gathers one by one.
        let by8 = match direction {
            Direction::Forward => g.in_per_group().is_multiple_of(8),
            Direction::BackwardData => g.out_per_group().is_multiple_of(8),
            Direction::BackwardWeight => {
                g.in_per_group().is_multiple_of(8) && g.out_per_group().is_multiple_of(8)
            }
        };
        let any = precision == Precision::Bf16 && !by8;
        // bf16 backward data at stride > 1 runs the input's stride x stride phases as separate
        // GEMMs over the taps that reach each (grid z: phases x groups; rows: the largest phase).
        let phases = match direction {
            Direction::BackwardData if precision == Precision::Bf16 && !any && g.stride > 1 => {
                g.stride * g.stride
            }
            _ => 1,
        };
        let (name, rows) = match phases {
            1 => (name.to_string(), rows),
            _ => (
                "conv2d_bwd_data_strided".to_string(),
                g.batch * g.height.div_ceil(g.stride) * g.width.div_ceil(g.stride),
            ),
        };
        let (kernel, tile) = match narrow {
            _ if any => (format!("{name}_any_{suffix}"), wide),
            Some(tile) => (format!("{name}_narrow_{suffix}"), tile),
            None => (format!("{name}_{suffix}"), wide),
        };
        let grid = [
            rows.div_ceil(tile[0]) as u32,
            cols.div_ceil(tile[1]) as u32,
            (g.groups * splits * phases) as u32,
        ];
        let packed_weights = precision == Precision::Bf16 && !any && direction != Direction::BackwardWeight;
        ConvLaunch { kernel, tile, grid, splits, packed_weights }
    }

    /// The weights argument: `w` itself, or its bf16 packing (kept alive by the returned buffer
    /// until the launch is queued; the stream orders the launches).
    fn weights(
        &self,
        w: &Tensor,
        direction: Direction,
        g: &ConvGeometry,
    ) -> Result<(Arg, Option<GpuBuffer>)> {
        if !self.packed_weights {
            return Ok((w.arg(), None));
        }
        let packed = GpuBuffer::for_output(w.device(), w.len() * 2)?;
        gpu::launch(
            w.device(),
            "pack_conv_weights_bf16",
            LaunchConfig::for_elements(w.len()),
            &[
                packed.arg(),
                w.arg(),
                int(g.out_channels),
                int(g.in_per_group()),
                int(g.kernel * g.kernel),
                int(g.groups),
                int(usize::from(direction == Direction::BackwardData)),
            ],
        )?;
        Ok((packed.arg(), Some(packed)))
    }

    fn config(&self) -> LaunchConfig {
        LaunchConfig::new(self.grid, [256, 1, 1])
    }
}

/// Which CPU algorithm runs a convolution: the direct microkernels (`conv_direct`), Winograd
/// F(2x2, 3x3) or F(4x4, 3x3) (`conv_winograd`), or unfolding plus a GEMM (this file).
/// `MOCSE_CPU_CONV=direct|gemm|winograd|winograd4` forces one wherever it applies (for tests
/// and measurements; `winograd` is F(2x2)); by default each direction picks the faster for its
/// shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CpuConv {
    Direct,
    Gemm,
    Winograd(conv_winograd::Tile),
}

/// One of the three computations a convolution layer needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    Forward,
    BackwardData,
    BackwardWeight,
}

impl CpuConv {
    /// Whether this algorithm computes `direction` of the convolution `g`: the GEMM every one,
    /// the direct kernels backward data only at stride 1 (as a forward convolution), of strided
    /// 1x1 convolutions without padding and of 3x3 ones at stride 2 with padding 1, Winograd
    /// only 3x3 convolutions at stride 1 with padding 1.
    pub fn computes(self, direction: Direction, g: &ConvGeometry) -> bool {
        match self {
            CpuConv::Gemm => true,
            CpuConv::Direct => {
                direction != Direction::BackwardData
                    || (g.stride == 1 && g.padding < g.kernel)
                    || conv_direct::strided_pointwise(g)
                    || conv_direct::stride2_3x3(g)
            }
            CpuConv::Winograd(_) => conv_winograd::applies(g),
        }
    }

    /// `direction` of the convolution `g` on the CPU by this algorithm (which must compute it):
    /// the output from (x, w), the input gradient from (dy, w), or the weight gradient from
    /// (x, dy). Weights are packed or transformed inside, as every call must.
    pub fn run(self, direction: Direction, a: &[f32], b: &[f32], g: &ConvGeometry) -> Vec<f32> {
        self.run_mapped(direction, a, None, b, g)
    }

    /// `run` with the input x (forward, weight gradient) taken through `map` first, as the
    /// algorithm reads it.
    pub fn run_mapped(
        self,
        direction: Direction,
        a: &[f32],
        map: Option<&ReluAffine>,
        b: &[f32],
        g: &ConvGeometry,
    ) -> Vec<f32> {
        assert!(self.computes(direction, g), "{self:?} does not compute {direction:?} of {g:?}");
        match (self, direction) {
            (CpuConv::Direct, Direction::BackwardWeight) => conv_direct::backward_weight(a, map, b, g),
            (CpuConv::Winograd(tile), Direction::BackwardWeight) => {
                conv_winograd::backward_weight(&mapped(a, map), b, g, tile)
            }
            (CpuConv::Gemm, Direction::BackwardWeight) => backward_weight_cpu(&mapped(a, map), b, g),
            _ => self.prepare(direction, b, g).run(direction, a, map, None, g),
        }
    }

    /// The weights (OIHW) of forward or backward data in the layout this algorithm reads.
    fn prepare(self, direction: Direction, w: &[f32], g: &ConvGeometry) -> PreparedWeights {
        let backward = direction == Direction::BackwardData;
        match self {
            CpuConv::Direct if backward && conv_direct::stride2_3x3(g) => {
                PreparedWeights::Phases(conv_direct::PhaseWeights::new(w, g))
            }
            CpuConv::Direct if backward => {
                PreparedWeights::Direct(conv_direct::PackedWeights::backward_data(w, g))
            }
            CpuConv::Direct => PreparedWeights::Direct(conv_direct::PackedWeights::forward(w, g)),
            CpuConv::Winograd(tile) if backward => {
                PreparedWeights::Winograd(conv_winograd::WinogradWeights::backward_data(w, g, tile))
            }
            CpuConv::Winograd(tile) => {
                PreparedWeights::Winograd(conv_winograd::WinogradWeights::forward(w, g, tile))
            }
            CpuConv::Gemm => PreparedWeights::Gemm(oihw_to_ohwi(w, g)),
        }
    }
}

/// x through `map`, stored, for the algorithms that do not apply it as they read (Winograd
/// would compute every input 2.25 times in its overlapping windows, and the GEMM unfolds them
/// 9 times); x itself without a map.
fn mapped<'a>(x: &'a [f32], map: Option<&ReluAffine>) -> std::borrow::Cow<'a, [f32]> {
    match map {
        Some(map) => std::borrow::Cow::Owned(map.apply(x)),
        None => std::borrow::Cow::Borrowed(x),
    }
}

/// Weights in the layout an algorithm reads in the forward pass or backward data: packed
/// panels, Winograd-transformed panels, or OHWI for the GEMM.
enum PreparedWeights {
    Direct(conv_direct::PackedWeights),
    /// Backward data of a 3x3 stride-2 convolution by the direct kernels, phase by phase.
    Phases(conv_direct::PhaseWeights),
    Winograd(conv_winograd::WinogradWeights),
    Gemm(Vec<f32>),
}

impl PreparedWeights {
    /// The output from map(x) (forward) plus `residual` when given, or the input gradient from
    /// dy (backward data, no map and no residual).
    fn run(
        &self,
        direction: Direction,
        a: &[f32],
        map: Option<&ReluAffine>,
        residual: Option<&[f32]>,
        g: &ConvGeometry,
    ) -> Vec<f32> {
        let backward = direction == Direction::BackwardData;
        assert!(!(backward && (map.is_some() || residual.is_some())), "backward data maps and adds nothing");
        match self {
            PreparedWeights::Phases(p) => conv_direct::backward_data_by_phases(a, p, g),
            PreparedWeights::Direct(p) if backward && conv_direct::strided_pointwise(g) => {
                conv_direct::backward_data_strided_pointwise(a, p, g)
            }
            PreparedWeights::Direct(p) if backward => {
                conv_direct::forward(a, None, None, p, &conv_direct::backward_data_geometry(g))
            }
            PreparedWeights::Direct(p) => conv_direct::forward(a, map, residual, p, g),
            PreparedWeights::Winograd(t) if backward => {
                conv_winograd::forward(a, None, t, &conv_direct::backward_data_geometry(g))
            }
            PreparedWeights::Winograd(t) => conv_winograd::forward(&mapped(a, map), residual, t, g),
            PreparedWeights::Gemm(ohwi) if backward => backward_data_cpu(a, ohwi, g),
            PreparedWeights::Gemm(ohwi) => {
                let mut y = forward_cpu(&mapped(a, map), ohwi, g);
                if let Some(residual) = residual {
                    y.par_iter_mut().zip(residual).for_each(|(y, r)| *y += r);
                }
                y
            }
        }
    }
}

/// Prepared weights kept for weight tensors that stay constant across calls (evaluation,
/// attacks, the attack steps of adversarial training), so that they are packed or transformed
/// once instead of on every batch. Keyed by the tensor's storage, which never changes (a
/// `Weak` holds its allocation, so no other tensor can take its address); an entry goes when
/// its tensor does.
struct PreparedCache {
    entries: Vec<Prepared>,
}

struct Prepared {
    weights: Weak<Storage>,
    /// What else the prepared form depends on.
    algorithm: CpuConv,
    direction: Direction,
    shape: Vec<usize>,
    groups: usize,
    prepared: Arc<PreparedWeights>,
}

/// The most entries kept: every convolution of ten unfused experts in both directions.
const PREPARED_CACHE_ENTRIES: usize = 512;

static PREPARED: Mutex<PreparedCache> = Mutex::new(PreparedCache { entries: Vec::new() });

/// `direction` of `g` by `algorithm` with the weights `w`, prepared once and kept when
/// `keep_prepared` (the caller's promise that `w` is a constant it will use again).
fn run_with_weights(
    algorithm: CpuConv,
    direction: Direction,
    a: &[f32],
    (map, residual): (Option<&ReluAffine>, Option<&[f32]>),
    w: &Tensor,
    g: &ConvGeometry,
    keep_prepared: bool,
) -> Vec<f32> {
    assert!(algorithm.computes(direction, g), "{algorithm:?} does not compute {direction:?} of {g:?}");
    if !keep_prepared {
        return algorithm.prepare(direction, w.as_slice(), g).run(direction, a, map, residual, g);
    }
    let key = w.storage_ref();
    let found = {
        let mut cache = PREPARED.lock().unwrap_or_else(|e| e.into_inner());
        cache.entries.retain(|entry| entry.weights.strong_count() > 0);
        let same = |e: &&Prepared| {
            Weak::ptr_eq(&e.weights, &key)
                && (e.algorithm, e.direction, e.shape.as_slice(), e.groups)
                    == (algorithm, direction, w.shape(), g.groups)
        };
        cache.entries.iter().find(same).map(|entry| entry.prepared.clone())
    };
    let prepared = found.unwrap_or_else(|| {
        let prepared = Arc::new(algorithm.prepare(direction, w.as_slice(), g));
        let mut cache = PREPARED.lock().unwrap_or_else(|e| e.into_inner());
        if cache.entries.len() >= PREPARED_CACHE_ENTRIES {
            cache.entries.remove(0);
        }
        cache.entries.push(Prepared {
            weights: key,
            algorithm,
            direction,
            shape: w.shape().to_vec(),
            groups: g.groups,
            prepared: prepared.clone(),
        });
        prepared
    });
    prepared.run(direction, a, map, residual, g)
}

fn forced_cpu_conv() -> Option<CpuConv> {
    static FORCED: std::sync::OnceLock<Option<CpuConv>> = std::sync::OnceLock::new();
    *FORCED.get_or_init(|| match std::env::var("MOCSE_CPU_CONV").as_deref() {
        Err(_) => None,
        Ok("direct") => Some(CpuConv::Direct),
        Ok("gemm") => Some(CpuConv::Gemm),
        Ok("winograd") => Some(CpuConv::Winograd(conv_winograd::Tile::F2)),
        Ok("winograd4") => Some(CpuConv::Winograd(conv_winograd::Tile::F4)),
        Ok(v) => {
            eprintln!(
                "warning: MOCSE_CPU_CONV={v:?} is not direct, gemm, winograd or winograd4; choosing per layer"
            );
            None
        }
    })
}

/// The algorithm that runs `direction` of the convolution `g` on the CPU.
pub fn cpu_conv(g: &ConvGeometry, direction: Direction) -> CpuConv {
    let (cpg, opg) = (g.in_per_group(), g.out_per_group());
    let possible = CpuConv::Direct.computes(direction, g);
    // Measured per layer (`mocse bench --what conv-layers`, `cargo bench --bench cpu_conv`,
    // BENCHMARKS.md), with AVX-512 and with AVX2 alike: the direct kernels win for every forward
    // (up to 2x where groups are 16 channels wide: no packing of a 16-column GEMM's operands;
    // 1.1-1.5x on the 1x1 stride-2 shortcuts); for 3x3 backward data producing 8 or more channels
    // per group at stride 1; at stride 2 by phases, on images of 16 and more pixels across (8 and
    // more per tile row; 32 with AVX2, whose 16x16 layers are 1.25x slower) producing up to 32
    // channels per group (1.1-1.6x the GEMM; on 8x8 images the phases' rows of 4 pixels reload
    // the weights too often, up to 3x slower, and w64's 64 channels are 1.1x slower); and the
    // shortcuts' backward data (1.2-1.7x). The direct kernels
    // write the input gradient in one pass where the GEMM's col2im adds into a zeroed one. They
    // win for weight gradients where groups are at most 16 channels wide in and out (1.5x the
    // GEMM on the width-16 stem, 3 -> 16), grouped ones of up to 16 input channels per group, and
    // with AVX-512 ones of up to 4 input channels per group (MoCSE's stem, 3 -> 160: 1.25x the
    // GEMM; `conv_direct::weights_by_outputs`) and 3x3 ones of up to 32 (by kernel rows,
    // `conv_direct::weights_by_kernel_rows`: 1.1-1.5x the GEMM on the stride-2 layers of w16 and
    // MoCSE's second one). The GEMM keeps the wider weight gradients (up to 1.15x the kernel rows
    // on 64 and more input channels per group, 1.2-1.5x the other direct tiles from 32).
    let phases_from = if conv_direct::simd() == conv_direct::Simd::Avx512 { 16 } else { 32 };
    let faster = match direction {
        Direction::Forward => true,
        Direction::BackwardData => {
            (g.kernel == 3 && g.stride == 1 && cpg >= 8)
                || conv_direct::strided_pointwise(g)
                || (conv_direct::stride2_3x3(g) && g.width >= phases_from && cpg <= 32)
        }
        Direction::BackwardWeight => {
            (g.kernel == 3 && cpg <= 16 && opg <= 16)
                || (g.groups > 1 && cpg <= 16)
                || conv_direct::weights_by_outputs(conv_direct::simd(), g)
                || (conv_direct::weights_by_kernel_rows(conv_direct::simd(), g) && cpg <= 32)
        }
    };
    // Winograd computes 3x3, stride-1, padding-1 convolutions in all three directions. It pays
    // where its fewer multiplications outweigh the transforms (`cargo bench --bench cpu_conv`,
    // BENCHMARKS.md): for groups of 32 or more channels, forward and backward data on every image
    // size (1.2-2x the direct kernels; 1.2-1.5x on 4x4 images) and weight gradients on 8x8 and
    // larger ones (1.2-1.6x the GEMM), and on 4x4 ones for groups of up to 256 channels (1.05-1.35x
    // the GEMM; on w64's 512 the GEMM is 1.25x faster: Winograd's partial weight gradients, 16
    // points x 512 x 512 per thread, outgrow the caches); groups of 16 stay direct (forward and
    // backward data 1.3-1.4x faster on MoCSE's first stage, weight gradients about even).
    // F(4x4, 3x3), 4x fewer multiplications, on 8x8 and larger images (1.1-1.55x F(2x2) on the
    // 16x16 and 32x32 layers of both models, about even on 8x8 ones); F(2x2), 2.25x fewer, on 4x4
    // ones, where F(4x4)'s tile is the whole image and it loses, except for weight gradients of
    // batches of 128 and more (1.1-1.25x F(2x2)), which reduce over at least 32 such tiles per
    // chunk.
    let winograd = conv_winograd::applies(g);
    let weights_pay = g.height >= 8 || cpg.max(opg) <= 256;
    let winograd_pays =
        winograd && cpg.min(opg) >= 32 && (direction != Direction::BackwardWeight || weights_pay);
    let f4 = g.height >= 8 || (direction == Direction::BackwardWeight && g.batch >= 128);
    let tile = if f4 { conv_winograd::Tile::F4 } else { conv_winograd::Tile::F2 };
    match forced_cpu_conv() {
        _ if !possible => CpuConv::Gemm,
        Some(CpuConv::Winograd(_)) if !winograd => CpuConv::Direct,
        Some(choice) => choice,
        None if winograd_pays => CpuConv::Winograd(tile),
        None if faster => CpuConv::Direct,
        None => CpuConv::Gemm,
    }
}

/// y = conv(x, w). `keep_prepared`: `w` is a constant that will be used again (evaluation,
/// attacks), so the cpu device keeps its packed form between calls.
pub fn conv2d_forward(x: &Tensor, w: &Tensor, p: Conv2dParams, keep_prepared: bool) -> Result<Tensor> {
    Ok(conv2d_forward_summed(x, w, p, keep_prepared, false)?.0)
}

/// `conv2d_forward`, and with `sum_channels` y's per-channel sums for the batch norm that reads
/// it, where the device takes them as it writes y (the kernel devices; None elsewhere).
pub fn conv2d_forward_summed(
    x: &Tensor,
    w: &Tensor,
    p: Conv2dParams,
    keep_prepared: bool,
    sum_channels: bool,
) -> Result<(Tensor, Option<ChannelSums>)> {
    let g = ConvGeometry::new(x.shape(), w.shape(), p)?;
    match conv_engine(x.device())? {
        ConvEngine::Cpu => {
            let algorithm = cpu_conv(&g, Direction::Forward);
            let y = run_with_weights(
                algorithm,
                Direction::Forward,
                x.as_slice(),
                (None, None),
                w,
                &g,
                keep_prepared,
            );
            Ok((Tensor::from_vec(&g.output_shape(), y), None))
        }
        ConvEngine::Cudnn(precision) => Ok((gpu::cudnn::forward(x, w, &g, precision)?, None)),
        ConvEngine::Kernels(precision) => forward_kernels(x, None, w, None, &g, precision, sum_channels),
    }
}

/// conv(map(x), w) + residual on a kernel device (map and residual optional); with
/// `sum_channels`, also y's per-channel sums, one part per tile of output pixels (the launch's
/// grid x), taken as the kernel writes y.
fn forward_kernels(
    x: &Tensor,
    map: Option<&ReluAffine>,
    w: &Tensor,
    residual: Option<&Tensor>,
    g: &ConvGeometry,
    precision: Precision,
    sum_channels: bool,
) -> Result<(Tensor, Option<ChannelSums>)> {
    let d = x.device();
    let y = Tensor::output_on(d, &g.output_shape())?;
    let launch = ConvLaunch::of(Direction::Forward, precision, g);
    let sums = sum_channels
        .then(|| {
            ChannelSums::for_output(d, launch.grid[0] as usize, g.batch * g.pixels_out(), g.out_channels)
        })
        .transpose()?;
    let (weights, _packed) = launch.weights(w, Direction::Forward, g)?;
    let mut args = vec![y.arg(), x.arg(), weights];
    args.extend(map.map_or([Arg::Ptr(0), Arg::Ptr(0)], ReluAffine::kernel_args));
    args.push(residual.map_or(Arg::Ptr(0), Tensor::arg));
    args.push(sums.as_ref().map_or(Arg::Ptr(0), |s| s.partial.arg()));
    args.extend(shape_args(g));
    gpu::launch(d, &launch.kernel, launch.config(), &args)?;
    Ok((y, sums))
}

/// y = conv(map(x), w) + residual (nothing added without a residual), with map(x) (batch norm
/// and a relu) never stored. The cpu applies it where the algorithm reads x, where the algorithm
/// is the direct kernels (in their padded copy; the others store it first), and adds the
/// residual chunk by chunk as the direct kernels and Winograd write y, while the chunk is in the
/// cache; the kernel devices apply the map as they gather x and add the residual as they write
/// y. The same bits as `conv2d_forward` of `bn_apply`'s output, then an add, on each device.
/// `keep_prepared` and `sum_channels` as in `conv2d_forward_summed`. Not for cuDNN, which takes
/// the ops one by one.
pub fn conv2d_forward_mapped(
    x: &Tensor,
    map: &ReluAffine,
    w: &Tensor,
    p: Conv2dParams,
    residual: Option<&Tensor>,
    keep_prepared: bool,
    sum_channels: bool,
) -> Result<(Tensor, Option<ChannelSums>)> {
    let g = ConvGeometry::new(x.shape(), w.shape(), p)?;
    ensure_mappable(x, map, &g)?;
    let output_shape = g.output_shape();
    if let Some(r) = residual {
        ensure!(
            r.device() == x.device(),
            "a convolution's residual on {}, its input on {}",
            r.device(),
            x.device()
        );
        ensure!(
            r.shape() == output_shape,
            "a residual of shape {:?} for an output of {output_shape:?}",
            r.shape()
        );
    }
    match conv_engine(x.device())? {
        ConvEngine::Cpu => {
            let algorithm = cpu_conv(&g, Direction::Forward);
            let around = (Some(map), residual.map(Tensor::as_slice));
            let y =
                run_with_weights(algorithm, Direction::Forward, x.as_slice(), around, w, &g, keep_prepared);
            Ok((Tensor::from_vec(&output_shape, y), None))
        }
        ConvEngine::Kernels(precision) => {
            forward_kernels(x, Some(map), w, residual, &g, precision, sum_channels)
        }
        ConvEngine::Cudnn(_) => bail!("cuDNN applies no map as it reads; run batch norm and the convolution"),
    }
}

/// dL/dw of `conv2d_forward_mapped`, from x and dL/dy.
pub fn conv2d_backward_weight_mapped(
    x: &Tensor,
    map: &ReluAffine,
    dy: &Tensor,
    g: &ConvGeometry,
) -> Result<Tensor> {
    BACKWARD_WEIGHT_CALLS.with(|c| c.set(c.get() + 1));
    ensure!(dy.shape() == g.output_shape(), "conv2d backward: gradient shape {:?}", dy.shape());
    ensure_mappable(x, map, g)?;
    match conv_engine(x.device())? {
        ConvEngine::Cpu => {
            let direction = Direction::BackwardWeight;
            let dw = cpu_conv(g, direction).run_mapped(direction, x.as_slice(), Some(map), dy.as_slice(), g);
            Ok(Tensor::from_vec(&g.weight_shape(), dw))
        }
        ConvEngine::Kernels(precision) => backward_weight_kernels(x, Some(map), dy, g, precision),
        ConvEngine::Cudnn(_) => bail!("cuDNN applies no map as it reads; run batch norm and the convolution"),
    }
}

/// A mapped convolution's input is on the map's device and has the map's channels.
fn ensure_mappable(x: &Tensor, map: &ReluAffine, g: &ConvGeometry) -> Result<()> {
    ensure!(
        x.device() == map.device(),
        "a convolution's input on {}, the map of its batch norm on {}",
        x.device(),
        map.device()
    );
    ensure!(
        map.channels() == g.in_channels,
        "a map of {} channels for a convolution of {} input channels",
        map.channels(),
        g.in_channels
    );
    Ok(())
}

/// dL/dx from dL/dy; `keep_prepared` as in `conv2d_forward`.
pub fn conv2d_backward_data(
    dy: &Tensor,
    w: &Tensor,
    g: &ConvGeometry,
    keep_prepared: bool,
) -> Result<Tensor> {
    ensure!(dy.shape() == g.output_shape(), "conv2d backward: gradient shape {:?}", dy.shape());
    let x_shape = [g.batch, g.height, g.width, g.in_channels];
    match conv_engine(dy.device())? {
        ConvEngine::Cpu => {
            let algorithm = cpu_conv(g, Direction::BackwardData);
            let dx = run_with_weights(
                algorithm,
                Direction::BackwardData,
                dy.as_slice(),
                (None, None),
                w,
                g,
                keep_prepared,
            );
            Ok(Tensor::from_vec(&x_shape, dx))
        }
        ConvEngine::Cudnn(precision) => gpu::cudnn::backward_data(dy, w, g, precision),
        ConvEngine::Kernels(precision) => {
            let d = dy.device();
            let dx = Tensor::output_on(d, &x_shape)?;
            let launch = ConvLaunch::of(Direction::BackwardData, precision, g);
            let (weights, _packed) = launch.weights(w, Direction::BackwardData, g)?;
            let mut args = vec![dx.arg(), dy.arg(), weights];
            args.extend(shape_args(g));
            gpu::launch(d, &launch.kernel, launch.config(), &args)?;
            Ok(dx)
        }
    }
}

thread_local! {
    /// Weight gradients this thread has computed: attacks assert that they compute none.
    static BACKWARD_WEIGHT_CALLS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// How many convolution weight gradients the calling thread has computed so far.
pub fn backward_weight_calls() -> usize {
    BACKWARD_WEIGHT_CALLS.with(|c| c.get())
}

/// dL/dw from the input and dL/dy.
pub fn conv2d_backward_weight(x: &Tensor, dy: &Tensor, g: &ConvGeometry) -> Result<Tensor> {
    BACKWARD_WEIGHT_CALLS.with(|c| c.set(c.get() + 1));
    ensure!(dy.shape() == g.output_shape(), "conv2d backward: gradient shape {:?}", dy.shape());
    match conv_engine(x.device())? {
        ConvEngine::Cpu => {
            let dw = cpu_conv(g, Direction::BackwardWeight).run(
                Direction::BackwardWeight,
                x.as_slice(),
                dy.as_slice(),
                g,
            );
            Ok(Tensor::from_vec(&g.weight_shape(), dw))
        }
        ConvEngine::Cudnn(precision) => gpu::cudnn::backward_weight(x, dy, g, precision),
        ConvEngine::Kernels(precision) => backward_weight_kernels(x, None, dy, g, precision),
    }
}

/// dL/dw of conv(map(x), w) on a kernel device (map optional): partial sums per split of the
/// pixels, added in order by a second kernel.
fn backward_weight_kernels(
    x: &Tensor,
    map: Option<&ReluAffine>,
    dy: &Tensor,
    g: &ConvGeometry,
    precision: Precision,
) -> Result<Tensor> {
    let d = x.device();
    let launch = ConvLaunch::of(Direction::BackwardWeight, precision, g);
    let splits = launch.splits;
    let chunk = (g.batch * g.pixels_out()).div_ceil(splits);
    let partial = GpuBuffer::for_output(d, splits * g.out_channels * g.group_depth() * 4)?;
    let mut args = vec![partial.arg(), x.arg(), dy.arg()];
    args.extend(map.map_or([Arg::Ptr(0), Arg::Ptr(0)], ReluAffine::kernel_args));
    args.extend(shape_args(g));
    args.push(int(chunk));
    gpu::launch(d, &launch.kernel, launch.config(), &args)?;
    let dw = Tensor::output_on(d, &g.weight_shape())?;
    let args = [
        dw.arg(),
        partial.arg(),
        int(splits),
        int(g.out_channels),
        int(g.in_per_group()),
        int(g.kernel * g.kernel),
    ];
    gpu::launch(d, "conv2d_bwd_weight_reduce_f32", LaunchConfig::for_elements(dw.len()), &args)?;
    Ok(dw)
}

impl Tape {
    pub fn conv2d(&self, x: &Var, w: &Var, p: Conv2dParams) -> Result<Var> {
        self.conv2d_summed(x, w, p, false)
    }

    /// `conv2d` whose output feeds a batch norm in training mode: the kernel devices sum y per
    /// channel as they write it, and that batch norm takes its statistics from those sums
    /// instead of another pass over y (`Tape::train_statistics`).
    pub fn conv2d_for_batch_norm(&self, x: &Var, w: &Var, p: Conv2dParams) -> Result<Var> {
        self.conv2d_summed(x, w, p, true)
    }

    fn conv2d_summed(&self, x: &Var, w: &Var, p: Conv2dParams, sum_channels: bool) -> Result<Var> {
        // Weights that get no gradient here are constants of an evaluation or an attack, used
        // again on the next batch or step.
        let constant = !self.needs_grad(&[w]);
        let recorded = self.needs_grad(&[x, w]);
        let (y, sums) = conv2d_forward_summed(x.value(), w.value(), p, constant, sum_channels && recorded)?;
        if !recorded {
            return Ok(Var::constant(y));
        }
        let g = ConvGeometry::new(x.shape(), w.shape(), p)?;
        // Keep only what each gradient needs: the weight for dx, the input for dw.
        let w_saved = x.requires_grad().then(|| w.value().clone());
        let x_saved = w.requires_grad().then(|| x.value().clone());
        let y = self.record(
            y,
            &[x, w],
            Box::new(move |dy, needs| {
                let dx = match (&w_saved, needs[0]) {
                    (Some(w), true) => Some(conv2d_backward_data(dy, w, &g, constant)?),
                    _ => None,
                };
                let dw = match (&x_saved, needs[1]) {
                    (Some(x), true) => Some(conv2d_backward_weight(x, dy, &g)?),
                    _ => None,
                };
                Ok(vec![dx, dw])
            }),
        );
        if let Some(sums) = sums {
            self.offer_channel_sums(&y, sums);
        }
        Ok(y)
    }
}

/// The independent reference: the convolution's six loops in f64, visiting every (output
/// pixel, output channel, input channel, tap) once; each direction accumulates the same products
/// into its own result. The cpu tests and the selftest's bf16 cases check against it.
pub mod reference {
    use super::ConvGeometry;

    /// Calls `f(x index, w index, y index)` for every product of the convolution.
    fn products(g: &ConvGeometry, mut f: impl FnMut(usize, usize, usize)) {
        let (ipg, opg, k) = (g.in_per_group(), g.out_per_group(), g.kernel);
        for b in 0..g.batch {
            for oh in 0..g.out_height {
                for ow in 0..g.out_width {
                    for o in 0..g.out_channels {
                        let grp = o / opg;
                        for i in 0..ipg {
                            for kh in 0..k {
                                for kw in 0..k {
                                    let ih = (oh * g.stride + kh) as isize - g.padding as isize;
                                    let iw = (ow * g.stride + kw) as isize - g.padding as isize;
                                    if ih < 0 || iw < 0 || ih >= g.height as isize || iw >= g.width as isize {
                                        continue;
                                    }
                                    let xi = ((b * g.height + ih as usize) * g.width + iw as usize)
                                        * g.in_channels
                                        + grp * ipg
                                        + i;
                                    let wi = ((o * ipg + i) * k + kh) * k + kw;
                                    let yi =
                                        ((b * g.out_height + oh) * g.out_width + ow) * g.out_channels + o;
                                    f(xi, wi, yi);
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    pub fn forward(x: &[f32], w: &[f32], g: &ConvGeometry) -> Vec<f64> {
        let mut y = vec![0.0; g.batch * g.out_height * g.out_width * g.out_channels];
        products(g, |xi, wi, yi| y[yi] += x[xi] as f64 * w[wi] as f64);
        y
    }

    pub fn input_gradient(dy: &[f32], w: &[f32], g: &ConvGeometry) -> Vec<f64> {
        let mut dx = vec![0.0; g.input_len()];
        products(g, |xi, wi, yi| dx[xi] += dy[yi] as f64 * w[wi] as f64);
        dx
    }

    pub fn weight_gradient(x: &[f32], dy: &[f32], g: &ConvGeometry) -> Vec<f64> {
        let mut dw = vec![0.0; g.weight_shape().iter().product()];
        products(g, |xi, wi, yi| dw[wi] += x[xi] as f64 * dy[yi] as f64);
        dw
    }

    /// One direction's exact result and, per value, the sum of its products' magnitudes (what
    /// a rounding error bound scales with).
    pub struct Exact {
        pub value: Vec<f64>,
        pub magnitude: Vec<f64>,
    }

    /// y, dx and dw in one pass over the products.
    pub fn all_directions(x: &[f32], w: &[f32], dy: &[f32], g: &ConvGeometry) -> [Exact; 3] {
        let zeros = |n: usize| Exact { value: vec![0.0; n], magnitude: vec![0.0; n] };
        let len = |shape: [usize; 4]| shape.iter().product();
        let (mut y, mut dx, mut dw) =
            (zeros(len(g.output_shape())), zeros(g.input_len()), zeros(len(g.weight_shape())));
        let add = |e: &mut Exact, at: usize, a: f32, b: f32| {
            let p = a as f64 * b as f64;
            e.value[at] += p;
            e.magnitude[at] += p.abs();
        };
        products(g, |xi, wi, yi| {
            add(&mut y, yi, x[xi], w[wi]);
            add(&mut dx, xi, dy[yi], w[wi]);
            add(&mut dw, wi, x[xi], dy[yi]);
        });
        [y, dx, dw]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::gradcheck::{check_gradients_with, random_tensor};

    fn naive_conv(x: &Tensor, w: &Tensor, p: Conv2dParams) -> Vec<f64> {
        let g = ConvGeometry::new(x.shape(), w.shape(), p).unwrap();
        reference::forward(x.as_slice(), w.as_slice(), &g)
    }

    /// How many prepared forms of `w` the cache holds.
    fn prepared_entries(w: &Tensor) -> usize {
        let key = w.storage_ref();
        PREPARED.lock().unwrap().entries.iter().filter(|entry| Weak::ptr_eq(&entry.weights, &key)).count()
    }

    #[test]
    fn constant_weights_are_prepared_once_and_give_the_same_bits() {
        let p = Conv2dParams { stride: 1, padding: 1, groups: 2 };
        let (x, w) = (random_tensor(&[2, 9, 9, 64], 1), random_tensor(&[64, 32, 3, 3], 2));
        let g = ConvGeometry::new(x.shape(), w.shape(), p).unwrap();
        let dy = random_tensor(&g.output_shape(), 3);
        let fresh = conv2d_forward(&x, &w, p, false).unwrap();
        let fresh_dx = conv2d_backward_data(&dy, &w, &g, false).unwrap();
        assert_eq!(prepared_entries(&w), 0);
        for _ in 0..2 {
            assert_eq!(conv2d_forward(&x, &w, p, true).unwrap().to_vec(), fresh.to_vec());
            assert_eq!(conv2d_backward_data(&dy, &w, &g, true).unwrap().to_vec(), fresh_dx.to_vec());
            assert_eq!(prepared_entries(&w), 2, "one entry per direction, reused");
        }
        // Another tensor with the same values is other data: its own entry. Once a tensor is
        // gone, the next call drops its entry.
        let same_values = Tensor::from_vec(w.shape(), w.to_vec());
        conv2d_forward(&x, &same_values, p, true).unwrap();
        assert_eq!(prepared_entries(&same_values), 1);
        let key = w.storage_ref();
        drop(w);
        conv2d_forward(&x, &same_values, p, true).unwrap();
        assert!(PREPARED.lock().unwrap().entries.iter().all(|entry| !Weak::ptr_eq(&entry.weights, &key)));
    }

    /// An input through a map (batch norm + relu) gives the same bits as the mapped input
    /// stored, in every algorithm that computes the layer, forward and weight gradient; the
    /// shapes include unpadded ones (no padded copy to map in).
    #[test]
    fn mapped_inputs_and_residuals_give_the_same_bits_as_separate_ops() {
        let algorithms = [
            CpuConv::Direct,
            CpuConv::Gemm,
            CpuConv::Winograd(conv_winograd::Tile::F2),
            CpuConv::Winograd(conv_winograd::Tile::F4),
        ];
        for (n, (xs, ws, p)) in check_shapes().into_iter().enumerate() {
            let g = ConvGeometry::new(&xs, &ws, p).unwrap();
            let (x, w) = (random_tensor(&xs, n as u64), random_tensor(&ws, 50 + n as u64));
            let dy = random_tensor(&g.output_shape(), 70 + n as u64);
            let c = g.in_channels;
            let (mean, inv_std) = (random_tensor(&[c], 80), random_tensor(&[c], 81));
            let map =
                ReluAffine::new(&mean, &inv_std, &random_tensor(&[c], 82), &random_tensor(&[c], 83)).unwrap();
            let stored = map.apply(x.as_slice());
            for algorithm in algorithms {
                for (direction, b) in [(Direction::Forward, &w), (Direction::BackwardWeight, &dy)] {
                    if !algorithm.computes(direction, &g) {
                        continue;
                    }
                    let b = b.as_slice();
                    let mapped = algorithm.run_mapped(direction, x.as_slice(), Some(&map), b, &g);
                    let plain = algorithm.run(direction, &stored, b, &g);
                    let same = mapped.iter().zip(&plain).all(|(a, b)| a.to_bits() == b.to_bits());
                    assert!(same && mapped.len() == plain.len(), "case {n}: {algorithm:?} {direction:?}");
                    if direction == Direction::Forward {
                        // With a residual added as the output is written: plain + residual.
                        let residual = random_tensor(&g.output_shape(), 90 + n as u64);
                        let prepared = algorithm.prepare(direction, b, &g);
                        let summed =
                            prepared.run(direction, x.as_slice(), Some(&map), Some(residual.as_slice()), &g);
                        let same = summed
                            .iter()
                            .zip(&plain)
                            .zip(residual.as_slice())
                            .all(|((s, p), r)| s.to_bits() == (p + r).to_bits());
                        assert!(
                            same && summed.len() == plain.len(),
                            "case {n}: {algorithm:?} with a residual"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn forward_matches_naive_loops() {
        for (n, (xs, ws, p)) in check_shapes().into_iter().enumerate() {
            let x = random_tensor(&xs, n as u64);
            let w = random_tensor(&ws, 100 + n as u64);
            let y = conv2d_forward(&x, &w, p, false).unwrap();
            let reference = naive_conv(&x, &w, p);
            assert_eq!(y.len(), reference.len());
            // Winograd F(4x4)'s bound (`conv_winograd`'s test), relative to the largest value.
            let scale = reference.iter().fold(1.0f64, |m, v| m.max(v.abs()));
            for (a, b) in y.as_slice().iter().zip(&reference) {
                assert!((*a as f64 - b).abs() < 5e-5 * scale, "case {n}: {a} vs {b}");
            }
        }
    }

    #[test]
    fn the_gemm_path_matches_the_f64_reference_in_every_direction() {
        // The default picks the direct kernels for some of these shapes: check the GEMM itself.
        for (n, (xs, ws, p)) in check_shapes().into_iter().enumerate() {
            let g = ConvGeometry::new(&xs, &ws, p).unwrap();
            let (x, w) = (random_tensor(&xs, n as u64), random_tensor(&ws, 50 + n as u64));
            let dy = random_tensor(&g.output_shape(), 70 + n as u64);
            let (x, w, dy) = (x.as_slice(), w.as_slice(), dy.as_slice());
            let w_ohwi = oihw_to_ohwi(w, &g);
            let results = [
                (forward_cpu(x, &w_ohwi, &g), reference::forward(x, w, &g)),
                (backward_data_cpu(dy, &w_ohwi, &g), reference::input_gradient(dy, w, &g)),
                (backward_weight_cpu(x, dy, &g), reference::weight_gradient(x, dy, &g)),
            ];
            for (ours, exact) in results {
                let scale = exact.iter().fold(1.0f64, |m, v| m.max(v.abs()));
                for (a, b) in ours.iter().zip(&exact) {
                    assert!((*a as f64 - b).abs() < 2e-6 * scale, "case {n}: {a} vs {b}");
                }
            }
        }
    }

    #[test]
    fn gradients_match_finite_differences() {
        for (n, (xs, ws, p)) in check_shapes().into_iter().enumerate() {
            let x = random_tensor(&xs, 10 + n as u64);
            let w = random_tensor(&ws, 200 + n as u64);
            // The convolution is linear in each input, so a large step costs no truncation
            // error and keeps f32 rounding out of the difference quotient.
            check_gradients_with(&[x, w], 0.5, 1e-3, |t, v| t.conv2d(&v[0], &v[1], p));
        }
    }

    #[test]
    fn wide_layers_through_the_tape_match_the_reference_and_finite_differences() {
        // Shapes for which the default choice is Winograd in all three directions, as in
        // PreAct-18 width 64.
        let p = Conv2dParams { stride: 1, padding: 1, groups: 1 };
        for (n, (xs, ws)) in
            [([2, 16, 16, 64], [64, 64, 3, 3]), ([1, 8, 8, 64], [64, 64, 3, 3])].into_iter().enumerate()
        {
            let g = ConvGeometry::new(&xs, &ws, p).unwrap();
            for direction in [Direction::Forward, Direction::BackwardData, Direction::BackwardWeight] {
                assert!(
                    forced_cpu_conv().is_some() || matches!(cpu_conv(&g, direction), CpuConv::Winograd(_))
                );
            }
            let (x, w) = (random_tensor(&xs, 90 + n as u64), random_tensor(&ws, 95 + n as u64));
            let y = conv2d_forward(&x, &w, p, false).unwrap();
            let exact = reference::forward(x.as_slice(), w.as_slice(), &g);
            // F(4x4)'s bound (`conv_winograd`'s test), which the 16x16 case runs.
            let scale = exact.iter().fold(1.0f64, |m, v| m.max(v.abs()));
            for (a, b) in y.as_slice().iter().zip(&exact) {
                assert!((*a as f64 - b).abs() < 5e-5 * scale, "case {n}: {a} vs {b}");
            }
            check_gradients_with(&[x, w], 0.5, 1e-3, |t, v| t.conv2d(&v[0], &v[1], p));
        }
    }

    #[test]
    fn rejects_mismatched_shapes() {
        let x = Tensor::zeros(&[1, 4, 4, 6]);
        let w = Tensor::zeros(&[4, 4, 3, 3]);
        let p = Conv2dParams { stride: 1, padding: 1, groups: 2 };
        assert!(conv2d_forward(&x, &w, p, false).is_err());
    }

    /// The launches of a MoCSE first-stage layer (16 channels per group: the narrow tiles) and a
    /// wide dense one: kernels, tiles, grids (groups and splits in z) and splits.
    #[test]
    fn launches_pick_tiles_by_group_width_and_precision() {
        let p = |groups| Conv2dParams { stride: 1, padding: 1, groups };
        let grouped = ConvGeometry::new(&[8, 32, 32, 160], &[160, 16, 3, 3], p(10)).unwrap();
        let dense = ConvGeometry::new(&[8, 8, 8, 256], &[256, 256, 3, 3], p(1)).unwrap();
        let of = ConvLaunch::of;
        let f = of(Direction::Forward, Precision::Bf16, &grouped);
        assert_eq!(
            (f.kernel.as_str(), f.tile, f.grid, f.splits),
            ("conv2d_fwd_narrow_bf16", [256, 16], [32, 1, 10], 1)
        );
        let w = of(Direction::BackwardWeight, Precision::F32, &grouped);
        // 8 * 32 * 32 pixels / 2048 = 4 splits of the reduction, each of the 10 groups.
        assert_eq!(
            (w.kernel.as_str(), w.tile, w.grid, w.splits),
            ("conv2d_bwd_weight_narrow_f32", [16, 256], [1, 1, 40], 4)
        );
        let d = of(Direction::BackwardData, Precision::Bf16, &dense);
        assert_eq!((d.kernel.as_str(), d.tile, d.grid), ("conv2d_bwd_data_bf16", [128, 64], [4, 4, 1]));
        let f32 = of(Direction::Forward, Precision::F32, &dense);
        assert_eq!((f32.kernel.as_str(), f32.tile, f32.grid), ("conv2d_fwd_f32", [64, 64], [8, 4, 1]));
        let w = of(Direction::BackwardWeight, Precision::Bf16, &dense);
        assert_eq!((w.kernel.as_str(), w.grid, w.splits), ("conv2d_bwd_weight_bf16", [2, 36, 1], 1));
        // The stem reduces over 3 channels forward: bf16 gathers them one by one, on the wide tile;
        // its backward data reduces over 160 (8 at a time), its 3 columns on the narrow tile.
        let stem = ConvGeometry::new(&[8, 32, 32, 3], &[160, 3, 3, 3], p(1)).unwrap();
        let f = of(Direction::Forward, Precision::Bf16, &stem);
        assert_eq!((f.kernel.as_str(), f.tile, f.grid), ("conv2d_fwd_any_bf16", [128, 64], [64, 3, 1]));
        let d = of(Direction::BackwardData, Precision::Bf16, &stem);
        assert_eq!((d.kernel.as_str(), d.tile), ("conv2d_bwd_data_narrow_bf16", [256, 16]));
        let w = of(Direction::BackwardWeight, Precision::Bf16, &stem);
        assert_eq!((w.kernel.as_str(), w.tile), ("conv2d_bwd_weight_any_bf16", [128, 64]));
        // Backward data at stride 2: the 4 phases of the input in z, rows for the largest
        // (8 images x 16 x 16 of a 32 x 32 input).
        let down =
            ConvGeometry::new(&[8, 32, 32, 160], &[320, 16, 3, 3], Conv2dParams { stride: 2, ..p(10) })
                .unwrap();
        let d = of(Direction::BackwardData, Precision::Bf16, &down);
        assert_eq!(
            (d.kernel.as_str(), d.tile, d.grid),
            ("conv2d_bwd_data_strided_narrow_bf16", [256, 16], [8, 1, 40])
        );
        assert_eq!(of(Direction::BackwardData, Precision::F32, &down).kernel, "conv2d_bwd_data_narrow_f32");
        let f32 = of(Direction::Forward, Precision::F32, &stem);
        assert_eq!(f32.kernel.as_str(), "conv2d_fwd_f32");
    }
}
