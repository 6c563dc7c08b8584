//! Models for kvault: everything needed to turn `--model ID|PATH` into a runnable network.
//!
//! Owns: resolving a model (local folder, GGUF file, hf-hub id, or the embedded default),
//! parsing `config.json` / GGUF metadata into one normalized config, loading weights
//! (memory-mapped safetensors, quantized GGUF), tokenizers (tokenizer.json or rebuilt from GGUF
//! metadata), chat templates, and the architectures themselves (llama, qwen2, qwen3) over shared
//! layers. A model runs one flattened varlen batch against a paged KV cache it is handed.
//!
//! Must not know: requests, sampling, scheduling or how KV blocks are allocated. It sees token
//! ids, positions and attention metadata, never a request.

pub mod chat_template;
pub mod config;
pub mod embedded;
pub mod gates;
pub mod head_roles;
pub mod hub;
pub mod layers;
pub mod llama;
pub mod model;
pub mod qwen2;
pub mod qwen3;
pub mod source;
pub mod special_tokens;
pub mod tokenizer;
pub mod training;
pub mod weights;
