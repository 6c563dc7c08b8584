//! Llama-family models: Llama 2 and 3 (incl. Llama 3.1 RoPE scaling), Mistral without a sliding
//! window, SmolLM. The decoder itself is the shared one in layers/; this file says how the
//! family's configs read.

use std::collections::HashMap;

use anyhow::{bail, Result};
use candle_core::quantized::gguf_file::Value as GgufValue;
use serde_json::Value;

use crate::config::{gguf_common, hf_common, Architecture, ModelConfig};

/// From an HF `config.json` with `model_type` "llama" or "mistral".
pub fn config_from_hf(json: &Value) -> Result<ModelConfig> {
    let model_type = json.get("model_type").and_then(Value::as_str).unwrap_or("llama");
    if model_type == "mistral" {
        // A sliding window shorter than the context changes attention itself; kvault does not
        // implement it yet, and silently ignoring it would produce wrong output past the window.
        if let Some(w) = json.get("sliding_window").and_then(Value::as_u64) {
            let ctx = json.get("max_position_embeddings").and_then(Value::as_u64).unwrap_or(0);
            if w < ctx {
                bail!("config.json: Mistral with sliding_window {w} < max_position_embeddings {ctx} is not supported");
            }
        }
    }
    hf_common(json, Architecture::Llama)
}

/// From GGUF metadata with `general.architecture` = "llama".
pub fn config_from_gguf(md: &HashMap<String, GgufValue>, has_output_head: bool) -> Result<ModelConfig> {
    gguf_common(md, "llama", Architecture::Llama, has_output_head)
}
