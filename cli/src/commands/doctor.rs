//! `kvault doctor`: what this binary was built with and what it finds on the machine (CPU
//! features, threads, the CUDA driver and devices, compiled kernel architectures), and the KV
//! offload tier the given flags configure.

use anyhow::Result;
use clap::Args;

use crate::offload::OffloadArgs;

#[derive(Args, Debug, Clone, Default)]
pub struct DoctorArgs {
    /// The offload flags `serve` would get: doctor shows the tier they configure and what the
    /// directory holds.
    #[command(flatten)]
    pub offload: OffloadArgs,
}

pub fn run(args: DoctorArgs) -> Result<()> {
    println!("kvault {}", crate::VERSION);
    println!("cpu: {} threads available to kvault", rayon_threads());
    #[cfg(target_arch = "x86_64")]
    {
        let feats: Vec<&str> = [
            ("avx2", std::arch::is_x86_feature_detected!("avx2")),
            ("fma", std::arch::is_x86_feature_detected!("fma")),
            ("f16c", std::arch::is_x86_feature_detected!("f16c")),
            ("avx512f", std::arch::is_x86_feature_detected!("avx512f")),
        ]
        .into_iter()
        .filter_map(|(n, on)| on.then_some(n))
        .collect();
        println!("cpu features: {}", if feats.is_empty() { "none of avx2/fma/f16c/avx512f".into() } else { feats.join(" ") });
    }
    cuda()?;
    for line in args.offload.report() {
        println!("{line}");
    }
    Ok(())
}

fn rayon_threads() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

#[cfg(feature = "cuda")]
fn cuda() -> Result<()> {
    let r = kvault_kernels::cuda::cuda_report();
    println!("cuda: built in (bindings for CUDA {}.{}; libraries are loaded at run time)", r.bindings_version.0, r.bindings_version.1);
    let have_ptx = !r.compiled_archs.is_empty();
    for l in &r.libraries {
        let status = match (&l.found, l.missing_and_needed(have_ptx)) {
            (Some(file), _) => format!("found ({file})"),
            (None, true) => "NOT FOUND".to_string(),
            (None, false) => "not found (not needed: PTX is built in)".to_string(),
        };
        println!("  lib{:<9} {status}  [{}]", l.library.name, l.library.needed_for);
    }
    match r.driver_version {
        Some((major, minor)) => println!("  driver: CUDA {major}.{minor}"),
        None => println!("  driver: none"),
    }
    match (r.compiled_archs.is_empty(), r.ptx_compiler) {
        (false, Some(nvcc)) => println!("  kernels: PTX for {} (built by {nvcc})", r.compiled_archs.join(", ")),
        (false, None) => println!("  kernels: PTX for {}", r.compiled_archs.join(", ")),
        (true, _) => println!("  kernels: no PTX built in; NVRTC compiles them at first use"),
    }
    for d in &r.devices {
        println!(
            "  device cuda:{}: {}, compute capability {}.{}, {} SMs, {:.1} GiB{}",
            d.ordinal,
            d.name,
            d.compute_capability.0,
            d.compute_capability.1,
            d.sm_count,
            d.total_mem_bytes as f64 / (1u64 << 30) as f64,
            if d.compute_capability < (8, 0) { " (too old: kvault's kernels need 8.0+)" } else { "" }
        );
    }
    if let Some(p) = &r.problem {
        println!("  no usable device: {p}");
    }
    Ok(())
}

#[cfg(not(feature = "cuda"))]
fn cuda() -> Result<()> {
    println!("cuda: not built in (build with scripts/build-cuda.sh); --device cuda:N is unavailable");
    Ok(())
}
