//! Every CUDA source in kernels/cuda compiles with nvcc for sm_80 and sm_90 (warnings are
//! errors), and the kernels nvcc sees are exactly the ones the host emulator runs. Prints
//! ptxas' register / shared-memory / spill report per kernel (`--nocapture` to see it).
//!
//! Needs nvcc: $KVAULT_NVCC, PATH, $CUDA_HOME, or the PyPI toolkit from
//! kernels/cuda/install-nvcc.sh. Without one the test FAILS (it does not skip): CI must install it.

#[path = "../src/cuda/nvcc.rs"]
mod nvcc;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Instant;

struct Compiled {
    source: String,
    arch: &'static str,
    seconds: f64,
    /// (kernel, ptxas "Used ..." line, spill line)
    entries: Vec<(String, String, String)>,
}

/// Pulls `Compiling entry function 'X'`, then its `Used N registers...` and spill lines.
fn parse_ptxas(stderr: &str) -> Vec<(String, String, String)> {
    let mut entries = Vec::new();
    let mut current: Option<(String, String, String)> = None;
    for line in stderr.lines() {
        if let Some(rest) = line.split("Compiling entry function '").nth(1) {
            if let Some(done) = current.take() {
                entries.push(done);
            }
            let name = rest.split('\'').next().unwrap_or_default().to_string();
            current = Some((name, String::new(), String::new()));
        } else if let Some(cur) = current.as_mut() {
            let info = line.trim_start_matches("ptxas info    : ").trim();
            if info.starts_with("Used ") {
                cur.1 = info.to_string();
            } else if info.contains("spill stores") {
                cur.2 = info.to_string();
            }
        }
    }
    entries.extend(current);
    entries
}

#[test]
fn every_kernel_compiles_with_nvcc_for_sm80_and_sm90_and_matches_the_emulated_set() {
    let nvcc_path = nvcc::find_nvcc().unwrap_or_else(|e| panic!("{e}"));
    let cuda_dir = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/cuda"));
    let sources = nvcc::cu_sources(cuda_dir).unwrap_or_else(|e| panic!("cannot list {}: {e}", cuda_dir.display()));
    assert!(!sources.is_empty(), "no .cu files in {}", cuda_dir.display());
    let out_dir = std::env::temp_dir().join(format!("kvault-nvcc-test-{}", std::process::id()));
    std::fs::create_dir_all(&out_dir).expect("create scratch dir");

    let jobs: Vec<(PathBuf, &'static str)> =
        sources.iter().flat_map(|s| nvcc::ARCHS.iter().map(move |a| (s.clone(), *a))).collect();
    let next = Mutex::new(0usize);
    let results = Mutex::new(Vec::new());
    let failures = Mutex::new(Vec::new());
    let start = Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..2 {
            scope.spawn(|| loop {
                let job = {
                    let mut n = next.lock().unwrap();
                    let j = jobs.get(*n).cloned();
                    *n += 1;
                    j
                };
                let Some((src, arch)) = job else { break };
                let stem = src.file_stem().unwrap().to_string_lossy().to_string();
                let out = out_dir.join(format!("{stem}.{arch}.cubin"));
                let t = Instant::now();
                match nvcc::compile(&nvcc_path, "-cubin", arch, &src, &out) {
                    Ok(o) if o.status.success() => results.lock().unwrap().push(Compiled {
                        source: stem,
                        arch,
                        seconds: t.elapsed().as_secs_f64(),
                        entries: parse_ptxas(&String::from_utf8_lossy(&o.stderr)),
                    }),
                    Ok(o) => failures.lock().unwrap().push(format!(
                        "{stem}.cu for {arch}:\n{}{}",
                        String::from_utf8_lossy(&o.stdout),
                        String::from_utf8_lossy(&o.stderr)
                    )),
                    Err(e) => failures.lock().unwrap().push(format!("{stem}.cu for {arch}: cannot run {}: {e}", nvcc_path.display())),
                }
            });
        }
    });
    let _ = std::fs::remove_dir_all(&out_dir);
    let failures = failures.into_inner().unwrap();
    assert!(failures.is_empty(), "nvcc failed:\n{}", failures.join("\n\n"));

    let mut results = results.into_inner().unwrap();
    results.sort_by(|a, b| (&a.source, a.arch).cmp(&(&b.source, b.arch)));
    eprintln!("nvcc: {} ({:.1}s for {} compilations)", nvcc_path.display(), start.elapsed().as_secs_f64(), jobs.len());
    for r in &results {
        eprintln!("== {}.cu {} ({:.1}s)", r.source, r.arch, r.seconds);
        for (name, used, spill) in &r.entries {
            eprintln!("   {name:<36} {used} | {spill}");
        }
    }

    // The emulator must run exactly what the GPU runs: same kernel names, for every arch.
    let emulated: BTreeSet<String> =
        kvault_kernels_emu::kernel_names().into_iter().filter(|n| !n.starts_with("broken_") && !n.starts_with("probe_")).collect();
    for arch in nvcc::ARCHS {
        let compiled: BTreeSet<String> = results
            .iter()
            .filter(|r| r.arch == arch)
            .flat_map(|r| r.entries.iter().map(|e| e.0.clone()))
            .collect();
        assert_eq!(compiled, emulated, "kernels compiled for {arch} vs kernels the emulator registered");
    }
    // Attention (decode, merge, prefill): 27; write_kv 4; rms_norm, rope, silu_mul 3 each;
    // attention_mass 12; move_slots and copy_blocks 4 each (f32, f16, bf16, i32); LycheeDecode:
    // sparse_decode and block_scores 36 each (9 dtype pairs x 4 shapes), 3 combines, block_topk.
    assert!(emulated.len() >= 60 + 76, "expected every dtype/shape instantiation, got {}", emulated.len());
    for family in ["attention_mass_", "move_slots_", "copy_blocks_", "sparse_decode_", "sparse_decode_combine_", "block_scores_", "block_topk"] {
        assert!(emulated.iter().any(|n| n.starts_with(family)), "no {family}* kernel was compiled");
    }
}
