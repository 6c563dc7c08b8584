//! The RAM tier: host memory below the pool, holding copies of prefix blocks by chain hash, in
//! LRU order within a byte budget, plus the pinned bytes of swapped-out requests.
//!
//! Owns: the block copies and their accounting. Must not know: the pool, the disk or requests.

use std::collections::HashMap;

use crate::block_pool::BlockHash;

use super::lru::{LruBudget, TooLarge};
use super::BlockBytes;

pub struct RamTier {
    lru: LruBudget<BlockHash>,
    data: HashMap<BlockHash, BlockBytes>,
}

impl RamTier {
    pub fn new(budget: u64) -> Self {
        Self { lru: LruBudget::new(budget), data: HashMap::new() }
    }

    pub fn contains(&self, hash: &BlockHash) -> bool {
        self.data.contains_key(hash)
    }

    /// The block, now the most recently used.
    pub fn get(&mut self, hash: &BlockHash) -> Option<BlockBytes> {
        self.lru.touch(hash);
        self.data.get(hash).cloned()
    }

    /// Holds a copy (refreshing it if held), evicting the least recently used beyond the budget.
    /// Returns how many blocks were evicted; a block larger than the free budget is not held.
    pub fn insert(&mut self, hash: BlockHash, bytes: BlockBytes) -> Result<usize, TooLarge> {
        let evicted = self.lru.insert(hash, bytes.len() as u64)?;
        for h in &evicted {
            self.data.remove(h);
        }
        self.data.insert(hash, bytes);
        Ok(evicted.len())
    }

    /// Reserves bytes for a swapped-out request, evicting prefix blocks as needed.
    pub fn pin(&mut self, bytes: u64) -> Result<(), TooLarge> {
        for h in self.lru.pin(bytes)? {
            self.data.remove(&h);
        }
        Ok(())
    }

    pub fn unpin(&mut self, bytes: u64) {
        self.lru.unpin(bytes);
    }

    pub fn num_blocks(&self) -> usize {
        self.data.len()
    }

    pub fn used(&self) -> u64 {
        self.lru.used()
    }

    pub fn pinned(&self) -> u64 {
        self.lru.pinned()
    }

    pub fn budget(&self) -> u64 {
        self.lru.budget()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn block(n: u8) -> (BlockHash, BlockBytes) {
        (BlockHash([n; 32]), Arc::new(vec![n; 100]))
    }

    #[test]
    fn holds_blocks_within_its_budget_and_drops_the_least_recent() {
        let mut ram = RamTier::new(300);
        for n in 0..3 {
            let (h, b) = block(n);
            assert_eq!(ram.insert(h, b), Ok(0));
        }
        assert!(ram.get(&BlockHash([0; 32])).is_some());
        let (h, b) = block(3);
        assert_eq!(ram.insert(h, b), Ok(1));
        assert!(!ram.contains(&BlockHash([1; 32])), "the least recently used went");
        assert!(ram.contains(&BlockHash([0; 32])));
        assert_eq!(ram.used(), 300);
        assert_eq!(ram.num_blocks(), 3);
    }

    #[test]
    fn pinned_swap_bytes_push_prefix_blocks_out_and_are_given_back() {
        let mut ram = RamTier::new(300);
        for n in 0..3 {
            let (h, b) = block(n);
            ram.insert(h, b).unwrap();
        }
        ram.pin(150).unwrap();
        assert_eq!(ram.num_blocks(), 1);
        assert!(ram.used() <= ram.budget());
        assert!(ram.pin(200).is_err(), "more than the budget left is refused");
        ram.unpin(150);
        assert_eq!((ram.pinned(), ram.used()), (0, 100));
    }
}
