//! `POST /tokenize` and `POST /detokenize` (vLLM's shapes): text or chat messages to token ids
//! with the served model's tokenizer and template, and back; `GET /tokenizer_info`, the special
//! tokens a client-side harness needs (lm-evaluation-harness's remote tokenizer reads it).

use std::sync::Arc;

use axum::extract::State;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use utoipa::ToSchema;

use super::chat::{chat_prompt, convert_messages, MessageIn};
use super::error::{parse_json, ApiError};
use super::state::AppState;

/// Give `prompt` (text) or `messages` (chat, rendered with the template), not both.
#[derive(Debug, Deserialize, ToSchema)]
pub struct TokenizeRequest {
    model: Option<String>,
    prompt: Option<String>,
    messages: Option<Vec<MessageIn>>,
    /// Default: true for a prompt (BOS as the completions endpoint adds it), false for
    /// messages (the template writes its own special tokens).
    add_special_tokens: Option<bool>,
    add_generation_prompt: Option<bool>,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct DetokenizeRequest {
    model: Option<String>,
    tokens: Vec<u32>,
}

pub async fn tokenize(State(state): State<Arc<AppState>>, body: axum::body::Bytes) -> Result<Json<Value>, ApiError> {
    let req: TokenizeRequest = parse_json(&body)?;
    state.check_model(req.model.as_deref())?;
    let info = state.engine()?.info().clone();
    let tokens = match (&req.prompt, &req.messages) {
        (Some(_), Some(_)) => return Err(ApiError::bad_request("give either `prompt` or `messages`, not both")),
        (Some(prompt), None) => info
            .tokenizer
            .encode(prompt, req.add_special_tokens.unwrap_or(true))
            .map_err(|e| ApiError::invalid("prompt", format!("{e:#}")))?,
        (None, Some(messages)) => {
            let messages = convert_messages(messages)?;
            let mut ids = chat_prompt(&state, &info, &messages, req.add_generation_prompt.unwrap_or(true), None, None)?;
            // Asked explicitly: a BOS on top of the rendered template, unless it already starts so.
            if let (Some(true), Some(bos)) = (req.add_special_tokens, info.special_tokens.bos_token_id) {
                if ids.first() != Some(&bos) {
                    ids.insert(0, bos);
                }
            }
            ids
        }
        (None, None) => return Err(ApiError::invalid("prompt", "give `prompt` (text) or `messages` (chat)")),
    };
    Ok(Json(json!({"tokens": tokens, "count": tokens.len(), "max_model_len": info.max_model_len})))
}

pub async fn detokenize(State(state): State<Arc<AppState>>, body: axum::body::Bytes) -> Result<Json<Value>, ApiError> {
    let req: DetokenizeRequest = parse_json(&body)?;
    state.check_model(req.model.as_deref())?;
    let info = state.engine()?.info().clone();
    if let Some(bad) = req.tokens.iter().find(|&&id| id as usize >= info.vocab_size) {
        return Err(ApiError::invalid("tokens", format!("token id {bad} is outside the vocabulary (size {})", info.vocab_size)));
    }
    let prompt = info.tokenizer.decode(&req.tokens, false).map_err(|e| ApiError::invalid("tokens", format!("{e:#}")))?;
    Ok(Json(json!({"prompt": prompt})))
}

/// vLLM's `/tokenizer_info`, the fields clients read: the special tokens' texts and the context.
pub async fn tokenizer_info(State(state): State<Arc<AppState>>) -> Result<Json<Value>, ApiError> {
    let info = state.engine()?.info().clone();
    let special = &info.special_tokens;
    let text = |id: Option<u32>| id.and_then(|id| info.tokenizer.id_to_token(id));
    let eos = special.eos_token.clone().or_else(|| text(special.eos_token_ids.first().copied()));
    let bos = special.bos_token.clone().or_else(|| text(special.bos_token_id));
    Ok(Json(json!({
        "tokenizer_class": "kvault",
        "eos_token": eos,
        "bos_token": bos,
        "pad_token": text(special.pad_token_id),
        "model_max_length": info.max_model_len,
        "vocab_size": info.vocab_size,
    })))
}
