//! Direct convolution on the CPU: NHWC activations are read where they lie (in a zero-padded
//! copy when the convolution pads), with no unfolded (im2col) buffer, by register-blocked
//! microkernels. Forward computes a tile of up to 12 output pixels (`Simd::forward_rows`) x 16
//! output channels of one group, reducing over taps and the group's input channels; backward
//! data at stride 1 is the same forward over the padded output gradient with the kernel flipped
//! and transposed; backward weight computes a tile of up to 16 output channels
//! (`Simd::weight_rows`) x 16 input channels of one tap, reducing over output pixels, in fixed parts summed in order (deterministic).
//!
//! The microkernels exist three times: AVX-512 (16-lane vectors, tiles of 12 or 16 rows) and
//! AVX2 with FMA (two 8-lane vectors, tiles of 6 rows), chosen at run time by what the CPU has,
//! and portable Rust (any other CPU). `MOCSE_CPU_SIMD=avx2|portable` forces a narrower one, which the tests
//! use to check every fallback on any machine. All add in the same order; they differ only in
//! that the portable kernels round each product before adding it (no fused multiply-add).

use std::mem::MaybeUninit;
use std::sync::OnceLock;

use rayon::prelude::*;

use super::batchnorm::ReluAffine;
use super::conv::{ConvGeometry, ohwi_to_oihw};
use crate::parallel;

/// Output channels per forward tile and input channels per weight tile: one AVX-512 vector.
pub(crate) const LANES: usize = 16;
/// The most rows a tile has: output pixels per forward tile (`Simd::forward_rows`), output
/// channels per weight-gradient tile (`Simd::weight_rows`).
pub(crate) const MAX_ROWS: usize = 16;
/// Output pixels per block of the weight gradient.
const PIXEL_BLOCK: usize = 256;
/// How many pixels ahead the weight-gradient kernels prefetch their input and gradient lines:
/// every pixel's group of channels is a new cache line (the channels of the other groups lie
/// between), and without it the kernels wait on those loads (first-stage MoCSE layers: 10.8 ->
/// 9.5 ms; 4, 8 and 32 ahead were slower).
const PREFETCH_AHEAD: usize = 16;

/// Which microkernels run, widest first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Simd {
    /// x86-64 AVX-512 (F): one 16-lane vector per tile row, 12 rows.
    Avx512,
    /// x86-64 AVX2 with FMA: two 8-lane vectors per tile row, 6 rows.
    Avx2,
    /// Plain Rust, for any CPU.
    Portable,
}

impl Simd {
    /// Rows per forward tile: as many accumulators as keep the FMA units busy without
    /// spilling (12 of AVX-512's 32 vector registers, whose 12 row pointers also fit in the
    /// general registers; 12 of AVX2's 16).
    pub(crate) fn forward_rows(self) -> usize {
        match self {
            Simd::Avx512 => 12,
            Simd::Avx2 | Simd::Portable => 6,
        }
    }

    /// Rows per weight-gradient tile: its rows share one pointer, so AVX-512 takes 16 (a whole
    /// group of 16 output channels in one tile).
    pub(crate) fn weight_rows(self) -> usize {
        match self {
            Simd::Avx512 => 16,
            Simd::Avx2 | Simd::Portable => 6,
        }
    }
}

/// The microkernels this process uses: the widest the CPU has, or a narrower one that
/// `MOCSE_CPU_SIMD` (`avx2` or `portable`) asks for.
pub fn simd() -> Simd {
    static CHOICE: OnceLock<Simd> = OnceLock::new();
    *CHOICE.get_or_init(|| {
        let best = available()[0];
        match std::env::var("MOCSE_CPU_SIMD") {
            Err(_) => best,
            Ok(v) if v == "portable" => Simd::Portable,
            Ok(v) if v == "avx2" => best.max(Simd::Avx2),
            Ok(v) => {
                eprintln!("warning: MOCSE_CPU_SIMD={v:?} is neither avx2 nor portable; using {best:?}");
                best
            }
        }
    })
}

/// Every kind of microkernel this CPU can run, widest first.
pub fn available() -> Vec<Simd> {
    let mut all = Vec::new();
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        if has!("avx512f") && has!("avx2") && has!("fma") {
            all.push(Simd::Avx512);
        }
        if has!("avx2") && has!("fma") {
            all.push(Simd::Avx2);
        }
    }
    all.push(Simd::Portable);
    all
}

/// `count` rows cut into tiles of at most `rows`, of sizes that differ by one at most (20
/// output channels in 16-row tiles are two tiles of 10, not 16 and 4): (first row, rows).
pub(crate) fn balanced_tiles(count: usize, rows: usize) -> impl Iterator<Item = (usize, usize)> {
    let tiles = count.div_ceil(rows);
    (0..tiles).map(move |i| (i * count / tiles, (i + 1) * count / tiles - i * count / tiles))
}

/// Forward weights packed per (group, panel of 16 output channels): for each tap and input
/// channel, the panel's 16 weights (zero past the group's last output channel).
pub struct PackedWeights {
    data: Vec<f32>,
    panels: usize,
    /// Taps x input channels per group: one panel's reduction length.
    depth: usize,
}

impl PackedWeights {
    /// `weight(group, out, tap, in)` for out < `outs`, in < `ins` of each group.
    pub(crate) fn pack(
        groups: usize,
        outs: usize,
        ins: usize,
        taps: usize,
        weight: impl Fn(usize, usize, usize, usize) -> f32 + Sync,
    ) -> Self {
        let mut packed = Self::zeroed(groups, outs, ins, taps);
        packed.fill_panels(|grp, panel, block| {
            for tap in 0..taps {
                for i in 0..ins {
                    let dst = &mut block[(tap * ins + i) * LANES..][..LANES];
                    for (j, d) in dst.iter_mut().enumerate().take(outs.saturating_sub(panel * LANES)) {
                        *d = weight(grp, panel * LANES + j, tap, i);
                    }
                }
            }
        });
        packed
    }

    /// All weights zero, to be set with `fill_panels`.
    pub(crate) fn zeroed(groups: usize, outs: usize, ins: usize, taps: usize) -> Self {
        let panels = outs.div_ceil(LANES);
        let depth = taps * ins;
        PackedWeights { data: vec![0.0; groups * panels * depth * LANES], panels, depth }
    }

    /// Calls `fill(group, panel, block)` for every panel in parallel; `block[(tap * ins + in) *
    /// 16 + j]` is the weight of output channel `panel * 16 + j`.
    pub(crate) fn fill_panels(&mut self, fill: impl Fn(usize, usize, &mut [f32]) + Sync) {
        let panels = self.panels;
        self.data
            .par_chunks_mut(self.depth * LANES)
            .enumerate()
            .for_each(|(k, block)| fill(k / panels, k % panels, block));
    }

    /// For the forward pass: OIHW weights as they are.
    pub fn forward(w: &[f32], g: &ConvGeometry) -> Self {
        let (opg, cpg, kk) = (g.out_per_group(), g.in_per_group(), g.kernel * g.kernel);
        Self::pack(g.groups, opg, cpg, kk, |grp, o, tap, i| w[((grp * opg + o) * cpg + i) * kk + tap])
    }

    /// For backward data as a forward convolution of the output gradient: outputs are the
    /// original input channels, inputs the original outputs, taps flipped.
    pub fn backward_data(w: &[f32], g: &ConvGeometry) -> Self {
        let (opg, cpg, kk) = (g.out_per_group(), g.in_per_group(), g.kernel * g.kernel);
        Self::pack(g.groups, cpg, opg, kk, |grp, c, tap, o| {
            w[((grp * opg + o) * cpg + c) * kk + (kk - 1 - tap)]
        })
    }

    pub(crate) fn panel(&self, grp: usize, panel: usize) -> &[f32] {
        &self.data[(grp * self.panels + panel) * self.depth * LANES..][..self.depth * LANES]
    }
}

/// The geometry of backward data at stride 1 as a forward convolution: the output gradient
/// padded by `kernel - 1 - padding`, convolved with the flipped, transposed kernel.
pub fn backward_data_geometry(g: &ConvGeometry) -> ConvGeometry {
    debug_assert!(g.stride == 1 && g.padding < g.kernel);
    ConvGeometry {
        batch: g.batch,
        height: g.out_height,
        width: g.out_width,
        in_channels: g.out_channels,
        out_channels: g.in_channels,
        kernel: g.kernel,
        stride: 1,
        padding: g.kernel - 1 - g.padding,
        groups: g.groups,
        out_height: g.height,
        out_width: g.width,
    }
}

/// Whether backward data of `g` is a 1x1 convolution at a stride above 1 without padding
/// (the shortcuts of both models): `backward_data_strided_pointwise` computes it.
pub fn strided_pointwise(g: &ConvGeometry) -> bool {
    g.kernel == 1 && g.stride > 1 && g.padding == 0
}

/// dL/dx of a strided 1x1 convolution (`strided_pointwise`) with weights packed by
/// `PackedWeights::backward_data`: at every `stride`-th pixel of every `stride`-th row, the
/// output gradient there times the transposed weights (a 1x1 forward convolution of dy, whose
/// pixels are consecutive), and zero at the pixels the convolution skipped. Each input row is
/// written once, whole: no zeroed buffer to add into, as the GEMM's col2im needs.
pub fn backward_data_strided_pointwise(dy: &[f32], w: &PackedWeights, g: &ConvGeometry) -> Vec<f32> {
    assert!(strided_pointwise(g), "not a strided 1x1 convolution: {g:?}");
    // The products, one row of C values per output pixel.
    let compact_geometry = ConvGeometry {
        height: g.out_height,
        width: g.out_width,
        in_channels: g.out_channels,
        out_channels: g.in_channels,
        stride: 1,
        ..*g
    };
    let products = forward(dy, None, None, w, &compact_geometry);
    let (c, s) = (g.in_channels, g.stride);
    let len = g.batch * g.height * g.width * c;
    let mut dx: Vec<f32> = Vec::with_capacity(len);
    dx.spare_capacity_mut()[..len].par_chunks_mut(g.width * c).enumerate().for_each(|(row, out)| {
        let (image, h) = (row / g.height, row % g.height);
        if h % s != 0 || h / s >= g.out_height {
            out.fill(MaybeUninit::new(0.0));
            return;
        }
        let src = &products[(image * g.out_height + h / s) * g.out_width * c..][..g.out_width * c];
        for (x, pixel) in out.chunks_exact_mut(c).enumerate() {
            match (x % s == 0 && x / s < g.out_width).then(|| &src[x / s * c..][..c]) {
                Some(values) => pixel.iter_mut().zip(values).for_each(|(p, v)| *p = MaybeUninit::new(*v)),
                None => pixel.fill(MaybeUninit::new(0.0)),
            }
        }
    });
    // SAFETY: every element of every row was written above.
    unsafe { dx.set_len(len) };
    dx
}

/// Whether backward data of `g` is a 3x3 convolution at stride 2 with padding 1 (the first
/// convolution of every later stage of both models): `backward_data_by_phases` computes it.
pub fn stride2_3x3(g: &ConvGeometry) -> bool {
    g.kernel == 3 && g.stride == 2 && g.padding == 1
}

/// The input gradient of a 3x3, stride-2, padding-1 convolution splits into four phases by the
/// parity of the input pixel (row y, column x): each is a small forward convolution of the
/// output gradient (`stride2_3x3`). An even y takes kernel row 1 from dy row y / 2, an odd one
/// rows 2 and 0 from dy rows (y - 1) / 2 and (y + 1) / 2; columns alike. One phase's taps:
/// (kernel row, kernel column, dy row offset, dy column offset), in increasing dy offset.
fn phase_taps(py: usize, px: usize) -> Vec<(usize, usize, usize, usize)> {
    let along = |parity: usize| if parity == 0 { vec![(1, 0)] } else { vec![(2, 0), (0, 1)] };
    let mut taps = Vec::new();
    for (kh, dr) in along(py) {
        for &(kw, dc) in &along(px) {
            taps.push((kh, kw, dr, dc));
        }
    }
    taps
}

/// The weights of the four phases of `backward_data_by_phases`, packed as forward weights from
/// the output gradient's channels to the input's: phase 2 * py + px.
pub struct PhaseWeights {
    phases: Vec<PackedWeights>,
}

impl PhaseWeights {
    pub fn new(w: &[f32], g: &ConvGeometry) -> Self {
        assert!(stride2_3x3(g), "not a 3x3 stride-2 convolution: {g:?}");
        let (opg, cpg) = (g.out_per_group(), g.in_per_group());
        let phases = (0..4)
            .map(|phase| {
                let taps = phase_taps(phase / 2, phase % 2);
                PackedWeights::pack(g.groups, cpg, opg, taps.len(), |grp, c, t, o| {
                    let (kh, kw, _, _) = taps[t];
                    w[((grp * opg + o) * cpg + c) * 9 + kh * 3 + kw]
                })
            })
            .collect();
        PhaseWeights { phases }
    }
}

/// dL/dx of a 3x3, stride-2, padding-1 convolution (`stride2_3x3`), phase by phase: each input
/// pixel's gradient is the forward tiles' sum over its phase's taps, written once (no zeroed
/// buffer to add into, as the GEMM's col2im needs). Tiles run along one input row's pixels of
/// one phase, every second pixel.
pub fn backward_data_by_phases(dy: &[f32], w: &PhaseWeights, g: &ConvGeometry) -> Vec<f32> {
    assert!(stride2_3x3(g), "not a 3x3 stride-2 convolution: {g:?}");
    let simd = simd();
    let (c, cpg, opg) = (g.in_channels, g.in_per_group(), g.out_per_group());
    // The output gradient as the input of a convolution padded by one: the phases read one row
    // and one column past its end where the input has an even size.
    let dy_geometry = ConvGeometry {
        height: g.out_height,
        width: g.out_width,
        in_channels: g.out_channels,
        out_channels: g.in_channels,
        stride: 1,
        padding: 1,
        ..*g
    };
    let wp = g.out_width + 2;
    let image = g.height * g.width * c;
    let per_chunk = dy_geometry.images_per_chunk();
    let phases: Vec<(Vec<usize>, &PackedWeights)> = (0..4)
        .map(|phase| {
            let taps = phase_taps(phase / 2, phase % 2)
                .iter()
                .map(|&(_, _, dr, dc)| (dr * wp + dc) * opg * g.groups)
                .collect();
            (taps, &w.phases[phase])
        })
        .collect();
    let len = g.batch * image;
    let mut dx: Vec<f32> = Vec::with_capacity(len);
    dx.spare_capacity_mut()[..len].par_chunks_mut(per_chunk * image).enumerate().for_each(|(chunk, dx)| {
        let count = dx.len() / image;
        with_input(dy, None, &dy_geometry, chunk * per_chunk, count, |input| {
            let mut starts = Vec::with_capacity(g.width.div_ceil(2));
            for n in 0..count {
                for y in 0..g.height {
                    for px in 0..2 {
                        let (taps, weights) = &phases[2 * (y % 2) + px];
                        // Window starts of the row's pixels of this phase: dy row y / 2 and
                        // column x / 2 of the padded copy (one pixel in from its corner).
                        starts.clear();
                        starts.extend((px..g.width).step_by(2).map(|x| {
                            ((n * (g.out_height + 2) + y / 2 + 1) * wp + x / 2 + 1) * g.out_channels
                        }));
                        for grp in 0..g.groups {
                            for panel in 0..weights.panels {
                                let width = LANES.min(cpg - panel * LANES);
                                let col0 = grp * cpg + panel * LANES;
                                for (tile, rows) in starts.chunks(simd.forward_rows()).enumerate() {
                                    let x0 = px + 2 * tile * simd.forward_rows();
                                    let out = &mut dx[((n * g.height + y) * g.width + x0) * c + col0..];
                                    let panel_weights = weights.panel(grp, panel);
                                    forward_tile(
                                        simd,
                                        input,
                                        rows,
                                        grp * opg,
                                        taps,
                                        opg,
                                        panel_weights,
                                        out,
                                        2 * c,
                                        width,
                                    );
                                }
                            }
                        }
                    }
                }
            }
        })
    });
    // SAFETY: every input pixel is in one phase, and its tiles wrote every channel of it.
    unsafe { dx.set_len(len) };
    dx
}

thread_local! {
    // The padded copy is reused between chunks and calls: a fresh zeroed buffer per chunk
    // cost as much as the copy itself.
    static PADDED: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Calls `f` with images [first, first + count) of `x` as the kernels read them: through `map`
/// when given, with `g.padding` zeros around each (in a per-thread buffer), or `x` itself when
/// neither.
fn with_input<R>(
    x: &[f32],
    map: Option<&ReluAffine>,
    g: &ConvGeometry,
    first: usize,
    count: usize,
    f: impl FnOnce(&[f32]) -> R,
) -> R {
    let (p, c) = (g.padding, g.in_channels);
    let image = g.height * g.width * c;
    let x = &x[first * image..][..count * image];
    if p == 0 && map.is_none() {
        return f(x);
    }
    let (hp, wp) = (g.height + 2 * p, g.width + 2 * p);
    PADDED.with(|buffer| {
        let mut buffer = buffer.borrow_mut();
        if buffer.len() < count * hp * wp * c {
            buffer.resize(count * hp * wp * c, 0.0);
        }
        let out = &mut buffer[..count * hp * wp * c];
        pad_images(x, map, g.height, g.width, c, p, hp, wp, out);
        f(out)
    })
}

/// Copies the images of `x` ([N, h, w, c]), through `map` when given, into `out` ([N, hp, wp,
/// c]) at row and column `p`, zeroing only the border around them (every interior value is
/// overwritten). The padding stays zero: it pads the map's output.
#[allow(clippy::too_many_arguments)]
fn pad_images(
    x: &[f32],
    map: Option<&ReluAffine>,
    h: usize,
    w: usize,
    c: usize,
    p: usize,
    hp: usize,
    wp: usize,
    out: &mut [f32],
) {
    for (src, padded) in x.chunks_exact(h * w * c).zip(out.chunks_exact_mut(hp * wp * c)) {
        padded[..p * wp * c].fill(0.0);
        padded[(p + h) * wp * c..].fill(0.0);
        for r in 0..h {
            let row = &mut padded[(r + p) * wp * c..][..wp * c];
            row[..p * c].fill(0.0);
            row[(p + w) * c..].fill(0.0);
            let (src, dst) = (&src[r * w * c..][..w * c], &mut row[p * c..(p + w) * c]);
            match map {
                Some(map) => map.pixels_into(src, dst),
                None => dst.copy_from_slice(src),
            }
        }
    }
}

/// Where each output pixel's window starts in the (padded) input of `count` images, and the
/// offset of every tap from there, in elements.
fn windows(g: &ConvGeometry, count: usize) -> (Vec<usize>, Vec<usize>) {
    let (hp, wp, c) = (g.height + 2 * g.padding, g.width + 2 * g.padding, g.in_channels);
    let mut starts = Vec::with_capacity(count * g.out_height * g.out_width);
    for i in 0..count {
        for oh in 0..g.out_height {
            for ow in 0..g.out_width {
                starts.push(((i * hp + oh * g.stride) * wp + ow * g.stride) * c);
            }
        }
    }
    let taps = (0..g.kernel * g.kernel).map(|t| ((t / g.kernel) * wp + t % g.kernel) * c).collect();
    (starts, taps)
}

/// y = conv(map(x), w) + residual (x itself without a map, nothing added without a residual)
/// with weights packed by `PackedWeights::forward` (or, for backward data, `backward_data` with
/// `backward_data_geometry`). The residual is added chunk by chunk while the chunk's outputs
/// are still in the cache.
pub fn forward(
    x: &[f32],
    map: Option<&ReluAffine>,
    residual: Option<&[f32]>,
    w: &PackedWeights,
    g: &ConvGeometry,
) -> Vec<f32> {
    forward_with(simd(), x, map, residual, w, g)
}

fn forward_with(
    simd: Simd,
    x: &[f32],
    map: Option<&ReluAffine>,
    residual: Option<&[f32]>,
    w: &PackedWeights,
    g: &ConvGeometry,
) -> Vec<f32> {
    let (cout, opg, cpg) = (g.out_channels, g.out_per_group(), g.in_per_group());
    let pixels = g.out_height * g.out_width;
    let per_chunk = g.images_per_chunk();
    let by_rows = by_output_rows(simd, g);
    // Every element is written exactly once below (each tile row covers a panel's columns,
    // the panels cover each group's), so the output is not zeroed first.
    let len = g.batch * pixels * cout;
    assert!(residual.is_none_or(|r| r.len() == len), "a residual of another shape than the output");
    let mut out: Vec<f32> = Vec::with_capacity(len);
    out.spare_capacity_mut()[..len].par_chunks_mut(per_chunk * pixels * cout).enumerate().for_each(
        |(chunk, out)| {
            let first = chunk * per_chunk;
            let count = out.len() / (pixels * cout);
            // Row tiles find their windows from the row pitch; pixel tiles look them up.
            let (starts, taps) = if by_rows { Default::default() } else { windows(g, count) };
            with_input(x, map, g, first, count, |input| {
                for grp in 0..g.groups {
                    for panel in 0..w.panels {
                        let (weights, col0) = (w.panel(grp, panel), grp * opg + panel * LANES);
                        let width = LANES.min(opg - panel * LANES);
                        if by_rows {
                            forward_panel_by_rows(
                                input,
                                g,
                                count,
                                grp * cpg,
                                weights,
                                &mut out[col0..],
                                width,
                            );
                            continue;
                        }
                        for (tile, rows) in starts.chunks(simd.forward_rows()).enumerate() {
                            let out = &mut out[tile * simd.forward_rows() * cout + col0..];
                            forward_tile(
                                simd,
                                input,
                                rows,
                                grp * cpg,
                                taps.as_slice(),
                                cpg,
                                weights,
                                out,
                                cout,
                                width,
                            );
                        }
                    }
                }
            });
            if let Some(residual) = residual {
                add_residual(out, &residual[first * pixels * cout..]);
            }
        },
    );
    // SAFETY: all `len` elements were initialised above.
    unsafe { out.set_len(len) };
    out
}

/// out[i] += residual[i] over `out`, every element of which has been written.
pub(crate) fn add_residual(out: &mut [MaybeUninit<f32>], residual: &[f32]) {
    // SAFETY: f32 and MaybeUninit<f32> have the same layout, and the caller wrote every element.
    let out = unsafe { &mut *(out as *mut [MaybeUninit<f32>] as *mut [f32]) };
    for (y, r) in out.iter_mut().zip(residual) {
        *y += r;
    }
}

/// Calls `$kernel::<R>(args)` with the const R equal to `$rows` (1 to `MAX_ROWS`).
macro_rules! by_rows {
    ($rows:expr, $kernel:path, $($arg:expr),*) => {{
        use $kernel as kernel;
        match $rows {
            16 => kernel::<16>($($arg),*),
            15 => kernel::<15>($($arg),*),
            14 => kernel::<14>($($arg),*),
            13 => kernel::<13>($($arg),*),
            12 => kernel::<12>($($arg),*),
            11 => kernel::<11>($($arg),*),
            10 => kernel::<10>($($arg),*),
            9 => kernel::<9>($($arg),*),
            8 => kernel::<8>($($arg),*),
            7 => kernel::<7>($($arg),*),
            6 => kernel::<6>($($arg),*),
            5 => kernel::<5>($($arg),*),
            4 => kernel::<4>($($arg),*),
            3 => kernel::<3>($($arg),*),
            2 => kernel::<2>($($arg),*),
            _ => kernel::<1>($($arg),*),
        }
    }};
}

/// One forward tile of at most `simd.forward_rows()` rows, written straight into `out` (rows
/// `stride` apart): `out[r * stride + j]` = sum over taps t and channels c of
/// input[rows[r] + base + taps[t] + c] * weights[(t * cpg + c) * 16 + j], for j < `width`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn forward_tile(
    simd: Simd,
    input: &[f32],
    rows: &[usize],
    base: usize,
    taps: &[usize],
    cpg: usize,
    weights: &[f32],
    out: &mut [MaybeUninit<f32>],
    stride: usize,
    width: usize,
) {
    // Every read stays inside `input`: the last tap's last channel of the last window is the
    // padded image's last element at most.
    let last = rows.iter().max().copied().unwrap_or(0) + base + taps.last().copied().unwrap_or(0) + cpg;
    assert!(
        last <= input.len()
            && weights.len() >= taps.len() * cpg * LANES
            && rows.len() <= simd.forward_rows()
            && width <= LANES
            && (rows.len().max(1) - 1) * stride + width <= out.len()
    );
    let dst = out.as_mut_ptr().cast::<f32>();
    match simd {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AVX-512 is present (`simd()` checked); the bounds were checked above.
        Simd::Avx512 => unsafe {
            let ptr = input.as_ptr().add(base);
            by_rows!(rows.len(), avx512::forward, ptr, rows, taps, cpg, weights.as_ptr(), dst, stride, width)
        },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AVX2 and FMA are present (`simd()` checked); the bounds were checked above.
        Simd::Avx2 => unsafe {
            let ptr = input.as_ptr().add(base);
            by_rows!(rows.len(), avx2::forward, ptr, rows, taps, cpg, weights.as_ptr(), dst, stride, width)
        },
        _ => {
            let mut acc = [[0.0f32; LANES]; MAX_ROWS];
            let mut k = 0;
            for &t in taps {
                for c in 0..cpg {
                    let wv = &weights[k * LANES..][..LANES];
                    for (r, &start) in rows.iter().enumerate() {
                        let xv = input[start + base + t + c];
                        for (a, w) in acc[r].iter_mut().zip(wv) {
                            *a += xv * w;
                        }
                    }
                    k += 1;
                }
            }
            for (r, a) in acc.iter().enumerate().take(rows.len()) {
                for (o, v) in out[r * stride..][..width].iter_mut().zip(a) {
                    o.write(*v);
                }
            }
        }
    }
}

/// Whether `forward_with` runs `g` by output rows (`forward_row_tile`): 3x3 convolutions at
/// stride 1 with padding 1 (every stride-1 backward data among them), on AVX-512, on rows of
/// 8 or more outputs (fewer would leave too few sums to hide the FMA's latency).
fn by_output_rows(simd: Simd, g: &ConvGeometry) -> bool {
    simd == Simd::Avx512 && g.kernel == 3 && g.stride == 1 && g.padding == 1 && g.out_width >= 8
}

/// One panel of `forward_with` by output rows, for the `count` padded images in `input` (the
/// group's channels from `base`): each tile is up to 16 outputs side by side in one row, and
/// each input of the tile's window rows is loaded once for the three taps of its kernel row
/// (`forward_tile` loads it once per tap): 1.25-1.4x its speed on the 32x32 layers of 3 and 16
/// channels per group. `out` starts at the panel's first column of the first output pixel.
fn forward_panel_by_rows(
    input: &[f32],
    g: &ConvGeometry,
    count: usize,
    base: usize,
    weights: &[f32],
    out: &mut [MaybeUninit<f32>],
    width: usize,
) {
    let (c, cout, cpg) = (g.in_channels, g.out_channels, g.in_per_group());
    let (h, wd) = (g.out_height, g.out_width);
    let (hp, wp) = (h + 2, wd + 2);
    for (img, oh) in (0..count).flat_map(|i| (0..h).map(move |oh| (i, oh))) {
        for (ow, n) in balanced_tiles(wd, MAX_ROWS) {
            let at = ((img * hp + oh) * wp + ow) * c + base;
            let out = &mut out[((img * h + oh) * wd + ow) * cout..];
            forward_row_tile(input, at, (wp * c, c), cpg, weights, out, cout, (n, width));
        }
    }
}

/// One row tile of `forward_panel_by_rows`: `n` outputs side by side (`stride` apart in `out`) of a
/// panel's `width` output channels; output r reads input channel k at kernel row kh and
/// column kw from input[at + kh * row_pitch + (r + kw) * pixel_pitch + k].
#[allow(clippy::too_many_arguments)]
fn forward_row_tile(
    input: &[f32],
    at: usize,
    (row_pitch, pixel_pitch): (usize, usize),
    cpg: usize,
    weights: &[f32],
    out: &mut [MaybeUninit<f32>],
    stride: usize,
    (n, width): (usize, usize),
) {
    // The last read is the last channel's last kernel row's input n + 1.
    assert!(
        (1..=MAX_ROWS).contains(&n)
            && cpg >= 1
            && at + 2 * row_pitch + (n + 1) * pixel_pitch + cpg <= input.len()
            && weights.len() >= 9 * cpg * LANES
            && width <= LANES
            && (n - 1) * stride + width <= out.len()
    );
    #[cfg(target_arch = "x86_64")]
    {
        assert!(std::arch::is_x86_feature_detected!("avx512f"), "AVX-512 row tiles on a CPU without it");
        // SAFETY: AVX-512 is present (checked above), and so are the bounds.
        unsafe {
            let (x, dst) = (input.as_ptr().add(at), out.as_mut_ptr().cast::<f32>());
            by_rows!(
                n,
                avx512::forward_row,
                x,
                (row_pitch, pixel_pitch),
                cpg,
                weights.as_ptr(),
                dst,
                stride,
                width
            )
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    unreachable!("AVX-512 row tiles on a CPU without it");
}

/// dL/dw (OIHW) from the input and dL/dy, any stride.
pub fn backward_weight(x: &[f32], map: Option<&ReluAffine>, dy: &[f32], g: &ConvGeometry) -> Vec<f32> {
    backward_weight_with(simd(), x, map, dy, g)
}

fn backward_weight_with(
    simd: Simd,
    x: &[f32],
    map: Option<&ReluAffine>,
    dy: &[f32],
    g: &ConvGeometry,
) -> Vec<f32> {
    let (cout, cpg, kk) = (g.out_channels, g.in_per_group(), g.kernel * g.kernel);
    let pixels = g.out_height * g.out_width;
    let per_chunk = g.images_per_chunk();
    let chunks = g.batch.div_ceil(per_chunk);
    // acc[o][tap][c]: each output channel's taps in the order the tiles write them.
    let parts = parallel::map_parts(chunks, |range| {
        let mut acc = vec![0.0f32; cout * kk * cpg];
        for chunk in range {
            let first = chunk * per_chunk;
            let count = per_chunk.min(g.batch - first);
            let grads = &dy[first * pixels * cout..][..count * pixels * cout];
            let (starts, taps) = windows(g, count);
            with_input(x, map, g, first, count, |input| {
                if weights_by_outputs(simd, g) {
                    weight_chunk_by_outputs(simd, input, grads, &starts, &taps, g, &mut acc)
                } else if weights_by_kernel_rows(simd, g) {
                    weight_chunk_by_kernel_rows(input, grads, &starts, &taps, g, &mut acc)
                } else {
                    weight_chunk(simd, input, grads, &starts, &taps, g, &mut acc)
                }
            });
        }
        acc
    });
    ohwi_to_oihw(&parallel::sum_in_order(parts), g)
}

/// Whether a weight gradient runs with output channels in the vector lanes
/// (`weight_chunk_by_outputs`): groups of at most 4 input channels (the stems' 3), which leave
/// most of the 16 input-channel lanes of the usual tiles empty, and AVX-512.
pub(crate) fn weights_by_outputs(simd: Simd, g: &ConvGeometry) -> bool {
    simd == Simd::Avx512 && g.in_per_group() <= 4
}

/// `weight_chunk` with output channels in the vector lanes and (tap, input channel) pairs in
/// the tile rows: each gradient row is loaded once per pixel for all of them. The same products
/// added in the same order as `weight_chunk`'s AVX-512 tiles, so the same bits.
fn weight_chunk_by_outputs(
    simd: Simd,
    input: &[f32],
    grads: &[f32],
    starts: &[usize],
    taps: &[usize],
    g: &ConvGeometry,
    acc: &mut [f32],
) {
    let (cout, opg, cpg, kk) = (g.out_channels, g.out_per_group(), g.in_per_group(), taps.len());
    let pairs = kk * cpg;
    let mut tile = [[0.0f32; LANES]; MAX_ROWS];
    each_block_and_group(starts, grads, g, |starts, grads, grp| {
        // Where each (tap, channel) pair of the group reads, from a pixel's window start.
        let offsets: Vec<usize> = (0..pairs).map(|q| taps[q / cpg] + grp * cpg + q % cpg).collect();
        for o0 in (0..opg).step_by(LANES) {
            let outs = LANES.min(opg - o0);
            for (q0, rows) in balanced_tiles(pairs, simd.weight_rows()) {
                let offsets = &offsets[q0..][..rows];
                weight_tile_by_outputs(
                    simd,
                    input,
                    starts,
                    offsets,
                    grads,
                    cout,
                    grp * opg + o0,
                    outs,
                    &mut tile,
                );
                for (r, row) in tile.iter().enumerate().take(rows) {
                    let (tap, c) = ((q0 + r) / cpg, (q0 + r) % cpg);
                    for (j, v) in row.iter().enumerate().take(outs) {
                        acc[((grp * opg + o0 + j) * kk + tap) * cpg + c] += v;
                    }
                }
            }
        }
    });
}

/// One weight-gradient tile with output channels in the lanes: `tile[r][j]` (overwritten) =
/// sum over output pixels p of input[starts[p] + offsets[r]] * dy[p * cout + dy_at + j], for
/// r < offsets.len() and j < outs. AVX-512 only (`weights_by_outputs`).
#[allow(clippy::too_many_arguments)]
fn weight_tile_by_outputs(
    simd: Simd,
    input: &[f32],
    starts: &[usize],
    offsets: &[usize],
    dy: &[f32],
    cout: usize,
    dy_at: usize,
    outs: usize,
    tile: &mut [[f32; LANES]; MAX_ROWS],
) {
    let last_x = starts.iter().max().copied().unwrap_or(0) + offsets.iter().max().copied().unwrap_or(0) + 1;
    let last_dy = (starts.len().max(1) - 1) * cout + dy_at + outs;
    assert!(last_x <= input.len() && last_dy <= dy.len() && outs <= LANES && offsets.len() <= MAX_ROWS);
    match simd {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AVX-512 is present; reads stay within the bounds checked above (the gradient
        // loads are masked to `outs` lanes).
        Simd::Avx512 => unsafe {
            let (x, d) = (input.as_ptr(), dy.as_ptr().add(dy_at));
            by_rows!(offsets.len(), avx512::weight_by_outputs, x, starts, offsets, d, cout, outs, tile)
        },
        _ => unreachable!("the by-outputs tiles run with AVX-512 only (`weights_by_outputs`)"),
    }
}

/// Output channels per tile of `weight_chunk_by_kernel_rows`: its 3 x 8 accumulators, three
/// input vectors and a broadcast gradient fill 28 of AVX-512's 32 vector registers.
const ROW_TILE_OUTS: usize = 8;

/// Whether a weight gradient runs by kernel rows (`weight_chunk_by_kernel_rows`): 3x3 kernels
/// with AVX-512.
pub(crate) fn weights_by_kernel_rows(simd: Simd, g: &ConvGeometry) -> bool {
    simd == Simd::Avx512 && g.kernel == 3
}

/// `weight_chunk` a kernel row at a time: each tile holds the three taps of one kernel row for
/// up to 8 output channels x 16 input channels, so every gradient value broadcast from memory
/// serves three multiply-adds (one in `weight_chunk`'s tiles), which frees the load ports. The
/// same products added in the same order as `weight_chunk`, so the same bits.
fn weight_chunk_by_kernel_rows(
    input: &[f32],
    grads: &[f32],
    starts: &[usize],
    taps: &[usize],
    g: &ConvGeometry,
    acc: &mut [f32],
) {
    let (cout, opg, cpg, kk) = (g.out_channels, g.out_per_group(), g.in_per_group(), taps.len());
    let mut tile = [[[0.0f32; LANES]; ROW_TILE_OUTS]; 3];
    each_block_and_group(starts, grads, g, |starts, grads, grp| {
        for kh in 0..3 {
            let row_taps = [taps[3 * kh], taps[3 * kh + 1], taps[3 * kh + 2]];
            for (o0, outs) in balanced_tiles(opg, ROW_TILE_OUTS) {
                for c0 in (0..cpg).step_by(LANES) {
                    let ins = LANES.min(cpg - c0);
                    let (x_at, dy_at) = (grp * cpg + c0, grp * opg + o0);
                    weight_kernel_row(
                        input, starts, row_taps, x_at, ins, grads, cout, dy_at, outs, &mut tile,
                    );
                    for (t, tap_tile) in tile.iter().enumerate() {
                        for (r, row) in tap_tile.iter().enumerate().take(outs) {
                            let dst = &mut acc[((grp * opg + o0 + r) * kk + 3 * kh + t) * cpg + c0..][..ins];
                            for (d, v) in dst.iter_mut().zip(row) {
                                *d += v;
                            }
                        }
                    }
                }
            }
        }
    });
}

/// One kernel-row tile: `tile[t][r][j]` (overwritten) = sum over output pixels p of
/// dy[p * cout + dy_at + r] * input[starts[p] + taps[t] + x_at + j], for r < outs and j < ins.
/// AVX-512 only (`weights_by_kernel_rows`).
#[allow(clippy::too_many_arguments)]
fn weight_kernel_row(
    input: &[f32],
    starts: &[usize],
    taps: [usize; 3],
    x_at: usize,
    ins: usize,
    dy: &[f32],
    cout: usize,
    dy_at: usize,
    outs: usize,
    tile: &mut [[[f32; LANES]; ROW_TILE_OUTS]; 3],
) {
    let last_x =
        starts.iter().max().copied().unwrap_or(0) + taps.iter().max().copied().unwrap_or(0) + x_at + ins;
    let last_dy = (starts.len().max(1) - 1) * cout + dy_at + outs;
    assert!(last_x <= input.len() && last_dy <= dy.len() && ins <= LANES && outs <= ROW_TILE_OUTS);
    #[cfg(target_arch = "x86_64")]
    // SAFETY: AVX-512 is present (`weights_by_kernel_rows`); reads stay within the bounds
    // checked above (the input loads are masked to `ins` lanes).
    unsafe {
        let (x, d) = (input.as_ptr().add(x_at), dy.as_ptr().add(dy_at));
        match outs {
            8 => avx512::weight_row::<8>(x, starts, taps, ins, d, cout, tile),
            7 => avx512::weight_row::<7>(x, starts, taps, ins, d, cout, tile),
            6 => avx512::weight_row::<6>(x, starts, taps, ins, d, cout, tile),
            5 => avx512::weight_row::<5>(x, starts, taps, ins, d, cout, tile),
            4 => avx512::weight_row::<4>(x, starts, taps, ins, d, cout, tile),
            3 => avx512::weight_row::<3>(x, starts, taps, ins, d, cout, tile),
            2 => avx512::weight_row::<2>(x, starts, taps, ins, d, cout, tile),
            _ => avx512::weight_row::<1>(x, starts, taps, ins, d, cout, tile),
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    unreachable!("the kernel-row tiles run with AVX-512 only");
}

/// Adds one chunk's weight gradient to `acc` ([O, taps, C / groups]).
fn weight_chunk(
    simd: Simd,
    input: &[f32],
    grads: &[f32],
    starts: &[usize],
    taps: &[usize],
    g: &ConvGeometry,
    acc: &mut [f32],
) {
    let (cout, opg, cpg, kk) = (g.out_channels, g.out_per_group(), g.in_per_group(), taps.len());
    let mut tile = [[0.0f32; LANES]; MAX_ROWS];
    each_block_and_group(starts, grads, g, |starts, grads, grp| {
        for (tap, &t) in taps.iter().enumerate() {
            for (o0, outs) in balanced_tiles(opg, simd.weight_rows()) {
                for c0 in (0..cpg).step_by(LANES) {
                    let ins = LANES.min(cpg - c0);
                    let (x_at, dy_at) = (grp * cpg + c0 + t, grp * opg + o0);
                    weight_tile(simd, input, starts, x_at, ins, grads, cout, dy_at, outs, &mut tile);
                    for (r, row) in tile.iter().enumerate().take(outs) {
                        let dst = &mut acc[((grp * opg + o0 + r) * kk + tap) * cpg + c0..][..ins];
                        for (d, v) in dst.iter_mut().zip(row) {
                            *d += v;
                        }
                    }
                }
            }
        }
    });
}

/// The weight-gradient chunks' common loop: `f(starts, grads, grp)` for every block of
/// `PIXEL_BLOCK` output pixels (their window starts and their rows of dy) and every group. A
/// block of pixels at a time, so that the inputs and gradients every tile of the block reads
/// stay in the L1 cache.
#[inline(always)]
fn each_block_and_group(
    starts: &[usize],
    grads: &[f32],
    g: &ConvGeometry,
    mut f: impl FnMut(&[usize], &[f32], usize),
) {
    for (block, starts) in starts.chunks(PIXEL_BLOCK).enumerate() {
        let grads = &grads[block * PIXEL_BLOCK * g.out_channels..];
        for grp in 0..g.groups {
            f(starts, grads, grp);
        }
    }
}

/// One weight-gradient tile: `tile[r][j]` (overwritten) = sum over output pixels p of
/// dy[p * cout + dy_at + r] * input[starts[p] + x_at + j], for r < outs and j < ins.
#[allow(clippy::too_many_arguments)]
pub(crate) fn weight_tile(
    simd: Simd,
    input: &[f32],
    starts: &[usize],
    x_at: usize,
    ins: usize,
    dy: &[f32],
    cout: usize,
    dy_at: usize,
    outs: usize,
    tile: &mut [[f32; LANES]; MAX_ROWS],
) {
    let last_x = starts.iter().max().copied().unwrap_or(0) + x_at + ins;
    let last_dy = (starts.len().max(1) - 1) * cout + dy_at + outs;
    assert!(last_x <= input.len() && last_dy <= dy.len() && ins <= LANES && outs <= simd.weight_rows());
    match simd {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AVX-512 is present; reads stay within the bounds checked above (the vector
        // loads are masked to `ins` lanes).
        Simd::Avx512 => unsafe {
            let (x, d) = (input.as_ptr().add(x_at), dy.as_ptr().add(dy_at));
            by_rows!(outs, avx512::weight, x, starts, ins, d, cout, tile)
        },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AVX2 and FMA are present; reads stay within the bounds checked above (the
        // vector loads are masked to `ins` lanes).
        Simd::Avx2 => unsafe {
            let (x, d) = (input.as_ptr().add(x_at), dy.as_ptr().add(dy_at));
            by_rows!(outs, avx2::weight, x, starts, ins, d, cout, tile)
        },
        _ => {
            *tile = [[0.0; LANES]; MAX_ROWS];
            for (p, &start) in starts.iter().enumerate() {
                let xv = &input[start + x_at..][..ins];
                for (r, row) in tile.iter_mut().enumerate().take(outs) {
                    let g = dy[p * cout + dy_at + r];
                    for (a, v) in row.iter_mut().zip(xv) {
                        *a += g * v;
                    }
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
// Indexing with a constant-bound loop counter is what lets the accumulators live in registers.
#[allow(clippy::needless_range_loop)]
mod avx2 {
    use std::arch::x86_64::*;

    use super::{LANES, MAX_ROWS};

    /// See `forward_tile`; `x` already points at the group's first channel.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn forward<const R: usize>(
        x: *const f32,
        rows: &[usize],
        taps: &[usize],
        cpg: usize,
        mut w: *const f32,
        out: *mut f32,
        stride: usize,
        width: usize,
    ) {
        // SAFETY: the caller checked every extent; a narrower panel's stores are masked.
        unsafe {
            let mut acc = [[_mm256_setzero_ps(); 2]; R];
            let mut px = [x; R];
            for &t in taps {
                for r in 0..R {
                    px[r] = x.add(rows[r] + t);
                }
                for c in 0..cpg {
                    let w0 = _mm256_loadu_ps(w);
                    let w1 = _mm256_loadu_ps(w.add(8));
                    w = w.add(LANES);
                    for r in 0..R {
                        let v = _mm256_broadcast_ss(&*px[r].add(c));
                        acc[r][0] = _mm256_fmadd_ps(v, w0, acc[r][0]);
                        acc[r][1] = _mm256_fmadd_ps(v, w1, acc[r][1]);
                    }
                }
            }
            let dst = |r: usize| out.add(r * stride);
            if width == LANES {
                for r in 0..R {
                    _mm256_storeu_ps(dst(r), acc[r][0]);
                    _mm256_storeu_ps(dst(r).add(8), acc[r][1]);
                }
            } else {
                let (m0, m1) = masks(width);
                for r in 0..R {
                    _mm256_maskstore_ps(dst(r), m0, acc[r][0]);
                    _mm256_maskstore_ps(dst(r).add(8), m1, acc[r][1]);
                }
            }
        }
    }

    /// Lanes [0, n) of a 16-lane load or store set, the rest zero.
    #[target_feature(enable = "avx2")]
    unsafe fn masks(n: usize) -> (__m256i, __m256i) {
        let lane = |j: i32| if (j as usize) < n { -1 } else { 0 };
        (
            _mm256_setr_epi32(lane(0), lane(1), lane(2), lane(3), lane(4), lane(5), lane(6), lane(7)),
            _mm256_setr_epi32(lane(8), lane(9), lane(10), lane(11), lane(12), lane(13), lane(14), lane(15)),
        )
    }

    /// See `weight_tile`; `x` and `dy` already point at the tile's first channel.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn weight<const R: usize>(
        x: *const f32,
        starts: &[usize],
        ins: usize,
        dy: *const f32,
        cout: usize,
        out: &mut [[f32; LANES]; MAX_ROWS],
    ) {
        // SAFETY: the caller checked every extent; masked loads read only `ins` lanes.
        unsafe {
            let mut acc = [[_mm256_setzero_ps(); 2]; R];
            let (m0, m1) = masks(ins);
            let full = ins == LANES;
            let mut d = dy;
            for &start in starts {
                let p = x.add(start);
                let (v0, v1) = if full {
                    (_mm256_loadu_ps(p), _mm256_loadu_ps(p.add(8)))
                } else {
                    (_mm256_maskload_ps(p, m0), _mm256_maskload_ps(p.add(8), m1))
                };
                for r in 0..R {
                    let g = _mm256_broadcast_ss(&*d.add(r));
                    acc[r][0] = _mm256_fmadd_ps(g, v0, acc[r][0]);
                    acc[r][1] = _mm256_fmadd_ps(g, v1, acc[r][1]);
                }
                d = d.add(cout);
            }
            for r in 0..R {
                _mm256_storeu_ps(out[r].as_mut_ptr(), acc[r][0]);
                _mm256_storeu_ps(out[r].as_mut_ptr().add(8), acc[r][1]);
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[allow(clippy::needless_range_loop)]
mod avx512 {
    use std::arch::x86_64::*;

    use super::{LANES, MAX_ROWS, ROW_TILE_OUTS};

    /// See `forward_tile`; `x` already points at the group's first channel. One vector of 16
    /// output channels per row; each input value is broadcast from memory into its FMA.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f")]
    pub unsafe fn forward<const R: usize>(
        x: *const f32,
        rows: &[usize],
        taps: &[usize],
        cpg: usize,
        mut w: *const f32,
        out: *mut f32,
        stride: usize,
        width: usize,
    ) {
        // SAFETY: the caller checked every extent; a narrower panel's stores are masked.
        unsafe {
            let mut acc = [_mm512_setzero_ps(); R];
            let mut px = [x; R];
            for &t in taps {
                for r in 0..R {
                    px[r] = x.add(rows[r] + t);
                }
                for c in 0..cpg {
                    let wv = _mm512_loadu_ps(w);
                    w = w.add(LANES);
                    for r in 0..R {
                        acc[r] = _mm512_fmadd_ps(_mm512_set1_ps(*px[r].add(c)), wv, acc[r]);
                    }
                }
            }
            let mask: __mmask16 = if width >= LANES { !0 } else { (1u16 << width) - 1 };
            for r in 0..R {
                _mm512_mask_storeu_ps(out.add(r * stride), mask, acc[r]);
            }
        }
    }

    /// See `forward_row_tile`; `x` points at the tile's first input. Per input channel and
    /// kernel row, the R + 2 inputs are broadcast once each and every one feeds the (up to)
    /// three outputs whose windows hold it.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f")]
    pub unsafe fn forward_row<const R: usize>(
        x: *const f32,
        (row_pitch, pixel_pitch): (usize, usize),
        cpg: usize,
        w: *const f32,
        out: *mut f32,
        stride: usize,
        width: usize,
    ) {
        // SAFETY: the caller checked every extent; a narrower panel's stores are masked.
        unsafe {
            let mut acc = [_mm512_setzero_ps(); R];
            for kh in 0..3 {
                let mut p = x.add(kh * row_pitch);
                // The weights of taps (kh, 0), (kh, 1) and (kh, 2) for channel k.
                let mut wk = w.add(kh * 3 * cpg * LANES);
                for _ in 0..cpg {
                    let w0 = _mm512_loadu_ps(wk);
                    let w1 = _mm512_loadu_ps(wk.add(cpg * LANES));
                    let w2 = _mm512_loadu_ps(wk.add(2 * cpg * LANES));
                    wk = wk.add(LANES);
                    let mut xs = [_mm512_setzero_ps(); MAX_ROWS + 2];
                    for (q, v) in xs.iter_mut().enumerate().take(R + 2) {
                        *v = _mm512_set1_ps(*p.add(q * pixel_pitch));
                    }
                    for r in 0..R {
                        acc[r] = _mm512_fmadd_ps(xs[r], w0, acc[r]);
                    }
                    for r in 0..R {
                        acc[r] = _mm512_fmadd_ps(xs[r + 1], w1, acc[r]);
                    }
                    for r in 0..R {
                        acc[r] = _mm512_fmadd_ps(xs[r + 2], w2, acc[r]);
                    }
                    p = p.add(1);
                }
            }
            let mask: __mmask16 = if width >= LANES { !0 } else { (1u16 << width) - 1 };
            for r in 0..R {
                _mm512_mask_storeu_ps(out.add(r * stride), mask, acc[r]);
            }
        }
    }

    /// See `weight_tile`; `x` and `dy` already point at the tile's first channel. The input
    /// load is masked to `ins` lanes (masked lanes are neither read nor faulted on).
    #[target_feature(enable = "avx512f")]
    pub unsafe fn weight<const R: usize>(
        x: *const f32,
        starts: &[usize],
        ins: usize,
        dy: *const f32,
        cout: usize,
        out: &mut [[f32; LANES]; MAX_ROWS],
    ) {
        // SAFETY: the caller checked every extent; masked loads read only `ins` lanes.
        unsafe {
            let mut acc = [_mm512_setzero_ps(); R];
            let mask: __mmask16 = if ins >= LANES { !0 } else { (1u16 << ins) - 1 };
            let mut d = dy;
            const AHEAD: usize = super::PREFETCH_AHEAD;
            for (i, &start) in starts.iter().enumerate() {
                if let Some(&next) = starts.get(i + AHEAD) {
                    _mm_prefetch::<_MM_HINT_T0>(x.add(next) as *const i8);
                    _mm_prefetch::<_MM_HINT_T0>(d.add(AHEAD * cout) as *const i8);
                }
                let v = _mm512_maskz_loadu_ps(mask, x.add(start));
                for r in 0..R {
                    acc[r] = _mm512_fmadd_ps(_mm512_set1_ps(*d.add(r)), v, acc[r]);
                }
                d = d.add(cout);
            }
            for r in 0..R {
                _mm512_storeu_ps(out[r].as_mut_ptr(), acc[r]);
            }
        }
    }

    /// See `weight_kernel_row`; `x` and `dy` already point at the tile's first channels.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn weight_row<const R: usize>(
        x: *const f32,
        starts: &[usize],
        taps: [usize; 3],
        ins: usize,
        dy: *const f32,
        cout: usize,
        out: &mut [[[f32; LANES]; ROW_TILE_OUTS]; 3],
    ) {
        // SAFETY: the caller checked every extent; masked loads read only `ins` lanes.
        unsafe {
            let mut acc = [[_mm512_setzero_ps(); R]; 3];
            let mask: __mmask16 = if ins >= LANES { !0 } else { (1u16 << ins) - 1 };
            let mut d = dy;
            const AHEAD: usize = super::PREFETCH_AHEAD;
            for (i, &start) in starts.iter().enumerate() {
                if let Some(&next) = starts.get(i + AHEAD) {
                    _mm_prefetch::<_MM_HINT_T0>(x.add(next + taps[0]) as *const i8);
                    _mm_prefetch::<_MM_HINT_T0>(d.add(AHEAD * cout) as *const i8);
                }
                let px = x.add(start);
                let v = taps.map(|t| _mm512_maskz_loadu_ps(mask, px.add(t)));
                for r in 0..R {
                    let g = _mm512_set1_ps(*d.add(r));
                    for t in 0..3 {
                        acc[t][r] = _mm512_fmadd_ps(g, v[t], acc[t][r]);
                    }
                }
                d = d.add(cout);
            }
            for t in 0..3 {
                for r in 0..R {
                    _mm512_storeu_ps(out[t][r].as_mut_ptr(), acc[t][r]);
                }
            }
        }
    }

    /// See `weight_tile_by_outputs`; `dy` already points at the panel's first channel.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn weight_by_outputs<const R: usize>(
        x: *const f32,
        starts: &[usize],
        offsets: &[usize],
        dy: *const f32,
        cout: usize,
        outs: usize,
        out: &mut [[f32; LANES]; MAX_ROWS],
    ) {
        // SAFETY: the caller checked every extent; masked loads read only `outs` lanes.
        unsafe {
            let mut acc = [_mm512_setzero_ps(); R];
            let mask: __mmask16 = if outs >= LANES { !0 } else { (1u16 << outs) - 1 };
            let off: [usize; R] = std::array::from_fn(|r| offsets[r]);
            let mut d = dy;
            for &start in starts {
                let g = _mm512_maskz_loadu_ps(mask, d);
                let px = x.add(start);
                for r in 0..R {
                    acc[r] = _mm512_fmadd_ps(_mm512_set1_ps(*px.add(off[r])), g, acc[r]);
                }
                d = d.add(cout);
            }
            for r in 0..R {
                _mm512_storeu_ps(out[r].as_mut_ptr(), acc[r]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::conv::{Conv2dParams, check_shapes, reference};
    use crate::ops::gradcheck::random_tensor;

    /// Every convolution of both models at batch 1 and 3 (spatially smaller), plus the shared
    /// checks' odd sizes: groups 1 and 10, stride 1 and 2, 1x1 and 3x3.
    fn shapes() -> Vec<([usize; 4], [usize; 4], Conv2dParams)> {
        let p = |stride, padding, groups| Conv2dParams { stride, padding, groups };
        let mut all = check_shapes();
        for (b, size) in [(1, 8), (3, 5)] {
            // PreAct-18 width 16: stem, 3x3 at stride 1 and 2, 1x1 shortcut.
            all.push(([b, size, size, 3], [16, 3, 3, 3], p(1, 1, 1)));
            all.push(([b, size, size, 16], [16, 16, 3, 3], p(1, 1, 1)));
            all.push(([b, size, size, 16], [32, 16, 3, 3], p(2, 1, 1)));
            all.push(([b, size, size, 16], [32, 16, 1, 1], p(2, 0, 1)));
            // MoCSE, 10 experts of width 16 (a narrower last stage keeps the test quick).
            all.push(([b, size, size, 160], [160, 16, 3, 3], p(1, 1, 10)));
            all.push(([b, size, size, 160], [320, 16, 3, 3], p(2, 1, 10)));
            all.push(([b, size, size, 320], [320, 32, 3, 3], p(1, 1, 10)));
            all.push(([b, size, size, 160], [320, 16, 1, 1], p(2, 0, 10)));
        }
        // Rows of AVX-512's row tiles cut unevenly (17 = 9 + 8, 19 = 10 + 9), a panel of 4.
        all.push(([2, 9, 17, 24], [16, 24, 3, 3], p(1, 1, 1)));
        all.push(([2, 6, 19, 40], [40, 20, 3, 3], p(1, 1, 2)));
        all
    }

    fn assert_close(case: usize, what: &str, ours: &[f32], exact: &[f64]) {
        assert_eq!(ours.len(), exact.len());
        let scale = exact.iter().fold(1.0f64, |m, v| m.max(v.abs()));
        for (i, (a, b)) in ours.iter().zip(exact).enumerate() {
            assert!((*a as f64 - b).abs() < 2e-6 * scale, "case {case} {what}[{i}]: {a} vs {b}");
        }
    }

    #[test]
    fn every_direction_matches_the_f64_reference_with_either_kernel() {
        for simd in available() {
            for (n, (xs, ws, p)) in shapes().into_iter().enumerate() {
                let x = random_tensor(&xs, n as u64);
                let w = random_tensor(&ws, 300 + n as u64);
                let g = ConvGeometry::new(&xs, &ws, p).unwrap();
                let dy = random_tensor(&g.output_shape(), 600 + n as u64);
                let (x, w, dy) = (x.as_slice(), w.as_slice(), dy.as_slice());
                let y = forward_with(simd, x, None, None, &PackedWeights::forward(w, &g), &g);
                assert_close(n, &format!("{simd:?} forward"), &y, &reference::forward(x, w, &g));
                let dw = backward_weight_with(simd, x, None, dy, &g);
                assert_close(
                    n,
                    &format!("{simd:?} weight gradient"),
                    &dw,
                    &reference::weight_gradient(x, dy, &g),
                );
                if stride2_3x3(&g) {
                    let dx = backward_data_by_phases(dy, &PhaseWeights::new(w, &g), &g);
                    assert_close(
                        n,
                        "stride-2 3x3 input gradient",
                        &dx,
                        &reference::input_gradient(dy, w, &g),
                    );
                }
                if strided_pointwise(&g) {
                    let dx = backward_data_strided_pointwise(dy, &PackedWeights::backward_data(w, &g), &g);
                    assert_close(n, "strided 1x1 input gradient", &dx, &reference::input_gradient(dy, w, &g));
                }
                if g.stride == 1 {
                    let dx = forward_with(
                        simd,
                        dy,
                        None,
                        None,
                        &PackedWeights::backward_data(w, &g),
                        &backward_data_geometry(&g),
                    );
                    assert_close(
                        n,
                        &format!("{simd:?} input gradient"),
                        &dx,
                        &reference::input_gradient(dy, w, &g),
                    );
                }
            }
        }
    }

    #[test]
    fn the_kernels_agree_with_each_other() {
        // `forward_tile` and the weight tiles sum in the same order with every instruction set:
        // only FMA's single rounding separates them from portable, and nothing separates
        // AVX-512 from AVX2. AVX-512's row tiles (`forward_panel_by_rows`, the 9x9 layer) add
        // each kernel row's three taps channel by channel, so they differ from AVX2 by rounding.
        // AVX-512's weight tiles by output channels (groups of 3 and 2 input channels below) add
        // the same products in the same order as the others.
        let p = |stride, groups| Conv2dParams { stride, padding: 1, groups };
        for (xs, ws, p) in [
            ([4, 9, 9, 160], [160, 16, 3, 3], p(1, 10)),
            ([4, 9, 9, 160], [160, 16, 3, 3], p(2, 10)),
            ([4, 9, 9, 3], [20, 3, 3, 3], p(1, 1)),
            ([3, 7, 7, 20], [30, 2, 3, 3], p(2, 10)),
        ] {
            let g = ConvGeometry::new(&xs, &ws, p).unwrap();
            let (x, w) = (random_tensor(&xs, 1), random_tensor(&ws, 2));
            let dy = random_tensor(&g.output_shape(), 3);
            let packed = PackedWeights::forward(w.as_slice(), &g);
            let portable = forward_with(Simd::Portable, x.as_slice(), None, None, &packed, &g);
            let fused: Vec<_> = available()
                .into_iter()
                .filter(|s| *s != Simd::Portable)
                .map(|s| {
                    let y = forward_with(s, x.as_slice(), None, None, &packed, &g);
                    (y, backward_weight_with(s, x.as_slice(), None, dy.as_slice(), &g), by_output_rows(s, &g))
                })
                .collect();
            for (y, dw, by_rows) in &fused {
                for (a, b) in y.iter().zip(&portable) {
                    assert!((a - b).abs() <= 1e-5 * (1.0 + b.abs()), "{a} vs {b}");
                }
                assert_eq!(dw, &fused[0].1, "AVX-512 and AVX2 weight gradients differ");
                if !by_rows && !fused[0].2 {
                    assert_eq!(y, &fused[0].0, "AVX-512 and AVX2 differ");
                }
            }
        }
    }

    #[test]
    fn tiles_are_balanced_and_cover_every_row() {
        for (count, rows) in [(16, 12), (32, 12), (12, 12), (5, 6), (64, 12), (1, 12), (13, 6)] {
            let tiles: Vec<_> = balanced_tiles(count, rows).collect();
            assert_eq!(tiles.len(), count.div_ceil(rows));
            assert!(tiles.iter().all(|&(_, n)| n <= rows && n + 1 >= count / tiles.len()));
            let ends: Vec<_> = tiles.iter().map(|&(a, n)| a + n).collect();
            assert_eq!(tiles.iter().map(|t| t.0).skip(1).collect::<Vec<_>>(), ends[..ends.len() - 1]);
            assert_eq!((tiles[0].0, *ends.last().unwrap()), (0, count));
        }
        assert_eq!(balanced_tiles(16, 12).collect::<Vec<_>>(), [(0, 8), (8, 8)]);
    }
}
