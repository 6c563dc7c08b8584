//! Property test: a budgeted (capped) request's footprint is the same number in the block
//! manager, in the scheduler's decisions and in `footprint` (which the simulator uses): random
//! capped and uncapped requests run step by step, the real scheduler deciding from views built
//! off the manager as the engine builds them, the manager allocating and trimming as the engine
//! does after each forward.

use kvault_scheduler::{footprint, Budgets, PolicyConfig, PolicyKind, PoolView, RequestView, Scheduler, StepInput};
use rand::{rngs::StdRng, Rng, SeedableRng};

use super::kv_cache_manager::{KvCacheManager, PrefixHit};
use super::ExtraKeys;

struct Req {
    id: u64,
    prompt: usize,
    tokens: usize,
    computed: usize,
    cap: Option<usize>,
}

#[test]
fn capped_footprint_agrees_between_block_manager_scheduler_and_footprint() {
    const BS: usize = 16;
    let mut rng = StdRng::seed_from_u64(17);
    let (mut chunks, mut evictions, mut preemptions) = (0usize, 0usize, 0usize);
    for trial in 0..60 {
        let total_blocks = rng.random_range(20..80);
        let mut kv = KvCacheManager::new(total_blocks, BS, false).unwrap();
        let mut sched = Scheduler::from_config(&PolicyConfig { kind: PolicyKind::ALL[trial % 3], ..Default::default() }).unwrap();
        let mut waiting: Vec<Req> = (0..rng.random_range(1..8))
            .map(|i| {
                let prompt = rng.random_range(1..300);
                let cap = rng.random_bool(0.7).then(|| rng.random_range(8..=(total_blocks * BS / 2).min(200)));
                Req { id: i, prompt, tokens: prompt, computed: 0, cap }
            })
            .collect();
        for r in &waiting {
            kv.add_request(r.id, &vec![7; r.prompt], ExtraKeys::none()).unwrap();
            if let Some(c) = r.cap {
                kv.set_token_cap(r.id, c).unwrap();
            }
        }
        let mut running: Vec<Req> = Vec::new();
        for _step in 0..400 {
            if running.is_empty() && waiting.is_empty() {
                break;
            }
            let view = |r: &Req| RequestView {
                id: r.id,
                arrival_seq: r.id,
                prompt_len: r.prompt,
                num_tokens: r.tokens,
                num_computed_tokens: r.computed,
                num_output_tokens: r.tokens - r.prompt,
                max_tokens: 40,
                blocks_held: kv.block_table(r.id).unwrap().len(),
                exclusive_blocks: kv.block_table(r.id).unwrap().len(),
                kv_token_cap: r.cap,
                ..Default::default()
            };
            let rv: Vec<RequestView> = running.iter().map(view).collect();
            let wv: Vec<RequestView> = waiting.iter().map(view).collect();
            let input = StepInput {
                running: &rv,
                waiting: &wv,
                pool: PoolView { total_blocks, free_blocks: kv.num_free_blocks(), block_size: BS },
                budgets: Budgets { max_num_batched_tokens: 256, max_num_seqs: 8, max_model_len: 100_000 },
            };
            let d = sched.schedule(&input).unwrap();
            preemptions += d.preempted.len();
            chunks += d.scheduled.len();
            for id in &d.preempted {
                kv.free(*id).unwrap();
                let pos = running.iter().position(|r| r.id == *id).unwrap();
                let mut r = running.remove(pos);
                r.computed = 0;
                waiting.insert(0, r);
            }
            for c in d.scheduled.iter().filter(|c| c.admitted) {
                let pos = waiting.iter().position(|r| r.id == c.id).unwrap();
                running.push(waiting.remove(pos));
            }
            for c in &d.scheduled {
                let r = running.iter_mut().find(|r| r.id == c.id).unwrap();
                assert!(c.num_new_tokens <= footprint::max_chunk(r.cap));
                let fresh = kv.allocate_slots(c.id, c.num_new_tokens, &PrefixHit::none()).unwrap();
                assert_eq!(fresh.len(), c.new_blocks, "the scheduler's block count is the manager's");
                let held = kv.block_table(c.id).unwrap().len();
                assert_eq!(held, footprint::step_blocks(r.computed, c.num_new_tokens, r.cap, BS));
                r.computed += c.num_new_tokens;
            }
            // After the forward: trim (the evictor already kept `cap` per head), sample.
            let mut done = Vec::new();
            for c in &d.scheduled {
                let r = running.iter_mut().find(|r| r.id == c.id).unwrap();
                let evicted = kv.trim(c.id).unwrap();
                let kept = kv.num_slotted_tokens(c.id).unwrap();
                assert_eq!(kept, footprint::resting_tokens(r.computed, r.cap));
                assert_eq!(kv.block_table(c.id).unwrap().len(), footprint::resting_blocks(r.computed, r.cap, BS));
                assert!(evicted == 0 || r.cap.is_some());
                evictions += evicted;
                if let Some(cap) = r.cap {
                    assert!(kv.block_table(c.id).unwrap().len() <= footprint::peak_blocks(cap, BS));
                }
                if r.computed == r.tokens {
                    r.tokens += 1;
                    kv.append_tokens(c.id, &[7]).unwrap();
                    if r.tokens - r.prompt >= 40 {
                        done.push(c.id);
                    }
                }
            }
            for id in done {
                kv.remove_request(id).unwrap();
                running.retain(|r| r.id != id);
            }
            kv.check_invariants().unwrap();
        }
    }
    assert!(chunks > 1000 && evictions > 1000 && preemptions > 0, "{chunks} chunks, {evictions} evicted, {preemptions} preempted");
}
