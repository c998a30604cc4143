//! Every CPU convolution choice gives the same network output and loss: the default (direct
//! microkernels where they are faster, AVX-512 or AVX2 when the CPU has it), the AVX2 and the
//! portable microkernels (`MOCSE_CPU_SIMD=avx2|portable`, what a CPU without AVX-512 or without
//! AVX2 runs), and the GEMM, the direct kernels or Winograd F(2x2) or F(4x4) wherever each
//! applies (`MOCSE_CPU_CONV=gemm|direct|winograd|winograd4`), for both models, through `mocse
//! bench --twin` (a training-mode forward pass and the loss on the benchmark's batch).

mod common;

use std::path::Path;

fn twin(dir: &Path, model: &[&str], env: &[(&str, &str)]) -> (Vec<f32>, f64) {
    let mut args = vec!["bench", "--what", "train-step", "--device", "cpu", "--steps", "1", "--warmup", "0"];
    args.extend_from_slice(model);
    args.extend_from_slice(&["--twin", dir.to_str().unwrap()]);
    let run = common::mocse_env(&args, env);
    assert!(run.ok, "{}", run.stderr);
    let output: Vec<f32> = npyz::NpyFile::new(std::fs::read(dir.join("output.npy")).unwrap().as_slice())
        .unwrap()
        .into_vec()
        .unwrap();
    let record: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("twin.json")).unwrap()).unwrap();
    (output, record["loss"].as_f64().unwrap())
}

#[test]
fn every_kernel_choice_computes_the_same_network() {
    let tmp = tempfile::tempdir().unwrap();
    for model in [
        &["--model", "preact18", "--width", "16", "--batch-size", "3"][..],
        &["--model", "mocse", "--expert-width", "8", "--batch-size", "2"][..],
    ] {
        let (reference, loss) = twin(&tmp.path().join("default"), model, &[]);
        let scale = reference.iter().fold(1.0f32, |m, v| m.max(v.abs()));
        for env in [
            ("MOCSE_CPU_SIMD", "avx2"),
            ("MOCSE_CPU_SIMD", "portable"),
            ("MOCSE_CPU_CONV", "gemm"),
            ("MOCSE_CPU_CONV", "direct"),
            ("MOCSE_CPU_CONV", "winograd"),
            ("MOCSE_CPU_CONV", "winograd4"),
        ] {
            let (output, other_loss) = twin(&tmp.path().join(env.1), model, &[env]);
            assert_eq!(output.len(), reference.len());
            for (a, b) in output.iter().zip(&reference) {
                assert!((a - b).abs() <= 1e-4 * scale, "{model:?} {env:?}: {a} vs {b}");
            }
            assert!(
                (other_loss - loss).abs() <= 1e-5 * loss.abs().max(1.0),
                "{model:?} {env:?}: loss {other_loss} vs {loss}"
            );
        }
    }
}
