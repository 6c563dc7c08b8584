//! `LruBudget`: byte-budget accounting in least-recently-used order, for any key.
//!
//! Owns: which keys a tier holds, their sizes, their recency, the bytes pinned outside the LRU
//! (swapped-out requests), and the promise that held + pinned bytes never exceed the budget.
//! Must not know: what the bytes are or where they live (the tiers keep the data; this keeps
//! the books), so it is tested without tensors or files.

use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;

/// An entry (or a pin) larger than the whole budget. Nothing was changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{size} bytes do not fit a {budget}-byte budget")]
pub struct TooLarge {
    pub size: u64,
    pub budget: u64,
}

#[derive(Debug, Clone)]
pub struct LruBudget<K> {
    budget: u64,
    used: u64,
    pinned: u64,
    clock: u64,
    entries: HashMap<K, (u64, u64)>,
    /// Recency stamp → key; the first entry is the least recently used.
    order: BTreeMap<u64, K>,
}

impl<K: Hash + Eq + Clone> LruBudget<K> {
    pub fn new(budget: u64) -> Self {
        Self { budget, used: 0, pinned: 0, clock: 0, entries: HashMap::new(), order: BTreeMap::new() }
    }

    pub fn budget(&self) -> u64 {
        self.budget
    }

    /// Bytes of LRU entries plus pinned bytes.
    pub fn used(&self) -> u64 {
        self.used + self.pinned
    }

    pub fn pinned(&self) -> u64 {
        self.pinned
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn contains(&self, key: &K) -> bool {
        self.entries.contains_key(key)
    }

    /// Makes `key` the most recently used. Returns whether it is held.
    pub fn touch(&mut self, key: &K) -> bool {
        let Some((_, stamp)) = self.entries.get_mut(key) else { return false };
        self.clock += 1;
        let old = std::mem::replace(stamp, self.clock);
        if let Some(k) = self.order.remove(&old) {
            self.order.insert(self.clock, k);
        }
        true
    }

    /// Adds `key` (or refreshes it, if held) as the most recently used, evicting least recently
    /// used entries until it fits. Returns the evicted keys, oldest first.
    pub fn insert(&mut self, key: K, size: u64) -> Result<Vec<K>, TooLarge> {
        if self.pinned + size > self.budget {
            return Err(TooLarge { size, budget: self.budget - self.pinned });
        }
        self.remove(&key);
        let evicted = self.evict_until(size);
        self.clock += 1;
        self.entries.insert(key.clone(), (size, self.clock));
        self.order.insert(self.clock, key);
        self.used += size;
        Ok(evicted)
    }

    pub fn remove(&mut self, key: &K) -> Option<u64> {
        let (size, stamp) = self.entries.remove(key)?;
        self.order.remove(&stamp);
        self.used -= size;
        Some(size)
    }

    /// Reserves `size` bytes outside the LRU (they cannot be evicted until `unpin`), evicting
    /// LRU entries to make room. Returns the evicted keys, oldest first.
    pub fn pin(&mut self, size: u64) -> Result<Vec<K>, TooLarge> {
        if self.pinned + size > self.budget {
            return Err(TooLarge { size, budget: self.budget - self.pinned });
        }
        let evicted = self.evict_until(size);
        self.pinned += size;
        Ok(evicted)
    }

    pub fn unpin(&mut self, size: u64) {
        debug_assert!(size <= self.pinned, "unpinning more than was pinned");
        self.pinned = self.pinned.saturating_sub(size);
    }

    /// Keys from least to most recently used.
    pub fn lru_order(&self) -> impl Iterator<Item = &K> {
        self.order.values()
    }

    fn evict_until(&mut self, incoming: u64) -> Vec<K> {
        let mut evicted = Vec::new();
        while self.used + self.pinned + incoming > self.budget {
            let Some((_, key)) = self.order.pop_first() else { break };
            if let Some((size, _)) = self.entries.remove(&key) {
                self.used -= size;
            }
            evicted.push(key);
        }
        evicted
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inserting_past_the_budget_evicts_least_recently_used_first() {
        let mut lru = LruBudget::new(100);
        for k in 0..4 {
            assert_eq!(lru.insert(k, 25), Ok(vec![]));
        }
        assert!(lru.touch(&0));
        assert_eq!(lru.insert(9, 40), Ok(vec![1, 2]));
        assert_eq!(lru.lru_order().copied().collect::<Vec<_>>(), vec![3, 0, 9]);
        assert_eq!(lru.used(), 90);
    }

    #[test]
    fn too_large_entries_and_pins_are_refused_without_change() {
        let mut lru = LruBudget::new(100);
        lru.insert(1, 60).unwrap();
        assert_eq!(lru.insert(2, 101), Err(TooLarge { size: 101, budget: 100 }));
        assert_eq!(lru.pin(101), Err(TooLarge { size: 101, budget: 100 }));
        assert!(lru.contains(&1));
        assert_eq!(lru.used(), 60);
    }

    #[test]
    fn pins_evict_entries_and_shrink_room_until_unpinned() {
        let mut lru = LruBudget::new(100);
        lru.insert('a', 50).unwrap();
        lru.insert('b', 50).unwrap();
        assert_eq!(lru.pin(30), Ok(vec!['a']));
        assert_eq!(lru.insert('c', 80), Err(TooLarge { size: 80, budget: 70 }));
        assert_eq!(lru.insert('c', 70), Ok(vec!['b']));
        lru.unpin(30);
        assert_eq!(lru.used(), 70);
        assert_eq!(lru.pinned(), 0);
    }

    #[test]
    fn reinserting_a_key_refreshes_it_and_replaces_its_size() {
        let mut lru = LruBudget::new(100);
        lru.insert(1, 10).unwrap();
        lru.insert(2, 10).unwrap();
        lru.insert(1, 30).unwrap();
        assert_eq!(lru.lru_order().copied().collect::<Vec<_>>(), vec![2, 1]);
        assert_eq!(lru.used(), 40);
        assert_eq!(lru.remove(&1), Some(30));
        assert_eq!(lru.remove(&1), None);
        assert_eq!(lru.used(), 10);
    }

    proptest::proptest! {
        /// Against a naive model: a Vec in recency order. Used bytes never exceed the budget and
        /// the eviction order is the model's.
        #[test]
        fn matches_a_naive_lru_and_never_exceeds_its_budget(ops in proptest::collection::vec((0u8..3, 0u8..8, 1u64..40), 1..200)) {
            let mut lru = LruBudget::new(100);
            let mut model: Vec<(u8, u64)> = Vec::new();
            for (op, key, size) in ops {
                match op {
                    0 => {
                        let res = lru.insert(key, size);
                        model.retain(|e| e.0 != key);
                        let mut evicted = Vec::new();
                        while model.iter().map(|e| e.1).sum::<u64>() + size > 100 {
                            evicted.push(model.remove(0).0);
                        }
                        model.push((key, size));
                        proptest::prop_assert_eq!(res, Ok(evicted));
                    }
                    1 => {
                        let held = lru.touch(&key);
                        let at = model.iter().position(|e| e.0 == key);
                        proptest::prop_assert_eq!(held, at.is_some());
                        if let Some(i) = at {
                            let e = model.remove(i);
                            model.push(e);
                        }
                    }
                    _ => {
                        let got = lru.remove(&key);
                        let at = model.iter().position(|e| e.0 == key);
                        proptest::prop_assert_eq!(got, at.map(|i| model.remove(i).1));
                    }
                }
                proptest::prop_assert!(lru.used() <= lru.budget());
                proptest::prop_assert_eq!(lru.lru_order().copied().collect::<Vec<_>>(), model.iter().map(|e| e.0).collect::<Vec<_>>());
            }
        }
    }
}
