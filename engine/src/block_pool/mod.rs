//! Paged KV memory bookkeeping with prefix caching, after vLLM v1's KV cache manager.
//!
//! Owns: fixed-size blocks of `block_size` tokens (default 16), their ref counts, an LRU free
//! queue with O(1) removal, stable chain hashes of full blocks, the hash → block map that makes
//! freed blocks hittable until they are reallocated, and per-request block tables.
//!
//! Must not know: tensors, models, kernels or scheduling policy. Everything here is pure logic
//! and is tested without tensors; the runner turns block tables into slot mappings.
//!
//! Layout: `hash` (chain hash + extra keys), `free_queue` (intrusive list), `pool` (BlockPool),
//! `kv_cache_manager` (per-request tables, hits, allocation).

pub mod free_queue;
pub mod hash;
pub mod kv_cache_manager;
pub mod pool;

#[cfg(test)]
mod footprint_check;
#[cfg(test)]
mod manager_tests;
#[cfg(test)]
mod model_check;
#[cfg(test)]
mod pool_tests;

pub use hash::{hash_block, BlockHash, ExtraKeys, HASH_SEED};
pub use kv_cache_manager::{Adopted, KvCacheError, KvCacheManager, PrefixHit, PrivateCopies, RequestId};
pub use pool::{BlockId, BlockPool, BlockPoolError, NotEnoughBlocks};

/// Tokens per block unless the user picks another `--block-size`.
pub const DEFAULT_BLOCK_SIZE: usize = 16;
