//! The built-in synthetic data set: 10 classes of shapes and textures.
//!
//! Every image is a pure function of `(seed, split, index)` through its own
//! Philox stream, so any subset can be generated in parallel and a subset is
//! always a prefix of the full set. The nuisances (colours, contrast, scale,
//! position, orientation jitter, background gradients, distractors, noise) are
//! there so a small CNN has to learn shape rather than colour, and cannot
//! reach 100% after a single epoch.

use std::f32::consts::{FRAC_PI_2, FRAC_PI_4, PI, TAU};

use rayon::prelude::*;

use super::{CHANNELS, IMAGE_LEN, IMAGE_SIZE, NUM_CLASSES, Split};
use crate::rng::{Philox, Purpose};

pub const SYNTHETIC_CLASSES: [&str; 10] = [
    "disc",
    "square",
    "triangle",
    "cross",
    "ring",
    "horizontal stripes",
    "vertical stripes",
    "checkerboard",
    "diagonal stripes",
    "dots",
];

pub const SYNTHETIC_TRAIN_LEN: usize = 50_000;
pub const SYNTHETIC_TEST_LEN: usize = 10_000;

/// Set in the stream index of test images so train and test never share one.
const TEST_INDEX_BIT: u64 = 1 << 63;
const MAX_DOTS: usize = 10;
const SIZE: f32 = IMAGE_SIZE as f32;

pub(crate) fn split_len(split: Split) -> usize {
    match split {
        Split::Train => SYNTHETIC_TRAIN_LEN,
        Split::Test => SYNTHETIC_TEST_LEN,
    }
}

/// The first `n` images of a split, NHWC `u8`, and their labels.
pub(crate) fn generate(seed: u64, split: Split, n: usize) -> (Vec<u8>, Vec<u8>) {
    let mut images = vec![0u8; n * IMAGE_LEN];
    let labels = images
        .par_chunks_mut(IMAGE_LEN)
        .enumerate()
        .map(|(i, out)| render(seed, split, i as u64, out))
        .collect();
    (images, labels)
}

type Rgb = [f32; 3];

/// Renders image `index` of `split` into `out` (NHWC, `IMAGE_LEN` bytes) and
/// returns its label.
pub(crate) fn render(seed: u64, split: Split, index: u64, out: &mut [u8]) -> u8 {
    assert_eq!(out.len(), IMAGE_LEN, "image buffer must hold IMAGE_LEN bytes");
    let stream = match split {
        Split::Train => index,
        Split::Test => index | TEST_INDEX_BIT,
    };
    let mut rng = Philox::new(seed, Purpose::Synthetic, stream);
    let label = rng.below(NUM_CLASSES as u32) as u8;

    let bg = random_colour(&mut rng);
    let low_contrast = rng.bernoulli(0.2);
    let fg = contrasting_colour(&mut rng, bg, if low_contrast { 0.08 } else { 0.35 });
    let mut pixels = background(&mut rng, bg);

    let pattern = Pattern::random(&mut rng, label);
    // Textures sometimes fill only a disc, so "striped blob" and "disc" share
    // an outline and the texture itself must be recognised.
    let window = (pattern.is_texture() && rng.bernoulli(0.25)).then(|| Pattern::Disc {
        frame: Frame::new(SIZE / 2.0 + rng.range(-5.0, 5.0), SIZE / 2.0 + rng.range(-5.0, 5.0), 0.0),
        r: rng.range(9.0, 15.0),
    });
    paint(&mut pixels, &pattern, window.as_ref(), fg);

    if rng.bernoulli(0.5) {
        let colour = random_colour(&mut rng);
        let distractor = Pattern::distractor(&mut rng);
        paint(&mut pixels, &distractor, None, colour);
    }

    let sigma = rng.range(0.02, 0.15);
    for (px, bytes) in pixels.iter().zip(out.chunks_exact_mut(CHANNELS)) {
        for (&v, byte) in px.iter().zip(bytes.iter_mut()) {
            let noisy = v + sigma * approx_normal(&mut rng);
            *byte = (noisy * 255.0 + 0.5).clamp(0.0, 255.0) as u8;
        }
    }
    label
}

fn random_colour(rng: &mut Philox) -> Rgb {
    [rng.uniform(), rng.uniform(), rng.uniform()]
}

/// A colour at least `min_dist` (Euclidean, RGB in [0, 1]) away from `bg`.
fn contrasting_colour(rng: &mut Philox, bg: Rgb, min_dist: f32) -> Rgb {
    for _ in 0..16 {
        let c = random_colour(rng);
        let dist2: f32 = c.iter().zip(&bg).map(|(a, b)| (a - b) * (a - b)).sum();
        if dist2 >= min_dist * min_dist {
            return c;
        }
    }
    // Shifting every channel by 0.5 is always sqrt(3)/2 away.
    bg.map(|v| if v < 0.5 { v + 0.5 } else { v - 0.5 })
}

/// Flat background, or (sometimes) a linear gradient towards a nearby colour.
fn background(rng: &mut Philox, bg: Rgb) -> Vec<Rgb> {
    if !rng.bernoulli(0.3) {
        return vec![bg; IMAGE_SIZE * IMAGE_SIZE];
    }
    let other = bg.map(|v| (v + rng.range(-0.3, 0.3)).clamp(0.0, 1.0));
    let angle = rng.range(0.0, TAU);
    let (dy, dx) = angle.sin_cos();
    pixel_centres()
        .map(|(x, y)| {
            let t = (0.5 + ((x - SIZE / 2.0) * dx + (y - SIZE / 2.0) * dy) / SIZE).clamp(0.0, 1.0);
            std::array::from_fn(|c| bg[c] + (other[c] - bg[c]) * t)
        })
        .collect()
}

fn pixel_centres() -> impl Iterator<Item = (f32, f32)> {
    (0..IMAGE_SIZE).flat_map(|y| (0..IMAGE_SIZE).map(move |x| (x as f32 + 0.5, y as f32 + 0.5)))
}

/// Blends `colour` in where `pattern` (restricted to `window`, if any) covers.
fn paint(pixels: &mut [Rgb], pattern: &Pattern, window: Option<&Pattern>, colour: Rgb) {
    for (px, (x, y)) in pixels.iter_mut().zip(pixel_centres()) {
        let mut a = pattern.coverage(x, y);
        if let Some(w) = window {
            a *= w.coverage(x, y);
        }
        if a > 0.0 {
            for c in 0..CHANNELS {
                px[c] += (colour[c] - px[c]) * a;
            }
        }
    }
}

/// Approximately standard normal from the four bytes of one word (Irwin–Hall
/// with n = 4): a quarter of the cost of Box–Muller, which matters because
/// every pixel channel gets its own noise.
fn approx_normal(rng: &mut Philox) -> f32 {
    // Standard deviation of the sum of four independent uniform bytes.
    const STD: f32 = 147.801_22;
    let w = rng.next_u32();
    let sum = (w & 0xff) + ((w >> 8) & 0xff) + ((w >> 16) & 0xff) + (w >> 24);
    (sum as f32 - 510.0) / STD
}

/// Antialiased coverage from a signed distance in pixels (negative inside).
fn coverage_from_distance(d: f32) -> f32 {
    (0.5 - d).clamp(0.0, 1.0)
}

/// A point relative to a centre, rotated by `-angle` into the shape's frame.
#[derive(Clone, Copy)]
struct Frame {
    cx: f32,
    cy: f32,
    cos: f32,
    sin: f32,
}

impl Frame {
    fn new(cx: f32, cy: f32, angle: f32) -> Frame {
        let (sin, cos) = angle.sin_cos();
        Frame { cx, cy, cos, sin }
    }

    fn local(&self, x: f32, y: f32) -> (f32, f32) {
        let (dx, dy) = (x - self.cx, y - self.cy);
        (dx * self.cos + dy * self.sin, -dx * self.sin + dy * self.cos)
    }
}

/// Stripes along the frame's local x axis: `(u + phase) mod period`, with the
/// painted half in the middle of each period.
fn stripe_coverage(u: f32, period: f32, phase: f32) -> f32 {
    let t = u / period + phase;
    let f = t - t.floor();
    coverage_from_distance(((f - 0.5).abs() - 0.25) * period)
}

enum Pattern {
    Disc {
        frame: Frame,
        r: f32,
    },
    Square {
        frame: Frame,
        half: f32,
    },
    /// Equilateral; `normals` point at the three edges.
    Triangle {
        frame: Frame,
        normals: [(f32, f32); 3],
        inradius: f32,
    },
    Cross {
        frame: Frame,
        half_len: f32,
        half_width: f32,
    },
    Ring {
        frame: Frame,
        r: f32,
        half_width: f32,
    },
    Stripes {
        frame: Frame,
        period: f32,
        phase: f32,
    },
    Checker {
        frame: Frame,
        period: f32,
        phase: (f32, f32),
    },
    Dots {
        dots: [(f32, f32, f32); MAX_DOTS],
        count: usize,
    },
}

impl Pattern {
    fn random(rng: &mut Philox, label: u8) -> Pattern {
        // Shapes are placed up to 7 px off-centre, so large ones are clipped.
        let shape_frame = |rng: &mut Philox, angle: f32| {
            Frame::new(SIZE / 2.0 + rng.range(-7.0, 7.0), SIZE / 2.0 + rng.range(-7.0, 7.0), angle)
        };
        let jitter = |rng: &mut Philox, max_deg: f32| rng.range(-max_deg, max_deg).to_radians();
        match label {
            0 => Pattern::Disc { frame: shape_frame(rng, 0.0), r: rng.range(3.5, 12.0) },
            1 => {
                let angle = jitter(rng, 20.0);
                Pattern::Square { frame: shape_frame(rng, angle), half: rng.range(3.0, 10.5) }
            }
            2 => {
                let angle = rng.range(0.0, TAU);
                let normals = std::array::from_fn(|i| {
                    let (s, c) = (angle + i as f32 * TAU / 3.0).sin_cos();
                    (c, s)
                });
                Pattern::Triangle { frame: shape_frame(rng, 0.0), normals, inradius: rng.range(2.5, 7.0) }
            }
            3 => {
                // A "+" or an "x".
                let base = if rng.bernoulli(0.5) { 0.0 } else { FRAC_PI_4 };
                let angle = base + jitter(rng, 15.0);
                let half_len = rng.range(6.0, 12.0);
                Pattern::Cross {
                    frame: shape_frame(rng, angle),
                    half_len,
                    half_width: half_len * rng.range(0.18, 0.32),
                }
            }
            4 => {
                let r = rng.range(6.0, 12.0);
                Pattern::Ring {
                    frame: shape_frame(rng, 0.0),
                    r: r * 0.72,
                    half_width: r * rng.range(0.12, 0.25),
                }
            }
            5..=8 => {
                let angle = match label {
                    // The stripe normal points across the stripes.
                    5 => FRAC_PI_2 + jitter(rng, 18.0),
                    6 => jitter(rng, 18.0),
                    7 => jitter(rng, 12.0),
                    _ => {
                        let base = if rng.bernoulli(0.5) { FRAC_PI_4 } else { 3.0 * FRAC_PI_4 };
                        base + jitter(rng, 15.0)
                    }
                };
                // Textures cover the whole image; orientation is the class cue.
                let frame = Frame::new(0.0, 0.0, angle);
                if label == 7 {
                    Pattern::Checker {
                        frame,
                        period: rng.range(6.0, 13.0),
                        phase: (rng.uniform(), rng.uniform()),
                    }
                } else {
                    Pattern::Stripes { frame, period: rng.range(3.5, 8.0), phase: rng.uniform() }
                }
            }
            _ => {
                let count = 5 + rng.below((MAX_DOTS - 4) as u32) as usize;
                let mut dots = [(0.0, 0.0, 0.0); MAX_DOTS];
                for dot in &mut dots[..count] {
                    *dot = (rng.range(2.0, SIZE - 2.0), rng.range(2.0, SIZE - 2.0), rng.range(1.2, 2.6));
                }
                Pattern::Dots { dots, count }
            }
        }
    }

    /// A small disc or square anywhere in the image.
    fn distractor(rng: &mut Philox) -> Pattern {
        let frame = Frame::new(rng.range(2.0, SIZE - 2.0), rng.range(2.0, SIZE - 2.0), rng.range(0.0, PI));
        let size = rng.range(1.5, 4.5);
        if rng.bernoulli(0.5) {
            Pattern::Disc { frame, r: size }
        } else {
            Pattern::Square { frame, half: size }
        }
    }

    fn is_texture(&self) -> bool {
        matches!(self, Pattern::Stripes { .. } | Pattern::Checker { .. })
    }

    fn coverage(&self, x: f32, y: f32) -> f32 {
        match self {
            Pattern::Disc { frame, r } => {
                let (u, v) = frame.local(x, y);
                coverage_from_distance(u.hypot(v) - r)
            }
            Pattern::Square { frame, half } => {
                let (u, v) = frame.local(x, y);
                coverage_from_distance(u.abs().max(v.abs()) - half)
            }
            Pattern::Triangle { frame, normals, inradius } => {
                let (u, v) = frame.local(x, y);
                let d = normals.iter().map(|(nx, ny)| nx * u + ny * v).fold(f32::NEG_INFINITY, f32::max);
                coverage_from_distance(d - inradius)
            }
            Pattern::Cross { frame, half_len, half_width } => {
                let (u, v) = frame.local(x, y);
                let (u, v) = (u.abs(), v.abs());
                let bar_a = (u - half_len).max(v - half_width);
                let bar_b = (u - half_width).max(v - half_len);
                coverage_from_distance(bar_a.min(bar_b))
            }
            Pattern::Ring { frame, r, half_width } => {
                let (u, v) = frame.local(x, y);
                coverage_from_distance((u.hypot(v) - r).abs() - half_width)
            }
            Pattern::Stripes { frame, period, phase } => {
                let (u, _) = frame.local(x, y);
                stripe_coverage(u, *period, *phase)
            }
            Pattern::Checker { frame, period, phase } => {
                let (u, v) = frame.local(x, y);
                let a = stripe_coverage(u, *period, phase.0);
                let b = stripe_coverage(v, *period, phase.1);
                // Exclusive or, softened at the edges.
                a + b - 2.0 * a * b
            }
            Pattern::Dots { dots, count } => {
                let d = dots[..*count]
                    .iter()
                    .map(|&(cx, cy, r)| (x - cx).hypot(y - cy) - r)
                    .fold(f32::INFINITY, f32::min);
                coverage_from_distance(d)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_per_seed() {
        let (a, la) = generate(7, Split::Train, 64);
        let (b, lb) = generate(7, Split::Train, 64);
        assert_eq!(a, b);
        assert_eq!(la, lb);
        let (c, _) = generate(8, Split::Train, 64);
        assert_ne!(a, c);
    }

    #[test]
    fn train_and_test_differ() {
        let (train, _) = generate(7, Split::Train, 16);
        let (test, _) = generate(7, Split::Test, 16);
        assert_ne!(train, test);
    }

    #[test]
    fn subset_is_prefix() {
        let (full, full_labels) = generate(3, Split::Test, 300);
        let (part, part_labels) = generate(3, Split::Test, 100);
        assert_eq!(&full[..100 * IMAGE_LEN], &part[..]);
        assert_eq!(&full_labels[..100], &part_labels[..]);
        let mut one = vec![0u8; IMAGE_LEN];
        let label = render(3, Split::Test, 250, &mut one);
        assert_eq!(label, full_labels[250]);
        assert_eq!(&one[..], &full[250 * IMAGE_LEN..251 * IMAGE_LEN]);
    }

    #[test]
    fn labels_cover_all_classes_roughly_evenly() {
        let (_, labels) = generate(11, Split::Train, 2000);
        let mut counts = [0usize; NUM_CLASSES];
        for &l in &labels {
            assert!(usize::from(l) < NUM_CLASSES);
            counts[usize::from(l)] += 1;
        }
        // Binomial(2000, 0.1) has std ~13.4; 60 is about 4.5 std.
        for (class, &c) in counts.iter().enumerate() {
            assert!((140..=260).contains(&c), "class {class}: {c} images");
        }
    }

    #[test]
    fn images_are_not_flat() {
        let (images, _) = generate(5, Split::Train, 200);
        for (i, img) in images.chunks_exact(IMAGE_LEN).enumerate() {
            let (lo, hi) = img.iter().fold((255u8, 0u8), |(lo, hi), &v| (lo.min(v), hi.max(v)));
            assert!(hi - lo > 20, "image {i} is nearly flat: {lo}..{hi}");
        }
    }

    #[test]
    fn classes_differ_on_average() {
        // Mean coverage per class, rendered without colour or noise, must
        // differ: a guard against a class silently rendering nothing.
        let mut rng = Philox::new(1, Purpose::Synthetic, 0);
        for label in 0..NUM_CLASSES as u8 {
            let mut total = 0.0f32;
            for _ in 0..20 {
                let p = Pattern::random(&mut rng, label);
                total += pixel_centres().map(|(x, y)| p.coverage(x, y)).sum::<f32>();
            }
            let mean = total / (20.0 * (IMAGE_SIZE * IMAGE_SIZE) as f32);
            assert!((0.02..0.98).contains(&mean), "class {label}: mean coverage {mean}");
        }
    }
}
