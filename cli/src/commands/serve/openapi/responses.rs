//! The shapes of kvault's responses, for the OpenAPI document only: the handlers build their
//! JSON with `json!`, and the schemathesis test (cli/tests/serve_openapi.rs) checks every
//! response it provokes against these, so a drift between the two fails CI.
//!
//! Must not know: how responses are built.
#![allow(dead_code)] // Fields are read by the schema derive, never by code.

use std::collections::HashMap;

use utoipa::ToSchema;

/// OpenAI's error object.
#[derive(ToSchema)]
pub struct ErrorResponse {
    error: ErrorBody,
}

#[derive(ToSchema)]
pub struct ErrorBody {
    message: String,
    /// invalid_request_error, authentication_error, not_found_error, service_unavailable_error…
    #[schema(rename = "type")]
    kind: String,
    /// The request field at fault, e.g. `kv_budget` or `messages[1].content`.
    #[schema(required = true)]
    param: Option<String>,
    #[schema(required = true)]
    code: Option<String>,
}

#[derive(ToSchema)]
pub struct Usage {
    prompt_tokens: u64,
    completion_tokens: u64,
    total_tokens: u64,
    prompt_tokens_details: PromptTokensDetails,
}

#[derive(ToSchema)]
pub struct PromptTokensDetails {
    /// Prompt tokens served from the prefix cache.
    cached_tokens: u64,
}

/// Why a choice ended: stop (EOS, stop string or token), length, abort.
#[derive(ToSchema)]
pub enum FinishReason {
    #[schema(rename = "stop")]
    Stop,
    #[schema(rename = "length")]
    Length,
    #[schema(rename = "abort")]
    Abort,
}

/// vLLM's `stop_reason`: the stop string or stop token id that matched; null for EOS or length.
#[derive(ToSchema)]
#[serde(untagged)]
pub enum StopReason {
    Text(String),
    TokenId(u32),
}

#[derive(ToSchema)]
pub struct CompletionResponse {
    id: String,
    /// text_completion
    object: String,
    created: u64,
    model: String,
    choices: Vec<CompletionChoice>,
    usage: Usage,
}

#[derive(ToSchema)]
pub struct CompletionChoice {
    index: u64,
    /// The echoed prompt (with `echo`) followed by the completion.
    text: String,
    #[schema(required = true)]
    logprobs: Option<CompletionLogprobs>,
    #[schema(required = true)]
    finish_reason: Option<FinishReason>,
    #[schema(required = true)]
    stop_reason: Option<StopReason>,
    /// With `prompt_logprobs`: null for the first prompt token, then token id → its logprob.
    prompt_logprobs: Option<Vec<Option<HashMap<String, PromptLogprob>>>>,
}

/// OpenAI's completions logprobs: parallel lists, one entry per token (echoed prompt tokens
/// first, the first of them with null logprob and top).
#[derive(ToSchema)]
pub struct CompletionLogprobs {
    tokens: Vec<String>,
    token_logprobs: Vec<Option<f64>>,
    /// The `logprobs` most likely tokens plus the chosen one, text → logprob.
    top_logprobs: Vec<Option<HashMap<String, f64>>>,
    /// Character offset of each token in the choice's text.
    text_offset: Vec<u64>,
}

/// vLLM's `Logprob`.
#[derive(ToSchema)]
pub struct PromptLogprob {
    logprob: f64,
    /// 1-based place in the distribution; null when outside the reported top-n.
    #[schema(required = true)]
    rank: Option<u64>,
    decoded_token: String,
}

#[derive(ToSchema)]
pub struct ChatCompletionResponse {
    id: String,
    /// chat.completion
    object: String,
    created: u64,
    model: String,
    choices: Vec<ChatChoice>,
    usage: Usage,
    /// With `prompt_logprobs`: the rendered prompt's tokens (null first).
    prompt_logprobs: Option<Vec<Option<HashMap<String, PromptLogprob>>>>,
}

#[derive(ToSchema)]
pub struct ChatChoice {
    index: u64,
    message: ChatMessageOut,
    #[schema(required = true)]
    logprobs: Option<ChatLogprobs>,
    #[schema(required = true)]
    finish_reason: Option<FinishReason>,
    #[schema(required = true)]
    stop_reason: Option<StopReason>,
}

#[derive(ToSchema)]
pub struct ChatMessageOut {
    /// assistant
    role: String,
    #[schema(required = true)]
    content: Option<String>,
}

#[derive(ToSchema)]
pub struct ChatLogprobs {
    content: Vec<ChatTokenLogprob>,
}

#[derive(ToSchema)]
pub struct ChatTokenLogprob {
    token: String,
    logprob: f64,
    bytes: Vec<u8>,
    top_logprobs: Vec<ChatTopLogprob>,
}

#[derive(ToSchema)]
pub struct ChatTopLogprob {
    token: String,
    logprob: f64,
    bytes: Vec<u8>,
}

#[derive(ToSchema)]
pub struct ModelList {
    /// list
    object: String,
    data: Vec<ModelCard>,
}

#[derive(ToSchema)]
pub struct ModelCard {
    id: String,
    /// model
    object: String,
    created: u64,
    owned_by: String,
    root: String,
    #[schema(required = true)]
    parent: Option<String>,
    max_model_len: u64,
}

#[derive(ToSchema)]
pub struct TokenizeResponse {
    tokens: Vec<u32>,
    count: u64,
    max_model_len: u64,
}

#[derive(ToSchema)]
pub struct DetokenizeResponse {
    prompt: String,
}

/// vLLM's `/tokenizer_info` fields that clients read.
#[derive(ToSchema)]
pub struct TokenizerInfo {
    tokenizer_class: String,
    #[schema(required = true)]
    eos_token: Option<String>,
    #[schema(required = true)]
    bos_token: Option<String>,
    #[schema(required = true)]
    pad_token: Option<String>,
    model_max_length: u64,
    vocab_size: u64,
}

#[derive(ToSchema)]
pub struct VersionResponse {
    version: String,
}

/// One server-sent event of a streamed `/v1/completions`: `data` holds a `CompletionChunk` (or
/// an `ErrorResponse`) as JSON text; the last event's data is `[DONE]`.
#[derive(ToSchema)]
pub struct CompletionEvent {
    /// Replaced in the document by "[DONE]" or JSON text of the chunk (see openapi.rs).
    data: String,
    event: Option<String>,
    id: Option<String>,
    retry: Option<u64>,
}

/// One server-sent event of a streamed `/v1/chat/completions` (data: a `ChatCompletionChunk`).
#[derive(ToSchema)]
pub struct ChatCompletionEvent {
    /// Replaced in the document by "[DONE]" or JSON text of the chunk (see openapi.rs).
    data: String,
    event: Option<String>,
    id: Option<String>,
    retry: Option<u64>,
}

/// A streamed completion's chunk: one choice's new text, or (with `include_usage`) a last
/// chunk with no choices and the usage.
#[derive(ToSchema)]
pub struct CompletionChunk {
    id: String,
    /// text_completion
    object: String,
    created: u64,
    model: String,
    choices: Vec<CompletionChoice>,
    /// Null on ordinary chunks when usage was asked for; absent otherwise.
    usage: Option<Usage>,
}

#[derive(ToSchema)]
pub struct ChatCompletionChunk {
    id: String,
    /// chat.completion.chunk
    object: String,
    created: u64,
    model: String,
    choices: Vec<ChatChunkChoice>,
    usage: Option<Usage>,
}

#[derive(ToSchema)]
pub struct ChatChunkChoice {
    index: u64,
    delta: ChatDelta,
    #[schema(required = true)]
    logprobs: Option<ChatLogprobs>,
    #[schema(required = true)]
    finish_reason: Option<FinishReason>,
    #[schema(required = true)]
    stop_reason: Option<StopReason>,
}

/// The first delta of a choice has the role; the others carry content (the last may be empty).
#[derive(ToSchema)]
pub struct ChatDelta {
    role: Option<String>,
    content: Option<String>,
}
