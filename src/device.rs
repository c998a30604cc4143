//! Devices that run the ops. `cpu` is native Rust; later back ends (the CUDA kernels on a GPU,
//! and the same kernels through the CPU emulator) plug in here and in `tensor::Storage`.

use std::fmt;
use std::str::FromStr;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Device {
    Cpu,
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
            DeviceChoice::Exact(d) => Ok((d, format!("device {d} (requested)"))),
            DeviceChoice::Auto => {
                Ok((Device::Cpu, "device cpu (auto: this build has no GPU back end yet)".to_string()))
            }
        }
    }
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Device::Cpu => write!(f, "cpu"),
        }
    }
}

impl FromStr for DeviceChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(DeviceChoice::Auto),
            "cpu" => Ok(DeviceChoice::Exact(Device::Cpu)),
            "cuda" | "emu" => {
                Err(format!("device '{s}' is not available in this build yet; use 'cpu' or 'auto'"))
            }
            _ => Err(format!("unknown device '{s}'; expected auto or cpu")),
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
