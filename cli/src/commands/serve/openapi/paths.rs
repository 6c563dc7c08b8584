//! One documented operation per route (utoipa reads these signatures-only functions): methods,
//! bodies, every status a route answers with and its media types.
//!
//! Must not know: the handlers (routes.rs maps the same paths onto them; the route test in
//! openapi.rs and the schemathesis run keep the two in step).
#![allow(dead_code)] // Only the generated `__path_*` items are used.

use super::kv_state::KvStateResponse;
use super::responses::*;
use super::{ChatBody, CompletionBody};
use crate::commands::serve::tokenize::{DetokenizeRequest, TokenizeRequest};

/// The web page: chat playground and live KV dashboard (absent with `--no-web-ui`).
#[utoipa::path(get, path = "/", tag = "kvault", responses(
    (status = 200, description = "The page", content_type = "text/html", body = String),
    (status = 404, description = "Started with --no-web-ui", body = ErrorResponse),
))]
pub fn index() {}

/// The page's scripts and style sheet: `common.js`, `playground.js`, `dashboard.js`, `style.css`.
#[utoipa::path(get, path = "/ui/{asset}", tag = "kvault",
    params(("asset" = String, Path, description = "common.js, playground.js, dashboard.js or style.css", example = "dashboard.js")),
    responses(
        (status = 200, description = "The asset", content(
            (String = "text/javascript"),
            (String = "text/css"),
        )),
        (status = 404, description = "No such asset, or started with --no-web-ui", body = ErrorResponse),
    ))]
pub fn ui_asset() {}

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "kvault", responses(
    (status = 200, description = "OpenAPI 3.1", content_type = "application/json", body = Object),
))]
pub fn openapi_json() {}

/// 200 once the model has loaded.
#[utoipa::path(get, path = "/health", tag = "vllm", responses(
    (status = 200, description = "Ready"),
    (status = 503, description = "The model is still loading", body = ErrorResponse),
))]
pub fn health() {}

#[utoipa::path(get, path = "/version", tag = "vllm", responses(
    (status = 200, description = "Version and build", body = VersionResponse),
))]
pub fn version() {}

/// Prometheus text exposition (`kvault:` metrics).
#[utoipa::path(get, path = "/metrics", tag = "vllm", responses(
    (status = 200, description = "Metrics", content_type = "text/plain", body = String),
))]
pub fn metrics() {}

/// Text or chat messages to token ids.
#[utoipa::path(post, path = "/tokenize", tag = "vllm", request_body = TokenizeRequest, responses(
    (status = 200, description = "Token ids", body = TokenizeResponse),
    (status = 400, description = "Invalid request", body = ErrorResponse),
    (status = 404, description = "Unknown model", body = ErrorResponse),
    (status = 503, description = "The model is still loading", body = ErrorResponse),
))]
pub fn tokenize() {}

/// Token ids to text.
#[utoipa::path(post, path = "/detokenize", tag = "vllm", request_body = DetokenizeRequest, responses(
    (status = 200, description = "Text", body = DetokenizeResponse),
    (status = 400, description = "Invalid request", body = ErrorResponse),
    (status = 404, description = "Unknown model", body = ErrorResponse),
    (status = 503, description = "The model is still loading", body = ErrorResponse),
))]
pub fn detokenize() {}

/// The special tokens and context length (read by lm-evaluation-harness's remote tokenizer).
#[utoipa::path(get, path = "/tokenizer_info", tag = "vllm", responses(
    (status = 200, description = "Tokenizer facts", body = TokenizerInfo),
    (status = 503, description = "The model is still loading", body = ErrorResponse),
))]
pub fn tokenizer_info() {}

/// The served model.
#[utoipa::path(get, path = "/v1/models", tag = "openai", security((), ("bearer" = [])), responses(
    (status = 200, description = "One model", body = ModelList),
    (status = 401, description = "Missing or wrong API key", body = ErrorResponse),
    (status = 503, description = "The model is still loading", body = ErrorResponse),
))]
pub fn models() {}

/// Text completions. With `stream: true` the answer is server-sent events (`data: {chunk}`
/// lines shaped like the JSON response with one choice each, then `data: [DONE]`).
/// `echo` + `logprobs` (+ `max_tokens: 0`) scores the prompt: lm-evaluation-harness's
/// loglikelihood requests.
#[utoipa::path(post, path = "/v1/completions", tag = "openai", request_body = CompletionBody,
    security((), ("bearer" = [])), responses(
    (status = 200, description = "The completion, or its event stream", content(
        (CompletionResponse = "application/json"),
        (CompletionEvent = "text/event-stream"),
    )),
    (status = 400, description = "Invalid request (the error names the field)", body = ErrorResponse),
    (status = 401, description = "Missing or wrong API key", body = ErrorResponse),
    (status = 404, description = "Unknown model", body = ErrorResponse),
    (status = 503, description = "Loading, queue full or shutting down (Retry-After)", body = ErrorResponse),
))]
pub fn completions() {}

/// Chat completions (the model's chat template). Streaming as OpenAI does it.
#[utoipa::path(post, path = "/v1/chat/completions", tag = "openai", request_body = ChatBody,
    security((), ("bearer" = [])), responses(
    (status = 200, description = "The completion, or its event stream", content(
        (ChatCompletionResponse = "application/json"),
        (ChatCompletionEvent = "text/event-stream"),
    )),
    (status = 400, description = "Invalid request (the error names the field)", body = ErrorResponse),
    (status = 401, description = "Missing or wrong API key", body = ErrorResponse),
    (status = 404, description = "Unknown model", body = ErrorResponse),
    (status = 503, description = "Loading, queue full or shutting down (Retry-After)", body = ErrorResponse),
))]
pub fn chat_completions() {}

/// Where the KV memory is now: pool occupancy, each request's blocks, policy, budget and
/// tokens held, engine counters, offload tiers. The web dashboard polls it.
#[utoipa::path(get, path = "/v1/kv/state", tag = "kvault", security((), ("bearer" = [])), responses(
    (status = 200, description = "The KV picture as of the last engine step", body = KvStateResponse),
    (status = 401, description = "Missing or wrong API key", body = ErrorResponse),
    (status = 503, description = "The model is still loading", body = ErrorResponse),
))]
pub fn kv_state() {}
