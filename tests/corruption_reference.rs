//! The 19 corruptions against the reference generator's outputs on 48 real photographs
//! (tests/data/cifar10c_reference.npz, made by make_cifar_c.py; see tests/data/README.md): the
//! deterministic ones value for value, the random ones by their statistics. Every device present runs the same
//! checks (emu always, cuda when there is a GPU). Each test prints its agreement table; run with
//! `--nocapture` to see it.

mod common;

use std::path::PathBuf;

use mocse::corrupt::{Corruption, SEVERITIES, StreamKey, corrupt, upload_images};
use mocse::device::Device;
use mocse::npy::Npz;

fn testdata() -> PathBuf {
    let dir = std::env::var_os("MOCSE_TESTDATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data"));
    let path = dir.join("cifar10c_reference.npz");
    assert!(
        path.exists(),
        "{} not found (set MOCSE_TESTDATA to the directory that holds it)",
        path.display()
    );
    path
}

struct Reference {
    npz: Npz,
    inputs: Vec<u8>,
}

fn reference() -> Reference {
    let mut npz = Npz::open(&testdata()).unwrap();
    let (shape, inputs) = npz.u8_array("inputs").unwrap();
    assert_eq!(&shape[1..], &[32, 32, 3]);
    Reference { npz, inputs }
}

/// Our output as uint8 (checked to be whole numbers in 0..255).
fn run(device: Device, c: Corruption, severity: u8, inputs: &[u8], seed: u64) -> Vec<u8> {
    let x = upload_images(inputs, device).unwrap();
    let y = corrupt(&x, c, severity, StreamKey { seed, first_image: 0 })
        .unwrap_or_else(|e| panic!("{c} severity {severity} on {device}: {e:#}"));
    assert_eq!(y.shape(), x.shape());
    y.to_host()
        .unwrap()
        .into_iter()
        .map(|v| {
            assert!(v.fract() == 0.0 && (0.0..=255.0).contains(&v), "{c} s{severity} on {device}: value {v}");
            v as u8
        })
        .collect()
}

/// mean |out - in|, mean (out - in), std (out - in), fraction of values changed (0..255 scale),
/// the statistics of the reference file.
fn stats(pairs: impl Iterator<Item = (u8, u8)>) -> [f64; 4] {
    let (mut n, mut abs, mut sum, mut sq, mut changed) = (0f64, 0f64, 0f64, 0f64, 0f64);
    for (out, inp) in pairs {
        let d = f64::from(out) - f64::from(inp);
        n += 1.0;
        abs += d.abs();
        sum += d;
        sq += d * d;
        changed += f64::from(u8::from(d != 0.0));
    }
    let mean = sum / n;
    [abs / n, mean, (sq / n - mean * mean).max(0.0).sqrt(), changed / n]
}

/// Severity must change the damage (mean |out - in|) the way it does in the reference: where
/// the reference's damage grows (or shrinks) by more than 5% from one severity to the next,
/// ours must grow (or shrink) too. Most corruptions grow; saturate, elastic and frost do not
/// throughout (CORRUPTIONS.md), and this follows the reference rather than a list.
fn check_severity_order(c: Corruption, device: Device, ours: &[f64], reference: &[f64]) {
    for s in 1..ours.len() {
        let (r0, r1, o0, o1) = (reference[s - 1], reference[s], ours[s - 1], ours[s]);
        let (from, to) = (s, s + 1);
        if r1 > 1.05 * r0 {
            assert!(
                o1 > o0,
                "{c} on {device}: damage should grow from severity {from} to {to} ({r0:.3} -> {r1:.3} in the reference), ours {o0:.3} -> {o1:.3}"
            );
        } else if r1 < r0 / 1.05 {
            assert!(
                o1 < o0,
                "{c} on {device}: damage should shrink from severity {from} to {to} ({r0:.3} -> {r1:.3} in the reference), ours {o0:.3} -> {o1:.3}"
            );
        }
    }
}

/// For a deterministic corruption: (fraction of values equal, max |difference|) per severity.
fn check_deterministic(c: Corruption, max_diff_allowed: u8, min_equal: f64) {
    let mut r = reference();
    for device in common::kernel_devices() {
        println!("{c} on {device}: severity | values equal | max |diff| | mean |diff|");
        let (mut damage, mut reference_damage) = (Vec::new(), Vec::new());
        for s in SEVERITIES {
            let (_, expected) = r.npz.u8_array(&format!("{}_s{s}", c.name())).unwrap();
            let ours = run(device, c, s, &r.inputs, 0);
            damage.push(stats(ours.iter().copied().zip(r.inputs.iter().copied()))[0]);
            reference_damage.push(stats(expected.iter().copied().zip(r.inputs.iter().copied()))[0]);
            let equal = ours.iter().zip(&expected).filter(|(a, b)| a == b).count() as f64 / ours.len() as f64;
            let max = ours.iter().zip(&expected).map(|(a, b)| a.abs_diff(*b)).max().unwrap();
            let mean = ours.iter().zip(&expected).map(|(a, b)| f64::from(a.abs_diff(*b))).sum::<f64>()
                / ours.len() as f64;
            println!("  {s} | {:.4}% | {max} | {mean:.4}", equal * 100.0);
            assert!(
                equal >= min_equal && max <= max_diff_allowed,
                "{c} severity {s} on {device}: {:.3}% equal (need {:.1}%), max difference {max} (allowed {max_diff_allowed})",
                equal * 100.0,
                min_equal * 100.0
            );
        }
        check_severity_order(c, device, &damage, &reference_damage);
    }
}

/// For a random corruption: the four statistics over 8 seeds within 10% of the reference's
/// (over 8 draws). The signed mean is held to 10% of the mean absolute change: it is a small
/// difference of large terms, whose sampling noise over 48 images exceeds 10% of itself.
fn check_random(c: Corruption) {
    let mut r = reference();
    for device in common::kernel_devices() {
        println!(
            "{c} on {device}: severity | mean|d| ours/ref | mean d ours/ref | std d ours/ref | changed ours/ref"
        );
        let (mut damage, mut reference_damage) = (Vec::new(), Vec::new());
        for s in SEVERITIES {
            let expected: [f64; 4] =
                r.npz.f64_array(&format!("stats_{}_s{s}", c.name())).unwrap().try_into().unwrap();
            let mut outs = Vec::new();
            for seed in 0..8 {
                outs.extend(run(device, c, s, &r.inputs, seed));
            }
            let ours = stats(outs.iter().copied().zip(r.inputs.iter().copied().cycle()));
            damage.push(ours[0]);
            reference_damage.push(expected[0]);
            println!(
                "  {s} | {:.3}/{:.3} | {:.3}/{:.3} | {:.3}/{:.3} | {:.4}/{:.4}",
                ours[0], expected[0], ours[1], expected[1], ours[2], expected[2], ours[3], expected[3]
            );
            for (i, name) in ["mean |d|", "mean d", "std d", "fraction changed"].iter().enumerate() {
                let scale = if i == 1 { expected[0] } else { expected[i].abs() };
                assert!(
                    (ours[i] - expected[i]).abs() <= 0.10 * scale,
                    "{c} severity {s} on {device}: {name} {:.4} vs reference {:.4} (more than 10% off)",
                    ours[i],
                    expected[i]
                );
            }
        }
        check_severity_order(c, device, &damage, &reference_damage);
    }
}

macro_rules! deterministic {
    ($($name:ident: $c:expr, $max:expr, $equal:expr;)*) => {$(
        #[test]
        fn $name() {
            check_deterministic($c, $max, $equal);
        }
    )*};
}

macro_rules! random {
    ($($name:ident: $c:expr;)*) => {$(
        #[test]
        fn $name() {
            check_random($c);
        }
    )*};
}

// The issue asks for >= 99% equal values and at most 1 level apart; all eight reach 100% on
// emu, so the bar is 99.99% (a regression shows at once) with a rare 1-level flip allowed for
// a GPU whose exp or log differs from the host's in the last bit.
deterministic! {
    gaussian_blur: Corruption::GaussianBlur, 1, 0.9999;
    defocus_blur: Corruption::DefocusBlur, 1, 0.9999;
    zoom_blur: Corruption::ZoomBlur, 1, 0.9999;
    brightness: Corruption::Brightness, 1, 0.9999;
    contrast: Corruption::Contrast, 1, 0.9999;
    saturate: Corruption::Saturate, 1, 0.9999;
    pixelate: Corruption::Pixelate, 1, 0.9999;
    jpeg_compression: Corruption::JpegCompression, 1, 0.9999;
}

random! {
    gaussian_noise: Corruption::GaussianNoise;
    shot_noise: Corruption::ShotNoise;
    impulse_noise: Corruption::ImpulseNoise;
    speckle_noise: Corruption::SpeckleNoise;
    glass_blur: Corruption::GlassBlur;
    motion_blur: Corruption::MotionBlur;
    snow: Corruption::Snow;
    frost: Corruption::Frost;
    fog: Corruption::Fog;
    spatter: Corruption::Spatter;
    elastic_transform: Corruption::ElasticTransform;
}
