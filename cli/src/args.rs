//! Command-line argument groups shared by the commands (model, engine, sampling), their
//! validation, and their translation into engine and model types.
//!
//! Every flag value is checked by clap's value parsers, so a bad value is a one-line error that
//! names the flag, and nothing is loaded before the command line is known to be valid.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device};
use clap::{Args, ValueEnum};
use kvault_engine::engine::EngineConfig;
use kvault_engine::sampler::SamplingParams;
use kvault_engine::sizing::{parse_bytes, CacheBudget};
use kvault_kernels::KvDtype;
use kvault_models::gates::{gates_beside_model, load_gates, RetentionGates};
use kvault_models::head_roles::{head_roles_beside_model, load_head_roles};
use kvault_kernels::HeadRoles;
use kvault_kernels::MatmulPrecision;
use kvault_models::model::{load_model, LoadOptions, LoadedModel};
use kvault_models::source::ModelSource;
use kvault_scheduler::PolicyKind;

#[derive(Args, Debug, Clone)]
pub struct ModelArgs {
    /// Model: a local folder (config.json + safetensors), a .gguf file, or a Hugging Face id
    /// `org/name[@revision]`. Default: the embedded stories260K.
    #[arg(long, short = 'm')]
    pub model: Option<String>,
    /// Compute dtype. `auto`: f32 on CPU with GGUF weights kept quantized; `f32` also
    /// dequantizes GGUF weights at load.
    #[arg(long, value_enum, default_value_t = DtypeArg::Auto)]
    pub dtype: DtypeArg,
    /// Device: `cpu` or `cuda:N` (CUDA needs a build with `--features cuda`).
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// TRIM-KV retention gates for `--kv-policy trimkv` (from `kvault train-gates`). Default:
    /// `trimkv_gates.safetensors` beside the model (in its folder), or the embedded model's own.
    #[arg(long)]
    pub kv_gates: Option<std::path::PathBuf>,
    /// LycheeDecode head roles for `--kv-policy lychee` (from `kvault calibrate-heads`). Default:
    /// `lychee_heads.safetensors` beside the model (in its folder), or the embedded model's own.
    #[arg(long)]
    pub head_roles: Option<std::path::PathBuf>,
    /// Activations of quantized (Q4_0/Q4_1/Q8_0) GGUF matmuls on CPU. `int16` (default):
    /// rounded to 16 bits per 32 values, integer dot products (perplexity +0.002% against the
    /// reference, the fastest mode measured); `exact`: f32, equal to the dequantized weights'
    /// product up to rounding; `int8`: 8 bits (16 in the attention projections). All are
    /// batch-invariant. See the README's Determinism section.
    #[arg(long, value_enum, default_value_t = PrecisionArg::Int16)]
    pub matmul_precision: PrecisionArg,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum PrecisionArg {
    Exact,
    Int16,
    Int8,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum DtypeArg {
    Auto,
    F32,
    F16,
    Bf16,
}

impl ModelArgs {
    pub fn load(&self) -> Result<LoadedModel> {
        let device = parse_device(&self.device)?;
        let dtype = match self.dtype {
            DtypeArg::Auto => None,
            DtypeArg::F32 => Some(DType::F32),
            DtypeArg::F16 => Some(DType::F16),
            DtypeArg::Bf16 => Some(DType::BF16),
        };
        if device.is_cpu() && matches!(dtype, Some(DType::F16 | DType::BF16)) {
            tracing::warn!("half-precision compute on CPU upcasts on every matmul; f32 is faster here");
        }
        let source = ModelSource::parse(self.model.as_deref())?;
        let matmul_precision = match self.matmul_precision {
            PrecisionArg::Exact => MatmulPrecision::Exact,
            PrecisionArg::Int16 => MatmulPrecision::Int16,
            PrecisionArg::Int8 => MatmulPrecision::Int8,
        };
        let mut loaded = load_model(&source, &LoadOptions { device, dtype, matmul_precision })?;
        if let Some(gates) = find_gates(&source, self.kv_gates.as_deref())? {
            loaded = loaded.with_retention_gates(gates).context("--kv-gates")?;
        }
        if let Some(roles) = find_head_roles(&source, self.head_roles.as_deref())? {
            loaded = loaded.with_head_roles(roles).context("--head-roles")?;
        }
        Ok(loaded)
    }

    /// The name the model is served and reported under.
    pub fn display_name(&self) -> String {
        self.model.clone().unwrap_or_else(|| kvault_models::embedded::NAME.to_string())
    }
}

/// Where a model's side file (retention gates, head roles) comes from: the flag when given (it must
/// load), else the documented file beside the model (a broken one is an error too: the user put it
/// there), else the embedded model's own.
enum SideFile {
    Path(PathBuf),
    Embedded,
    None,
}

fn side_file(source: &ModelSource, flag: Option<&Path>, beside: fn(&Path) -> PathBuf) -> SideFile {
    match (flag, source) {
        (Some(p), _) => SideFile::Path(p.to_path_buf()),
        (None, ModelSource::Embedded) => SideFile::Embedded,
        (None, ModelSource::Folder(p) | ModelSource::Gguf(p)) => {
            let path = beside(p);
            if path.is_file() {
                SideFile::Path(path)
            } else {
                SideFile::None
            }
        }
    }
}

/// The model's retention gates; `None` when there are none (only `trimkv` requests need them).
fn find_gates(source: &ModelSource, flag: Option<&Path>) -> Result<Option<RetentionGates>> {
    Ok(match side_file(source, flag, gates_beside_model) {
        SideFile::Path(p) => Some(load_gates(&p, &Device::Cpu).context("--kv-gates")?.gates),
        SideFile::Embedded => Some(kvault_models::embedded::retention_gates()?),
        SideFile::None => None,
    })
}

/// The model's LycheeDecode head roles; `None` when there are none (only `lychee` requests need
/// them).
fn find_head_roles(source: &ModelSource, flag: Option<&Path>) -> Result<Option<HeadRoles>> {
    let file = match side_file(source, flag, head_roles_beside_model) {
        SideFile::Path(p) => load_head_roles(&p).context("--head-roles")?,
        SideFile::Embedded => kvault_models::embedded::head_roles()?,
        SideFile::None => return Ok(None),
    };
    let (layers, heads, retrieval) = file.roles_parts();
    Ok(Some(HeadRoles::new(layers, heads, retrieval).context("--head-roles")?))
}

pub fn parse_device(text: &str) -> Result<Device> {
    if text == "cpu" {
        return Ok(Device::Cpu);
    }
    if let Some(n) = text.strip_prefix("cuda:").or(if text == "cuda" { Some("0") } else { None }) {
        let ordinal: usize = n.parse().map_err(|_| anyhow::anyhow!("--device {text}: expected cuda:N"))?;
        return cuda_device(ordinal);
    }
    bail!("--device {text}: expected `cpu` or `cuda:N`")
}

#[cfg(feature = "cuda")]
fn cuda_device(ordinal: usize) -> Result<Device> {
    Ok(kvault_kernels::cuda::open_device(ordinal)?)
}

#[cfg(not(feature = "cuda"))]
fn cuda_device(ordinal: usize) -> Result<Device> {
    bail!("--device cuda:{ordinal}: this kvault was built without CUDA support (build one with scripts/build-cuda.sh)")
}

#[derive(Args, Debug, Clone)]
pub struct EngineArgs {
    /// Tokens per KV block.
    #[arg(long, default_value_t = 16, value_parser = parse_block_size)]
    pub block_size: usize,
    /// KV cache size in bytes (e.g. `2GiB`, `512MiB`). Default: 1GiB unless --num-blocks is given.
    #[arg(long, value_parser = parse_size, conflicts_with = "num_blocks")]
    pub kv_cache_memory: Option<u64>,
    /// KV cache size in blocks.
    #[arg(long, value_parser = parse_positive)]
    pub num_blocks: Option<usize>,
    /// Maximum tokens per request (prompt + output). Default: the model's context, capped to
    /// what the cache holds.
    #[arg(long, value_parser = parse_positive)]
    pub max_model_len: Option<usize>,
    /// Maximum requests running at once.
    #[arg(long, default_value_t = 256, value_parser = parse_positive)]
    pub max_num_seqs: usize,
    /// Maximum tokens computed per step (prefill chunks + decode rows).
    #[arg(long, default_value_t = 2048, value_parser = parse_positive)]
    pub max_num_batched_tokens: usize,
    /// Admission policy.
    #[arg(long, value_enum, default_value_t = PolicyArg::PastFuture)]
    pub scheduler: PolicyArg,
    /// Disable prefix caching.
    #[arg(long)]
    pub no_prefix_caching: bool,
    /// KV cache element type. `auto`: the model's compute dtype (f32 on CPU). int8 and fp8
    /// (e4m3) keep one scale per token and KV head and are dequantized inside attention.
    #[arg(long, value_enum, default_value_t = KvDtypeArg::Auto)]
    pub kv_cache_dtype: KvDtypeArg,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum KvDtypeArg {
    Auto,
    F32,
    F16,
    Bf16,
    Int8,
    Fp8,
}

impl KvDtypeArg {
    /// `None` for `auto` (the engine resolves it from the model).
    pub fn resolve(self) -> Option<KvDtype> {
        match self {
            KvDtypeArg::Auto => None,
            KvDtypeArg::F32 => Some(KvDtype::F32),
            KvDtypeArg::F16 => Some(KvDtype::F16),
            KvDtypeArg::Bf16 => Some(KvDtype::Bf16),
            KvDtypeArg::Int8 => Some(KvDtype::Int8),
            KvDtypeArg::Fp8 => Some(KvDtype::Fp8),
        }
    }
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum PolicyArg {
    Aggressive,
    Conservative,
    PastFuture,
}

impl EngineArgs {
    pub fn config(&self, max_queued_requests: usize) -> EngineConfig {
        let budget = match (self.num_blocks, self.kv_cache_memory) {
            (Some(n), _) => CacheBudget::Blocks(n),
            (None, Some(b)) => CacheBudget::Bytes(b),
            (None, None) => CacheBudget::Bytes(1 << 30),
        };
        EngineConfig {
            block_size: self.block_size,
            cache_budget: budget,
            max_model_len: self.max_model_len,
            max_num_seqs: self.max_num_seqs,
            max_num_batched_tokens: self.max_num_batched_tokens,
            policy: match self.scheduler {
                PolicyArg::Aggressive => PolicyKind::Aggressive,
                PolicyArg::Conservative => PolicyKind::Conservative,
                PolicyArg::PastFuture => PolicyKind::PastFuture,
            },
            enable_prefix_caching: !self.no_prefix_caching,
            max_queued_requests,
            offload: Default::default(),
            kv_cache_dtype: self.kv_cache_dtype.resolve(),
        }
    }
}

#[derive(Args, Debug, Clone)]
pub struct SamplingArgs {
    /// Sampling temperature; 0 is greedy.
    #[arg(long, default_value_t = 0.8, value_parser = parse_temperature, allow_negative_numbers = true)]
    pub temperature: f32,
    /// Keep only the k most likely tokens (0 = off).
    #[arg(long, default_value_t = 0)]
    pub top_k: usize,
    /// Nucleus sampling: keep the smallest set of tokens whose probability reaches p.
    #[arg(long, default_value_t = 1.0, value_parser = parse_unit_open_closed, allow_negative_numbers = true)]
    pub top_p: f32,
    /// Drop tokens less likely than min_p times the most likely one.
    #[arg(long, default_value_t = 0.0, value_parser = parse_unit_closed, allow_negative_numbers = true)]
    pub min_p: f32,
    /// Penalize tokens already in the prompt or output (1 = off).
    #[arg(long, default_value_t = 1.0, value_parser = parse_repetition_penalty, allow_negative_numbers = true)]
    pub repetition_penalty: f32,
    /// OpenAI presence penalty, in [-2, 2].
    #[arg(long, default_value_t = 0.0, value_parser = parse_openai_penalty, allow_negative_numbers = true)]
    pub presence_penalty: f32,
    /// OpenAI frequency penalty, in [-2, 2].
    #[arg(long, default_value_t = 0.0, value_parser = parse_openai_penalty, allow_negative_numbers = true)]
    pub frequency_penalty: f32,
    /// Seed for sampling: the same seed gives the same text.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Maximum tokens to generate.
    #[arg(long, default_value_t = 256, value_parser = parse_positive)]
    pub max_tokens: usize,
    /// Stop when this text is generated (repeatable); it is not printed.
    #[arg(long)]
    pub stop: Vec<String>,
    /// Keep generating past the end-of-sequence token.
    #[arg(long)]
    pub ignore_eos: bool,
}

impl SamplingArgs {
    pub fn params(&self) -> SamplingParams {
        SamplingParams {
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            min_p: self.min_p,
            repetition_penalty: self.repetition_penalty,
            presence_penalty: self.presence_penalty,
            frequency_penalty: self.frequency_penalty,
            seed: self.seed,
            max_tokens: self.max_tokens,
            stop: self.stop.clone(),
            ignore_eos: self.ignore_eos,
            ..SamplingParams::default()
        }
    }
}

fn parse_f32(s: &str) -> Result<f32, String> {
    let v: f32 = s.parse().map_err(|_| format!("`{s}` is not a number"))?;
    if !v.is_finite() {
        return Err(format!("`{s}` is not a finite number"));
    }
    Ok(v)
}

fn parse_temperature(s: &str) -> Result<f32, String> {
    let v = parse_f32(s)?;
    if v < 0.0 {
        return Err(format!("must be >= 0, got {v}"));
    }
    Ok(v)
}

fn parse_unit_open_closed(s: &str) -> Result<f32, String> {
    let v = parse_f32(s)?;
    if !(v > 0.0 && v <= 1.0) {
        return Err(format!("must be in (0, 1], got {v}"));
    }
    Ok(v)
}

fn parse_unit_closed(s: &str) -> Result<f32, String> {
    let v = parse_f32(s)?;
    if !(0.0..=1.0).contains(&v) {
        return Err(format!("must be in [0, 1], got {v}"));
    }
    Ok(v)
}

fn parse_repetition_penalty(s: &str) -> Result<f32, String> {
    let v = parse_f32(s)?;
    if v <= 0.0 {
        return Err(format!("must be > 0, got {v}"));
    }
    Ok(v)
}

fn parse_openai_penalty(s: &str) -> Result<f32, String> {
    let v = parse_f32(s)?;
    if !(-2.0..=2.0).contains(&v) {
        return Err(format!("must be in [-2, 2], got {v}"));
    }
    Ok(v)
}

fn parse_positive(s: &str) -> Result<usize, String> {
    let v: usize = s.parse().map_err(|_| format!("`{s}` is not a positive integer"))?;
    if v == 0 {
        return Err("must be at least 1".into());
    }
    Ok(v)
}

fn parse_block_size(s: &str) -> Result<usize, String> {
    let v: usize = s.parse().map_err(|_| format!("`{s}` is not an integer"))?;
    if ![8, 16, 32].contains(&v) {
        return Err(format!("must be 8, 16 or 32, got {v}"));
    }
    Ok(v)
}

fn parse_size(s: &str) -> Result<u64, String> {
    parse_bytes(s)
}
