//! The kernel devices against the cpu device, with the same test bodies: every kernel (through
//! `mocse::selftest`, which is also `mocse selftest`), and the fused-equals-unfused identity.
//! On this machine that is the `emu` device; the same tests run on `cuda` when a GPU is present,
//! and say so when it is not.

use mocse::device::Device;
use mocse::selftest;

fn check_device(device: Device) {
    let results = selftest::run(device, |r| {
        println!("{device} {:<52} {:.3e} (tolerance {:.0e})", r.name, r.max_relative_error, r.tolerance)
    });
    let failed: Vec<String> = results
        .iter()
        .filter(|r| !r.passed())
        .map(|r| format!("{}: {:e} {}", r.name, r.max_relative_error, r.error.clone().unwrap_or_default()))
        .collect();
    assert!(failed.is_empty(), "kernels disagree with the cpu device on {device}:\n{}", failed.join("\n"));
}

#[test]
fn every_kernel_matches_the_cpu_device_on_emu() {
    check_device(Device::Emu);
}

#[test]
fn every_kernel_matches_the_cpu_device_on_cuda() {
    if let Err(why) = mocse::gpu::cuda::probe() {
        println!("SKIPPED: no GPU here ({why:#}); the cuda device is checked on a GPU machine");
        return;
    }
    check_device(Device::Cuda);
}
