//! Compiles the host emulator (csrc/) and every CUDA source under ../cuda (plus the deliberately
//! broken kernels in csrc/broken and the primitive probes in csrc/probe) as C++ with the
//! emulator's CUDA mapping included first.
//!
//! Each .cu gets a generated wrapper translation unit, so a new kernel file is picked up without
//! touching this script. The library is linked whole-archive: kernels register themselves from
//! static initialisers that nothing references by symbol, which a plain static link would drop.

use std::path::{Path, PathBuf};
use std::{env, fs};

fn cu_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|ext| ext == "cu"))
        .collect();
    files.sort();
    files
}

fn main() {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let out = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let cuda_dir = manifest.join("../cuda");
    let csrc = manifest.join("csrc");

    let mut build = cc::Build::new();
    build
        .cpp(true)
        .std("c++17")
        .opt_level(2)
        .include(csrc.join("include"))
        .include(&csrc)
        .include(&cuda_dir)
        .flag_if_supported("-Wno-unknown-pragmas")
        .flag_if_supported("-Wno-unused-parameter")
        .file(csrc.join("fiber.cpp"))
        .file(csrc.join("runtime.cpp"))
        .cargo_metadata(false);

    for (prefix, dir) in [("cuda", cuda_dir.clone()), ("broken", csrc.join("broken")), ("probe", csrc.join("probe"))] {
        for cu in cu_files(&dir) {
            let stem = cu.file_stem().and_then(|s| s.to_str()).expect("utf-8 file name");
            let wrapper = out.join(format!("emu_{prefix}_{stem}.cpp"));
            let text = format!("#include \"emu_cuda.h\"\n#include \"{}\"\n", cu.display());
            if fs::read_to_string(&wrapper).ok().as_deref() != Some(text.as_str()) {
                fs::write(&wrapper, text).expect("write wrapper translation unit");
            }
            build.file(&wrapper);
        }
    }
    build.compile("kvault_emu");

    println!("cargo:rustc-link-search=native={}", out.display());
    println!("cargo:rustc-link-lib=static:+whole-archive=kvault_emu");
    println!("cargo:rustc-link-lib=dylib=stdc++");
    println!("cargo:rerun-if-changed={}", cuda_dir.display());
    println!("cargo:rerun-if-changed={}", csrc.display());
    for dir in [&cuda_dir, &csrc, &csrc.join("include"), &csrc.join("broken"), &csrc.join("probe")] {
        for entry in fs::read_dir(dir).into_iter().flatten().flatten() {
            println!("cargo:rerun-if-changed={}", entry.path().display());
        }
    }
}
