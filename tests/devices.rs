//! The kernel devices against the cpu device, with the same test bodies: every kernel (through
//! `mocse::selftest`, which is also `mocse selftest`), and the fused-equals-unfused identity.
//! On this machine that is the `emu` device; the same tests run on `cuda` when a GPU is present,
//! and say so when it is not.

use mocse::device::Device;
use mocse::selftest;

fn check_device(device: Device) -> Vec<selftest::CaseResult> {
    let results = selftest::run(
        device,
        |_| true,
        |r| println!("{device} {:<52} {:.3e} (tolerance {:.0e})", r.name, r.max_relative_error, r.tolerance),
    );
    let failed: Vec<String> = results
        .iter()
        .filter(|r| !r.passed())
        .map(|r| format!("{}: {:e} {}", r.name, r.max_relative_error, r.error.clone().unwrap_or_default()))
        .collect();
    assert!(failed.is_empty(), "kernels disagree with the cpu device on {device}:\n{}", failed.join("\n"));
    results
}

/// Also: every kernel in kernels/ is launched by a case that compares it with an independent
/// implementation, except those whose independent checks are reference outputs of other
/// programs (`selftest::CHECKED_AGAINST_REFERENCE_OUTPUTS`).
#[test]
fn every_kernel_matches_the_cpu_device_on_emu() {
    let results = check_device(Device::Emu);
    let uncovered = selftest::kernels_without_a_case(&results);
    assert!(uncovered.is_empty(), "kernels no selftest case compares with the cpu device: {uncovered:?}");
}

#[test]
#[ignore = "needs a GPU: scripts/gpu-check.sh runs it (--include-ignored)"]
fn every_kernel_matches_the_cpu_device_on_cuda() {
    mocse::gpu::cuda::probe().expect("a usable GPU");
    check_device(Device::Cuda);
}

/// A barrier that only half of a block reaches is reported as an error that names the kernel,
/// never a hang, and the emulator keeps working afterwards.
#[test]
fn emu_reports_a_deadlock_by_kernel_name_and_recovers() {
    use mocse::gpu::{self, GpuBuffer, LaunchConfig};
    let out = GpuBuffer::zeros(Device::Emu, 32 * 4).unwrap();
    let cfg = LaunchConfig::new([1, 1, 1], [32, 1, 1]);
    let err = gpu::launch(Device::Emu, "cuemu_test_deadlock", cfg, &[out.arg()]).unwrap_err().to_string();
    assert!(err.contains("deadlock") && err.contains("cuemu_test_deadlock"), "{err}");
    assert!(err.contains("16 threads at __syncthreads"), "{err}");
    check_device(Device::Emu);
}

/// Both kernel devices refuse more dynamic shared memory than a CUDA launch gets by default,
/// so a kernel that passes on the emulator cannot fail to launch on a GPU for it.
#[test]
fn dynamic_shared_memory_over_the_launch_default_is_refused_by_name() {
    use mocse::gpu::{self, GpuBuffer, LaunchConfig, MAX_DYNAMIC_SHARED_BYTES};
    let out = GpuBuffer::zeros(Device::Emu, 32 * 4).unwrap();
    let mut cfg = LaunchConfig::new([1, 1, 1], [32, 1, 1]);
    cfg.shared_bytes = MAX_DYNAMIC_SHARED_BYTES as u32 + 4;
    let err =
        gpu::launch(Device::Emu, "relu_fwd_f32", cfg, &[out.arg(), out.arg(), gpu::int(32)]).unwrap_err();
    assert!(err.to_string().contains("relu_fwd_f32") && err.to_string().contains("shared memory"), "{err}");
    cfg.shared_bytes = MAX_DYNAMIC_SHARED_BYTES as u32;
    gpu::launch(Device::Emu, "relu_fwd_f32", cfg, &[out.arg(), out.arg(), gpu::int(32)]).unwrap();
}

/// A device tensor with more elements than the kernels' int indexing (and a grid-stride loop's
/// last step) allows is refused with a clear error before anything is allocated.
#[test]
fn tensors_past_the_kernels_index_range_are_refused() {
    let too_many = mocse::gpu::MAX_ELEMENTS + 1;
    let err = mocse::tensor::Tensor::output_on(Device::Emu, &[too_many]).expect_err("refused");
    assert!(format!("{err:#}").contains("larger than the emu device's kernels index"), "{err:#}");
    let err = mocse::tensor::Tensor::zeros_on(Device::Emu, &[usize::MAX, 2]).expect_err("refused");
    assert!(format!("{err:#}").contains("use a smaller batch"), "{err:#}");
    assert!(mocse::tensor::Tensor::output_on(Device::Emu, &[1 << 20]).is_ok());
}
