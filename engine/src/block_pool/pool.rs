//! `BlockPool`: the physical KV blocks' metadata, their ref counts, the free queue (eviction
//! order) and the hash → block map of the prefix cache.
//!
//! Owns: which block is free, how many hold it, which full blocks are hittable and with which
//! tokens. Must not know: requests, block tables or tensors (the KV cache manager and the model
//! runner own those).
//!
//! Lifecycle of a block (vLLM v1 semantics):
//!
//! ```text
//!   free, unhashed ──allocate──▶ held (ref ≥ 1) ──cache_block──▶ held + hashed
//!        ▲   (popped from head,        │                             │
//!        │    old hash evicted)        │ ref → 0                     │ ref → 0
//!        └────────── prepend ◀─────────┘                             ▼
//!   (reused first)                                    free + hashed (appended at the tail:
//!                                                     still hittable; `touch` revives it)
//! ```

use super::free_queue::FreeQueue;
use super::hash::BlockHash;
use std::collections::HashMap;

/// Index of a physical KV block: row of the `[num_blocks, heads, block_size, head_dim]` tensors.
pub type BlockId = u32;

/// Allocation asked for more blocks than are free. Nothing was changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("not enough free KV blocks: need {needed}, {free} free")]
pub struct NotEnoughBlocks {
    pub needed: usize,
    pub free: usize,
}

/// Misuse of the pool. Every method that returns one has changed nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BlockPoolError {
    #[error("block_size must be at least 1")]
    ZeroBlockSize,
    #[error("num_blocks {0} is too large (at most {max})", max = u32::MAX - 2)]
    TooManyBlocks(usize),
    #[error("block {0} does not exist")]
    InvalidBlock(BlockId),
    #[error("block {0} is released more often than it is held")]
    NotHeld(BlockId),
    #[error("block {block} holds {got} token ids, a full block has {block_size}")]
    NotFull {
        block: BlockId,
        got: usize,
        block_size: usize,
    },
    #[error("block {0} is already cached under a different hash")]
    CachedUnderOtherHash(BlockId),
}

/// What a hashed block remembers, so a lookup can check it really holds the asked-for tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
struct CachedBlock {
    hash: BlockHash,
    parent: BlockHash,
    tokens: Box<[u32]>,
}

#[derive(Debug, Clone, Default)]
struct BlockMeta {
    ref_cnt: u32,
    cached: Option<CachedBlock>,
}

#[derive(Debug, Clone)]
pub struct BlockPool {
    block_size: usize,
    enable_caching: bool,
    blocks: Vec<BlockMeta>,
    free: FreeQueue,
    /// NOTE(why): several blocks may share a hash (no de-duplication): when two requests compute
    /// the same block at once, both keep their own copy so block tables stay append-only and
    /// never need rewriting. Lookups return the earliest cached copy still present.
    cached: HashMap<BlockHash, Vec<BlockId>>,
}

impl BlockPool {
    pub fn new(
        num_blocks: usize,
        block_size: usize,
        enable_caching: bool,
    ) -> Result<BlockPool, BlockPoolError> {
        if block_size == 0 {
            return Err(BlockPoolError::ZeroBlockSize);
        }
        if num_blocks >= (u32::MAX - 2) as usize {
            return Err(BlockPoolError::TooManyBlocks(num_blocks));
        }
        Ok(BlockPool {
            block_size,
            enable_caching,
            blocks: vec![BlockMeta::default(); num_blocks],
            free: FreeQueue::new_full(num_blocks),
            cached: HashMap::new(),
        })
    }

    pub fn block_size(&self) -> usize {
        self.block_size
    }

    pub fn num_blocks(&self) -> usize {
        self.blocks.len()
    }

    pub fn caching_enabled(&self) -> bool {
        self.enable_caching
    }

    /// Free blocks, including hashed ones that are still hittable.
    pub fn num_free_blocks(&self) -> usize {
        self.free.len()
    }

    /// Fraction of blocks held by someone, in [0, 1].
    pub fn usage(&self) -> f64 {
        if self.blocks.is_empty() {
            return 0.0;
        }
        1.0 - self.free.len() as f64 / self.blocks.len() as f64
    }

    pub fn ref_count(&self, block: BlockId) -> Option<u32> {
        self.blocks.get(block as usize).map(|m| m.ref_cnt)
    }

    /// The hash a block is cached under, if it is hittable.
    pub fn block_hash(&self, block: BlockId) -> Option<&BlockHash> {
        self.blocks
            .get(block as usize)?
            .cached
            .as_ref()
            .map(|c| &c.hash)
    }

    /// Number of hittable blocks (held or free).
    pub fn num_cached_blocks(&self) -> usize {
        self.cached.values().map(Vec::len).sum()
    }

    /// Free blocks that still hold a hash: reusable by a prefix hit until reallocated.
    pub fn num_free_cached_blocks(&self) -> usize {
        self.blocks.iter().filter(|b| b.ref_cnt == 0 && b.cached.is_some()).count()
    }

    /// Free block ids in eviction order (first = reused next). For diagnostics and tests.
    pub fn free_order(&self) -> Vec<BlockId> {
        self.free.iter().collect()
    }

    /// A block cached as `hash` whose stored parent hash and token ids equal the given ones.
    ///
    /// NOTE(why): comparing the stored tokens guards against hash collisions at the cost of
    /// `block_size` integer compares; the parent check ties the block to the same chain.
    pub fn get_cached_block(
        &self,
        hash: &BlockHash,
        parent: &BlockHash,
        tokens: &[u32],
    ) -> Option<BlockId> {
        if !self.enable_caching {
            return None;
        }
        self.cached.get(hash)?.iter().copied().find(|&b| {
            self.blocks[b as usize]
                .cached
                .as_ref()
                .is_some_and(|c| c.parent == *parent && *c.tokens == *tokens)
        })
    }

    /// Takes `n` blocks from the head of the free queue, each with ref count 1 and no hash
    /// (a popped block that was still hittable stops being hittable now).
    pub fn allocate(&mut self, n: usize) -> Result<Vec<BlockId>, NotEnoughBlocks> {
        if n > self.free.len() {
            return Err(NotEnoughBlocks {
                needed: n,
                free: self.free.len(),
            });
        }
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            let Some(b) = self.free.popleft() else { break };
            self.evict_hash(b);
            let meta = &mut self.blocks[b as usize];
            debug_assert_eq!(
                meta.ref_cnt, 0,
                "a block in the free queue must be unreferenced"
            );
            meta.ref_cnt = 1;
            out.push(b);
        }
        Ok(out)
    }

    /// Adds one holder to each block (a prefix hit). A free block leaves the free queue, so it can
    /// no longer be evicted, but keeps its hash.
    pub fn touch(&mut self, blocks: &[BlockId]) -> Result<(), BlockPoolError> {
        self.check_ids(blocks)?;
        for &b in blocks {
            let meta = &mut self.blocks[b as usize];
            if meta.ref_cnt == 0 {
                self.free.remove(b);
            }
            meta.ref_cnt += 1;
        }
        Ok(())
    }

    /// Drops one holder from each block, in the given order. Blocks that reach zero join the
    /// free queue: unhashed ones at the head (nothing to lose, reuse first), hashed ones at the
    /// tail (stay hittable longest).
    ///
    /// NOTE(why): callers pass a request's blocks in reverse, so among blocks freed together the
    /// tail of a chain is evicted before its head, keeping the shared prefix alive longest.
    pub fn free_blocks(&mut self, ordered: &[BlockId]) -> Result<(), BlockPoolError> {
        self.check_ids(ordered)?;
        // Validate before mutating: a block listed k times must have at least k holders.
        let mut releases: HashMap<BlockId, u32> = HashMap::new();
        for &b in ordered {
            let k = releases.entry(b).or_insert(0);
            *k += 1;
            if *k > self.blocks[b as usize].ref_cnt {
                return Err(BlockPoolError::NotHeld(b));
            }
        }
        for &b in ordered {
            let meta = &mut self.blocks[b as usize];
            meta.ref_cnt -= 1;
            if meta.ref_cnt == 0 {
                if meta.cached.is_some() {
                    self.free.append(b);
                } else {
                    self.free.prepend(b);
                }
            }
        }
        Ok(())
    }

    /// Makes a held, full block hittable as `hash` (child of `parent`) holding `tokens`.
    /// Caching an already cached block under the same hash is a no-op; with caching disabled
    /// this does nothing.
    pub fn cache_block(
        &mut self,
        block: BlockId,
        hash: BlockHash,
        parent: BlockHash,
        tokens: &[u32],
    ) -> Result<(), BlockPoolError> {
        self.check_ids(&[block])?;
        if tokens.len() != self.block_size {
            return Err(BlockPoolError::NotFull {
                block,
                got: tokens.len(),
                block_size: self.block_size,
            });
        }
        let meta = &mut self.blocks[block as usize];
        if meta.ref_cnt == 0 {
            return Err(BlockPoolError::NotHeld(block));
        }
        if let Some(c) = &meta.cached {
            return if c.hash == hash {
                Ok(())
            } else {
                Err(BlockPoolError::CachedUnderOtherHash(block))
            };
        }
        if !self.enable_caching {
            return Ok(());
        }
        meta.cached = Some(CachedBlock {
            hash,
            parent,
            tokens: tokens.into(),
        });
        self.cached.entry(hash).or_default().push(block);
        Ok(())
    }

    /// Makes a block unhittable (its KV is about to be rewritten in place, or an external tier
    /// dropped it). Returns whether it was hittable. The block's holders keep it.
    pub fn uncache_block(&mut self, block: BlockId) -> bool {
        if (block as usize) >= self.blocks.len() {
            return false;
        }
        let was_cached = self.evict_hash(block);
        // A free block that lost its hash should be reused before hashed ones.
        if was_cached && self.free.remove(block) {
            self.free.prepend(block);
        }
        was_cached
    }

    /// Forgets every cached hash. Only allowed when no block is held (as in vLLM): a held
    /// block's hash is still needed when its request caches further blocks. Returns success.
    pub fn reset_prefix_cache(&mut self) -> bool {
        if self.free.len() != self.blocks.len() {
            return false;
        }
        self.cached.clear();
        for meta in &mut self.blocks {
            meta.cached = None;
        }
        true
    }

    fn evict_hash(&mut self, block: BlockId) -> bool {
        let Some(c) = self.blocks[block as usize].cached.take() else {
            return false;
        };
        if let Some(list) = self.cached.get_mut(&c.hash) {
            // `retain` keeps insertion order, so lookups keep preferring the oldest copy.
            list.retain(|&b| b != block);
            if list.is_empty() {
                self.cached.remove(&c.hash);
            }
        }
        true
    }

    fn check_ids(&self, blocks: &[BlockId]) -> Result<(), BlockPoolError> {
        match blocks.iter().find(|&&b| (b as usize) >= self.blocks.len()) {
            Some(&b) => Err(BlockPoolError::InvalidBlock(b)),
            None => Ok(()),
        }
    }

    /// Every structural invariant of the pool; `Err` names the first one broken.
    pub fn check_invariants(&self) -> Result<(), String> {
        let mut free_seen = vec![false; self.blocks.len()];
        for b in self.free.iter() {
            let i = b as usize;
            if free_seen[i] {
                return Err(format!("block {b} is twice in the free queue"));
            }
            free_seen[i] = true;
            if self.blocks[i].ref_cnt != 0 {
                return Err(format!(
                    "block {b} is free but has ref count {}",
                    self.blocks[i].ref_cnt
                ));
            }
        }
        for (i, meta) in self.blocks.iter().enumerate() {
            if meta.ref_cnt == 0 && !free_seen[i] {
                return Err(format!(
                    "block {i} has no holder but is not in the free queue"
                ));
            }
            if let Some(c) = &meta.cached {
                let listed = self
                    .cached
                    .get(&c.hash)
                    .is_some_and(|l| l.contains(&(i as BlockId)));
                if !listed {
                    return Err(format!("block {i} carries a hash the map does not list"));
                }
            }
        }
        for (hash, list) in &self.cached {
            if list.is_empty() {
                return Err(format!("empty entry for {hash:?}"));
            }
            for &b in list {
                let ok = self
                    .blocks
                    .get(b as usize)
                    .and_then(|m| m.cached.as_ref())
                    .is_some_and(|c| c.hash == *hash);
                if !ok {
                    return Err(format!(
                        "map lists block {b} under {hash:?} but the block disagrees"
                    ));
                }
            }
            let mut sorted = list.clone();
            sorted.sort_unstable();
            sorted.dedup();
            if sorted.len() != list.len() {
                return Err(format!("map lists a block twice under {hash:?}"));
            }
        }
        if self.free.len() != free_seen.iter().filter(|&&f| f).count() {
            return Err("free queue length disagrees with its contents".into());
        }
        Ok(())
    }
}
