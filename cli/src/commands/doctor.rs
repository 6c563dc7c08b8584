//! `kvault doctor`: what this binary was built with and what it finds on the machine (CPU
//! features, threads, the CUDA driver and devices, compiled kernel architectures), what the KV
//! cache costs per token for a model (the embedded one unless --model) in each KV dtype, and the
//! KV offload tier the given flags configure.

use anyhow::Result;
use clap::Args;
use kvault_engine::sizing::{human_bytes, BlockFootprint};
use kvault_kernels::KvDtype;

use crate::args::{KvDtypeArg, ModelArgs};
use crate::offload::OffloadArgs;

#[derive(Args, Debug)]
pub struct DoctorArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// The KV cache dtype to report on (`auto`: the model's compute dtype).
    #[arg(long, value_enum, default_value_t = KvDtypeArg::Auto)]
    pub kv_cache_dtype: KvDtypeArg,
    /// The offload flags `serve` would get: doctor shows the tier they configure and what the
    /// directory holds.
    #[command(flatten)]
    pub offload: OffloadArgs,
}

pub fn run(args: DoctorArgs) -> Result<()> {
    build_and_machine()?;
    for line in args.offload.report() {
        println!("{line}");
    }
    kv_cache(&args)
}

fn build_and_machine() -> Result<()> {
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

/// The chosen KV cache dtype and every dtype's bytes per token for the model.
fn kv_cache(args: &DoctorArgs) -> Result<()> {
    println!("kv cache dtypes: f32 f16 bf16 int8 fp8 (int8/fp8: one f32 scale per token and KV head, dequantized inside attention); CPU attention kernel: {}", kvault_kernels::cpu_attention_level());
    let loaded = args.model.load()?;
    let cfg = loaded.model.config();
    let auto = KvDtype::from_float(loaded.model.dtype())?;
    let chosen = args.kv_cache_dtype.resolve().unwrap_or(auto);
    let per_token = |dtype: KvDtype| {
        BlockFootprint {
            num_layers: cfg.num_layers,
            num_kv_heads: cfg.num_kv_heads,
            head_dim: cfg.head_dim,
            block_size: 16,
            kv_row_bytes: dtype.row_bytes(cfg.head_dim),
            slot_meta_bytes: 8,
        }
        .bytes_per_token()
    };
    println!(
        "kv cache for {} ({} layers x {} KV heads x head_dim {}): dtype {chosen} (auto = {auto}), {} per token",
        args.model.display_name(),
        cfg.num_layers,
        cfg.num_kv_heads,
        cfg.head_dim,
        human_bytes(per_token(chosen))
    );
    let all: Vec<String> = KvDtype::ALL.iter().map(|&d| format!("{d} {}", human_bytes(per_token(d)))).collect();
    println!("  bytes per token by dtype (K+V, scales and slot metadata): {}", all.join(", "));
    Ok(())
}
