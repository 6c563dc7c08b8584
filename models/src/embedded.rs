//! The default model compiled into the binary: stories260K (MIT, Karpathy's tinyllamas; license
//! and origin in models/assets/stories260K). It makes `kvault generate` work on a fresh, offline
//! machine, and keeps every test of the engine runnable without any download.

pub const NAME: &str = "stories260K";

pub const CONFIG_JSON: &str = include_str!("../assets/stories260K/config.json");
pub const GENERATION_CONFIG_JSON: &str = include_str!("../assets/stories260K/generation_config.json");
pub const TOKENIZER_CONFIG_JSON: &str = include_str!("../assets/stories260K/tokenizer_config.json");
pub const TOKENIZER_JSON: &[u8] = include_bytes!("../assets/stories260K/tokenizer.json");
pub const MODEL_SAFETENSORS: &[u8] = include_bytes!("../assets/stories260K/model.safetensors");
pub const LICENSE: &str = include_str!("../assets/stories260K/LICENSE");
/// TRIM-KV retention gates trained for this model with `kvault train-gates` (provenance in
/// assets/stories260K/trimkv_gates.json), so `--kv-policy trimkv` works with no arguments.
pub const TRIMKV_GATES_SAFETENSORS: &[u8] = include_bytes!("../assets/stories260K/trimkv_gates.safetensors");

/// LycheeDecode head roles calibrated for this model with `kvault calibrate-heads` (provenance
/// in assets/stories260K/lychee_heads.json), so `--kv-policy lychee` works with no arguments.
pub const LYCHEE_HEADS_SAFETENSORS: &[u8] = include_bytes!("../assets/stories260K/lychee_heads.safetensors");

/// The embedded head roles.
pub fn head_roles() -> anyhow::Result<crate::head_roles::HeadRolesFile> {
    crate::head_roles::read_head_roles(LYCHEE_HEADS_SAFETENSORS, &format!("embedded {NAME} lychee_heads.safetensors"))
}

/// The embedded retention gates, on the CPU.
pub fn retention_gates() -> anyhow::Result<crate::gates::RetentionGates> {
    let origin = format!("embedded {NAME} trimkv_gates.safetensors");
    Ok(crate::gates::read_gates(TRIMKV_GATES_SAFETENSORS, &origin, &candle_core::Device::Cpu)?.gates)
}
