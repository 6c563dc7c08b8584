//! The disk tier: a directory of extent files below the RAM tier, that survives restarts.
//!
//! Owns: opening the directory (checks, the lock, the start-up scan), the state the engine and
//! the I/O threads share (index, counters, the disabled flag) and the queues to those threads.
//! Must not know: the pool, requests or tensors; blocks arrive and leave as bytes keyed by hash.
//!
//! Layout: `DIR/kvault-<fingerprint>/` holds `lock`, `*.kvx` extents and, while a write is in
//! flight, one `*.kvx.tmp`. Per-fingerprint subdirectories keep models apart; the fingerprint
//! inside every header is what is trusted (a file copied from another model is refused).
//!
//! Two servers on one directory: the first takes an exclusive lock and owns writes and deletes;
//! a second one finds the lock taken and uses the tier read-only (it never writes, deletes or
//! touches temporaries, which may be the owner's writes in flight). Readers only ever open
//! published files, which are complete (written to a temporary name, fsynced, renamed).

pub mod format;
pub mod index;
mod io;

use std::collections::HashSet;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;

use anyhow::{bail, Context, Result};
use fs2::FileExt;
use parking_lot::Mutex;

use crate::block_pool::BlockHash;

use super::counters::{OffloadCounters, TierCounters};
use super::fingerprint::ModelFingerprint;
use super::BlockBytes;
use index::{DiskIndex, ExtentId};

/// Jobs queued per thread; beyond that, writes are dropped and loads are not started (the
/// engine computes instead), so a slow disk never blocks a step.
const QUEUE_DEPTH: usize = 64;

/// Blocks of one or more requests to write as one extent.
pub struct WriteJob {
    pub blocks: Vec<(BlockHash, BlockBytes)>,
}

/// Blocks one request wants read back, in chain order.
pub struct ReadJob {
    pub request: u64,
    pub blocks: Vec<BlockHash>,
}

/// The blocks of a `ReadJob` that were read and verified: a prefix of what was asked.
pub struct Loaded {
    pub request: u64,
    pub blocks: Vec<(BlockHash, BlockBytes)>,
}

/// State the engine thread and the I/O threads share. Locks are held for map operations only,
/// never across file I/O.
pub struct DiskShared {
    pub dir: PathBuf,
    pub index: Mutex<DiskIndex>,
    pub counters: Arc<OffloadCounters>,
    pub fp: ModelFingerprint,
    pub block_bytes: u64,
    /// This process holds the directory's lock: it may write and delete.
    pub owner: bool,
    disabled: AtomicBool,
    /// Files already reported as unusable (each is logged once).
    reported: Mutex<HashSet<PathBuf>>,
}

impl DiskShared {
    fn tier(&self) -> &TierCounters {
        &self.counters.disk
    }

    pub fn is_disabled(&self) -> bool {
        self.disabled.load(Ordering::Relaxed)
    }

    /// Turns the tier off for writes (disk full, unwritable); serving goes on without it.
    pub fn disable(&self, why: &str) {
        if !self.disabled.swap(true, Ordering::Relaxed) {
            tracing::warn!("KV offload disk tier {}: {why}; disabling it (serving continues without it)", self.dir.display());
            TierCounters::set(&self.tier().disabled, 1);
        }
    }

    /// A file that is not usable KV: forgotten, deleted if we own the directory, counted, and
    /// logged once.
    pub fn discard(&self, id: Option<ExtentId>, path: &Path, reason: &str) {
        if let Some(id) = id {
            self.index.lock().remove(id);
        }
        if self.owner {
            let _ = std::fs::remove_file(path);
        }
        if self.reported.lock().insert(path.to_path_buf()) {
            TierCounters::add(&self.tier().discarded, 1);
            tracing::warn!("KV offload: {} is unusable ({reason}); treated as a miss{}", path.display(), if self.owner { " and deleted" } else { "" });
        }
        self.refresh_gauges();
    }

    pub fn refresh_gauges(&self) {
        let index = self.index.lock();
        TierCounters::set(&self.tier().blocks_held, index.num_blocks() as u64);
        TierCounters::set(&self.tier().bytes_held, index.used());
    }
}

/// What start-up found in the directory (for the start-up log line and `doctor`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskReport {
    pub dir: PathBuf,
    pub extents: usize,
    pub blocks: usize,
    pub bytes: u64,
    pub discarded: usize,
    pub read_only: bool,
}

pub struct DiskTier {
    pub shared: Arc<DiskShared>,
    writes: Option<SyncSender<WriteJob>>,
    reads: Option<SyncSender<ReadJob>>,
    loaded: Receiver<Loaded>,
    threads: Vec<JoinHandle<()>>,
    /// Held for the tier's life: the exclusive lock is released when the file closes.
    _lock: Option<File>,
}

impl DiskTier {
    /// Opens (or starts) the tier in `dir`, which must exist. Errors name the directory.
    pub fn open(dir: &Path, budget: u64, fp: ModelFingerprint, block_bytes: u64, counters: Arc<OffloadCounters>) -> Result<(DiskTier, DiskReport)> {
        if !dir.is_dir() {
            bail!("--kv-offload-dir {}: no such directory", dir.display());
        }
        let sub = dir.join(format!("kvault-{}", fp.short_hex()));
        std::fs::create_dir_all(&sub).with_context(|| format!("--kv-offload-dir {}: cannot create {}", dir.display(), sub.display()))?;
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(sub.join("lock"))
            .with_context(|| format!("--kv-offload-dir {}: not writable", dir.display()))?;
        let owner = lock.try_lock_exclusive().is_ok();
        if owner {
            let probe = sub.join(".probe");
            std::fs::write(&probe, b"kvault").with_context(|| format!("--kv-offload-dir {}: not writable", dir.display()))?;
            let _ = std::fs::remove_file(&probe);
        } else {
            tracing::warn!("KV offload: another kvault holds the lock on {}; this server reads the tier but never writes it", sub.display());
        }
        let scan = index::scan(&sub, &fp, block_bytes).with_context(|| format!("--kv-offload-dir {}: cannot list {}", dir.display(), sub.display()))?;
        let shared = Arc::new(DiskShared {
            dir: sub.clone(),
            index: Mutex::new(DiskIndex::new(budget)),
            counters: counters.clone(),
            fp,
            block_bytes,
            owner,
            disabled: AtomicBool::new(false),
            reported: Mutex::new(HashSet::new()),
        });
        TierCounters::set(&counters.disk.budget_bytes, budget);
        let mut discarded = 0;
        for (path, reason) in &scan.discarded {
            // A temporary belongs to the lock owner's write in flight unless we are the owner.
            if owner || !reason.starts_with("half-written") {
                shared.discard(None, path, reason);
                discarded += 1;
            }
        }
        for (extent, len) in scan.extents {
            let evicted = shared.index.lock().adopt(extent, len);
            for e in evicted {
                if owner {
                    let _ = std::fs::remove_file(&e.path);
                }
            }
        }
        shared.refresh_gauges();
        let report = {
            let index = shared.index.lock();
            DiskReport { dir: sub, extents: index.num_extents(), blocks: index.num_blocks(), bytes: index.used(), discarded, read_only: !owner }
        };
        let (loaded_tx, loaded) = std::sync::mpsc::channel();
        let (reads_tx, reads_rx) = std::sync::mpsc::sync_channel(QUEUE_DEPTH);
        let mut threads = Vec::new();
        let s = shared.clone();
        threads.push(std::thread::Builder::new().name("kvault-kv-read".into()).spawn(move || io::reader(s, reads_rx, loaded_tx))?);
        let writes = if owner {
            let (tx, rx) = std::sync::mpsc::sync_channel(QUEUE_DEPTH);
            let s = shared.clone();
            threads.push(std::thread::Builder::new().name("kvault-kv-write".into()).spawn(move || io::writer(s, rx))?);
            Some(tx)
        } else {
            None
        };
        Ok((DiskTier { shared, writes, reads: Some(reads_tx), loaded, threads, _lock: Some(lock) }, report))
    }

    /// This process owns the directory and the tier has not disabled itself.
    pub fn accepts_writes(&self) -> bool {
        self.writes.is_some() && !self.shared.is_disabled()
    }

    /// Published or queued.
    pub fn has(&self, hash: &BlockHash) -> bool {
        self.shared.index.lock().has(hash)
    }

    pub fn is_published(&self, hash: &BlockHash) -> bool {
        self.shared.index.lock().is_published(hash)
    }

    /// Queues blocks for writing; never blocks. Blocks already held or queued are skipped.
    pub fn write(&self, blocks: Vec<(BlockHash, BlockBytes)>) {
        let tier = &self.shared.counters.disk;
        let Some(tx) = &self.writes else { return };
        if self.shared.is_disabled() {
            TierCounters::add(&tier.dropped, blocks.len() as u64);
            return;
        }
        let fresh: Vec<_> = {
            let mut index = self.shared.index.lock();
            blocks.into_iter().filter(|(h, _)| !index.has(h) && index.mark_pending(*h)).collect()
        };
        if fresh.is_empty() {
            return;
        }
        if let Err(TrySendError::Full(job) | TrySendError::Disconnected(job)) = tx.try_send(WriteJob { blocks: fresh }) {
            let mut index = self.shared.index.lock();
            for (h, _) in &job.blocks {
                index.clear_pending(h);
            }
            TierCounters::add(&tier.dropped, job.blocks.len() as u64);
        }
    }

    /// Asks for blocks to be read back; false if the queue is full (the caller computes).
    pub fn read(&self, request: u64, blocks: Vec<BlockHash>) -> bool {
        self.reads.as_ref().is_some_and(|tx| tx.try_send(ReadJob { request, blocks }).is_ok())
    }

    /// Completed loads since the last call.
    pub fn poll(&self) -> Vec<Loaded> {
        self.loaded.try_iter().collect()
    }
}

impl Drop for DiskTier {
    fn drop(&mut self) {
        // Closing the queues ends the threads once they finish what is queued: writes accepted
        // before shutdown still reach the disk.
        self.writes.take();
        self.reads.take();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}
