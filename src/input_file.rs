//! Opening files that come from the user: only regular files are read (a FIFO would block the
//! open forever, a device such as `/dev/zero` never ends), errors say what the path really is
//! (missing, a directory, a symlink loop, unreadable), and whole-file reads are bounded so that
//! a huge or lying file cannot exhaust memory.

use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Read};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

use anyhow::{Result, bail};

/// Upper bound for reading small text files (config, manifests, reports, logs).
pub const SMALL_FILE_LIMIT: u64 = 64 << 20;

/// Why `path` cannot be opened, in words: a missing file, a symlink loop, a permission error.
fn open_error(path: &Path, what: &str, e: &std::io::Error) -> anyhow::Error {
    match e.kind() {
        ErrorKind::NotFound => anyhow::anyhow!("{what} {} does not exist", path.display()),
        _ if e.raw_os_error() == Some(libc::ELOOP) => {
            anyhow::anyhow!(
                "{what} {} is a symbolic link that loops (or a chain too long to follow)",
                path.display()
            )
        }
        _ => anyhow::anyhow!("cannot open {what} {}: {e}", path.display()),
    }
}

/// The kind of a non-regular file, for messages.
fn describe_kind(ft: std::fs::FileType) -> &'static str {
    if ft.is_dir() {
        "a directory"
    } else if ft.is_fifo() {
        "a named pipe (FIFO)"
    } else if ft.is_char_device() {
        "a character device"
    } else if ft.is_block_device() {
        "a block device"
    } else if ft.is_socket() {
        "a socket"
    } else {
        "not a regular file"
    }
}

/// Opens `path` for reading if it is a regular file (symlinks followed). `what` names the file
/// in messages ("checkpoint", "CIFAR-10 file", ...). The open itself never blocks: a FIFO is
/// opened non-blocking and then refused.
pub fn open_input(path: &Path, what: &str) -> Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| open_error(path, what, &e))?;
    let meta = file.metadata().map_err(|e| open_error(path, what, &e))?;
    if !meta.file_type().is_file() {
        bail!("{what} {} is {}, not a regular file", path.display(), describe_kind(meta.file_type()));
    }
    // Back to blocking reads (O_NONBLOCK has no effect on regular files, but be explicit).
    // SAFETY: fcntl on a descriptor this function owns.
    unsafe {
        use std::os::fd::AsRawFd;
        let fd = file.as_raw_fd();
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags >= 0 {
            libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK);
        }
    }
    Ok(file)
}

/// Like [`open_input`], but a missing file is `Ok(None)`: for optional files such as a
/// manifest, where "absent" and "present but unreadable" must not be confused.
pub fn open_optional_input(path: &Path, what: &str) -> Result<Option<File>> {
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        _ => open_input(path, what).map(Some),
    }
}

/// Reads all of `file` (opened by [`open_input`]), refusing one larger than `limit` bytes
/// before reading it, and never reading more than `limit` bytes even if it grows meanwhile.
pub fn read_bounded(mut file: File, path: &Path, what: &str, limit: u64) -> Result<Vec<u8>> {
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    if len > limit {
        bail!("{what} {} is {len} bytes, more than the {limit} bytes such a file can hold", path.display());
    }
    let mut bytes = Vec::with_capacity(len as usize);
    (&mut file)
        .take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| anyhow::anyhow!("cannot read {what} {}: {e}", path.display()))?;
    if bytes.len() as u64 > limit {
        bail!("{what} {} grew beyond {limit} bytes while it was read", path.display());
    }
    Ok(bytes)
}

/// [`open_input`] then [`read_bounded`].
pub fn read_input(path: &Path, what: &str, limit: u64) -> Result<Vec<u8>> {
    read_bounded(open_input(path, what)?, path, what, limit)
}

/// A small UTF-8 text file (config, manifest, report, log), read whole.
pub fn read_text(path: &Path, what: &str) -> Result<String> {
    let bytes = read_input(path, what, SMALL_FILE_LIMIT)?;
    String::from_utf8(bytes).map_err(|_| anyhow::anyhow!("{what} {} is not UTF-8 text", path.display()))
}

/// The regular files directly in `dir` (none if it cannot be listed).
pub fn files_in(dir: &Path) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(dir)
        .map(|entries| entries.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.is_file()).collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(r: Result<impl Sized>) -> String {
        format!("{:#}", r.err().expect("an error"))
    }

    #[test]
    fn refuses_what_is_not_a_regular_file_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        assert!(err(open_input(&d.join("none"), "test file")).contains("does not exist"));
        assert!(err(open_input(d, "test file")).contains("is a directory"));
        let fifo = d.join("fifo");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a valid C string.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        assert!(err(open_input(&fifo, "test file")).contains("named pipe"));
        assert!(err(open_input(Path::new("/dev/zero"), "test file")).contains("character device"));
        let (a, b) = (d.join("a"), d.join("b"));
        std::os::unix::fs::symlink(&b, &a).unwrap();
        std::os::unix::fs::symlink(&a, &b).unwrap();
        assert!(err(open_input(&a, "test file")).contains("loops"));
        assert!(open_optional_input(&d.join("none"), "manifest").unwrap().is_none());
        assert!(err(open_optional_input(&a, "manifest")).contains("loops"));
    }

    #[test]
    fn reads_are_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, [7u8; 100]).unwrap();
        assert_eq!(read_input(&p, "f", 100).unwrap().len(), 100);
        assert!(err(read_input(&p, "f", 99)).contains("more than the 99 bytes"));
        // A sparse file is refused by its size, not read.
        let big = dir.path().join("sparse");
        std::fs::File::create(&big).unwrap().set_len(1 << 40).unwrap();
        assert!(err(read_text(&big, "config")).contains("more than"));
    }
}
