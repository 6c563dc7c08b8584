//! Scoring a prompt through the engine's batched path (`prompt_logprobs`, raw prompt logits,
//! `max_tokens: 0`): the summed logprobs equal the HF reference NLL, chunking and batching change
//! no bit, and a scoring request gets no prefix hit and frees everything.

mod support;

use kvault_engine::handle::EngineHandle;
use kvault_engine::kv_policy::KvPolicy;
use kvault_engine::request::NewRequest;
use kvault_engine::sampler::SamplingParams;
use serde_json::Value;
use support::*;

fn reference() -> Value {
    let text = std::fs::read_to_string(shared_dir().join("models/stories260K/reference.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

fn scoring(max_tokens: usize, top: usize) -> SamplingParams {
    SamplingParams { prompt_logprobs: Some(top), ..greedy(max_tokens) }
}

fn run_one(engine: &EngineHandle, req: NewRequest) -> Collected {
    collect(engine.submit(req).unwrap())
}

#[test]
fn prompt_logprobs_sum_to_the_reference_nll_and_zero_tokens_are_generated() {
    let r = reference();
    let case = &r["nll"][0];
    let prompt: Vec<u32> = ids(&case["prompt_ids"]).into_iter().chain(ids(&case["continuation_ids"])).collect();
    let n_prompt = ids(&case["prompt_ids"]).len();
    let engine = EngineHandle::start(stories(), config(256)).unwrap();
    let got = run_one(&engine, NewRequest::new(prompt.clone(), scoring(0, 5)));
    assert!(got.ids.is_empty(), "max_tokens 0 generates nothing");
    assert_eq!(got.prompt_logprobs.len(), prompt.len() - 1, "every token but the first is scored");
    for (i, lp) in got.prompt_logprobs.iter().enumerate() {
        assert_eq!(lp.token_id, prompt[i + 1]);
        assert_eq!(lp.top.len(), 5);
        assert!(lp.top[0].1 >= lp.logprob);
    }
    let sum: f64 = got.prompt_logprobs[n_prompt - 1..].iter().map(|l| l.logprob as f64).sum();
    let want = case["sum_logprob"].as_f64().unwrap();
    assert!((sum - want).abs() <= 1e-4 * want.abs(), "sum of continuation logprobs {sum} vs reference {want}");
    // Per-token agreement with the reference's own logprobs.
    for (got, want) in got.prompt_logprobs[n_prompt - 1..].iter().zip(case["token_logprobs"].as_array().unwrap()) {
        assert!((got.logprob as f64 - want.as_f64().unwrap()).abs() < 1e-3);
    }
    engine.check_idle().unwrap();
}

#[test]
fn chunked_batched_and_raw_logit_scoring_agree_bit_for_bit() {
    let model = stories();
    let prompt = prompts(&model, 40, 300).pop().unwrap();
    let engine = EngineHandle::start(model, config(512)).unwrap();
    // Whole prompt in one chunk, alone.
    let whole = run_one(&engine, NewRequest::new(prompt.clone(), scoring(3, 2)));
    // In chunks of 16, next to another request, with raw logits.
    let mut chunked = NewRequest::new(prompt.clone(), scoring(3, 2));
    chunked.max_chunk_tokens = Some(16);
    chunked.prompt_logits = true;
    let other = engine.submit(NewRequest::new(prompt[..50].to_vec(), greedy(20))).unwrap();
    let got = run_one(&engine, chunked);
    collect(other);
    assert_eq!(got.prompt_logprobs, whole.prompt_logprobs);
    assert_eq!(got.ids, whole.ids, "scoring does not change what is generated");
    assert_eq!(got.prompt_logits.len(), prompt.len() - 1);
    // The raw rows are the distributions the logprobs came from.
    for (row, lp) in got.prompt_logits.iter().zip(&got.prompt_logprobs) {
        let lse = row.iter().map(|&x| (x as f64).exp()).sum::<f64>().ln();
        assert!((row[lp.token_id as usize] as f64 - lse - lp.logprob as f64).abs() < 1e-4);
    }
    // The same prompt again would hit the cache, but a scoring request computes everything.
    let again = run_one(&engine, NewRequest::new(prompt.clone(), scoring(3, 2)));
    assert_eq!(again.done.usage.cached_tokens, 0);
    assert_eq!(again.prompt_logprobs, whole.prompt_logprobs);
    engine.check_idle().unwrap();
}

#[test]
fn a_budgeted_request_scores_its_prompt_under_eviction_and_a_chunk_break_is_honoured() {
    let model = stories();
    let prompt = prompts(&model, 40, 300).pop().unwrap();
    let engine = EngineHandle::start(model, config(512)).unwrap();
    let full = run_one(&engine, NewRequest::new(prompt.clone(), scoring(0, 0)));
    let mut req = NewRequest::new(prompt.clone(), scoring(0, 0));
    req.kv = KvPolicy::Streaming { budget: 64, sink_tokens: 4 };
    req.chunk_break = Some(100);
    let got = run_one(&engine, req);
    assert_eq!(got.prompt_logprobs.len(), full.prompt_logprobs.len());
    // Chunks of at most 64 (the budget) that never cross 100: [0, 64) and [64, 100) attend every
    // token so far (eviction follows attention), so rows 0..100 equal full; [100, 164) sees only
    // the 64 kept. Without the break the second chunk would be [64, 128), equal to full too.
    assert!(prompt.len() > 170);
    assert_eq!(got.prompt_logprobs[..100], full.prompt_logprobs[..100]);
    assert_ne!(got.prompt_logprobs[100..128], full.prompt_logprobs[100..128], "the chunk broke at 100");
    assert!(got.done.kv.tokens_evicted > 0);
    // max_tokens 0 without scoring is refused, naming the field.
    let err = engine.submit(NewRequest::new(prompt, greedy(0))).unwrap_err();
    assert_eq!(err.param(), Some("max_tokens"));
    engine.check_idle().unwrap();
}
