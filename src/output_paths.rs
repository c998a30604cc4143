//! Output paths checked before any work starts: an output never replaces one of the command's
//! inputs (a checkpoint, a data file, the file being corrupted), never lands on a directory,
//! and its directory exists, so an hour of evaluation does not end in "could not write".

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

/// The path a write to `path` would replace: its directory resolved (symlinks, `..`) plus its
/// file name. Writes rename a new file onto this path, so a symlink at it is replaced itself,
/// and two spellings of one place compare equal.
fn replaced_path(path: &Path) -> Result<PathBuf> {
    let name = path.file_name().with_context(|| format!("{} does not name a file", path.display()))?;
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let dir = parent.canonicalize().map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => anyhow::anyhow!("the directory {} does not exist", parent.display()),
        _ => anyhow::anyhow!("cannot resolve the directory {}: {e}", parent.display()),
    })?;
    if !dir.is_dir() {
        bail!("{} is not a directory, so {} cannot be written", parent.display(), path.display());
    }
    Ok(dir.join(name))
}

/// Checks `outputs` (flag, path) against each other and against `inputs`: every output's
/// directory exists, no output is an existing directory, no two outputs are one file, and no
/// output is an input.
pub fn check_outputs(outputs: &[(&str, &Path)], inputs: &[PathBuf]) -> Result<()> {
    let inputs: Vec<PathBuf> = inputs.iter().filter_map(|p| replaced_path(p).ok()).collect();
    let mut seen: Vec<(&str, PathBuf)> = Vec::new();
    for &(flag, path) in outputs {
        if path.is_dir() {
            bail!("{flag} {} is a directory; give a file name", path.display());
        }
        let target = replaced_path(path).with_context(|| format!("{flag} {}", path.display()))?;
        if inputs.contains(&target) {
            bail!(
                "{flag} {} is one of this command's input files; writing there would destroy it",
                path.display()
            );
        }
        if let Some((other, _)) = seen.iter().find(|(_, p)| *p == target) {
            bail!("{flag} and {other} name the same file {}", path.display());
        }
        seen.push((flag, target));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outputs_may_not_replace_inputs_or_each_other() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let model = d.join("model.safetensors");
        std::fs::write(&model, b"x").unwrap();
        let inputs = vec![model.clone()];
        let err = |outs: &[(&str, &Path)]| format!("{:#}", check_outputs(outs, &inputs).unwrap_err());
        assert!(err(&[("--json", &model)]).contains("input files"));
        // Another spelling of the same path.
        let dotted = d.join("sub/../model.safetensors");
        std::fs::create_dir(d.join("sub")).unwrap();
        assert!(err(&[("--json", &dotted)]).contains("input files"));
        assert!(err(&[("--json", d)]).contains("is a directory"));
        assert!(err(&[("--json", &d.join("missing/r.json"))]).contains("does not exist"));
        let r = d.join("r.json");
        assert!(err(&[("--json", &r), ("--csv", &r)]).contains("same file"));
        check_outputs(&[("--json", &r), ("--csv", &d.join("r.csv"))], &inputs).unwrap();
    }
}
