//! `DiskIndex`: which blocks the disk tier holds, in which extent file, and the extents' LRU
//! byte budget; and rebuilding it at start-up from what is on disk.
//!
//! Owns: block hash → (extent, slot) lookups, extent recency and bytes, the set of blocks queued
//! for writing (so they are not queued twice), and the start-up scan (headers only).
//! Must not know: threads or the engine; callers hold it behind a mutex and do file I/O other
//! than the scan outside of it.

use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::path::{Path, PathBuf};

use crate::block_pool::BlockHash;

use super::super::fingerprint::ModelFingerprint;
use super::super::lru::LruBudget;
use super::format::{ExtentError, ExtentHeader, PREFIX_LEN};

pub type ExtentId = u64;

pub const EXTENT_SUFFIX: &str = "kvx";
pub const TMP_SUFFIX: &str = "kvx.tmp";

#[derive(Debug, Clone)]
pub struct Extent {
    pub path: PathBuf,
    pub header: ExtentHeader,
}

/// Where one block's bytes are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockLocation {
    pub extent: ExtentId,
    pub path: PathBuf,
    pub offset: u64,
    pub len: u64,
    pub crc: u32,
}

#[derive(Debug)]
pub struct DiskIndex {
    lru: LruBudget<ExtentId>,
    extents: HashMap<ExtentId, Extent>,
    blocks: HashMap<BlockHash, (ExtentId, usize)>,
    pending: HashSet<BlockHash>,
    next_id: ExtentId,
}

impl DiskIndex {
    pub fn new(budget: u64) -> Self {
        Self { lru: LruBudget::new(budget), extents: HashMap::new(), blocks: HashMap::new(), pending: HashSet::new(), next_id: 0 }
    }

    pub fn budget(&self) -> u64 {
        self.lru.budget()
    }

    /// Bytes of published and reserved extents.
    pub fn used(&self) -> u64 {
        self.lru.used()
    }

    pub fn num_blocks(&self) -> usize {
        self.blocks.len()
    }

    pub fn num_extents(&self) -> usize {
        self.extents.len()
    }

    /// Published (readable) or queued for writing.
    pub fn has(&self, hash: &BlockHash) -> bool {
        self.blocks.contains_key(hash) || self.pending.contains(hash)
    }

    pub fn is_published(&self, hash: &BlockHash) -> bool {
        self.blocks.contains_key(hash)
    }

    pub fn mark_pending(&mut self, hash: BlockHash) -> bool {
        self.pending.insert(hash)
    }

    pub fn clear_pending(&mut self, hash: &BlockHash) {
        self.pending.remove(hash);
    }

    /// Reserves room for an extent of `bytes` before it is written; evicted extents come back
    /// (their blocks are no longer found; the caller deletes their files).
    pub fn reserve(&mut self, bytes: u64) -> Option<(ExtentId, Vec<Extent>)> {
        let id = self.next_id;
        let evicted_ids = self.lru.insert(id, bytes).ok()?;
        self.next_id += 1;
        Some((id, evicted_ids.into_iter().filter_map(|e| self.unlink(e)).collect()))
    }

    /// Drops a reservation whose write failed.
    pub fn cancel(&mut self, id: ExtentId) {
        self.lru.remove(&id);
    }

    /// Makes a written extent's blocks findable (publish after write).
    pub fn publish(&mut self, id: ExtentId, extent: Extent) {
        for (i, (hash, _)) in extent.header.blocks.iter().enumerate() {
            self.pending.remove(hash);
            // A block already held elsewhere keeps its first location.
            self.blocks.entry(*hash).or_insert((id, i));
        }
        self.extents.insert(id, extent);
    }

    /// Adds an extent found on disk at start-up (oldest first), evicting beyond the budget.
    pub fn adopt(&mut self, extent: Extent, bytes: u64) -> Vec<Extent> {
        match self.reserve(bytes) {
            Some((id, evicted)) => {
                self.publish(id, extent);
                evicted
            }
            None => vec![extent],
        }
    }

    pub fn locate(&mut self, hash: &BlockHash) -> Option<BlockLocation> {
        let &(id, i) = self.blocks.get(hash)?;
        let extent = self.extents.get(&id)?;
        let loc = BlockLocation {
            extent: id,
            path: extent.path.clone(),
            offset: extent.header.block_offset(i),
            len: extent.header.block_bytes,
            crc: extent.header.blocks[i].1,
        };
        self.lru.touch(&id);
        Some(loc)
    }

    /// Forgets an extent (evicted, corrupt or gone); returns it so the caller can delete it.
    pub fn remove(&mut self, id: ExtentId) -> Option<Extent> {
        self.lru.remove(&id);
        self.unlink(id)
    }

    fn unlink(&mut self, id: ExtentId) -> Option<Extent> {
        let extent = self.extents.remove(&id)?;
        for (i, (hash, _)) in extent.header.blocks.iter().enumerate() {
            if self.blocks.get(hash) == Some(&(id, i)) {
                self.blocks.remove(hash);
            }
        }
        Some(extent)
    }
}

/// What the start-up scan found.
#[derive(Debug, Default)]
pub struct Scan {
    /// Usable extents, oldest first, with their file sizes.
    pub extents: Vec<(Extent, u64)>,
    /// Files that are not usable extents: half-written temporaries, torn, corrupt, or written
    /// for another model or layout.
    pub discarded: Vec<(PathBuf, String)>,
}

/// Reads every extent header in `dir` (headers only: one small read per file).
pub fn scan(dir: &Path, fp: &ModelFingerprint, block_bytes: u64) -> std::io::Result<Scan> {
    let mut found = Vec::new();
    let mut scan = Scan::default();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.ends_with(&format!(".{TMP_SUFFIX}")) {
            scan.discarded.push((path, "half-written temporary file".into()));
            continue;
        }
        if !name.ends_with(&format!(".{EXTENT_SUFFIX}")) {
            continue;
        }
        let meta = entry.metadata()?;
        match read_header(&path, fp, block_bytes, meta.len()) {
            Ok(header) => {
                let mtime = meta.modified().unwrap_or(std::time::SystemTime::UNIX_EPOCH);
                found.push((mtime, name, Extent { path, header }, meta.len()));
            }
            Err(e) => scan.discarded.push((path, e.to_string())),
        }
    }
    // Oldest first (ties by name, which starts with the write time), so the LRU resumes.
    found.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
    scan.extents = found.into_iter().map(|(_, _, e, len)| (e, len)).collect();
    Ok(scan)
}

fn read_header(path: &Path, fp: &ModelFingerprint, block_bytes: u64, file_len: u64) -> Result<ExtentHeader, ExtentError> {
    let io = |_| ExtentError::Truncated { got: file_len, want: PREFIX_LEN as u64 };
    let mut f = std::fs::File::open(path).map_err(io)?;
    let mut prefix = vec![0u8; PREFIX_LEN];
    f.read_exact(&mut prefix).map_err(io)?;
    let len = ExtentHeader::needed_len(&prefix)?;
    if len as u64 > file_len {
        return Err(ExtentError::Truncated { got: file_len, want: len as u64 });
    }
    let mut rest = vec![0u8; len - PREFIX_LEN];
    f.read_exact(&mut rest).map_err(io)?;
    prefix.extend_from_slice(&rest);
    ExtentHeader::decode(&prefix, fp, block_bytes, file_len)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn extent(name: &str, hashes: &[u8]) -> Extent {
        let blocks = hashes.iter().map(|&h| (BlockHash([h; 32]), h as u32)).collect();
        Extent { path: PathBuf::from(name), header: ExtentHeader { block_bytes: 10, blocks } }
    }

    #[test]
    fn reserved_extents_are_found_only_once_published() {
        let mut index = DiskIndex::new(1000);
        let (id, evicted) = index.reserve(100).unwrap();
        assert!(evicted.is_empty());
        assert!(index.mark_pending(BlockHash([1; 32])));
        assert!(index.has(&BlockHash([1; 32])));
        assert!(index.locate(&BlockHash([1; 32])).is_none(), "not readable before its write completed");
        index.publish(id, extent("a", &[1, 2]));
        let loc = index.locate(&BlockHash([2; 32])).unwrap();
        assert_eq!((loc.extent, loc.len, loc.crc), (id, 10, 2));
        assert_eq!(loc.offset, ExtentHeader::header_len(2) as u64 + 10);
    }

    #[test]
    fn the_budget_evicts_the_least_recently_read_extent() {
        let mut index = DiskIndex::new(300);
        let a = index.adopt(extent("a", &[1]), 100);
        let b = index.adopt(extent("b", &[2]), 100);
        let c = index.adopt(extent("c", &[3]), 100);
        assert!(a.is_empty() && b.is_empty() && c.is_empty());
        index.locate(&BlockHash([1; 32])); // a is now the most recent
        let evicted = index.adopt(extent("d", &[4]), 100);
        assert_eq!(evicted.iter().map(|e| e.path.clone()).collect::<Vec<_>>(), vec![PathBuf::from("b")]);
        assert!(!index.has(&BlockHash([2; 32])));
        assert!(index.used() <= index.budget());
        assert_eq!(index.num_blocks(), 3);
        let too_big = index.adopt(extent("e", &[5]), 301);
        assert_eq!(too_big.len(), 1, "an extent larger than the budget is refused");
    }

    #[test]
    fn removing_an_extent_forgets_only_its_own_blocks() {
        let mut index = DiskIndex::new(1000);
        index.adopt(extent("a", &[1, 2]), 100);
        let (id, _) = index.reserve(100).unwrap();
        index.publish(id, extent("b", &[2, 3]));
        assert!(index.remove(id).is_some());
        assert!(index.has(&BlockHash([2; 32])), "block 2 still lives in extent a");
        assert!(!index.has(&BlockHash([3; 32])));
        assert_eq!(index.used(), 100);
    }
}
