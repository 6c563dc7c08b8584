//! The disk tier's two I/O threads: the writer turns queued blocks into extent files
//! (temporary name, fsync, rename, then publish), the reader reads blocks back and checks them.
//!
//! Owns: file I/O and its failure handling. Must not know: the engine (jobs come in over
//! bounded queues, loads go back over a channel the engine polls between steps).
//!
//! Why two threads: a load is on a request's critical path (its TTFT), a write is not; with one
//! thread a burst of writes would delay every load behind it.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, Sender};
use std::sync::Arc;

use crate::block_pool::BlockHash;

use super::super::counters::TierCounters;
use super::super::BlockBytes;
use super::format::ExtentHeader;
use super::index::{BlockLocation, Extent, EXTENT_SUFFIX, TMP_SUFFIX};
use super::{DiskShared, Loaded, ReadJob, WriteJob};

/// Queued jobs are merged into one extent up to this size: fewer, larger files and writes.
const EXTENT_TARGET: u64 = 8 << 20;
/// Every write to the file is at least this large except a file's last piece (large
/// sequential I/O is what SSDs are fast at).
const WRITE_CHUNK: usize = 1 << 20;

static NEXT_NAME: AtomicU64 = AtomicU64::new(0);

pub fn writer(shared: Arc<DiskShared>, jobs: Receiver<WriteJob>) {
    while let Ok(job) = jobs.recv() {
        let mut blocks = job.blocks;
        while (blocks.len() as u64) * shared.block_bytes < EXTENT_TARGET {
            match jobs.try_recv() {
                Ok(more) => blocks.extend(more.blocks),
                Err(_) => break,
            }
        }
        if shared.is_disabled() {
            drop_pending(&shared, &blocks);
            continue;
        }
        write_extent(&shared, blocks);
    }
}

fn drop_pending(shared: &DiskShared, blocks: &[(BlockHash, BlockBytes)]) {
    let mut index = shared.index.lock();
    for (h, _) in blocks {
        index.clear_pending(h);
    }
    TierCounters::add(&shared.counters.disk.dropped, blocks.len() as u64);
}

fn write_extent(shared: &DiskShared, mut blocks: Vec<(BlockHash, BlockBytes)>) {
    // Never more than the whole budget: the tail of an oversized batch is dropped.
    let fits = |n: usize| ExtentHeader::header_len(n) as u64 + n as u64 * shared.block_bytes <= shared.index.lock().budget();
    let mut n = blocks.len();
    while n > 0 && !fits(n) {
        n -= 1;
    }
    if n < blocks.len() {
        let rest = blocks.split_off(n);
        drop_pending(shared, &rest);
    }
    if blocks.is_empty() {
        return;
    }
    let header = ExtentHeader { block_bytes: shared.block_bytes, blocks: blocks.iter().map(|(h, b)| (*h, crc32fast::hash(b))).collect() };
    let len = header.file_len();
    let reserved = shared.index.lock().reserve(len);
    let Some((id, evicted)) = reserved else {
        drop_pending(shared, &blocks);
        return;
    };
    for e in evicted {
        let _ = std::fs::remove_file(&e.path);
    }
    let name = format!(
        "{:016x}-{:08x}-{:06}",
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64),
        std::process::id(),
        NEXT_NAME.fetch_add(1, Ordering::Relaxed)
    );
    let tmp = shared.dir.join(format!("{name}.{TMP_SUFFIX}"));
    let path = shared.dir.join(format!("{name}.{EXTENT_SUFFIX}"));
    match write_file(shared, &tmp, &path, &header, &blocks) {
        Ok(()) => {
            shared.index.lock().publish(id, Extent { path, header });
            TierCounters::add(&shared.counters.disk.bytes_in, len);
        }
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            shared.index.lock().cancel(id);
            drop_pending(shared, &blocks);
            shared.disable(&format!("writing {} failed: {e}", tmp.display()));
        }
    }
    shared.refresh_gauges();
}

fn write_file(shared: &DiskShared, tmp: &std::path::Path, path: &std::path::Path, header: &ExtentHeader, blocks: &[(BlockHash, BlockBytes)]) -> std::io::Result<()> {
    let file = File::create(tmp)?;
    let mut out = BufWriter::with_capacity(WRITE_CHUNK, file);
    out.write_all(&header.encode(&shared.fp))?;
    for (_, bytes) in blocks {
        out.write_all(bytes)?;
    }
    let file = out.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()?;
    std::fs::rename(tmp, path)?;
    // The rename itself must be durable before the key is published.
    File::open(&shared.dir)?.sync_all()
}

pub fn reader(shared: Arc<DiskShared>, jobs: Receiver<ReadJob>, done: Sender<Loaded>) {
    while let Ok(job) = jobs.recv() {
        let blocks = read_prefix(&shared, &job.blocks);
        if done.send(Loaded { request: job.request, blocks }).is_err() {
            return;
        }
    }
}

/// Reads the asked blocks in order and stops at the first one that is gone or fails its
/// checksum. Consecutive blocks of one extent are read with one call.
fn read_prefix(shared: &DiskShared, hashes: &[BlockHash]) -> Vec<(BlockHash, BlockBytes)> {
    let locations: Vec<BlockLocation> = {
        let mut index = shared.index.lock();
        hashes.iter().map_while(|h| index.locate(h)).collect()
    };
    let mut out = Vec::with_capacity(locations.len());
    let mut i = 0;
    while i < locations.len() {
        let first = &locations[i];
        let mut run = 1;
        while i + run < locations.len() {
            let next = &locations[i + run];
            if next.extent != first.extent || next.offset != first.offset + run as u64 * first.len {
                break;
            }
            run += 1;
        }
        let mut buf = vec![0u8; run * first.len as usize];
        let read = File::open(&first.path).and_then(|f| f.read_exact_at(&mut buf, first.offset));
        if let Err(e) = read {
            if e.kind() == std::io::ErrorKind::NotFound {
                // Evicted (or deleted by the owner) since it was looked up: a plain miss.
                shared.index.lock().remove(first.extent);
            } else {
                shared.discard(Some(first.extent), &first.path, &format!("read failed: {e}"));
            }
            return out;
        }
        for (k, chunk) in buf.chunks_exact(first.len as usize).enumerate() {
            let loc = &locations[i + k];
            if crc32fast::hash(chunk) != loc.crc {
                shared.discard(Some(loc.extent), &loc.path, "a block fails its checksum");
                return out;
            }
            out.push((hashes[i + k], Arc::new(chunk.to_vec())));
        }
        TierCounters::add(&shared.counters.disk.bytes_out, buf.len() as u64);
        i += run;
    }
    out
}
