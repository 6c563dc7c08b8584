//! `POST /v1/chat/completions`: OpenAI messages rendered with the model's chat template,
//! `n` choices, chat-shaped logprobs, streaming with a first role delta per choice.
//!
//! Owns: message validation (roles, string or text-part content) and the chat prompt, which
//! `/tokenize` reuses. Must not know: SSE framing or fan-out mechanics.

use std::sync::Arc;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use kvault_engine::engine::EngineInfo;
use kvault_engine::events::{Completion, TokenDelta};
use kvault_engine::sampler::MAX_LOGPROBS;
use kvault_models::chat_template::ChatMessage;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use utoipa::ToSchema;

use super::error::{parse_json, ApiError};
use super::generation::{self, finish_fields, PromptJob, ResponseMeta, UsageTally};
use super::logprobs::{chat_logprobs, vllm_prompt_logprobs};
use super::params::{check_prompt_logprobs, kv_policy, CommonFields};
use super::sse::{self, ChunkFormatter, SseOptions};
use super::state::AppState;

/// One chat message.
#[derive(Debug, Deserialize, ToSchema)]
pub struct MessageIn {
    /// system, developer (read as system), user, assistant or tool.
    #[schema(example = "user")]
    pub role: String,
    /// A string, an array of content parts, or absent/null (assistant turns).
    #[serde(default)]
    #[schema(schema_with = super::openapi::content_schema)]
    pub content: Value,
    pub name: Option<String>,
    /// An assistant turn's tool calls, passed to the chat template as given.
    #[schema(value_type = Option<Vec<Object>>)]
    pub tool_calls: Option<Value>,
    pub tool_call_id: Option<String>,
}

/// The fields only `/v1/chat/completions` has.
#[derive(Debug, Deserialize, ToSchema)]
pub struct ChatRequest {
    /// Required: the conversation, rendered with the model's chat template.
    #[schema(required = true, min_items = 1)]
    messages: Option<Vec<MessageIn>>,
    /// Return each generated token's logprob.
    logprobs: Option<bool>,
    /// With `logprobs`: this many alternatives per token (at most 20).
    #[schema(maximum = 20)]
    top_logprobs: Option<usize>,
    /// vLLM extension: score the rendered prompt's tokens, with this many alternatives each
    /// (at most 20); returned as the response's `prompt_logprobs`. Not with `stream`.
    #[schema(maximum = 20)]
    prompt_logprobs: Option<usize>,
    /// Tool definitions, passed to the chat template as given.
    #[schema(value_type = Option<Vec<Object>>)]
    tools: Option<Value>,
    /// vLLM extensions: extra template variables and the generation-prompt switch.
    #[schema(value_type = Option<Object>)]
    chat_template_kwargs: Option<Value>,
    add_generation_prompt: Option<bool>,
}

/// Messages → OpenAI-validated template messages. `messages[i]...` names the bad field.
pub fn convert_messages(messages: &[MessageIn]) -> Result<Vec<ChatMessage>, ApiError> {
    if messages.is_empty() {
        return Err(ApiError::invalid("messages", "messages must contain at least one message"));
    }
    messages
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let role = match m.role.as_str() {
                // OpenAI's newer name for the system role; templates only know `system`.
                "developer" => "system",
                r @ ("system" | "user" | "assistant" | "tool") => r,
                other => {
                    return Err(ApiError::invalid(
                        format!("messages[{i}].role"),
                        format!("unknown role `{other}`; expected system, user, assistant or tool"),
                    ))
                }
            };
            let content = content_text(&m.content, i)?;
            if content.is_none() && role != "assistant" {
                return Err(ApiError::invalid(format!("messages[{i}].content"), format!("a {role} message needs content")));
            }
            Ok(ChatMessage {
                role: role.to_string(),
                content,
                tool_calls: m.tool_calls.clone(),
                name: m.name.clone(),
                tool_call_id: m.tool_call_id.clone(),
            })
        })
        .collect()
}

/// A string, or text parts joined with newlines (as vLLM flattens them for string templates).
fn content_text(content: &Value, i: usize) -> Result<Option<String>, ApiError> {
    match content {
        Value::Null => Ok(None),
        Value::String(s) => Ok(Some(s.clone())),
        Value::Array(parts) => {
            let texts = parts
                .iter()
                .enumerate()
                .map(|(j, part)| {
                    let param = format!("messages[{i}].content[{j}]");
                    match (part.get("type").and_then(Value::as_str), part.get("text").and_then(Value::as_str)) {
                        (Some("text"), Some(text)) => Ok(text.to_string()),
                        (Some("text"), None) => Err(ApiError::invalid(param, "a text content part needs a string `text`")),
                        (Some(other), _) => Err(ApiError::invalid(param, format!("content part type `{other}` is not supported; only `text` is"))),
                        (None, _) => Err(ApiError::invalid(param, "each content part needs a `type`")),
                    }
                })
                .collect::<Result<Vec<_>, _>>()?;
            Ok(Some(texts.join("\n")))
        }
        _ => Err(ApiError::invalid(format!("messages[{i}].content"), "content must be a string or an array of content parts")),
    }
}

/// Renders and tokenizes a conversation with the server's template (`--chat-template`), else
/// the model's.
pub fn chat_prompt(
    state: &AppState,
    info: &EngineInfo,
    messages: &[ChatMessage],
    add_generation_prompt: bool,
    tools: Option<&Value>,
    extra: Option<&Value>,
) -> Result<Vec<u32>, ApiError> {
    let template = state.chat_template(info).ok_or_else(|| {
        ApiError::invalid(
            "messages",
            "this model has no chat template, so /v1/chat/completions cannot format messages; use /v1/completions \
             or start the server with --chat-template",
        )
    })?;
    let text = template
        .render_with(messages, add_generation_prompt, tools, extra)
        .map_err(|e| ApiError::invalid("messages", format!("{e:#}")))?;
    // The template writes every special token itself, so none are added here.
    info.tokenizer.encode(&text, false).map_err(|e| ApiError::invalid("messages", format!("{e:#}")))
}

pub async fn handle(State(state): State<Arc<AppState>>, body: axum::body::Bytes) -> Result<Response, ApiError> {
    let req: ChatRequest = parse_json(&body)?;
    let common: CommonFields = parse_json(&body)?;
    let kv_defaults = state.check_model(common.model.as_deref())?;
    let kv = kv_policy(&body, &kv_defaults)?;
    let engine = state.engine()?.clone();
    let info = engine.info().clone();
    let messages = convert_messages(req.messages.as_deref().ok_or_else(|| ApiError::invalid("messages", "messages is required"))?)?;
    let logprobs = match (req.logprobs.unwrap_or(false), req.top_logprobs) {
        (_, Some(k)) if k > MAX_LOGPROBS => return Err(ApiError::invalid("top_logprobs", format!("top_logprobs must be at most {MAX_LOGPROBS}, got {k}"))),
        (false, Some(_)) => return Err(ApiError::invalid("top_logprobs", "top_logprobs needs logprobs set to true")),
        (true, k) => Some(k.unwrap_or(0)),
        (false, None) => None,
    };
    let prompt_logprobs = check_prompt_logprobs(req.prompt_logprobs, common.stream())?;
    let add_generation_prompt = req.add_generation_prompt.unwrap_or(true);
    let prompt_ids = chat_prompt(&state, &info, &messages, add_generation_prompt, req.tools.as_ref(), req.chat_template_kwargs.as_ref())?;
    let n = common.n()?;
    let include_usage = common.include_usage()?;
    // OpenAI's chat default is "as long as the context allows" (a budgeted request's context is
    // the model's, not the cache's).
    let max_len = info.max_len_for(&kv);
    let max_tokens = common.requested_max_tokens().unwrap_or_else(|| max_len.saturating_sub(prompt_ids.len()).max(1));
    let mut params = common.params(max_tokens, prompt_logprobs)?;
    params.logprobs = logprobs;
    let job = PromptJob { prompt_ids, params, kv };
    let streams = generation::submit_all(&engine, &state.metrics, std::slice::from_ref(&job), n, state.max_choices)?;

    let meta = ResponseMeta::new("chatcmpl", state.served_model_name.clone());
    if common.stream() {
        let formatter = StreamFormat { meta, info, choices: n, logprobs: logprobs.is_some() };
        return Ok(sse::response(generation::merged(streams), formatter, SseOptions { include_usage, n }));
    }
    let outputs = generation::gather(streams).await?;
    let mut usage = UsageTally::default();
    let choices: Vec<Value> = outputs
        .iter()
        .enumerate()
        .map(|(i, out)| {
            usage.add(i, n, &out.completion);
            let (reason, stop_reason) = finish_fields(&out.completion);
            json!({
                "index": i,
                "message": {"role": "assistant", "content": out.text},
                "logprobs": logprobs.map(|_| chat_logprobs(&info.tokenizer, &out.logprobs)),
                "finish_reason": reason,
                "stop_reason": stop_reason,
            })
        })
        .collect();
    let mut body = meta.envelope("chat.completion");
    body.insert("choices".into(), Value::Array(choices));
    body.insert("usage".into(), usage.json());
    if let (Some(top_n), Some(first)) = (prompt_logprobs, outputs.first()) {
        // vLLM puts the (shared) prompt's scores beside the choices.
        body.insert("prompt_logprobs".into(), vllm_prompt_logprobs(&info.tokenizer, &job.prompt_ids, &first.prompt_logprobs, top_n));
    }
    Ok(axum::Json(Value::Object(body)).into_response())
}

struct StreamFormat {
    meta: ResponseMeta,
    info: Arc<EngineInfo>,
    choices: usize,
    logprobs: bool,
}

impl StreamFormat {
    fn chunk(&self, index: usize, delta: Value, logprobs: Value, finish: Option<&Completion>) -> Value {
        self.meta.chunk("chat.completion.chunk", json!({"index": index, "delta": delta, "logprobs": logprobs}), finish)
    }
}

impl ChunkFormatter for StreamFormat {
    fn opening(&mut self) -> Vec<Value> {
        (0..self.choices).map(|i| self.chunk(i, json!({"role": "assistant", "content": ""}), Value::Null, None)).collect()
    }

    fn tokens(&mut self, choice: usize, delta: &TokenDelta) -> Vec<Value> {
        let logprobs = match (&delta.logprobs, self.logprobs) {
            (Some(entries), true) => chat_logprobs(&self.info.tokenizer, entries),
            _ if delta.text.is_empty() => return Vec::new(),
            _ => Value::Null,
        };
        vec![self.chunk(choice, json!({"content": delta.text}), logprobs, None)]
    }

    fn finished(&mut self, choice: usize, done: &Completion) -> Vec<Value> {
        let delta = if done.trailing_text.is_empty() { json!({}) } else { json!({"content": done.trailing_text}) };
        vec![self.chunk(choice, delta, Value::Null, Some(done))]
    }

    fn envelope(&self) -> Map<String, Value> {
        self.meta.envelope("chat.completion.chunk")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn messages(json: &str) -> Result<Vec<ChatMessage>, ApiError> {
        let m: Vec<MessageIn> = serde_json::from_str(json).unwrap();
        convert_messages(&m)
    }

    #[test]
    fn text_parts_are_joined_and_assistant_content_may_be_absent() {
        let m = messages(
            r#"[{"role": "developer", "content": "be brief"},
                {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
                {"role": "assistant", "tool_calls": [{"id": "1"}]},
                {"role": "tool", "content": "42", "tool_call_id": "1"}]"#,
        )
        .unwrap();
        assert_eq!(m[0].role, "system");
        assert_eq!(m[1].content.as_deref(), Some("a\nb"));
        assert_eq!(m[2].content, None);
        assert_eq!(m[3].tool_call_id.as_deref(), Some("1"));
    }

    #[test]
    fn bad_messages_name_the_exact_field() {
        let cases = [
            (r#"[]"#, "messages"),
            (r#"[{"role": "wizard", "content": "x"}]"#, "messages[0].role"),
            (r#"[{"role": "user", "content": "x"}, {"role": "user"}]"#, "messages[1].content"),
            (r#"[{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]"#, "messages[0].content[0]"),
            (r#"[{"role": "user", "content": 5}]"#, "messages[0].content"),
        ];
        for (json, param) in cases {
            let e = messages(json).unwrap_err();
            assert_eq!(e.param.as_deref(), Some(param), "{json}: {}", e.message);
        }
    }
}
