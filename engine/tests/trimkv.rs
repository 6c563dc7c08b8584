//! `kv_policy trimkv` end to end on stories260K: with every β forced to 1 (a huge gate bias) the
//! gates run in every layer yet change nothing — a budget of the request's length is
//! bit-identical to `full`, and a smaller budget keeps exactly the newest tokens, bit-identical
//! to a sliding window (`streaming` without sinks); with the shipped gates a budgeted request
//! evicts and never holds more than its budget; without gates the request is refused, naming
//! what to run.

mod support;

use candle_core::{Device, Tensor};
use kvault_engine::handle::EngineHandle;
use kvault_engine::kv_policy::KvPolicy;
use kvault_engine::request::{NewRequest, SubmitError};
use kvault_engine::sampler::SamplingParams;
use kvault_models::gates::{LayerGate, RetentionGates};
use kvault_models::model::LoadedModel;
use support::*;

/// Gates whose `log β` is exactly 0 for every token (bias 1000: logsigmoid rounds to 0).
fn retention_one(model: &LoadedModel) -> RetentionGates {
    let c = model.model.config();
    let hidden = 4;
    let z = |shape: &[usize]| Tensor::zeros(shape, candle_core::DType::F32, &Device::Cpu).unwrap();
    RetentionGates {
        layers: (0..c.num_layers)
            .map(|_| LayerGate {
                w1: z(&[hidden, c.hidden_size]),
                b1: z(&[hidden]),
                w2: z(&[c.num_kv_heads, hidden]),
                bias: Tensor::full(1000f32, c.num_kv_heads, &Device::Cpu).unwrap(),
            })
            .collect(),
    }
}

fn stories_with_retention_one() -> LoadedModel {
    let m = stories();
    let g = retention_one(&m);
    m.with_retention_gates(g).unwrap()
}

#[test]
fn retention_one_with_a_budget_of_the_length_is_bit_identical_to_full() {
    let m = stories();
    let max_tokens = 40;
    let reqs: Vec<_> = prompts(&m, 8, 200).into_iter().map(|p| (p, SamplingParams { logprobs: Some(3), ..greedy(max_tokens) })).collect();
    let full = run_with_policies(stories_with_retention_one(), &reqs.iter().map(|(p, sp)| (p.clone(), sp.clone(), KvPolicy::Full)).collect::<Vec<_>>());
    // Budget = prompt + max_tokens − 1: the request goes through the eviction machinery (its
    // gates run in every layer) but never holds more than its budget.
    let trim: Vec<_> = reqs.iter().map(|(p, sp)| (p.clone(), sp.clone(), KvPolicy::TrimKv { budget: p.len() + max_tokens - 1 })).collect();
    let got = run_with_policies(stories_with_retention_one(), &trim);
    for (i, (g, f)) in got.iter().zip(&full).enumerate() {
        assert_eq!(g.ids, f.ids, "request {i}");
        assert_eq!(g.logprobs, f.logprobs, "request {i}: logprobs must be bit-identical");
        assert_eq!(g.done.kv.tokens_evicted, 0);
    }
}

#[test]
fn retention_one_under_a_small_budget_keeps_exactly_the_newest_tokens() {
    let m = stories();
    let reqs: Vec<_> = prompts(&m, 6, 150).into_iter().map(|p| (p, SamplingParams { logprobs: Some(3), ..greedy(60) })).collect();
    let budget = 24;
    let window = run_with_policies(
        stories_with_retention_one(),
        &reqs.iter().map(|(p, sp)| (p.clone(), sp.clone(), KvPolicy::Streaming { budget, sink_tokens: 0 })).collect::<Vec<_>>(),
    );
    let trim = run_with_policies(stories_with_retention_one(), &reqs.iter().map(|(p, sp)| (p.clone(), sp.clone(), KvPolicy::TrimKv { budget })).collect::<Vec<_>>());
    for (i, (t, w)) in trim.iter().zip(&window).enumerate() {
        assert!(t.done.kv.tokens_evicted > 0, "request {i} never evicted: the test would be vacuous");
        assert_eq!(t.ids, w.ids, "request {i}");
        assert_eq!(t.logprobs, w.logprobs, "request {i}: equal retention must evict oldest-first, bit-identically");
    }
}

#[test]
fn shipped_gates_evict_within_the_budget() {
    // Through the library the embedded model loads without gates; the CLI attaches these.
    let m = stories();
    let gates = kvault_models::embedded::retention_gates().unwrap();
    let m = m.with_retention_gates(gates).unwrap();
    let reqs: Vec<_> = prompts(&m, 4, 150).into_iter().map(|p| (p, greedy(80))).collect();
    let budget = 32;
    let got = run_with_policies(m, &reqs.iter().map(|(p, sp)| (p.clone(), sp.clone(), KvPolicy::TrimKv { budget })).collect::<Vec<_>>());
    for (i, (g, (p, _))) in got.iter().zip(&reqs).enumerate() {
        assert_eq!(g.ids.len(), 80, "request {i}");
        assert!(g.done.kv.tokens_evicted > 0, "request {i}");
        // At most the budget plus one chunk (the prompt, or a decode token) before a trim.
        assert!(g.done.kv.peak_tokens_held <= budget + p.len(), "request {i}: held {}", g.done.kv.peak_tokens_held);
    }
}

#[test]
fn trimkv_without_gates_is_refused_naming_the_command_to_run() {
    let engine = EngineHandle::start(stories(), config(256)).unwrap();
    let mut r = NewRequest::new(vec![1, 2, 3], greedy(100));
    r.kv = KvPolicy::TrimKv { budget: 16 };
    let err = engine.submit(r).err().expect("refused");
    assert_eq!(err.param(), Some("kv_policy"));
    let msg = err.to_string();
    assert!(matches!(err, SubmitError::InvalidParam { .. }) && msg.contains("kvault train-gates") && !msg.contains('\n'), "{msg}");
}
