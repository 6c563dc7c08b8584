//! `kv_policy lychee` end to end on stories260K: with every head a retrieval head, or a budget
//! covering the whole request, the sparse-decode machinery runs yet changes nothing (ids and
//! logprobs bit-identical to `full`); with sparse heads and a small budget decoding really reads
//! fewer blocks (the logprobs move), requests next to it in the batch are untouched, nothing
//! is evicted and every block comes back; without head roles, or with a budget under two
//! blocks, the request is refused naming what to do.

mod support;

use kvault_engine::handle::EngineHandle;
use kvault_engine::kv_policy::KvPolicy;
use kvault_engine::request::{NewRequest, SubmitError};
use kvault_engine::sampler::SamplingParams;
use kvault_kernels::HeadRoles;
use kvault_models::model::LoadedModel;
use support::*;

fn with_roles(model: LoadedModel, retrieval: impl Fn(usize, usize) -> bool) -> LoadedModel {
    let c = model.model.config();
    let (layers, heads) = (c.num_layers, c.num_kv_heads);
    let flags = (0..layers).flat_map(|l| (0..heads).map(move |h| (l, h))).map(|(l, h)| l == 0 || retrieval(l, h)).collect();
    model.with_head_roles(HeadRoles::new(layers, heads, flags).unwrap()).unwrap()
}

/// Every head outside layer 0 sparse except KV head 0 of layer 2: most of the model reads only
/// the selected blocks.
fn mostly_sparse(model: LoadedModel) -> LoadedModel {
    with_roles(model, |l, h| l == 2 && h == 0)
}

fn lychee(budget: usize) -> KvPolicy {
    KvPolicy::Lychee { budget, sink_tokens: (budget / 8).max(1), recent_window: (budget / 4).max(1) }
}

fn requests(m: &LoadedModel, n: usize, max_len: usize, max_tokens: usize, kv: KvPolicy) -> Vec<(Vec<u32>, SamplingParams, KvPolicy)> {
    prompts(m, n, max_len)
        .into_iter()
        .map(|p| (p, SamplingParams { logprobs: Some(3), ..greedy(max_tokens) }, kv))
        .collect()
}

fn with_policy(reqs: &[(Vec<u32>, SamplingParams, KvPolicy)], kv: KvPolicy) -> Vec<(Vec<u32>, SamplingParams, KvPolicy)> {
    reqs.iter().map(|(p, sp, _)| (p.clone(), sp.clone(), kv)).collect()
}

#[test]
fn all_retrieval_heads_at_a_small_budget_are_bit_identical_to_full() {
    let m = stories();
    let reqs = requests(&m, 6, 200, 60, KvPolicy::Full);
    let full = run_with_policies(with_roles(stories(), |_, _| true), &reqs);
    let got = run_with_policies(with_roles(stories(), |_, _| true), &with_policy(&reqs, lychee(32)));
    for (i, (g, f)) in got.iter().zip(&full).enumerate() {
        assert_eq!(g.ids, f.ids, "request {i}");
        assert_eq!(g.logprobs, f.logprobs, "request {i}: logprobs must be bit-identical");
        assert_eq!(g.done.kv.tokens_evicted, 0);
    }
}

#[test]
fn a_budget_covering_the_request_is_bit_identical_to_full_whatever_the_roles() {
    let m = stories();
    let max_tokens = 40;
    let reqs = requests(&m, 6, 200, max_tokens, KvPolicy::Full);
    let full = run_with_policies(mostly_sparse(stories()), &reqs);
    let covering: Vec<_> = reqs
        .iter()
        .map(|(p, sp, _)| (p.clone(), sp.clone(), lychee((p.len() + max_tokens).next_multiple_of(16))))
        .collect();
    let got = run_with_policies(mostly_sparse(stories()), &covering);
    for (i, (g, f)) in got.iter().zip(&full).enumerate() {
        assert_eq!(g.ids, f.ids, "request {i}");
        assert_eq!(g.logprobs, f.logprobs, "request {i}");
    }
}

#[test]
fn sparse_heads_under_a_small_budget_read_less_and_leave_their_neighbours_alone() {
    let m = stories();
    // Prompts of 150–250 tokens: 10–16 blocks, of which a sparse head reads 3.
    let reqs: Vec<_> = requests(&m, 12, 250, 30, KvPolicy::Full).into_iter().filter(|(p, _, _)| p.len() >= 150).collect();
    assert!(reqs.len() >= 3, "need long prompts");
    let full = run_with_policies(mostly_sparse(stories()), &reqs);
    // Every other request is lychee: the full ones beside them must not move by a bit.
    let mixed: Vec<_> = reqs
        .iter()
        .enumerate()
        .map(|(i, (p, sp, _))| (p.clone(), sp.clone(), if i % 2 == 0 { lychee(48) } else { KvPolicy::Full }))
        .collect();
    let got = run_with_policies(mostly_sparse(stories()), &mixed);
    let mut moved = 0;
    for (i, (g, f)) in got.iter().zip(&full).enumerate() {
        assert_eq!(g.ids.len(), f.ids.len(), "request {i} finished");
        assert_eq!(g.done.kv.tokens_evicted, 0, "lychee evicts nothing");
        if i % 2 == 1 {
            assert_eq!(g.logprobs, f.logprobs, "full request {i} next to lychee ones");
        } else if g.logprobs != f.logprobs {
            moved += 1;
        }
    }
    assert!(moved > 0, "sparse heads reading 3 of 10+ blocks never changed a logprob: the sparse path did not run");
}

#[test]
fn lychee_without_head_roles_or_under_two_blocks_is_refused() {
    let m = stories();
    let prompt = prompts(&m, 1, 50).remove(0);
    let engine = EngineHandle::start(m, config(256)).unwrap();
    let mut r = NewRequest::new(prompt.clone(), greedy(4));
    r.kv = lychee(64);
    let e = engine.submit(r).err().expect("no roles loaded");
    assert!(matches!(&e, SubmitError::InvalidParam { param, .. } if param == "kv_policy"), "{e}");
    assert!(e.to_string().contains("calibrate-heads"), "{e}");
    drop(engine);

    let engine = EngineHandle::start(with_roles(stories(), |_, _| true), config(256)).unwrap();
    let mut r = NewRequest::new(prompt, greedy(4));
    r.kv = lychee(31);
    let e = engine.submit(r).err().expect("under two blocks");
    assert!(matches!(&e, SubmitError::InvalidParam { param, .. } if param == "kv_budget"), "{e}");
    engine.check_idle().unwrap();
}

#[test]
fn roles_for_another_model_are_refused_when_attached() {
    let m = stories();
    let c = m.model.config();
    let wrong = HeadRoles::new(c.num_layers + 1, c.num_kv_heads, vec![true; (c.num_layers + 1) * c.num_kv_heads]).unwrap();
    let e = m.with_head_roles(wrong).err().expect("layer count differs").to_string();
    assert!(e.contains("another model"), "{e}");
}
