//! Compiling `kernels/` with NVRTC: the sources embedded at build time, their `#include`s of
//! the project's headers expanded here (NVRTC gets no toolkit headers and reads no files),
//! compiled to a cubin for one architecture, with ptxas's per-kernel resource report.

use std::ffi::CString;

use anyhow::{Context, Result, bail};
use cudarc::nvrtc::{result, sys};
use sha2::{Digest, Sha256};

use super::sources::{KERNEL_HEADERS, NVRTC_PRELUDE};

/// NVRTC loads lazily and panics when missing; check first.
pub fn available() -> bool {
    // SAFETY: only tries to load the library.
    unsafe { sys::is_culib_present() }
}

pub fn missing_message() -> String {
    "NVRTC (libnvrtc.so) was not found on the loader path. Without a CUDA toolkit it comes from \
     PyPI: `python3 -m pip install nvidia-cuda-nvrtc-cu12`, then `export LD_LIBRARY_PATH=$(python3 -c \
     'import nvidia.cuda_nvrtc as m; print(list(m.__path__)[0] + \"/lib\")'):$LD_LIBRARY_PATH`"
        .to_string()
}

/// The source with the prelude first and every `#include "x.cuh"` of a project header replaced
/// by the header (each once, like `#pragma once`).
pub fn expand_source(source: &str) -> String {
    let mut done: Vec<&str> = Vec::new();
    let mut out = String::from(NVRTC_PRELUDE);
    out.push('\n');
    expand_into(source, &mut out, &mut done);
    out
}

fn expand_into<'a>(source: &'a str, out: &mut String, done: &mut Vec<&'a str>) {
    for line in source.lines() {
        let include = line.trim().strip_prefix("#include").map(|r| r.trim().trim_matches('"'));
        match include.and_then(|name| KERNEL_HEADERS.iter().find(|(h, _)| *h == name)) {
            Some((name, text)) => {
                if !done.contains(name) {
                    done.push(name);
                    expand_into(text, out, done);
                }
            }
            None => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
}

/// Resources ptxas reports for one kernel.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KernelResources {
    pub name: String,
    pub registers: u32,
    pub shared_bytes: u32,
    pub stack_bytes: u32,
    pub spill_store_bytes: u32,
    pub spill_load_bytes: u32,
}

pub struct Compiled {
    pub cubin: Vec<u8>,
    pub log: String,
}

fn options(arch: &str) -> [String; 4] {
    [
        format!("--gpu-architecture={arch}"),
        "-std=c++17".to_string(),
        "--ptxas-options=-v".to_string(),
        "-DMOCSE_NVRTC".to_string(),
    ]
}

/// Compiles one kernel file for `arch` (e.g. "sm_90") to a cubin, with the ptxas report.
pub fn compile(file: &str, source: &str, arch: &str) -> Result<Compiled> {
    if !available() {
        bail!("{}", missing_message());
    }
    let src = CString::new(expand_source(source))?;
    let name = CString::new(file)?;
    let prog =
        result::create_program(&src, Some(&name)).with_context(|| format!("NVRTC: creating {file}"))?;
    let options = options(arch);
    // SAFETY: `prog` was created above and is destroyed exactly once below.
    let compiled = unsafe { result::compile_program(prog, &options) };
    let log = unsafe { result::get_program_log(prog) }
        .map(|l| {
            let bytes: Vec<u8> = l.iter().map(|c| *c as u8).take_while(|c| *c != 0).collect();
            String::from_utf8_lossy(&bytes).into_owned()
        })
        .unwrap_or_default();
    let cubin = match compiled {
        Ok(()) => {
            let mut size = 0usize;
            // SAFETY: the program compiled; size then data, as the NVRTC API prescribes.
            unsafe { sys::nvrtcGetCUBINSize(prog, &mut size) }.result()?;
            let mut data = vec![0u8; size];
            unsafe { sys::nvrtcGetCUBIN(prog, data.as_mut_ptr() as *mut _) }.result()?;
            Ok(data)
        }
        Err(e) => Err(e),
    };
    // SAFETY: created above, not used afterwards.
    unsafe { result::destroy_program(prog) }.ok();
    match cubin {
        Ok(cubin) => Ok(Compiled { cubin, log }),
        Err(e) => bail!("NVRTC could not compile {file} for {arch} ({e:?}):\n{log}"),
    }
}

/// Every kernel file of `kernels/` compiled for `arch`, in parallel (NVRTC compiles separate
/// programs concurrently), in the index's order: (file, its kernels, the result).
pub fn compile_all(arch: &str) -> Vec<(&'static str, &'static [&'static str], Result<Compiled>)> {
    use rayon::prelude::*;
    super::sources::KERNEL_SOURCES
        .par_iter()
        .map(|(file, source, kernels)| (*file, *kernels, compile(file, source, arch)))
        .collect()
}

/// Each kernel file with its kernels and its cubin (or why it has none).
pub type Cubins = Vec<(&'static str, &'static [&'static str], Result<Vec<u8>>)>;

/// Every kernel file's cubin for `arch`, read from `cache` (named by the SHA-256 of NVRTC's
/// version, the options and the expanded source) or compiled and then kept there: a process on
/// the cuda device starts in well under a second instead of seconds. A cache that cannot be
/// read or written only costs the compile.
pub fn cubins_cached(arch: &str, cache: Option<&std::path::Path>) -> Cubins {
    use rayon::prelude::*;
    let version = version();
    super::sources::KERNEL_SOURCES
        .par_iter()
        .map(|(file, source, kernels)| {
            let mut hash = Sha256::new();
            for part in [version.as_str(), &options(arch).join(" "), &expand_source(source)] {
                hash.update(part.as_bytes());
                hash.update([0u8]);
            }
            let key: String = hash.finalize().iter().take(12).map(|b| format!("{b:02x}")).collect();
            let path = cache.map(|d| d.join(format!("{}-{arch}-{key}.cubin", file.trim_end_matches(".cu"))));
            if let Some(cubin) = path.as_ref().and_then(|p| std::fs::read(p).ok()) {
                return (*file, *kernels, Ok(cubin));
            }
            let compiled = compile(file, source, arch).map(|c| c.cubin);
            if let (Ok(cubin), Some(path)) = (&compiled, &path) {
                let _ = std::fs::create_dir_all(path.parent().unwrap_or(path))
                    .map_err(anyhow::Error::from)
                    .and_then(|_| crate::atomic_file::write_atomic(path, cubin));
            }
            (*file, *kernels, compiled)
        })
        .collect()
}

/// NVRTC's version, "13.0" ("?" when it cannot say).
pub fn version() -> String {
    let (mut major, mut minor) = (0, 0);
    // SAFETY: plain out-parameters.
    let ok = available()
        && unsafe { sys::nvrtcVersion(&mut major, &mut minor) } == sys::nvrtcResult::NVRTC_SUCCESS;
    if ok { format!("{major}.{minor}") } else { "?".into() }
}

/// Parses ptxas's `-v` report: one entry per kernel, in the order ptxas lists them.
pub fn parse_resources(log: &str) -> Vec<KernelResources> {
    let mut out: Vec<KernelResources> = Vec::new();
    let number_before = |line: &str, word: &str| -> u32 {
        line.find(word)
            .and_then(|at| line[..at].split_whitespace().last())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    for line in log.lines() {
        if let Some(rest) = line.split("Compiling entry function '").nth(1) {
            let name = rest.split('\'').next().unwrap_or("").to_string();
            out.push(KernelResources { name, ..Default::default() });
        } else if let Some(k) = out.last_mut() {
            if line.contains("bytes stack frame") {
                k.stack_bytes = number_before(line, "bytes stack frame");
                k.spill_store_bytes = number_before(line, "bytes spill stores");
                k.spill_load_bytes = number_before(line, "bytes spill loads");
            } else if line.contains("Used") && line.contains("registers") {
                k.registers = number_before(line, "registers");
                k.shared_bytes = number_before(line, "bytes smem");
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cubins_are_kept_and_read_back_from_the_cache() {
        if !available() {
            eprintln!("NVRTC is not on the loader path; CI's compile check covers it");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let first = cubins_cached("sm_80", Some(dir.path()));
        let kept = std::fs::read_dir(dir.path()).unwrap().count();
        assert_eq!(kept, super::super::sources::KERNEL_SOURCES.len());
        // A cached file is what is returned, not a fresh compile.
        let (file, _, _) = &first[0];
        let path = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.file_name().unwrap().to_string_lossy().starts_with(file.trim_end_matches(".cu")))
            .unwrap();
        std::fs::write(&path, b"marked").unwrap();
        let second = cubins_cached("sm_80", Some(dir.path()));
        assert_eq!(second[0].2.as_ref().unwrap(), b"marked");
        for ((_, _, a), (_, _, b)) in first.iter().zip(&second).skip(1) {
            assert_eq!(a.as_ref().unwrap(), b.as_ref().unwrap());
        }
    }

    #[test]
    fn parses_a_ptxas_report() {
        let log = "ptxas info    : 0 bytes gmem\n\
                   ptxas info    : Compiling entry function 'relu_fwd_f32' for 'sm_90'\n\
                   ptxas info    : Function properties for relu_fwd_f32\n\
                   \x20   8 bytes stack frame, 4 bytes spill stores, 12 bytes spill loads\n\
                   ptxas info    : Used 10 registers, used 1 barriers, 1024 bytes smem, 368 bytes cmem[0]\n";
        let r = parse_resources(log);
        assert_eq!(
            r,
            vec![KernelResources {
                name: "relu_fwd_f32".into(),
                registers: 10,
                shared_bytes: 1024,
                stack_bytes: 8,
                spill_store_bytes: 4,
                spill_load_bytes: 12,
            }]
        );
    }

    #[test]
    fn includes_are_expanded_once() {
        let src = "#include \"common.cuh\"\n#include \"common.cuh\"\nint x;\n";
        let out = expand_source(src);
        let (_, common) = KERNEL_HEADERS.iter().find(|(n, _)| *n == "common.cuh").expect("common.cuh exists");
        assert_eq!(out.matches(common.lines().next().unwrap()).count(), 1);
        assert!(!out.contains("#include \"common.cuh\""));
    }
}
