//! `POST /v1/completions`: prompts as a string, list of strings, token ids or list of token-id
//! lists; each prompt × `n` choices; `echo`; integer `logprobs`; streaming or not.
//!
//! Must not know: SSE framing (sse.rs), fan-out mechanics (generation.rs).

use std::sync::Arc;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use kvault_engine::engine::EngineInfo;
use kvault_engine::events::{Completion, TokenDelta};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::error::{parse_json, ApiError};
use super::generation::{self, finish_fields, PromptJob, ResponseMeta, UsageTally};
use super::logprobs::completion_logprobs;
use super::params::{kv_policy, CommonFields};
use super::sse::{self, ChunkFormatter, SseOptions};
use super::state::AppState;

/// OpenAI's completions default.
const DEFAULT_MAX_TOKENS: usize = 16;

#[derive(Debug, Deserialize)]
struct CompletionRequest {
    prompt: Option<Value>,
    echo: Option<bool>,
    logprobs: Option<usize>,
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
    state.check_model(common.model.as_deref())?;
    let kv = kv_policy(&body, &state.kv_defaults)?;
    let engine = state.engine()?.clone();
    let info = engine.info().clone();
    if req.suffix.as_deref().is_some_and(|s| !s.is_empty()) {
        return Err(ApiError::invalid("suffix", "suffix (fill-in-the-middle) is not supported by this server"));
    }
    let echo = req.echo.unwrap_or(false);
    if echo && req.logprobs.is_some() {
        // Echoed prompt tokens would need prompt logprobs, which the engine does not compute.
        return Err(ApiError::invalid("echo", "echo together with logprobs is not supported (prompt logprobs are not computed)"));
    }
    let prompts = parse_prompts(&info, req.prompt.as_ref())?;
    let n = common.n()?;
    let include_usage = common.include_usage()?;
    let mut params = common.params(common.requested_max_tokens().unwrap_or(DEFAULT_MAX_TOKENS))?;
    params.logprobs = req.logprobs;
    let jobs: Vec<PromptJob> = prompts.iter().map(|p| PromptJob { prompt_ids: p.ids.clone(), params: params.clone(), kv }).collect();
    let streams = generation::submit_all(&engine, &state.metrics, &jobs, n)?;

    let meta = ResponseMeta::new("cmpl", state.served_model_name.clone());
    let echoes: Vec<String> = prompts.into_iter().map(|p| if echo { p.text } else { String::new() }).collect();
    if common.stream() {
        let formatter = StreamFormat { meta, info, n, echoes, offsets: vec![0; streams.len()], logprobs: req.logprobs.is_some() };
        return Ok(sse::response(generation::merged(streams), formatter, SseOptions { include_usage, n }));
    }
    let outputs = generation::gather(streams).await?;
    let mut usage = UsageTally::default();
    let choices: Vec<Value> = outputs
        .iter()
        .enumerate()
        .map(|(i, out)| {
            usage.add(i, n, &out.completion);
            let echo_text = &echoes[i / n];
            let logprobs = req.logprobs.map(|_| completion_logprobs(&info.tokenizer, &out.logprobs, echo_text.chars().count()).0);
            let (reason, stop_reason) = finish_fields(&out.completion);
            json!({
                "index": i,
                "text": format!("{echo_text}{}", out.text),
                "logprobs": logprobs,
                "finish_reason": reason,
                "stop_reason": stop_reason,
            })
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
    /// Per prompt: the text echoed before its choices' output (empty without `echo`).
    echoes: Vec<String>,
    /// Per choice: characters sent so far (logprobs' `text_offset`).
    offsets: Vec<usize>,
    logprobs: bool,
}

impl StreamFormat {
    fn chunk(&self, index: usize, text: &str, logprobs: Value, finish: Option<&Completion>) -> Value {
        self.meta.chunk("text_completion", json!({"index": index, "text": text, "logprobs": logprobs}), finish)
    }
}

impl ChunkFormatter for StreamFormat {
    fn opening(&mut self) -> Vec<Value> {
        let mut out = Vec::new();
        for i in 0..self.offsets.len() {
            let echo = self.echoes[i / self.n].clone();
            if !echo.is_empty() {
                self.offsets[i] = echo.chars().count();
                out.push(self.chunk(i, &echo, Value::Null, None));
            }
        }
        out
    }

    fn tokens(&mut self, choice: usize, delta: &TokenDelta) -> Option<Value> {
        let logprobs = match (&delta.logprobs, self.logprobs) {
            (Some(entries), true) => {
                let (shape, end) = completion_logprobs(&self.info.tokenizer, entries, self.offsets[choice]);
                self.offsets[choice] = end;
                shape
            }
            _ if delta.text.is_empty() => return None,
            _ => Value::Null,
        };
        Some(self.chunk(choice, &delta.text, logprobs, None))
    }

    fn finished(&mut self, choice: usize, done: &Completion) -> Value {
        let logprobs = if self.logprobs { completion_logprobs(&self.info.tokenizer, &[], self.offsets[choice]).0 } else { Value::Null };
        self.chunk(choice, &done.trailing_text, logprobs, Some(done))
    }

    fn envelope(&self) -> Map<String, Value> {
        self.meta.envelope("text_completion")
    }
}
