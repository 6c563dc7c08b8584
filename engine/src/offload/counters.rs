//! Counters of the offload tiers, written by the engine and the tier's I/O threads, read by the
//! server's /metrics and by tests.
//!
//! Owns: the atomics and their snapshot. Must not know: Prometheus (the cli renders them).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// One tier's counters (RAM or disk).
#[derive(Debug, Default)]
pub struct TierCounters {
    pub hits: AtomicU64,
    pub misses: AtomicU64,
    /// Bytes written into the tier.
    pub bytes_in: AtomicU64,
    /// Bytes read back out of the tier.
    pub bytes_out: AtomicU64,
    pub blocks_held: AtomicU64,
    pub bytes_held: AtomicU64,
    pub budget_bytes: AtomicU64,
    /// Disk: files found torn, corrupt or written for another model/layout, deleted as misses.
    pub discarded: AtomicU64,
    /// Blocks not written down because a bounded queue was full or the tier is disabled.
    pub dropped: AtomicU64,
    /// 1 once the tier turned itself off (disk full, unwritable).
    pub disabled: AtomicU64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TierSnapshot {
    pub hits: u64,
    pub misses: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub blocks_held: u64,
    pub bytes_held: u64,
    pub budget_bytes: u64,
    pub discarded: u64,
    pub dropped: u64,
    pub disabled: bool,
}

impl TierCounters {
    pub fn snapshot(&self) -> TierSnapshot {
        TierSnapshot {
            hits: self.hits.load(Relaxed),
            misses: self.misses.load(Relaxed),
            bytes_in: self.bytes_in.load(Relaxed),
            bytes_out: self.bytes_out.load(Relaxed),
            blocks_held: self.blocks_held.load(Relaxed),
            bytes_held: self.bytes_held.load(Relaxed),
            budget_bytes: self.budget_bytes.load(Relaxed),
            discarded: self.discarded.load(Relaxed),
            dropped: self.dropped.load(Relaxed),
            disabled: self.disabled.load(Relaxed) != 0,
        }
    }

    pub fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Relaxed);
    }

    pub fn set(c: &AtomicU64, n: u64) {
        c.store(n, Relaxed);
    }
}

#[derive(Debug, Default)]
pub struct OffloadCounters {
    pub ram: TierCounters,
    pub disk: TierCounters,
    pub swap_outs: AtomicU64,
    pub swap_ins: AtomicU64,
    /// Bytes held by swapped-out requests (inside the RAM tier's budget).
    pub swap_bytes: AtomicU64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OffloadSnapshot {
    pub ram: TierSnapshot,
    pub disk: TierSnapshot,
    pub swap_outs: u64,
    pub swap_ins: u64,
    pub swap_bytes: u64,
}

impl OffloadCounters {
    pub fn snapshot(&self) -> OffloadSnapshot {
        OffloadSnapshot {
            ram: self.ram.snapshot(),
            disk: self.disk.snapshot(),
            swap_outs: self.swap_outs.load(Relaxed),
            swap_ins: self.swap_ins.load(Relaxed),
            swap_bytes: self.swap_bytes.load(Relaxed),
        }
    }
}
