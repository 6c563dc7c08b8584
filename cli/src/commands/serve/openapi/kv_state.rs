//! The shape of `GET /v1/kv/state` (built by serve/kv_state.rs), for the OpenAPI document only;
//! the schemathesis test checks live answers against it.
//!
//! Must not know: how the state is gathered or shaped.
#![allow(dead_code)] // Fields are read by the schema derive, never by code.

use utoipa::ToSchema;

/// Where the KV memory is, as of the engine's last step.
#[derive(ToSchema)]
pub struct KvStateResponse {
    /// kv.state
    object: String,
    /// Seconds since the server started (monotonic): divide counter differences by it.
    time: f64,
    model: String,
    max_model_len: u64,
    /// Tokens per KV block.
    block_size: u64,
    pool: KvPool,
    queue: KvQueue,
    /// Every request the engine holds, running or waiting.
    requests: Vec<KvRequest>,
    counters: KvCounters,
    offload: KvOffload,
}

#[derive(ToSchema)]
pub struct KvPool {
    total_blocks: u64,
    used_blocks: u64,
    free_blocks: u64,
    /// Free blocks still holding a prefix-cache entry (reusable by a hit until reallocated).
    free_cached_blocks: u64,
    free_empty_blocks: u64,
    /// used / total, 0 to 1.
    usage: f64,
}

#[derive(ToSchema)]
pub struct KvQueue {
    running: u64,
    waiting: u64,
}

/// One request's KV footprint (tokens per KV head per layer).
#[derive(ToSchema)]
pub struct KvRequest {
    id: u64,
    /// running or waiting
    phase: String,
    policy: KvPolicyReport,
    /// The policy's budget; null for `full`.
    #[schema(required = true)]
    budget: Option<u64>,
    prompt_tokens: u64,
    output_tokens: u64,
    /// prompt + output tokens.
    length: u64,
    /// Positions whose KV was computed (evicted ones included).
    computed_tokens: u64,
    /// Tokens whose KV it holds now.
    tokens_held: u64,
    blocks_held: u64,
    /// Prompt tokens that came from the prefix cache.
    cached_tokens: u64,
    tokens_evicted: u64,
}

/// A policy with every parameter (those of other policies absent).
#[derive(ToSchema)]
pub struct KvPolicyReport {
    policy: crate::kv::KvPolicyName,
    description: String,
    budget: Option<u64>,
    sink_tokens: Option<u64>,
    recent_window: Option<u64>,
    snapkv_window: Option<u64>,
    snapkv_kernel: Option<u64>,
    snapkv_pooling: Option<crate::kv::KvPooling>,
}

/// Monotonic engine counters since start.
#[derive(ToSchema)]
pub struct KvCounters {
    /// Prompt tokens looked up in the prefix cache, and how many hit.
    prefix_cache_queries: u64,
    prefix_cache_hits: u64,
    preemptions: u64,
    prompt_tokens: u64,
    generation_tokens: u64,
    finished_requests: u64,
    steps: u64,
    /// KV tokens held by running requests now, summed.
    kv_tokens_held: u64,
    policies: Vec<KvPolicyCounters>,
}

#[derive(ToSchema)]
pub struct KvPolicyCounters {
    policy: crate::kv::KvPolicyName,
    requests: u64,
    evicted_tokens: u64,
}

/// KV offload tiers (CPU memory, disk); none exists yet.
#[derive(ToSchema)]
pub struct KvOffload {
    configured: bool,
    tiers: Vec<KvOffloadTier>,
}

#[derive(ToSchema)]
pub struct KvOffloadTier {
    name: String,
    total_blocks: u64,
    used_blocks: u64,
}
