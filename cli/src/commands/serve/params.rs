//! The request fields `/v1/completions` and `/v1/chat/completions` share (sampling, stop,
//! `n`, streaming, the `kv_*` policy fields), and their translation into engine
//! `SamplingParams` and `KvPolicy`.
//!
//! The body is parsed a second time into [`CommonFields`] and a third into `KvFields`
//! (unknown fields ignored), so the endpoint structs hold only what is theirs and serde errors
//! still name the exact field.
//! Must not know: prompts, messages or response shapes.

use std::collections::HashMap;

use kvault_engine::kv_policy::{KvPolicy, KvPolicyConfig};
use kvault_engine::sampler::{SamplingParams, MAX_LOGPROBS};
use serde::Deserialize;
use serde_json::Value;
use utoipa::ToSchema;

use super::error::{parse_json, ApiError};
use crate::kv::KvFields;

/// More choices than this per prompt is almost surely a client bug, and each one costs a
/// sequence slot.
pub const MAX_N: usize = 128;

/// Sampling, stopping and streaming fields of both generating endpoints (OpenAI's, plus vLLM's
/// `top_k`, `min_p`, `repetition_penalty`, `ignore_eos`, `min_tokens`, `stop_token_ids`).
#[derive(Debug, Default, Deserialize, ToSchema)]
pub struct CommonFields {
    /// The served model's name (see /v1/models); it may carry KV settings as a query string,
    /// `NAME?kv_policy=h2o&kv_budget=64`, for clients that can set nothing else per request.
    #[schema(example = "smollm2")]
    pub model: Option<String>,
    /// Tokens to generate at most (completions default 16; chat: the rest of the context).
    /// 0 only when the prompt is scored (`echo` or `prompt_logprobs`).
    pub max_tokens: Option<usize>,
    /// The newer name of `max_tokens`; wins when both are given.
    pub max_completion_tokens: Option<usize>,
    /// 0 is greedy.
    #[schema(minimum = 0)]
    pub temperature: Option<f32>,
    /// Nucleus sampling, in (0, 1].
    pub top_p: Option<f32>,
    /// vLLM's spelling: -1 (or 0) means off.
    pub top_k: Option<i64>,
    /// Drop tokens less likely than min_p × the most likely one, in [0, 1].
    pub min_p: Option<f32>,
    /// Completions per prompt.
    #[schema(minimum = 1, maximum = 128)]
    pub n: Option<usize>,
    /// A string or a list of strings.
    #[schema(schema_with = super::openapi::stop_schema)]
    pub stop: Option<Value>,
    pub stop_token_ids: Option<Vec<u32>>,
    /// OpenAI types it as a signed 64-bit integer; only equality matters, so the bits are kept.
    pub seed: Option<i64>,
    /// In [-2, 2].
    pub presence_penalty: Option<f32>,
    /// In [-2, 2].
    pub frequency_penalty: Option<f32>,
    /// Greater than 0; 1 is off.
    pub repetition_penalty: Option<f32>,
    /// Token id (as a string, per OpenAI's JSON) → bias in [-100, 100].
    pub logit_bias: Option<HashMap<String, f32>>,
    pub ignore_eos: Option<bool>,
    pub min_tokens: Option<usize>,
    /// Accepted for compatibility; kvault keeps no per-user state.
    #[allow(dead_code)]
    pub user: Option<String>,
    /// Server-sent events, as OpenAI streams them.
    pub stream: Option<bool>,
    /// Only with `stream: true`.
    pub stream_options: Option<StreamOptions>,
}

#[derive(Debug, Default, Deserialize, ToSchema)]
pub struct StreamOptions {
    /// A last chunk with the usage of the whole request (and `usage: null` on the others).
    pub include_usage: Option<bool>,
}

impl CommonFields {
    pub fn stream(&self) -> bool {
        self.stream.unwrap_or(false)
    }

    pub fn include_usage(&self) -> Result<bool, ApiError> {
        let asked = self.stream_options.as_ref().and_then(|o| o.include_usage).unwrap_or(false);
        if self.stream_options.is_some() && !self.stream() {
            return Err(ApiError::invalid("stream_options", "stream_options is only allowed when stream is true"));
        }
        Ok(asked)
    }

    pub fn n(&self) -> Result<usize, ApiError> {
        match self.n.unwrap_or(1) {
            0 => Err(ApiError::invalid("n", "n must be at least 1, got 0")),
            n if n > MAX_N => Err(ApiError::invalid("n", format!("n must be at most {MAX_N}, got {n}"))),
            n => Ok(n),
        }
    }

    /// `max_completion_tokens` (the newer name) wins over `max_tokens` when both are given.
    pub fn requested_max_tokens(&self) -> Option<usize> {
        self.max_completion_tokens.or(self.max_tokens)
    }

    /// Sampling parameters for one choice, with `max_tokens` already resolved by the endpoint
    /// (its default differs: 16 for completions, the rest of the context for chat). `n` is
    /// handled by fanning out, so each engine request asks for one completion.
    /// `prompt_logprobs`: the top-n the prompt is scored with, if it is; only a scored prompt
    /// may ask for 0 tokens (lm-evaluation-harness's loglikelihood requests do).
    pub fn params(&self, max_tokens: usize, prompt_logprobs: Option<usize>) -> Result<SamplingParams, ApiError> {
        let d = SamplingParams::default();
        let top_k = match self.top_k {
            None | Some(-1) | Some(0) => 0,
            Some(k) if k > 0 => k as usize,
            Some(k) => return Err(ApiError::invalid("top_k", format!("top_k must be -1 (off) or at least 1, got {k}"))),
        };
        if max_tokens == 0 && prompt_logprobs.is_none() {
            let name = if self.max_completion_tokens.is_some() { "max_completion_tokens" } else { "max_tokens" };
            return Err(ApiError::invalid(
                name,
                format!("{name} must be at least 1 unless the prompt is scored (echo or prompt_logprobs), got 0"),
            ));
        }
        Ok(SamplingParams {
            temperature: self.temperature.unwrap_or(d.temperature),
            top_k,
            top_p: self.top_p.unwrap_or(d.top_p),
            min_p: self.min_p.unwrap_or(d.min_p),
            prompt_logprobs,
            repetition_penalty: self.repetition_penalty.unwrap_or(d.repetition_penalty),
            presence_penalty: self.presence_penalty.unwrap_or(d.presence_penalty),
            frequency_penalty: self.frequency_penalty.unwrap_or(d.frequency_penalty),
            logit_bias: parse_logit_bias(self.logit_bias.as_ref())?,
            seed: self.seed.map(|s| s as u64),
            max_tokens,
            stop: parse_stop(self.stop.as_ref())?,
            stop_token_ids: self.stop_token_ids.clone().unwrap_or_default(),
            ignore_eos: self.ignore_eos.unwrap_or(false),
            logprobs: None,
            n: 1,
            min_tokens: self.min_tokens.unwrap_or(0),
        })
    }
}

fn parse_stop(v: Option<&Value>) -> Result<Vec<String>, ApiError> {
    let bad = || ApiError::invalid("stop", "stop must be a string or a list of strings");
    match v {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(s)) => Ok(vec![s.clone()]),
        Some(Value::Array(items)) => items.iter().map(|i| i.as_str().map(str::to_string).ok_or_else(bad)).collect(),
        Some(_) => Err(bad()),
    }
}

fn parse_logit_bias(v: Option<&HashMap<String, f32>>) -> Result<Vec<(u32, f32)>, ApiError> {
    let Some(map) = v else { return Ok(Vec::new()) };
    let mut out: Vec<(u32, f32)> = map
        .iter()
        .map(|(k, &b)| {
            k.trim()
                .parse::<u32>()
                .map(|id| (id, b))
                .map_err(|_| ApiError::invalid("logit_bias", format!("logit_bias keys must be token ids, got {k:?}")))
        })
        .collect::<Result<_, _>>()?;
    // HashMap order is random; a stable order keeps requests reproducible.
    out.sort_by_key(|&(id, _)| id);
    Ok(out)
}

/// The request's KV policy: its `kv_*` fields (vLLM-style extra top-level fields; the openai
/// SDK sends them through `extra_body`) over the server's `--kv-*` defaults. Every refusal is
/// a 400 naming the field, a wrong JSON type included.
pub fn kv_policy(body: &[u8], defaults: &KvPolicyConfig) -> Result<KvPolicy, ApiError> {
    let fields: KvFields = parse_json(body)?;
    fields.resolve(defaults).map_err(|e| ApiError::invalid(e.param, e.to_string()))
}

/// vLLM's `prompt_logprobs` (at most [`MAX_LOGPROBS`]); like vLLM, only for whole responses.
pub fn check_prompt_logprobs(top_n: Option<usize>, stream: bool) -> Result<Option<usize>, ApiError> {
    match top_n {
        Some(k) if k > MAX_LOGPROBS => Err(ApiError::invalid("prompt_logprobs", format!("prompt_logprobs must be at most {MAX_LOGPROBS}, got {k}"))),
        Some(_) if stream => Err(ApiError::invalid("prompt_logprobs", "prompt_logprobs is not available when stream is true")),
        k => Ok(k),
    }
}

/// Seed for choice `i` of a prompt: distinct per choice, reproducible per request.
pub fn choice_seed(seed: Option<u64>, i: usize) -> Option<u64> {
    seed.map(|s| s.wrapping_add(i as u64))
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvault_engine::kv_policy::KvPolicyKind;

    fn fields(json: &str) -> CommonFields {
        parse_json(json.as_bytes()).unwrap()
    }

    #[test]
    fn openai_fields_map_onto_sampling_params() {
        let f = fields(
            r#"{"temperature": 0.5, "top_p": 0.9, "top_k": -1, "min_p": 0.1, "seed": 7, "stop": "END",
                "presence_penalty": 0.5, "logit_bias": {"12": 5, "3": -100}, "ignore_eos": true, "unknown": 1}"#,
        );
        let p = f.params(16, None).unwrap();
        assert_eq!((p.temperature, p.top_p, p.top_k, p.min_p), (0.5, 0.9, 0, 0.1));
        assert_eq!((p.seed, p.stop.clone(), p.presence_penalty, p.ignore_eos), (Some(7), vec!["END".to_string()], 0.5, true));
        assert_eq!(p.logit_bias, vec![(3, -100.0), (12, 5.0)]);
        assert_eq!((p.n, p.max_tokens), (1, 16));
    }

    #[test]
    fn bad_shapes_name_their_parameter() {
        let cases = [
            (r#"{"stop": 3}"#, "stop"),
            (r#"{"stop": ["a", 1]}"#, "stop"),
            (r#"{"logit_bias": {"abc": 1}}"#, "logit_bias"),
            (r#"{"top_k": -5}"#, "top_k"),
        ];
        for (json, param) in cases {
            let e = fields(json).params(16, None).unwrap_err();
            assert_eq!(e.param.as_deref(), Some(param), "{json}");
        }
        assert_eq!(fields(r#"{"n": 0}"#).n().unwrap_err().param.as_deref(), Some("n"));
        let e = fields(r#"{"max_completion_tokens": 0}"#).params(0, None).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("max_completion_tokens"));
        assert_eq!(fields(r#"{"max_tokens": 0}"#).params(0, Some(1)).unwrap().prompt_logprobs, Some(1), "a scored prompt may ask for no tokens");
        let e = fields(r#"{"stream_options": {"include_usage": true}}"#).include_usage().unwrap_err();
        assert_eq!(e.param.as_deref(), Some("stream_options"));
    }

    #[test]
    fn kv_fields_overlay_the_defaults_and_every_refusal_names_its_field() {
        let h2o = KvPolicyConfig { policy: Some(KvPolicyKind::H2o), budget: Some(64), ..Default::default() };
        let policy = |json: &str| kv_policy(json.as_bytes(), &h2o);
        assert_eq!(policy(r#"{"prompt": "hi"}"#), Ok(KvPolicy::H2o { budget: 64, recent_window: 32 }));
        assert_eq!(policy(r#"{"kv_policy": "full"}"#), Ok(KvPolicy::Full));
        assert_eq!(policy(r#"{"kv_budget": 16, "kv_recent_window": 4}"#), Ok(KvPolicy::H2o { budget: 16, recent_window: 4 }));
        let cases = [
            (r#"{"kv_policy": "lru"}"#, "kv_policy"),
            (r#"{"kv_policy": 3}"#, "kv_policy"),
            (r#"{"kv_budget": 0}"#, "kv_budget"),
            (r#"{"kv_budget": -1}"#, "kv_budget"),
            (r#"{"kv_budget": 1.5}"#, "kv_budget"),
            (r#"{"kv_budget": "64"}"#, "kv_budget"),
            (r#"{"kv_recent_window": 65}"#, "kv_budget"),
            (r#"{"kv_sink_tokens": 2}"#, "kv_sink_tokens"),
            (r#"{"kv_policy": "streaming", "kv_recent_window": 2}"#, "kv_recent_window"),
            (r#"{"kv_policy": "snapkv", "kv_snapkv_window": 0}"#, "kv_snapkv_window"),
            (r#"{"kv_policy": "snapkv", "kv_snapkv_kernel": 4}"#, "kv_snapkv_kernel"),
            (r#"{"kv_policy": "snapkv", "kv_snapkv_pooling": "median"}"#, "kv_snapkv_pooling"),
            (r#"{"kv_snapkv_pooling": true}"#, "kv_snapkv_pooling"),
        ];
        for (json, param) in cases {
            let e = policy(json).unwrap_err();
            assert_eq!((e.status.as_u16(), e.param.as_deref()), (400, Some(param)), "{json}: {}", e.message);
            assert!(e.message.contains(param), "{json}: {}", e.message);
        }
    }

    #[test]
    fn choice_seeds_differ_per_choice_and_repeat_per_request() {
        assert_eq!(choice_seed(Some(5), 0), Some(5));
        assert_eq!(choice_seed(Some(5), 2), Some(7));
        assert_eq!(choice_seed(None, 2), None);
        assert_eq!(fields(r#"{"seed": -1}"#).params(1, None).unwrap().seed, Some(u64::MAX));
    }
}
