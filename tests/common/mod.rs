//! Helpers shared by the integration tests: running the `mocse` binary and writing data files
//! in the real CIFAR-10 binary format.

#![allow(dead_code)]

use std::path::Path;
use std::process::{Command, Output};

pub struct Run {
    pub ok: bool,
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `mocse` with `args` and captures everything it printed.
pub fn mocse(args: &[&str]) -> Run {
    mocse_env(args, &[])
}

/// Runs `mocse` with `args` and extra environment variables.
pub fn mocse_env(args: &[&str], env: &[(&str, &str)]) -> Run {
    let Output { status, stdout, stderr } = Command::new(env!("CARGO_BIN_EXE_mocse"))
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("the mocse binary runs");
    Run {
        ok: status.success(),
        code: status.code(),
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
    }
}

/// Trains a tiny MoCSE (expert width 2) on the synthetic set on the cpu device into `out`.
pub fn tiny_run(out: &str, epochs: &str, extra: &[&str]) -> Run {
    tiny_run_env(out, epochs, extra, &[])
}

/// [`tiny_run`] with extra environment variables.
pub fn tiny_run_env(out: &str, epochs: &str, extra: &[&str], env: &[(&str, &str)]) -> Run {
    #[rustfmt::skip]
    let mut args = vec![
        "train", "--model", "mocse", "--expert-width", "2", "--data", "synthetic",
        "--train-subset", "96", "--test-subset", "40", "--batch-size", "32",
        "--epochs", epochs, "--device", "cpu", "--out", out,
    ];
    args.extend_from_slice(extra);
    mocse_env(&args, env)
}

/// A failed run that said `needle` and did not panic.
pub fn assert_clean_failure(run: &Run, needle: &str) {
    assert!(!run.ok, "expected failure, got success; stderr:\n{}", run.stderr);
    // 2 is clap's code for a malformed command line, 1 ours for everything else.
    assert!(matches!(run.code, Some(1 | 2)), "exit code {:?}; stderr:\n{}", run.code, run.stderr);
    assert!(!run.stderr.contains("panicked"), "panicked:\n{}", run.stderr);
    assert!(run.stderr.contains(needle), "expected {needle:?} in:\n{}", run.stderr);
}

pub const CIFAR_RECORD: usize = 3073;
pub const CIFAR_RECORDS: usize = 10_000;

/// Writes a CIFAR-10 binary directory (all six files at their real sizes) with pixel values
/// from a simple pattern and labels i % 10.
pub fn write_fake_cifar(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let names = [
        "data_batch_1.bin",
        "data_batch_2.bin",
        "data_batch_3.bin",
        "data_batch_4.bin",
        "data_batch_5.bin",
        "test_batch.bin",
    ];
    for (f, name) in names.iter().enumerate() {
        let mut bytes = vec![0u8; CIFAR_RECORD * CIFAR_RECORDS];
        for (i, rec) in bytes.chunks_exact_mut(CIFAR_RECORD).enumerate() {
            let label = (i % 10) as u8;
            rec[0] = label;
            for (j, px) in rec[1..].iter_mut().enumerate() {
                // Class-dependent brightness per colour plane, so a network can learn it.
                let plane = j / 1024;
                *px = ((label as usize * 25 + plane * 40 + (j * 7 + i + f) % 31) % 256) as u8;
            }
        }
        std::fs::write(dir.join(name), bytes).unwrap();
    }
}

/// The kernel devices present: emu always, cuda when a GPU is usable (else a visible SKIPPED).
pub fn kernel_devices() -> Vec<mocse::device::Device> {
    let mut out = vec![mocse::device::Device::Emu];
    match mocse::gpu::cuda::probe() {
        Ok(_) => out.push(mocse::device::Device::Cuda),
        Err(why) => eprintln!("SKIPPED on cuda: {why:#}"),
    }
    out
}

/// Overwrites element `index` of f32 tensor `name` in a safetensors file in place, found through
/// the file's own header (independently of mocse's reader and writer).
pub fn tamper_f32(path: &Path, name: &str, index: usize, value: f32) {
    let mut bytes = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let start =
        header[name]["data_offsets"][0].as_u64().unwrap_or_else(|| panic!("no tensor {name}")) as usize;
    let at = 8 + n + start + 4 * index;
    bytes[at..at + 4].copy_from_slice(&value.to_le_bytes());
    std::fs::write(path, bytes).unwrap();
}
