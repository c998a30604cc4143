//! Winograd convolution F(m x m, 3x3) on the CPU (Lavin & Gray, 2016) for 3x3 convolutions at
//! stride 1 with padding 1, in two sizes (`Tile`): F(2x2, 3x3) computes each 2x2 block of
//! outputs from a 4x4 input window with 16 multiplications per (input, output) channel pair
//! instead of 36, F(4x4, 3x3) each 4x4 block from a 6x6 window with 36 instead of 144. Per chunk
//! of images:
//!
//! 1. input transform: V[xi][tile][c] = (B^T d B)[xi] of every input window d (additions and
//!    small multiples only), read straight from the unpadded images (the windows' parts outside
//!    are zeros);
//! 2. one GEMM per point xi of the window: M[xi][tile][o] = sum_c V[xi][tile][c] U[xi][c][o],
//!    with the weights transformed once per call, U = G g G^T, by the direct convolution's
//!    microkernel;
//! 3. output transform: the outputs A^T M A of every tile, straight into the output.
//!
//! All three run per block of tiles (all groups at once) small enough that V and M stay in the
//! L2 cache: the transforms are a few operations per value, so a layout that sent V and M
//! through memory made Winograd lose to the direct kernels on narrow layers.
//!
//! Backward data at stride 1 is a forward convolution (`conv_direct::backward_data_geometry`),
//! so it runs here too. The weight gradient transforms the inputs as above and the output
//! gradients by A dY A^T, reduces their products over tiles and returns G^T dU G. All
//! arithmetic is f32. F(2x2)'s constants are 0, +-1 and 1/2, so its result differs from direct
//! summation by rounding only; F(4x4)'s reach 8 (A) and 1/24 (G), so its rounding error is
//! larger, by about an order of magnitude (both tested against f64 with stated bounds).

use std::cell::RefCell;
use std::mem::MaybeUninit;

use rayon::prelude::*;

use super::conv::ConvGeometry;
use super::conv_direct::{
    LANES, MAX_ROWS, PackedWeights, Simd, add_residual, balanced_tiles, forward_tile, simd, weight_tile,
};
use crate::parallel;

/// Which Winograd transform: F(2x2, 3x3) or F(4x4, 3x3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tile {
    F2,
    F4,
}

/// The largest input window's side (F(4x4)'s), its points, and the largest block of outputs.
const MAX_SIDE: usize = 6;
const MAX_POINTS: usize = MAX_SIDE * MAX_SIDE;
const MAX_OUTPUTS: usize = 4;

impl Tile {
    /// The side of the block of outputs one tile computes.
    pub const fn outputs(self) -> usize {
        match self {
            Tile::F2 => 2,
            Tile::F4 => 4,
        }
    }

    /// The side of a tile's input window and of the transformed weights.
    const fn side(self) -> usize {
        self.outputs() + 2
    }

    /// The points of the window: one GEMM each.
    const fn points(self) -> usize {
        self.side() * self.side()
    }
}

/// Whether this convolution is one the transform computes: 3x3, stride 1, padding 1.
pub fn applies(g: &ConvGeometry) -> bool {
    g.kernel == 3 && g.stride == 1 && g.padding == 1
}

/// G k for one column (or row) k of a 3x3 kernel: F(2x2)'s G = [1 0 0; .5 .5 .5; .5 -.5 .5;
/// 0 0 1], F(4x4)'s [1/4 0 0; -1/6 -1/6 -1/6; -1/6 1/6 -1/6; 1/24 1/12 1/6; 1/24 -1/12 1/6;
/// 0 0 1].
fn weight_1d(tile: Tile, [a, b, c]: [f32; 3]) -> [f32; MAX_SIDE] {
    match tile {
        Tile::F2 => [a, 0.5 * (a + b + c), 0.5 * (a - b + c), c, 0.0, 0.0],
        Tile::F4 => [
            a / 4.0,
            -(a + b + c) / 6.0,
            -(a - b + c) / 6.0,
            (a + 2.0 * b + 4.0 * c) / 24.0,
            (a - 2.0 * b + 4.0 * c) / 24.0,
            c,
        ],
    }
}

/// A 1-D transform (`weight_1d`, `weight_gradient_1d`) of 16 columns at once, lane j of each
/// value holding column j's: a loop over the lanes that becomes vector instructions.
#[inline(always)]
fn by_lanes<const I: usize, const O: usize>(
    transform: impl Fn([f32; I]) -> [f32; O],
    x: [[f32; LANES]; I],
) -> [[f32; LANES]; O] {
    let mut y = [[0.0f32; LANES]; O];
    for j in 0..LANES {
        for (r, value) in transform(std::array::from_fn(|i| x[i][j])).into_iter().enumerate() {
            y[r][j] = value;
        }
    }
    y
}

/// G^T u for one column (or row) u of a transformed weight gradient: the transpose of
/// `weight_1d`.
fn weight_gradient_1d(tile: Tile, u: [f32; MAX_SIDE]) -> [f32; 3] {
    match tile {
        Tile::F2 => [u[0] + 0.5 * (u[1] + u[2]), 0.5 * (u[1] - u[2]), 0.5 * (u[1] + u[2]) + u[3]],
        Tile::F4 => {
            let (sum, difference) = (u[1] + u[2], u[2] - u[1]);
            let (far_sum, far_difference) = (u[3] + u[4], u[3] - u[4]);
            [
                u[0] / 4.0 - sum / 6.0 + far_sum / 24.0,
                difference / 6.0 + far_difference / 12.0,
                (far_sum - sum) / 6.0 + u[5],
            ]
        }
    }
}

/// The transformed weights U[xi] = (G g G^T)[xi], packed for the microkernel with xi in place
/// of the tap: each panel holds U[xi][c][16 outputs] for every point xi of the window.
pub struct WinogradWeights {
    packed: PackedWeights,
    tile: Tile,
}

impl WinogradWeights {
    /// `weight(group, out, tap, in)`: 3x3 weights of `outs` x `ins` channels per group.
    fn transform(
        tile: Tile,
        groups: usize,
        outs: usize,
        ins: usize,
        weight: impl Fn(usize, usize, usize, usize) -> f32 + Sync,
    ) -> Self {
        let side = tile.side();
        let mut packed = PackedWeights::zeroed(groups, outs, ins, tile.points());
        packed.fill_panels(|grp, panel, block| {
            let width = LANES.min(outs.saturating_sub(panel * LANES));
            // One input channel at a time, the panel's 16 outputs side by side (lane j holds
            // output j): the 36 transformed values of every lane are then written as whole
            // 16-float rows (a value at a time, 36 rows 32 KB apart, thrashed the cache).
            for i in 0..ins {
                let mut k = [[0.0f32; LANES]; 9];
                for j in 0..width {
                    for (tap, lanes) in k.iter_mut().enumerate() {
                        lanes[j] = weight(grp, panel * LANES + j, tap, i);
                    }
                }
                // G k: the transform of the kernel's three columns; then (G k) G^T: of each of
                // its rows.
                let columns: [[[f32; LANES]; MAX_SIDE]; 3] =
                    std::array::from_fn(|s| by_lanes(|v| weight_1d(tile, v), [k[s], k[3 + s], k[6 + s]]));
                let mut u = [[0.0f32; LANES]; MAX_POINTS];
                for r in 0..side {
                    let row = by_lanes(|v| weight_1d(tile, v), [columns[0][r], columns[1][r], columns[2][r]]);
                    u[r * side..][..side].copy_from_slice(&row[..side]);
                }
                for (xi, lanes) in u.iter().enumerate().take(side * side) {
                    block[(xi * ins + i) * LANES..][..LANES].copy_from_slice(lanes);
                }
            }
        });
        WinogradWeights { packed, tile }
    }

    /// For the forward pass: OIHW weights.
    pub fn forward(w: &[f32], g: &ConvGeometry, tile: Tile) -> Self {
        let (opg, cpg) = (g.out_per_group(), g.in_per_group());
        Self::transform(tile, g.groups, opg, cpg, |grp, o, tap, i| w[((grp * opg + o) * cpg + i) * 9 + tap])
    }

    /// For backward data as a forward convolution (see `conv_direct::backward_data_geometry`):
    /// outputs are the original inputs, taps flipped.
    pub fn backward_data(w: &[f32], g: &ConvGeometry, tile: Tile) -> Self {
        let (opg, cpg) = (g.out_per_group(), g.in_per_group());
        Self::transform(tile, g.groups, cpg, opg, |grp, c, tap, o| {
            w[((grp * opg + o) * cpg + c) * 9 + (8 - tap)]
        })
    }
}

thread_local! {
    // Per-thread V and M of one block and its tiles' places, reused between blocks and calls.
    static BUFFERS: RefCell<([Vec<f32>; 2], Vec<Place>)> =
        const { RefCell::new(([Vec::new(), Vec::new()], Vec::new())) };
}

fn sized(v: &mut Vec<f32>, len: usize) -> &mut [f32] {
    if v.len() < len {
        v.resize(len, 0.0);
    }
    &mut v[..len]
}

/// y = conv(x, w) + residual (nothing added without one) for a 3x3, stride-1, padding-1
/// geometry (`applies`), with `w`'s transform. The residual is added chunk by chunk while the
/// chunk's outputs are still in the cache.
pub fn forward(x: &[f32], residual: Option<&[f32]>, w: &WinogradWeights, g: &ConvGeometry) -> Vec<f32> {
    forward_with(simd(), x, residual, w, g)
}

/// Where the tiles lie: images of `height` x `width` pixels of `channels` (NHWC), cut into
/// `tiles_y` x `tiles_x` tiles of `tile.outputs()` x `tile.outputs()` outputs each.
#[derive(Clone, Copy)]
struct Tiling {
    tile: Tile,
    height: usize,
    width: usize,
    tiles_y: usize,
    tiles_x: usize,
}

/// Where one tile reads and writes, as pixel indices within its chunk: its input window's
/// positions (at r * side + s) and its outputs (at i * m + j), None outside the image (the
/// window's zero padding) and past the tile's size. Found once per block of tiles and used by
/// every group's transforms.
#[derive(Clone, Copy)]
struct Place {
    window: [Option<u32>; MAX_POINTS],
    outputs: [Option<u32>; MAX_OUTPUTS * MAX_OUTPUTS],
}

impl Tiling {
    /// The tiles of `g`'s input images, and how many images a chunk (one unit of parallel work)
    /// holds: at least 64 tiles, and at least four chunks per batch.
    fn of(g: &ConvGeometry, tile: Tile) -> (Tiling, usize) {
        let m = tile.outputs();
        let (tiles_y, tiles_x) = (g.height.div_ceil(m), g.width.div_ceil(m));
        let tiling = Tiling { tile, height: g.height, width: g.width, tiles_y, tiles_x };
        let per_chunk = 64usize.div_ceil(tiles_y * tiles_x).min((g.batch / 4).max(1));
        // Pixel indices within a chunk fit a `Place`'s u32 (a chunk holds 64 tiles' images or
        // fewer, so only a single image of 4 billion pixels could fail this).
        assert!(per_chunk * g.height * g.width <= u32::MAX as usize, "image too large for Winograd: {g:?}");
        (tiling, per_chunk)
    }

    /// Tiles per block, for a group of `channels` input and output channels together: the
    /// group's V and M of a block stay in the L2 cache as far as they can, and a block is tall
    /// enough that every panel of weights is used on several microkernel tiles (`least`).
    fn block(&self, channels: usize, least: usize) -> usize {
        (65536 / (self.tile.points() * channels)).clamp(least, 256)
    }

    /// Image, tile row and tile column of tile `t` of a chunk.
    fn locate(&self, t: usize) -> (usize, usize, usize) {
        let per_image = self.tiles_y * self.tiles_x;
        (t / per_image, t % per_image / self.tiles_x, t % self.tiles_x)
    }

    /// Where tile `t` of a chunk reads and writes; its input window starts one pixel up and left
    /// of its outputs.
    fn place(&self, t: usize) -> Place {
        let (img, ty, tx) = self.locate(t);
        let (m, side) = (self.tile.outputs(), self.tile.side());
        let pixel = |y: usize, x: usize| {
            (y < self.height && x < self.width).then(|| ((img * self.height + y) * self.width + x) as u32)
        };
        Place {
            window: std::array::from_fn(|k| {
                let (r, s) = (k / side, k % side);
                if r >= side {
                    return None;
                }
                pixel((m * ty + r).checked_sub(1)?, (m * tx + s).checked_sub(1)?)
            }),
            outputs: std::array::from_fn(|k| {
                let (i, j) = (k / m, k % m);
                if i >= m { None } else { pixel(m * ty + i, m * tx + j) }
            }),
        }
    }

    /// The places of tiles `tiles` of a chunk, into `places`.
    fn places(&self, tiles: std::ops::Range<usize>, places: &mut Vec<Place>) {
        places.clear();
        places.extend(tiles.map(|t| self.place(t)));
    }
}

fn forward_with(
    simd: Simd,
    x: &[f32],
    residual: Option<&[f32]>,
    w: &WinogradWeights,
    g: &ConvGeometry,
) -> Vec<f32> {
    assert!(applies(g));
    let (c, cout) = (g.in_channels, g.out_channels);
    let (h, wd) = (g.height, g.width);
    let (tiling, per_chunk) = Tiling::of(g, w.tile);
    let tiles_per_image = tiling.tiles_y * tiling.tiles_x;
    let (cpg, opg) = (g.in_per_group(), g.out_per_group());
    let slice = slices(g).next().map_or(1, |s| s.len());
    let (block, points) = (tiling.block(slice * (cpg + opg), 24), w.tile.points());
    let image_out = h * wd * cout;
    let len = g.batch * image_out;
    assert!(residual.is_none_or(|r| r.len() == len), "a residual of another shape than the output");
    // Every output is written exactly once: each pixel belongs to one tile, and every group's
    // channels are computed for it.
    let mut out: Vec<f32> = Vec::with_capacity(len);
    out.spare_capacity_mut()[..len].par_chunks_mut(per_chunk * image_out).enumerate().for_each(
        |(chunk, out)| {
            let count = out.len() / image_out;
            let x = &x[chunk * per_chunk * h * wd * c..][..count * h * wd * c];
            let tiles = count * tiles_per_image;
            BUFFERS.with(|buffers| {
                let ([v, m], places) = &mut *buffers.borrow_mut();
                let (v, m) = (sized(v, points * block * slice * cpg), sized(m, points * block * slice * opg));
                // Blocks of equal size (64 tiles are 22, 21 and 21, not 24, 24 and 16), whose
                // microkernel tiles are then all about as tall.
                for (first, n) in balanced_tiles(tiles, block) {
                    let (v, m) = (&mut v[..points * n * slice * cpg], &mut m[..points * n * slice * opg]);
                    tiling.places(first..first + n, places);
                    for groups in slices(g) {
                        let (ins, outs) =
                            (groups.start * cpg..groups.end * cpg, groups.start * opg..groups.end * opg);
                        transform_input(simd, w.tile, x, places, c, ins, v);
                        multiply(simd, v, w, g, groups, n, m);
                        transform_output(simd, w.tile, m, places, cout, outs, out);
                    }
                }
            });
            if let Some(residual) = residual {
                add_residual(out, &residual[chunk * per_chunk * image_out..]);
            }
        },
    );
    // SAFETY: all `len` elements were initialised above.
    unsafe { out.set_len(len) };
    out
}

/// The slices of groups whose transforms and GEMMs run together, one pass over a block each:
/// as many groups as make 128 input and output channels, so that a slice's V, M and weights
/// stay in the L2 cache (on MoCSE's 16x16 layers, 10-20% faster than all groups at once with
/// F(4x4); `cargo bench --bench cpu_conv`).
fn slices(g: &ConvGeometry) -> impl Iterator<Item = std::ops::Range<usize>> {
    let slice = (128 / (g.in_per_group() + g.out_per_group())).clamp(1, g.groups);
    let groups = g.groups;
    (0..groups).step_by(slice).map(move |s| s..(s + slice).min(groups))
}

/// The GEMMs of one block of `n` tiles for the slice `groups`, one per point xi and group:
/// M[xi][t][o] = sum over the group's c of V[xi][t][c] U[xi][c][o] (V and M hold the slice's
/// channels only),
/// `simd.forward_rows()` tiles x 16 output channels at a time.
fn multiply(
    simd: Simd,
    v: &[f32],
    w: &WinogradWeights,
    g: &ConvGeometry,
    groups: std::ops::Range<usize>,
    n: usize,
    m: &mut [f32],
) {
    let (cpg, opg) = (g.in_per_group(), g.out_per_group());
    let (ins, outs) = (groups.len() * cpg, groups.len() * opg);
    // M is written as if uninitialised: the tiles store into it without reading it.
    // SAFETY: f32 and MaybeUninit<f32> have the same layout, and only f32 values are written.
    let m = unsafe { &mut *(m as *mut [f32] as *mut [MaybeUninit<f32>]) };
    let tile_rows = simd.forward_rows();
    for xi in 0..w.tile.points() {
        for (k, grp) in groups.clone().enumerate() {
            for panel in 0..opg.div_ceil(LANES) {
                let width = LANES.min(opg - panel * LANES);
                let panel_weights = &w.packed.panel(grp, panel)[xi * cpg * LANES..];
                // Tiles of equal height: a short last one (4 rows of 12) would run at a third of
                // the microkernel's speed.
                for (t0, count) in balanced_tiles(n, tile_rows) {
                    let rows: [usize; MAX_ROWS] = std::array::from_fn(|r| (t0 + r) * ins);
                    let rows = &rows[..count];
                    let out = &mut m[(xi * n + t0) * outs + k * opg + panel * LANES..];
                    let at = xi * n * ins + k * cpg;
                    forward_tile(simd, v, rows, at, &[0], cpg, panel_weights, out, outs, width);
                }
            }
        }
    }
}

/// dL/dw (OIHW) of a 3x3, stride-1, padding-1 convolution (`applies`): with V the transformed
/// inputs as in the forward pass and dM[xi] = A dY A^T the transformed output gradients of
/// every tile, dU[xi][o][c] = sum over tiles of dM[xi][t][o] V[xi][t][c], and dw = G^T dU G.
/// Chunks of images are reduced in fixed parts summed in order (deterministic).
pub fn backward_weight(x: &[f32], dy: &[f32], g: &ConvGeometry, tile: Tile) -> Vec<f32> {
    backward_weight_with(simd(), x, dy, g, tile)
}

fn backward_weight_with(simd: Simd, x: &[f32], dy: &[f32], g: &ConvGeometry, tile: Tile) -> Vec<f32> {
    assert!(applies(g));
    let (c, cout, cpg, opg) = (g.in_channels, g.out_channels, g.in_per_group(), g.out_per_group());
    let (h, wd) = (g.height, g.width);
    let (tiling, per_chunk) = Tiling::of(g, tile);
    let tiles_per_image = tiling.tiles_y * tiling.tiles_x;
    // Blocks as in the forward pass, but at least 32 tiles: each microkernel tile reduces over
    // the block's tiles before it is added to dU.
    let slice = slices(g).next().map_or(1, |s| s.len());
    let (block, points) = (tiling.block(slice * (cpg + opg), 32), tile.points());
    let chunks = g.batch.div_ceil(per_chunk);
    // Adds the products of `chunks` for the slices of groups `slice_set` into `du`, which holds
    // the output channels of the groups from `first_group` on.
    let add_chunks = |chunks: std::ops::Range<usize>,
                      slice_set: &[std::ops::Range<usize>],
                      du: &mut [f32],
                      first_group: usize| {
        BUFFERS.with(|buffers| {
            let ([v, m], places) = &mut *buffers.borrow_mut();
            let (v, m) = (sized(v, points * block * slice * cpg), sized(m, points * block * slice * opg));
            for chunk in chunks {
                let first = chunk * per_chunk;
                let count = per_chunk.min(g.batch - first);
                let x = &x[first * h * wd * c..][..count * h * wd * c];
                let dy = &dy[first * h * wd * cout..][..count * h * wd * cout];
                let tiles = count * tiles_per_image;
                for first in (0..tiles).step_by(block) {
                    let n = block.min(tiles - first);
                    tiling.places(first..first + n, places);
                    for groups in slice_set {
                        let v = &mut v[..points * n * groups.len() * cpg];
                        let m = &mut m[..points * n * groups.len() * opg];
                        let (ins, outs) =
                            (groups.start * cpg..groups.end * cpg, groups.start * opg..groups.end * opg);
                        transform_input(simd, tile, x, places, c, ins, v);
                        transform_gradient(simd, tile, dy, places, cout, outs, m);
                        accumulate(simd, v, m, g, groups.clone(), n, points, du, first_group);
                    }
                }
            }
        })
    };
    let slice_list: Vec<_> = slices(g).collect();
    if slice_list.len() >= 8 {
        // Many slices of groups (MoCSE's 8x8 and 4x4 stages: 10): they run in parallel, each
        // over every chunk into its own rows of dU, so there are no partial dU per part to clear
        // and add up (16 or 36 points x 1280 x 128 or 640 x 64 values each, which left the
        // caches): 1.07-1.2x. With fewer slices (5 on MoCSE's 16x16 stage) the parts balance
        // the two cores better (1.1x the other way).
        let per_slice: Vec<Vec<f32>> = slice_list
            .par_iter()
            .map(|groups| {
                let mut du = vec![0.0f32; points * groups.len() * opg * cpg];
                add_chunks(0..chunks, std::slice::from_ref(groups), &mut du, groups.start);
                du
            })
            .collect();
        // dU[xi][o][c] from each slice's own rows.
        let mut du = vec![0.0f32; points * cout * cpg];
        for (groups, local) in slice_list.iter().zip(&per_slice) {
            let rows = groups.len() * opg * cpg;
            for xi in 0..points {
                du[(xi * cout + groups.start * opg) * cpg..][..rows]
                    .copy_from_slice(&local[xi * rows..][..rows]);
            }
        }
        return weight_gradient(&du, g, tile);
    }
    let parts = parallel::map_parts(chunks, |chunks| {
        let mut du = vec![0.0f32; points * cout * cpg];
        add_chunks(chunks, &slice_list, &mut du, 0);
        du
    });
    weight_gradient(&parallel::sum_in_order(parts), g, tile)
}

/// dU[xi][o][c] += sum over the block's `n` tiles of dM[xi][t][o] V[xi][t][c] for the slice
/// `groups` (V and dM hold its channels only), per point and group, by the direct weight-gradient
/// microkernel (`simd.weight_rows()` output x 16 input channels at a time). `du` holds the output
/// channels of groups from `first_group` on (all of them from 0, or one slice's own rows).
#[allow(clippy::too_many_arguments)]
fn accumulate(
    simd: Simd,
    v: &[f32],
    m: &[f32],
    g: &ConvGeometry,
    groups: std::ops::Range<usize>,
    n: usize,
    points: usize,
    du: &mut [f32],
    first_group: usize,
) {
    let (cpg, opg) = (g.in_per_group(), g.out_per_group());
    let cout = du.len() / (points * cpg);
    let (width, outs_width) = (groups.len() * cpg, groups.len() * opg);
    let starts: Vec<usize> = (0..n).map(|t| t * width).collect();
    let mut tile = [[0.0f32; LANES]; MAX_ROWS];
    for xi in 0..points {
        for (k, grp) in groups.clone().enumerate() {
            for (o0, outs) in balanced_tiles(opg, simd.weight_rows()) {
                for c0 in (0..cpg).step_by(LANES) {
                    let ins = LANES.min(cpg - c0);
                    let (x_at, dy_at) = (xi * n * width + k * cpg + c0, xi * n * outs_width + k * opg + o0);
                    weight_tile(simd, v, &starts, x_at, ins, m, outs_width, dy_at, outs, &mut tile);
                    for (r, row) in tile.iter().enumerate().take(outs) {
                        let dst =
                            &mut du[(xi * cout + (grp - first_group) * opg + o0 + r) * cpg + c0..][..ins];
                        for (d, value) in dst.iter_mut().zip(row) {
                            *d += value;
                        }
                    }
                }
            }
        }
    }
}

/// dw (OIHW) = G^T dU G from dU[xi][o][c].
fn weight_gradient(du: &[f32], g: &ConvGeometry, tile: Tile) -> Vec<f32> {
    let (cout, cpg, side) = (g.out_channels, g.in_per_group(), tile.side());
    let mut dw = vec![0.0f32; cout * cpg * 9];
    dw.par_chunks_mut(cpg * 9).enumerate().for_each(|(o, dw)| {
        // 16 input channels at a time, side by side in the lanes.
        for c0 in (0..cpg).step_by(LANES) {
            let width = LANES.min(cpg - c0);
            let mut u = [[0.0f32; LANES]; MAX_POINTS];
            for (xi, lanes) in u.iter_mut().enumerate().take(side * side) {
                lanes[..width].copy_from_slice(&du[(xi * cout + o) * cpg + c0..][..width]);
            }
            // G^T dU: the transform of every column; then (G^T dU) G: of its three rows.
            let columns: [[[f32; LANES]; 3]; MAX_SIDE] = std::array::from_fn(|s| {
                let column =
                    std::array::from_fn(
                        |r| if r < side && s < side { u[r * side + s] } else { [0.0; LANES] },
                    );
                by_lanes(|v| weight_gradient_1d(tile, v), column)
            });
            for a in 0..3 {
                let row = by_lanes(|v| weight_gradient_1d(tile, v), std::array::from_fn(|s| columns[s][a]));
                for (j, k) in dw[c0 * 9..].chunks_exact_mut(9).take(width).enumerate() {
                    for b in 0..3 {
                        k[a * 3 + b] = row[b][j];
                    }
                }
            }
        }
    });
    dw
}

/// Runs `$body` with AVX-512 or AVX2 enabled when `$simd` says so (so that the arrays of 16
/// and 8 below become vector instructions), else as portable code; all compute the same
/// operations.
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

/// Calls `$f::<M, W>(.., $ch, ..)` over channels [0, $count), with M the tile's output side:
/// 16 channels at a time when `$wide` (one AVX-512 vector), then 8, then one. A macro, not a
/// helper taking a closure: a closure stayed a call out of the AVX2 code and made Winograd
/// 1.8x slower.
macro_rules! channel_blocks {
    ($tile:expr, $wide:expr, $count:expr, |$ch:ident| $f:ident($($arg:expr),*)) => {{
        match $tile {
            Tile::F2 => channel_blocks!(@sizes 2, $wide, $count, |$ch| $f($($arg),*)),
            Tile::F4 => channel_blocks!(@sizes 4, $wide, $count, |$ch| $f($($arg),*)),
        }
    }};
    (@sizes $m:literal, $wide:expr, $count:expr, |$ch:ident| $f:ident($($arg:expr),*)) => {{
        let mut $ch = 0;
        while $wide && $ch + 16 <= $count {
            $f::<$m, 16>($($arg),*);
            $ch += 16;
        }
        while $ch + 8 <= $count {
            $f::<$m, 8>($($arg),*);
            $ch += 8;
        }
        while $ch < $count {
            $f::<$m, 1>($($arg),*);
            $ch += 1;
        }
    }};
}

/// V[xi][t][k] = (B^T d B)[xi] for the input window d of every tile t at `places`, channel
/// `channels.start + k` of x's `stride` channels per pixel.
fn transform_input(
    simd: Simd,
    tile: Tile,
    x: &[f32],
    places: &[Place],
    stride: usize,
    channels: std::ops::Range<usize>,
    v: &mut [f32],
) {
    let (first, c) = (channels.start, channels.len());
    let slab = places.len() * c;
    let wide = simd == Simd::Avx512;
    with_simd!(simd, {
        for (t, place) in places.iter().enumerate() {
            let window = &place.window;
            channel_blocks!(tile, wide, c, |k| input_channels(
                x,
                window,
                stride,
                first + k,
                v,
                slab,
                t * c + k
            ));
        }
    })
}

/// B^T d for W channels of one column (or row) d of an input window of side M + 2: F(2x2)'s
/// B^T = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1], F(4x4)'s [4 0 -5 0 1 0; 0 -4 -4 1 1 0;
/// 0 4 -4 -1 1 0; 0 -2 -1 2 1 0; 0 2 -1 -2 1 0; 0 4 0 -5 0 1]. Plain loops over fixed-size
/// arrays: they become vector instructions, where iterator adaptors stayed calls.
#[inline(always)]
#[allow(clippy::needless_range_loop)]
fn input_1d<const M: usize, const W: usize>(d: &[[f32; W]; MAX_SIDE]) -> [[f32; W]; MAX_SIDE] {
    let mut r = [[0.0f32; W]; MAX_SIDE];
    for i in 0..W {
        if M == 2 {
            r[0][i] = d[0][i] - d[2][i];
            r[1][i] = d[1][i] + d[2][i];
            r[2][i] = d[2][i] - d[1][i];
            r[3][i] = d[1][i] - d[3][i];
        } else {
            let (d0, d1, d2, d3, d4, d5) = (d[0][i], d[1][i], d[2][i], d[3][i], d[4][i], d[5][i]);
            r[0][i] = 4.0 * d0 - 5.0 * d2 + d4;
            r[1][i] = (d3 + d4) - 4.0 * (d1 + d2);
            r[2][i] = (d4 - d3) + 4.0 * (d1 - d2);
            r[3][i] = (d4 - d2) + 2.0 * (d3 - d1);
            r[4][i] = (d4 - d2) - 2.0 * (d3 - d1);
            r[5][i] = 4.0 * d1 - 5.0 * d3 + d5;
        }
    }
    r
}

/// `transform_input` for W channels from `ch` of a tile of side M, written to
/// v[xi * slab + at ..][..W].
#[inline(always)]
#[allow(clippy::needless_range_loop)]
fn input_channels<const M: usize, const W: usize>(
    x: &[f32],
    window: &[Option<u32>; MAX_POINTS],
    stride: usize,
    ch: usize,
    v: &mut [f32],
    slab: usize,
    at: usize,
) {
    let side = M + 2;
    // The window transposed: d[s][r] is position (r, s), so that each column is one array.
    let mut d = [[[0.0f32; W]; MAX_SIDE]; MAX_SIDE];
    for r in 0..side {
        for s in 0..side {
            if let Some(p) = window[r * side + s] {
                d[s][r].copy_from_slice(&x[p as usize * stride + ch..][..W]);
            }
        }
    }
    // B^T d: the transform of every column, stored by rows.
    let mut bd = [[[0.0f32; W]; MAX_SIDE]; MAX_SIDE];
    for s in 0..side {
        let column = input_1d::<M, W>(&d[s]);
        for r in 0..side {
            bd[r][s] = column[r];
        }
    }
    // (B^T d) B: the transform of every row.
    for r in 0..side {
        let row = input_1d::<M, W>(&bd[r]);
        for s in 0..side {
            v[(r * side + s) * slab + at..][..W].copy_from_slice(&row[s]);
        }
    }
}

/// The outputs A^T M A of every tile at `places` (M[xi][t][k] for output channel
/// `channels.start + k`), written to `out` ([N, h, w, cout]) where they fall inside the image.
#[allow(clippy::too_many_arguments)]
fn transform_output(
    simd: Simd,
    tile: Tile,
    m: &[f32],
    places: &[Place],
    cout: usize,
    channels: std::ops::Range<usize>,
    out: &mut [MaybeUninit<f32>],
) {
    let (first, c) = (channels.start, channels.len());
    let slab = places.len() * c;
    let wide = simd == Simd::Avx512;
    with_simd!(simd, {
        for (t, place) in places.iter().enumerate() {
            let outputs = &place.outputs;
            channel_blocks!(tile, wide, c, |k| output_channels(
                m,
                slab,
                t * c + k,
                outputs,
                cout,
                first + k,
                out
            ));
        }
    })
}

/// A^T m for W channels of one column (or row) m of a transformed tile of side M + 2: F(2x2)'s
/// A^T = [1 1 1 0; 0 1 -1 -1], F(4x4)'s [1 1 1 1 1 0; 0 1 -1 2 -2 0; 0 1 1 4 4 0;
/// 0 1 -1 8 -8 1].
#[inline(always)]
#[allow(clippy::needless_range_loop)]
fn output_1d<const M: usize, const W: usize>(m: &[[f32; W]; MAX_SIDE]) -> [[f32; W]; MAX_OUTPUTS] {
    let mut y = [[0.0f32; W]; MAX_OUTPUTS];
    for i in 0..W {
        if M == 2 {
            y[0][i] = m[0][i] + m[1][i] + m[2][i];
            y[1][i] = m[1][i] - m[2][i] - m[3][i];
        } else {
            let (near_sum, near_difference) = (m[1][i] + m[2][i], m[1][i] - m[2][i]);
            let (far_sum, far_difference) = (m[3][i] + m[4][i], m[3][i] - m[4][i]);
            y[0][i] = m[0][i] + near_sum + far_sum;
            y[1][i] = near_difference + 2.0 * far_difference;
            y[2][i] = near_sum + 4.0 * far_sum;
            y[3][i] = near_difference + 8.0 * far_difference + m[5][i];
        }
    }
    y
}

/// `transform_output` for W channels from `o` (read at m[xi * slab + at ..][..W]) of a tile of
/// side M.
#[inline(always)]
#[allow(clippy::needless_range_loop)]
fn output_channels<const M: usize, const W: usize>(
    m: &[f32],
    slab: usize,
    at: usize,
    outputs: &[Option<u32>; MAX_OUTPUTS * MAX_OUTPUTS],
    stride: usize,
    o: usize,
    out: &mut [MaybeUninit<f32>],
) {
    let side = M + 2;
    // Transposed as in `input_channels`: e[s][r] is point (r, s).
    let mut e = [[[0.0f32; W]; MAX_SIDE]; MAX_SIDE];
    for r in 0..side {
        for s in 0..side {
            e[s][r].copy_from_slice(&m[(r * side + s) * slab + at..][..W]);
        }
    }
    // A^T M: the transform of every column, stored by rows; then (A^T M) A: of every row.
    let mut am = [[[0.0f32; W]; MAX_SIDE]; MAX_OUTPUTS];
    for s in 0..side {
        let column = output_1d::<M, W>(&e[s]);
        for i in 0..M {
            am[i][s] = column[i];
        }
    }
    for i in 0..M {
        let row = output_1d::<M, W>(&am[i]);
        for j in 0..M {
            if let Some(p) = outputs[i * M + j] {
                for (dst, value) in out[p as usize * stride + o..][..W].iter_mut().zip(&row[j]) {
                    dst.write(*value);
                }
            }
        }
    }
}

/// dM[xi][t][k] = (A dY A^T)[xi] for the output gradient dY (of `cout` channels) of every
/// tile t at `places` (zero where it falls outside the image), channel `channels.start + k`:
/// the transpose of the output transform.
fn transform_gradient(
    simd: Simd,
    tile: Tile,
    dy: &[f32],
    places: &[Place],
    cout: usize,
    channels: std::ops::Range<usize>,
    m: &mut [f32],
) {
    let (first, c) = (channels.start, channels.len());
    let slab = places.len() * c;
    let wide = simd == Simd::Avx512;
    with_simd!(simd, {
        for (t, place) in places.iter().enumerate() {
            let outputs = &place.outputs;
            channel_blocks!(tile, wide, c, |k| gradient_channels(
                dy,
                outputs,
                cout,
                first + k,
                m,
                slab,
                t * c + k
            ));
        }
    })
}

/// A y for W channels of one column (or row) y of a tile's output gradient, of side M: the
/// transpose of `output_1d`.
#[inline(always)]
#[allow(clippy::needless_range_loop)]
fn gradient_1d<const M: usize, const W: usize>(y: &[[f32; W]; MAX_OUTPUTS]) -> [[f32; W]; MAX_SIDE] {
    let mut m = [[0.0f32; W]; MAX_SIDE];
    for i in 0..W {
        if M == 2 {
            m[0][i] = y[0][i];
            m[1][i] = y[0][i] + y[1][i];
            m[2][i] = y[0][i] - y[1][i];
            m[3][i] = -y[1][i];
        } else {
            let (even, odd) = (y[0][i] + y[2][i], y[1][i] + y[3][i]);
            let (even_far, odd_far) = (y[0][i] + 4.0 * y[2][i], 2.0 * y[1][i] + 8.0 * y[3][i]);
            m[0][i] = y[0][i];
            m[1][i] = even + odd;
            m[2][i] = even - odd;
            m[3][i] = even_far + odd_far;
            m[4][i] = even_far - odd_far;
            m[5][i] = y[3][i];
        }
    }
    m
}

/// `transform_gradient` for W channels from `o` of a tile of side M, written to
/// m[xi * slab + at ..][..W].
#[inline(always)]
#[allow(clippy::needless_range_loop)]
fn gradient_channels<const M: usize, const W: usize>(
    dy: &[f32],
    outputs: &[Option<u32>; MAX_OUTPUTS * MAX_OUTPUTS],
    stride: usize,
    o: usize,
    m: &mut [f32],
    slab: usize,
    at: usize,
) {
    let side = M + 2;
    // Transposed: y[j][i] is output (i, j).
    let mut y = [[[0.0f32; W]; MAX_OUTPUTS]; MAX_OUTPUTS];
    for i in 0..M {
        for j in 0..M {
            if let Some(p) = outputs[i * M + j] {
                y[j][i].copy_from_slice(&dy[p as usize * stride + o..][..W]);
            }
        }
    }
    // A dY: the transform of every column, stored by rows; then (A dY) A^T: of every row.
    let mut ay = [[[0.0f32; W]; MAX_OUTPUTS]; MAX_SIDE];
    for j in 0..M {
        let column = gradient_1d::<M, W>(&y[j]);
        for r in 0..side {
            ay[r][j] = column[r];
        }
    }
    for r in 0..side {
        let row = gradient_1d::<M, W>(&ay[r]);
        for s in 0..side {
            m[(r * side + s) * slab + at..][..W].copy_from_slice(&row[s]);
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
            // Ten slices of one group each: weight gradients by slices (`backward_weight_with`).
            ([3, 5, 5, 400], [400, 40, 3, 3], p(10)),
            // Several blocks of tiles per chunk, the last one partial; 12 channels per group
            // take both the 8-wide and the one-channel transforms.
            ([1, 37, 41, 24], [36, 12, 3, 3], p(2)),
            ([2, 4, 4, 1024], [1024, 512, 3, 3], p(2)),
            // 25 and 27 channels: the 16-, 8- and one-channel transforms in one tile.
            ([2, 9, 7, 25], [27, 25, 3, 3], p(1)),
        ];
        // Error bounds relative to the largest exact value, measured with margin: F(4x4)'s
        // transforms multiply by up to 8 and divide by up to 24, so its rounding is larger.
        for (tile, bound) in [(Tile::F2, 5e-6), (Tile::F4, 5e-5)] {
            let mut worst = [0.0f64; 3];
            for simd in crate::ops::conv_direct::available() {
                for (n, (xs, ws, p)) in shapes.into_iter().enumerate() {
                    let g = ConvGeometry::new(&xs, &ws, p).unwrap();
                    let (x, w) = (random_tensor(&xs, n as u64), random_tensor(&ws, 40 + n as u64));
                    let dy = random_tensor(&g.output_shape(), 80 + n as u64);
                    let (x, w, dy) = (x.as_slice(), w.as_slice(), dy.as_slice());
                    let y = forward_with(simd, x, None, &WinogradWeights::forward(w, &g, tile), &g);
                    let dx = forward_with(
                        simd,
                        dy,
                        None,
                        &WinogradWeights::backward_data(w, &g, tile),
                        &backward_data_geometry(&g),
                    );
                    let dw = backward_weight_with(simd, x, dy, &g, tile);
                    for (k, (what, ours, exact)) in [
                        ("forward", y, reference::forward(x, w, &g)),
                        ("input gradient", dx, reference::input_gradient(dy, w, &g)),
                        ("weight gradient", dw, reference::weight_gradient(x, dy, &g)),
                    ]
                    .into_iter()
                    .enumerate()
                    {
                        let scale = exact.iter().fold(1.0f64, |m, v| m.max(v.abs()));
                        for (i, (a, b)) in ours.iter().zip(&exact).enumerate() {
                            let error = (*a as f64 - b).abs() / scale;
                            worst[k] = worst[k].max(error);
                            assert!(error < bound, "{tile:?} {simd:?} case {n} {what}[{i}]: {a} vs {b}");
                        }
                    }
                }
            }
            eprintln!("{tile:?}: worst relative errors (forward, input gradient, weight gradient) {worst:?}");
        }
    }
}
