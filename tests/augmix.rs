//! The AugMix operations against Pillow's outputs on real photographs and two hand-made images
//! (tests/data/augmix_reference.npz, made by scripts/make_augmix_reference.py): every operation,
//! and chains of three, value for value on every device present (emu always, cuda when there is
//! a GPU); the mixing kernel against the same arithmetic on the host; the plans drawn per image.

mod common;

use std::path::PathBuf;

use mocse::data::augmix::{AugmixOp, AugmixPlan, OpPlan, apply_ops, augmix};
use mocse::device::Device;
use mocse::npy::Npz;
use mocse::tensor::Tensor;

const LEN: usize = 32 * 32 * 3;

struct Reference {
    inputs: Vec<u8>,
    n: usize,
    case_ops: Vec<u8>,
    case_params: Vec<f32>,
    outputs: Vec<u8>,
    chain_ops: Vec<u8>,
    chain_params: Vec<f32>,
    chain: Vec<u8>,
}

fn reference() -> Reference {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/augmix_reference.npz");
    let mut npz = Npz::open(&path).unwrap();
    let (shape, inputs) = npz.u8_array("inputs").unwrap();
    Reference {
        n: shape[0],
        inputs,
        case_ops: npz.u8_array("case_ops").unwrap().1,
        case_params: npz.f32_array("case_params").unwrap(),
        outputs: npz.u8_array("outputs").unwrap().1,
        chain_ops: npz.u8_array("chain_ops").unwrap().1,
        chain_params: npz.f32_array("chain_params").unwrap(),
        chain: npz.u8_array("chain").unwrap().1,
    }
}

/// Images of values k/255 on `device`.
fn images(pixels: &[u8], device: Device) -> Tensor {
    let values = pixels.iter().map(|&v| f32::from(v) / 255.0).collect();
    Tensor::from_vec_on(device, &[pixels.len() / LEN, 32, 32, 3], values).unwrap()
}

/// The 0..255 values of images in [0, 1] that hold whole 255ths.
fn levels(t: &Tensor) -> Vec<u8> {
    t.to_host()
        .unwrap()
        .iter()
        .map(|&v| {
            let level = (v * 255.0).round();
            assert!((v * 255.0 - level).abs() < 1e-3, "{v} is not a whole 255th");
            level as u8
        })
        .collect()
}

fn op(id: u8) -> AugmixOp {
    AugmixOp::ALL[usize::from(id)]
}

#[test]
fn every_operation_equals_pillow_value_for_value_on_every_device() {
    let r = reference();
    for device in common::kernel_devices() {
        let x = images(&r.inputs, device);
        for (k, (&id, &param)) in r.case_ops.iter().zip(&r.case_params).enumerate() {
            let plan = OpPlan::new(op(id), f64::from(param)).unwrap();
            let got = levels(&apply_ops(&x, &vec![plan; r.n]).unwrap());
            let want = &r.outputs[k * r.n * LEN..(k + 1) * r.n * LEN];
            let differ = got.iter().zip(want).filter(|(a, b)| a != b).count();
            assert_eq!(
                differ,
                0,
                "{device}: {} {param}: {differ} of {} values differ from Pillow",
                op(id),
                want.len()
            );
        }
    }
}

#[test]
fn chains_of_operations_equal_pillow_and_the_mix_is_augmixs_arithmetic() {
    let r = reference();
    for device in common::kernel_devices() {
        // Chains applied one operation at a time.
        let mut x = images(&r.inputs, device);
        for step in 0..3 {
            let plans: Vec<OpPlan> = (0..r.n)
                .map(|i| {
                    OpPlan::new(op(r.chain_ops[3 * i + step]), f64::from(r.chain_params[3 * i + step]))
                        .unwrap()
                })
                .collect();
            x = apply_ops(&x, &plans).unwrap();
        }
        assert_eq!(levels(&x), r.chain, "{device}: chains differ from Pillow");

        // The mixing kernel: the Pillow chain, autocontrast alone and equalize alone, mixed.
        let (weights, mix) = ([0.2f32, 0.3, 0.5], 0.7f32);
        let plans: Vec<AugmixPlan> = (0..r.n)
            .map(|i| {
                let chain = (0..3)
                    .map(|s| (op(r.chain_ops[3 * i + s]), f64::from(r.chain_params[3 * i + s])))
                    .collect();
                let chains = [chain, vec![(AugmixOp::Autocontrast, 0.0)], vec![(AugmixOp::Equalize, 0.0)]];
                AugmixPlan::new(&chains, weights, mix).unwrap()
            })
            .collect();
        let got = augmix(&images(&r.inputs, device), &plans).unwrap().to_host().unwrap();
        let case = |op: AugmixOp| {
            let k = r.case_ops.iter().position(|&id| AugmixOp::ALL[usize::from(id)] == op).unwrap();
            &r.outputs[k * r.n * LEN..(k + 1) * r.n * LEN]
        };
        let sources = [&r.chain[..], case(AugmixOp::Autocontrast), case(AugmixOp::Equalize)];
        let mut worst = 0.0f32;
        for (i, &g) in got.iter().enumerate() {
            let mixed: f32 = (0..3).map(|c| weights[c] * (f32::from(sources[c][i]) / 255.0)).sum();
            let want = (1.0 - mix) * (f32::from(r.inputs[i]) / 255.0) + mix * mixed;
            worst = worst.max((g - want).abs());
        }
        assert!(worst < 1e-6, "{device}: the mix is {worst} off");
    }
}

#[test]
fn drawn_plans_give_images_in_range_that_depend_on_the_image_and_epoch_only() {
    let r = reference();
    let plans: Vec<AugmixPlan> = (0..r.n as u64).map(|i| AugmixPlan::draw(5, 2, i, 0)).collect();
    for device in common::kernel_devices() {
        let x = images(&r.inputs, device);
        let out = augmix(&x, &plans).unwrap().to_host().unwrap();
        assert!(out.iter().all(|v| (0.0..=1.0).contains(v)), "{device}");
        // The second half alone gives the same images: plans belong to images, not batch slots.
        let half = r.n / 2;
        let tail =
            augmix(&images(&r.inputs[half * LEN..], device), &plans[half..]).unwrap().to_host().unwrap();
        assert_eq!(&out[half * LEN..], &tail[..], "{device}");
        assert_ne!(plans[0], AugmixPlan::draw(5, 3, 0, 0));
        // The identity plan leaves images exactly as they are.
        let same = augmix(&x, &vec![AugmixPlan::identity(); r.n]).unwrap();
        assert_eq!(same.to_host().unwrap(), x.to_host().unwrap(), "{device}");
        assert_ne!(out, x.to_host().unwrap());
    }
}

#[test]
fn training_with_augmix_is_recorded_reproducible_and_not_the_standard_recipe() {
    let dir = tempfile::tempdir().unwrap();
    let run = |name: &str, augment: &str| {
        let out = dir.path().join(name);
        let r = common::tiny_run(out.to_str().unwrap(), "1", &["--augment", augment]);
        assert!(r.ok, "{}", r.stderr);
        let log = mocse::train::read_log(&out).unwrap();
        (mocse::train::read_config(&out).unwrap().augment, log[0].train_loss)
    };
    let (augment, loss) = run("a", "augmix");
    assert_eq!(augment, "augmix");
    assert_eq!(run("b", "augmix").1, loss, "the same seed gives the same AugMix run");
    assert_ne!(run("c", "standard").1, loss);
    let r = common::tiny_run(dir.path().join("d").to_str().unwrap(), "1", &["--augment", "autoaugment"]);
    common::assert_clean_failure(&r, "expected \"none\", \"standard\" or \"augmix\"");

    // AugMix's consistency loss: recorded, reproducible, and part of the loss.
    let out = dir.path().join("jsd");
    let jsd_run = || {
        let _ = std::fs::remove_dir_all(&out);
        let r = common::tiny_run(out.to_str().unwrap(), "1", &["--augment", "augmix", "--jsd", "12"]);
        assert!(r.ok, "{}", r.stderr);
        mocse::train::read_log(&out).unwrap()[0].train_loss
    };
    let with_jsd = jsd_run();
    assert_eq!(mocse::train::read_config(&out).unwrap().jsd, Some(12.0));
    assert_eq!(jsd_run(), with_jsd);
    assert!(with_jsd > loss, "the consistency term adds to the loss: {with_jsd} vs {loss}");
    let bad = |extra: &[&str], message: &str| {
        let r = common::tiny_run(dir.path().join("bad").to_str().unwrap(), "1", extra);
        common::assert_clean_failure(&r, message);
    };
    bad(&["--jsd", "12"], "give --augment augmix");
    bad(&["--augment", "augmix", "--jsd", "-1"], "--jsd must be a number >= 0");
    bad(&["--augment", "augmix", "--jsd", "12", "--adv", "pgd"], "--jsd applies to standard training");
}

#[test]
fn no_test_corruption_is_an_augmix_operation() {
    let names: Vec<&str> = AugmixOp::ALL.iter().map(|op| op.name()).collect();
    assert_eq!(
        names,
        [
            "autocontrast",
            "equalize",
            "posterize",
            "solarize",
            "rotate",
            "shear_x",
            "shear_y",
            "translate_x",
            "translate_y"
        ]
    );
    // AugMix's "all ops" add these four, which are test corruptions or close to them.
    for left_out in ["brightness", "contrast", "color", "sharpness"] {
        assert!(!names.contains(&left_out));
    }
    for c in mocse::corrupt::Corruption::ALL {
        assert!(!names.contains(&c.name()), "{c}");
    }
}
