//! PGD adversarial training: the run records its attack, logs robust test accuracy every
//! epoch, keeps the most robust model in best/, refuses attack flags on --resume, reads configs
//! written before adversarial training existed, and ends up more robust than standard training
//! of the same network.

mod common;

use std::fs;

use common::{assert_clean_failure, mocse};
use mocse::train::{EpochLog, TrainingMode, read_config, read_log};

/// Trains a preact18 of width 4 on 1,000 synthetic images for 2 epochs into `out`.
fn train(out: &str, extra: &[&str]) {
    #[rustfmt::skip]
    let mut args = vec![
        "train", "--model", "preact18", "--width", "4", "--train-subset", "1000", "--test-subset", "200",
        "--batch-size", "50", "--epochs", "2", "--lr", "0.05", "--augment", "none", "--device", "cpu",
        "--out", out,
    ];
    args.extend_from_slice(extra);
    let r = mocse(&args);
    assert!(r.ok, "{}", r.stderr);
}

fn robust_accuracy(args: &[&str]) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("r.json");
    let mut all = args.to_vec();
    #[rustfmt::skip]
    all.extend_from_slice(&[
        "--test-subset", "200", "--device", "cpu", "--attack", "pgd", "--eps", "8/255", "--steps", "10",
        "--json", json.to_str().unwrap(),
    ]);
    let r = mocse(&all);
    assert!(r.ok, "{}", r.stderr);
    let report: serde_json::Value = serde_json::from_slice(&fs::read(&json).unwrap()).unwrap();
    report["adversarial"]["robust_accuracy"].as_f64().unwrap()
}

#[test]
fn pgd_training_logs_robustness_keeps_the_best_model_and_beats_standard_training_under_attack() {
    let dir = tempfile::tempdir().unwrap();
    let p = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    train(&p("standard"), &[]);
    #[rustfmt::skip]
    train(&p("pgd"), &["--adv", "pgd", "--eps", "8/255", "--alpha", "2/255", "--steps", "5", "--adv-eval-subset", "100"]);

    let config = read_config(dir.path().join("pgd").as_path()).unwrap();
    let TrainingMode::Pgd(adv) = config.mode else { panic!("{:?}", config.mode) };
    assert_eq!((adv.steps, adv.eval_subset, adv.bn.to_string()), (5, 100, "train".to_string()));
    assert!(read_config(dir.path().join("standard").as_path()).unwrap().mode.is_standard());
    let log: Vec<EpochLog> = read_log(dir.path().join("pgd").as_path()).unwrap();
    assert!(log.iter().all(|e| e.robust_test_accuracy.is_some()), "{log:?}");
    assert!(
        read_log(dir.path().join("standard").as_path())
            .unwrap()
            .iter()
            .all(|e| e.robust_test_accuracy.is_none())
    );
    let best = dir.path().join("pgd/best/model.safetensors");
    assert!(best.exists() && dir.path().join("pgd/best/config.json").exists());
    let r =
        mocse(&["eval", "--checkpoint", best.to_str().unwrap(), "--test-subset", "20", "--device", "cpu"]);
    assert!(r.ok, "{}", r.stderr);

    train(&p("fgsm"), &["--adv", "fgsm-rs", "--eps", "8/255", "--adv-eval-subset", "100"]);
    let config = read_config(dir.path().join("fgsm").as_path()).unwrap();
    let TrainingMode::FgsmRs(fast) = config.mode else { panic!("{:?}", config.mode) };
    assert_eq!((fast.steps, fast.alpha), (1, 1.25 * fast.eps));

    let standard = robust_accuracy(&["eval", "--run", &p("standard")]);
    let adversarial = robust_accuracy(&["eval", "--run", &p("pgd")]);
    let fgsm = robust_accuracy(&["eval", "--run", &p("fgsm")]);
    println!(
        "PGD-10 at 8/255 on 200 test images: standard {standard:.3}, PGD-trained {adversarial:.3}, FGSM-RS-trained {fgsm:.3}"
    );
    assert!(
        adversarial > standard,
        "PGD training did not make the model more robust: {adversarial} vs {standard}"
    );
    assert!(fgsm > standard, "FGSM-RS training did not make the model more robust: {fgsm} vs {standard}");

    // The run's attack is its own: --resume takes it from config.json.
    let r = mocse(&["train", "--out", &p("pgd"), "--resume", "--eps", "4/255", "--device", "cpu"]);
    assert_clean_failure(&r, "--resume");
    let r = mocse(&["train", "--out", &p("pgd"), "--resume", "--adv", "pgd", "--device", "cpu"]);
    assert_clean_failure(&r, "--resume");
}

#[test]
fn a_config_written_before_adversarial_training_reads_as_standard_training() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let r = common::tiny_run(run.to_str().unwrap(), "1", &[]);
    assert!(r.ok, "{}", r.stderr);
    let text = fs::read_to_string(run.join("config.json")).unwrap();
    assert!(!text.contains("\"mode\""), "standard runs write no mode: {text}");
    assert!(read_config(&run).unwrap().mode.is_standard());
    let pgd = text.replacen('{', r#"{"mode": {"kind": "pgd", "norm": "linf", "eps": 0.03, "alpha": 0.01, "steps": 2, "bn": "train", "eval_subset": 0, "extra": 1},"#, 1);
    fs::write(run.join("config.json"), pgd).unwrap();
    let err = read_config(&run).unwrap_err();
    assert!(format!("{err:#}").contains("extra"), "{err:#}");
    assert_clean_failure(
        &mocse(&[
            "train",
            "--model",
            "mocse",
            "--adv",
            "pgd",
            "--eps",
            "2",
            "--out",
            dir.path().join("x").to_str().unwrap(),
        ]),
        "--eps must be between 0 and 1",
    );
    assert_clean_failure(
        &mocse(&["train", "--model", "mocse", "--adv", "trades", "--out", "x"]),
        "unknown adversarial training",
    );
    assert_clean_failure(&mocse(&["train", "--model", "mocse", "--steps", "3", "--out", "x"]), "--adv");
    let fgsm_steps = mocse(&["train", "--model", "mocse", "--adv", "fgsm-rs", "--steps", "3", "--out", "x"]);
    assert_clean_failure(&fgsm_steps, "--adv fgsm-rs takes a single step");
}
