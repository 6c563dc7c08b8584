//! Qwen2 models: the Llama decoder with biases on the q/k/v projections.

use std::collections::HashMap;

use anyhow::Result;
use candle_core::quantized::gguf_file::Value as GgufValue;
use serde_json::Value;

use crate::config::{gguf_common, hf_common, Architecture, ModelConfig};

pub fn config_from_hf(json: &Value) -> Result<ModelConfig> {
    let mut cfg = hf_common(json, Architecture::Qwen2)?;
    // Qwen2 always carries q/k/v biases and never an o_proj bias, whatever `attention_bias` says.
    cfg.qkv_bias = true;
    cfg.o_bias = false;
    Ok(cfg)
}

pub fn config_from_gguf(md: &HashMap<String, GgufValue>, has_output_head: bool) -> Result<ModelConfig> {
    let mut cfg = gguf_common(md, "qwen2", Architecture::Qwen2, has_output_head)?;
    cfg.qkv_bias = true;
    cfg.o_bias = false;
    Ok(cfg)
}
