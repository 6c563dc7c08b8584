//! Unit tests of `BlockPool` alone: allocation, free order, touch, caching and the collision
//! guard, with block size 2.

use super::hash::{hash_block, BlockHash, ExtraKeys};
use super::pool::*;

fn pool(n: usize) -> BlockPool {
    BlockPool::new(n, 2, true).expect("valid pool")
}

/// Caches `block` as the first block of a chain holding `tokens`; returns its hash.
fn cache_first(p: &mut BlockPool, block: BlockId, tokens: &[u32]) -> BlockHash {
    let h = hash_block(None, 0, tokens, &ExtraKeys::none());
    p.cache_block(block, h, BlockHash::none(), tokens)
        .expect("cacheable");
    h
}

#[test]
fn allocate_pops_from_head_in_id_order_with_ref_one() {
    let mut p = pool(4);
    assert_eq!(p.allocate(3), Ok(vec![0, 1, 2]));
    assert_eq!(p.ref_count(0), Some(1));
    assert_eq!(p.num_free_blocks(), 1);
    assert!((p.usage() - 0.75).abs() < 1e-12);
}

#[test]
fn allocate_failure_changes_nothing() {
    let mut p = pool(3);
    p.allocate(2).expect("fits");
    let before = p.free_order();
    assert_eq!(p.allocate(2), Err(NotEnoughBlocks { needed: 2, free: 1 }));
    assert_eq!(p.free_order(), before);
    assert_eq!(p.num_free_blocks(), 1);
}

#[test]
fn freed_unhashed_blocks_are_reused_first_and_hashed_ones_last() {
    let mut p = pool(4);
    let blocks = p.allocate(4).expect("fits");
    cache_first(&mut p, blocks[0], &[1, 2]);
    cache_first(&mut p, blocks[1], &[3, 4]);
    // Reverse order, as a request frees: 3 (unhashed), 2 (unhashed), 1, 0 (hashed).
    p.free_blocks(&[3, 2, 1, 0]).expect("held");
    assert_eq!(p.free_order(), vec![2, 3, 1, 0]);
    p.check_invariants().expect("consistent");
}

#[test]
fn freed_hashed_block_stays_hittable_until_reallocated() {
    let mut p = pool(2);
    let b = p.allocate(1).expect("fits")[0];
    let h = cache_first(&mut p, b, &[5, 6]);
    p.free_blocks(&[b]).expect("held");
    assert_eq!(p.get_cached_block(&h, &BlockHash::none(), &[5, 6]), Some(b));
    // Block 1 (never hashed) is at the head; the next allocation takes it, then ours.
    assert_eq!(p.allocate(1), Ok(vec![1]));
    assert_eq!(p.get_cached_block(&h, &BlockHash::none(), &[5, 6]), Some(b));
    assert_eq!(p.allocate(1), Ok(vec![b]));
    assert_eq!(p.get_cached_block(&h, &BlockHash::none(), &[5, 6]), None);
    assert_eq!(p.block_hash(b), None);
    p.check_invariants().expect("consistent");
}

#[test]
fn touch_takes_a_free_hit_block_out_of_the_free_queue() {
    let mut p = pool(3);
    let b = p.allocate(1).expect("fits")[0];
    cache_first(&mut p, b, &[1, 1]);
    p.free_blocks(&[b]).expect("held");
    assert_eq!(p.num_free_blocks(), 3);
    p.touch(&[b]).expect("valid");
    assert_eq!(p.ref_count(b), Some(1));
    assert_eq!(p.num_free_blocks(), 2);
    assert!(!p.free_order().contains(&b));
    p.touch(&[b]).expect("valid");
    assert_eq!(p.ref_count(b), Some(2));
    p.check_invariants().expect("consistent");
}

#[test]
fn collision_guard_rejects_equal_hash_with_other_tokens() {
    let mut p = pool(2);
    let b = p.allocate(1).expect("fits")[0];
    // Force a collision: cache tokens [1, 2] under the hash that belongs to [3, 4].
    let forged = hash_block(None, 0, &[3, 4], &ExtraKeys::none());
    p.cache_block(b, forged, BlockHash::none(), &[1, 2])
        .expect("cacheable");
    assert_eq!(
        p.get_cached_block(&forged, &BlockHash::none(), &[3, 4]),
        None
    );
    assert_eq!(
        p.get_cached_block(&forged, &BlockHash::none(), &[1, 2]),
        Some(b)
    );
    // A matching block under another parent is not the same chain either.
    let other_parent = hash_block(None, 0, &[9, 9], &ExtraKeys::none());
    assert_eq!(p.get_cached_block(&forged, &other_parent, &[1, 2]), None);
}

#[test]
fn identical_blocks_coexist_without_deduplication() {
    let mut p = pool(3);
    let blocks = p.allocate(2).expect("fits");
    let h = cache_first(&mut p, blocks[0], &[7, 7]);
    cache_first(&mut p, blocks[1], &[7, 7]);
    assert_eq!(p.num_cached_blocks(), 2);
    // The oldest copy answers; after it is evicted, the other one still does.
    assert_eq!(
        p.get_cached_block(&h, &BlockHash::none(), &[7, 7]),
        Some(blocks[0])
    );
    p.uncache_block(blocks[0]);
    assert_eq!(
        p.get_cached_block(&h, &BlockHash::none(), &[7, 7]),
        Some(blocks[1])
    );
    p.check_invariants().expect("consistent");
}

#[test]
fn lookup_prefers_the_oldest_remaining_copy_after_a_middle_copy_is_evicted() {
    let mut p = pool(4);
    let blocks = p.allocate(4).expect("fits");
    let h = cache_first(&mut p, blocks[0], &[7, 7]);
    for &b in &blocks[1..] {
        cache_first(&mut p, b, &[7, 7]);
    }
    p.uncache_block(blocks[0]);
    p.uncache_block(blocks[1]);
    assert_eq!(
        p.get_cached_block(&h, &BlockHash::none(), &[7, 7]),
        Some(blocks[2])
    );
}

#[test]
fn double_free_is_an_error_and_changes_nothing() {
    let mut p = pool(2);
    let b = p.allocate(1).expect("fits")[0];
    assert_eq!(p.free_blocks(&[b, b]), Err(BlockPoolError::NotHeld(b)));
    assert_eq!(p.ref_count(b), Some(1));
    assert_eq!(p.free_blocks(&[7]), Err(BlockPoolError::InvalidBlock(7)));
    p.check_invariants().expect("consistent");
}

#[test]
fn cache_block_rejects_partial_blocks_and_unheld_blocks() {
    let mut p = pool(2);
    let h = hash_block(None, 0, &[1], &ExtraKeys::none());
    assert!(matches!(
        p.cache_block(0, h, BlockHash::none(), &[1]),
        Err(BlockPoolError::NotFull { .. })
    ));
    assert_eq!(
        p.cache_block(0, h, BlockHash::none(), &[1, 2]),
        Err(BlockPoolError::NotHeld(0))
    );
}

#[test]
fn reset_prefix_cache_needs_every_block_free() {
    let mut p = pool(2);
    let b = p.allocate(1).expect("fits")[0];
    let h = cache_first(&mut p, b, &[1, 2]);
    assert!(!p.reset_prefix_cache());
    assert_eq!(p.get_cached_block(&h, &BlockHash::none(), &[1, 2]), Some(b));
    p.free_blocks(&[b]).expect("held");
    assert!(p.reset_prefix_cache());
    assert_eq!(p.get_cached_block(&h, &BlockHash::none(), &[1, 2]), None);
    assert_eq!(p.num_cached_blocks(), 0);
}

#[test]
fn disabled_caching_never_hits() {
    let mut p = BlockPool::new(2, 2, false).expect("valid");
    let b = p.allocate(1).expect("fits")[0];
    let h = cache_first(&mut p, b, &[1, 2]);
    assert_eq!(p.get_cached_block(&h, &BlockHash::none(), &[1, 2]), None);
    assert_eq!(p.block_hash(b), None);
}

#[test]
fn zero_block_size_is_rejected() {
    assert_eq!(
        BlockPool::new(4, 0, true).err(),
        Some(BlockPoolError::ZeroBlockSize)
    );
}
