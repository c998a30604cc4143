//! Read-only memory maps of input files (CIFAR-10 batches, `.npy` arrays) that fail with a
//! message instead of a bare `Bus error` when the file shrinks underneath: touching a page past
//! the new end of a mapped file raises SIGBUS, which no Rust code can turn into an error. A
//! SIGBUS handler looks the faulting address up among the live maps, says which file was cut
//! short, and exits with status 1; files this process wrote before are complete (every write is
//! atomic), so the message says so.

use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::sync::Once;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicUsize, Ordering};

use anyhow::{Context, Result};
use memmap2::Mmap;

use crate::input_file::open_input;

/// A regular file mapped read-only, registered with the SIGBUS handler while it lives.
pub struct MappedFile {
    path: PathBuf,
    map: Mmap,
    slot: Option<usize>,
}

impl MappedFile {
    /// Maps `path` (a regular file; see [`open_input`]). `what` names it in messages.
    pub fn open(path: &Path, what: &str) -> Result<MappedFile> {
        let file = open_input(path, what)?;
        // SAFETY: the map is read-only. A file changed by another process gives wrong values, not
        // unsafety of this process's data structures; a file truncated underneath raises SIGBUS,
        // which the handler below reports.
        let map =
            unsafe { Mmap::map(&file) }.with_context(|| format!("cannot map {what} {}", path.display()))?;
        let slot = register(&map, path, what);
        Ok(MappedFile { path: path.to_owned(), map, slot })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Deref for MappedFile {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.map
    }
}

impl Drop for MappedFile {
    fn drop(&mut self) {
        if let Some(slot) = self.slot {
            SLOTS[slot].len.store(0, Ordering::SeqCst);
            SLOTS[slot].start.store(0, Ordering::SeqCst);
            SLOTS[slot].used.store(false, Ordering::SeqCst);
        }
    }
}

/// One live map as the signal handler sees it: only atomics, no locks or allocation.
struct Slot {
    used: AtomicBool,
    start: AtomicUsize,
    len: AtomicUsize,
    message: AtomicPtr<u8>,
    message_len: AtomicUsize,
}

const SLOT_COUNT: usize = 256;
#[allow(clippy::declare_interior_mutable_const)]
const EMPTY: Slot = Slot {
    used: AtomicBool::new(false),
    start: AtomicUsize::new(0),
    len: AtomicUsize::new(0),
    message: AtomicPtr::new(std::ptr::null_mut()),
    message_len: AtomicUsize::new(0),
};
static SLOTS: [Slot; SLOT_COUNT] = [EMPTY; SLOT_COUNT];

/// Records the map in a free slot (none left: the map works, only without a named message).
fn register(map: &Mmap, path: &Path, what: &str) -> Option<usize> {
    if map.is_empty() {
        return None;
    }
    install_handler();
    let slot = SLOTS
        .iter()
        .position(|s| s.used.compare_exchange(false, true, Ordering::SeqCst, Ordering::SeqCst).is_ok())?;
    let text = format!(
        "\nerror: {what} {} became shorter while mocse was reading it (truncated or rewritten by another \
         program?); stopping. Files mocse wrote before are complete: every write replaces its file in one \
         step, and a training run continues from its last checkpoint with --resume.\n",
        path.display()
    );
    // The message must outlive any signal that could read it, so it is never freed; a process
    // opens a few dozen input files at most.
    let text: &'static mut [u8] = Box::leak(text.into_bytes().into_boxed_slice());
    let s = &SLOTS[slot];
    s.message_len.store(text.len(), Ordering::SeqCst);
    s.message.store(text.as_mut_ptr(), Ordering::SeqCst);
    s.len.store(map.len(), Ordering::SeqCst);
    s.start.store(map.as_ptr() as usize, Ordering::SeqCst);
    Some(slot)
}

/// The SIGBUS action in place before ours, called for faults outside our maps.
static mut PREVIOUS: Option<libc::sigaction> = None;

fn install_handler() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // SAFETY: plain sigaction calls; PREVIOUS is written once, before the handler exists.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_sigbus as *const () as usize;
            action.sa_flags = libc::SA_SIGINFO;
            libc::sigemptyset(&mut action.sa_mask);
            let mut old: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(libc::SIGBUS, std::ptr::null(), &mut old) == 0 {
                PREVIOUS = Some(old);
            }
            libc::sigaction(libc::SIGBUS, &action, std::ptr::null_mut());
        }
    });
}

/// Async-signal-safe: atomics, write(2) and _exit(2) only.
extern "C" fn on_sigbus(signal: libc::c_int, info: *mut libc::siginfo_t, context: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo for SA_SIGINFO handlers.
    let address = unsafe { (*info).si_addr() } as usize;
    for s in &SLOTS {
        let (start, len) = (s.start.load(Ordering::SeqCst), s.len.load(Ordering::SeqCst));
        if start != 0 && address >= start && address < start + len {
            let (message, message_len) =
                (s.message.load(Ordering::SeqCst), s.message_len.load(Ordering::SeqCst));
            // SAFETY: the message is a leaked, never-freed buffer of message_len bytes.
            unsafe {
                if !message.is_null() {
                    libc::write(2, message as *const libc::c_void, message_len);
                }
                libc::_exit(1);
            }
        }
    }
    // Not one of ours: hand over to whatever was installed before, or die of the signal.
    // SAFETY: PREVIOUS was written before this handler was installed and never after.
    unsafe {
        match *std::ptr::addr_of!(PREVIOUS) {
            Some(old) if old.sa_sigaction != libc::SIG_DFL && old.sa_sigaction != libc::SIG_IGN => {
                if old.sa_flags & libc::SA_SIGINFO != 0 {
                    let f: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
                        std::mem::transmute(old.sa_sigaction);
                    f(signal, info, context);
                } else {
                    let f: extern "C" fn(libc::c_int) = std::mem::transmute(old.sa_sigaction);
                    f(signal);
                }
            }
            _ => {
                let mut default: libc::sigaction = std::mem::zeroed();
                default.sa_sigaction = libc::SIG_DFL;
                libc::sigaction(libc::SIGBUS, &default, std::ptr::null_mut());
                // Returning re-runs the faulting access, which now kills the process.
            }
        }
    }
}
