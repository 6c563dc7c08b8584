//! `POST /v1/completions`: prompts as a string, list of strings, token ids or list of token-id
//! lists; each prompt × `n` choices; `echo`; integer `logprobs`; vLLM's `prompt_logprobs`;
//! streaming or not.
//!
//! `echo` with `logprobs` scores the prompt in the engine's prefill and returns its tokens'
//! logprobs before the generated ones (the first one null), as OpenAI and vLLM do; with
//! `max_tokens: 0` nothing is generated. That is what lm-evaluation-harness's
//! `local-completions` loglikelihood asks for.
//! Must not know: SSE framing (sse.rs), fan-out mechanics (generation.rs).

use std::sync::Arc;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use kvault_engine::engine::EngineInfo;
use kvault_engine::events::{Completion, PromptScores, TokenDelta, TokenLogprob};
use kvault_engine::sampler::MAX_LOGPROBS;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use utoipa::ToSchema;

use super::error::{parse_json, ApiError};
use super::generation::{self, finish_fields, PromptJob, ResponseMeta, UsageTally};
use super::logprobs::{completion_logprobs, vllm_prompt_logprobs, CompletionLogprobs};
use super::params::{check_prompt_logprobs, kv_policy, CommonFields};
use super::sse::{self, ChunkFormatter, SseOptions};
use super::state::AppState;

/// OpenAI's completions default.
const DEFAULT_MAX_TOKENS: usize = 16;

/// The fields only `/v1/completions` has.
#[derive(Debug, Deserialize, ToSchema)]
pub struct CompletionRequest {
    /// Required: a string, a list of strings, a list of token ids, or a list of token-id lists
    /// (one choice set per prompt).
    #[schema(schema_with = super::openapi::prompt_schema, required = true)]
    prompt: Option<Value>,
    /// Put the prompt before the completion; with `logprobs`, the prompt tokens' logprobs come
    /// first (the first one null). With `max_tokens: 0` nothing is generated.
    echo: Option<bool>,
    /// Logprob of each token and of the `logprobs` most likely alternatives (at most 20).
    #[schema(maximum = 20)]
    logprobs: Option<usize>,
    /// vLLM's extension: each prompt token's logprob with this many alternatives (at most 20),
    /// `[null, {token_id: {logprob, rank, decoded_token}}, …]` in each choice. Not with `stream`.
    #[schema(maximum = 20)]
    prompt_logprobs: Option<usize>,
    /// Fill-in-the-middle is not supported: only null or "" is accepted.
    suffix: Option<String>,
}

/// One prompt: its ids and the text `echo` repeats.
struct Prompt {
    ids: Vec<u32>,
    text: String,
}

pub async fn handle(State(state): State<Arc<AppState>>, body: axum::body::Bytes) -> Result<Response, ApiError> {
    let req: CompletionRequest = parse_json(&body)?;
    let common: CommonFields = parse_json(&body)?;
    let kv_defaults = state.check_model(common.model.as_deref())?;
    let kv = kv_policy(&body, &kv_defaults)?;
    let engine = state.engine()?.clone();
    let info = engine.info().clone();
    if req.suffix.as_deref().is_some_and(|s| !s.is_empty()) {
        return Err(ApiError::invalid("suffix", "suffix (fill-in-the-middle) is not supported by this server"));
    }
    if let Some(k) = req.logprobs.filter(|&k| k > MAX_LOGPROBS) {
        return Err(ApiError::invalid("logprobs", format!("logprobs must be at most {MAX_LOGPROBS}, got {k}")));
    }
    let prompt_top = check_prompt_logprobs(req.prompt_logprobs, common.stream())?;
    let echo = req.echo.unwrap_or(false);
    let max_tokens = common.requested_max_tokens().unwrap_or(DEFAULT_MAX_TOKENS);
    // Echoed logprobs need the prompt scored; so does an echo of nothing but the prompt, which
    // the engine runs as a scoring request (vLLM generates a token and drops it instead).
    let echo_top = (echo && (req.logprobs.is_some() || max_tokens == 0)).then(|| req.logprobs.unwrap_or(0));
    let score_top = echo_top.max(prompt_top);
    let prompts = parse_prompts(&info, req.prompt.as_ref())?;
    let n = common.n()?;
    let include_usage = common.include_usage()?;
    let mut params = common.params(max_tokens, score_top)?;
    params.logprobs = req.logprobs;
    let jobs: Vec<PromptJob> = prompts.iter().map(|p| PromptJob { prompt_ids: p.ids.clone(), params: params.clone(), kv }).collect();
    let streams = generation::submit_all(&engine, &state.metrics, &jobs, n, state.max_choices)?;

    let meta = ResponseMeta::new("cmpl", state.served_model_name.clone());
    if common.stream() {
        let choices = streams.len();
        let formatter = StreamFormat {
            meta,
            info,
            n,
            echo,
            prompts,
            offsets: vec![0; choices],
            logprobs: req.logprobs,
            echo_pending: vec![false; choices],
            prompt_scores: vec![Vec::new(); choices],
        };
        return Ok(sse::response(generation::merged(streams), formatter, SseOptions { include_usage, n }));
    }
    let outputs = generation::gather(streams).await?;
    let mut usage = UsageTally::default();
    let choices: Vec<Value> = outputs
        .iter()
        .enumerate()
        .map(|(i, out)| {
            usage.add(i, n, &out.completion);
            let prompt = &prompts[i / n];
            let logprobs = req.logprobs.map(|top_n| {
                let mut lp = CompletionLogprobs::new(&info.tokenizer, top_n, 0);
                if echo {
                    lp.prompt(&prompt.ids, &out.prompt_logprobs);
                }
                lp.extend(&out.logprobs);
                lp.json()
            });
            let (reason, stop_reason) = finish_fields(&out.completion);
            let echo_text = if echo { prompt.text.as_str() } else { "" };
            let mut choice = json!({
                "index": i,
                "text": format!("{echo_text}{}", out.text),
                "logprobs": logprobs,
                "finish_reason": reason,
                "stop_reason": stop_reason,
            });
            if let Some(top_n) = prompt_top {
                choice["prompt_logprobs"] = vllm_prompt_logprobs(&info.tokenizer, &prompt.ids, &out.prompt_logprobs, top_n);
            }
            choice
        })
        .collect();
    let mut body = meta.envelope("text_completion");
    body.insert("choices".into(), Value::Array(choices));
    body.insert("usage".into(), usage.json());
    Ok(axum::Json(Value::Object(body)).into_response())
}

fn parse_prompts(info: &EngineInfo, prompt: Option<&Value>) -> Result<Vec<Prompt>, ApiError> {
    let bad = || ApiError::invalid("prompt", "prompt must be a string, a list of strings, a list of token ids, or a list of token-id lists");
    let text = |s: &str| -> Result<Prompt, ApiError> {
        let ids = info.tokenizer.encode(s, true).map_err(|e| ApiError::invalid("prompt", format!("{e:#}")))?;
        Ok(Prompt { ids, text: s.to_string() })
    };
    let ids = |items: &[Value]| -> Result<Prompt, ApiError> {
        let ids = items.iter().map(|v| v.as_u64().and_then(|x| u32::try_from(x).ok()).ok_or_else(bad)).collect::<Result<Vec<u32>, _>>()?;
        let text = info.tokenizer.decode(&ids, true).map_err(|e| ApiError::invalid("prompt", format!("{e:#}")))?;
        Ok(Prompt { ids, text })
    };
    match prompt {
        None | Some(Value::Null) => Err(ApiError::invalid("prompt", "prompt is required")),
        Some(Value::String(s)) => Ok(vec![text(s)?]),
        Some(Value::Array(items)) if items.is_empty() => Err(ApiError::invalid("prompt", "prompt must not be an empty list")),
        Some(Value::Array(items)) => match &items[0] {
            Value::String(_) => items.iter().map(|v| v.as_str().ok_or_else(bad).and_then(text)).collect(),
            Value::Number(_) => Ok(vec![ids(items)?]),
            Value::Array(_) => items.iter().map(|v| v.as_array().ok_or_else(bad).and_then(|a| ids(a))).collect(),
            _ => Err(bad()),
        },
        Some(_) => Err(bad()),
    }
}

struct StreamFormat {
    meta: ResponseMeta,
    info: Arc<EngineInfo>,
    n: usize,
    echo: bool,
    prompts: Vec<Prompt>,
    /// Per choice: characters sent so far (logprobs' `text_offset`).
    offsets: Vec<usize>,
    /// `logprobs`' top-n, when asked.
    logprobs: Option<usize>,
    /// Per choice: the echo waits for the prompt's scores (echo with logprobs).
    echo_pending: Vec<bool>,
    prompt_scores: Vec<Vec<TokenLogprob>>,
}

impl StreamFormat {
    fn chunk(&self, index: usize, text: &str, logprobs: Value, finish: Option<&Completion>) -> Value {
        self.meta.chunk("text_completion", json!({"index": index, "text": text, "logprobs": logprobs}), finish)
    }

    /// The echo of `choice` with its prompt logprobs, once: the scores all arrive before the
    /// choice's first tokens or its end.
    fn pending_echo(&mut self, choice: usize) -> Option<Value> {
        if !std::mem::take(&mut self.echo_pending[choice]) {
            return None;
        }
        let prompt = &self.prompts[choice / self.n];
        let mut lp = CompletionLogprobs::new(&self.info.tokenizer, self.logprobs.unwrap_or(0), 0);
        lp.prompt(&prompt.ids, &std::mem::take(&mut self.prompt_scores[choice]));
        self.offsets[choice] = lp.offset();
        Some(self.chunk(choice, &prompt.text, lp.json(), None))
    }
}

impl ChunkFormatter for StreamFormat {
    fn opening(&mut self) -> Vec<Value> {
        let mut out = Vec::new();
        if !self.echo {
            return out;
        }
        for i in 0..self.offsets.len() {
            if self.logprobs.is_some() {
                self.echo_pending[i] = true;
            } else {
                let text = self.prompts[i / self.n].text.clone();
                self.offsets[i] = text.chars().count();
                out.push(self.chunk(i, &text, Value::Null, None));
            }
        }
        out
    }

    fn prompt_scores(&mut self, choice: usize, scores: &PromptScores) {
        if self.echo_pending[choice] {
            self.prompt_scores[choice].extend(scores.logprobs.iter().cloned());
        }
    }

    fn tokens(&mut self, choice: usize, delta: &TokenDelta) -> Vec<Value> {
        let mut out: Vec<Value> = self.pending_echo(choice).into_iter().collect();
        let logprobs = match (&delta.logprobs, self.logprobs) {
            (Some(entries), Some(top_n)) => {
                let (shape, end) = completion_logprobs(&self.info.tokenizer, entries, top_n, self.offsets[choice]);
                self.offsets[choice] = end;
                shape
            }
            _ if delta.text.is_empty() => return out,
            _ => Value::Null,
        };
        out.push(self.chunk(choice, &delta.text, logprobs, None));
        out
    }

    fn finished(&mut self, choice: usize, done: &Completion) -> Vec<Value> {
        let mut out: Vec<Value> = self.pending_echo(choice).into_iter().collect();
        let logprobs = match self.logprobs {
            Some(top_n) => completion_logprobs(&self.info.tokenizer, &[], top_n, self.offsets[choice]).0,
            None => Value::Null,
        };
        out.push(self.chunk(choice, &done.trailing_text, logprobs, Some(done)));
        out
    }

    fn envelope(&self) -> Map<String, Value> {
        self.meta.envelope("text_completion")
    }
}
