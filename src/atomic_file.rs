//! Writes that never leave a half-written file: the bytes go to a temporary file beside the
//! target, are flushed to disk, and replace the target in one rename; the directory is synced
//! so the rename itself survives a power cut. A failed write (a full disk, say) removes its
//! temporary and leaves the old file as it was.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, Result};

/// Writes `bytes` to a new temporary file beside `path` and syncs it; returns its path. The
/// caller renames it into place (or removes it).
pub fn write_synced_temporary(path: &Path, bytes: &[u8]) -> Result<PathBuf> {
    // The temporary's name is unique to this process and call, so two writers of the same file
    // (two processes filling a cache, say) never write into each other's temporary.
    static CALLS: AtomicU64 = AtomicU64::new(0);
    let name = path.file_name().with_context(|| format!("{} is not a file path", path.display()))?;
    let call = CALLS.fetch_add(1, Ordering::Relaxed);
    let tmp = path.with_file_name(format!(".{}.{}.{call}.tmp", name.to_string_lossy(), std::process::id()));
    let result = (|| -> std::io::Result<()> {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()
    })();
    match result {
        Ok(()) => Ok(tmp),
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            Err(e).with_context(|| format!("could not write {}", path.display()))
        }
    }
}

/// Removes the temporaries that writers killed mid-write left in `dir` (names as made by
/// [`write_synced_temporary`]); returns how many. Only for a directory whose lock the caller
/// holds, so that no live writer's temporary is taken.
pub fn remove_stale_temporaries(dir: &Path) -> Result<usize> {
    let mut removed = 0;
    for entry in fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))? {
        let name = entry?.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') && name.ends_with(".tmp") {
            fs::remove_file(dir.join(&*name))
                .with_context(|| format!("cannot remove {}", dir.join(&*name).display()))?;
            removed += 1;
        }
    }
    Ok(removed)
}

/// Syncs a directory, so that renames and new names in it are on disk.
pub fn sync_dir(dir: &Path) -> Result<()> {
    let dir = if dir.as_os_str().is_empty() { Path::new(".") } else { dir };
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("could not sync directory {}", dir.display()))
}

pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = write_synced_temporary(path, bytes)?;
    if let Err(e) = fs::rename(&tmp, path) {
        let _ = fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("could not write {}", path.display()));
    }
    sync_dir(path.parent().unwrap_or(Path::new(".")))
}

/// Appends `line` (and a newline) to `path` and syncs it: a line survives a crash once this
/// returns. A crash during the call may leave a torn last line, which readers tolerate.
pub fn append_line_synced(path: &Path, line: &str) -> Result<()> {
    let result = (|| -> std::io::Result<()> {
        let mut f = fs::OpenOptions::new().append(true).create(true).open(path)?;
        f.write_all(format!("{line}\n").as_bytes())?;
        f.sync_data()
    })();
    result.with_context(|| format!("could not append to {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_content_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.json");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
        assert!(write_atomic(&dir.path().join("missing/a.json"), b"x").is_err());
        append_line_synced(&p, "three").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"twothree\n");
    }
}
