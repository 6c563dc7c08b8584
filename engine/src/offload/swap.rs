//! Swap preemption: where a preempted request's KV waits while it is swapped out, and the cost
//! model that picks swap or recompute for a victim.
//!
//! Owns: swapped-out requests in resume order (their block bytes and how many tokens those
//! blocks hold), and measured copy bandwidth and prefill speed.
//! Must not know: the pool or the scheduler (the engine frees and reallocates blocks).

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use super::BlockBytes;

/// How a preempted request gets its KV back.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PreemptionMode {
    /// Free its blocks; recompute its tokens when it resumes (prefix hits still apply).
    #[default]
    Recompute,
    /// Copy its blocks to the RAM tier and back.
    Swap,
    /// Per victim, whichever the cost model expects to be faster.
    Auto,
}

impl PreemptionMode {
    pub fn as_str(self) -> &'static str {
        match self {
            PreemptionMode::Recompute => "recompute",
            PreemptionMode::Swap => "swap",
            PreemptionMode::Auto => "auto",
        }
    }
}

pub struct SwapEntry {
    pub blocks: Vec<BlockBytes>,
    /// Slots (= tokens) the blocks hold.
    pub num_slotted: usize,
    pub bytes: u64,
}

#[derive(Default)]
pub struct SwapSpace {
    order: VecDeque<u64>,
    entries: HashMap<u64, SwapEntry>,
}

impl SwapSpace {
    pub fn put(&mut self, id: u64, entry: SwapEntry) {
        if self.entries.insert(id, entry).is_none() {
            self.order.push_back(id);
        }
    }

    pub fn entry(&self, id: u64) -> Option<&SwapEntry> {
        self.entries.get(&id)
    }

    pub fn take(&mut self, id: u64) -> Option<SwapEntry> {
        let e = self.entries.remove(&id)?;
        self.order.retain(|&o| o != id);
        Some(e)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn ids(&self) -> impl Iterator<Item = u64> + '_ {
        self.order.iter().copied()
    }
}

/// Exponentially weighted rates, seeded with conservative guesses until measured.
#[derive(Clone, Debug)]
pub struct CostModel {
    /// Bytes per second copying blocks between the pool and host memory.
    pub copy_bytes_per_s: f64,
    /// Prompt tokens per second a forward computes.
    pub prefill_tokens_per_s: f64,
}

impl Default for CostModel {
    fn default() -> Self {
        // Deliberately pessimistic for swap (1 GB/s) and optimistic for recompute (10k tok/s):
        // until measured, `auto` leans to recompute, the default that needs no memory.
        Self { copy_bytes_per_s: 1e9, prefill_tokens_per_s: 1e4 }
    }
}

impl CostModel {
    const WEIGHT: f64 = 0.2;

    pub fn observe_copy(&mut self, bytes: u64, took: Duration) {
        if bytes > 0 && took > Duration::ZERO {
            let rate = bytes as f64 / took.as_secs_f64();
            self.copy_bytes_per_s += Self::WEIGHT * (rate - self.copy_bytes_per_s);
        }
    }

    /// A forward that computed `tokens` tokens (only batches with a prefill chunk are telling).
    pub fn observe_forward(&mut self, tokens: usize, took: Duration) {
        if tokens > 1 && took > Duration::ZERO {
            let rate = tokens as f64 / took.as_secs_f64();
            self.prefill_tokens_per_s += Self::WEIGHT * (rate - self.prefill_tokens_per_s);
        }
    }

    /// Swap moves `bytes` out and back in; recompute redoes `tokens` tokens of prefill.
    pub fn prefers_swap(&self, bytes: u64, tokens: usize) -> bool {
        let swap = 2.0 * bytes as f64 / self.copy_bytes_per_s;
        let recompute = tokens as f64 / self.prefill_tokens_per_s;
        swap < recompute
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn the_cost_model_follows_measurements() {
        let mut m = CostModel::default();
        // 1 MB for 100 tokens: at the seeds, 2 ms of copying against 10 ms of compute.
        assert!(m.prefers_swap(1_000_000, 100));
        assert!(!m.prefers_swap(100_000_000, 100), "200 ms of copying loses to 10 ms of compute");
        for _ in 0..50 {
            m.observe_forward(100, Duration::from_secs(1)); // a slow machine: 100 tok/s
        }
        assert!((m.prefill_tokens_per_s - 100.0).abs() < 1.0);
        assert!(m.prefers_swap(100_000_000, 100), "now recomputing takes a second");
        for _ in 0..50 {
            m.observe_copy(1_000, Duration::from_secs(1)); // and copying is hopeless
        }
        assert!(!m.prefers_swap(100_000_000, 100));
    }

    #[test]
    fn swapped_requests_are_listed_in_the_order_they_left() {
        let mut s = SwapSpace::default();
        let entry = |n| SwapEntry { blocks: vec![Arc::new(vec![0u8; n])], num_slotted: n, bytes: n as u64 };
        s.put(7, entry(1));
        s.put(3, entry(2));
        assert_eq!(s.ids().collect::<Vec<_>>(), vec![7, 3]);
        assert_eq!(s.take(7).map(|e| e.num_slotted), Some(1));
        assert_eq!(s.ids().collect::<Vec<_>>(), vec![3]);
        assert_eq!(s.entry(3).map(|e| e.bytes), Some(2));
        assert!(s.take(7).is_none());
        assert_eq!(s.len(), 1);
    }
}
