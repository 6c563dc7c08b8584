//! KV budgets end to end on real models: a request with a budget at least its length is
//! bit-identical to `full` (alone and in a batch mixing every policy), a budget lets a prompt the
//! cache cannot hold be served within a block bound that never grows, and evicting requests
//! never disturb `full` ones sharing their prefix.

mod support;

use kvault_engine::engine::EngineConfig;
use kvault_engine::handle::{EngineHandle, RequestStream};
use kvault_engine::kv_policy::{KvPolicy, Pooling};
use kvault_engine::request::{NewRequest, SubmitError};
use kvault_engine::sampler::SamplingParams;
use kvault_models::model::LoadedModel;
use kvault_scheduler::footprint;
use support::*;

/// Every budgeted policy at `budget`.
fn policies(budget: usize) -> [KvPolicy; 3] {
    [
        KvPolicy::Streaming { budget, sink_tokens: 4.min(budget - 1) },
        KvPolicy::H2o { budget, recent_window: budget / 2 },
        KvPolicy::SnapKv { budget, window: 32.min(budget), kernel: 5, pooling: Pooling::Avg },
    ]
}

fn submit(engine: &EngineHandle, prompt: &[u32], params: &SamplingParams, kv: KvPolicy) -> RequestStream {
    let mut req = NewRequest::new(prompt.to_vec(), params.clone());
    req.kv = kv;
    engine.submit(req).unwrap()
}

/// Runs `reqs` all at once with their policies.
fn run_with(engine: &EngineHandle, reqs: &[(Vec<u32>, SamplingParams, KvPolicy)]) -> Vec<Collected> {
    let streams: Vec<_> = reqs.iter().map(|(p, sp, kv)| submit(engine, p, sp, *kv)).collect();
    streams.into_iter().map(collect).collect()
}

/// Budget = exactly the positions the request will compute (prompt + max_tokens − 1): it goes
/// through the budget machinery (it could outgrow the budget, so it is capped and evicts at
/// the boundary) yet never holds more than its budget, so nothing is ever evicted.
fn budget_equal_to_length_is_bit_identical_to_full(model: fn() -> LoadedModel, n: usize, max_prompt: usize, max_tokens: usize) {
    let m = model();
    let reqs: Vec<(Vec<u32>, SamplingParams)> = prompts(&m, n, max_prompt)
        .into_iter()
        .map(|p| (p, SamplingParams { logprobs: Some(3), ..greedy(max_tokens) }))
        .collect();
    let alone = run_alone(model, &reqs);
    // One engine, one batch: full requests next to every policy, each budgeted request with
    // the budget of its own length.
    let mut mixed = Vec::new();
    for (i, (p, sp)) in reqs.iter().enumerate() {
        let length = p.len() + max_tokens - 1;
        let kv = if i % 4 == 0 { KvPolicy::Full } else { policies(length)[i % 4 - 1] };
        mixed.push((p.clone(), sp.clone(), kv));
    }
    let engine = EngineHandle::start(m, config(2048)).unwrap();
    let got = run_with(&engine, &mixed);
    for (i, (g, a)) in got.iter().zip(&alone).enumerate() {
        let policy = mixed[i].2.describe();
        assert_eq!(g.ids, a.ids, "request {i} ({policy}): tokens differ from full alone");
        assert_eq!(g.text, a.text, "request {i} ({policy})");
        assert_eq!(g.logprobs, a.logprobs, "request {i} ({policy}): logprobs must be bit-identical");
        assert_eq!(g.done.kv.tokens_evicted, 0, "request {i} ({policy})");
    }
    let stats = engine.stats();
    // Every policy this batch mixed ran (trimkv needs gates, lychee head roles: tests/trimkv.rs
    // and tests/lychee.rs cover them).
    use kvault_engine::kv_policy::KvPolicyKind::{Lychee, TrimKv};
    let mut used = stats.kv_policies.iter().filter(|c| !matches!(c.policy, TrimKv | Lychee));
    assert!(used.all(|c| c.requests > 0), "{:?}", stats.kv_policies);
    engine.check_idle().unwrap();
}

#[test]
fn budget_at_least_the_length_is_bit_identical_to_full_stories260k() {
    budget_equal_to_length_is_bit_identical_to_full(stories, 32, 200, 40);
}

#[test]
fn budget_at_least_the_length_is_bit_identical_to_full_smollm2() {
    budget_equal_to_length_is_bit_identical_to_full(smollm, 8, 150, 24);
}

#[test]
fn a_budget_serves_a_prompt_the_cache_cannot_hold_within_a_fixed_block_bound() {
    let model = smollm();
    let text = std::fs::read_to_string(shared_dir().join("data/texts/alice_in_wonderland.txt")).unwrap();
    let prompt: Vec<u32> = model.tokenizer.encode(&text[5000..40000], false).unwrap()[..1800].to_vec();
    let engine = EngineHandle::start(model, config(40)).unwrap();
    let bs = engine.info().block_size;
    let params = greedy(16);
    // 40 blocks of 16 hold 640 tokens: the whole prompt cannot be kept.
    let err = engine.submit(NewRequest::new(prompt.clone(), params.clone())).unwrap_err();
    assert!(matches!(err, SubmitError::TooLong { .. }), "{err}");
    for kv in policies(256) {
        let got = run_with(&engine, &[(prompt.clone(), params.clone(), kv)]).pop().unwrap();
        assert_eq!(got.ids.len(), 16, "{}", kv.describe());
        let report = got.done.kv;
        assert_eq!(report.policy, kv);
        assert!(report.peak_blocks_held <= footprint::peak_blocks(256, bs), "{}: {report:?}", kv.describe());
        assert!(report.peak_tokens_held <= 2 * 256, "{}: {report:?}", kv.describe());
        // Every position past the budget was evicted exactly once (the last sampled token is
        // never fed back): 1800 + 16 − 1 computed, 256 kept.
        assert_eq!(report.tokens_evicted, 1800 + 16 - 1 - 256, "{}: {report:?}", kv.describe());
        engine.check_idle().unwrap();
    }
    let stats = engine.stats();
    let evicted: u64 = stats.kv_policies.iter().map(|c| c.evicted_tokens).sum();
    assert_eq!(evicted, 3 * (1800 + 16 - 1 - 256));
    // A budget whose budget + chunk cannot fit the cache is refused, naming the field.
    let mut req = NewRequest::new(prompt.clone(), params);
    req.kv = policies(400)[1];
    assert_eq!(engine.submit(req).unwrap_err().param(), Some("kv_budget"));
}

#[test]
fn evicting_requests_never_change_a_full_request_sharing_their_prefix() {
    let model = stories();
    let prompt = prompts(&model, 40, 300).pop().unwrap();
    assert!(prompt.len() > 150, "the shared prefix must span several blocks and exceed the budget");
    let params = greedy(48);
    let alone = run_alone(stories, &[(prompt.clone(), params.clone())]).pop().unwrap();
    let engine = EngineHandle::start(stories(), config(512)).unwrap();
    // Together in one batch, then full first (its blocks cached) and the evicting one after it
    // (a hit would hand it blocks it must not rewrite), then full again (it hits the cache).
    let h2o = KvPolicy::H2o { budget: 64, recent_window: 32 };
    let together = run_with(&engine, &[(prompt.clone(), params.clone(), h2o), (prompt.clone(), params.clone(), KvPolicy::Full)]);
    assert_eq!(together[1].ids, alone.ids);
    assert!(together[0].done.kv.tokens_evicted > 0);
    run_with(&engine, &[(prompt.clone(), params.clone(), h2o)]);
    let again = run_with(&engine, &[(prompt.clone(), params.clone(), KvPolicy::Full)]).pop().unwrap();
    assert!(again.done.usage.cached_tokens > 0, "the full request's blocks stay cached");
    assert_eq!(again.ids, alone.ids);
    engine.check_idle().unwrap();
}

#[test]
fn preempted_budgeted_requests_finish_and_free_everything() {
    let model = stories();
    // 24 blocks of 16: eight requests of ~200 tokens with budget 48 (peak 6 blocks each) must
    // take turns, and some get preempted mid-generation.
    let reqs: Vec<_> = prompts(&model, 8, 200)
        .into_iter()
        .enumerate()
        .map(|(i, p)| (p, greedy(60), policies(48)[i % 3]))
        .collect();
    let cfg = EngineConfig { policy: kvault_scheduler::PolicyKind::Aggressive, ..config(24) };
    let engine = EngineHandle::start(stories(), cfg).unwrap();
    let got = run_with(&engine, &reqs);
    for (g, r) in got.iter().zip(&reqs) {
        assert_eq!(g.ids.len(), 60);
        assert!(g.done.kv.peak_blocks_held <= footprint::peak_blocks(48, 16), "{:?} {:?}", r.2, g.done.kv);
    }
    assert!(engine.stats().preemptions > 0, "the pool was meant to force preemption");
    engine.check_idle().unwrap();
}

#[test]
fn a_prompt_that_fits_the_budget_still_hits_the_prefix_cache_through_private_copies() {
    let model = stories();
    let prompt = prompts(&model, 8, 120).into_iter().find(|p| p.len() > 60).unwrap();
    let params = greedy(80);
    let budget = prompt.len() + 8; // the prompt fits; generation will evict
    let streaming = KvPolicy::Streaming { budget, sink_tokens: 4 };
    // What the streaming request produces without any cache.
    let cold = EngineHandle::start(stories(), EngineConfig { enable_prefix_caching: false, ..config(512) }).unwrap();
    let miss = run_with(&cold, &[(prompt.clone(), params.clone(), streaming)]).pop().unwrap();
    assert!(miss.done.kv.tokens_evicted > 0);

    let engine = EngineHandle::start(stories(), config(512)).unwrap();
    let full = run_with(&engine, &[(prompt.clone(), params.clone(), KvPolicy::Full)]).pop().unwrap();
    let hit = run_with(&engine, &[(prompt.clone(), params.clone(), streaming)]).pop().unwrap();
    let bs = engine.info().block_size;
    assert_eq!(hit.done.usage.cached_tokens, (prompt.len() - 1) / bs * bs, "the budgeted request hits the cache");
    assert_eq!(hit.ids, miss.ids, "a hit is a bit-exact copy of the prefix");
    // The evicting request rewrote its copies, never the cached blocks: full still hits and matches.
    let again = run_with(&engine, &[(prompt.clone(), params.clone(), KvPolicy::Full)]).pop().unwrap();
    assert_eq!(again.done.usage.cached_tokens, hit.done.usage.cached_tokens);
    assert_eq!(again.ids, full.ids);
    engine.check_idle().unwrap();
}

#[test]
fn kv_state_shows_each_running_request_and_a_free_pool_after() {
    let model = stories();
    let prompt = prompts(&model, 4, 200).pop().unwrap();
    let engine = EngineHandle::start(model, config(64)).unwrap();
    let kv = KvPolicy::Streaming { budget: 32, sink_tokens: 4 };
    let mut stream = submit(&engine, &prompt, &greedy(40), kv);
    // Wait for a few tokens: the request is running and has evicted.
    for _ in 0..3 {
        stream.blocking_next().unwrap();
    }
    let state = engine.kv_state();
    let me = state.requests.iter().find(|r| r.id == stream.id()).expect("listed while it runs");
    assert_eq!((me.policy, me.prompt_tokens), (kv, prompt.len()));
    assert!(me.tokens_held <= 33 && me.blocks_held <= footprint::peak_blocks(32, 16), "{me:?}");
    assert!(me.tokens_evicted > 0 && me.computed_tokens > me.tokens_held);
    assert_eq!(state.used_blocks(), me.blocks_held);
    collect(stream);
    // The idle check is answered between engine steps, so the step that finished the request
    // has published its state by then.
    engine.check_idle().unwrap();
    let state = engine.kv_state();
    assert!(state.requests.is_empty());
    assert_eq!(state.free_blocks, state.total_blocks);
}
