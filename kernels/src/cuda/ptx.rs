//! The kernels' PTX for a device: the build-time PTX when build.rs found nvcc, otherwise the
//! embedded .cu sources compiled once per (module, arch) by NVRTC.
//!
//! Must not know: what the kernels do; which kernel lives in which module is the ops' business.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use candle_core::cuda_backend::cudarc;
use candle_core::{bail, Result};

include!(concat!(env!("OUT_DIR"), "/kvault_cuda_sources.rs"));

pub fn compiled_archs() -> Vec<&'static str> {
    let mut archs: Vec<&'static str> = PTX.iter().map(|p| p.1).collect();
    archs.sort_unstable();
    archs.dedup();
    archs
}

pub fn compiler() -> Option<&'static str> {
    (!PTX_COMPILER.is_empty()).then_some(PTX_COMPILER)
}

/// sm_90 PTX for Hopper and newer, sm_80 PTX (JIT-compiled forward) for Ampere/Ada.
pub fn arch_for(compute_capability: (i32, i32)) -> Result<&'static str> {
    match compute_capability {
        (major, _) if major >= 9 => Ok("sm_90"),
        cc if cc >= (8, 0) => Ok("sm_80"),
        (major, minor) => bail!("kvault's CUDA kernels need compute capability 8.0+, device has {major}.{minor}"),
    }
}

/// PTX of `module` (a kernels/cuda/<module>.cu file) for `arch`.
pub fn ptx(module: &str, arch: &'static str) -> Result<Arc<str>> {
    if let Some((_, _, text)) = PTX.iter().find(|(m, a, _)| *m == module && *a == arch) {
        return Ok(Arc::from(*text));
    }
    static CACHE: OnceLock<Mutex<HashMap<(String, &'static str), Arc<str>>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    let key = (module.to_string(), arch);
    if let Some(p) = cache.lock().map_err(|_| candle_core::Error::Msg("PTX cache poisoned".into()))?.get(&key) {
        return Ok(p.clone());
    }
    let compiled: Arc<str> = Arc::from(nvrtc_compile(module, arch)?);
    cache.lock().map_err(|_| candle_core::Error::Msg("PTX cache poisoned".into()))?.insert(key, compiled.clone());
    Ok(compiled)
}

/// NVRTC has no file system view of kernels/cuda, so local `#include "x.cuh"` lines are inlined
/// (each header once, like `#pragma once`); system headers (<cuda_fp16.h>) come from the toolkit.
fn inline_local_includes(text: &str, seen: &mut Vec<&'static str>, out: &mut String) -> Result<()> {
    for line in text.lines() {
        let trimmed = line.trim_start();
        if let Some(rest) = trimmed.strip_prefix("#include \"") {
            let name = rest.split('"').next().unwrap_or_default();
            let Some((hname, htext)) = HEADERS.iter().find(|(h, _)| *h == name) else {
                bail!("CUDA source includes unknown local header {name}")
            };
            if !seen.contains(hname) {
                seen.push(hname);
                inline_local_includes(htext, seen, out)?;
            }
        } else if trimmed != "#pragma once" {
            out.push_str(line);
            out.push('\n');
        }
    }
    Ok(())
}

fn include_dirs() -> Vec<String> {
    let mut dirs = Vec::new();
    for var in ["CUDA_HOME", "CUDA_PATH"] {
        if let Some(home) = std::env::var_os(var) {
            dirs.push(std::path::PathBuf::from(home).join("include").display().to_string());
        }
    }
    dirs.push("/usr/local/cuda/include".to_string());
    dirs.retain(|d| std::path::Path::new(d).is_dir());
    dirs
}

fn nvrtc_compile(module: &str, arch: &'static str) -> Result<String> {
    let Some((_, src)) = SOURCES.iter().find(|(m, _)| *m == module) else {
        bail!("no CUDA module named {module}")
    };
    let mut text = String::new();
    inline_local_includes(src, &mut Vec::new(), &mut text)?;
    let opts = cudarc::nvrtc::CompileOptions {
        arch: Some(arch),
        include_paths: include_dirs(),
        options: vec!["-std=c++17".to_string()],
        name: Some(format!("{module}.cu")),
        ..Default::default()
    };
    match cudarc::nvrtc::compile_ptx_with_opts(text, opts) {
        Ok(ptx) => Ok(ptx.to_src()),
        Err(e) => bail!("NVRTC failed to compile kernels/cuda/{module}.cu for {arch}: {e:?}"),
    }
}
