//! Winograd convolution F(2x2, 3x3) on the CPU (Lavin & Gray, 2016) for 3x3 convolutions at
//! stride 1 with padding 1: each 2x2 block of outputs comes from a 4x4 input tile with 16
//! multiplications per (input, output) channel pair instead of 36. Per chunk of images:
//!
//! 1. input transform: V[xi][tile][c] = (B^T d B)[xi] of every 4x4 tile d (additions only);
//! 2. 16 GEMMs, one per xi (and group): M[xi][tile][o] = sum_c V[xi][tile][c] U[xi][c][o], with
//!    the weights transformed once per call, U = G g G^T, run by the direct convolution's
//!    microkernel as a 1x1 convolution;
//! 3. output transform: the 2x2 outputs A^T M A of every tile.
//!
//! Backward data at stride 1 is a forward convolution (`conv_direct::backward_data_geometry`),
//! so it runs here too. All arithmetic is f32; the transforms' constants are 0, +-1 and 1/2,
//! so the result differs from direct summation by rounding only (tested against f64).

use std::cell::RefCell;

use rayon::prelude::*;

use super::conv::ConvGeometry;
use super::conv_direct::{PackedWeights, Simd, every_tile, pad_images, simd};

/// Whether this convolution is one the transform computes: 3x3, stride 1, padding 1.
pub fn applies(g: &ConvGeometry) -> bool {
    g.kernel == 3 && g.stride == 1 && g.padding == 1
}

/// The transformed weights U[xi] = (G g G^T)[xi], packed for the microkernel: 16 1x1 kernels.
pub struct WinogradWeights {
    per_xi: Vec<PackedWeights>,
}

impl WinogradWeights {
    /// `weight(group, out, tap, in)`: 3x3 weights of `outs` x `ins` channels per group.
    fn transform(
        groups: usize,
        outs: usize,
        ins: usize,
        weight: impl Fn(usize, usize, usize, usize) -> f32,
    ) -> Self {
        // u[xi] for every (group, out, in): G g G^T with G = [1 0 0; .5 .5 .5; .5 -.5 .5; 0 0 1].
        let mut u = vec![[0.0f32; 16]; groups * outs * ins];
        for grp in 0..groups {
            for o in 0..outs {
                for i in 0..ins {
                    let k = |r: usize, s: usize| weight(grp, o, r * 3 + s, i);
                    // G g: row combinations of the kernel's columns.
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
                    let dst = &mut u[(grp * outs + o) * ins + i];
                    for r in 0..4 {
                        let [a, b, c] = gg[r];
                        dst[r * 4] = a;
                        dst[r * 4 + 1] = 0.5 * (a + b + c);
                        dst[r * 4 + 2] = 0.5 * (a - b + c);
                        dst[r * 4 + 3] = c;
                    }
                }
            }
        }
        let per_xi = (0..16)
            .map(|xi| {
                PackedWeights::pack(groups, outs, ins, 1, |grp, o, _, i| u[(grp * outs + o) * ins + i][xi])
            })
            .collect();
        WinogradWeights { per_xi }
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
    // Per-thread buffers reused between chunks and calls: the padded images, V and M.
    static BUFFERS: RefCell<[Vec<f32>; 3]> = const { RefCell::new([Vec::new(), Vec::new(), Vec::new()]) };
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

fn forward_with(simd: Simd, x: &[f32], w: &WinogradWeights, g: &ConvGeometry) -> Vec<f32> {
    assert!(applies(g));
    let (c, cout, opg, cpg) = (g.in_channels, g.out_channels, g.out_per_group(), g.in_per_group());
    let (h, wd) = (g.height, g.width);
    let (th, tw) = (h.div_ceil(2), wd.div_ceil(2));
    // Padded so that every 4x4 tile lies inside: one zero row/column before, the rest after.
    let (hp, wp) = (2 * th + 2, 2 * tw + 2);
    let tiles_per_image = th * tw;
    let per_chunk = 64usize.div_ceil(tiles_per_image).min((g.batch / 4).max(1));
    let image_out = h * wd * cout;
    let mut out = vec![0.0f32; g.batch * image_out];
    out.par_chunks_mut(per_chunk * image_out).enumerate().for_each(|(chunk, out)| {
        let first = chunk * per_chunk;
        let count = out.len() / image_out;
        let tiles = count * tiles_per_image;
        BUFFERS.with(|buffers| {
            let [padded, v, m] = &mut *buffers.borrow_mut();
            let padded = sized(padded, count * hp * wp * c);
            pad_images(&x[first * h * wd * c..][..count * h * wd * c], h, wd, c, 1, hp, wp, padded);
            let v = sized(v, 16 * tiles * c);
            input_transform(padded, v, count, th, tw, hp, wp, c);
            let m = sized(m, 16 * tiles * cout);
            for xi in 0..16 {
                // Row t of this xi's GEMM is V[t][xi]; its result goes to M[t][xi].
                let starts: Vec<usize> = (0..tiles).map(|t| (t * 16 + xi) * c).collect();
                every_tile(simd, v, &starts, &[0], &w.per_xi[xi], g.groups, cpg, opg, |t, col0, values| {
                    m[(t * 16 + xi) * cout + col0..][..values.len()].copy_from_slice(values)
                });
            }
            output_transform(m, out, count, th, tw, h, wd, cout);
        });
    });
    out
}

/// V[tile][xi][c] = (B^T d B)[xi] for every 4x4 tile d of the padded images, with
/// B^T = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1]. Loops run over channels, so they vectorise.
#[allow(clippy::too_many_arguments)]
fn input_transform(
    padded: &[f32],
    v: &mut [f32],
    count: usize,
    th: usize,
    tw: usize,
    hp: usize,
    wp: usize,
    c: usize,
) {
    let mut tiles = v.chunks_exact_mut(16 * c);
    for i in 0..count {
        for ty in 0..th {
            for tx in 0..tw {
                let tile = tiles.next().expect("one V block per tile");
                let d: [[&[f32]; 4]; 4] = std::array::from_fn(|r| {
                    std::array::from_fn(|s| &padded[((i * hp + 2 * ty + r) * wp + 2 * tx + s) * c..][..c])
                });
                let mut out: Vec<&mut [f32]> = tile.chunks_exact_mut(c).collect();
                for ch in 0..c {
                    let e = |r: usize, s: usize| d[r][s][ch];
                    // B^T d: row combinations.
                    let bd: [[f32; 4]; 4] = [
                        std::array::from_fn(|s| e(0, s) - e(2, s)),
                        std::array::from_fn(|s| e(1, s) + e(2, s)),
                        std::array::from_fn(|s| e(2, s) - e(1, s)),
                        std::array::from_fn(|s| e(1, s) - e(3, s)),
                    ];
                    for (r, row) in bd.iter().enumerate() {
                        out[r * 4][ch] = row[0] - row[2];
                        out[r * 4 + 1][ch] = row[1] + row[2];
                        out[r * 4 + 2][ch] = row[2] - row[1];
                        out[r * 4 + 3][ch] = row[1] - row[3];
                    }
                }
            }
        }
    }
}

/// The 2x2 outputs A^T M A of every tile (M[tile][xi][o]), A^T = [1 1 1 0; 0 1 -1 -1], cropped
/// to the image.
#[allow(clippy::too_many_arguments)]
fn output_transform(
    m: &[f32],
    out: &mut [f32],
    count: usize,
    th: usize,
    tw: usize,
    h: usize,
    wd: usize,
    cout: usize,
) {
    let mut tiles = m.chunks_exact(16 * cout);
    let mut ys = vec![0.0f32; 4 * cout];
    for i in 0..count {
        for ty in 0..th {
            for tx in 0..tw {
                let tile = tiles.next().expect("one M block per tile");
                let e: [&[f32]; 16] = std::array::from_fn(|xi| &tile[xi * cout..][..cout]);
                let [y00, y01, y10, y11]: [&mut [f32]; 4] = {
                    let mut parts = ys.chunks_exact_mut(cout);
                    std::array::from_fn(|_| parts.next().expect("four output rows"))
                };
                for o in 0..cout {
                    let m = |r: usize, s: usize| e[r * 4 + s][o];
                    // A^T M: two rows; then (A^T M) A: two columns of each.
                    let a0: [f32; 4] = std::array::from_fn(|s| m(0, s) + m(1, s) + m(2, s));
                    let a1: [f32; 4] = std::array::from_fn(|s| m(1, s) - m(2, s) - m(3, s));
                    y00[o] = a0[0] + a0[1] + a0[2];
                    y01[o] = a0[1] - a0[2] - a0[3];
                    y10[o] = a1[0] + a1[1] + a1[2];
                    y11[o] = a1[1] - a1[2] - a1[3];
                }
                for (k, y) in ys.chunks_exact(cout).enumerate() {
                    let (oy, ox) = (2 * ty + k / 2, 2 * tx + k % 2);
                    if oy < h && ox < wd {
                        out[((i * h + oy) * wd + ox) * cout..][..cout].copy_from_slice(y);
                    }
                }
            }
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
    fn forward_and_input_gradient_match_the_f64_reference() {
        let p = |groups| Conv2dParams { stride: 1, padding: 1, groups };
        let shapes = [
            ([2, 5, 7, 3], [4, 3, 3, 3], p(1)),
            ([1, 8, 8, 16], [16, 16, 3, 3], p(1)),
            ([3, 7, 5, 160], [160, 16, 3, 3], p(10)),
            ([2, 4, 4, 64], [96, 64, 3, 3], p(1)),
            ([1, 3, 3, 20], [30, 2, 3, 3], p(10)),
            ([5, 32, 32, 20], [20, 2, 3, 3], p(10)),
            ([2, 6, 6, 320], [320, 32, 3, 3], p(10)),
        ];
        let kernels =
            if simd() == Simd::Avx2 { vec![Simd::Portable, Simd::Avx2] } else { vec![Simd::Portable] };
        for simd in kernels {
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
                for (what, ours, exact) in [
                    ("forward", y, reference::forward(x, w, &g)),
                    ("input gradient", dx, reference::input_gradient(dy, w, &g)),
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
