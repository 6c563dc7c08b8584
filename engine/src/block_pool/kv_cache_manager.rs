//! `KvCacheManager`: per-request block tables over one `BlockPool`, prefix-cache lookups and
//! slot allocation, in vLLM v1's shape.
//!
//! Owns: for each request (an opaque `RequestId`), its known token ids, the chain hashes of its
//! full blocks (extended as tokens arrive, kept across preemption so a resumed request does not
//! rehash), its block table, how many tokens have KV slots, and how many leading blocks are
//! registered in the prefix cache. Must not know: scheduling policy, tensors, sampling.
//!
//! A request's slots, left to right (one box per block of `block_size` tokens):
//!
//! ```text
//!  | hit (prefix cache) | slotted earlier | new this step | known, not yet scheduled |
//!  |<- PrefixHit ------>|<-------------- block table -------------->|
//!                                         ^ allocate_slots(num_new_tokens)
//! ```
//!
//! Full blocks are cached at allocation time, but only up to the tokens the request already
//! knows (a slot for an unknown token is never hashed).
//! NOTE(why): caching at allocation lets a request admitted later in the same step hit blocks
//! whose KV is written by this very forward pass; that is sound only because the runner writes
//! every new K/V of a layer before any attention of that layer reads the cache.
//!
//! KV budgets: a request with a token cap (`set_token_cap`) keeps its tokens in slots
//! `[0, held)`; after each step `trim` drops what its policy evicted, so it rests on
//! `footprint::resting_blocks` and frees the rest, tail first. Its block table then no longer
//! maps positions (slot `i` holds *some* kept token), so such a request is never hashed:
//! `disable_caching` stops caching its blocks and unhooks the ones only it holds (blocks shared
//! with other requests must never be rewritten in place).

use super::hash::{extend_block_hashes, BlockHash, ExtraKeys};
use kvault_scheduler::footprint;
use super::pool::{BlockId, BlockPool, BlockPoolError, NotEnoughBlocks};
use std::collections::HashMap;

mod tier_seam;
pub use tier_seam::Adopted;

/// Opaque id the engine gives each request.
pub type RequestId = u64;

/// Leading blocks of a token sequence found in the prefix cache.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PrefixHit {
    pub blocks: Vec<BlockId>,
    /// Always `blocks.len() * block_size`: hits are whole blocks.
    pub num_tokens: usize,
}

impl PrefixHit {
    pub fn none() -> PrefixHit {
        PrefixHit::default()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KvCacheError {
    #[error(transparent)]
    NotEnoughBlocks(#[from] NotEnoughBlocks),
    #[error("request {0} is not known to the KV cache manager")]
    UnknownRequest(RequestId),
    #[error("request {0} is already registered")]
    DuplicateRequest(RequestId),
    #[error("request {id}: {wanted} tokens would have slots but only {known} tokens are known")]
    BeyondKnownTokens {
        id: RequestId,
        wanted: usize,
        known: usize,
    },
    #[error("request {0}: a prefix hit can only be attached to a request that holds no blocks")]
    HitOnRunningRequest(RequestId),
    #[error("request {0}: the prefix hit no longer matches the cache (look it up again)")]
    StaleHit(RequestId),
    #[error("request {0}: a token cap needs a request that holds no blocks and is not hashed")]
    CapOnLiveRequest(RequestId),
    #[error(transparent)]
    Pool(#[from] BlockPoolError),
}

#[derive(Debug, Clone)]
struct RequestBlocks {
    tokens: Vec<u32>,
    extra: ExtraKeys,
    hashes: Vec<BlockHash>,
    blocks: Vec<BlockId>,
    /// Slots in use (`[0, num_slotted)`); equal to the positions computed unless evicted.
    num_slotted: usize,
    /// Positions computed and then evicted (a capped request's tokens no slot holds any more).
    num_evicted: usize,
    num_cached_blocks: usize,
    /// Its hashes are kept, so it can look up prefix hits.
    hashable: bool,
    /// Its full blocks are registered in the prefix cache (false for a capped request, whose
    /// slots will be rewritten by eviction).
    publishes: bool,
    /// Tokens kept per KV head per layer between steps (`None`: everything).
    cap: Option<usize>,
}

/// Blocks a capped request got from the prefix cache, being replaced by private copies: its
/// table already names the copies; the cache's blocks stay referenced until
/// [`KvCacheManager::finish_private_copies`], which must follow in the same step once the
/// caller has copied their contents (`copies`: `[source, copy]`).
#[must_use = "finish_private_copies releases the cache's blocks"]
#[derive(Debug)]
pub struct PrivateCopies {
    pub copies: Vec<[BlockId; 2]>,
}

#[derive(Debug, Clone)]
pub struct KvCacheManager {
    pool: BlockPool,
    requests: HashMap<RequestId, RequestBlocks>,
}

impl KvCacheManager {
    pub fn new(
        num_blocks: usize,
        block_size: usize,
        enable_caching: bool,
    ) -> Result<KvCacheManager, KvCacheError> {
        Ok(KvCacheManager {
            pool: BlockPool::new(num_blocks, block_size, enable_caching)?,
            requests: HashMap::new(),
        })
    }

    pub fn pool(&self) -> &BlockPool {
        &self.pool
    }

    /// Lets tests forge pool states (e.g. a hash collision) that real use cannot reach.
    #[cfg(test)]
    pub(crate) fn pool_mut(&mut self) -> &mut BlockPool {
        &mut self.pool
    }

    pub fn block_size(&self) -> usize {
        self.pool.block_size()
    }

    pub fn num_free_blocks(&self) -> usize {
        self.pool.num_free_blocks()
    }

    /// Registers a request with its prompt and hashes the prompt's full blocks.
    pub fn add_request(
        &mut self,
        id: RequestId,
        prompt: &[u32],
        extra: ExtraKeys,
    ) -> Result<(), KvCacheError> {
        if self.requests.contains_key(&id) {
            return Err(KvCacheError::DuplicateRequest(id));
        }
        let mut req = RequestBlocks {
            tokens: prompt.to_vec(),
            extra,
            hashes: Vec::new(),
            blocks: Vec::new(),
            num_slotted: 0,
            num_evicted: 0,
            num_cached_blocks: 0,
            hashable: true,
            publishes: true,
            cap: None,
        };
        self.rehash(&mut req);
        self.requests.insert(id, req);
        Ok(())
    }

    /// Records tokens the request produced (sampled outputs), hashing newly full blocks.
    pub fn append_tokens(&mut self, id: RequestId, tokens: &[u32]) -> Result<(), KvCacheError> {
        let mut req = self
            .requests
            .remove(&id)
            .ok_or(KvCacheError::UnknownRequest(id))?;
        req.tokens.extend_from_slice(tokens);
        if req.cap.is_some_and(|c| req.tokens.len() > c) {
            // Longer than its budget: a future hit could not fit in it; stop hashing.
            req.hashable = false;
            req.hashes.clear();
        }
        self.rehash(&mut req);
        self.requests.insert(id, req);
        Ok(())
    }

    fn rehash(&self, req: &mut RequestBlocks) {
        if self.pool.caching_enabled() && req.hashable {
            extend_block_hashes(
                &mut req.hashes,
                &req.tokens,
                self.pool.block_size(),
                &req.extra,
            );
        }
    }

    /// The longest cached prefix of `token_ids`, without registering anything.
    ///
    /// Walks block hashes left to right and stops at the first miss or token mismatch (every
    /// later hash chains from the missed one). The hit never covers the last token: its logits
    /// are needed, so at least that token is recomputed, which rounds the hit down to whole
    /// blocks and can cost one block.
    pub fn find_prefix_hit(&self, token_ids: &[u32], extra: &ExtraKeys) -> PrefixHit {
        if !self.pool.caching_enabled() {
            return PrefixHit::none();
        }
        let mut hashes = Vec::new();
        extend_block_hashes(&mut hashes, token_ids, self.pool.block_size(), extra);
        self.longest_hit(&hashes, token_ids)
    }

    /// The prefix hit for a registered request that holds no blocks (new, or preempted), from
    /// its stored hashes: one map lookup per block, no rehashing, so the scheduler's view can ask
    /// every step. A request holding blocks (or never hashed) gets no hit.
    pub fn computed_blocks(&self, id: RequestId) -> Result<PrefixHit, KvCacheError> {
        let req = self
            .requests
            .get(&id)
            .ok_or(KvCacheError::UnknownRequest(id))?;
        if !req.blocks.is_empty() || !req.hashable || !self.pool.caching_enabled() {
            return Ok(PrefixHit::none());
        }
        Ok(self.longest_hit(&req.hashes, &req.tokens))
    }

    fn longest_hit(&self, hashes: &[BlockHash], tokens: &[u32]) -> PrefixHit {
        let bs = self.pool.block_size();
        let max_blocks = (tokens.len().saturating_sub(1) / bs).min(hashes.len());
        let mut blocks = Vec::new();
        let mut parent = BlockHash::none();
        for (i, hash) in hashes.iter().take(max_blocks).enumerate() {
            match self
                .pool
                .get_cached_block(hash, &parent, &tokens[i * bs..(i + 1) * bs])
            {
                Some(b) => blocks.push(b),
                None => break,
            }
            parent = *hash;
        }
        let num_tokens = blocks.len() * bs;
        PrefixHit { blocks, num_tokens }
    }

    /// Gives the request slots for `num_new_tokens` more tokens after its slotted ones (after
    /// the hit, for a request that holds no blocks yet) and returns the newly allocated blocks.
    /// Attaches `hit` (from `computed_blocks`, called just before: an allocation in between
    /// may evict a free hit block, which is reported as `StaleHit`). Caches newly full blocks.
    ///
    /// On any error nothing has changed.
    pub fn allocate_slots(
        &mut self,
        id: RequestId,
        num_new_tokens: usize,
        hit: &PrefixHit,
    ) -> Result<Vec<BlockId>, KvCacheError> {
        let req = self
            .requests
            .get(&id)
            .ok_or(KvCacheError::UnknownRequest(id))?;
        let plan = self.plan(id, req, num_new_tokens, hit)?;
        let needed = plan.new_blocks + plan.free_hit_blocks;
        if needed > self.pool.num_free_blocks() {
            return Err(NotEnoughBlocks {
                needed,
                free: self.pool.num_free_blocks(),
            }
            .into());
        }
        // From here on nothing can fail: every check is done.
        self.pool.touch(&hit.blocks)?;
        let new_blocks = self.pool.allocate(plan.new_blocks)?;
        let Some(req) = self.requests.get_mut(&id) else {
            return Err(KvCacheError::UnknownRequest(id));
        };
        req.blocks.extend_from_slice(&hit.blocks);
        req.num_cached_blocks += hit.blocks.len();
        req.blocks.extend_from_slice(&new_blocks);
        req.num_slotted = plan.total_slotted;
        self.cache_full_blocks(id)?;
        Ok(new_blocks)
    }

    fn plan(
        &self,
        id: RequestId,
        req: &RequestBlocks,
        num_new_tokens: usize,
        hit: &PrefixHit,
    ) -> Result<AllocPlan, KvCacheError> {
        let bs = self.pool.block_size();
        if !hit.blocks.is_empty() || hit.num_tokens != 0 {
            if !req.blocks.is_empty() {
                return Err(KvCacheError::HitOnRunningRequest(id));
            }
            let valid = hit.num_tokens == hit.blocks.len() * bs
                && hit.blocks.len() <= req.hashes.len()
                && hit
                    .blocks
                    .iter()
                    .zip(&req.hashes)
                    .all(|(&b, h)| self.pool.block_hash(b) == Some(h));
            if !valid {
                return Err(KvCacheError::StaleHit(id));
            }
        }
        let computed = req.num_slotted + req.num_evicted + hit.num_tokens;
        if computed + num_new_tokens > req.tokens.len() {
            return Err(KvCacheError::BeyondKnownTokens {
                id,
                wanted: computed + num_new_tokens,
                known: req.tokens.len(),
            });
        }
        // Slots, not positions: a capped request trimmed after its last step rests on
        // `footprint::resting_tokens` slots (the property tests hold the two equal).
        let total_slotted = req.num_slotted + hit.num_tokens + num_new_tokens;
        let held = req.blocks.len() + hit.blocks.len();
        let new_blocks = footprint::blocks(total_slotted, bs).saturating_sub(held);
        let free_hit_blocks = hit
            .blocks
            .iter()
            .filter(|&&b| self.pool.ref_count(b) == Some(0))
            .count();
        Ok(AllocPlan {
            total_slotted,
            new_blocks,
            free_hit_blocks,
        })
    }

    fn cache_full_blocks(&mut self, id: RequestId) -> Result<(), KvCacheError> {
        let bs = self.pool.block_size();
        let Some(req) = self.requests.get_mut(&id) else {
            return Err(KvCacheError::UnknownRequest(id));
        };
        if !req.hashable || !req.publishes || !self.pool.caching_enabled() {
            return Ok(());
        }
        let full = (req.num_slotted / bs).min(req.hashes.len());
        for i in req.num_cached_blocks..full {
            let parent = if i == 0 {
                BlockHash::none()
            } else {
                req.hashes[i - 1]
            };
            let tokens = &req.tokens[i * bs..(i + 1) * bs];
            self.pool
                .cache_block(req.blocks[i], req.hashes[i], parent, tokens)?;
        }
        req.num_cached_blocks = req.num_cached_blocks.max(full);
        Ok(())
    }

    /// Releases the request's blocks (preemption or finish), tail first, so the chain's tail is
    /// evicted before its shared head. The request stays registered with its tokens and hashes.
    pub fn free(&mut self, id: RequestId) -> Result<(), KvCacheError> {
        let req = self
            .requests
            .get_mut(&id)
            .ok_or(KvCacheError::UnknownRequest(id))?;
        let reversed: Vec<BlockId> = req.blocks.iter().rev().copied().collect();
        self.pool.free_blocks(&reversed)?;
        req.blocks.clear();
        req.num_slotted = 0;
        req.num_evicted = 0;
        req.num_cached_blocks = 0;
        Ok(())
    }

    /// Gives a registered request that holds no blocks a token cap (a KV budget). Its blocks are
    /// never published in the prefix cache (once it evicts, its slots no longer hold the tokens
    /// they would hash to); while its tokens fit the cap it may still take prefix hits, as
    /// private copies (`make_private_copies`).
    pub fn set_token_cap(&mut self, id: RequestId, cap: usize) -> Result<(), KvCacheError> {
        let req = self.requests.get_mut(&id).ok_or(KvCacheError::UnknownRequest(id))?;
        if !req.blocks.is_empty() || cap == 0 {
            return Err(KvCacheError::CapOnLiveRequest(id));
        }
        req.cap = Some(cap);
        req.publishes = false;
        if req.tokens.len() > cap {
            req.hashable = false;
            req.hashes.clear();
        }
        Ok(())
    }

    /// Copy-on-write of a capped request's prefix hit, right after `allocate_slots` attached it:
    /// allocates one fresh block per hit block and points the table at them. The caller copies
    /// each `[source, copy]` pair's contents, then calls `finish_private_copies`. Uncapped
    /// requests share hits and get no copies. On error nothing has changed.
    pub fn make_private_copies(&mut self, id: RequestId) -> Result<PrivateCopies, KvCacheError> {
        let req = self.requests.get(&id).ok_or(KvCacheError::UnknownRequest(id))?;
        if req.cap.is_none() || req.num_cached_blocks == 0 {
            return Ok(PrivateCopies { copies: Vec::new() });
        }
        let n = req.num_cached_blocks;
        let fresh = self.pool.allocate(n)?;
        let Some(req) = self.requests.get_mut(&id) else { return Err(KvCacheError::UnknownRequest(id)) };
        let copies = req.blocks[..n].iter().zip(&fresh).map(|(&src, &dst)| [src, dst]).collect();
        req.blocks[..n].copy_from_slice(&fresh);
        req.num_cached_blocks = 0;
        Ok(PrivateCopies { copies })
    }

    /// Releases the prefix cache's blocks once their contents were copied (they stay cached and
    /// hittable by others).
    pub fn finish_private_copies(&mut self, private: PrivateCopies) -> Result<(), KvCacheError> {
        let sources: Vec<BlockId> = private.copies.iter().rev().map(|c| c[0]).collect();
        self.pool.free_blocks(&sources)?;
        Ok(())
    }

    /// After a step: a capped request's policy kept `cap` tokens of the `held` it attended, so
    /// its slots past the cap are free; blocks past its resting footprint go back to the pool,
    /// tail first. Returns how many tokens were evicted. Uncapped requests: nothing happens.
    pub fn trim(&mut self, id: RequestId) -> Result<usize, KvCacheError> {
        let bs = self.pool.block_size();
        let req = self.requests.get_mut(&id).ok_or(KvCacheError::UnknownRequest(id))?;
        let Some(cap) = req.cap else { return Ok(0) };
        let evicted = req.num_slotted.saturating_sub(cap);
        if evicted == 0 {
            return Ok(0);
        }
        req.num_evicted += evicted;
        req.num_slotted = cap;
        let keep = footprint::resting_blocks(req.num_slotted + req.num_evicted, Some(cap), bs);
        let tail: Vec<BlockId> = req.blocks.drain(keep..).rev().collect();
        req.num_cached_blocks = req.num_cached_blocks.min(keep);
        self.pool.free_blocks(&tail)?;
        Ok(evicted)
    }

    /// Frees the request's blocks and forgets it.
    pub fn remove_request(&mut self, id: RequestId) -> Result<(), KvCacheError> {
        self.free(id)?;
        self.requests.remove(&id);
        Ok(())
    }

    /// Eviction seam: from now on no block of this request is cached, and cached blocks only it
    /// holds stop being hittable (their slots may be overwritten in place).
    pub fn disable_caching(&mut self, id: RequestId) -> Result<(), KvCacheError> {
        let req = self
            .requests
            .get_mut(&id)
            .ok_or(KvCacheError::UnknownRequest(id))?;
        req.hashable = false;
        req.hashes.clear();
        for &b in &req.blocks {
            if self.pool.ref_count(b) == Some(1) {
                self.pool.uncache_block(b);
            }
        }
        Ok(())
    }

    /// Physical blocks of the request in token order: token `t` lives in block
    /// `table[t / block_size]` at offset `t % block_size` (the runner's slot mapping).
    pub fn block_table(&self, id: RequestId) -> Option<&[BlockId]> {
        self.requests.get(&id).map(|r| r.blocks.as_slice())
    }

    /// Slots in use: tokens whose KV is held (computed, or being computed this step). For a
    /// request that never evicted, also the positions computed.
    pub fn num_slotted_tokens(&self, id: RequestId) -> Option<usize> {
        self.requests.get(&id).map(|r| r.num_slotted)
    }

    /// Chain hashes of the request's full blocks (empty once caching is disabled for it).
    #[cfg(test)]
    pub fn block_hashes(&self, id: RequestId) -> Option<&[BlockHash]> {
        self.requests.get(&id).map(|r| r.hashes.as_slice())
    }

    #[cfg(test)]
    pub fn num_requests(&self) -> usize {
        self.requests.len()
    }

    /// Pool invariants plus: each block's ref count equals the number of table entries naming it.
    pub fn check_invariants(&self) -> Result<(), String> {
        self.pool.check_invariants()?;
        let mut holders = vec![0u32; self.pool.num_blocks()];
        for (id, req) in &self.requests {
            for &b in &req.blocks {
                holders[b as usize] += 1;
            }
            let bs = self.pool.block_size();
            if req.blocks.len() != req.num_slotted.div_ceil(bs) {
                return Err(format!(
                    "request {id}: {} blocks for {} slots",
                    req.blocks.len(),
                    req.num_slotted
                ));
            }
            for (i, &b) in req.blocks.iter().take(req.num_cached_blocks).enumerate() {
                if req.hashable
                    && self.pool.caching_enabled()
                    && self.pool.block_hash(b) != req.hashes.get(i)
                {
                    return Err(format!("request {id}: cached block {i} lost its hash"));
                }
            }
        }
        for (b, &n) in holders.iter().enumerate() {
            if self.pool.ref_count(b as BlockId) != Some(n) {
                return Err(format!(
                    "block {b}: ref count {:?}, holders {n}",
                    self.pool.ref_count(b as BlockId)
                ));
            }
        }
        Ok(())
    }
}

struct AllocPlan {
    total_slotted: usize,
    new_blocks: usize,
    free_hit_blocks: usize,
}
