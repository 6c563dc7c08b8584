//! What the outside world may know about a running engine: limits, sizes and the model's
//! tokenizer, special tokens and chat template.
//!
//! Must not know: the engine loop or requests (it is read by request validation and callers).

use std::sync::Arc;

use kvault_kernels::KvDtype;
use kvault_models::chat_template::ChatTemplate;
use kvault_models::special_tokens::SpecialTokens;
use kvault_models::tokenizer::Tokenizer;
use kvault_scheduler::PolicyKind;

use crate::kv_policy::KvPolicy;

/// What the outside world may know about a running engine.
#[derive(Clone)]
pub struct EngineInfo {
    pub vocab_size: usize,
    /// Longest request that keeps its whole KV (it must fit the cache).
    pub max_model_len: usize,
    /// Longest request with a KV budget (the model's context).
    pub max_context_len: usize,
    pub block_size: usize,
    pub num_blocks: usize,
    pub cache_bytes: u64,
    /// The KV cache's element type (`auto` resolved).
    pub kv_cache_dtype: KvDtype,
    /// Cache bytes per token: K and V rows of every layer and KV head (scales included) plus
    /// the per-slot policy metadata.
    pub kv_bytes_per_token: u64,
    pub policy: PolicyKind,
    pub tokenizer: Arc<Tokenizer>,
    pub special_tokens: SpecialTokens,
    pub chat_template: Option<ChatTemplate>,
    pub weights_description: String,
    /// The offload tier's configuration and what its disk held at start-up, when configured.
    pub offload: Option<String>,
    /// Whether the model has retention gates loaded (`kv_policy trimkv` needs them).
    pub retention_gates: bool,
    /// Whether the model has LycheeDecode head roles loaded (`kv_policy lychee` needs them).
    pub head_roles: bool,
}

impl EngineInfo {
    /// The longest request (prompt + max_tokens) a request with this KV policy may make: a
    /// budgeted one is bounded by the model's context, one that keeps everything by the cache.
    pub fn max_len_for(&self, kv: &KvPolicy) -> usize {
        if kv.eviction_budget().is_some() {
            self.max_context_len
        } else {
            self.max_model_len
        }
    }
}
