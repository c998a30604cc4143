//! `mocse corrupt`, `mocse eval --corruptions/--cifar10c` and `mocse compare` as a user meets
//! them: a corrupted set written to disk evaluates exactly like the same corruptions generated on
//! the fly, the reports are complete, and malformed inputs give clear errors.

mod common;

use std::fs;
use std::path::Path;

use common::{assert_clean_failure, mocse};
use mocse::corrupt::Corruption;
use mocse::npy::{NpyU8, write_u8};
use mocse::robustness::CorruptionReport;

fn tiny_run(out: &Path) {
    let r = common::tiny_run(out.to_str().unwrap(), "1", &[]);
    assert!(r.ok, "{}", r.stderr);
}

fn report(path: &Path) -> CorruptionReport {
    serde_json::from_slice(&fs::read(path).unwrap()).unwrap()
}

#[test]
fn written_set_evaluates_like_the_corruptions_generated_on_the_fly() {
    let dir = tempfile::tempdir().unwrap();
    let p = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    tiny_run(&dir.path().join("run"));

    #[rustfmt::skip]
    let r = mocse(&[
        "corrupt", "--input", "synthetic", "--limit", "24", "--corruption", "all", "--seed", "3",
        "--out", &p("set"), "--gallery", &p("gallery.png"), "--gallery-image", "5", "--device", "cpu",
    ]);
    assert!(r.ok, "{}", r.stderr);
    assert!(r.stderr.contains("writing to") && r.stdout.contains("images/s"), "{}\n{}", r.stdout, r.stderr);
    for c in Corruption::ALL {
        let file = NpyU8::open(&dir.path().join(format!("set/{}.npy", c.name()))).unwrap();
        assert_eq!(file.shape(), &[120, 32, 32, 3], "{c}");
    }
    let labels = NpyU8::open(&dir.path().join("set/labels.npy")).unwrap();
    assert_eq!(labels.shape(), &[120]);
    assert_eq!(&labels.data()[..24], &labels.data()[96..], "labels repeat per severity");
    let png = fs::read(p("gallery.png")).unwrap();
    assert_eq!(&png[1..4], b"PNG");

    // The same seed gives the same files (spelt with the flag names eval uses, which the
    // singular ones above alias).
    #[rustfmt::skip]
    let r = mocse(&[
        "corrupt", "--input", "synthetic", "--test-subset", "24", "--corruptions", "fog,glass_blur",
        "--severities", "1-5", "--seed", "3", "--out", &p("again"), "--device", "cpu",
    ]);
    assert!(r.ok, "{}", r.stderr);
    for name in ["fog", "glass_blur"] {
        let a = fs::read(dir.path().join(format!("set/{name}.npy"))).unwrap();
        let b = fs::read(dir.path().join(format!("again/{name}.npy"))).unwrap();
        assert!(a == b, "{name}: same seed, different output");
    }

    #[rustfmt::skip]
    let r = mocse(&[
        "eval", "--run", &p("run"), "--test-subset", "24", "--corruptions", "all", "--seed", "3",
        "--device", "cpu", "--batch-size", "10", "--json", &p("fly.json"), "--markdown", &p("fly.md"), "--csv", &p("fly.csv"),
    ]);
    assert!(r.ok, "{}", r.stderr);
    assert!(r.stdout.contains("mean over all 19 corruptions"), "{}", r.stdout);
    #[rustfmt::skip]
    let r = mocse(&[
        "eval", "--run", &p("run"), "--test-subset", "24", "--cifar10c", &p("set"), "--device", "cpu",
        "--json", &p("files.json"),
    ]);
    assert!(r.ok, "{}", r.stderr);
    let (fly, files) = (report(&dir.path().join("fly.json")), report(&dir.path().join("files.json")));
    assert_eq!(fly.corruptions, files.corruptions, "files and on-the-fly generation disagree");
    assert_eq!(fly.clean_accuracy, files.clean_accuracy);
    assert_eq!(fly.corruptions.len(), 19);
    for row in fly.corruptions.values() {
        assert_eq!(row.len(), 6, "5 severities and the mean");
    }
    let mean_19 = fly.corruptions.values().map(|r| r["mean"]).sum::<f64>() / 19.0;
    assert!((fly.mean_19.unwrap() - mean_19).abs() < 1e-12);
    assert!(fly.mean_15.is_some() && fly.per_severity.len() == 5 && fly.per_group.len() == 4);
    let csv = fs::read_to_string(p("fly.csv")).unwrap();
    assert!(csv.starts_with("corruption,group,benchmark,severity,accuracy\nclean,"), "{csv}");
    assert_eq!(csv.lines().filter(|l| l.starts_with("frost,Weather,true,")).count(), 6);
    assert!(fs::read_to_string(p("fly.md")).unwrap().contains("| Weather | frost |"));

    // A subset of severities and corruptions: the means that need all corruptions are absent.
    #[rustfmt::skip]
    let r = mocse(&[
        "eval", "--run", &p("run"), "--test-subset", "24", "--corruptions", "fog,contrast", "--severities", "2-3",
        "--seed", "3", "--device", "cpu", "--json", &p("part.json"),
    ]);
    assert!(r.ok, "{}", r.stderr);
    let part = report(&dir.path().join("part.json"));
    assert_eq!(part.mean_19, None);
    assert_eq!(part.corruptions["fog"]["2"], fly.corruptions["fog"]["2"]);
    assert_eq!(part.severities, vec![2, 3]);

    // Reports of different severities (or images, or seeds) are refused unless forced.
    let (fly_json, part_json) = (p("fly.json"), p("part.json"));
    let compare_part = |extra: &[&str]| {
        let mut args = vec!["compare", fly_json.as_str(), &part_json, "--labels", "all,part"];
        args.extend_from_slice(extra);
        mocse(&args)
    };
    let refused = compare_part(&[]);
    assert_clean_failure(&refused, "not measured on the same images");
    assert!(
        refused.stderr.contains("severities: all has [1, 2, 3, 4, 5], part has [2, 3]"),
        "{}",
        refused.stderr
    );
    let r = compare_part(&["--force", "--chart", &p("chart.png")]);
    assert!(r.ok, "{}", r.stderr);
    assert!(r.stderr.contains("warning: comparing reports measured on different images"), "{}", r.stderr);
    assert!(
        r.stdout.contains("**Not like for like**") && r.stdout.contains("severities: all has"),
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains("| | | all | part |") && r.stdout.contains("natural samples"), "{}", r.stdout);
    assert!(r.stdout.contains("| Weather | snow |") && r.stdout.contains("n/a"), "{}", r.stdout);
    assert_eq!(&fs::read(p("chart.png")).unwrap()[1..4], b"PNG");
    #[rustfmt::skip]
    let r = mocse(&[
        "eval", "--run", &p("run"), "--test-subset", "24", "--corruptions", "fog,contrast", "--seed", "4",
        "--device", "cpu", "--json", &p("seed4.json"),
    ]);
    assert!(r.ok, "{}", r.stderr);
    let r = mocse(&["compare", &p("fly.json"), &p("seed4.json")]);
    assert_clean_failure(
        &r,
        "corrupted images: run (1) has generated with seed 3, run (2) has generated with seed 4",
    );

    // Alike reports of part of the corruptions: bold best values, the extra corruptions marked,
    // partial group means marked, a difference column and accuracy against severity.
    #[rustfmt::skip]
    let r = mocse(&[
        "eval", "--run", &p("run"), "--test-subset", "24", "--corruptions", "gaussian_noise,fog,contrast",
        "--seed", "3", "--device", "cpu", "--json", &p("three.json"),
    ]);
    assert!(r.ok, "{}", r.stderr);
    let three = report(&dir.path().join("three.json"));
    #[rustfmt::skip]
    let r = mocse(&[
        "compare", &p("fly.json"), &p("three.json"), "--labels", "all,three", "--difference",
        "--severity-chart", &p("severity.png"),
    ]);
    assert!(r.ok, "{}", r.stderr);
    let table = &r.stdout;
    assert!(table.starts_with("Accuracy (%), higher is better"), "{table}");
    assert!(!table.contains("Not like for like"), "{table}");
    assert!(table.contains("| | | all | three | three − all |"), "{table}");
    let fog = format!("{:.2}", 100.0 * fly.corruptions["fog"]["mean"]);
    assert!(table.contains(&format!("| fog | **{fog}** | **{fog}** | +0.00 |")), "{table}");
    assert!(table.contains("| speckle noise † |"), "{table}");
    assert!(table.contains("† One of the 4 extra corruptions"), "{table}");
    let noise = format!("{:.2}", 100.0 * three.per_group["Noise"]);
    let partial_noise = table.lines().find(|l| l.contains("*noise average*")).unwrap();
    // A partial average is neither ranked against the full one nor subtracted from it.
    assert!(partial_noise.ends_with(&format!("| {noise} (1 of 4) | n/a |")), "{table}");
    assert!(!partial_noise.contains("**"), "{table}");
    assert!(table.contains("(k of n): a partial average"), "{table}");
    let clean = format!("{:.2}", 100.0 * fly.clean_accuracy);
    assert!(table.contains(&format!("| natural samples | **{clean}** | **{clean}** | +0.00 |")), "{table}");
    assert!(r.stderr.contains("severity.png"), "{}", r.stderr);
    let png = fs::read(p("severity.png")).unwrap();
    assert_eq!(&png[1..4], b"PNG");
    assert_clean_failure(&mocse(&["compare", &p("fly.json"), "--labels", "a,b"]), "--labels names 2 columns");
    assert_clean_failure(&mocse(&["compare", &p("fly.csv")]), "is not a corruption report");
}

#[test]
fn malformed_cifar10c_directories_are_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    tiny_run(&run);
    let set = dir.path().join("set");
    fs::create_dir(&set).unwrap();
    let eval = |extra: &[&str]| {
        let mut args = vec!["eval", "--run", run.to_str().unwrap(), "--test-subset", "8", "--device", "cpu"];
        args.extend_from_slice(extra);
        mocse(&args)
    };
    let set_s = set.to_str().unwrap();
    let fog = ["--cifar10c", set_s, "--corruptions", "fog"];
    assert_clean_failure(&eval(&["--cifar10c", "/nonexistent/c10c"]), "is not a directory");
    assert_clean_failure(&eval(&["--severities", "2"]), "give --corruptions");
    assert_clean_failure(&eval(&["--cifar10c", set_s, "--seed", "1"]), "the files of --cifar10c are fixed");
    assert_clean_failure(&eval(&fog), "labels.npy");

    // The labels of the synthetic test set, then variations of them.
    let labels: Vec<u8> = {
        let r = mocse(&[
            "corrupt",
            "--input",
            "synthetic",
            "--limit",
            "8",
            "--corruption",
            "fog",
            "--out",
            set_s,
            "--device",
            "cpu",
        ]);
        assert!(r.ok, "{}", r.stderr);
        NpyU8::open(&set.join("labels.npy")).unwrap().data().to_vec()
    };
    fs::remove_file(set.join("corrupt.json")).unwrap(); // from here on: the published layout, 5 severities
    assert!(eval(&fog).ok);
    write_u8(&set.join("labels.npy"), &[39], &labels[..39]).unwrap();
    assert_clean_failure(&eval(&fog), "not a multiple of the 5 severities");
    let mut shuffled = labels.clone();
    shuffled.swap(8, 9);
    if shuffled != labels {
        write_u8(&set.join("labels.npy"), &[40], &shuffled).unwrap();
        assert_clean_failure(&eval(&fog), "severity block 2 differ");
    }
    let mut other = labels.clone();
    for l in &mut other {
        *l = (*l + 1) % 10;
    }
    write_u8(&set.join("labels.npy"), &[40], &other).unwrap();
    assert_clean_failure(&eval(&fog), "do not match the test set");
    write_u8(&set.join("labels.npy"), &[40], &labels).unwrap();

    let fog_file = set.join("fog.npy");
    let good = fs::read(&fog_file).unwrap();
    fs::write(&fog_file, &good[..good.len() - 100]).unwrap();
    assert_clean_failure(&eval(&fog), "fog.npy");
    write_u8(&fog_file, &[40, 32, 32, 1], &vec![0; 40 * 1024]).unwrap();
    assert_clean_failure(&eval(&fog), "expected (40, 32, 32, 3)");
    fs::write(&fog_file, b"\x93NUMPY\x01\x00v\x00{'descr': '<f4', 'fortran_order': False, 'shape': (1,), }")
        .unwrap();
    assert_clean_failure(&eval(&fog), "fog.npy");
    fs::write(&fog_file, &good).unwrap();
    assert_clean_failure(&eval(&["--cifar10c", set_s, "--corruptions", "snow"]), "snow.npy is missing");
    assert!(eval(&fog).ok);
}

#[test]
fn corrupt_rejects_bad_input_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let out_s = out.to_str().unwrap();
    let npy = dir.path().join("imgs.npy");
    write_u8(&npy, &[2, 32, 32], &[0; 2048]).unwrap();
    let npy_s = npy.to_str().unwrap();
    assert_clean_failure(
        &mocse(&["corrupt", "--input", npy_s, "--out", out_s]),
        "expected uint8 images of shape (N, 32, 32, 3)",
    );
    assert_clean_failure(
        &mocse(&["corrupt", "--input", "/nonexistent.npy", "--out", out_s]),
        "does not exist",
    );
    assert_clean_failure(&mocse(&["corrupt", "--input", "imgs.png", "--out", out_s]), "expected FILE.npy");
    assert_clean_failure(
        &mocse(&["corrupt", "--input", "synthetic", "--corruption", "rain", "--out", out_s]),
        "unknown corruption 'rain'",
    );
    assert_clean_failure(
        &mocse(&["corrupt", "--input", "synthetic", "--severity", "6", "--out", out_s]),
        "values 1 to 5",
    );
    #[rustfmt::skip]
    assert_clean_failure(
        &mocse(&["corrupt", "--input", "synthetic", "--limit", "4", "--gallery", "g.png", "--gallery-image", "4", "--out", out_s]),
        "--gallery-image 4 is out of range",
    );

    // Frost's photographs missing and not fetchable: a clear error before anything is written.
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_mocse"))
        .args(["corrupt", "--input", "synthetic", "--limit", "2", "--out", out_s, "--device", "cpu"])
        .env("MOCSE_CACHE", dir.path().join("empty-cache"))
        .env("MOCSE_PYTHON", dir.path().join("no-python"))
        .env_remove("MOCSE_FROST_WHEEL")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success() && stderr.contains("pip download imagecorruptions==1.1.2"), "{stderr}");
    assert!(!out.exists(), "nothing is written when a corruption cannot run");

    // A user's .npy of images: no labels are written, and one severity gives N rows.
    write_u8(&npy, &[3, 32, 32, 3], &(0..3 * 3072).map(|i| (i % 251) as u8).collect::<Vec<_>>()).unwrap();
    let r = mocse(&[
        "corrupt",
        "--input",
        npy_s,
        "--corruption",
        "contrast",
        "--severity",
        "4",
        "--out",
        out_s,
        "--device",
        "cpu",
    ]);
    assert!(r.ok, "{}", r.stderr);
    assert_eq!(NpyU8::open(&out.join("contrast.npy")).unwrap().shape(), &[3, 32, 32, 3]);
    assert!(!out.join("labels.npy").exists());
}
