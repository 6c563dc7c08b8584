//! The offload tier: host RAM and a disk directory below the KV pool, so prefix blocks that
//! leave the pool come back on a hit (also after a restart), and preempted requests can swap
//! their KV out instead of recomputing it.
//!
//! Owns: the tiers (`ram`, `disk`), keys (chain hash + `fingerprint`), budgets (`lru`), swap
//! space and its cost model (`swap`), block bytes in and out of the cache tensors (`block_io`),
//! and the counters /metrics shows. Must not know: scheduling policy, HTTP, or what a block's
//! bytes mean (they move as stored, whatever the KV dtype).
//!
//! How blocks flow (the engine drives it between steps; disk I/O runs on the tier's threads):
//!
//! ```text
//!   request ends / is preempted ──copy out its hashed blocks not yet below──▶ RAM (LRU)
//!                                                      └─ queued for writing ─▶ disk (extents)
//!   waiting request at the head ──pool hit, then RAM / staged disk blocks──▶ copied into free
//!       pool blocks and cached there: the pool's prefix hit (and cached_tokens) covers them
//!   blocks only on disk ──read on the reader thread──▶ staged; the request waits meanwhile
//! ```
//!
//! NOTE(why): blocks are written down when their request lets go of them, not when the pool
//! reuses them: by then the block's KV is being overwritten in the same step, and a prefix
//! cache that must survive a `kill -9` cannot wait for eviction. Only full, hashed,
//! never-evicted blocks go down (a budgeted request's blocks are never hashed).

pub mod block_io;
pub mod counters;
pub mod disk;
pub mod fingerprint;
pub mod lru;
pub mod ram;
pub mod swap;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Result};

use crate::block_pool::BlockHash;
use counters::{OffloadCounters, TierCounters};
use disk::{DiskReport, DiskTier};
use fingerprint::{CacheLayout, ModelFingerprint, WeightsIdentity};
use ram::RamTier;
pub use swap::{CostModel, PreemptionMode, SwapEntry, SwapSpace};

/// One block's bytes across every layer and per-block tensor, as stored in the pool.
pub type BlockBytes = Arc<Vec<u8>>;

/// What the user asked for (`--kv-offload-*`, `--preemption`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OffloadConfig {
    pub ram_bytes: Option<u64>,
    pub disk_dir: Option<PathBuf>,
    pub disk_bytes: Option<u64>,
    pub preemption: PreemptionMode,
    /// What identifies the weights in the disk tier's keys (required with a disk tier).
    pub weights: Option<WeightsIdentity>,
}

impl OffloadConfig {
    pub fn is_enabled(&self) -> bool {
        self.ram_bytes.is_some() || self.disk_dir.is_some() || self.preemption != PreemptionMode::Recompute
    }

    /// Checks that need no model; errors name the flag.
    pub fn validate(&self) -> Result<()> {
        if self.disk_dir.is_some() != self.disk_bytes.is_some() {
            bail!("--kv-offload-dir and --kv-offload-disk go together (a directory and its byte budget)");
        }
        if self.preemption != PreemptionMode::Recompute && self.ram_bytes.is_none() {
            bail!("--preemption {} needs --kv-offload-ram (swapped-out KV lives in the RAM tier)", self.preemption.as_str());
        }
        Ok(())
    }
}

/// What a waiting request's lookup below the pool found.
pub struct Walk {
    /// Blocks to copy into the pool now, continuing the pool's hit in chain order.
    pub promote: Vec<BlockBytes>,
}

pub struct Offload {
    ram: Option<RamTier>,
    disk: Option<DiskTier>,
    pub swap: SwapSpace,
    pub cost: CostModel,
    pub mode: PreemptionMode,
    pub block_bytes: u64,
    pub fingerprint: ModelFingerprint,
    counters: Arc<OffloadCounters>,
    /// Blocks read back from disk, waiting to be copied into the pool, and who asked for them.
    staged: HashMap<BlockHash, BlockBytes>,
    staged_for: HashMap<u64, Vec<BlockHash>>,
    /// Requests whose blocks are being read; requests that already had their one read (a
    /// request is never sent to disk twice, so a pool too busy to keep its blocks cannot loop).
    loading: HashSet<u64>,
    read_once: HashSet<u64>,
    /// Requests whose hits and misses are counted (once per request).
    counted: HashSet<u64>,
    pub disk_report: Option<DiskReport>,
}

impl Offload {
    /// Opens the configured tiers; `None` when nothing is configured.
    pub fn open(cfg: &OffloadConfig, layout: &CacheLayout, block_bytes: u64, counters: Arc<OffloadCounters>) -> Result<Option<Offload>> {
        cfg.validate()?;
        if !cfg.is_enabled() {
            return Ok(None);
        }
        if block_bytes == 0 {
            bail!("KV offload: the cache has zero-byte blocks");
        }
        let weights_hash = match (&cfg.weights, &cfg.disk_dir) {
            (Some(w), _) => w.content_hash()?,
            (None, Some(_)) => bail!("KV offload: a disk tier needs the weights' identity"),
            (None, None) => [0; 32],
        };
        let fingerprint = ModelFingerprint::new(&weights_hash, layout);
        let ram = match cfg.ram_bytes {
            Some(b) if b < block_bytes => bail!("--kv-offload-ram {b} bytes is smaller than one KV block ({block_bytes} bytes)"),
            Some(b) => {
                TierCounters::set(&counters.ram.budget_bytes, b);
                Some(RamTier::new(b))
            }
            None => None,
        };
        let (disk, disk_report) = match (&cfg.disk_dir, cfg.disk_bytes) {
            (Some(dir), Some(b)) => {
                let one = disk::format::ExtentHeader::header_len(1) as u64 + block_bytes;
                if b < one {
                    bail!("--kv-offload-disk {b} bytes is smaller than one KV block on disk ({one} bytes)");
                }
                let (tier, report) = DiskTier::open(dir, b, fingerprint, block_bytes, counters.clone())?;
                (Some(tier), Some(report))
            }
            _ => (None, None),
        };
        Ok(Some(Offload {
            ram,
            disk,
            swap: SwapSpace::default(),
            cost: CostModel::default(),
            mode: cfg.preemption,
            block_bytes,
            fingerprint,
            counters,
            staged: HashMap::new(),
            staged_for: HashMap::new(),
            loading: HashSet::new(),
            read_once: HashSet::new(),
            counted: HashSet::new(),
            disk_report,
        }))
    }

    /// One line for the start-up log.
    pub fn describe(&self) -> String {
        let gib = |b: u64| format!("{:.2} GiB", b as f64 / (1u64 << 30) as f64);
        let mut parts = vec![format!("fingerprint {}", self.fingerprint.short_hex()), format!("{} per block", self.block_bytes)];
        if let Some(r) = &self.ram {
            parts.push(format!("RAM {}", gib(r.budget())));
        }
        if let Some(d) = &self.disk_report {
            parts.push(format!(
                "disk {} in {}: holds {} blocks in {} extents ({}){}{}",
                gib(self.disk.as_ref().map_or(0, |t| t.shared.index.lock().budget())),
                d.dir.display(),
                d.blocks,
                d.extents,
                gib(d.bytes),
                if d.discarded > 0 { format!(", {} unusable files discarded", d.discarded) } else { String::new() },
                if d.read_only { ", read-only (another server holds the lock)" } else { "" }
            ));
        }
        parts.push(format!("preemption {}", self.mode.as_str()));
        format!("KV offload tier: {}", parts.join(", "))
    }

    /// Some tier that keeps prefixes lacks this block: it is worth copying out.
    pub fn wants(&self, hash: &BlockHash) -> bool {
        self.ram.as_ref().is_some_and(|r| !r.contains(hash)) || self.disk.as_ref().is_some_and(|d| d.accepts_writes() && !d.has(hash))
    }

    /// Whether prefix blocks are kept below the pool at all (not only swap).
    pub fn keeps_prefixes(&self) -> bool {
        self.ram.is_some() || self.disk.as_ref().is_some_and(DiskTier::accepts_writes)
    }

    /// Writes blocks down: into RAM, and queued for the disk.
    pub fn store(&mut self, blocks: Vec<(BlockHash, BlockBytes)>) {
        if blocks.is_empty() {
            return;
        }
        if let Some(ram) = &mut self.ram {
            for (h, b) in &blocks {
                if !ram.contains(h) && ram.insert(*h, b.clone()).is_ok() {
                    TierCounters::add(&self.counters.ram.bytes_in, b.len() as u64);
                }
            }
        }
        if let Some(disk) = &self.disk {
            disk.write(blocks);
        }
        self.refresh_gauges();
    }

    /// Takes in finished disk reads.
    pub fn poll(&mut self) {
        let Some(disk) = &self.disk else { return };
        for loaded in disk.poll() {
            self.loading.remove(&loaded.request);
            let names = self.staged_for.entry(loaded.request).or_default();
            for (h, b) in loaded.blocks {
                names.push(h);
                self.staged.insert(h, b);
            }
        }
    }

    pub fn is_loading(&self, id: u64) -> bool {
        self.loading.contains(&id)
    }

    pub fn any_loading(&self) -> bool {
        !self.loading.is_empty()
    }

    /// Looks up the blocks after a waiting request's pool hit (`hashes`, in chain order): those
    /// in RAM or already read from disk are returned to be copied into the pool; if the chain
    /// continues on disk, one read is started and the request waits for it.
    pub fn walk(&mut self, id: u64, hashes: &[BlockHash]) -> Walk {
        let count = self.counted.insert(id);
        let mut promote = Vec::new();
        let (mut ram_hits, mut disk_hits, mut on_disk) = (0u64, 0u64, Vec::new());
        for h in hashes {
            if let Some(b) = self.staged.get(h) {
                promote.push(b.clone());
                disk_hits += 1;
            } else if let Some(b) = self.ram.as_mut().and_then(|r| r.get(h)) {
                promote.push(b);
                ram_hits += 1;
            } else {
                let disk = self.disk.as_ref();
                on_disk = hashes[promote.len()..].iter().take_while(|h| disk.is_some_and(|d| d.is_published(h))).copied().collect();
                break;
            }
        }
        if count {
            let looked = hashes.len() as u64;
            let c = &self.counters;
            TierCounters::add(&c.ram.hits, ram_hits);
            TierCounters::add(&c.ram.misses, looked - ram_hits - disk_hits);
            TierCounters::add(&c.disk.hits, on_disk.len() as u64 + disk_hits);
            TierCounters::add(&c.disk.misses, looked - ram_hits - disk_hits - on_disk.len() as u64);
            let bytes_out = ram_hits * self.block_bytes;
            TierCounters::add(&c.ram.bytes_out, bytes_out);
        }
        if !on_disk.is_empty() && !self.read_once.contains(&id) {
            if let Some(disk) = &self.disk {
                if disk.read(id, on_disk) {
                    self.loading.insert(id);
                    self.read_once.insert(id);
                }
            }
        }
        Walk { promote }
    }

    /// Staged blocks copied into the pool are no longer needed here.
    pub fn promoted(&mut self, hashes: &[BlockHash]) {
        for h in hashes {
            self.staged.remove(h);
        }
    }

    /// The request ended: forget its loads and staged blocks, and give back its swap space.
    pub fn forget(&mut self, id: u64) {
        self.loading.remove(&id);
        self.read_once.remove(&id);
        self.counted.remove(&id);
        if let Some(names) = self.staged_for.remove(&id) {
            for h in names {
                self.staged.remove(&h);
            }
        }
        if let Some(entry) = self.swap.take(id) {
            if let Some(ram) = &mut self.ram {
                ram.unpin(entry.bytes);
            }
        }
        self.refresh_gauges();
    }

    /// Whether a victim holding `bytes` of KV for `tokens` computed tokens should swap.
    pub fn should_swap(&self, bytes: u64, tokens: usize) -> bool {
        match self.mode {
            PreemptionMode::Recompute => false,
            PreemptionMode::Swap => self.ram.is_some(),
            PreemptionMode::Auto => self.ram.is_some() && self.cost.prefers_swap(bytes, tokens),
        }
    }

    /// Keeps a preempted request's blocks in the RAM tier; false (nothing kept) if they do not
    /// fit even after evicting every prefix block.
    pub fn swap_out(&mut self, id: u64, blocks: Vec<BlockBytes>, num_slotted: usize) -> bool {
        let bytes: u64 = blocks.iter().map(|b| b.len() as u64).sum();
        let Some(ram) = &mut self.ram else { return false };
        if ram.pin(bytes).is_err() {
            return false;
        }
        self.swap.put(id, SwapEntry { blocks, num_slotted, bytes });
        TierCounters::add(&self.counters.swap_outs, 1);
        TierCounters::add(&self.counters.ram.bytes_in, bytes);
        self.refresh_gauges();
        true
    }

    /// Hands back a swapped-out request's blocks (the caller copies them into the pool).
    pub fn swap_in(&mut self, id: u64) -> Option<SwapEntry> {
        let entry = self.swap.take(id)?;
        if let Some(ram) = &mut self.ram {
            ram.unpin(entry.bytes);
        }
        TierCounters::add(&self.counters.swap_ins, 1);
        TierCounters::add(&self.counters.ram.bytes_out, entry.bytes);
        self.refresh_gauges();
        Some(entry)
    }

    fn refresh_gauges(&self) {
        if let Some(ram) = &self.ram {
            TierCounters::set(&self.counters.ram.blocks_held, ram.num_blocks() as u64);
            TierCounters::set(&self.counters.ram.bytes_held, ram.used());
            TierCounters::set(&self.counters.swap_bytes, ram.pinned());
        }
    }

    /// For tests and leak checks: bytes pinned for swapped-out requests, requests loading.
    pub fn idle_check(&self) -> Result<(), String> {
        let pinned = self.ram.as_ref().map_or(0, RamTier::pinned);
        if pinned != 0 || !self.swap.is_empty() {
            return Err(format!("{} swapped-out requests still pin {pinned} bytes", self.swap.len()));
        }
        if !self.loading.is_empty() || !self.staged.is_empty() {
            return Err(format!("{} loads in flight, {} blocks staged", self.loading.len(), self.staged.len()));
        }
        Ok(())
    }
}
