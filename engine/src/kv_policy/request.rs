//! A budgeted request's eviction state inside the engine: its budget, the rule that runs its
//! policy and which token each of its slots holds.
//!
//! Must not know: blocks or scheduling (the engine pairs this with the block manager's cap).

use super::rule::{rule_for, EvictionRule};
use super::slots::RequestSlots;
use super::spec::KvPolicy;

pub struct RequestBudget {
    pub budget: usize,
    pub rule: Box<dyn EvictionRule>,
    pub slots: RequestSlots,
}

impl RequestBudget {
    /// The state for a request that may evict: it has a budget and can grow past it. A request
    /// whose prompt plus `max_tokens` fits its budget never evicts and runs as `full` does
    /// (prefix caching included), so it gets none.
    pub fn for_request(policy: &KvPolicy, max_total_tokens: usize, num_layers: usize, num_kv_heads: usize) -> Option<Self> {
        let budget = policy.eviction_budget()?;
        if max_total_tokens <= budget {
            return None;
        }
        Some(Self { budget, rule: rule_for(policy)?, slots: RequestSlots::new(num_layers, num_kv_heads) })
    }
}
