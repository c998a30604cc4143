//! Graphs of device work: a sequence of launches captured once and replayed, so that a step
//! repeated thousands of times costs the host one call instead of one per kernel (the training
//! step, `train::StepGraph`).
//!
//! On cuda it is stream capture (cuStreamBeginCapture on the kernels' stream): launches,
//! allocations and frees (cuMemAllocAsync and cuMemFreeAsync become the graph's memory nodes,
//! at addresses fixed for the graph's life) and zero fills are recorded, not run; an upload
//! copies from a pinned host copy the graph keeps. The emulator's twin records the same: each
//! launch with its arguments, each allocation's initial fill, each upload's bytes, and keeps the
//! memory of every allocation made during the capture until the graph goes. So a replay runs the
//! same launches on the same addresses on both devices, and the emulator shows whether a step
//! is fit for a graph: values baked into a launch, memory read on the host, memory that
//! outlives the capture.
//!
//! What CUDA refuses during a capture, both devices refuse: reading device memory back, and
//! freeing memory allocated before the capture. Memory allocated during it must be freed within
//! it (the graph replays into it): what must outlive a replay is allocated before the capture
//! and written in place.

use std::cell::RefCell;

use anyhow::{Result, bail, ensure};

use super::{Arg, LaunchConfig, cuda, emu, launch_now};
use crate::device::Device;

/// What the emulator replays, in order.
enum EmuStep {
    Launch { name: String, config: LaunchConfig, args: Vec<Arg> },
    Fill { address: u64, bytes: usize, value: u8 },
    Copy { address: u64, data: Vec<u8> },
}

/// The capture under way on this thread.
struct Capture {
    device: Device,
    /// Allocations made during the capture and not yet freed.
    live: usize,
    /// The first thing the capture refused.
    error: Option<String>,
    emu_steps: Vec<EmuStep>,
    /// Emulator memory allocated during the capture and freed in it: the graph's own.
    emu_memory: Vec<emu::HostAllocation>,
    /// Pinned host copies the graph's uploads read from.
    pinned: Vec<cuda::PinnedCopy>,
}

thread_local! {
    static CAPTURE: RefCell<Option<Capture>> = const { RefCell::new(None) };
}

/// Whether a capture is under way on this thread.
pub fn capturing() -> bool {
    CAPTURE.with(|c| c.borrow().is_some())
}

fn with_capture<R>(f: impl FnOnce(&mut Capture) -> R) -> Option<R> {
    CAPTURE.with(|c| c.borrow_mut().as_mut().map(f))
}

/// How a new allocation starts, which the emulator's replays redo.
pub(super) enum Initial<'a> {
    Zeros,
    Fill(u8),
    Bytes(&'a [u8]),
    Undefined,
}

/// Called for every allocation on a kernel device: whether it was made during a capture (and
/// so belongs to the graph).
pub(super) fn on_allocate(device: Device, address: u64, bytes: usize, initial: Initial) -> bool {
    with_capture(|c| {
        if c.device != device {
            c.error.get_or_insert_with(|| format!("memory on {device} during a capture on {}", c.device));
        }
        c.live += 1;
        if device == Device::Emu {
            c.emu_steps.push(match initial {
                Initial::Zeros => EmuStep::Fill { address, bytes, value: 0 },
                Initial::Fill(value) => EmuStep::Fill { address, bytes, value },
                Initial::Bytes(data) => EmuStep::Copy { address, data: data.to_vec() },
                Initial::Undefined => return,
            });
        }
    })
    .is_some()
}

/// Called when a buffer of a kernel device is freed during a capture: the emulator's memory
/// allocated in it is kept for the graph (`Some` gives it back to be dropped now).
pub(super) fn on_free(
    allocated_in_capture: bool,
    memory: Option<emu::HostAllocation>,
) -> Option<emu::HostAllocation> {
    CAPTURE.with(|c| {
        let mut c = c.borrow_mut();
        let Some(c) = c.as_mut() else { return memory };
        if !allocated_in_capture {
            c.error
                .get_or_insert_with(|| "memory allocated before a graph capture was freed during it".into());
            return memory;
        }
        c.live -= 1;
        c.emu_memory.extend(memory);
        None
    })
}

/// An upload on cuda during a capture: its pinned host copy, kept with the graph.
pub(super) fn keep_pinned(copy: cuda::PinnedCopy) {
    with_capture(|c| c.pinned.push(copy));
}

/// Fails when a capture is under way: `what` reads device memory on the host.
pub(super) fn ensure_not_capturing(what: &str) -> Result<()> {
    ensure!(!capturing(), "{what} during a graph capture (the capture records work, it runs none)");
    Ok(())
}

/// Called for each launch: records it when the emulator is capturing (true), else the launch
/// runs (false; on cuda the stream records it while capturing).
pub(super) fn record_launch(device: Device, name: &str, config: LaunchConfig, args: &[Arg]) -> bool {
    with_capture(|c| {
        if device != c.device {
            c.error.get_or_insert_with(|| {
                format!("{name} launched on {device} during a capture on {}", c.device)
            });
        }
        if device != Device::Emu {
            return false;
        }
        c.emu_steps.push(EmuStep::Launch { name: name.to_string(), config, args: args.to_vec() });
        true
    })
    .unwrap_or(false)
}

/// Captured work, replayed with `replay`.
pub struct Graph {
    device: Device,
    emu_steps: Vec<EmuStep>,
    // Kept for the replays: the memory the emulator's steps address, the pinned copies cuda's
    // uploads read, and cuda's executable graph.
    _emu_memory: Vec<emu::HostAllocation>,
    _pinned: Vec<cuda::PinnedCopy>,
    cuda: Option<cudarc::driver::CudaGraph>,
    launches: usize,
}

impl Graph {
    /// Runs `work` capturing what it does on `device` (a kernel device) instead of running it.
    /// Fails, and keeps nothing, where `work` fails or does what a capture refuses.
    pub fn capture<R>(device: Device, work: impl FnOnce() -> Result<R>) -> Result<(Graph, R)> {
        ensure!(device != Device::Cpu, "the cpu device runs no graphs");
        ensure!(!capturing(), "a graph capture inside another");
        let state = Capture {
            device,
            live: 0,
            error: None,
            emu_steps: Vec::new(),
            emu_memory: Vec::new(),
            pinned: Vec::new(),
        };
        CAPTURE.with(|c| *c.borrow_mut() = Some(state));
        if device == Device::Cuda
            && let Err(e) = cuda::begin_capture()
        {
            CAPTURE.with(|c| c.borrow_mut().take());
            return Err(e);
        }
        let result = work();
        // The capture ends (and the stream is free again) whatever happened in it.
        let cuda_graph = match device {
            Device::Cuda => Some(cuda::end_capture()),
            _ => None,
        };
        let state = CAPTURE.with(|c| c.borrow_mut().take()).expect("the capture's state lives until here");
        let result = result?;
        if let Some(e) = state.error {
            bail!("graph capture: {e}");
        }
        ensure!(
            state.live == 0,
            "graph capture: {} allocations made during it outlive it (what outlives a replay must be \
             allocated before the capture)",
            state.live
        );
        let cuda = cuda_graph.transpose()?;
        let launches = state.emu_steps.iter().filter(|s| matches!(s, EmuStep::Launch { .. })).count();
        let graph = Graph {
            device,
            emu_steps: state.emu_steps,
            _emu_memory: state.emu_memory,
            _pinned: state.pinned,
            cuda,
            launches,
        };
        Ok((graph, result))
    }

    /// Runs the captured work again, on the same addresses.
    pub fn replay(&self) -> Result<()> {
        ensure!(!capturing(), "a graph replayed during a capture");
        if let Some(g) = &self.cuda {
            return cuda::replay(g);
        }
        for step in &self.emu_steps {
            match step {
                EmuStep::Launch { name, config, args } => launch_now(self.device, name, *config, args)?,
                // SAFETY: the address is an emulator allocation of at least `bytes` bytes that the
                // graph keeps alive (made during the capture) or that was made before it and is
                // still referenced by the captured launches' owner (the caller keeps it).
                EmuStep::Fill { address, bytes, value } => unsafe {
                    std::ptr::write_bytes(*address as *mut u8, *value, *bytes)
                },
                // SAFETY: as for Fill; `data` is the upload's own copy.
                EmuStep::Copy { address, data } => unsafe {
                    std::ptr::copy_nonoverlapping(data.as_ptr(), *address as *mut u8, data.len())
                },
            }
        }
        Ok(())
    }

    /// Launches the emulator recorded (cuda's count is its driver's: 0 here).
    pub fn emulated_launches(&self) -> usize {
        self.launches
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::{GpuBuffer, int};

    const N: usize = 1000;

    /// y = (x * 2 + offset) * 3 through a buffer of its own, whose memory the graph keeps.
    fn launches(x: &GpuBuffer, y: &GpuBuffer) -> Result<()> {
        let d = Device::Emu;
        let cfg = LaunchConfig::for_elements(N);
        let offset = GpuBuffer::upload(d, &vec![0.5f32; N])?;
        let t = GpuBuffer::for_output(d, N * 4)?;
        super::super::launch(d, "scale_f32", cfg, &[t.arg(), x.arg(), Arg::F32(2.0), int(N)])?;
        super::super::launch(d, "add_f32", cfg, &[t.arg(), t.arg(), offset.arg(), int(N)])?;
        super::super::launch(d, "scale_f32", cfg, &[y.arg(), t.arg(), Arg::F32(3.0), int(N)])
    }

    /// A capture runs nothing; each replay runs the launches on the inputs written before it,
    /// as running them does; the memory allocated and freed in the capture stays the graph's.
    #[test]
    fn replays_run_the_captured_launches_on_the_inputs_of_the_time() {
        let d = Device::Emu;
        let x = GpuBuffer::upload(d, &vec![1.0f32; N]).unwrap();
        let y = GpuBuffer::zeros(d, N * 4).unwrap();
        let (graph, ()) = Graph::capture(d, || launches(&x, &y)).unwrap();
        assert_eq!(graph.emulated_launches(), 3);
        assert!(y.download::<f32>().unwrap().iter().all(|&v| v == 0.0), "the capture ran nothing");
        for step in 0..3 {
            let input: Vec<f32> = (0..N).map(|i| (i * (step + 1)) as f32 * 0.01).collect();
            x.write(&input).unwrap();
            graph.replay().unwrap();
            let expected: Vec<f32> = input.iter().map(|v| (v * 2.0 + 0.5) * 3.0).collect();
            assert_eq!(y.download::<f32>().unwrap(), expected, "replay {step}");
        }
    }

    /// What CUDA refuses in a capture is refused on the emulator too, and nothing is kept.
    #[test]
    fn a_capture_refuses_read_backs_old_frees_and_escaping_memory() {
        let d = Device::Emu;
        let old = GpuBuffer::zeros(d, 16).unwrap();
        let err = Graph::capture(d, || old.download::<f32>()).err().unwrap();
        assert!(format!("{err:#}").contains("during a graph capture"), "{err:#}");
        let err = Graph::capture(d, || {
            drop(old);
            Ok(())
        })
        .err()
        .unwrap();
        assert!(format!("{err:#}").contains("allocated before a graph capture"), "{err:#}");
        let err = Graph::capture(d, || GpuBuffer::zeros(d, 16)).err().unwrap();
        assert!(format!("{err:#}").contains("outlive"), "{err:#}");
        let err = Graph::capture(d, || Graph::capture(d, || Ok(()))).err().unwrap();
        assert!(format!("{err:#}").contains("inside another"), "{err:#}");
        assert!(!capturing());
        assert!(Graph::capture(Device::Cpu, || Ok(())).is_err());
    }
}
