//! Counters the engine keeps for observers (the server's /metrics, progress bars, tests).
//!
//! Owns: lock-free gauges and counters, written by the engine thread, read from anywhere, and
//! the latest [`KvState`] picture.
//! Must not know: Prometheus or any exporter format (the cli crate renders them).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use parking_lot::Mutex;

use crate::kv_policy::KvPolicyKind;
use crate::kv_state::KvState;
use crate::offload::counters::{OffloadCounters, OffloadSnapshot};

const POLICIES: usize = KvPolicyKind::ALL.len();

#[derive(Debug, Default)]
pub struct EngineStats {
    running: AtomicU64,
    /// Most requests running at once since the engine started.
    peak_running: AtomicU64,
    waiting: AtomicU64,
    /// Fraction of KV blocks in use, as f64 bits.
    kv_usage_bits: AtomicU64,
    total_blocks: AtomicU64,
    free_blocks: AtomicU64,
    prefix_cache_queries: AtomicU64,
    prefix_cache_hits: AtomicU64,
    preemptions: AtomicU64,
    prompt_tokens: AtomicU64,
    generation_tokens: AtomicU64,
    finished_requests: AtomicU64,
    steps: AtomicU64,
    /// Per KV policy (indexed like `KvPolicyKind::ALL`): requests admitted to the engine.
    kv_policy_requests: [AtomicU64; POLICIES],
    /// Per KV policy: tokens evicted (one per token, not per layer and head).
    kv_evicted_tokens: [AtomicU64; POLICIES],
    /// KV tokens held by running requests, per KV head per layer, summed over requests.
    kv_tokens_held: AtomicU64,
    /// Replaced whole after every step (readers copy it; the engine never waits for them long).
    kv_state: Mutex<KvState>,
    /// The offload tiers' counters (shared with the tier's I/O threads).
    pub offload: Arc<OffloadCounters>,
}

/// One KV policy's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KvPolicyCounters {
    pub policy: KvPolicyKind,
    pub requests: u64,
    pub evicted_tokens: u64,
}

/// A consistent-enough copy of the counters (each field read once).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StatsSnapshot {
    pub running: u64,
    pub peak_running: u64,
    pub waiting: u64,
    pub kv_usage: f64,
    pub total_blocks: u64,
    pub free_blocks: u64,
    /// Prompt tokens looked up in the prefix cache, and how many of them hit (vLLM counts tokens).
    pub prefix_cache_queries: u64,
    pub prefix_cache_hits: u64,
    pub preemptions: u64,
    pub prompt_tokens: u64,
    pub generation_tokens: u64,
    pub finished_requests: u64,
    pub steps: u64,
    /// Every policy, in `KvPolicyKind::ALL` order (zeros included, so exporters see each label).
    pub kv_policies: Vec<KvPolicyCounters>,
    pub kv_tokens_held: u64,
    pub offload: OffloadSnapshot,
}

impl EngineStats {
    pub fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            running: self.running.load(Relaxed),
            peak_running: self.peak_running.load(Relaxed),
            waiting: self.waiting.load(Relaxed),
            kv_usage: f64::from_bits(self.kv_usage_bits.load(Relaxed)),
            total_blocks: self.total_blocks.load(Relaxed),
            free_blocks: self.free_blocks.load(Relaxed),
            prefix_cache_queries: self.prefix_cache_queries.load(Relaxed),
            prefix_cache_hits: self.prefix_cache_hits.load(Relaxed),
            preemptions: self.preemptions.load(Relaxed),
            prompt_tokens: self.prompt_tokens.load(Relaxed),
            generation_tokens: self.generation_tokens.load(Relaxed),
            finished_requests: self.finished_requests.load(Relaxed),
            steps: self.steps.load(Relaxed),
            kv_policies: KvPolicyKind::ALL
                .iter()
                .enumerate()
                .map(|(i, &policy)| KvPolicyCounters {
                    policy,
                    requests: self.kv_policy_requests[i].load(Relaxed),
                    evicted_tokens: self.kv_evicted_tokens[i].load(Relaxed),
                })
                .collect(),
            kv_tokens_held: self.kv_tokens_held.load(Relaxed),
            offload: self.offload.snapshot(),
        }
    }

    /// Where the KV memory is, as of the last step.
    pub fn kv_state(&self) -> KvState {
        self.kv_state.lock().clone()
    }

    pub(crate) fn set_kv_state(&self, state: KvState) {
        *self.kv_state.lock() = state;
    }

    pub(crate) fn add_kv_request(&self, policy: KvPolicyKind) {
        self.kv_policy_requests[policy_index(policy)].fetch_add(1, Relaxed);
    }

    pub(crate) fn add_kv_evicted(&self, policy: KvPolicyKind, tokens: usize) {
        self.kv_evicted_tokens[policy_index(policy)].fetch_add(tokens as u64, Relaxed);
    }

    pub(crate) fn set_kv_tokens_held(&self, tokens: usize) {
        self.kv_tokens_held.store(tokens as u64, Relaxed);
    }

    pub(crate) fn set_queues(&self, running: usize, waiting: usize) {
        self.running.store(running as u64, Relaxed);
        self.peak_running.fetch_max(running as u64, Relaxed);
        self.waiting.store(waiting as u64, Relaxed);
    }

    pub(crate) fn set_blocks(&self, total: usize, free: usize) {
        self.total_blocks.store(total as u64, Relaxed);
        self.free_blocks.store(free as u64, Relaxed);
        let usage = if total == 0 { 0.0 } else { 1.0 - free as f64 / total as f64 };
        self.kv_usage_bits.store(usage.to_bits(), Relaxed);
    }

    pub(crate) fn add_prefix_lookup(&self, queried_tokens: usize, hit_tokens: usize) {
        self.prefix_cache_queries.fetch_add(queried_tokens as u64, Relaxed);
        self.prefix_cache_hits.fetch_add(hit_tokens as u64, Relaxed);
    }

    pub(crate) fn add_preemptions(&self, n: usize) {
        self.preemptions.fetch_add(n as u64, Relaxed);
    }

    pub(crate) fn add_prompt_tokens(&self, n: usize) {
        self.prompt_tokens.fetch_add(n as u64, Relaxed);
    }

    pub(crate) fn add_generation_tokens(&self, n: usize) {
        self.generation_tokens.fetch_add(n as u64, Relaxed);
    }

    pub(crate) fn add_finished(&self) {
        self.finished_requests.fetch_add(1, Relaxed);
    }

    pub(crate) fn add_step(&self) {
        self.steps.fetch_add(1, Relaxed);
    }
}

fn policy_index(policy: KvPolicyKind) -> usize {
    KvPolicyKind::ALL.iter().position(|&p| p == policy).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kv_usage_is_the_used_fraction_of_blocks() {
        let s = EngineStats::default();
        s.set_blocks(200, 50);
        let snap = s.snapshot();
        assert_eq!(snap.kv_usage, 0.75);
        assert_eq!((snap.total_blocks, snap.free_blocks), (200, 50));
    }

    #[test]
    fn counters_accumulate() {
        let s = EngineStats::default();
        s.add_prefix_lookup(64, 48);
        s.add_prefix_lookup(16, 0);
        s.add_preemptions(2);
        let snap = s.snapshot();
        assert_eq!((snap.prefix_cache_queries, snap.prefix_cache_hits, snap.preemptions), (80, 48, 2));
    }

    #[test]
    fn kv_counters_are_kept_per_policy_and_every_policy_is_listed() {
        let s = EngineStats::default();
        s.add_kv_request(KvPolicyKind::H2o);
        s.add_kv_request(KvPolicyKind::H2o);
        s.add_kv_evicted(KvPolicyKind::H2o, 10);
        s.add_kv_evicted(KvPolicyKind::Streaming, 3);
        let snap = s.snapshot();
        assert_eq!(snap.kv_policies.len(), KvPolicyKind::ALL.len());
        let h2o = snap.kv_policies.iter().find(|c| c.policy == KvPolicyKind::H2o).unwrap();
        assert_eq!((h2o.requests, h2o.evicted_tokens), (2, 10));
        let streaming = snap.kv_policies.iter().find(|c| c.policy == KvPolicyKind::Streaming).unwrap();
        assert_eq!((streaming.requests, streaming.evicted_tokens), (0, 3));
    }
}
