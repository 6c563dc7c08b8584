//! The interface every eviction policy implements, and the choice of implementation per request.
//!
//! A rule sees one KV head of one layer of one request at a time: the tokens it holds
//! ([`HeadSlots`]), this step's attention mass when it asked for it, and what kind of step it is.
//! It answers two questions: which query rows must vote (so the attention-mass op runs only for
//! rules and rows that need it), and which `budget` slots to keep.
//!
//! Must not know: tensors, blocks or other requests.

use super::h2o::H2o;
use super::slots::HeadSlots;
use super::snapkv::SnapKv;
use super::spec::KvPolicy;
use super::streaming::Streaming;
use super::trimkv::TrimKv;

/// What this step computes for the request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Chunk {
    /// New tokens (1 for a decode row).
    pub q_len: usize,
    /// The chunk holds prompt tokens (prefill), not a sampled token.
    pub in_prompt: bool,
}

pub trait EvictionRule: Send + Sync {
    /// First query row of the chunk whose attention the rule needs, or `None`.
    fn voters(&self, chunk: Chunk) -> Option<usize>;
    /// Takes in this step's attention mass per slot (`mass[i]` for slot `i`, new slots included;
    /// only called when `voters` asked).
    fn observe(&self, head: &mut HeadSlots, mass: &[f32], chunk: Chunk);
    /// Exactly `budget` slots to keep (`head.len() > budget`).
    fn keep(&self, head: &HeadSlots, budget: usize, chunk: Chunk) -> Vec<bool>;
    /// Whether the rule ranks by learned retention: the evictor then computes each new token's
    /// `log β` per KV head with the model's retention gates and stores it as the slot's score.
    fn uses_retention(&self) -> bool {
        false
    }
}

/// The rule that runs `policy`; `None` for the policies that evict nothing (`full`, `lychee`).
pub fn rule_for(policy: &KvPolicy) -> Option<Box<dyn EvictionRule>> {
    match *policy {
        KvPolicy::Full | KvPolicy::Lychee { .. } => None,
        KvPolicy::Streaming { sink_tokens, .. } => Some(Box::new(Streaming { sink_tokens })),
        KvPolicy::H2o { recent_window, .. } => Some(Box::new(H2o { recent_window })),
        KvPolicy::SnapKv { window, kernel, pooling, .. } => Some(Box::new(SnapKv { window, kernel, pooling })),
        KvPolicy::TrimKv { .. } => Some(Box::new(TrimKv)),
    }
}
