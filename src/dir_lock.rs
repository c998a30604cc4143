//! One writer per output directory: an exclusive advisory lock (flock) on `DIR/.lock`, held for
//! as long as the writer lives. The kernel drops it when the process ends however it ends
//! (kill -9 included), so a stale lock never has to be cleared by hand. The file records who
//! holds it, so a second writer is told which process to wait for.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

pub const LOCK_FILE: &str = ".lock";

/// Held while it lives; dropping it releases the lock.
#[derive(Debug)]
pub struct DirLock {
    _file: File,
    path: PathBuf,
}

impl DirLock {
    /// Locks `dir` (which must exist) for `purpose` ("training", "corrupt", ...), or fails naming
    /// the process that holds it.
    pub fn acquire(dir: &Path, purpose: &str) -> Result<DirLock> {
        match DirLock::try_acquire(dir, purpose)? {
            Ok(lock) => Ok(lock),
            Err(holder) => bail!(
                "{} is in use by another mocse process ({holder}); one directory takes one writer at a time: \
                 wait for that process to finish, or stop it",
                dir.display()
            ),
        }
    }

    /// Locks `dir` (which must exist) for `purpose`, or says who holds it (`Err` inside: the
    /// holder's own description) without waiting; the outer error is a failure to lock at all.
    pub fn try_acquire(dir: &Path, purpose: &str) -> Result<std::result::Result<DirLock, String>> {
        let path = dir.join(LOCK_FILE);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .with_context(|| format!("cannot create the lock file {}", path.display()))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = holder.trim();
                return Ok(Err(if holder.is_empty() {
                    "it did not say which".to_string()
                } else {
                    holder.to_string()
                }));
            }
            Err(TryLockError::Error(e)) => {
                return Err(e).with_context(|| format!("cannot lock {}", path.display()));
            }
        }
        let holder = format!(
            "pid {} on {}, {purpose}, since {} (Unix time)",
            std::process::id(),
            hostname(),
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
        );
        // Best effort: the lock itself is what counts, the text only helps the message above.
        let _ = file
            .set_len(0)
            .and_then(|_| file.seek(SeekFrom::Start(0)))
            .and_then(|_| file.write_all(holder.as_bytes()));
        Ok(Ok(DirLock { _file: file, path }))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Whether `dir` holds anything besides a lock file left by an earlier writer (an entry that
/// cannot be read counts as something).
pub fn holds_other_files(dir: &Path) -> Result<bool> {
    let mut entries = std::fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))?;
    Ok(entries.any(|e| e.map_or(true, |e| e.file_name() != LOCK_FILE)))
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "this host".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_writer_is_refused_until_the_first_is_gone() {
        let dir = tempfile::tempdir().unwrap();
        let first = DirLock::acquire(dir.path(), "training").unwrap();
        let err = format!("{:#}", DirLock::acquire(dir.path(), "training").unwrap_err());
        assert!(err.contains("in use by another mocse process"), "{err}");
        assert!(err.contains(&format!("pid {}", std::process::id())), "{err}");
        drop(first);
        DirLock::acquire(dir.path(), "training").unwrap();
    }
}
