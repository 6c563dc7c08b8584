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
use crate::sla::SlaConfig;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModelSpec {
    pub name: &'static str,
    pub params: f64,
    pub layers: usize,
    /// Query width (heads × head_dim), for attention FLOPs.
    pub attn_dim: usize,
    pub kv_bytes_per_token: f64,
    /// kvault's per-slot eviction metadata (position i32 + score f32 per layer and KV head): it
    /// takes cache memory but is not read by attention.
    pub kv_meta_bytes_per_token: f64,
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
            kv_meta_bytes_per_token: (32 * 32 * 8) as f64,
            weight_bytes: 6.74e9 * 2.0,
        }
    }

    /// SmolLM2-135M as this machine serves it: Q4_1 GGUF weights streamed per step (the file
    /// is 98.4 MB: 4-bit blocks plus the higher-precision embedding), f32 activations and an f32
    /// KV cache (30 layers, 3 KV heads × 64).
    pub fn smollm2_135m_q4_1() -> Self {
        Self {
            name: "SmolLM2-135M-Q4_1",
            params: 1.35e8,
            layers: 30,
            attn_dim: 576,
            kv_bytes_per_token: (2 * 30 * 3 * 64 * 4) as f64,
            kv_meta_bytes_per_token: (30 * 3 * 8) as f64,
            weight_bytes: 98_362_432.0,
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
    /// The built-in profiles.
    pub fn profile(kind: HardwareKind) -> Self {
        match kind {
            // The constants are checked against the measurement by a unit test, so this cannot
            // fail at run time.
            HardwareKind::Local => Self::local(&LocalMeasurement::SMOLLM2_Q4_1, LOCAL_KV_CACHE_BYTES)
                .expect("the built-in local measurement leaves time beyond the step overhead"),
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

    /// This machine serving SmolLM2-135M (Q4_1), with the roofline rates *derived from measured
    /// batch-1 speeds* rather than from datasheets: the prefill run (one step of
    /// `prompt_tokens`) is compute-bound, so its FLOPs over its time minus the step overhead give
    /// the effective compute rate; a decode step is bound by the per-step weight pass plus KV
    /// reads, so its bytes over its time minus the overhead give the effective "bandwidth".
    /// On 2 CPU cores that decode is really latency-bound in the quantized dot kernel, not
    /// DRAM-bound, but it is still a fixed cost per step shared by the whole batch, which is what
    /// the bandwidth term models: batching decode amortizes it until the batch's FLOPs dominate
    /// (about 5 rows with the built-in numbers).
    ///
    /// KV capacity is what `kvault serve --kv-cache-memory <kv_cache_bytes>` would allocate.
    /// Budgets: `--max-num-batched-tokens 512` (a full step then costs ~3 s, which bounds every
    /// running request's inter-token gap; the 2048 default would make it ~12 s),
    /// `--max-num-seqs 256` (the default) and the model's 8192-token context.
    pub fn local(m: &LocalMeasurement, kv_cache_bytes: u64) -> Result<Self> {
        let model = ModelSpec::smollm2_135m_q4_1();
        let overhead_s = LOCAL_OVERHEAD_S;
        let prefill_s = m.prompt_tokens as f64 / m.prefill_tok_s;
        let decode_s = 1.0 / m.decode_tok_s;
        if !(m.prompt_tokens > 0 && m.new_tokens > 0 && prefill_s > overhead_s && decode_s > overhead_s) {
            return Err(SchedulerError::InvalidConfig(format!(
                "local measurement {m:?}: a step must take longer than the {} ms overhead",
                overhead_s * 1e3
            )));
        }
        // Decode context: the prompt plus half the generated tokens, the run's average.
        let decode_ctx = m.prompt_tokens + m.new_tokens / 2;
        let (prefill_flops, _) = step_work(&model, [(0, m.prompt_tokens)]);
        let (_, decode_bytes) = step_work(&model, [(decode_ctx, 1)]);
        let block_bytes = LOCAL_BLOCK_SIZE as f64 * (model.kv_bytes_per_token + model.kv_meta_bytes_per_token);
        let blocks = (kv_cache_bytes as f64 / block_bytes).floor() as usize;
        if blocks == 0 {
            return Err(SchedulerError::InvalidConfig(format!(
                "a {kv_cache_bytes}-byte KV cache holds no {LOCAL_BLOCK_SIZE}-token block of {}",
                model.name
            )));
        }
        Ok(Self {
            kind: HardwareKind::Local,
            compute_flops: prefill_flops / (prefill_s - overhead_s),
            bandwidth_bytes: decode_bytes / (decode_s - overhead_s),
            model,
            overhead_s,
            kv_capacity_tokens: blocks * LOCAL_BLOCK_SIZE,
            block_size: LOCAL_BLOCK_SIZE,
            max_num_batched_tokens: 512,
            max_num_seqs: 256,
            max_model_len: 8192,
        })
    }

    /// The SLA a profile is judged by unless the user sets one. A100/H100: the paper's 7B SLA.
    /// Local: scaled to a 2-core CPU the way the paper's SLA relates to a GPU — TTFT covers a
    /// long queue wait plus the prefill of a long prompt (a 4096-token prompt alone takes ~25 s
    /// here), and the inter-token gap allows a couple of full 512-token steps (~3 s each).
    pub fn default_sla(&self) -> SlaConfig {
        match self.kind {
            HardwareKind::A100 | HardwareKind::H100 => SlaConfig::PAPER_7B,
            HardwareKind::Local => SlaConfig { ttft_ms: 60_000.0, max_itl_ms: 8_000.0 },
        }
    }

    pub fn total_blocks(&self) -> usize {
        self.kv_capacity_tokens / self.block_size
    }

    /// Seconds for one step computing `chunks` = (tokens already cached, new tokens) per request.
    /// An empty step costs nothing (the engine idles).
    pub fn step_time_s(&self, chunks: impl IntoIterator<Item = (usize, usize)>) -> f64 {
        let (flops, bytes) = step_work(&self.model, chunks);
        if flops == 0.0 {
            return 0.0;
        }
        self.overhead_s + (flops / self.compute_flops).max(bytes / self.bandwidth_bytes)
    }
}

/// (FLOPs, bytes read) of one step; (0, _) when no chunk computes anything. A step reads the
/// weights once and each scheduled request's cached KV once.
fn step_work(m: &ModelSpec, chunks: impl IntoIterator<Item = (usize, usize)>) -> (f64, f64) {
    let (mut flops, mut bytes) = (0.0f64, m.weight_bytes);
    for (ctx, new) in chunks {
        if new == 0 {
            continue;
        }
        let (c, n) = (ctx as f64, new as f64);
        // Query k of the chunk attends to ctx + k + 1 keys: n·ctx + n(n+1)/2 pairs in total.
        let pairs = n * c + n * (n + 1.0) / 2.0;
        flops += 2.0 * m.params * n + 4.0 * (m.layers * m.attn_dim) as f64 * pairs;
        bytes += m.kv_bytes_per_token * (c + n);
    }
    (flops, bytes)
}

/// Batch-1 speeds measured with `kvault generate`/`bench latency` on this machine: what the
/// `local` profile's rates are derived from (see [`Hardware::local`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LocalMeasurement {
    pub prompt_tokens: usize,
    pub prefill_tok_s: f64,
    pub new_tokens: usize,
    pub decode_tok_s: f64,
}

impl LocalMeasurement {
    /// SmolLM2-135M Q4_1, 2 threads, 128-token prompt, 128 new tokens (the README's
    /// performance table): 172.9 tok/s prefill, 34.7 tok/s decode.
    pub const SMOLLM2_Q4_1: LocalMeasurement =
        LocalMeasurement { prompt_tokens: 128, prefill_tok_s: 172.9, new_tokens: 128, decode_tok_s: 34.7 };
}

/// The `local` profile's KV cache: `kvault serve`'s default `--kv-cache-memory` (1 GiB), which
/// holds 1433 blocks (22 928 tokens) of SmolLM2-135M in f32.
pub const LOCAL_KV_CACHE_BYTES: u64 = 1 << 30;
const LOCAL_BLOCK_SIZE: usize = 16;
/// Per-step cost outside the forward pass (scheduling, batch assembly, sampling): an assumption,
/// small next to the measured steps (28.8 ms decode, 740 ms prefill).
const LOCAL_OVERHEAD_S: f64 = 2e-3;

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
    fn local_profile_reproduces_the_measured_batch1_speeds() {
        let m = LocalMeasurement::SMOLLM2_Q4_1;
        let hw = Hardware::profile(HardwareKind::Local);
        let prefill_tok_s = m.prompt_tokens as f64 / hw.step_time_s([(0, m.prompt_tokens)]);
        assert!((prefill_tok_s - m.prefill_tok_s).abs() < 0.01, "{prefill_tok_s}");
        // Decode over the measured run: contexts prompt .. prompt + new.
        let decode_s: f64 = (0..m.new_tokens).map(|k| hw.step_time_s([(m.prompt_tokens + k, 1)])).sum();
        let decode_tok_s = m.new_tokens as f64 / decode_s;
        assert!((decode_tok_s - m.decode_tok_s).abs() < 0.05 * m.decode_tok_s, "{decode_tok_s}");
        // Batching amortizes the per-step weight pass: 8 decode rows cost far less than 8 steps.
        let one = hw.step_time_s([(192, 1)]);
        assert!(hw.step_time_s((0..8).map(|_| (192, 1))) < 4.0 * one);
    }

    #[test]
    fn local_kv_capacity_matches_the_engine_sizing_of_one_gib() {
        // engine/src/sizing.rs: 30 layers × 3 heads × 16 slots × (2·64·4 + 8) = 748 800 B/block.
        let hw = Hardware::profile(HardwareKind::Local);
        assert_eq!(hw.kv_capacity_tokens, ((1u64 << 30) / 748_800) as usize * 16);
        let half = Hardware::local(&LocalMeasurement::SMOLLM2_Q4_1, 1 << 29).unwrap();
        assert_eq!(half.kv_capacity_tokens, ((1u64 << 29) / 748_800) as usize * 16);
    }

    #[test]
    fn impossible_local_measurements_are_errors() {
        let fast = LocalMeasurement { decode_tok_s: 1e6, ..LocalMeasurement::SMOLLM2_Q4_1 };
        assert!(Hardware::local(&fast, 1 << 30).is_err(), "a step shorter than the overhead");
        assert!(Hardware::local(&LocalMeasurement::SMOLLM2_Q4_1, 1000).is_err(), "no block fits");
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
