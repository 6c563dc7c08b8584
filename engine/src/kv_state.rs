//! A picture of where the KV memory is, for dashboards: the block pool's occupancy and, for each
//! request the engine holds, its policy, length and what it keeps.
//!
//! Owns: the snapshot types. The engine publishes a fresh snapshot after every step; readers
//! take a copy without waiting for a step. Must not know: JSON or HTTP.

use crate::kv_policy::KvPolicy;

/// The pool and every request, as of the end of the last step.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct KvState {
    pub block_size: usize,
    pub total_blocks: usize,
    pub free_blocks: usize,
    /// Free blocks still holding a prefix-cache hash (reusable by a hit until reallocated).
    pub free_cached_blocks: usize,
    pub requests: Vec<RequestKvState>,
}

impl KvState {
    /// Blocks held by requests.
    pub fn used_blocks(&self) -> usize {
        self.total_blocks - self.free_blocks
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestPhase {
    Waiting,
    Running,
}

impl RequestPhase {
    pub fn as_str(self) -> &'static str {
        match self {
            RequestPhase::Waiting => "waiting",
            RequestPhase::Running => "running",
        }
    }
}

/// One request's KV footprint (tokens are per KV head per layer).
#[derive(Clone, Debug, PartialEq)]
pub struct RequestKvState {
    pub id: u64,
    pub phase: RequestPhase,
    pub policy: KvPolicy,
    pub prompt_tokens: usize,
    pub output_tokens: usize,
    /// Positions whose KV was computed (evicted ones included).
    pub computed_tokens: usize,
    /// Tokens whose KV it holds now.
    pub tokens_held: usize,
    pub blocks_held: usize,
    pub cached_tokens: usize,
    pub tokens_evicted: usize,
}
