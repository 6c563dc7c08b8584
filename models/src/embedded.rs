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
