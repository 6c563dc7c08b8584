//! Qwen3 models: the Llama decoder with RMSNorm on every q and k head (before RoPE) and an
//! explicit `head_dim` that need not equal hidden_size / num_heads.

use std::collections::HashMap;

use anyhow::Result;
use candle_core::quantized::gguf_file::Value as GgufValue;
use serde_json::Value;

use crate::config::{gguf_common, hf_common, Architecture, ModelConfig};

pub fn config_from_hf(json: &Value) -> Result<ModelConfig> {
    let mut cfg = hf_common(json, Architecture::Qwen3)?;
    cfg.qk_norm = true;
    Ok(cfg)
}

pub fn config_from_gguf(md: &HashMap<String, GgufValue>, has_output_head: bool) -> Result<ModelConfig> {
    let mut cfg = gguf_common(md, "qwen3", Architecture::Qwen3, has_output_head)?;
    cfg.qk_norm = true;
    Ok(cfg)
}
