//! The simulator's cost model: hardware profiles and a roofline step time.
//!
//! Owns: what one engine step costs given the chunks it computes. Must not know about policies or
//! requests beyond (context already cached, new tokens) per chunk.
//!
//! `step_time = overhead + max(FLOPs / compute, bytes / bandwidth)`: a step reads the weights
//! once and every scheduled request's cached KV once, and does 2·params FLOPs per new token plus
//! attention (4·layers·attn_dim FLOPs per (query, key) pair). A pure prefill step is compute-bound
//! and a pure decode step memory-bound, so this is "prefill FLOPs over compute rate, decode bytes
//! over bandwidth" with mixed steps taking the binding one. Rates are *effective* (peak × an
//! achievable fraction), not datasheet peaks.

use std::fmt;
use std::str::FromStr;

use serde::Serialize;

use crate::error::{Result, SchedulerError};

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModelSpec {
    pub name: &'static str,
    pub params: f64,
    pub layers: usize,
    /// Query width (heads × head_dim), for attention FLOPs.
    pub attn_dim: usize,
    pub kv_bytes_per_token: f64,
    pub weight_bytes: f64,
}

impl ModelSpec {
    /// Llama-2-7B in fp16: 32 layers × 4096 wide, K and V per layer per token.
    pub fn llama2_7b() -> Self {
        Self {
            name: "Llama-2-7B",
            params: 6.74e9,
            layers: 32,
            attn_dim: 4096,
            kv_bytes_per_token: (2 * 32 * 4096 * 2) as f64,
            weight_bytes: 6.74e9 * 2.0,
        }
    }

    /// SmolLM2-135M in f32 (kvault computes in f32 on CPU): 30 layers, 9×64 query, 3×64 KV heads.
    pub fn smollm2_135m() -> Self {
        Self {
            name: "SmolLM2-135M",
            params: 1.35e8,
            layers: 30,
            attn_dim: 576,
            kv_bytes_per_token: (2 * 30 * 3 * 64 * 4) as f64,
            weight_bytes: 1.35e8 * 4.0,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum HardwareKind {
    Local,
    A100,
    H100,
}

impl HardwareKind {
    pub const ALL: [HardwareKind; 3] = [HardwareKind::Local, HardwareKind::A100, HardwareKind::H100];
    pub fn as_str(&self) -> &'static str {
        match self {
            HardwareKind::Local => "local",
            HardwareKind::A100 => "a100",
            HardwareKind::H100 => "h100",
        }
    }
}

impl fmt::Display for HardwareKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for HardwareKind {
    type Err = SchedulerError;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "local" => Ok(HardwareKind::Local),
            "a100" => Ok(HardwareKind::A100),
            "h100" => Ok(HardwareKind::H100),
            other => Err(SchedulerError::InvalidConfig(format!(
                "unknown hardware profile '{other}' (expected local, a100 or h100)"
            ))),
        }
    }
}

/// A served deployment: model, machine rates, KV capacity and the engine budgets.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Hardware {
    pub kind: HardwareKind,
    pub model: ModelSpec,
    /// Effective FLOP/s.
    pub compute_flops: f64,
    /// Effective bytes/s.
    pub bandwidth_bytes: f64,
    /// Fixed per-step cost (scheduling, launch, sampling).
    pub overhead_s: f64,
    pub kv_capacity_tokens: usize,
    pub block_size: usize,
    pub max_num_batched_tokens: usize,
    pub max_num_seqs: usize,
    pub max_model_len: usize,
}

impl Hardware {
    /// The built-in profiles. `local` uses [`Hardware::local`]'s defaults.
    pub fn profile(kind: HardwareKind) -> Self {
        match kind {
            HardwareKind::Local => Self::local(LOCAL_COMPUTE_FLOPS, LOCAL_BANDWIDTH_BYTES),
            // A100-SXM4-80GB: 312 TFLOP/s bf16 and 2.04 TB/s peak; ~55% / ~80% achievable.
            // 120k KV tokens for Llama-2-7B and the 18000-token request limit follow the paper.
            HardwareKind::A100 => Self {
                kind,
                model: ModelSpec::llama2_7b(),
                compute_flops: 312e12 * 0.55,
                bandwidth_bytes: 2.04e12 * 0.8,
                overhead_s: 4e-3,
                kv_capacity_tokens: 120_000,
                block_size: 16,
                max_num_batched_tokens: 8192,
                max_num_seqs: 256,
                max_model_len: 18_000,
            },
            // H100-SXM5-80GB: 989 TFLOP/s bf16 dense and 3.35 TB/s peak; same memory, so the same
            // 120k-token KV budget.
            HardwareKind::H100 => Self {
                kind,
                model: ModelSpec::llama2_7b(),
                compute_flops: 989e12 * 0.45,
                bandwidth_bytes: 3.35e12 * 0.8,
                overhead_s: 3e-3,
                kv_capacity_tokens: 120_000,
                block_size: 16,
                max_num_batched_tokens: 8192,
                max_num_seqs: 256,
                max_model_len: 18_000,
            },
        }
    }

    /// This machine (2 Xeon cores, AVX2/FMA) serving SmolLM2-135M in f32. The rates are
    /// estimates to be calibrated against `kvault bench`: 2 cores × 2 FMA units × 8 f32 lanes ×
    /// 2 FLOPs × ~2.5 GHz ≈ 160 GFLOP/s peak, of which a candle matmul reaches roughly a quarter
    /// (40 GFLOP/s); streaming bandwidth for 2 cores ≈ 8 GB/s. The KV budget (32k tokens ≈ 1.5 GB)
    /// is a choice, not a measurement.
    pub fn local(compute_flops: f64, bandwidth_bytes: f64) -> Self {
        Self {
            kind: HardwareKind::Local,
            model: ModelSpec::smollm2_135m(),
            compute_flops,
            bandwidth_bytes,
            overhead_s: 2e-3,
            kv_capacity_tokens: 32_768,
            block_size: 16,
            max_num_batched_tokens: 2048,
            max_num_seqs: 64,
            max_model_len: 8192,
        }
    }

    pub fn total_blocks(&self) -> usize {
        self.kv_capacity_tokens / self.block_size
    }

    /// Seconds for one step computing `chunks` = (tokens already cached, new tokens) per request.
    /// An empty step costs nothing (the engine idles).
    pub fn step_time_s(&self, chunks: impl IntoIterator<Item = (usize, usize)>) -> f64 {
        let m = &self.model;
        let (mut flops, mut bytes, mut any) = (0.0f64, m.weight_bytes, false);
        for (ctx, new) in chunks {
            if new == 0 {
                continue;
            }
            any = true;
            let (c, n) = (ctx as f64, new as f64);
            // Query k of the chunk attends to ctx + k + 1 keys: n·ctx + n(n+1)/2 pairs in total.
            let pairs = n * c + n * (n + 1.0) / 2.0;
            flops += 2.0 * m.params * n + 4.0 * (m.layers * m.attn_dim) as f64 * pairs;
            bytes += m.kv_bytes_per_token * (c + n);
        }
        if !any {
            return 0.0;
        }
        self.overhead_s + (flops / self.compute_flops).max(bytes / self.bandwidth_bytes)
    }
}

/// Default effective compute of this machine for the `local` profile (see [`Hardware::local`]).
pub const LOCAL_COMPUTE_FLOPS: f64 = 40e9;
/// Default effective memory bandwidth of this machine for the `local` profile.
pub const LOCAL_BANDWIDTH_BYTES: f64 = 8e9;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_is_memory_bound_and_prefill_compute_bound() {
        let hw = Hardware::profile(HardwareKind::A100);
        // 32 decodes at 2k context: weights + 64k tokens of KV over bandwidth.
        let decode = hw.step_time_s((0..32).map(|_| (2048, 1)));
        let bytes = hw.model.weight_bytes + 32.0 * 2049.0 * hw.model.kv_bytes_per_token;
        assert!((decode - hw.overhead_s - bytes / hw.bandwidth_bytes).abs() < 1e-12);
        // One 8k prefill: FLOPs dominate.
        let prefill = hw.step_time_s([(0, 8192)]);
        assert!(prefill > 10.0 * decode / 2.0, "{prefill} vs {decode}");
        assert!(prefill > 2.0 * 6.74e9 * 8192.0 / hw.compute_flops);
    }

    #[test]
    fn step_time_grows_with_context_and_batch() {
        let hw = Hardware::profile(HardwareKind::H100);
        assert_eq!(hw.step_time_s(std::iter::empty()), 0.0);
        let a = hw.step_time_s([(1000, 1)]);
        let b = hw.step_time_s([(4000, 1)]);
        let c = hw.step_time_s([(4000, 1), (4000, 1)]);
        assert!(a < b && b < c);
        assert!(hw.step_time_s([(0, 100)]) < hw.step_time_s([(1000, 100)]));
    }

    #[test]
    fn hardware_names_parse() {
        for k in HardwareKind::ALL {
            assert_eq!(k.as_str().parse::<HardwareKind>().unwrap(), k);
            assert_eq!(Hardware::profile(k).kind, k);
        }
        assert!("tpu".parse::<HardwareKind>().is_err());
    }
}
