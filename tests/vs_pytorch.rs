//! The side-by-side harness (benches/vs_pytorch.py) runs and prints every configuration, without
//! PyTorch: once timing mocse alone, once against a stand-in peer whose fixed numbers make the
//! ratios checkable. The real PyTorch numbers live in BENCHMARKS.md.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

const CONFIGS: [&str; 4] =
    ["preact18-w16-b128", "preact18-w64-b64", "mocse-w16-b64-fused", "mocse-w16-b64-unfused"];

fn harness(args: &[&str]) -> (bool, String, String) {
    let out = Command::new("python3")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/vs_pytorch.py"))
        .args(["--mocse", env!("CARGO_BIN_EXE_mocse"), "--rounds", "1", "--steps", "1", "--warmup", "0"])
        .args(args)
        .output()
        .expect("python3 runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

/// A stand-in for the PyTorch interpreter: checks that it was given mocse's twin directory and
/// answers 100 training and 200 inference images/s.
fn fake_peer(dir: &Path) -> String {
    let path = dir.join("fake-python");
    std::fs::write(
        &path,
        r#"#!/bin/sh
twin=""; layout=""
while [ $# -gt 0 ]; do
  case "$1" in --twin) twin="$2"; shift;; --layout) layout="$2"; shift;; esac; shift
done
test -f "$twin/twin.json" && test -f "$twin/model.safetensors" && test -f "$twin/images.npy" || exit 3
echo '{"train_images_per_s": 100.0, "infer_images_per_s": 200.0, "torch": "stand-in", "layout": "'$layout'",
 "twin_output_relative_diff": 0.0, "twin_loss_relative_diff": 0.0, "mocse_loss": 1.0}' | tr -d '\n'; echo
"#,
    )
    .unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path.to_str().unwrap().to_string()
}

#[test]
fn prints_every_configuration_and_the_ratios() {
    let dir = tempfile::tempdir().unwrap();
    let python = fake_peer(dir.path());
    let json = dir.path().join("out.json");
    let md = dir.path().join("out.md");
    let (ok, stdout, stderr) = harness(&[
        "--python",
        &python,
        "--layouts",
        "channels_last",
        "--eval-images",
        "1",
        "--json",
        json.to_str().unwrap(),
        "--markdown",
        md.to_str().unwrap(),
    ]);
    assert!(ok, "{stdout}\n{stderr}");
    let table = std::fs::read_to_string(&md).unwrap();
    assert!(stdout.contains(&table), "the printed table is the Markdown file's");
    let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let rows = report["rows"].as_array().unwrap();
    assert_eq!(rows.len(), CONFIGS.len());
    for (row, name) in rows.iter().zip(CONFIGS) {
        assert_eq!(row["config"], name);
        assert!(table.lines().any(|l| l.starts_with(&format!("| {name} |"))), "{name} missing:\n{table}");
        let train = row["mocse_train"].as_f64().unwrap();
        let infer = row["mocse_infer"].as_f64().unwrap();
        assert!(train > 0.0 && infer > 0.0);
        assert_eq!(row["torch_train"], 100.0);
        assert!((row["train_ratio"].as_f64().unwrap() - train / 100.0).abs() < 1e-9);
        assert!((row["infer_ratio"].as_f64().unwrap() - infer / 200.0).abs() < 1e-9);
        // The corruption evaluation runs for the fused models.
        assert_eq!(row["eval_images_per_s"].is_number(), !name.ends_with("unfused"), "{row}");
    }
    assert_eq!(report["machine"]["torch"], "stand-in");
    assert!(report["machine"]["cpu"].as_str().is_some_and(|c| !c.is_empty()));
    assert!(table.contains("Twin check"), "{table}");
}

#[test]
fn runs_without_pytorch_and_refuses_bad_options() {
    let (ok, stdout, stderr) =
        harness(&["--without-pytorch", "--configs", "preact18-w16-b128", "--eval-images", "0"]);
    assert!(ok, "{stdout}\n{stderr}");
    assert!(stdout.contains("| preact18-w16-b128 |") && stdout.contains("PyTorch not run"), "{stdout}");

    let (ok, _, stderr) = harness(&["--without-pytorch", "--configs", "resnet50"]);
    assert!(!ok && stderr.contains("unknown configuration 'resnet50'"), "{stderr}");
    let (ok, _, stderr) = harness(&["--python", "/nonexistent/python"]);
    assert!(!ok && stderr.contains("is not an interpreter"), "{stderr}");
}
