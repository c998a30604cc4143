//! The arithmetic of the convolutions and the classifier head (`--precision`): f32 throughout,
//! or bf16 operands with f32 accumulation (the tensor cores' mode; PyTorch's autocast to bf16).
//! Everything else stays f32 either way: master weights, batch-norm statistics, the loss and
//! the SGD update. bf16 has f32's exponent range, so its gradients need no loss scaling.
//!
//! The setting belongs to the calling thread, which is the one that launches an op's kernels:
//! the CLI sets it once, a test sets it around what it runs (`scoped`), and parallel tests
//! cannot see each other's.

use std::cell::Cell;
use std::fmt;

use crate::device::Device;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    #[default]
    F32,
    Bf16,
}

impl Precision {
    /// bf16 on the cuda device (tensor cores), f32 on the others: the cpu device computes in f32
    /// only, and emu, which checks kernels, runs either when asked.
    pub fn default_for(device: Device) -> Precision {
        if device == Device::Cuda { Precision::Bf16 } else { Precision::F32 }
    }

    /// Whether `device` computes in this precision.
    pub fn check_device(self, device: Device) -> anyhow::Result<()> {
        anyhow::ensure!(
            self == Precision::F32 || device != Device::Cpu,
            "--precision bf16 runs on the cuda and emu devices; the cpu device computes in f32"
        );
        Ok(())
    }

    /// The suffix of the kernels of this precision (`conv2d_fwd_bf16`).
    pub fn kernel_suffix(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
        }
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.kernel_suffix())
    }
}

impl std::str::FromStr for Precision {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "f32" => Ok(Precision::F32),
            "bf16" => Ok(Precision::Bf16),
            _ => Err(format!("unknown precision '{s}'; expected f32 or bf16")),
        }
    }
}

thread_local! {
    static CURRENT: Cell<Precision> = const { Cell::new(Precision::F32) };
}

/// The calling thread's precision (f32 unless set).
pub fn current() -> Precision {
    CURRENT.with(Cell::get)
}

/// Sets the calling thread's precision.
pub fn set(precision: Precision) {
    CURRENT.with(|c| c.set(precision));
}

/// Runs `f` with `precision`, then restores the previous one (also when `f` panics).
pub fn scoped<R>(precision: Precision, f: impl FnOnce() -> R) -> R {
    struct Restore(Precision);
    impl Drop for Restore {
        fn drop(&mut self) {
            set(self.0);
        }
    }
    let _restore = Restore(current());
    set(precision);
    f()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scoped_restores_and_threads_are_separate() {
        assert_eq!(current(), Precision::F32);
        scoped(Precision::Bf16, || {
            assert_eq!(current(), Precision::Bf16);
            assert_eq!(std::thread::spawn(current).join().unwrap(), Precision::F32);
        });
        assert_eq!(current(), Precision::F32);
        assert!(std::panic::catch_unwind(|| scoped(Precision::Bf16, || panic!("inside"))).is_err());
        assert_eq!(current(), Precision::F32);
    }

    #[test]
    fn parses_prints_and_refuses_bf16_on_the_cpu() {
        for p in [Precision::F32, Precision::Bf16] {
            assert_eq!(p.to_string().parse::<Precision>(), Ok(p));
        }
        assert!("fp16".parse::<Precision>().unwrap_err().contains("expected f32 or bf16"));
        assert!(Precision::Bf16.check_device(Device::Cpu).is_err());
        assert!(Precision::Bf16.check_device(Device::Emu).is_ok());
        assert_eq!(Precision::default_for(Device::Cuda), Precision::Bf16);
        assert_eq!(Precision::default_for(Device::Cpu), Precision::F32);
    }
}
