//! `kvault_scheduler::Scheduler::schedule`: one step's decision with 64 running and 256 waiting
//! requests, for each admission policy (aggressive, conservative, past-future).
//!
//! The view: 64 running requests in decode (prompts of 256–1536 tokens, 1–400 outputs so far,
//! `max_tokens` 512); 256 waiting ones (prompts of 64–1024 tokens, every fourth with a
//! 256-token prefix hit); blocks of 16 tokens; budgets of 8192 batched tokens, 256 sequences and
//! a 4096-token model length. Two pools: `roomy_pool` (8192 blocks: the token budget is what
//! stops admission, for every policy) and `tight_pool` (only 768 blocks free beyond the running
//! set: the policy's memory test decides). Past-future has seen 40 finished requests (outputs of
//! 50–450 tokens), as a server in steady state has. The decision never changes the view, so every
//! iteration schedules the same step; what each policy decides is printed before its bench so
//! the times can be read against the work done.
//!
//! Run: `cargo bench -p kvault-benches --bench scheduler_admission -- --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use kvault_scheduler::{
    Budgets, FinishKind, PolicyConfig, PolicyKind, PoolView, RequestView, Scheduler, StepDecision, StepInput,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const BLOCK: usize = 16;
const ROOMY_BLOCKS: usize = 8192;
/// Free blocks beyond the running set in the tight pool: room for the running requests to grow
/// a little and for a few admissions, so the policies disagree.
const TIGHT_FREE_BLOCKS: usize = 768;
const RUNNING: usize = 64;
const WAITING: usize = 256;
const MAX_TOKENS: usize = 512;

fn running(rng: &mut StdRng) -> Vec<RequestView> {
    (0..RUNNING as u64)
        .map(|id| {
            let prompt: usize = rng.random_range(256..=1536);
            let output: usize = rng.random_range(1..=400);
            // Decoding: everything but the last sampled token is in the cache.
            let computed = prompt + output - 1;
            let held = computed.div_ceil(BLOCK);
            RequestView {
                id,
                arrival_seq: id,
                prompt_len: prompt,
                num_tokens: prompt + output,
                num_computed_tokens: computed,
                num_output_tokens: output,
                max_tokens: MAX_TOKENS.max(output + 1),
                blocks_held: held,
                exclusive_blocks: held,
                ..RequestView::default()
            }
        })
        .collect()
}

fn waiting(rng: &mut StdRng) -> Vec<RequestView> {
    (0..WAITING as u64)
        .map(|i| {
            let id = RUNNING as u64 + i;
            let prompt: usize = rng.random_range(64..=1024);
            let hit = if i % 4 == 0 { 256usize.min((prompt - 1) / BLOCK * BLOCK) } else { 0 };
            RequestView {
                id,
                arrival_seq: id,
                prompt_len: prompt,
                num_tokens: prompt,
                max_tokens: MAX_TOKENS,
                prefix_hit_tokens: hit,
                prefix_hit_free_blocks: hit / BLOCK / 2,
                ..RequestView::default()
            }
        })
        .collect()
}

fn scheduler(kind: PolicyKind) -> Scheduler {
    let cfg = PolicyConfig { kind, ..PolicyConfig::default() };
    let mut s = Scheduler::from_config(&cfg).unwrap_or_else(|e| panic!("{kind}: {e}"));
    let mut rng = StdRng::seed_from_u64(9);
    for _ in 0..40 {
        s.on_request_finished(rng.random_range(50..=450), FinishKind::Stop);
    }
    s
}

fn bench(c: &mut Criterion) {
    let mut rng = StdRng::seed_from_u64(1);
    let (run, wait) = (running(&mut rng), waiting(&mut rng));
    let used: usize = run.iter().map(|r| r.blocks_held).sum();
    assert!(used < ROOMY_BLOCKS, "setup: the running set ({used} blocks) must fit the pool");
    for (pool_name, total_blocks) in [("roomy_pool", ROOMY_BLOCKS), ("tight_pool", used + TIGHT_FREE_BLOCKS)] {
        let input = StepInput {
            running: &run,
            waiting: &wait,
            pool: PoolView { total_blocks, free_blocks: total_blocks - used, block_size: BLOCK },
            budgets: Budgets { max_num_batched_tokens: 8192, max_num_seqs: 256, max_model_len: 4096 },
        };
        let mut group = c.benchmark_group(format!("scheduler_admission/64_running_256_waiting/{pool_name}"));
        for kind in PolicyKind::ALL {
            let mut s = scheduler(kind);
            let first: StepDecision = s.schedule(&input).unwrap_or_else(|e| panic!("{kind}: {e}"));
            let admitted = first.scheduled.iter().filter(|c| c.admitted).count();
            println!(
                "{pool_name} ({total_blocks} blocks, {} free) {kind}: {admitted} admitted, {} preempted, {} tokens, {} blocks taken",
                total_blocks - used,
                first.preempted.len(),
                first.total_new_tokens(),
                first.free_blocks_taken()
            );
            group.bench_function(kind.as_str(), |b| {
                b.iter(|| black_box(s.schedule(black_box(&input)).unwrap_or_else(|e| panic!("{kind}: {e}"))))
            });
        }
        group.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
