//! Finding and running nvcc for kvault's kernels: `$KVAULT_NVCC`, then `nvcc` on PATH, then
//! `$CUDA_HOME/bin/nvcc`, then the PyPI toolkit that kernels/cuda/install-nvcc.sh installs into
//! `$HOME/.cache/kvault/cuda-venv` (override with `$KVAULT_CUDA_VENV`).
//!
//! Plain std, no crate dependencies: build.rs (PTX under the `cuda` feature) and the nvcc compile
//! tests include this file by path, so both find the same compiler the same way.
//! Must not know: cudarc, candle, or which kernels exist (callers list the .cu files).

#![allow(dead_code)] // each includer uses a subset

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Architectures the kernels are compiled for (PTX for sm_80 also JIT-compiles on newer GPUs).
pub const ARCHS: [&str; 2] = ["sm_80", "sm_90"];

/// Where each candidate was looked for, for the error message.
pub fn find_nvcc() -> Result<PathBuf, String> {
    let mut looked = Vec::new();
    if let Some(p) = std::env::var_os("KVAULT_NVCC") {
        let p = PathBuf::from(p);
        if p.is_file() {
            return Ok(p);
        }
        return Err(format!("KVAULT_NVCC={} is not a file", p.display()));
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let p = dir.join("nvcc");
            if p.is_file() {
                return Ok(p);
            }
        }
        looked.push("nvcc on PATH".to_string());
    }
    for var in ["CUDA_HOME", "CUDA_PATH"] {
        if let Some(home) = std::env::var_os(var) {
            let p = PathBuf::from(home).join("bin/nvcc");
            if p.is_file() {
                return Ok(p);
            }
            looked.push(p.display().to_string());
        }
    }
    let venv = venv_dir();
    if let Some(p) = venv.as_deref().and_then(venv_nvcc) {
        return Ok(p);
    }
    looked.push(match venv {
        Some(v) => format!("{}/lib/python3*/site-packages/nvidia/cu*/bin/nvcc", v.display()),
        None => "$HOME/.cache/kvault/cuda-venv (HOME is unset)".to_string(),
    });
    Err(format!(
        "no nvcc found (looked at $KVAULT_NVCC, {}); run kernels/cuda/install-nvcc.sh to install \
         nvcc 13.0 from PyPI into $HOME/.cache/kvault/cuda-venv, or set KVAULT_NVCC",
        looked.join(", ")
    ))
}

fn venv_dir() -> Option<PathBuf> {
    if let Some(v) = std::env::var_os("KVAULT_CUDA_VENV") {
        return Some(PathBuf::from(v));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/kvault/cuda-venv"))
}

/// `<venv>/lib/python3.X/site-packages/nvidia/cuNN/bin/nvcc`, newest python and CUDA first.
fn venv_nvcc(venv: &Path) -> Option<PathBuf> {
    let mut pythons: Vec<PathBuf> = std::fs::read_dir(venv.join("lib")).ok()?.flatten().map(|e| e.path()).collect();
    pythons.sort();
    for py in pythons.iter().rev() {
        let nvidia = py.join("site-packages/nvidia");
        let mut cudas: Vec<PathBuf> = match std::fs::read_dir(&nvidia) {
            Ok(dir) => dir.flatten().map(|e| e.path()).collect(),
            Err(_) => continue,
        };
        cudas.sort();
        for cu in cudas.iter().rev() {
            let p = cu.join("bin/nvcc");
            if p.is_file() {
                return Some(p);
            }
        }
    }
    None
}

/// The .cu files of a kernels/cuda directory, sorted.
pub fn cu_sources(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "cu"))
        .collect();
    files.sort();
    Ok(files)
}

/// Runs `nvcc <mode> -arch=<arch> -Xptxas -v` on one source. `mode` is `-ptx` (what build.rs
/// ships) or `-cubin` (what the compile test uses to get ptxas' register/shared-memory report).
/// The pip toolkit's nvcc.profile already points at its own headers, NVVM and ptxas.
pub fn compile(nvcc: &Path, mode: &str, arch: &str, src: &Path, out: &Path) -> std::io::Result<Output> {
    let mut cmd = Command::new(nvcc);
    cmd.arg(mode)
        .arg(format!("-arch={arch}"))
        .args(["-std=c++17", "-O3", "-lineinfo", "--Werror", "all-warnings"])
        .arg("-o")
        .arg(out)
        .arg(src);
    if let Some(dir) = src.parent() {
        cmd.arg(format!("-I{}", dir.display()));
    }
    if mode == "-cubin" {
        cmd.args(["-Xptxas", "-v"]);
    }
    cmd.output()
}
