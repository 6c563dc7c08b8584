//! `kvault doctor`: what this binary was built with and what it finds on the machine (CPU
//! features, threads, the CUDA driver and devices, compiled kernel architectures).

use anyhow::Result;

pub fn run() -> Result<()> {
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
    cuda()
}

fn rayon_threads() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

#[cfg(feature = "cuda")]
fn cuda() -> Result<()> {
    let r = kvault_kernels::cuda::cuda_report();
    println!("cuda: built in");
    println!("  driver library: {}", if r.driver_library { "found" } else { "not found (libcuda.so)" });
    if let Some((major, minor)) = r.driver_version {
        println!("  driver version: {major}.{minor}");
    }
    println!(
        "  kernels: {}",
        if r.compiled_archs.is_empty() { "compiled by NVRTC at first use".to_string() } else { format!("PTX for {}", r.compiled_archs.join(", ")) }
    );
    for d in &r.devices {
        println!("  device {d:?}");
    }
    if let Some(p) = &r.problem {
        println!("  no usable device: {p}");
    }
    Ok(())
}

#[cfg(not(feature = "cuda"))]
fn cuda() -> Result<()> {
    println!("cuda: not built in (rebuild with `cargo build --release --features cuda`); --device cuda:N is unavailable");
    Ok(())
}
