//! Test support: models, prompts from the shared texts, and collecting a request's events.
#![allow(dead_code)]

use std::path::PathBuf;

use kvault_engine::engine::EngineConfig;
use kvault_engine::events::{Completion, RequestEvent, TokenLogprob};
use kvault_engine::handle::{EngineHandle, RequestStream};
use kvault_engine::kv_policy::KvPolicy;
use kvault_engine::request::NewRequest;
use kvault_engine::sampler::SamplingParams;
use kvault_engine::sizing::CacheBudget;
use kvault_models::model::{load_model, LoadOptions, LoadedModel};
use kvault_models::source::ModelSource;

pub fn shared_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared");
    assert!(dir.join("models").is_dir(), "shared test assets missing: expected {}", dir.display());
    dir
}

pub fn stories() -> LoadedModel {
    load_model(&ModelSource::Embedded, &LoadOptions::default()).unwrap()
}

pub fn smollm() -> LoadedModel {
    let path = shared_dir().join("models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf");
    load_model(&ModelSource::Gguf(path), &LoadOptions::default()).unwrap()
}

pub fn config(num_blocks: usize) -> EngineConfig {
    EngineConfig { cache_budget: CacheBudget::Blocks(num_blocks), ..EngineConfig::default() }
}

/// `n` prompts of varied lengths: consecutive slices of a public-domain text.
pub fn prompts(model: &LoadedModel, n: usize, max_len: usize) -> Vec<Vec<u32>> {
    let text = std::fs::read_to_string(shared_dir().join("data/texts/alice_in_wonderland.txt")).unwrap();
    let ids = model.tokenizer.encode(&text[2000..60000], false).unwrap();
    let bos = model.special_tokens.bos_token_id;
    (0..n)
        .map(|i| {
            let len = 3 + (i * 37) % max_len.saturating_sub(3).max(1);
            let start = i * 97;
            bos.into_iter().chain(ids[start..start + len].iter().copied()).collect()
        })
        .collect()
}

pub fn greedy(max_tokens: usize) -> SamplingParams {
    SamplingParams { temperature: 0.0, max_tokens, ignore_eos: true, ..SamplingParams::default() }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Collected {
    /// Prompt scores, when asked for: logprobs of prompt tokens 1.., and raw logits rows.
    pub prompt_logprobs: Vec<TokenLogprob>,
    pub prompt_logits: Vec<Vec<f32>>,
    pub ids: Vec<u32>,
    pub text: String,
    pub logprobs: Vec<TokenLogprob>,
    pub done: Completion,
}

pub fn collect(mut s: RequestStream) -> Collected {
    let (mut ids, mut text, mut logprobs) = (Vec::new(), String::new(), Vec::new());
    let (mut prompt_logprobs, mut prompt_logits) = (Vec::new(), Vec::new());
    loop {
        match s.blocking_next().expect("stream ended without a final event") {
            RequestEvent::PromptScores(p) => {
                assert_eq!(p.first_token, prompt_logprobs.len() + 1, "prompt scores arrive in order, once");
                prompt_logprobs.extend(p.logprobs);
                prompt_logits.extend(p.logits.unwrap_or_default());
            }
            RequestEvent::Tokens(d) => {
                ids.extend(d.token_ids);
                text.push_str(&d.text);
                logprobs.extend(d.logprobs.unwrap_or_default());
            }
            RequestEvent::Finished(done) => {
                text.push_str(&done.trailing_text);
                return Collected { prompt_logprobs, prompt_logits, ids, text, logprobs, done };
            }
            RequestEvent::Failed(e) => panic!("request failed: {e}"),
        }
    }
}

/// Submits every request at once, then collects them all.
pub fn run_all(engine: &EngineHandle, reqs: &[(Vec<u32>, SamplingParams)]) -> Vec<Collected> {
    let streams: Vec<RequestStream> =
        reqs.iter().map(|(p, sp)| engine.submit(NewRequest::new(p.clone(), sp.clone())).unwrap()).collect();
    streams.into_iter().map(collect).collect()
}

/// Each request alone, on a fresh engine without prefix caching.
pub fn run_alone(model: fn() -> LoadedModel, reqs: &[(Vec<u32>, SamplingParams)]) -> Vec<Collected> {
    let engine = EngineHandle::start(model(), EngineConfig { enable_prefix_caching: false, ..config(2048) }).unwrap();
    reqs.iter().map(|r| run_all(&engine, std::slice::from_ref(r)).pop().unwrap()).collect()
}

/// On a fresh engine, submits every request at once, each with its own KV policy, collects them
/// all, and checks the engine is idle after (no block leaked).
pub fn run_with_policies(model: LoadedModel, reqs: &[(Vec<u32>, SamplingParams, KvPolicy)]) -> Vec<Collected> {
    let engine = EngineHandle::start(model, config(2048)).unwrap();
    let streams: Vec<RequestStream> = reqs
        .iter()
        .map(|(p, sp, kv)| {
            let mut r = NewRequest::new(p.clone(), sp.clone());
            r.kv = *kv;
            engine.submit(r).unwrap()
        })
        .collect();
    let out = streams.into_iter().map(collect).collect();
    engine.check_idle().unwrap();
    out
}
