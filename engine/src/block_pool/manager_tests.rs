//! vLLM-style unit tests of `KvCacheManager` over a real `BlockPool`, block size 4.

use super::*;

const BS: usize = 4;

fn manager(num_blocks: usize) -> KvCacheManager {
    KvCacheManager::new(num_blocks, BS, true).expect("valid manager")
}

/// Registers `id`, attaches its prefix hit and schedules the whole prompt (prefill).
fn prefill(m: &mut KvCacheManager, id: RequestId, prompt: &[u32]) -> PrefixHit {
    m.add_request(id, prompt, ExtraKeys::none())
        .expect("new id");
    let hit = m.computed_blocks(id).expect("known");
    m.allocate_slots(id, prompt.len() - hit.num_tokens, &hit)
        .expect("fits");
    m.check_invariants().expect("consistent after prefill");
    hit
}

fn table(m: &KvCacheManager, id: RequestId) -> Vec<BlockId> {
    m.block_table(id).expect("known").to_vec()
}

#[test]
fn prefix_hit_reuses_the_full_blocks_of_a_finished_request() {
    let mut m = manager(8);
    let prompt: Vec<u32> = (0..10).collect();
    prefill(&mut m, 1, &prompt);
    let a = table(&m, 1);
    m.remove_request(1).expect("known");
    let hit = prefill(&mut m, 2, &prompt);
    assert_eq!(hit.blocks, a[..2].to_vec());
    assert_eq!(hit.num_tokens, 8);
    assert_eq!(&table(&m, 2)[..2], &a[..2]);
}

#[test]
fn partial_hit_stops_at_the_first_differing_block() {
    let mut m = manager(8);
    prefill(&mut m, 1, &[1, 2, 3, 4, 5, 6, 7, 8, 9]);
    let a = table(&m, 1);
    let hit = m.find_prefix_hit(&[1, 2, 3, 4, 5, 6, 0, 8, 9, 10], &ExtraKeys::none());
    assert_eq!(hit.blocks, vec![a[0]]);
    assert_eq!(hit.num_tokens, 4);
}

#[test]
fn hit_is_shared_and_counted_by_ref() {
    let mut m = manager(8);
    let prompt: Vec<u32> = (0..9).collect();
    prefill(&mut m, 1, &prompt);
    prefill(&mut m, 2, &prompt);
    let (a, b) = (table(&m, 1), table(&m, 2));
    assert_eq!(a[..2], b[..2]);
    assert_ne!(a[2], b[2], "the partial last block is never shared");
    assert_eq!(m.pool().ref_count(a[0]), Some(2));
    m.remove_request(1).expect("known");
    assert_eq!(m.pool().ref_count(a[0]), Some(1));
    m.check_invariants().expect("consistent");
}

#[test]
fn last_prompt_token_is_always_recomputed() {
    let mut m = manager(8);
    let prompt: Vec<u32> = (0..8).collect(); // exactly two full blocks
    prefill(&mut m, 1, &prompt);
    m.remove_request(1).expect("known");
    // Both blocks are cached, but the hit may cover at most 7 tokens: one whole block.
    let hit = prefill(&mut m, 2, &prompt);
    assert_eq!(hit.num_tokens, 4);
    let one_more: Vec<u32> = (0..9).collect();
    assert_eq!(
        m.find_prefix_hit(&one_more, &ExtraKeys::none()).num_tokens,
        8
    );
    assert_eq!(m.find_prefix_hit(&[0], &ExtraKeys::none()).num_tokens, 0);
}

#[test]
fn freed_blocks_stay_hittable_until_reallocated() {
    let mut m = manager(4);
    let prompt: Vec<u32> = (0..9).collect();
    prefill(&mut m, 1, &prompt);
    let a = table(&m, 1);
    m.remove_request(1).expect("known");
    // Freed, not reallocated: hit.
    assert_eq!(
        m.find_prefix_hit(&prompt, &ExtraKeys::none()).blocks,
        a[..2].to_vec()
    );
    // Two new blocks take the free head: a[2] (unhashed, freed to the head) and block 3.
    prefill(&mut m, 2, &[100, 101, 102, 103, 104]);
    assert_eq!(
        m.find_prefix_hit(&prompt, &ExtraKeys::none()).blocks,
        a[..2].to_vec()
    );
    // One more block must come from the cached ones: the chain's tail (a[1]) goes first.
    prefill(&mut m, 3, &[200, 201, 202]);
    assert_eq!(table(&m, 3), vec![a[1]]);
    assert_eq!(
        m.find_prefix_hit(&prompt, &ExtraKeys::none()).blocks,
        vec![a[0]]
    );
}

#[test]
fn eviction_order_is_lru_with_reverse_free() {
    let mut m = manager(6);
    prefill(&mut m, 1, &(0..13).collect::<Vec<u32>>()); // blocks 0,1,2 hashed, 3 partial
    prefill(&mut m, 2, &(50..54).collect::<Vec<u32>>()); // block 4 hashed
    m.remove_request(2).expect("known");
    m.remove_request(1).expect("known");
    // Head: the unhashed partial block, then the never-used block 5; then hashed blocks in
    // LRU order: request 2's block (freed first), request 1's chain tail before its head.
    assert_eq!(m.pool().free_order(), vec![3, 5, 4, 2, 1, 0]);
}

#[test]
fn collision_guard_rejects_a_block_with_equal_hash_but_other_tokens() {
    let mut m = manager(4);
    let victim = [9u32, 9, 9, 9, 9];
    let forged_hash = hash_block(None, 0, &victim[..4], &ExtraKeys::none());
    // A block that claims the victim's hash but holds other tokens (what a collision looks like).
    let b = m.pool_mut().allocate(1).expect("fits")[0];
    m.pool_mut()
        .cache_block(b, forged_hash, BlockHash::none(), &[1, 2, 3, 4])
        .expect("held");
    assert_eq!(
        m.find_prefix_hit(&victim, &ExtraKeys::none()),
        PrefixHit::none()
    );
}

#[test]
fn allocate_failure_leaves_state_untouched() {
    let mut m = manager(4);
    let prompt: Vec<u32> = (0..9).collect();
    prefill(&mut m, 1, &prompt);
    m.remove_request(1).expect("known");
    prefill(&mut m, 2, &[70, 71, 72]); // takes one free block
                                       // Request 3 hits 2 free blocks and needs 2 more for 16 tokens: 4 free blocks needed, 3 free.
    let long: Vec<u32> = (0..16).collect();
    m.add_request(3, &long, ExtraKeys::none()).expect("new id");
    let hit = m.computed_blocks(3).expect("known");
    assert_eq!(hit.num_tokens, 8);
    let before = (
        m.pool().free_order(),
        m.pool().num_cached_blocks(),
        table(&m, 2),
    );
    let err = m.allocate_slots(3, 8, &hit).expect_err("must not fit");
    assert_eq!(
        err,
        KvCacheError::NotEnoughBlocks(NotEnoughBlocks { needed: 4, free: 3 })
    );
    assert_eq!(
        (
            m.pool().free_order(),
            m.pool().num_cached_blocks(),
            table(&m, 2)
        ),
        before
    );
    assert_eq!(table(&m, 3), Vec::<BlockId>::new());
    assert_eq!(m.num_slotted_tokens(3), Some(0));
    m.check_invariants().expect("consistent");
    // A smaller chunk fits: hit blocks come back out of the free queue.
    m.allocate_slots(3, 4, &hit).expect("fits");
    assert_eq!(m.num_free_blocks(), 0);
}

#[test]
fn decode_caches_a_block_once_it_is_full() {
    let mut m = manager(4);
    prefill(&mut m, 1, &[5, 6, 7]);
    assert_eq!(m.pool().num_cached_blocks(), 0);
    m.append_tokens(1, &[8]).expect("known");
    assert_eq!(m.allocate_slots(1, 1, &PrefixHit::none()), Ok(vec![]));
    assert_eq!(m.pool().num_cached_blocks(), 1);
    m.append_tokens(1, &[9]).expect("known");
    assert_eq!(
        m.allocate_slots(1, 1, &PrefixHit::none()).map(|v| v.len()),
        Ok(1)
    );
    let hit = m.find_prefix_hit(&[5, 6, 7, 8, 1], &ExtraKeys::none());
    assert_eq!(hit.blocks, vec![table(&m, 1)[0]]);
}

#[test]
fn slots_are_never_given_to_unknown_tokens() {
    let mut m = manager(4);
    prefill(&mut m, 1, &[1, 2, 3]);
    let err = m
        .allocate_slots(1, 1, &PrefixHit::none())
        .expect_err("no 4th token yet");
    assert_eq!(
        err,
        KvCacheError::BeyondKnownTokens {
            id: 1,
            wanted: 4,
            known: 3
        }
    );
}

#[test]
fn chunked_prefill_caches_only_slotted_full_blocks() {
    let mut m = manager(4);
    let prompt: Vec<u32> = (0..12).collect();
    m.add_request(1, &prompt, ExtraKeys::none())
        .expect("new id");
    m.allocate_slots(1, 6, &PrefixHit::none()).expect("fits");
    assert_eq!(m.pool().num_cached_blocks(), 1);
    m.allocate_slots(1, 6, &PrefixHit::none()).expect("fits");
    assert_eq!(m.pool().num_cached_blocks(), 3);
    assert_eq!(table(&m, 1).len(), 3);
    m.check_invariants().expect("consistent");
}

#[test]
fn preempted_request_keeps_hashes_and_hits_its_own_blocks_on_resume() {
    let mut m = manager(8);
    let prompt: Vec<u32> = (0..10).collect();
    prefill(&mut m, 1, &prompt);
    m.append_tokens(1, &[42]).expect("known");
    let before = table(&m, 1);
    let hashes = m.block_hashes(1).expect("known").to_vec();
    m.free(1).expect("known");
    assert_eq!(
        m.block_hashes(1).expect("still registered"),
        hashes.as_slice()
    );
    let hit = m.computed_blocks(1).expect("known");
    assert_eq!(hit.blocks, before[..2].to_vec());
    m.allocate_slots(1, 11 - hit.num_tokens, &hit)
        .expect("fits");
    m.check_invariants().expect("consistent");
}

#[test]
fn running_request_gets_no_hit_and_cannot_take_one() {
    let mut m = manager(8);
    let prompt: Vec<u32> = (0..9).collect();
    prefill(&mut m, 1, &prompt);
    prefill(&mut m, 2, &prompt);
    assert_eq!(m.computed_blocks(2), Ok(PrefixHit::none()));
    let hit = m.find_prefix_hit(&prompt, &ExtraKeys::none());
    assert_eq!(
        m.allocate_slots(2, 0, &hit),
        Err(KvCacheError::HitOnRunningRequest(2))
    );
}

#[test]
fn hit_evicted_between_lookup_and_allocation_is_reported_stale() {
    let mut m = manager(3);
    let prompt: Vec<u32> = (0..5).collect();
    prefill(&mut m, 1, &prompt);
    m.remove_request(1).expect("known");
    m.add_request(2, &prompt, ExtraKeys::none())
        .expect("new id");
    let hit = m.computed_blocks(2).expect("known");
    assert_eq!(hit.num_tokens, 4);
    // Another request takes every free block, including the hit one.
    prefill(&mut m, 3, &(20..32).collect::<Vec<u32>>());
    assert_eq!(m.allocate_slots(2, 1, &hit), Err(KvCacheError::StaleHit(2)));
    m.check_invariants().expect("consistent");
}

#[test]
fn cache_salt_isolates_requests() {
    let mut m = manager(8);
    let prompt: Vec<u32> = (0..9).collect();
    m.add_request(1, &prompt, ExtraKeys::with_cache_salt("a"))
        .expect("new id");
    m.allocate_slots(1, 9, &PrefixHit::none()).expect("fits");
    assert_eq!(
        m.find_prefix_hit(&prompt, &ExtraKeys::with_cache_salt("b"))
            .num_tokens,
        0
    );
    assert_eq!(m.find_prefix_hit(&prompt, &ExtraKeys::none()).num_tokens, 0);
    assert_eq!(
        m.find_prefix_hit(&prompt, &ExtraKeys::with_cache_salt("a"))
            .num_tokens,
        8
    );
}

#[test]
fn disabled_caching_for_an_evicting_request_stops_hits_on_its_blocks() {
    let mut m = manager(8);
    let prompt: Vec<u32> = (0..9).collect();
    prefill(&mut m, 1, &prompt);
    m.disable_caching(1).expect("known");
    assert_eq!(m.find_prefix_hit(&prompt, &ExtraKeys::none()).num_tokens, 0);
    m.append_tokens(1, &[1, 2, 3]).expect("known");
    m.allocate_slots(1, 3, &PrefixHit::none()).expect("fits");
    assert_eq!(m.pool().num_cached_blocks(), 0);
    m.check_invariants().expect("consistent");
}

#[test]
fn disabled_caching_keeps_blocks_shared_with_other_requests_hittable() {
    let mut m = manager(8);
    let prompt: Vec<u32> = (0..9).collect();
    prefill(&mut m, 1, &prompt);
    prefill(&mut m, 2, &prompt);
    m.disable_caching(2).expect("known");
    assert_eq!(m.find_prefix_hit(&prompt, &ExtraKeys::none()).num_tokens, 8);
}

#[test]
fn unknown_and_duplicate_requests_are_errors() {
    let mut m = manager(2);
    assert_eq!(m.free(5), Err(KvCacheError::UnknownRequest(5)));
    assert_eq!(
        m.append_tokens(5, &[1]),
        Err(KvCacheError::UnknownRequest(5))
    );
    m.add_request(1, &[1], ExtraKeys::none()).expect("new id");
    assert_eq!(
        m.add_request(1, &[1], ExtraKeys::none()),
        Err(KvCacheError::DuplicateRequest(1))
    );
}

#[test]
fn disabled_prefix_caching_never_hits() {
    let mut m = KvCacheManager::new(8, BS, false).expect("valid");
    let prompt: Vec<u32> = (0..9).collect();
    prefill(&mut m, 1, &prompt);
    m.remove_request(1).expect("known");
    assert_eq!(prefill(&mut m, 2, &prompt), PrefixHit::none());
}

#[test]
fn a_capped_request_copies_its_hit_never_publishes_and_frees_past_its_budget() {
    let mut m = manager(12);
    let prompt: Vec<u32> = (0..10).collect();
    prefill(&mut m, 1, &prompt);
    let shared = table(&m, 1);
    // Request 2 has a cap of 12 tokens: its 10-token prompt fits, so it may hit the cache.
    m.add_request(2, &prompt, ExtraKeys::none()).expect("new id");
    m.set_token_cap(2, 12).expect("holds no blocks");
    let hit = m.computed_blocks(2).expect("known");
    assert_eq!(hit.blocks, shared[..2].to_vec());
    m.allocate_slots(2, 0, &hit).expect("fits");
    let private = m.make_private_copies(2).expect("two free blocks");
    assert_eq!(private.copies.iter().map(|c| c[0]).collect::<Vec<_>>(), shared[..2].to_vec());
    let copies: Vec<BlockId> = private.copies.iter().map(|c| c[1]).collect();
    m.finish_private_copies(private).expect("release");
    assert_eq!(table(&m, 2), copies, "the table names the copies");
    assert!(copies.iter().all(|b| !shared.contains(b)));
    assert_eq!(m.pool().ref_count(shared[0]), Some(1), "only request 1 holds the cached block again");
    m.check_invariants().expect("consistent");
    // Its own full blocks are never published: a third request with the same longer prompt
    // hits only request 1's blocks.
    m.allocate_slots(2, 2, &PrefixHit::none()).expect("fits");
    m.append_tokens(2, &[90, 91, 92, 93, 94, 95]).expect("known");
    m.allocate_slots(2, 4, &PrefixHit::none()).expect("fits");
    assert_eq!(m.num_slotted_tokens(2), Some(14));
    // After the step the evictor kept 12 slots: blocks past 3 go back to the pool.
    let free_before = m.num_free_blocks();
    assert_eq!(m.trim(2), Ok(2));
    assert_eq!(table(&m, 2).len(), 3);
    assert_eq!(m.num_free_blocks(), free_before + 1);
    let longer: Vec<u32> = (0..10).chain([90, 91, 92, 93, 94]).collect();
    assert_eq!(m.find_prefix_hit(&longer, &ExtraKeys::none()).blocks, shared[..2].to_vec());
    m.check_invariants().expect("consistent");
}
