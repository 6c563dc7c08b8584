//! What the offload tier needs from the KV cache manager: which of a request's blocks can go
//! down (full, hashed, never evicted), which of its hashes the pool misses, and adopting blocks
//! brought back from a tier into the pool's prefix cache.
//!
//! Must not know: the tiers themselves; this speaks blocks and hashes only.

use super::super::hash::BlockHash;
use super::super::pool::BlockId;
use super::{KvCacheError, KvCacheManager, RequestId};

/// Pool blocks just cached under a request's hashes for data being copied in from a tier, and
/// the request's own pool hit, held so allocating them could not evict it. Release both with
/// [`KvCacheManager::release_adopted`] once the data is in.
#[must_use = "release_adopted gives the blocks back to the pool"]
#[derive(Debug)]
pub struct Adopted {
    pub hit: Vec<BlockId>,
    pub fresh: Vec<BlockId>,
}

impl KvCacheManager {
    /// The request's blocks the prefix cache holds under its own hashes, in chain order:
    /// the ones that may be written down to a tier.
    pub fn hashed_blocks(&self, id: RequestId) -> Vec<(BlockId, BlockHash)> {
        let Some(req) = self.requests.get(&id) else { return Vec::new() };
        if !req.hashable || !req.publishes || !self.pool.caching_enabled() {
            return Vec::new();
        }
        req.blocks
            .iter()
            .zip(&req.hashes)
            .take(req.num_cached_blocks)
            .take_while(|(&b, h)| self.pool.block_hash(b) == Some(h))
            .map(|(&b, h)| (b, *h))
            .collect()
    }

    /// For a request holding no blocks: the hashes after its pool hit that a hit could still
    /// cover (never the last token's block), in chain order. `None` if it cannot take hits.
    pub fn missed_hashes(&self, id: RequestId) -> Option<Vec<BlockHash>> {
        let req = self.requests.get(&id)?;
        if !req.blocks.is_empty() || !req.hashable || !self.pool.caching_enabled() {
            return None;
        }
        let bs = self.pool.block_size();
        let hit = self.longest_hit(&req.hashes, &req.tokens).blocks.len();
        let max_blocks = (req.tokens.len().saturating_sub(1) / bs).min(req.hashes.len());
        Some(req.hashes[hit.min(max_blocks)..max_blocks].to_vec())
    }

    /// Allocates up to `n` pool blocks and caches them under the hashes that follow the
    /// request's pool hit, so that once their data is copied in, the hit extends over them.
    /// Fewer (maybe none) when the pool has fewer free blocks. On error nothing has changed.
    pub fn adopt_blocks(&mut self, id: RequestId, n: usize) -> Result<Adopted, KvCacheError> {
        let bs = self.pool.block_size();
        let req = self.requests.get(&id).ok_or(KvCacheError::UnknownRequest(id))?;
        if !req.blocks.is_empty() {
            return Err(KvCacheError::HitOnRunningRequest(id));
        }
        let hit = self.longest_hit(&req.hashes, &req.tokens).blocks;
        let free_hit = hit.iter().filter(|&&b| self.pool.ref_count(b) == Some(0)).count();
        let n = n.min(req.hashes.len() - hit.len()).min(self.pool.num_free_blocks() - free_hit);
        let first = hit.len();
        let hashes = req.hashes[first..first + n].to_vec();
        let parent0 = if first == 0 { BlockHash::none() } else { req.hashes[first - 1] };
        let tokens = req.tokens[first * bs..(first + n) * bs].to_vec();
        // Hold the hit first: the allocation below must not evict it.
        self.pool.touch(&hit)?;
        let fresh = self.pool.allocate(n)?;
        let mut parent = parent0;
        for (i, (&b, h)) in fresh.iter().zip(&hashes).enumerate() {
            self.pool.cache_block(b, *h, parent, &tokens[i * bs..(i + 1) * bs])?;
            parent = *h;
        }
        Ok(Adopted { hit, fresh })
    }

    /// Lets go of adopted blocks; they stay cached (hittable), the chain's head kept longest.
    /// `filled: false` (the copy failed): the fresh blocks stop being hittable first.
    pub fn release_adopted(&mut self, adopted: Adopted, filled: bool) -> Result<(), KvCacheError> {
        if !filled {
            for &b in &adopted.fresh {
                self.pool.uncache_block(b);
            }
        }
        let order: Vec<BlockId> = adopted.fresh.iter().rev().chain(adopted.hit.iter().rev()).copied().collect();
        self.pool.free_blocks(&order)?;
        Ok(())
    }
}
