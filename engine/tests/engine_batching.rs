//! Continuous batching, prefix caching, chunked prefill and preemption must never change what a
//! request produces: every test compares against the same requests run alone.

mod support;

use kvault_engine::engine::EngineConfig;
use kvault_engine::handle::EngineHandle;
use kvault_engine::request::NewRequest;
use kvault_engine::sampler::SamplingParams;
use kvault_models::model::LoadedModel;
use kvault_scheduler::PolicyKind;
use support::*;

fn mixed_requests(model: &LoadedModel, n: usize, max_prompt: usize) -> Vec<(Vec<u32>, SamplingParams)> {
    prompts(model, n, max_prompt).into_iter().enumerate().map(|(i, p)| (p, greedy(8 + (i * 13) % 40))).collect()
}

fn assert_same(got: &[Collected], alone: &[Collected]) {
    for (i, (g, a)) in got.iter().zip(alone).enumerate() {
        assert_eq!(g.ids, a.ids, "request {i}: tokens differ from the request run alone");
        assert_eq!(g.text, a.text, "request {i}: text");
        assert_eq!(g.done.reason, a.done.reason, "request {i}: finish reason");
    }
}

#[test]
fn concurrent_greedy_requests_equal_each_run_alone_stories260k() {
    let reqs = mixed_requests(&stories(), 32, 200);
    let engine = EngineHandle::start(stories(), config(1024)).unwrap();
    let got = run_all(&engine, &reqs);
    assert_same(&got, &run_alone(stories, &reqs));
    engine.check_idle().unwrap();
}

#[test]
fn concurrent_greedy_requests_equal_each_run_alone_smollm2() {
    let model = smollm();
    let reqs = mixed_requests(&model, 32, 120);
    let engine = EngineHandle::start(model, config(1024)).unwrap();
    let got = run_all(&engine, &reqs);
    assert_same(&got, &run_alone(smollm, &reqs));
    engine.check_idle().unwrap();
}

#[test]
fn prefix_hit_gives_bit_identical_output_and_logprobs() {
    let model = stories();
    let prompt = prompts(&model, 40, 300).pop().unwrap();
    let params = SamplingParams { logprobs: Some(5), ..greedy(24) };
    let engine = EngineHandle::start(model, config(256)).unwrap();
    let miss = run_all(&engine, &[(prompt.clone(), params.clone())]).pop().unwrap();
    assert_eq!(miss.done.usage.cached_tokens, 0);
    let hit = run_all(&engine, &[(prompt.clone(), params)]).pop().unwrap();
    let bs = engine.info().block_size;
    assert_eq!(hit.done.usage.cached_tokens, (prompt.len() - 1) / bs * bs, "the second run must hit the cache");
    assert_eq!(hit.ids, miss.ids);
    assert_eq!(hit.text, miss.text);
    // Bit-identical logprobs (and top alternatives) at every step.
    assert_eq!(hit.logprobs, miss.logprobs);
    let stats = engine.stats();
    assert!(stats.prefix_cache_hits > 0 && stats.prefix_cache_queries >= stats.prefix_cache_hits);
    engine.check_idle().unwrap();
}

#[test]
fn kv_budget_forcing_preemption_completes_every_request_identically() {
    let model = stories();
    let reqs: Vec<_> = prompts(&model, 16, 60).into_iter().map(|p| (p, greedy(120))).collect();
    for policy in [PolicyKind::Aggressive, PolicyKind::Conservative, PolicyKind::PastFuture] {
        // 40 blocks of 16 = 640 tokens for 16 requests of up to ~180 tokens each.
        let cfg = EngineConfig { policy, max_model_len: Some(256), ..config(40) };
        let engine = EngineHandle::start(stories(), cfg).unwrap();
        let got = run_all(&engine, &reqs);
        assert_same(&got, &run_alone(stories, &reqs));
        if policy == PolicyKind::Aggressive {
            assert!(engine.stats().preemptions > 0, "the budget was meant to force preemption");
        }
        engine.check_idle().unwrap();
    }
}

#[test]
fn chunked_prefill_equals_whole_prompt_prefill() {
    let model = stories();
    let reqs = mixed_requests(&model, 8, 400);
    let cfg = EngineConfig { max_num_batched_tokens: 24, ..config(1024) };
    let engine = EngineHandle::start(stories(), cfg).unwrap();
    let got = run_all(&engine, &reqs);
    assert_same(&got, &run_alone(stories, &reqs));
    engine.check_idle().unwrap();
}

#[test]
fn aborts_mid_prefill_and_mid_decode_free_every_block() {
    let model = stories();
    let reqs: Vec<_> = prompts(&model, 12, 250).into_iter().map(|p| (p, greedy(200))).collect();
    let cfg = EngineConfig { max_num_batched_tokens: 32, ..config(512) };
    let engine = EngineHandle::start(stories(), cfg).unwrap();
    let mut streams: Vec<_> =
        reqs.iter().map(|(p, sp)| engine.submit(NewRequest::new(p.clone(), sp.clone())).unwrap()).collect();
    // Read a few events from some streams (mid-decode), drop others untouched (queued or
    // mid-prefill), abort one explicitly, and let the rest finish.
    for s in streams.iter_mut().take(4) {
        s.blocking_next();
        s.blocking_next();
    }
    engine.abort(streams[5].id());
    let keep: Vec<_> = streams.drain(8..).collect();
    drop(streams);
    for s in keep {
        collect(s);
    }
    engine.check_idle().unwrap();
    assert_eq!(engine.stats().running, 0);
}

#[test]
fn request_longer_than_the_context_is_refused_without_side_effects() {
    let engine = EngineHandle::start(stories(), EngineConfig { max_model_len: Some(64), ..config(64) }).unwrap();
    let err = engine.submit(NewRequest::new(vec![1; 60], greedy(10))).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("64") && msg.contains("70"), "{msg}");
    let err = engine.submit(NewRequest::new(vec![1, 2, 3], SamplingParams { top_p: 1.5, ..greedy(4) })).unwrap_err();
    assert_eq!(err.param(), Some("top_p"));
    let err = engine.submit(NewRequest::new(vec![], greedy(4))).unwrap_err();
    assert_eq!(err.param(), Some("prompt"));
    let ok = run_all(&engine, &[(vec![1, 2, 3], greedy(4))]).pop().unwrap();
    assert_eq!(ok.ids.len(), 4);
    engine.check_idle().unwrap();
}
