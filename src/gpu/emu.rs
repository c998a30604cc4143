//! The `emu` device: the kernels of `kernels/` compiled as host C++ against the emulator shim
//! (`cuemu/`, built by build.rs) and launched through its C API. Device memory is host memory
//! aligned like `cudaMalloc`'s; device pointers are host pointers.

use std::alloc::{Layout, alloc_zeroed, dealloc};
use std::ffi::{CStr, CString, c_char, c_int, c_uint, c_ulonglong, c_void};
use std::sync::Once;

use anyhow::{Result, bail};

use super::LaunchConfig;

unsafe extern "C" {
    fn cuemu_launch(
        name: *const c_char,
        grid: *const c_uint,
        block: *const c_uint,
        dynamic_smem: usize,
        args: *mut *mut c_void,
        err: *mut c_char,
        err_len: usize,
    ) -> c_int;
    fn cuemu_set_order(order: c_int, seed: c_ulonglong);
    fn cuemu_set_workers(n: c_int);
    fn cuemu_kernel_count() -> c_int;
    fn cuemu_kernel_name(i: c_int) -> *const c_char;
}

const ALIGN: usize = 256;

/// Host memory standing in for device memory. Kernels write through its raw address, so Rust
/// never holds a reference into it while a kernel runs.
pub struct HostAllocation {
    ptr: *mut u8,
    layout: Layout,
}

// SAFETY: the allocation is plain memory owned by this value; access goes through kernels
// launched synchronously or through `bytes`, never concurrently with a write.
unsafe impl Send for HostAllocation {}
unsafe impl Sync for HostAllocation {}

impl HostAllocation {
    pub fn zeros(bytes: usize) -> HostAllocation {
        let layout = Layout::from_size_align(bytes.max(1), ALIGN).expect("allocation size fits");
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { alloc_zeroed(layout) };
        if ptr.is_null() {
            std::alloc::handle_alloc_error(layout);
        }
        HostAllocation { ptr, layout }
    }

    pub fn from_bytes(data: &[u8]) -> HostAllocation {
        let a = HostAllocation::zeros(data.len());
        // SAFETY: the allocation holds at least data.len() bytes and does not overlap data.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), a.ptr, data.len()) };
        a
    }

    pub fn bytes(&self) -> &[u8] {
        // SAFETY: the allocation is initialised (zeroed or copied) and lives as long as self.
        unsafe { std::slice::from_raw_parts(self.ptr, self.layout.size()) }
    }

    pub fn address(&self) -> u64 {
        self.ptr as u64
    }
}

impl Drop for HostAllocation {
    fn drop(&mut self) {
        // SAFETY: allocated in `zeros` with this layout.
        unsafe { dealloc(self.ptr, self.layout) }
    }
}

/// The thread order of every block: `MOCSE_EMU_ORDER` = `ascending` (default), `descending`
/// or `shuffled[:SEED]`. Running the tests in two orders finds races that one order hides.
/// `MOCSE_EMU_WORKERS` = N runs blocks on N OS threads; the default is one per core. (It was
/// one while the fix of the pool's late-worker race proved itself: 72 stress runs of the kernel
/// test binaries with 2 and 4 workers under load have passed since.)
/// The number of worker threads the emulator runs blocks on (see [`configure_once`]).
pub fn workers() -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    std::env::var("MOCSE_EMU_WORKERS").ok().and_then(|v| v.parse().ok()).filter(|&n| n > 0).unwrap_or(cores)
}

fn configure_once() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let setting = std::env::var("MOCSE_EMU_ORDER").unwrap_or_default();
        let (order, seed) = match setting.split_once(':') {
            Some(("shuffled", seed)) => (2, seed.parse().unwrap_or(0)),
            _ => match setting.as_str() {
                "descending" => (1, 0),
                "shuffled" => (2, 0),
                _ => (0, 0),
            },
        };
        let workers = workers();
        // SAFETY: plain setters of the emulator's global configuration.
        unsafe {
            cuemu_set_order(order, seed);
            cuemu_set_workers(workers.min(256) as i32);
        }
    });
}

pub fn launch(name: &str, cfg: LaunchConfig, params: &mut [*mut c_void]) -> Result<()> {
    configure_once();
    let cname = CString::new(name)?;
    let mut err = vec![0 as c_char; 1024];
    // SAFETY: `params` points at argument slots that outlive the call; the emulator unpacks
    // them with the kernel's own parameter types, exactly as the GPU driver would.
    let rc = unsafe {
        cuemu_launch(
            cname.as_ptr(),
            cfg.grid.as_ptr(),
            cfg.block.as_ptr(),
            cfg.shared_bytes as usize,
            params.as_mut_ptr(),
            err.as_mut_ptr(),
            err.len(),
        )
    };
    if rc != 0 {
        // SAFETY: the emulator writes a NUL-terminated message into `err`.
        let msg = unsafe { CStr::from_ptr(err.as_ptr()) }.to_string_lossy().into_owned();
        bail!("emu: kernel {name} failed: {msg}");
    }
    Ok(())
}

/// Every kernel the emulator knows.
pub fn kernel_names() -> Vec<String> {
    // SAFETY: the registry is static; names are NUL-terminated and live for the program.
    unsafe {
        (0..cuemu_kernel_count())
            .map(|i| CStr::from_ptr(cuemu_kernel_name(i)).to_string_lossy().into_owned())
            .collect()
    }
}
