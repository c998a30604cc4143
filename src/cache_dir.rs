//! The user's cache directory for things mocse can remake or refetch (the frost photographs,
//! compiled kernels): `$MOCSE_CACHE`, else `$XDG_CACHE_HOME/mocse`, else `~/.cache/mocse`.

use std::path::PathBuf;

use anyhow::{Result, bail};

/// `<cache root>/<what>`; fails only when no root can be named (no MOCSE_CACHE and no HOME).
pub fn cache_dir(what: &str) -> Result<PathBuf> {
    let set = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from);
    let root = if let Some(dir) = set("MOCSE_CACHE") {
        dir
    } else if let Some(dir) = set("XDG_CACHE_HOME").filter(|d| d.is_absolute()) {
        dir.join("mocse")
    } else if let Some(home) = set("HOME") {
        home.join(".cache").join("mocse")
    } else {
        bail!("no cache directory for {what}: set MOCSE_CACHE (or HOME)");
    };
    Ok(root.join(what))
}
