//! Winograd convolution F(2x2, 3x3) on the CPU (Lavin & Gray, 2016) for 3x3 convolutions at
//! stride 1 with padding 1: each 2x2 block of outputs comes from a 4x4 input tile with 16
//! multiplications per (input, output) channel pair instead of 36. Per chunk of images:
//!
//! 1. input transform: V[xi][tile][c] = (B^T d B)[xi] of every 4x4 input window d (additions
//!    only), read straight from the unpadded images (the windows' parts outside are zeros);
//! 2. 16 GEMMs, one per xi: M[xi][tile][o] = sum_c V[xi][tile][c] U[xi][c][o], with the weights
//!    transformed once per call, U = G g G^T, by the direct convolution's microkernel;
//! 3. output transform: the 2x2 outputs A^T M A of every tile, straight into the output.
//!
//! All three run per block of tiles (all groups at once) small enough that V and M stay in the
//! L2 cache: the transforms are a few additions per value, so a layout that sent V and M through
//! memory made Winograd lose to the direct kernels on narrow layers.
//!
//! Backward data at stride 1 is a forward convolution (`conv_direct::backward_data_geometry`),
//! so it runs here too. The weight gradient transforms the inputs as above and the output
//! gradients by A dY A^T, reduces their products over tiles and returns G^T dU G. All arithmetic is f32; the transforms' constants are 0, +-1 and 1/2,
//! so the result differs from direct summation by rounding only (tested against f64).

use std::cell::RefCell;
use std::mem::MaybeUninit;

use rayon::prelude::*;

use super::conv::ConvGeometry;
use super::conv_direct::{
    LANES, MAX_ROWS, PackedWeights, Simd, balanced_tiles, forward_tile, simd, weight_tile,
};
use crate::parallel;

/// Whether this convolution is one the transform computes: 3x3, stride 1, padding 1.
pub fn applies(g: &ConvGeometry) -> bool {
    g.kernel == 3 && g.stride == 1 && g.padding == 1
}

/// The transformed weights U[xi] = (G g G^T)[xi], packed for the microkernel with xi in place
/// of the tap: each panel holds U[xi][c][16 outputs] for xi = 0..16.
pub struct WinogradWeights {
    packed: PackedWeights,
}

impl WinogradWeights {
    /// `weight(group, out, tap, in)`: 3x3 weights of `outs` x `ins` channels per group.
    fn transform(
        groups: usize,
        outs: usize,
        ins: usize,
        weight: impl Fn(usize, usize, usize, usize) -> f32 + Sync,
    ) -> Self {
        let mut packed = PackedWeights::zeroed(groups, outs, ins, 16);
        packed.fill_panels(|grp, panel, block| {
            for j in 0..LANES.min(outs.saturating_sub(panel * LANES)) {
                let o = panel * LANES + j;
                for i in 0..ins {
                    // G g G^T with G = [1 0 0; .5 .5 .5; .5 -.5 .5; 0 0 1]. First G g: row
                    // combinations of the kernel's columns.
                    let k = |r: usize, s: usize| weight(grp, o, r * 3 + s, i);
                    let column = |s: usize| (k(0, s), k(1, s), k(2, s));
                    let gg: [[f32; 3]; 4] = [
                        std::array::from_fn(|s| column(s).0),
                        std::array::from_fn(|s| {
                            let (a, b, c) = column(s);
                            0.5 * (a + b + c)
                        }),
                        std::array::from_fn(|s| {
                            let (a, b, c) = column(s);
                            0.5 * (a - b + c)
                        }),
                        std::array::from_fn(|s| column(s).2),
                    ];
                    for (r, &[a, b, c]) in gg.iter().enumerate() {
                        let row = [a, 0.5 * (a + b + c), 0.5 * (a - b + c), c];
                        for (s, value) in row.into_iter().enumerate() {
                            block[((r * 4 + s) * ins + i) * LANES + j] = value;
                        }
                    }
                }
            }
        });
        WinogradWeights { packed }
    }

    /// For the forward pass: OIHW weights.
    pub fn forward(w: &[f32], g: &ConvGeometry) -> Self {
        let (opg, cpg) = (g.out_per_group(), g.in_per_group());
        Self::transform(g.groups, opg, cpg, |grp, o, tap, i| w[((grp * opg + o) * cpg + i) * 9 + tap])
    }

    /// For backward data as a forward convolution (see `conv_direct::backward_data_geometry`):
    /// outputs are the original inputs, taps flipped.
    pub fn backward_data(w: &[f32], g: &ConvGeometry) -> Self {
        let (opg, cpg) = (g.out_per_group(), g.in_per_group());
        Self::transform(g.groups, cpg, opg, |grp, c, tap, o| w[((grp * opg + o) * cpg + c) * 9 + (8 - tap)])
    }
}

thread_local! {
    // Per-thread V and M of one block, reused between blocks and calls.
    static BUFFERS: RefCell<[Vec<f32>; 2]> = const { RefCell::new([Vec::new(), Vec::new()]) };
}

fn sized(v: &mut Vec<f32>, len: usize) -> &mut [f32] {
    if v.len() < len {
        v.resize(len, 0.0);
    }
    &mut v[..len]
}

/// y = conv(x, w) for a 3x3, stride-1, padding-1 geometry (`applies`).
pub fn forward(x: &[f32], w: &WinogradWeights, g: &ConvGeometry) -> Vec<f32> {
    forward_with(simd(), x, w, g)
}

/// Where the tiles lie: images of `height` x `width` pixels of `channels` (NHWC), cut into
/// `tiles_y` x `tiles_x` tiles of 2x2 outputs each.
#[derive(Clone, Copy)]
struct Tiling {
    height: usize,
    width: usize,
    channels: usize,
    tiles_y: usize,
    tiles_x: usize,
}

impl Tiling {
    /// The tiles of `g`'s input images, and how many images a chunk (one unit of parallel work)
    /// holds: at least 64 tiles, and at least four chunks per batch.
    fn of(g: &ConvGeometry) -> (Tiling, usize) {
        let (tiles_y, tiles_x) = (g.height.div_ceil(2), g.width.div_ceil(2));
        let tiling = Tiling { height: g.height, width: g.width, channels: g.in_channels, tiles_y, tiles_x };
        let per_chunk = 64usize.div_ceil(tiles_y * tiles_x).min((g.batch / 4).max(1));
        (tiling, per_chunk)
    }

    /// Image, tile row and tile column of tile `t` of a chunk.
    fn locate(&self, t: usize) -> (usize, usize, usize) {
        let per_image = self.tiles_y * self.tiles_x;
        (t / per_image, t % per_image / self.tiles_x, t % self.tiles_x)
    }

    /// The pixel offset of position (r, s) of a tile's 4x4 input window (which starts one pixel
    /// up and left of its 2x2 outputs), or None where the window hangs over the image's edge
    /// (the zero padding).
    fn window(&self, t: usize) -> [Option<usize>; 16] {
        let (img, ty, tx) = self.locate(t);
        std::array::from_fn(|k| {
            let (y, x) = ((2 * ty + k / 4).checked_sub(1)?, (2 * tx + k % 4).checked_sub(1)?);
            (y < self.height && x < self.width)
                .then(|| ((img * self.height + y) * self.width + x) * self.channels)
        })
    }

    /// The pixel offsets of a tile's 2x2 outputs, None where they fall outside the image.
    fn outputs(&self, t: usize, channels: usize) -> [Option<usize>; 4] {
        let (img, ty, tx) = self.locate(t);
        std::array::from_fn(|k| {
            let (y, x) = (2 * ty + k / 2, 2 * tx + k % 2);
            (y < self.height && x < self.width).then(|| ((img * self.height + y) * self.width + x) * channels)
        })
    }
}

fn forward_with(simd: Simd, x: &[f32], w: &WinogradWeights, g: &ConvGeometry) -> Vec<f32> {
    assert!(applies(g));
    let (c, cout) = (g.in_channels, g.out_channels);
    let (h, wd) = (g.height, g.width);
    let (tiling, per_chunk) = Tiling::of(g);
    let tiles_per_image = tiling.tiles_y * tiling.tiles_x;
    // Tiles per block: V and M of a block (all channels) stay in the L2 cache, and a block is
    // tall enough that every panel of weights is used on several microkernel tiles.
    let block = (4096 / (c + cout)).clamp(24, 256);
    let image_out = h * wd * cout;
    let len = g.batch * image_out;
    // Every output is written exactly once: each pixel belongs to one tile, and every group's
    // channels are computed for it.
    let mut out: Vec<f32> = Vec::with_capacity(len);
    out.spare_capacity_mut()[..len].par_chunks_mut(per_chunk * image_out).enumerate().for_each(
        |(chunk, out)| {
            let count = out.len() / image_out;
            let x = &x[chunk * per_chunk * h * wd * c..][..count * h * wd * c];
            let tiles = count * tiles_per_image;
            BUFFERS.with(|buffers| {
                let [v, m] = &mut *buffers.borrow_mut();
                let (v, m) = (sized(v, 16 * block * c), sized(m, 16 * block * cout));
                for first in (0..tiles).step_by(block) {
                    let n = block.min(tiles - first);
                    let (v, m) = (&mut v[..16 * n * c], &mut m[..16 * n * cout]);
                    transform_input(simd, x, &tiling, first..first + n, v);
                    multiply(simd, v, w, g, n, m);
                    transform_output(simd, m, &tiling, first..first + n, cout, out);
                }
            });
        },
    );
    // SAFETY: all `len` elements were initialised above.
    unsafe { out.set_len(len) };
    out
}

/// The 16 GEMMs of one block of `n` tiles, per group: M[xi][t][o] = sum over the group's c of
/// V[xi][t][c] U[xi][c][o], `simd.forward_rows()` tiles x 16 output channels at a time.
fn multiply(simd: Simd, v: &[f32], w: &WinogradWeights, g: &ConvGeometry, n: usize, m: &mut [f32]) {
    let (c, cout, cpg, opg) = (g.in_channels, g.out_channels, g.in_per_group(), g.out_per_group());
    // M is written as if uninitialised: the tiles store into it without reading it.
    // SAFETY: f32 and MaybeUninit<f32> have the same layout, and only f32 values are written.
    let m = unsafe { &mut *(m as *mut [f32] as *mut [MaybeUninit<f32>]) };
    let tile_rows = simd.forward_rows();
    for xi in 0..16 {
        for grp in 0..g.groups {
            for panel in 0..opg.div_ceil(LANES) {
                let width = LANES.min(opg - panel * LANES);
                let panel_weights = &w.packed.panel(grp, panel)[xi * cpg * LANES..];
                let col = grp * opg + panel * LANES;
                for t0 in (0..n).step_by(tile_rows) {
                    let rows: [usize; MAX_ROWS] = std::array::from_fn(|r| (t0 + r) * c);
                    let rows = &rows[..tile_rows.min(n - t0)];
                    let out = &mut m[(xi * n + t0) * cout + col..];
                    let at = xi * n * c + grp * cpg;
                    forward_tile(simd, v, rows, at, &[0], cpg, panel_weights, out, cout, width);
                }
            }
        }
    }
}

/// dL/dw (OIHW) of a 3x3, stride-1, padding-1 convolution (`applies`): with V the transformed
/// inputs as in the forward pass and dM[xi] = A dY A^T the transformed 2x2 output gradients of
/// every tile, dU[xi][o][c] = sum over tiles of dM[xi][t][o] V[xi][t][c], and dw = G^T dU G.
/// Chunks of images are reduced in fixed parts summed in order (deterministic).
pub fn backward_weight(x: &[f32], dy: &[f32], g: &ConvGeometry) -> Vec<f32> {
    backward_weight_with(simd(), x, dy, g)
}

fn backward_weight_with(simd: Simd, x: &[f32], dy: &[f32], g: &ConvGeometry) -> Vec<f32> {
    assert!(applies(g));
    let (c, cout, cpg) = (g.in_channels, g.out_channels, g.in_per_group());
    let (h, wd) = (g.height, g.width);
    let (tiling, per_chunk) = Tiling::of(g);
    let tiles_per_image = tiling.tiles_y * tiling.tiles_x;
    // Blocks as in the forward pass, but at least 32 tiles: each microkernel tile reduces over
    // the block's tiles before it is added to dU.
    let block = (4096 / (c + cout)).clamp(32, 256);
    let parts = parallel::map_parts(g.batch.div_ceil(per_chunk), |chunks| {
        let mut du = vec![0.0f32; 16 * cout * cpg];
        BUFFERS.with(|buffers| {
            let [v, m] = &mut *buffers.borrow_mut();
            let (v, m) = (sized(v, 16 * block * c), sized(m, 16 * block * cout));
            for chunk in chunks {
                let first = chunk * per_chunk;
                let count = per_chunk.min(g.batch - first);
                let x = &x[first * h * wd * c..][..count * h * wd * c];
                let dy = &dy[first * h * wd * cout..][..count * h * wd * cout];
                let tiles = count * tiles_per_image;
                for first in (0..tiles).step_by(block) {
                    let n = block.min(tiles - first);
                    let (v, m) = (&mut v[..16 * n * c], &mut m[..16 * n * cout]);
                    transform_input(simd, x, &tiling, first..first + n, v);
                    transform_gradient(simd, dy, &tiling, first..first + n, cout, m);
                    accumulate(simd, v, m, g, n, &mut du);
                }
            }
        });
        du
    });
    weight_gradient(&parallel::sum_in_order(parts), g)
}

/// dU[xi][o][c] += sum over the block's `n` tiles of dM[xi][t][o] V[xi][t][c], per group, by
/// the direct weight-gradient microkernel (`simd.weight_rows()` output x 16 input channels at a
/// time).
fn accumulate(simd: Simd, v: &[f32], m: &[f32], g: &ConvGeometry, n: usize, du: &mut [f32]) {
    let (c, cout, cpg, opg) = (g.in_channels, g.out_channels, g.in_per_group(), g.out_per_group());
    let starts: Vec<usize> = (0..n).map(|t| t * c).collect();
    let mut tile = [[0.0f32; LANES]; MAX_ROWS];
    for xi in 0..16 {
        for grp in 0..g.groups {
            for (o0, outs) in balanced_tiles(opg, simd.weight_rows()) {
                for c0 in (0..cpg).step_by(LANES) {
                    let ins = LANES.min(cpg - c0);
                    let (x_at, dy_at) = (xi * n * c + grp * cpg + c0, xi * n * cout + grp * opg + o0);
                    weight_tile(simd, v, &starts, x_at, ins, m, cout, dy_at, outs, &mut tile);
                    for (r, row) in tile.iter().enumerate().take(outs) {
                        let dst = &mut du[(xi * cout + grp * opg + o0 + r) * cpg + c0..][..ins];
                        for (d, value) in dst.iter_mut().zip(row) {
                            *d += value;
                        }
                    }
                }
            }
        }
    }
}

/// dw (OIHW) = G^T dU G from dU[xi][o][c], G = [1 0 0; .5 .5 .5; .5 -.5 .5; 0 0 1].
fn weight_gradient(du: &[f32], g: &ConvGeometry) -> Vec<f32> {
    let (cout, cpg) = (g.out_channels, g.in_per_group());
    let mut dw = vec![0.0f32; cout * cpg * 9];
    dw.par_chunks_mut(cpg * 9).enumerate().for_each(|(o, dw)| {
        for (ci, k) in dw.chunks_exact_mut(9).enumerate() {
            let u = |r: usize, s: usize| du[((r * 4 + s) * cout + o) * cpg + ci];
            // G^T dU: three rows of column combinations.
            let rows: [[f32; 4]; 3] = [
                std::array::from_fn(|s| u(0, s) + 0.5 * (u(1, s) + u(2, s))),
                std::array::from_fn(|s| 0.5 * (u(1, s) - u(2, s))),
                std::array::from_fn(|s| 0.5 * (u(1, s) + u(2, s)) + u(3, s)),
            ];
            // (G^T dU) G.
            for (a, row) in rows.iter().enumerate() {
                k[a * 3] = row[0] + 0.5 * (row[1] + row[2]);
                k[a * 3 + 1] = 0.5 * (row[1] - row[2]);
                k[a * 3 + 2] = 0.5 * (row[1] + row[2]) + row[3];
            }
        }
    });
    dw
}

/// Runs `$body` with AVX-512 or AVX2 enabled when `$simd` says so (so that the arrays of 16
/// and 8 below become vector instructions), else as portable code; all compute the same
/// additions.
macro_rules! with_simd {
    ($simd:expr, $body:expr) => {{
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx512f,avx2,fma")]
        unsafe fn avx512<R>(f: impl FnOnce() -> R) -> R {
            f()
        }
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx2,fma")]
        unsafe fn avx2<R>(f: impl FnOnce() -> R) -> R {
            f()
        }
        match $simd {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `simd()` chose Avx512 only where the CPU has AVX-512, AVX2 and FMA.
            Simd::Avx512 => unsafe { avx512(|| $body) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `simd()` chose Avx2 only where the CPU has AVX2 and FMA.
            Simd::Avx2 => unsafe { avx2(|| $body) },
            _ => $body,
        }
    }};
}

/// Calls `$f::<W>(.., $ch, ..)` over channels [0, $count): 16 at a time when `$wide` (one
/// AVX-512 vector), then 8, then one. A macro, not a helper taking a closure: a closure stayed
/// a call out of the AVX2 code and made Winograd 1.8x slower.
macro_rules! channel_blocks {
    ($wide:expr, $count:expr, |$ch:ident| $f:ident($($arg:expr),*)) => {{
        let mut $ch = 0;
        while $wide && $ch + 16 <= $count {
            $f::<16>($($arg),*);
            $ch += 16;
        }
        while $ch + 8 <= $count {
            $f::<8>($($arg),*);
            $ch += 8;
        }
        while $ch < $count {
            $f::<1>($($arg),*);
            $ch += 1;
        }
    }};
}

/// V[xi][t][c] = (B^T d B)[xi] for the 4x4 input window d of every tile t of `tiles`, every
/// channel, with B^T = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1].
fn transform_input(simd: Simd, x: &[f32], tiling: &Tiling, tiles: std::ops::Range<usize>, v: &mut [f32]) {
    let c = tiling.channels;
    let slab = tiles.len() * c;
    let wide = simd == Simd::Avx512;
    with_simd!(simd, {
        for (t, tile) in tiles.enumerate() {
            let window = tiling.window(tile);
            channel_blocks!(wide, c, |ch| input_channels(x, &window, ch, v, slab, t * c + ch));
        }
    })
}

/// `transform_input` for W channels from `ch`, written to v[xi * slab + at ..][..W]. Plain
/// loops over fixed-size arrays: they become vector instructions, where iterator adaptors
/// stayed calls.
#[inline(always)]
#[allow(clippy::needless_range_loop)]
fn input_channels<const W: usize>(
    x: &[f32],
    window: &[Option<usize>; 16],
    ch: usize,
    v: &mut [f32],
    slab: usize,
    at: usize,
) {
    let mut d = [[0.0f32; W]; 16];
    for k in 0..16 {
        if let Some(o) = window[k] {
            d[k].copy_from_slice(&x[o + ch..][..W]);
        }
    }
    // B^T d: row combinations.
    let mut bd = [[[0.0f32; W]; 4]; 4];
    for s in 0..4 {
        for i in 0..W {
            bd[0][s][i] = d[s][i] - d[8 + s][i];
            bd[1][s][i] = d[4 + s][i] + d[8 + s][i];
            bd[2][s][i] = d[8 + s][i] - d[4 + s][i];
            bd[3][s][i] = d[4 + s][i] - d[12 + s][i];
        }
    }
    // (B^T d) B: column combinations of each row.
    for (r, row) in bd.iter().enumerate() {
        let mut values = [[0.0f32; W]; 4];
        for i in 0..W {
            values[0][i] = row[0][i] - row[2][i];
            values[1][i] = row[1][i] + row[2][i];
            values[2][i] = row[2][i] - row[1][i];
            values[3][i] = row[1][i] - row[3][i];
        }
        for (s, value) in values.iter().enumerate() {
            v[(r * 4 + s) * slab + at..][..W].copy_from_slice(value);
        }
    }
}

/// The 2x2 outputs A^T M A of every tile of `tiles` (M[xi][t][o]), A^T = [1 1 1 0; 0 1 -1 -1],
/// written to `out` ([N, h, w, cout]) where they fall inside the image.
fn transform_output(
    simd: Simd,
    m: &[f32],
    tiling: &Tiling,
    tiles: std::ops::Range<usize>,
    cout: usize,
    out: &mut [MaybeUninit<f32>],
) {
    let slab = tiles.len() * cout;
    let wide = simd == Simd::Avx512;
    with_simd!(simd, {
        for (t, tile) in tiles.enumerate() {
            let outputs = tiling.outputs(tile, cout);
            channel_blocks!(wide, cout, |o| output_channels(m, slab, t * cout + o, &outputs, o, out));
        }
    })
}

/// `transform_output` for W channels from `o` (read at m[xi * slab + at ..][..W]); plain
/// loops, as in `input_channels`.
#[inline(always)]
#[allow(clippy::needless_range_loop)]
fn output_channels<const W: usize>(
    m: &[f32],
    slab: usize,
    at: usize,
    outputs: &[Option<usize>; 4],
    o: usize,
    out: &mut [MaybeUninit<f32>],
) {
    let mut e = [[0.0f32; W]; 16];
    for xi in 0..16 {
        e[xi].copy_from_slice(&m[xi * slab + at..][..W]);
    }
    // A^T M: two rows; then (A^T M) A: two columns of each.
    let (mut a0, mut a1) = ([[0.0f32; W]; 4], [[0.0f32; W]; 4]);
    for s in 0..4 {
        for i in 0..W {
            a0[s][i] = e[s][i] + e[4 + s][i] + e[8 + s][i];
            a1[s][i] = e[4 + s][i] - e[8 + s][i] - e[12 + s][i];
        }
    }
    let mut y = [[0.0f32; W]; 4];
    for i in 0..W {
        y[0][i] = a0[0][i] + a0[1][i] + a0[2][i];
        y[1][i] = a0[1][i] - a0[2][i] - a0[3][i];
        y[2][i] = a1[0][i] + a1[1][i] + a1[2][i];
        y[3][i] = a1[1][i] - a1[2][i] - a1[3][i];
    }
    for (at, values) in outputs.iter().zip(&y) {
        if let Some(at) = at {
            for (dst, value) in out[at + o..][..W].iter_mut().zip(values) {
                dst.write(*value);
            }
        }
    }
}

/// dM[xi][t][o] = (A dY A^T)[xi] for the 2x2 output gradient dY of every tile t of `tiles`
/// (zero where it falls outside the image), A^T = [1 1 1 0; 0 1 -1 -1]: the transpose of the
/// output transform.
fn transform_gradient(
    simd: Simd,
    dy: &[f32],
    tiling: &Tiling,
    tiles: std::ops::Range<usize>,
    cout: usize,
    m: &mut [f32],
) {
    let slab = tiles.len() * cout;
    let wide = simd == Simd::Avx512;
    with_simd!(simd, {
        for (t, tile) in tiles.enumerate() {
            let outputs = tiling.outputs(tile, cout);
            channel_blocks!(wide, cout, |o| gradient_channels(dy, &outputs, o, m, slab, t * cout + o));
        }
    })
}

/// `transform_gradient` for W channels from `o`, written to m[xi * slab + at ..][..W].
#[inline(always)]
#[allow(clippy::needless_range_loop)]
fn gradient_channels<const W: usize>(
    dy: &[f32],
    outputs: &[Option<usize>; 4],
    o: usize,
    m: &mut [f32],
    slab: usize,
    at: usize,
) {
    let mut y = [[0.0f32; W]; 4];
    for k in 0..4 {
        if let Some(p) = outputs[k] {
            y[k].copy_from_slice(&dy[p + o..][..W]);
        }
    }
    // A dY: four rows from the two (y[0], y[1] and y[2], y[3]); then (A dY) A^T: four columns
    // of each row from its two.
    let mut ay = [[[0.0f32; W]; 2]; 4];
    for b in 0..2 {
        for i in 0..W {
            ay[0][b][i] = y[b][i];
            ay[1][b][i] = y[b][i] + y[2 + b][i];
            ay[2][b][i] = y[b][i] - y[2 + b][i];
            ay[3][b][i] = -y[2 + b][i];
        }
    }
    for (r, row) in ay.iter().enumerate() {
        let mut values = [[0.0f32; W]; 4];
        for i in 0..W {
            values[0][i] = row[0][i];
            values[1][i] = row[0][i] + row[1][i];
            values[2][i] = row[0][i] - row[1][i];
            values[3][i] = -row[1][i];
        }
        for (s, value) in values.iter().enumerate() {
            m[(r * 4 + s) * slab + at..][..W].copy_from_slice(value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::conv::{Conv2dParams, reference};
    use crate::ops::conv_direct::backward_data_geometry;
    use crate::ops::gradcheck::random_tensor;

    #[test]
    fn every_direction_matches_the_f64_reference() {
        let p = |groups| Conv2dParams { stride: 1, padding: 1, groups };
        let shapes = [
            ([2, 5, 7, 3], [4, 3, 3, 3], p(1)),
            ([1, 8, 8, 16], [16, 16, 3, 3], p(1)),
            ([3, 7, 5, 160], [160, 16, 3, 3], p(10)),
            ([2, 4, 4, 64], [96, 64, 3, 3], p(1)),
            ([1, 3, 3, 20], [30, 2, 3, 3], p(10)),
            ([5, 32, 32, 20], [20, 2, 3, 3], p(10)),
            ([2, 6, 6, 320], [320, 32, 3, 3], p(10)),
            // Several blocks of tiles per chunk, the last one partial; 12 channels per group
            // take both the 8-wide and the one-channel transforms.
            ([1, 37, 41, 24], [36, 12, 3, 3], p(2)),
            ([2, 4, 4, 1024], [1024, 512, 3, 3], p(2)),
            // 25 and 27 channels: the 16-, 8- and one-channel transforms in one tile.
            ([2, 9, 7, 25], [27, 25, 3, 3], p(1)),
        ];
        for simd in crate::ops::conv_direct::available() {
            for (n, (xs, ws, p)) in shapes.into_iter().enumerate() {
                let g = ConvGeometry::new(&xs, &ws, p).unwrap();
                let (x, w) = (random_tensor(&xs, n as u64), random_tensor(&ws, 40 + n as u64));
                let dy = random_tensor(&g.output_shape(), 80 + n as u64);
                let (x, w, dy) = (x.as_slice(), w.as_slice(), dy.as_slice());
                let y = forward_with(simd, x, &WinogradWeights::forward(w, &g), &g);
                let dx = forward_with(
                    simd,
                    dy,
                    &WinogradWeights::backward_data(w, &g),
                    &backward_data_geometry(&g),
                );
                let dw = backward_weight_with(simd, x, dy, &g);
                for (what, ours, exact) in [
                    ("forward", y, reference::forward(x, w, &g)),
                    ("input gradient", dx, reference::input_gradient(dy, w, &g)),
                    ("weight gradient", dw, reference::weight_gradient(x, dy, &g)),
                ] {
                    let scale = exact.iter().fold(1.0f64, |m, v| m.max(v.abs()));
                    for (i, (a, b)) in ours.iter().zip(&exact).enumerate() {
                        assert!(
                            (*a as f64 - b).abs() < 5e-6 * scale,
                            "{simd:?} case {n} {what}[{i}]: {a} vs {b}"
                        );
                    }
                }
            }
        }
    }
}
