//! The `cuda` device: cudarc over the CUDA driver, kernels compiled with NVRTC for the card's
//! architecture (a cubin, so the driver never has to JIT newer PTX than it knows; kept in the
//! cache directory for the next process), one stream, plain device allocations.

use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::{Arc, OnceLock};

use anyhow::{Context, Result, anyhow, bail, ensure};
use cudarc::driver::{CudaContext, CudaFunction, CudaGraph, CudaSlice, CudaStream, DevicePtr};

use super::LaunchConfig;
use super::nvrtc;

pub struct CudaBackend {
    pub ctx: Arc<CudaContext>,
    pub stream: Arc<CudaStream>,
    pub name: String,
    pub arch: String,
    /// "driver CUDA 13.0, NVRTC 13.0": what compiled and runs the kernels, said at start.
    pub versions: String,
    functions: HashMap<&'static str, CudaFunction>,
    /// `MOCSE_CUDA_SYNC=1`: wait for every kernel and check it right after its launch, so a fault
    /// is reported against the kernel that made it (slow; for debugging and the GPU check).
    sync_each_launch: bool,
}

impl CudaBackend {
    /// "NVIDIA H200 (sm_90; driver CUDA 13.0, NVRTC 13.0)".
    pub fn describe(&self) -> String {
        format!("{} ({}; {})", self.name, self.arch, self.versions)
    }
}

static BACKEND: OnceLock<Result<CudaBackend, String>> = OnceLock::new();

/// The driver and a device, if both are present: the check `--device auto` makes.
pub fn probe() -> Result<(Arc<CudaContext>, String)> {
    // SAFETY: only tries to load the library; cudarc panics on first use without it.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        bail!("no CUDA driver (libcuda.so) was found");
    }
    let ctx = CudaContext::new(0).map_err(|e| anyhow!("no usable CUDA device: {e}"))?;
    let name = ctx.name().unwrap_or_else(|_| "unknown GPU".to_string());
    Ok((ctx, name))
}

fn init() -> Result<CudaBackend> {
    let (ctx, name) = probe()?;
    // One stream, so the ordering of launches is the ordering of work.
    // SAFETY: called before any allocation of this context.
    unsafe { ctx.disable_event_tracking() };
    let (major, minor) = ctx.compute_capability()?;
    let arch = format!("sm_{major}{minor}");
    // A stream of its own rather than the legacy default one, which cannot be captured.
    let stream = ctx.new_stream()?;
    let mut functions = HashMap::new();
    for (file, kernels, cubin) in
        nvrtc::cubins_cached(&arch, crate::cache_dir::cache_dir("kernels").ok().as_deref())
    {
        let module = ctx
            .load_module(cudarc::nvrtc::Ptx::from_binary(cubin?))
            .with_context(|| format!("loading {file} for {arch}"))?;
        for k in kernels {
            functions.insert(*k, module.load_function(k).with_context(|| format!("kernel {k} in {file}"))?);
        }
    }
    let sync_each_launch = std::env::var("MOCSE_CUDA_SYNC").is_ok_and(|v| v == "1");
    Ok(CudaBackend { ctx, stream, name, arch, versions: versions(), functions, sync_each_launch })
}

/// The driver's CUDA version and NVRTC's, as "driver CUDA 13.0, NVRTC 13.0".
fn versions() -> String {
    let mut driver = 0;
    // SAFETY: a plain out-parameter; the driver is loaded by now (the device was opened).
    let driver_ok = unsafe { cudarc::driver::sys::cuDriverGetVersion(&mut driver) }
        == cudarc::driver::sys::CUresult::CUDA_SUCCESS;
    let driver = if driver_ok { format!("{}.{}", driver / 1000, driver % 1000 / 10) } else { "?".into() };
    format!("driver CUDA {driver}, NVRTC {}", nvrtc::version())
}

pub fn backend() -> Result<&'static CudaBackend> {
    BACKEND
        .get_or_init(|| init().map_err(|e| format!("{e:#}")))
        .as_ref()
        .map_err(|e| anyhow!("cuda device: {e}"))
}

pub struct DeviceAllocation(CudaSlice<u8>);

impl DeviceAllocation {
    pub fn zeros(bytes: usize) -> Result<DeviceAllocation> {
        Ok(DeviceAllocation(backend()?.stream.alloc_zeros::<u8>(bytes.max(1))?))
    }

    /// Memory whose contents are undefined: for kernel outputs that write every element
    /// (saves a memset per op).
    pub fn uninit(bytes: usize) -> Result<DeviceAllocation> {
        // SAFETY: the caller's kernel writes the whole buffer before anything reads it.
        Ok(DeviceAllocation(unsafe { backend()?.stream.alloc::<u8>(bytes.max(1))? }))
    }

    pub fn from_bytes(data: &[u8]) -> Result<DeviceAllocation> {
        Ok(DeviceAllocation(backend()?.stream.clone_htod(data)?))
    }

    pub fn from_slice(slice: CudaSlice<u8>) -> DeviceAllocation {
        DeviceAllocation(slice)
    }

    pub fn slice(&self) -> &CudaSlice<u8> {
        &self.0
    }

    /// An allocation filled from a pinned host copy of `data` (during a graph capture, where an
    /// upload from pageable memory is refused); the copy must live as long as the graph.
    pub fn from_pinned_copy(data: &[u8]) -> Result<(DeviceAllocation, PinnedCopy)> {
        let copy = PinnedCopy::of(data)?;
        let allocation = DeviceAllocation::uninit(data.len())?;
        let stream = &backend()?.stream;
        // SAFETY: the destination holds data.len() bytes; the pinned source lives with the graph
        // that replays this copy.
        unsafe {
            cudarc::driver::result::memcpy_htod_async(allocation.address(), copy.bytes(), stream.cu_stream())
        }?;
        Ok((allocation, copy))
    }

    /// Overwrites the first bytes with `data` (then waits for the copy).
    pub fn copy_from(&self, data: &[u8]) -> Result<()> {
        ensure!(
            data.len() <= self.0.len(),
            "{} bytes copied into an allocation of {}",
            data.len(),
            self.0.len()
        );
        let stream = &backend()?.stream;
        // SAFETY: the destination holds at least data.len() bytes; the wait below keeps `data`
        // alive until the copy is done.
        unsafe { cudarc::driver::result::memcpy_htod_async(self.address(), data, stream.cu_stream()) }?;
        stream.synchronize()?;
        Ok(())
    }

    /// Copies `bytes` bytes from device address `src` to the start of this allocation, in the
    /// stream's order (no wait).
    pub fn copy_within_device(&self, src: u64, bytes: usize) -> Result<()> {
        ensure!(bytes <= self.0.len(), "{bytes} bytes copied into an allocation of {}", self.0.len());
        let stream = &backend()?.stream;
        // SAFETY: both ranges are live allocations of at least `bytes` bytes of this context.
        unsafe { cudarc::driver::result::memcpy_dtod_async(self.address(), src, bytes, stream.cu_stream()) }?;
        Ok(())
    }

    pub fn copy_to(&self, dst: &mut [u8]) -> Result<()> {
        let stream = &backend()?.stream;
        let view = self.0.slice(0..dst.len());
        stream.memcpy_dtoh(&view, dst)?;
        stream.synchronize()?;
        Ok(())
    }

    pub fn address(&self) -> u64 {
        let stream = &backend().expect("an allocation implies a backend").stream;
        self.0.device_ptr(stream).0
    }
}

pub fn launch(name: &str, cfg: LaunchConfig, params: &mut [*mut c_void]) -> Result<()> {
    let b = backend()?;
    let f = b.functions.get(name).ok_or_else(|| anyhow!("cuda: no kernel named {name}"))?;
    // The raw launch does not make the context current; tests and workers call from any thread.
    b.ctx.bind_to_thread()?;
    // SAFETY: `params` matches the kernel's parameter list (built by the op that owns the
    // kernel), and every pointer in it addresses a live allocation of this context.
    unsafe {
        cudarc::driver::result::launch_kernel(
            f.cu_function(),
            (cfg.grid[0], cfg.grid[1], cfg.grid[2]),
            (cfg.block[0], cfg.block[1], cfg.block[2]),
            cfg.shared_bytes,
            b.stream.cu_stream(),
            params,
        )
    }
    .with_context(|| format!("launching {name}"))?;
    if b.sync_each_launch && !super::graph::capturing() {
        b.stream
            .synchronize()
            .with_context(|| format!("{name} failed (MOCSE_CUDA_SYNC=1: checked after its launch)"))?;
    }
    Ok(())
}

/// Host memory the driver can copy from while a graph replays (cuMemHostAlloc).
pub struct PinnedCopy {
    ptr: *mut c_void,
    len: usize,
}

impl PinnedCopy {
    fn of(data: &[u8]) -> Result<PinnedCopy> {
        backend()?.ctx.bind_to_thread()?;
        // SAFETY: a fresh allocation of data.len() (at least 1) bytes, filled before use.
        let ptr = unsafe { cudarc::driver::result::malloc_host(data.len().max(1), 0) }?;
        // SAFETY: `ptr` holds data.len() bytes and does not overlap `data`.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), ptr as *mut u8, data.len()) };
        Ok(PinnedCopy { ptr, len: data.len() })
    }

    fn bytes(&self) -> &[u8] {
        // SAFETY: `ptr` holds `len` initialised bytes for as long as self lives.
        unsafe { std::slice::from_raw_parts(self.ptr as *const u8, self.len) }
    }
}

impl Drop for PinnedCopy {
    fn drop(&mut self) {
        // SAFETY: allocated by cuMemHostAlloc in `of`; the graph that read it is gone first
        // (`Graph` drops its cuda graph before its pinned copies).
        let _ = unsafe { cudarc::driver::result::free_host(self.ptr) };
    }
}

/// Starts capturing the kernels' stream (this thread's work only). Allocations during the
/// capture must be stream-ordered (cuMemAllocAsync: they become the graph's memory nodes).
pub fn begin_capture() -> Result<()> {
    ensure!(
        backend()?.ctx.has_async_alloc(),
        "this GPU or driver has no stream-ordered allocator (cuMemAllocAsync), which a graph capture needs"
    );
    let mode = cudarc::driver::sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL;
    backend()?.stream.begin_capture(mode).context("starting a CUDA graph capture")
}

/// Ends the capture and instantiates what it recorded.
pub fn end_capture() -> Result<CudaGraph> {
    let flags = cudarc::driver::sys::CUgraphInstantiate_flags(0);
    backend()?
        .stream
        .end_capture(flags)
        .context("ending a CUDA graph capture")?
        .context("the CUDA graph capture recorded nothing")
}

pub fn replay(graph: &CudaGraph) -> Result<()> {
    graph.launch().context("replaying a CUDA graph")
}

/// Runs `work` and returns its result with the GPU time between two CUDA events around it.
pub fn timed<R>(work: impl FnOnce() -> Result<R>) -> Result<(R, f64)> {
    let b = backend()?;
    let flags = Some(cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT);
    let start = b.stream.record_event(flags)?;
    let out = work()?;
    let end = b.stream.record_event(flags)?;
    let ms = start.elapsed_ms(&end)? as f64;
    Ok((out, ms / 1e3))
}
