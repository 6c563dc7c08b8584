//! The paged-KV bookkeeping of `kvault_engine::block_pool` (no tensors): what admitting,
//! finishing and prefix-matching a request costs the engine thread.
//!
//! - `alloc_free_2k`: register a 2048-token request, look up its prefix (a miss), allocate its
//!   128 blocks (block 16) and remove it; without prefix caching (pure pool work) and with it
//!   (every iteration a new prompt, so SHA-256 chain hashing of 128 blocks is included).
//! - `prefix_hit_2k`: a 2049-token prompt whose 128 full blocks are all cached and hit (the
//!   last token is always recomputed, here in a partial block): `find_prefix_hit` (hash + lookup, what a router would call),
//!   `peek_computed_blocks` (lookup with stored hashes, what each scheduling step calls) and a
//!   full admit-with-hit-then-free cycle.
//! - `free_list_churn`: `BlockPool` alone, 128 live allocations of 1–64 blocks; each iteration
//!   frees one (in reverse, as requests free) and allocates a replacement of another size.
//!
//! Throughput is in blocks per iteration. Run:
//! `cargo bench -p kvault-benches --bench block_pool -- --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use kvault_engine::block_pool::{BlockId, BlockPool, ExtraKeys, KvCacheManager, DEFAULT_BLOCK_SIZE};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const PROMPT_TOKENS: usize = 2048;
const BLOCKS: usize = PROMPT_TOKENS / DEFAULT_BLOCK_SIZE;
/// Room for a few requests, so the pool's queues have realistic lengths.
const POOL_BLOCKS: usize = 8192;

fn prompt(len: usize, seed: u32) -> Vec<u32> {
    (0..len as u32).map(|i| i.wrapping_mul(2_654_435_761).wrapping_add(seed) % 49_152).collect()
}

fn manager(caching: bool) -> KvCacheManager {
    KvCacheManager::new(POOL_BLOCKS, DEFAULT_BLOCK_SIZE, caching).unwrap_or_else(|e| panic!("manager: {e}"))
}

/// Registers, looks up, allocates and removes one request; returns the blocks it hit.
fn admit_and_finish(m: &mut KvCacheManager, id: u64, tokens: &[u32]) -> usize {
    m.add_request(id, tokens, ExtraKeys::none()).unwrap_or_else(|e| panic!("add_request: {e}"));
    let hit = m.computed_blocks(id).unwrap_or_else(|e| panic!("get_computed_blocks: {e}"));
    m.allocate_slots(id, tokens.len() - hit.num_tokens, &hit).unwrap_or_else(|e| panic!("allocate_slots: {e}"));
    m.remove_request(id).unwrap_or_else(|e| panic!("remove_request: {e}"));
    hit.blocks.len()
}

fn alloc_free(c: &mut Criterion) {
    let mut group = c.benchmark_group("block_pool/alloc_free_2k");
    group.throughput(Throughput::Elements(BLOCKS as u64));
    for caching in [false, true] {
        let mut m = manager(caching);
        let mut tokens = prompt(PROMPT_TOKENS, 0);
        let mut id = 0u64;
        let name = if caching { "prefix_cache_miss" } else { "no_prefix_cache" };
        group.bench_function(name, |b| {
            b.iter(|| {
                id += 1;
                // A new first token changes every chain hash: each prompt is a true miss.
                tokens[0] = id as u32;
                black_box(admit_and_finish(&mut m, id, &tokens))
            })
        });
        m.check_invariants().unwrap_or_else(|e| panic!("pool inconsistent after the bench: {e}"));
    }
    group.finish();
}

fn prefix_hit(c: &mut Criterion) {
    let mut group = c.benchmark_group("block_pool/prefix_hit_2k");
    // One token past 2K: all 128 full blocks can hit and the recomputed last token sits in a
    // partial block that is never cached. (With exactly 2048 tokens the last full block would be
    // recomputed and cached again on every admission, piling up duplicate copies of one hash.)
    let tokens = prompt(PROMPT_TOKENS + 1, 1);
    let mut m = manager(true);
    admit_and_finish(&mut m, 1, &tokens); // its blocks stay cached in the free queue
    let want = BLOCKS;
    let found = m.find_prefix_hit(&tokens, &ExtraKeys::none()).blocks.len();
    assert_eq!(found, want, "setup: every block but the last must hit");
    group.throughput(Throughput::Elements(want as u64));

    group.bench_function("find_prefix_hit", |b| b.iter(|| black_box(m.find_prefix_hit(black_box(&tokens), &ExtraKeys::none()))));

    m.add_request(2, &tokens, ExtraKeys::none()).unwrap_or_else(|e| panic!("add_request: {e}"));
    group.bench_function("peek_computed_blocks", |b| {
        b.iter(|| black_box(m.computed_blocks(black_box(2)).unwrap_or_else(|e| panic!("peek: {e}"))))
    });
    m.remove_request(2).unwrap_or_else(|e| panic!("remove_request: {e}"));

    let mut id = 10u64;
    group.bench_function("admit_with_hit_then_free", |b| {
        b.iter(|| {
            id += 1;
            let hit = admit_and_finish(&mut m, id, &tokens);
            assert_eq!(hit, want, "a hit was lost");
            hit
        })
    });
    group.finish();
}

fn churn(c: &mut Criterion) {
    const LIVE: usize = 128;
    const MAX_BLOCKS: usize = 64;
    let mut group = c.benchmark_group("block_pool");
    // Worst case every live allocation holds MAX_BLOCKS, plus the one being replaced.
    let mut pool = BlockPool::new((LIVE + 1) * MAX_BLOCKS, DEFAULT_BLOCK_SIZE, true)
        .unwrap_or_else(|e| panic!("pool: {e}"));
    let mut rng = StdRng::seed_from_u64(5);
    let mut live: Vec<Vec<BlockId>> = (0..LIVE)
        .map(|_| pool.allocate(rng.random_range(1..=MAX_BLOCKS)).unwrap_or_else(|e| panic!("setup: {e}")))
        .collect();
    // A fixed script of (victim, replacement size), so every run does the same work.
    let script: Vec<(usize, usize)> =
        (0..4096).map(|_| (rng.random_range(0..LIVE), rng.random_range(1..=MAX_BLOCKS))).collect();
    let mean_moved = script.iter().map(|&(_, n)| n).sum::<usize>() as f64 / script.len() as f64;
    group.throughput(Throughput::Elements((2.0 * mean_moved).round() as u64));
    let mut step = 0usize;
    group.bench_function(BenchmarkId::new("free_list_churn", format!("{LIVE}_live")), |b| {
        b.iter(|| {
            let (victim, size) = script[step % script.len()];
            step += 1;
            let mut old = std::mem::take(&mut live[victim]);
            old.reverse();
            pool.free_blocks(&old).unwrap_or_else(|e| panic!("free_blocks: {e}"));
            live[victim] = pool.allocate(size).unwrap_or_else(|e| panic!("allocate: {e}"));
        })
    });
    pool.check_invariants().unwrap_or_else(|e| panic!("pool inconsistent after churn: {e}"));
    group.finish();
}

criterion_group!(benches, alloc_free, prefix_hit, churn);
criterion_main!(benches);
