//! Properties every corruption must have, on every device present (emu always, cuda with a
//! GPU): whole numbers in 0..255 even on extreme images, the same output for the same seed, a
//! different one for another seed (random corruptions), independence of how the images are
//! split into batches and of the block size, and agreement of cuda with emu.

mod common;

use mocse::corrupt::{Corruption, SEVERITIES, StreamKey, corrupt, with_emu_threads_per_image};
use mocse::device::Device;
use mocse::rng::{Philox, Purpose};
use mocse::tensor::Tensor;

const N: usize = 6;

/// Black, white, a mid grey, a colour ramp and two noise images.
fn images() -> Tensor {
    let mut rng = Philox::new(42, Purpose::Synthetic, 1);
    let mut data = Vec::with_capacity(N * 3072);
    for i in 0..N {
        for p in 0..3072 {
            let (y, x, c) = (p / 96, (p / 3) % 32, p % 3);
            data.push(match i {
                0 => 0.0,
                1 => 255.0,
                2 => 128.0,
                3 => ((x * 8 + y * 3 + c * 40) % 256) as f32,
                _ => rng.below(256) as f32,
            });
        }
    }
    Tensor::from_vec(&[N, 32, 32, 3], data)
}

fn run(x: &Tensor, c: Corruption, s: u8, seed: u64, first_image: u64) -> Vec<f32> {
    corrupt(x, c, s, StreamKey { seed, first_image })
        .unwrap_or_else(|e| panic!("{c} s{s} on {}: {e:#}", x.device()))
        .to_host()
        .unwrap()
}

fn check(c: Corruption) {
    let host = images();
    let mut outputs = Vec::new();
    for device in common::kernel_devices() {
        let x = host.to_device(device).unwrap();
        for s in SEVERITIES {
            let a = run(&x, c, s, 7, 100);
            assert!(
                a.iter().all(|v| v.fract() == 0.0 && (0.0..=255.0).contains(v)),
                "{c} s{s} on {device}: a value outside the whole numbers 0..255"
            );
            assert_eq!(a, run(&x, c, s, 7, 100), "{c} s{s} on {device}: same seed, different output");
            if c.is_random() {
                assert_ne!(a, run(&x, c, s, 8, 100), "{c} s{s} on {device}: another seed, same output");
            }
            // Images 0..2 and 2..N as two batches, keyed by their global indices.
            let halves: Vec<f32> = [(0, 2), (2, N)]
                .iter()
                .flat_map(|&(from, to)| {
                    let part = host.as_slice()[from * 3072..to * 3072].to_vec();
                    let part = Tensor::from_vec(&[to - from, 32, 32, 3], part).to_device(device).unwrap();
                    run(&part, c, s, 7, 100 + from as u64)
                })
                .collect();
            assert_eq!(a, halves, "{c} s{s} on {device}: the output depends on the batch split");
            if device == Device::Emu {
                // The GPU's block size (256 threads per image) and an odd one give the same output.
                for threads in [96, 256] {
                    let b = with_emu_threads_per_image(threads, || run(&x, c, s, 7, 100));
                    assert_eq!(a, b, "{c} s{s}: {threads} threads per image differ from 32");
                }
            }
            outputs.push((device, s, a));
        }
    }
    // cuda against emu: exact where the arithmetic allows; a rare 1-level flip of the uint8
    // truncation where a transcendental function differs in its last bit.
    for (device, s, out) in outputs.iter().filter(|(d, _, _)| *d == Device::Cuda) {
        let emu = &outputs.iter().find(|(d, t, _)| *d == Device::Emu && t == s).unwrap().2;
        let differ = out.iter().zip(emu).filter(|(a, b)| a != b).count();
        let max = out.iter().zip(emu).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        assert!(
            differ * 1000 <= out.len() && max <= 1.0,
            "{c} s{s}: {device} differs from emu in {differ} values (max {max})"
        );
    }
    // The cpu device runs the same kernels through the emulator.
    let cpu = run(&host, c, 3, 7, 100);
    assert_eq!(
        cpu,
        outputs.iter().find(|(d, s, _)| *d == Device::Emu && *s == 3).unwrap().2,
        "{c}: cpu differs from emu"
    );
}

macro_rules! corruption_tests {
    ($($name:ident: $c:expr;)*) => {$(
        #[test]
        fn $name() {
            check($c);
        }
    )*};
}

corruption_tests! {
    gaussian_noise: Corruption::GaussianNoise;
    shot_noise: Corruption::ShotNoise;
    impulse_noise: Corruption::ImpulseNoise;
    speckle_noise: Corruption::SpeckleNoise;
    defocus_blur: Corruption::DefocusBlur;
    glass_blur: Corruption::GlassBlur;
    motion_blur: Corruption::MotionBlur;
    zoom_blur: Corruption::ZoomBlur;
    gaussian_blur: Corruption::GaussianBlur;
    snow: Corruption::Snow;
    frost: Corruption::Frost;
    fog: Corruption::Fog;
    spatter: Corruption::Spatter;
    brightness: Corruption::Brightness;
    contrast: Corruption::Contrast;
    elastic_transform: Corruption::ElasticTransform;
    pixelate: Corruption::Pixelate;
    jpeg_compression: Corruption::JpegCompression;
    saturate: Corruption::Saturate;
}

#[test]
fn bad_shapes_and_severities_are_errors() {
    let x = Tensor::zeros(&[2, 32, 32, 1]);
    let e = corrupt(&x, Corruption::Fog, 1, StreamKey { seed: 0, first_image: 0 }).unwrap_err();
    assert!(format!("{e}").contains("(n, 32, 32, 3)"));
    let x = Tensor::zeros(&[2, 32, 32, 3]);
    let e = corrupt(&x, Corruption::Fog, 6, StreamKey { seed: 0, first_image: 0 }).unwrap_err();
    assert!(format!("{e}").contains("severities are 1 to 5"));
}
