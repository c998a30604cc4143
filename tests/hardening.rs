//! A run never loses its last good state, untrusted files never crash the program, one run
//! directory has one writer, and outputs never replace inputs: each case the hostile-user review
//! found, with injected faults (a crash between the two checkpoint writes, a full disk, two
//! concurrent trainers, a data file truncated while in use).

mod common;

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

use common::{assert_clean_failure, mocse, mocse_env, tamper_f32, tiny_run, tiny_run_env, write_fake_cifar};
use mocse::checkpoint::{
    MODEL_FILE, PREVIOUS_MODEL_FILE, PREVIOUS_TRAINING_STATE_FILE, TRAINING_STATE_FILE, load_model,
};
use mocse::fault::points;
use mocse::nn::model::Model;
use mocse::train::{read_config, read_log};

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Every weight and buffer of a run's model, bit for bit.
fn model_bits(run: &Path) -> Vec<u32> {
    let model = Model::new(read_config(run).unwrap().model);
    let (w, _) = load_model(&run.join(MODEL_FILE), model.fused()).unwrap();
    w.params.iter().chain(&w.buffers).flat_map(|t| t.as_slice().iter().map(|v| v.to_bits())).collect()
}

/// The deterministic part of a run's log.
fn log_key(run: &Path) -> Vec<(usize, u64, u64, u64, u32)> {
    read_log(run)
        .unwrap()
        .iter()
        .map(|e| {
            (
                e.epoch,
                e.train_loss.to_bits(),
                e.train_accuracy.to_bits(),
                e.test_accuracy.to_bits(),
                e.lr.to_bits(),
            )
        })
        .collect()
}

fn resume(run: &Path, env: &[(&str, &str)]) -> common::Run {
    mocse_env(&["train", "--resume", "--out", s(run), "--device", "cpu"], env)
}

/// Files whose names mark a temporary left behind.
fn temporaries(run: &Path) -> Vec<String> {
    fs::read_dir(run)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tmp"))
        .collect()
}

/// `mocse corrupt` of the first `limit` synthetic test images into `out`, plus `extra` flags.
fn corrupt_synthetic(out: &Path, limit: &str, corruption: &str, extra: &[&str]) -> common::Run {
    #[rustfmt::skip]
    let mut args = vec!["corrupt", "--input", "synthetic", "--limit", limit, "--corruption", corruption,
        "--out", s(out), "--device", "cpu"];
    args.extend_from_slice(extra);
    mocse(&args)
}

/// A small corruption report of `run` (fog at severity 1 on 8 images) written to `json`.
fn fog_report(run: &Path, json: &Path) -> common::Run {
    #[rustfmt::skip]
    let args = ["eval", "--run", s(run), "--device", "cpu", "--test-subset", "8", "--corruptions", "fog",
        "--severities", "1", "--json", s(json)];
    mocse(&args)
}

/// `mocse train` of a tiny MoCSE for one epoch on CIFAR-10 files (`data` is `cifar10:DIR`).
fn train_on_cifar(data: &str, run: &Path, train_subset: &str) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_mocse"));
    #[rustfmt::skip]
    command.args(["train", "--model", "mocse", "--expert-width", "2", "--data", data, "--train-subset",
        train_subset, "--test-subset", "32", "--batch-size", "32", "--epochs", "1", "--device", "cpu",
        "--out", s(run)]);
    command
}

// ---- 1. a diverging run keeps a good checkpoint ----

#[test]
fn a_diverging_run_saves_nothing_broken_and_keeps_its_last_good_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    // A learning rate of 1e4 overflows the batch-norm running variances within epoch 1 while
    // the loss still looks finite: training must stop, and no checkpoint may hold them.
    let run = dir.path().join("lr1e4");
    let r = tiny_run(s(&run), "3", &["--lr", "1e4"]);
    assert_clean_failure(&r, "infinite or NaN");
    // Whatever was saved before is whole and finite (loading checks every value); its weights
    // may still overflow in the forward pass, which the evaluation names instead of counting
    // NaN scores as predictions.
    if run.join(MODEL_FILE).exists() {
        let r = mocse(&["eval", "--run", s(&run), "--device", "cpu", "--test-subset", "40"]);
        if !r.ok {
            assert_clean_failure(&r, "class scores are NaN");
        }
    }

    // A healthy epoch, then a diverging one (the library lets the test raise the learning
    // rate mid-run): the epoch-1 checkpoint stays byte for byte and still evaluates.
    let run = dir.path().join("healthy");
    assert!(tiny_run(s(&run), "3", &["--stop-after", "1"]).ok);
    let saved = fs::read(run.join(MODEL_FILE)).unwrap();
    let mut trainer = mocse::train::Trainer::resume(&run, mocse::device::Device::Cpu).unwrap();
    trainer.config.lr = 1e6;
    let err = format!("{:#}", trainer.run(None, false).unwrap_err());
    assert!(err.contains("infinite or NaN"), "{err}");
    assert!(err.contains("last good checkpoint (epoch 1)"), "{err}");
    drop(trainer);
    assert_eq!(fs::read(run.join(MODEL_FILE)).unwrap(), saved);
    assert_eq!(read_log(&run).unwrap().len(), 1);
    let r = mocse(&["eval", "--run", s(&run), "--device", "cpu", "--test-subset", "40"]);
    assert!(r.ok, "{}", r.stderr);
}

#[test]
fn an_edited_config_does_not_resume_with_other_settings() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    assert!(tiny_run(s(&run), "2", &["--stop-after", "1"]).ok);
    let config_path = run.join("config.json");
    let original = fs::read_to_string(&config_path).unwrap();
    let before = fs::read(run.join(MODEL_FILE)).unwrap();

    // A huge learning rate edited in would have overwritten the good checkpoint.
    let mut edited: serde_json::Value = serde_json::from_str(&original).unwrap();
    edited["lr"] = serde_json::json!(10000.0);
    edited["epochs"] = serde_json::json!(5);
    fs::write(&config_path, serde_json::to_string_pretty(&edited).unwrap()).unwrap();
    let r = resume(&run, &[]);
    assert_clean_failure(&r, "was changed after the checkpoint of epoch 1");
    assert!(
        r.stderr.contains("lr was 0.1, is now 10000.0") && r.stderr.contains("epochs was 2, is now 5"),
        "{}",
        r.stderr
    );
    assert_eq!(fs::read(run.join(MODEL_FILE)).unwrap(), before);

    // A misspelt or unknown key is refused, not ignored.
    let mut unknown: serde_json::Value = serde_json::from_str(&original).unwrap();
    unknown["learning_rate"] = serde_json::json!(0.5);
    fs::write(&config_path, serde_json::to_string(&unknown).unwrap()).unwrap();
    assert_clean_failure(&resume(&run, &[]), "unknown field `learning_rate`");
    assert_clean_failure(
        &mocse(&["eval", "--run", s(&run), "--device", "cpu"]),
        "unknown field `learning_rate`",
    );

    fs::write(&config_path, &original).unwrap();
    let r = resume(&run, &[]);
    assert!(r.ok, "{}", r.stderr);
    assert_eq!(read_log(&run).unwrap().len(), 2);
}

#[test]
fn stop_after_zero_is_refused_and_a_run_without_a_finished_epoch_resumes_from_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    assert_clean_failure(&tiny_run(s(&run), "2", &["--stop-after", "0"]), "--stop-after must be at least 1");
    assert!(!run.join("config.json").exists());

    // A crash before the first checkpoint leaves config.json and an empty log: --resume starts
    // over, and the result is the uninterrupted run's.
    let full = dir.path().join("full");
    assert!(tiny_run(s(&full), "1", &[]).ok);
    let r = tiny_run_env(s(&run), "1", &[], &[("MOCSE_FAULT", points::EPOCH_LOGGED)]);
    assert!(!r.ok && r.stderr.contains("test fault point"), "{}", r.stderr);
    assert!(!run.join(MODEL_FILE).exists());
    let r = resume(&run, &[]);
    assert!(r.ok && r.stderr.contains("starting it from the beginning"), "{}", r.stderr);
    assert_eq!(model_bits(&run), model_bits(&full));
    assert_eq!(log_key(&run), log_key(&full));
}

// ---- 2. the checkpoint pair is one transaction ----

/// A crash at each point of the save of epoch 2: --resume continues from the newest complete
/// checkpoint, never advises deleting anything, and the finished run equals an uninterrupted one.
#[test]
fn a_crash_at_any_point_of_a_save_loses_at_most_that_epoch() {
    let dir = tempfile::tempdir().unwrap();
    let full = dir.path().join("full");
    assert!(tiny_run(s(&full), "3", &[]).ok);
    for point in [points::EPOCH_LOGGED, points::CHECKPOINT_WRITTEN, points::CHECKPOINT_HALF_SWITCHED] {
        let run = dir.path().join(point);
        assert!(tiny_run(s(&run), "3", &["--stop-after", "1"]).ok);
        let r = resume(&run, &[("MOCSE_FAULT", point)]);
        assert!(!r.ok && r.stderr.contains("test fault point"), "{point}: {}", r.stderr);
        if point == points::CHECKPOINT_HALF_SWITCHED {
            // The training state of epoch 2 is in place, the model still of epoch 1.
            let state = fs::read(run.join(TRAINING_STATE_FILE)).unwrap();
            assert!(String::from_utf8_lossy(&state[..4096.min(state.len())]).contains("\"epoch\":\"2\""));
            assert!(
                run.join(PREVIOUS_MODEL_FILE).exists() && run.join(PREVIOUS_TRAINING_STATE_FILE).exists()
            );
        }
        // The model file is whole at every moment: evaluation works mid-crash.
        let r = mocse(&["eval", "--run", s(&run), "--device", "cpu", "--test-subset", "8"]);
        assert!(r.ok, "{point}: {}", r.stderr);
        let r = resume(&run, &[]);
        assert!(r.ok, "{point}: {}", r.stderr);
        assert!(!r.stderr.contains("remove"), "{point}: {}", r.stderr);
        if point == points::CHECKPOINT_HALF_SWITCHED {
            assert!(r.stderr.contains("continuing from the checkpoint before it (epoch 1)"), "{}", r.stderr);
        }
        assert_eq!(model_bits(&run), model_bits(&full), "{point}");
        assert_eq!(log_key(&run), log_key(&full), "{point}");
        assert_eq!(temporaries(&run), Vec::<String>::new(), "{point}");
    }
}

#[test]
fn a_torn_or_lost_log_line_does_not_block_resuming() {
    let dir = tempfile::tempdir().unwrap();
    let full = dir.path().join("full");
    assert!(tiny_run(s(&full), "2", &[]).ok);

    // Garbage (a line torn by a crash) after the last entry.
    let torn = dir.path().join("torn");
    assert!(tiny_run(s(&torn), "2", &["--stop-after", "1"]).ok);
    let mut f = fs::OpenOptions::new().append(true).open(torn.join("log.jsonl")).unwrap();
    std::io::Write::write_all(&mut f, b"{\"epoch\": 2, \"train_lo").unwrap();
    let r = resume(&torn, &[]);
    assert!(r.ok && r.stderr.contains("is not a log entry and is left out"), "{}", r.stderr);
    assert_eq!(log_key(&torn), log_key(&full));

    // The checkpoint's own line missing: restored from the checkpoint, exactly.
    let lost = dir.path().join("lost");
    assert!(tiny_run(s(&lost), "2", &["--stop-after", "1"]).ok);
    fs::write(lost.join("log.jsonl"), b"").unwrap();
    let r = resume(&lost, &[]);
    assert!(r.ok, "{}", r.stderr);
    assert_eq!(log_key(&lost), log_key(&full));
}

/// A full disk (a 1.5 MB tmpfs in a private mount namespace): the second epoch's save fails with
/// a clear message, the first checkpoint stays usable, and no temporary is left.
#[test]
fn a_full_disk_keeps_the_last_checkpoint() {
    let probe = Command::new("unshare").args(["--user", "--map-root-user", "--mount", "true"]).output();
    if !probe.is_ok_and(|o| o.status.success()) {
        eprintln!("SKIPPED: cannot make a private tmpfs here (unshare --user --mount is not permitted)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (mnt, copy) = (dir.path().join("small-disk"), dir.path().join("copy"));
    fs::create_dir(&mnt).unwrap();
    let mocse = env!("CARGO_BIN_EXE_mocse");
    // Inside the namespace: train (fails on the full disk), evaluate and resume the run, then copy
    // it out (the tmpfs vanishes with the namespace).
    let script = format!(
        r#"set -u
mount -t tmpfs -o size=1500k tmpfs {mnt}
{mocse} train --model mocse --expert-width 2 --train-subset 96 --test-subset 40 --batch-size 32 --epochs 3 --device cpu --out {mnt}/run
echo "train exit $?"
{mocse} eval --run {mnt}/run --device cpu --test-subset 8
echo "eval exit $?"
{mocse} train --resume --out {mnt}/run --device cpu
echo "resume exit $?"
cp -a {mnt}/run {copy}
"#,
        mnt = mnt.display(),
        copy = copy.display()
    );
    let out = Command::new("unshare")
        .args(["--user", "--map-root-user", "--mount", "sh", "-c", &script])
        .output()
        .unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("train exit 1"), "{stdout}\n{stderr}");
    assert!(
        stderr.contains("could not save epoch 2") && stderr.contains("No space left on device"),
        "{stderr}"
    );
    assert!(stderr.contains("the last good checkpoint (epoch 1)") && stderr.contains("--resume"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(stdout.contains("eval exit 0") && stdout.contains("clean accuracy"), "{stdout}\n{stderr}");
    // Resuming on the still-full disk fails the same clean way, losing nothing.
    assert!(stdout.contains("resume exit 1"), "{stdout}\n{stderr}");
    assert_eq!(temporaries(&copy), Vec::<String>::new());
    assert_eq!(read_log(&copy).unwrap().len(), 1);
    assert_eq!(
        load_model(&copy.join(MODEL_FILE), Model::new(read_config(&copy).unwrap().model).fused())
            .unwrap()
            .1
            .epoch,
        1
    );
}

// ---- 4. one run directory, one writer ----

/// Starts a slow training in `run` and returns once it holds the run directory.
fn start_trainer(run: &Path, extra: &[&str]) -> std::process::Child {
    #[rustfmt::skip]
    let mut args = vec![
        "train", "--model", "mocse", "--expert-width", "2", "--train-subset", "4000", "--test-subset", "40",
        "--batch-size", "32", "--epochs", "2", "--device", "cpu", "--out", s(run),
    ];
    args.extend_from_slice(extra);
    let mut child =
        Command::new(env!("CARGO_BIN_EXE_mocse")).args(&args).stderr(Stdio::piped()).spawn().unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    for line in lines.by_ref() {
        if line.unwrap().starts_with("writing to") {
            break;
        }
    }
    // Keep draining stderr so the child never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    child
}

#[test]
fn a_second_writer_of_a_run_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let mut first = start_trainer(&run, &[]);
    let pid = first.id();
    let r = resume(&run, &[]);
    assert_clean_failure(&r, "is in use by another mocse process");
    assert!(r.stderr.contains(&format!("pid {pid}")), "{}", r.stderr);
    let r = tiny_run(s(&run), "1", &[]);
    assert!(!r.ok && !r.stderr.contains("panicked"), "{}", r.stderr);
    first.kill().unwrap();
    first.wait().unwrap();
    // The lock died with its holder (kill -9): the run can be resumed at once.
    let r = mocse(&["train", "--resume", "--out", s(&run), "--device", "cpu", "--stop-after", "1"]);
    assert!(r.ok, "{}", r.stderr);
}

#[test]
fn two_new_runs_started_together_leave_one_consistent_run() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    #[rustfmt::skip]
    let args = |seed: &'static str| vec![
        "train".to_string(), "--model".into(), "mocse".into(), "--expert-width".into(), "2".into(),
        "--train-subset".into(), "96".into(), "--test-subset".into(), "40".into(), "--batch-size".into(),
        "32".into(), "--epochs".into(), "2".into(), "--device".into(), "cpu".into(), "--seed".into(),
        seed.into(), "--out".into(), s(&run).into(),
    ];
    let spawn = |seed| {
        Command::new(env!("CARGO_BIN_EXE_mocse"))
            .args(args(seed))
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap()
    };
    let (a, b) = (spawn("1"), spawn("2"));
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    assert_eq!(a.status.success() as u8 + b.status.success() as u8, 1, "exactly one of two writers runs");
    let loser = if a.status.success() { &b } else { &a };
    let err = String::from_utf8_lossy(&loser.stderr);
    assert!(err.contains("in use by another mocse process") || err.contains("already holds a run"), "{err}");
    // config, weights and log are all the winner's.
    let winner_seed = if a.status.success() { 1 } else { 2 };
    assert_eq!(read_config(&run).unwrap().seed, winner_seed);
    assert_eq!(read_log(&run).unwrap().iter().map(|e| e.epoch).collect::<Vec<_>>(), [1, 2]);
    let other = dir.path().join("alone");
    assert!(tiny_run(s(&other), "2", &["--seed", &winner_seed.to_string()]).ok);
    assert_eq!(model_bits(&run), model_bits(&other));
}

// ---- 5. evaluation refuses broken weights ----

#[test]
fn evaluation_refuses_broken_weights() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    assert!(tiny_run(s(&run), "1", &[]).ok);
    let pristine = fs::read(run.join(MODEL_FILE)).unwrap();
    let json = dir.path().join("eval.json");
    for (name, value, needle) in [
        ("conv1.weight", f32::NAN, "not finite"),
        ("layer3.1.bn2.running_var", f32::INFINITY, "not a finite number >= 0"),
        ("layer1.0.bn1.running_var", -0.5, "not a finite number >= 0"),
        ("layer4.0.bn1.running_mean", f32::NEG_INFINITY, "not finite"),
        ("normalize.std", 0.0, "not a finite number > 0"),
    ] {
        fs::write(run.join(MODEL_FILE), &pristine).unwrap();
        tamper_f32(&run.join(MODEL_FILE), name, 1, value);
        let r = mocse(&["eval", "--run", s(&run), "--device", "cpu", "--json", s(&json)]);
        assert_clean_failure(&r, needle);
        assert!(r.stderr.contains(name), "{}", r.stderr);
        assert!(!json.exists(), "a report was written for broken weights");
        // --resume refuses them too (and falls back to nothing: there is no previous pair).
        assert_clean_failure(&resume(&run, &[]), name);
    }
}

// ---- 3. untrusted sizes ----

#[test]
fn untrusted_sizes_are_checked_before_use() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // A .npy header whose shape product overflows.
    let header = "{'descr': '|u1', 'fortran_order': False, 'shape': (18014398509481984, 32, 32, 3), }";
    let padded = format!("{header:<117}\n");
    let mut npy = b"\x93NUMPY\x01\x00".to_vec();
    npy.extend_from_slice(&(padded.len() as u16).to_le_bytes());
    npy.extend_from_slice(padded.as_bytes());
    fs::write(d.join("huge.npy"), &npy).unwrap();
    let out = d.join("out");
    assert_clean_failure(
        &mocse(&["corrupt", "--input", s(&d.join("huge.npy")), "--out", s(&out), "--device", "cpu"]),
        "overflows",
    );
    // Model sizes: refused with the reason, before anything is allocated.
    let r = d.join("r");
    for args in [
        vec!["train", "--model", "mocse", "--expert-width", "100000", "--out", s(&r)],
        vec!["train", "--model", "preact18", "--width", "2305843009213693951", "--out", s(&r)],
        vec!["bench", "--model", "mocse", "--expert-width", "1000000", "--device", "cpu"],
    ] {
        assert_clean_failure(&mocse(&args), "the width must be 1 to 4096");
    }
    assert_clean_failure(
        &mocse(&["train", "--model", "mocse", "--expert-width", "2000", "--out", s(&r), "--device", "cpu"]),
        "GiB of memory",
    );
    #[rustfmt::skip]
    let r = mocse(&["bench", "--model", "mocse", "--expert-width", "700", "--device", "emu", "--batch-size", "2"]);
    assert_clean_failure(&r, "32-bit integers");
    // A checkpoint that is a link to /dev/zero, or a 2 GB sparse file: refused unread.
    let run = d.join("run");
    assert!(tiny_run(s(&run), "1", &[]).ok);
    fs::remove_file(run.join(MODEL_FILE)).unwrap();
    std::os::unix::fs::symlink("/dev/zero", run.join(MODEL_FILE)).unwrap();
    assert_clean_failure(&mocse(&["eval", "--run", s(&run), "--device", "cpu"]), "character device");
    fs::remove_file(run.join(MODEL_FILE)).unwrap();
    fs::File::create(run.join(MODEL_FILE)).unwrap().set_len(2 << 30).unwrap();
    assert_clean_failure(&mocse(&["eval", "--run", s(&run), "--device", "cpu"]), "corrupt or truncated");
}

/// The largest resident set of any child process that has ended so far, in bytes.
fn children_max_rss() -> u64 {
    // SAFETY: getrusage fills the struct it is given.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) }, 0);
    usage.ru_maxrss as u64 * 1024
}

/// Writes a wheel whose frost1.png is 1 GiB of zeros (about 1 MB compressed); with `lie`, the
/// archive's headers claim it unpacks to 1000 bytes.
fn write_zip_bomb(path: &Path, lie: bool) {
    use std::io::Write;
    let mut zip = zip::ZipWriter::new(fs::File::create(path).unwrap());
    let deflate =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
    zip.start_file("imagecorruptions/frost/frost1.png", deflate).unwrap();
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..1024 {
        zip.write_all(&zeros).unwrap();
    }
    zip.finish().unwrap();
    if lie {
        let mut bytes = fs::read(path).unwrap();
        let find = |sig: &[u8]| bytes.windows(4).position(|w| w == sig).unwrap();
        let (local, central) = (find(b"PK\x03\x04"), find(b"PK\x01\x02"));
        for at in [local + 22, central + 24] {
            assert_eq!(&bytes[at..at + 4], &(1u32 << 30).to_le_bytes());
            bytes[at..at + 4].copy_from_slice(&1000u32.to_le_bytes());
        }
        fs::write(path, bytes).unwrap();
    }
}

/// A frost wheel that is a zip bomb, or lies about an entry's size, is refused before its
/// SHA-256 is computed, without unpacking more than the limit.
#[test]
fn a_hostile_frost_wheel_is_refused_within_bounded_memory() {
    let dir = tempfile::tempdir().unwrap();
    let images = dir.path().join("imgs");
    let r = corrupt_synthetic(&images, "2", "brightness", &[]);
    assert!(r.ok, "{}", r.stderr);
    for (lie, needle) in [(false, "more than any frost texture"), (true, "unpacks to more than")] {
        let wheel = dir.path().join(format!("lie-{lie}")).join("imagecorruptions-1.1.2-py3-none-any.whl");
        fs::create_dir_all(wheel.parent().unwrap()).unwrap();
        write_zip_bomb(&wheel, lie);
        let out = dir.path().join(format!("out-{lie}"));
        let cache = dir.path().join(format!("cache-{lie}"));
        let input = images.join("brightness.npy");
        let r = mocse_env(
            &["corrupt", "--input", s(&input), "--corruption", "frost", "--out", s(&out), "--device", "cpu"],
            &[("MOCSE_CACHE", s(&cache)), ("MOCSE_FROST_WHEEL", s(&wheel))],
        );
        assert_clean_failure(&r, "frost1.png");
        assert!(r.stderr.contains(needle) || r.stderr.contains("checksum"), "{}", r.stderr);
        assert!(!out.join("frost.npy").exists());
    }
    let rss = children_max_rss();
    assert!(rss < 400 << 20, "a child process used {rss} bytes");
}

// ---- 6. outputs never overwrite inputs ----

#[test]
fn outputs_never_replace_inputs_and_are_checked_before_work() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let run = d.join("run");
    assert!(tiny_run(s(&run), "1", &[]).ok);
    let model = fs::read(run.join(MODEL_FILE)).unwrap();
    for target in [run.join(MODEL_FILE), run.join("sub/../config.json"), run.join("log.jsonl")] {
        let _ = fs::create_dir(run.join("sub"));
        let r = mocse(&["eval", "--run", s(&run), "--device", "cpu", "--json", s(&target)]);
        assert_clean_failure(&r, "input files");
        assert!(!r.stderr.contains("evaluating"), "the check must come before the work: {}", r.stderr);
    }
    assert_eq!(fs::read(run.join(MODEL_FILE)).unwrap(), model);
    let r = fog_report(&run, &d.join("no/such/dir/r.json"));
    assert_clean_failure(&r, "does not exist");
    assert!(!r.stderr.contains("evaluating"), "{}", r.stderr);

    // corrupt: its own input, a foreign non-empty directory, the root.
    let set = d.join("set");
    assert!(corrupt_synthetic(&set, "4", "brightness", &[]).ok);
    let input = fs::read(set.join("brightness.npy")).unwrap();
    #[rustfmt::skip]
    let r = mocse(&["corrupt", "--input", s(&set.join("brightness.npy")), "--out", s(&set), "--corruption",
        "brightness", "--device", "cpu"]);
    assert_clean_failure(&r, "input files");
    assert_eq!(fs::read(set.join("brightness.npy")).unwrap(), input);
    // Adding a corruption to an earlier corrupt output is fine with the same settings, and
    // refused with others (its rows would be read under the wrong labels).
    let add = |seed: &str| corrupt_synthetic(&set, "4", "contrast", &["--seed", seed]);
    assert_clean_failure(&add("1"), "seed 0 / 1");
    let r = add("0");
    assert!(r.ok, "{}", r.stderr);
    let manifest = fs::read_to_string(set.join("corrupt.json")).unwrap();
    assert!(manifest.contains("\"brightness\"") && manifest.contains("\"contrast\""), "{manifest}");
    for out in ["/", s(&run)] {
        let r = corrupt_synthetic(Path::new(out), "2", "brightness", &[]);
        assert_clean_failure(&r, "not a directory written by `mocse corrupt`");
    }
    assert_clean_failure(
        &mocse(&["train", "--model", "mocse", "--expert-width", "2", "--out", "/", "--device", "cpu"]),
        "new or empty directory",
    );
    // compare: the table may not replace a report.
    let report = d.join("c.json");
    assert!(fog_report(&run, &report).ok);
    assert_clean_failure(&mocse(&["compare", s(&report), "--out", s(&report)]), "input files");
}

// ---- 7. the smaller cases ----

#[test]
fn special_files_and_bad_manifests_are_named_not_hung_or_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let run = d.join("run");
    assert!(tiny_run(s(&run), "1", &[]).ok);
    // A FIFO as the corrupt input and as the checkpoint: refused at once (the test would hang).
    let fifo = d.join("in.npy");
    assert!(Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    assert_clean_failure(
        &mocse(&["corrupt", "--input", s(&fifo), "--out", s(&d.join("o")), "--device", "cpu"]),
        "named pipe",
    );
    fs::remove_file(run.join(MODEL_FILE)).unwrap();
    assert!(Command::new("mkfifo").arg(run.join(MODEL_FILE)).status().unwrap().success());
    assert_clean_failure(&mocse(&["eval", "--run", s(&run), "--device", "cpu"]), "named pipe");

    // CIFAR-10-C directory: a manifest that cannot be read is not taken for an absent one, and
    // one listing severities out of order is refused instead of relabelling the columns.
    let set = d.join("c");
    assert!(corrupt_synthetic(&set, "10", "fog", &["--severity", "1,3"]).ok);
    let manifest = fs::read_to_string(set.join("corrupt.json")).unwrap();
    let eval_c = || {
        let run2 = d.join("run2");
        if !run2.exists() {
            assert!(tiny_run(s(&run2), "1", &[]).ok);
        }
        #[rustfmt::skip]
        let args = ["eval", "--run", s(&run2), "--device", "cpu", "--test-subset", "10", "--cifar10c", s(&set),
            "--corruptions", "fog"];
        mocse(&args)
    };
    assert!(eval_c().ok);
    let swapped =
        manifest.replace("\"severities\": [\n    1,\n    3\n  ]", "\"severities\": [\n    3,\n    1\n  ]");
    assert_ne!(swapped, manifest);
    fs::write(set.join("corrupt.json"), &swapped).unwrap();
    assert_clean_failure(&eval_c(), "ascending order");
    fs::remove_file(set.join("corrupt.json")).unwrap();
    fs::create_dir(set.join("corrupt.json")).unwrap();
    assert_clean_failure(&eval_c(), "is a directory");
    fs::remove_dir(set.join("corrupt.json")).unwrap();
    std::os::unix::fs::symlink(set.join("corrupt.json"), set.join("corrupt.json")).unwrap();
    assert_clean_failure(&eval_c(), "loops");

    // compare: a report with percentages instead of fractions.
    let report = d.join("r.json");
    let run2 = d.join("run2");
    assert!(fog_report(&run2, &report).ok);
    let mut value: serde_json::Value = serde_json::from_str(&fs::read_to_string(&report).unwrap()).unwrap();
    value["clean_accuracy"] = serde_json::json!(7.5);
    fs::write(&report, value.to_string()).unwrap();
    assert_clean_failure(&mocse(&["compare", s(&report)]), "clean_accuracy is 7.5");
}

#[test]
fn cifar_directories_name_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let cifar = dir.path().join("cifar");
    write_fake_cifar(&cifar);
    let run = dir.path().join("run");
    let data = format!("cifar10:{}", cifar.display());
    let r = train_on_cifar(&data, &run, "64").output().unwrap();
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let test_batch = cifar.join("test_batch.bin");
    let bytes = fs::read(&test_batch).unwrap();
    fs::remove_file(&test_batch).unwrap();
    fs::create_dir(&test_batch).unwrap();
    assert_clean_failure(
        &mocse(&["eval", "--run", s(&run), "--device", "cpu"]),
        "is a directory, not a regular file",
    );
    fs::remove_dir(&test_batch).unwrap();
    std::os::unix::fs::symlink(&test_batch, &test_batch).unwrap();
    assert_clean_failure(&mocse(&["eval", "--run", s(&run), "--device", "cpu"]), "loops");
    fs::remove_file(&test_batch).unwrap();
    fs::write(&test_batch, bytes).unwrap();

    // A data file cut short while training reads it: a message, not a bare SIGBUS.
    let run = dir.path().join("run-truncated");
    let mut child = train_on_cifar(&data, &run, "10000").stderr(Stdio::piped()).spawn().unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut seen = String::new();
    loop {
        let mut line = String::new();
        assert!(stderr.read_line(&mut line).unwrap() > 0, "training ended early: {seen}");
        seen.push_str(&line);
        if line.starts_with("writing to") {
            break;
        }
    }
    fs::OpenOptions::new().write(true).open(cifar.join("data_batch_1.bin")).unwrap().set_len(0).unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut rest).unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(1), "{rest}");
    assert!(rest.contains("data_batch_1.bin became shorter while mocse was reading it"), "{rest}");
}
