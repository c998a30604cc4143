//! The command line as a user meets it: training and evaluating both models end to end, exact
//! resumption, checkpoints, and clear errors (never a panic) on bad input.

mod common;

use std::fs;

use common::{assert_clean_failure, mocse, tiny_run, write_fake_cifar};
use mocse::checkpoint::{MODEL_FILE, load_model};
use mocse::nn::model::Model;
use mocse::train::{read_config, read_log};

#[test]
fn resumed_run_matches_uninterrupted_run() {
    let dir = tempfile::tempdir().unwrap();
    let (full, split) = (dir.path().join("full"), dir.path().join("split"));
    let (full_s, split_s) = (full.to_str().unwrap(), split.to_str().unwrap());

    let r = tiny_run(full_s, "2", &[]);
    assert!(r.ok, "{}", r.stderr);
    let r = tiny_run(split_s, "2", &["--stop-after", "1"]);
    assert!(r.ok, "{}", r.stderr);
    assert!(r.stderr.contains("continue with: mocse train --resume"), "{}", r.stderr);
    assert_eq!(read_log(&split).unwrap().len(), 1);
    let r = mocse(&["train", "--resume", "--out", split_s, "--device", "cpu"]);
    assert!(r.ok, "{}", r.stderr);

    let config = read_config(&full).unwrap();
    let model = Model::new(config.model);
    let (a, pa) = load_model(&full.join(MODEL_FILE), model.fused()).unwrap();
    let (b, pb) = load_model(&split.join(MODEL_FILE), model.fused()).unwrap();
    assert_eq!(pa, pb);
    for (x, y) in a.params.iter().chain(&a.buffers).zip(b.params.iter().chain(&b.buffers)) {
        assert!(
            x.as_slice().iter().zip(y.as_slice()).all(|(u, v)| u.to_bits() == v.to_bits()),
            "weights differ after resuming"
        );
    }
    let (la, lb) = (read_log(&full).unwrap(), read_log(&split).unwrap());
    assert_eq!(la.len(), 2);
    for (x, y) in la.iter().zip(&lb) {
        assert_eq!(
            (x.epoch, x.train_loss, x.train_accuracy, x.test_accuracy, x.lr),
            (y.epoch, y.train_loss, y.train_accuracy, y.test_accuracy, y.lr)
        );
    }

    // A finished run has nothing left to do; a new run may not overwrite it.
    let r = mocse(&["train", "--resume", "--out", full_s]);
    assert!(r.ok && r.stderr.contains("nothing to do"), "{}", r.stderr);
    let r = tiny_run(full_s, "2", &[]);
    assert_clean_failure(&r, "already holds a run");
    // --resume takes its settings from config.json only.
    let r = mocse(&["train", "--resume", "--out", split_s, "--lr", "0.5"]);
    assert_clean_failure(&r, "'--resume' cannot be used with '--lr <LR>'");
}

/// Two identical runs write identical files (checked the way a user would, byte for byte), but
/// for the log's wall-clock timings and the lock's pid.
#[test]
fn identical_runs_write_identical_files() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    for run in [&a, &b] {
        let r = tiny_run(run.to_str().unwrap(), "2", &[]);
        assert!(r.ok, "{}", r.stderr);
    }
    let mut compared = 0;
    for entry in fs::read_dir(&a).unwrap() {
        let name = entry.unwrap().file_name();
        if name == "log.jsonl" || name == ".lock" {
            continue;
        }
        let (x, y) = (fs::read(a.join(&name)).unwrap(), fs::read(b.join(&name)).unwrap());
        assert!(x == y, "{} differs between two identical runs", name.to_string_lossy());
        compared += 1;
    }
    assert_eq!(compared, 6, "config.json, the two checkpoint pairs and curves.png");
    // Report numbers are rounded to 8 decimals, not printed with the summation's last-bit noise.
    let json = dir.path().join("c.json");
    #[rustfmt::skip]
    let r = mocse(&["eval", "--run", a.to_str().unwrap(), "--device", "cpu", "--test-subset", "30",
        "--corruptions", "fog,snow,contrast", "--json", json.to_str().unwrap()]);
    assert!(r.ok, "{}", r.stderr);
    let text = fs::read_to_string(&json).unwrap();
    let numbers = text.split(|c: char| !(c.is_ascii_digit() || c == '.')).filter(|t| t.contains('.'));
    let long: Vec<&str> = numbers.filter(|t| t.split('.').nth(1).is_some_and(|d| d.len() > 8)).collect();
    assert_eq!(long, Vec::<&str>::new(), "{text}");
}

#[test]
fn evaluation_of_a_saved_checkpoint_is_reproducible_and_reported_as_json() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let r = tiny_run(run.to_str().unwrap(), "1", &[]);
    assert!(r.ok, "{}", r.stderr);
    let json = dir.path().join("eval.json");
    let args =
        ["eval", "--run", run.to_str().unwrap(), "--test-subset", "50", "--json", json.to_str().unwrap()];
    let first = mocse(&args);
    assert!(first.ok, "{}", first.stderr);
    let report: serde_json::Value = serde_json::from_str(&fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(report["model"], "mocse");
    assert_eq!(report["device"], "cpu");
    assert_eq!(report["num_images"], 50);
    let acc = report["clean_accuracy"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&acc));
    let second = mocse(&args);
    assert_eq!(first.stdout, second.stdout, "evaluating the same checkpoint twice must agree exactly");
}

#[test]
fn cifar10_binary_directory_trains_and_bad_directories_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let cifar = dir.path().join("cifar-10-batches-bin");
    write_fake_cifar(&cifar);
    let run = dir.path().join("run");
    let data = format!("cifar10:{}", cifar.display());
    let r = mocse(&[
        "train",
        "--model",
        "preact18",
        "--width",
        "4",
        "--data",
        &data,
        "--train-subset",
        "64",
        "--test-subset",
        "32",
        "--batch-size",
        "32",
        "--epochs",
        "1",
        "--out",
        run.to_str().unwrap(),
    ]);
    assert!(r.ok, "{}", r.stderr);
    assert_eq!(read_log(&run).unwrap().len(), 1);
    // The parent directory of cifar-10-batches-bin works too.
    let parent = format!("cifar10:{}", dir.path().display());
    let r = mocse(&["eval", "--run", run.to_str().unwrap(), "--data", &parent, "--test-subset", "16"]);
    assert!(r.ok, "{}", r.stderr);

    // Truncated file.
    let path = cifar.join("test_batch.bin");
    let bytes = fs::read(&path).unwrap();
    fs::write(&path, &bytes[..bytes.len() - 100]).unwrap();
    let r = mocse(&["eval", "--run", run.to_str().unwrap(), "--data", &data]);
    assert_clean_failure(&r, "test_batch.bin");
    assert!(r.stderr.contains("30730000") || r.stderr.contains("30,730,000"), "{}", r.stderr);
    // A label out of range.
    let mut bad = bytes.clone();
    bad[3073 * 5] = 12;
    fs::write(&path, &bad).unwrap();
    let r = mocse(&["eval", "--run", run.to_str().unwrap(), "--data", &data, "--test-subset", "10"]);
    assert_clean_failure(&r, "label");
    // Missing file, wrong directory.
    fs::remove_file(&path).unwrap();
    let r = mocse(&["eval", "--run", run.to_str().unwrap(), "--data", &data]);
    assert_clean_failure(&r, "test_batch.bin");
    let r = mocse(&["eval", "--run", run.to_str().unwrap(), "--data", "cifar10:/nonexistent/cifar"]);
    assert_clean_failure(&r, "/nonexistent/cifar");
}

#[test]
fn bad_flags_and_bad_files_give_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("r");
    let out_s = out.to_str().unwrap();
    assert_clean_failure(&mocse(&["train", "--model", "resnet", "--out", out_s]), "unknown model 'resnet'");
    assert_clean_failure(
        &mocse(&["train", "--out", out_s]),
        "required arguments were not provided:\n  --model <MODEL>",
    );
    assert_clean_failure(
        &mocse(&["train", "--model", "mocse", "--epochs", "0", "--out", out_s]),
        "--epochs must be at least 1",
    );
    assert_clean_failure(
        &mocse(&["train", "--model", "mocse", "--lr=-1", "--out", out_s]),
        "--lr must be a positive number",
    );
    assert_clean_failure(
        &mocse(&["train", "--model", "mocse", "--lr", "abc", "--out", out_s]),
        "invalid value 'abc'",
    );
    assert_clean_failure(
        &mocse(&["train", "--model", "mocse", "--data", "imagenet", "--out", out_s]),
        "synthetic",
    );
    assert_clean_failure(
        &mocse(&["train", "--model", "mocse", "--train-subset", "0", "--out", out_s]),
        "subset",
    );
    assert_clean_failure(
        &mocse(&["train", "--model", "mocse", "--train-subset", "60000", "--out", out_s]),
        "only 50000",
    );
    assert_clean_failure(
        &mocse(&["train", "--model", "mocse", "--width", "8", "--out", out_s]),
        "--expert-width",
    );
    assert_clean_failure(
        &mocse(&["train", "--model", "mocse", "--device", "tpu", "--out", out_s]),
        "unknown device",
    );
    assert_clean_failure(&mocse(&["train", "--resume", "--out", out_s]), "config.json");
    assert_clean_failure(&mocse(&["eval", "--run", out_s]), "config.json");

    // A corrupt checkpoint.
    let r = tiny_run(out_s, "1", &[]);
    assert!(r.ok, "{}", r.stderr);
    let model = out.join(MODEL_FILE);
    let bytes = fs::read(&model).unwrap();
    fs::write(&model, &bytes[..bytes.len() / 3]).unwrap();
    assert_clean_failure(&mocse(&["eval", "--run", out_s]), "corrupt or truncated");
    fs::write(&model, b"not a checkpoint").unwrap();
    assert_clean_failure(&mocse(&["eval", "--run", out_s]), "corrupt or truncated");
    // A corrupt config.
    fs::write(out.join("config.json"), b"{\"model\": 3}").unwrap();
    assert_clean_failure(&mocse(&["eval", "--run", out_s]), "not a valid mocse run configuration");
}

#[test]
fn help_explains_every_flag() {
    for cmd in ["train", "eval", "bench", "corrupt", "compare", "selftest"] {
        let r = mocse(&[cmd, "--help"]);
        assert!(r.ok);
        for line in r.stdout.lines().filter(|l| l.trim_start().starts_with("--")) {
            let has_text = line.split("  ").filter(|s| !s.trim().is_empty()).count() >= 2;
            assert!(
                has_text || line.contains("--help") || line.contains("--version"),
                "{cmd}: flag without explanation: {line}"
            );
        }
    }
}

/// The emulated kernel device trains and evaluates end to end, and a checkpoint written on one
/// device evaluates on another.
#[test]
fn emu_device_trains_and_evaluates_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let run_s = run.to_str().unwrap();
    #[rustfmt::skip]
    let r = mocse(&[
        "train", "--model", "mocse", "--expert-width", "2", "--train-subset", "64", "--test-subset", "32",
        "--batch-size", "32", "--epochs", "1", "--device", "emu", "--out", run_s,
    ]);
    assert!(r.ok, "{}", r.stderr);
    assert!(r.stderr.contains("device emu"), "{}", r.stderr);
    let on = |device: &str| {
        let r = mocse(&["eval", "--run", run_s, "--test-subset", "32", "--device", device]);
        assert!(r.ok, "{}", r.stderr);
        r.stdout
    };
    assert_eq!(on("emu"), on("cpu"), "the same checkpoint classifies the same on both devices");
}

/// Without a terminal (stderr is a pipe here), long work prints a progress line at the stated
/// interval, and each epoch ends with the same summary line as on a terminal.
#[test]
fn progress_is_logged_without_a_terminal() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    #[rustfmt::skip]
    let args = ["train", "--model", "mocse", "--expert-width", "2", "--train-subset", "640", "--test-subset",
        "200", "--batch-size", "32", "--epochs", "1", "--device", "cpu", "--out", run.to_str().unwrap()];
    let r = common::mocse_env(&args, &[("MOCSE_PROGRESS_SECONDS", "1")]);
    assert!(r.ok, "{}", r.stderr);
    let lines: Vec<&str> =
        r.stderr.lines().filter(|l| l.starts_with("epoch 1/1 ") && l.contains("/640 images")).collect();
    assert!(lines.len() >= 2, "expected progress lines about every second:\n{}", r.stderr);
    assert!(lines[0].contains(" 0/640 images"), "the first line comes at the start:\n{}", r.stderr);
    // "Ns elapsed" of consecutive lines: never more than the interval apart (plus a second of
    // rounding and slack).
    let elapsed: Vec<u64> = lines
        .iter()
        .map(|l| {
            l.split(" elapsed")
                .next()
                .unwrap()
                .rsplit(", ")
                .next()
                .unwrap()
                .trim_end_matches('s')
                .parse()
                .unwrap()
        })
        .collect();
    assert!(elapsed.windows(2).all(|w| w[1] <= w[0] + 2), "{elapsed:?}\n{}", r.stderr);
    assert!(r.stderr.contains("epoch 1/1: train loss"), "{}", r.stderr);
    assert!(!r.stderr.contains(".0000/s") && !r.stderr.contains(" 0/0 "), "{}", r.stderr);
}

/// Any checkpoint evaluates: an earlier epoch kept by --save-every, the run's own file through
/// --checkpoint (the same result as --run), and a bare state_dict without mocse's metadata (as
/// PyTorch's safetensors.torch.save_file writes one), given the model flags.
#[test]
fn any_checkpoint_can_be_evaluated() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let run_s = run.to_str().unwrap();
    let r = tiny_run(run_s, "2", &["--save-every", "1"]);
    assert!(r.ok, "{}", r.stderr);
    assert_eq!(
        fs::read(run.join("epoch-0002.safetensors")).unwrap(),
        fs::read(run.join(MODEL_FILE)).unwrap()
    );
    assert!(run.join("epoch-0001.safetensors").exists());
    let eval = |extra: &[&str]| {
        let json = dir.path().join("e.json");
        let mut args =
            vec!["eval", "--device", "cpu", "--test-subset", "60", "--json", json.to_str().unwrap()];
        args.extend_from_slice(extra);
        let r = mocse(&args);
        let report: Option<serde_json::Value> =
            r.ok.then(|| serde_json::from_str(&fs::read_to_string(&json).unwrap()).unwrap());
        (r, report)
    };
    let (_, by_run) = eval(&["--run", run_s]);
    let by_run = by_run.unwrap();
    let model_file = run.join(MODEL_FILE);
    let (_, by_file) = eval(&["--checkpoint", model_file.to_str().unwrap()]);
    let by_file = by_file.unwrap();
    assert_eq!(by_file["clean_accuracy"], by_run["clean_accuracy"]);
    assert_eq!(by_file["checkpoint_epoch"], 2);
    let first = run.join("epoch-0001.safetensors");
    let (_, early) = eval(&["--checkpoint", first.to_str().unwrap()]);
    assert_eq!(early.unwrap()["checkpoint_epoch"], 1);

    // The same tensors without any metadata, away from the run's config.json.
    let bytes = fs::read(&model_file).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let write_bare = |path: &std::path::Path, keep: &dyn Fn(&str) -> bool| {
        let tensors: Vec<(String, safetensors::tensor::TensorView<'_>)> =
            st.tensors().into_iter().filter(|(name, _)| keep(name)).collect();
        fs::write(path, safetensors::serialize(tensors, None).unwrap()).unwrap();
    };
    let bare = dir.path().join("bare.safetensors");
    write_bare(&bare, &|_| true);
    let (r, _) = eval(&["--checkpoint", bare.to_str().unwrap()]);
    assert_clean_failure(&r, "--model mocse");
    let (r, report) =
        eval(&["--checkpoint", bare.to_str().unwrap(), "--model", "mocse", "--expert-width", "2"]);
    assert!(r.ok, "{}", r.stderr);
    let report = report.unwrap();
    assert_eq!(report["clean_accuracy"], by_run["clean_accuracy"]);
    assert!(report["checkpoint_epoch"].is_null());
    write_bare(&bare, &|name| !name.starts_with("normalize."));
    let (r, _) = eval(&["--checkpoint", bare.to_str().unwrap(), "--model", "mocse", "--expert-width", "2"]);
    assert_clean_failure(&r, "normalize.mean and normalize.std");
}

/// A test set of one's own (`npy:DIR`) evaluates like the same images from the built-in set,
/// and `--predictions` writes per-image scores whose argmax gives exactly the reported accuracy.
#[test]
fn own_test_sets_and_per_image_predictions() {
    use mocse::data::{DataSpec, Dataset, Split};
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let run_s = run.to_str().unwrap();
    assert!(tiny_run(run_s, "1", &[]).ok);
    let set = dir.path().join("set");
    fs::create_dir(&set).unwrap();
    let data = Dataset::load(&DataSpec::Synthetic, Split::Test, Some(40), 0).unwrap();
    let mut pixels = vec![0u8; 40 * 3072];
    data.images_u8(0, &mut pixels);
    mocse::npy::write_u8(&set.join("images.npy"), &[40, 32, 32, 3], &pixels).unwrap();
    mocse::npy::write_u8(&set.join("labels.npy"), &[40], &data.labels()).unwrap();
    let (a, b) = (dir.path().join("a.json"), dir.path().join("b.json"));
    let npy_data = format!("npy:{}", set.display());
    let predictions = dir.path().join("p.npz");
    #[rustfmt::skip]
    let r = mocse(&["eval", "--run", run_s, "--device", "cpu", "--data", &npy_data, "--corruptions", "fog",
        "--severities", "2", "--json", a.to_str().unwrap(), "--predictions", predictions.to_str().unwrap()]);
    assert!(r.ok, "{}", r.stderr);
    #[rustfmt::skip]
    let r = mocse(&["eval", "--run", run_s, "--device", "cpu", "--test-subset", "40", "--corruptions", "fog",
        "--severities", "2", "--json", b.to_str().unwrap()]);
    assert!(r.ok, "{}", r.stderr);
    let json = |p: &std::path::Path| -> serde_json::Value {
        serde_json::from_str(&fs::read_to_string(p).unwrap()).unwrap()
    };
    let (a, b) = (json(&a), json(&b));
    assert_eq!(a["clean_accuracy"], b["clean_accuracy"]);
    assert_eq!(a["corruptions"]["fog"]["2"], b["corruptions"]["fog"]["2"]);

    let mut npz = mocse::npy::Npz::open(&predictions).unwrap();
    let (_, labels) = npz.u8_array("labels").unwrap();
    assert_eq!(labels, data.labels());
    for (condition, accuracy) in [("clean", &a["clean_accuracy"]), ("fog_s2", &a["corruptions"]["fog"]["2"])]
    {
        let (shape, predicted) = npz.u8_array(&format!("{condition}_predicted")).unwrap();
        assert_eq!(shape, [40]);
        let right = predicted.iter().zip(&labels).filter(|(p, l)| p == l).count();
        assert_eq!(right as f64 / 40.0, accuracy.as_f64().unwrap(), "{condition}");
        let scores = npz.f32_array(&format!("{condition}_scores")).unwrap();
        assert_eq!(scores.len(), 40 * 10);
        let argmax: Vec<u8> = scores.chunks(10).map(|r| mocse::ops::loss::argmax(r) as u8).collect();
        assert_eq!(argmax, predicted);
    }

    // Bad sets are refused by name; npy:DIR is a test set only.
    mocse::npy::write_u8(&set.join("labels.npy"), &[39], &data.labels()[..39]).unwrap();
    assert_clean_failure(
        &mocse(&["eval", "--run", run_s, "--device", "cpu", "--data", &npy_data]),
        "one label per image",
    );
    let mut bad = data.labels();
    bad[3] = 12;
    mocse::npy::write_u8(&set.join("labels.npy"), &[40], &bad).unwrap();
    assert_clean_failure(
        &mocse(&["eval", "--run", run_s, "--device", "cpu", "--data", &npy_data]),
        "label 12",
    );
    let r = mocse(&[
        "train",
        "--model",
        "mocse",
        "--data",
        &npy_data,
        "--out",
        dir.path().join("x").to_str().unwrap(),
    ]);
    assert_clean_failure(&r, "test set only");
}

/// Output into a pipe whose reader has gone (`mocse ... | head -1`) ends mocse quietly, as for
/// other command-line tools: no panic message.
#[test]
fn a_closed_output_pipe_ends_quietly() {
    use std::process::{Command, Stdio};
    let mut child = Command::new(env!("CARGO_BIN_EXE_mocse"))
        .args(["selftest", "--device", "emu", "--only", "conv2d"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the mocse binary runs");
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
}
