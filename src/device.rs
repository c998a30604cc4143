//! Devices that run the ops: `cpu` is native Rust (the reference); `cuda` runs the kernels of
//! `kernels/` on a GPU; `emu` runs the same kernels, through the same launch code, on the CPU
//! under the kernel emulator (slow; for tests and debugging).

use std::fmt;
use std::str::FromStr;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Device {
    Cpu,
    Cuda,
    Emu,
}

/// What the user asked for on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceChoice {
    Auto,
    Exact(Device),
}

impl DeviceChoice {
    /// Resolves `auto` to the best device present and says why, so a user knows what ran.
    pub fn resolve(self) -> anyhow::Result<(Device, String)> {
        match self {
            DeviceChoice::Exact(Device::Cuda) => {
                let b = crate::gpu::cuda::backend()?;
                Ok((Device::Cuda, format!("device cuda: {} (requested)", b.describe())))
            }
            DeviceChoice::Exact(d) => Ok((d, format!("device {d} (requested)"))),
            DeviceChoice::Auto => match crate::gpu::cuda::probe() {
                Ok(_) => {
                    let b = crate::gpu::cuda::backend()?;
                    Ok((Device::Cuda, format!("device cuda: {} (auto)", b.describe())))
                }
                Err(why) => Ok((Device::Cpu, format!("device cpu (auto: {why:#})"))),
            },
        }
    }
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Device::Cpu => write!(f, "cpu"),
            Device::Cuda => write!(f, "cuda"),
            Device::Emu => write!(f, "emu"),
        }
    }
}

impl FromStr for DeviceChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(DeviceChoice::Auto),
            "cpu" => Ok(DeviceChoice::Exact(Device::Cpu)),
            "cuda" => Ok(DeviceChoice::Exact(Device::Cuda)),
            "emu" => Ok(DeviceChoice::Exact(Device::Emu)),
            _ => Err(format!("unknown device '{s}'; expected auto, cpu, cuda or emu")),
        }
    }
}

impl fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceChoice::Auto => write!(f, "auto"),
            DeviceChoice::Exact(d) => write!(f, "{d}"),
        }
    }
}
