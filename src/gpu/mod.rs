//! The kernel path shared by the `cuda` and `emu` devices: device memory, and launching a
//! kernel of `kernels/` by name with a grid, a block and a `void**` argument array. The code
//! that chooses kernels, grids and arguments (in `src/ops/`) is the same for both devices;
//! only the memory and launch primitives below differ, so the emulator tests the launch code
//! as well as the kernel bodies.

pub mod cuda;
pub mod cudnn;
pub mod emu;
pub mod graph;
pub mod nvrtc;

use std::ffi::c_void;

use anyhow::{Result, bail, ensure};

use crate::device::Device;
use graph::Initial;

/// Sources of `kernels/`, embedded at build time.
pub mod sources {
    include!(concat!(env!("OUT_DIR"), "/kernel_index.rs"));
}

/// One kernel argument, as `cuLaunchKernel` receives it.
#[derive(Clone, Copy, Debug)]
pub enum Arg {
    /// A device address (a `T*` parameter).
    Ptr(u64),
    I32(i32),
    U32(u32),
    U64(u64),
    F32(f32),
    F64(f64),
}

impl From<i32> for Arg {
    fn from(v: i32) -> Arg {
        Arg::I32(v)
    }
}

impl From<f32> for Arg {
    fn from(v: f32) -> Arg {
        Arg::F32(v)
    }
}

/// The most elements a tensor on a kernel device may have: kernels index with `int`, and a
/// grid-stride loop's index (below the count) plus its stride (at most 4096 x 256 = 2^20,
/// `LaunchConfig::for_elements`) must not overflow.
pub const MAX_ELEMENTS: usize = i32::MAX as usize - (1 << 20);

/// `usize` sizes are passed as `int`: no device tensor has more than `MAX_ELEMENTS` elements.
pub fn int(v: usize) -> Arg {
    assert!(v <= i32::MAX as usize, "size {v} does not fit a kernel's int parameter");
    Arg::I32(v as i32)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LaunchConfig {
    pub grid: [u32; 3],
    pub block: [u32; 3],
    pub shared_bytes: u32,
}

impl LaunchConfig {
    /// For a kernel that walks a table of tensors: blockIdx.y the tensor (looping past 65,535),
    /// at most `blocks` blocks of 256 along x over the longest.
    pub fn per_tensor(lengths: impl Iterator<Item = usize>, blocks: u32) -> LaunchConfig {
        let (mut count, mut longest) = (0usize, 1usize);
        for n in lengths {
            count += 1;
            longest = longest.max(n);
        }
        let mut config = LaunchConfig::for_elements(longest);
        config.grid[0] = config.grid[0].min(blocks);
        config.grid[1] = count.clamp(1, 65_535) as u32;
        config
    }

    /// One thread per element in blocks of 256, at most 4096 blocks (kernels loop over the rest).
    pub fn for_elements(n: usize) -> LaunchConfig {
        let blocks = n.div_ceil(256).clamp(1, 4096) as u32;
        LaunchConfig { grid: [blocks, 1, 1], block: [256, 1, 1], shared_bytes: 0 }
    }

    pub fn new(grid: [u32; 3], block: [u32; 3]) -> LaunchConfig {
        LaunchConfig { grid, block, shared_bytes: 0 }
    }
}

/// Device memory of the `cuda` or `emu` device. Untyped; kernels see typed pointers.
pub struct GpuBuffer {
    bytes: usize,
    mem: Mem,
    /// Allocated during a graph capture (`graph::Graph::capture`): the graph's memory.
    in_capture: bool,
}

enum Mem {
    Emu(emu::HostAllocation),
    Cuda(cuda::DeviceAllocation),
}

impl GpuBuffer {
    pub fn zeros(device: Device, bytes: usize) -> Result<GpuBuffer> {
        let mem = match device {
            Device::Emu => Mem::Emu(emu::HostAllocation::zeros(bytes)),
            Device::Cuda => Mem::Cuda(cuda::DeviceAllocation::zeros(bytes)?),
            Device::Cpu => bail!("GPU memory requested on the cpu device"),
        };
        Ok(GpuBuffer::new(bytes, mem, Initial::Zeros))
    }

    fn new(bytes: usize, mem: Mem, initial: Initial) -> GpuBuffer {
        let mut b = GpuBuffer { bytes, mem, in_capture: false };
        b.in_capture = graph::on_allocate(b.device(), b.address(), bytes, initial);
        b
    }

    /// An output buffer that the kernel writing it fills completely. Undefined contents on
    /// `cuda`; all bits set on `emu` (NaN as f32 and f64), so that an element a kernel misses
    /// shows up in every comparison with the cpu device instead of passing as a zero.
    pub fn for_output(device: Device, bytes: usize) -> Result<GpuBuffer> {
        let (mem, initial) = match device {
            Device::Emu => {
                (Mem::Emu(emu::HostAllocation::from_bytes(&vec![0xFF; bytes])), Initial::Fill(0xFF))
            }
            Device::Cuda => (Mem::Cuda(cuda::DeviceAllocation::uninit(bytes)?), Initial::Undefined),
            Device::Cpu => bail!("GPU memory requested on the cpu device"),
        };
        Ok(GpuBuffer::new(bytes, mem, initial))
    }

    pub fn upload<T: bytemuck::Pod>(device: Device, data: &[T]) -> Result<GpuBuffer> {
        let bytes: &[u8] = bytemuck::cast_slice(data);
        let mem = match device {
            Device::Emu => Mem::Emu(emu::HostAllocation::from_bytes(bytes)),
            // During a capture from a pinned copy that the graph keeps (a pageable one is refused).
            Device::Cuda if graph::capturing() => {
                let (allocation, copy) = cuda::DeviceAllocation::from_pinned_copy(bytes)?;
                graph::keep_pinned(copy);
                Mem::Cuda(allocation)
            }
            Device::Cuda => Mem::Cuda(cuda::DeviceAllocation::from_bytes(bytes)?),
            Device::Cpu => bail!("GPU memory requested on the cpu device"),
        };
        Ok(GpuBuffer::new(bytes.len(), mem, Initial::Bytes(bytes)))
    }

    /// Overwrites the buffer's first bytes with `data` (outside a graph capture: the inputs a
    /// graph's replay reads are written this way before it).
    pub fn write<T: bytemuck::Pod>(&self, data: &[T]) -> Result<()> {
        graph::ensure_not_capturing("writing device memory from the host")?;
        let bytes: &[u8] = bytemuck::cast_slice(data);
        ensure!(bytes.len() <= self.bytes, "{} bytes written into a buffer of {}", bytes.len(), self.bytes);
        match &self.mem {
            // SAFETY: the allocation holds at least `self.bytes` bytes; no kernel runs (launches
            // on the emulator are synchronous).
            Mem::Emu(m) => unsafe {
                std::ptr::copy_nonoverlapping(bytes.as_ptr(), m.address() as *mut u8, bytes.len())
            },
            Mem::Cuda(m) => m.copy_from(bytes)?,
        }
        Ok(())
    }

    /// Overwrites the buffer's first bytes with all of `src`, on the device (outside a capture).
    pub fn copy_from(&self, src: &GpuBuffer) -> Result<()> {
        graph::ensure_not_capturing("a copy outside the captured work")?;
        ensure!(src.bytes <= self.bytes, "{} bytes copied into a buffer of {}", src.bytes, self.bytes);
        match (&self.mem, &src.mem) {
            // SAFETY: both allocations hold the bytes copied; distinct buffers never overlap.
            (Mem::Emu(d), Mem::Emu(s)) => unsafe {
                std::ptr::copy_nonoverlapping(s.address() as *const u8, d.address() as *mut u8, src.bytes)
            },
            (Mem::Cuda(d), Mem::Cuda(_)) => d.copy_within_device(src.address(), src.bytes)?,
            _ => bail!("a copy between devices"),
        }
        Ok(())
    }

    pub fn download<T: bytemuck::Pod>(&self) -> Result<Vec<T>> {
        graph::ensure_not_capturing("reading device memory back")?;
        let mut out = vec![T::zeroed(); self.bytes / std::mem::size_of::<T>()];
        let dst: &mut [u8] = bytemuck::cast_slice_mut(&mut out);
        match &self.mem {
            Mem::Emu(m) => dst.copy_from_slice(m.bytes()),
            Mem::Cuda(m) => m.copy_to(dst)?,
        }
        Ok(out)
    }

    pub fn device(&self) -> Device {
        match self.mem {
            Mem::Emu(_) => Device::Emu,
            Mem::Cuda(_) => Device::Cuda,
        }
    }

    pub fn len_bytes(&self) -> usize {
        self.bytes
    }

    /// The address kernels see.
    pub fn address(&self) -> u64 {
        match &self.mem {
            Mem::Emu(m) => m.address(),
            Mem::Cuda(m) => m.address(),
        }
    }

    pub fn arg(&self) -> Arg {
        Arg::Ptr(self.address())
    }

    /// The cudarc allocation of a `cuda` buffer (for cuDNN).
    pub fn cuda_slice(&self) -> Option<&cudarc::driver::CudaSlice<u8>> {
        match &self.mem {
            Mem::Cuda(m) => Some(m.slice()),
            Mem::Emu(_) => None,
        }
    }

    pub fn from_cuda_slice(slice: cudarc::driver::CudaSlice<u8>) -> GpuBuffer {
        GpuBuffer::new(slice.len(), Mem::Cuda(cuda::DeviceAllocation::from_slice(slice)), Initial::Undefined)
    }
}

impl Drop for GpuBuffer {
    fn drop(&mut self) {
        if !graph::capturing() {
            return;
        }
        // Freed during a capture: the emulator's memory goes to the graph (cuda's free is a node
        // of it); memory from before the capture is refused there.
        let memory = match &mut self.mem {
            Mem::Emu(m) => Some(std::mem::replace(m, emu::HostAllocation::zeros(0))),
            Mem::Cuda(_) => None,
        };
        drop(graph::on_free(self.in_capture, memory));
    }
}

/// Dynamic shared memory a launch may ask for on either device.
pub const MAX_DYNAMIC_SHARED_BYTES: usize = 48 * 1024;

thread_local! {
    /// The kernels launched on this thread inside `launches_of`.
    static LAUNCHED: std::cell::RefCell<Option<std::collections::BTreeSet<String>>> =
        const { std::cell::RefCell::new(None) };
}

/// Runs `f` and returns, with its result, the names of the kernels it launched on this thread
/// (the selftest's record of which case checks which kernel).
pub fn launches_of<R>(f: impl FnOnce() -> R) -> (R, std::collections::BTreeSet<String>) {
    let outer = LAUNCHED.with(|l| l.borrow_mut().replace(Default::default()));
    let result = f();
    let inner = LAUNCHED.with(|l| l.replace(outer)).unwrap_or_default();
    LAUNCHED.with(|l| {
        if let Some(outer) = l.borrow_mut().as_mut() {
            outer.extend(inner.iter().cloned());
        }
    });
    (result, inner)
}

/// Launches kernel `name` on `device` (during a graph capture on the emulator: records it).
pub fn launch(device: Device, name: &str, cfg: LaunchConfig, args: &[Arg]) -> Result<()> {
    LAUNCHED.with(|l| {
        if let Some(set) = l.borrow_mut().as_mut() {
            set.insert(name.to_string());
        }
    });
    // One rule for both devices: a CUDA launch gets 48 KB of dynamic shared memory unless the
    // kernel opts in to more (cuFuncSetAttribute), which none does; the emulator would allow 227 KB.
    ensure!(
        cfg.shared_bytes as usize <= MAX_DYNAMIC_SHARED_BYTES,
        "{name}: {} bytes of dynamic shared memory, more than the {MAX_DYNAMIC_SHARED_BYTES} a launch gets",
        cfg.shared_bytes
    );
    if graph::record_launch(device, name, cfg, args) {
        return Ok(());
    }
    launch_now(device, name, cfg, args)
}

/// The launch itself. The argument array is built once here, exactly as `cuLaunchKernel` takes
/// it, and handed to the device's launch primitive.
fn launch_now(device: Device, name: &str, cfg: LaunchConfig, args: &[Arg]) -> Result<()> {
    // Every argument lives in an 8-byte slot; `params[i]` points at slot i. Little-endian:
    // a 4-byte parameter reads the first four bytes of its slot.
    let mut slots: Vec<[u8; 8]> = args
        .iter()
        .map(|a| {
            let mut s = [0u8; 8];
            match *a {
                Arg::Ptr(p) | Arg::U64(p) => s.copy_from_slice(&p.to_le_bytes()),
                Arg::I32(v) => s[..4].copy_from_slice(&v.to_le_bytes()),
                Arg::U32(v) => s[..4].copy_from_slice(&v.to_le_bytes()),
                Arg::F32(v) => s[..4].copy_from_slice(&v.to_le_bytes()),
                Arg::F64(v) => s.copy_from_slice(&v.to_le_bytes()),
            }
            s
        })
        .collect();
    let mut params: Vec<*mut c_void> = slots.iter_mut().map(|s| s.as_mut_ptr() as *mut c_void).collect();
    match device {
        Device::Emu => emu::launch(name, cfg, &mut params),
        Device::Cuda => cuda::launch(name, cfg, &mut params),
        Device::Cpu => bail!("kernel {name} launched on the cpu device"),
    }
}
