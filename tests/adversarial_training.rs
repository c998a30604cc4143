//! Adversarial training (PGD, TRADES, FGSM-RS): the run records its attack, logs robust test
//! accuracy every epoch, keeps the most robust model in best/, refuses attack flags on --resume,
//! reads configs written before adversarial training existed, stops FGSM-RS at catastrophic
//! overfitting with --early-stop, and ends up more robust than standard training of the same
//! network (PreAct ResNet-18 here; both architectures at a larger scale in
//! scripts/adversarial_comparison.sh, whose numbers the README records).

mod common;

use std::fs;

use common::{assert_clean_failure, mocse};
use mocse::train::{EpochLog, TrainingMode, read_config, read_log};

/// Trains a preact18 of width 4 on 1,000 synthetic images for 2 epochs into `out`.
fn train(out: &str, extra: &[&str]) {
    train_for("2", out, extra)
}

fn train_for(epochs: &str, out: &str, extra: &[&str]) {
    #[rustfmt::skip]
    let mut args = vec![
        "train", "--model", "preact18", "--width", "4", "--train-subset", "1000", "--test-subset", "200",
        "--batch-size", "50", "--epochs", epochs, "--lr", "0.05", "--augment", "none", "--device", "cpu",
        "--out", out,
    ];
    args.extend_from_slice(extra);
    let r = mocse(&args);
    assert!(r.ok, "{}", r.stderr);
}

/// Robust accuracy under PGD-10 at 8/255 on 200 test images.
fn robust_accuracy(args: &[&str]) -> f64 {
    attacked_accuracy(args, &["--attack", "pgd", "--steps", "10"])
}

fn attacked_accuracy(args: &[&str], attack: &[&str]) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("r.json");
    let mut all = args.to_vec();
    all.extend_from_slice(attack);
    #[rustfmt::skip]
    all.extend_from_slice(&[
        "--test-subset", "200", "--device", "cpu", "--eps", "8/255", "--json", json.to_str().unwrap(),
    ]);
    let r = mocse(&all);
    assert!(r.ok, "{}", r.stderr);
    let report: serde_json::Value = serde_json::from_slice(&fs::read(&json).unwrap()).unwrap();
    report["adversarial"][attack[1]]["robust_accuracy"].as_f64().unwrap()
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
    // TRADES (beta 6) learns more slowly: after 2 epochs its robust accuracy was 0-5.5%
    // depending on rounding alone (each CPU convolution algorithm gave another), against
    // standard training's 3.5%; after 4 it was 6.5-13.5%.
    train_for("4", &p("trades"), &["--adv", "trades", "--steps", "5", "--adv-eval-subset", "100"]);
    let config = read_config(dir.path().join("trades").as_path()).unwrap();
    let TrainingMode::Trades(trades) = config.mode else { panic!("{:?}", config.mode) };
    assert_eq!((trades.beta, trades.alpha, trades.bn.to_string()), (Some(6.0), 0.007, "eval".to_string()));

    let standard = robust_accuracy(&["eval", "--run", &p("standard")]);
    let adversarial = robust_accuracy(&["eval", "--run", &p("pgd")]);
    let fgsm = robust_accuracy(&["eval", "--run", &p("fgsm")]);
    let trades = robust_accuracy(&["eval", "--run", &p("trades")]);
    let aa_lite = attacked_accuracy(&["eval", "--run", &p("pgd")], &["--attack", "aa-lite", "--steps", "10"]);
    println!(
        "PGD-10 at 8/255 on 200 test images: standard {standard:.3}, PGD-trained {adversarial:.3}, TRADES-trained \
         {trades:.3}, FGSM-RS-trained {fgsm:.3}; aa-lite (10 steps) on the PGD-trained model {aa_lite:.3}"
    );
    assert!(
        adversarial > standard,
        "PGD training did not make the model more robust: {adversarial} vs {standard}"
    );
    assert!(trades > standard, "TRADES training did not make the model more robust: {trades} vs {standard}");
    assert!(fgsm > standard, "FGSM-RS training did not make the model more robust: {fgsm} vs {standard}");
    assert!(aa_lite <= adversarial, "aa-lite {aa_lite} is weaker than PGD {adversarial}");

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
        &mocse(&["train", "--model", "mocse", "--adv", "mart", "--out", "x"]),
        "unknown adversarial training",
    );
    let train_x = |extra: &[&str]| {
        let mut args = vec!["train", "--model", "mocse", "--out", "x"];
        args.extend_from_slice(extra);
        mocse(&args)
    };
    assert_clean_failure(&train_x(&["--adv", "trades", "--beta", "-1"]), "--beta must be a number >= 0");
    assert_clean_failure(&train_x(&["--adv", "pgd", "--beta", "6"]), "--beta applies to --adv trades only");
    assert_clean_failure(&train_x(&["--beta", "6"]), "--adv");
    assert_clean_failure(
        &train_x(&["--adv", "pgd", "--early-stop"]),
        "--early-stop applies to --adv fgsm-rs",
    );
    assert_clean_failure(&mocse(&["train", "--model", "mocse", "--steps", "3", "--out", "x"]), "--adv");
    let fgsm_steps = mocse(&["train", "--model", "mocse", "--adv", "fgsm-rs", "--steps", "3", "--out", "x"]);
    assert_clean_failure(&fgsm_steps, "--adv fgsm-rs takes a single step");
}

/// A MoCSE (experts of width 2) trained 1 epoch on 300 images with each method: every method
/// runs for MoCSE, records itself and logs robust accuracy.
#[test]
fn every_adversarial_method_trains_mocse() {
    let dir = tempfile::tempdir().unwrap();
    for (name, extra) in [
        ("pgd", &["--adv", "pgd", "--steps", "2"][..]),
        ("trades", &["--adv", "trades", "--steps", "2", "--beta", "3"][..]),
        ("fgsm", &["--adv", "fgsm-rs", "--early-stop"][..]),
    ] {
        let out = dir.path().join(name);
        #[rustfmt::skip]
        let mut args = vec![
            "train", "--model", "mocse", "--expert-width", "2", "--train-subset", "300", "--test-subset", "40",
            "--batch-size", "50", "--epochs", "1", "--augment", "none", "--adv-eval-subset", "20", "--device", "cpu",
            "--out", out.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        let r = mocse(&args);
        assert!(r.ok, "{name}: {}", r.stderr);
        assert!(r.stderr.contains("robust test accuracy (PGD-10)"), "{name}: {}", r.stderr);
        let log = read_log(&out).unwrap();
        assert!(log[0].robust_test_accuracy.is_some(), "{name}");
        let mode = read_config(&out).unwrap().mode;
        match (name, mode) {
            ("pgd", TrainingMode::Pgd(a)) => assert_eq!(a.steps, 2),
            ("trades", TrainingMode::Trades(a)) => assert_eq!(a.beta, Some(3.0)),
            ("fgsm", TrainingMode::FgsmRs(a)) => {
                assert!(a.early_stop);
                assert!(log[0].first_batch_robust_accuracy.is_some(), "{log:?}");
            }
            (name, mode) => panic!("{name}: {mode:?}"),
        }
    }
}

/// Catastrophic overfitting stops FGSM-RS with --early-stop: here the history is doctored (the
/// first epoch's first-batch accuracy raised to 100%), so the second epoch's check must see a
/// fall of more than 0.2, keep the first epoch's model and finish the run.
#[test]
fn early_stop_keeps_the_model_before_catastrophic_overfitting() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let out = run.to_str().unwrap();
    let r = common::tiny_run(
        out,
        "3",
        &["--adv", "fgsm-rs", "--early-stop", "--adv-eval-subset", "0", "--stop-after", "1"],
    );
    assert!(r.ok, "{}", r.stderr);
    let log = fs::read_to_string(run.join("log.jsonl")).unwrap();
    let first: serde_json::Value = serde_json::from_str(log.lines().next().unwrap()).unwrap();
    let measured = first["first_batch_robust_accuracy"].as_f64().unwrap();
    assert!(measured < 0.8, "the untrained-ish model resists PGD-5 on {measured} of its first batch");
    fs::write(
        run.join("log.jsonl"),
        log.replace(
            &format!("\"first_batch_robust_accuracy\":{measured}"),
            "\"first_batch_robust_accuracy\":1.0",
        ),
    )
    .unwrap();
    let model_before = fs::read(run.join("model.safetensors")).unwrap();
    let r = mocse(&["train", "--resume", "--out", out, "--device", "cpu"]);
    assert!(r.ok, "{}", r.stderr);
    assert!(r.stderr.contains("catastrophic overfitting in epoch 2"), "{}", r.stderr);
    assert!(r.stderr.contains("keeps epoch 1's model"), "{}", r.stderr);
    assert_eq!(
        fs::read(run.join("model.safetensors")).unwrap(),
        model_before,
        "the overfitted epoch was kept"
    );
    assert_eq!(read_log(&run).unwrap().len(), 1);
    let stop: serde_json::Value =
        serde_json::from_slice(&fs::read(run.join("early-stop.json")).unwrap()).unwrap();
    assert_eq!((stop["epoch"].as_u64(), stop["kept_epoch"].as_u64()), (Some(2), Some(1)));
    let r = mocse(&["train", "--resume", "--out", out, "--device", "cpu"]);
    assert!(r.ok && r.stderr.contains("already finished early"), "{}", r.stderr);
}
