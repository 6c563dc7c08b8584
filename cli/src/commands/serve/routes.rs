//! The route table, the bearer-key check on `/v1/*` (as vLLM guards it; the KV state included),
//! and the small endpoints: `/health`, `/version`, `/metrics`, `/v1/models`, `/tokenizer_info`,
//! `/openapi.json`, and OpenAI-shaped 404/405s. The web page (`/`) is merged in unless
//! `--no-web-ui`.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;

use super::error::ApiError;
use super::state::AppState;
use super::{chat, completions, kv_state, openapi, tokenize, web};

pub fn router(state: Arc<AppState>) -> Router {
    let v1 = Router::new()
        .route("/v1/models", get(models))
        .route("/v1/completions", post(completions::handle))
        .route("/v1/chat/completions", post(chat::handle))
        .route("/v1/kv/state", get(kv_state::handle))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_api_key));
    let mut router = Router::new()
        .route("/health", get(health))
        .route("/version", get(version))
        .route("/metrics", get(metrics))
        .route("/tokenize", post(tokenize::tokenize))
        .route("/detokenize", post(tokenize::detokenize))
        .route("/tokenizer_info", get(tokenize::tokenizer_info))
        .route("/openapi.json", get(openapi::handle))
        .merge(v1);
    if state.web_ui {
        router = router.merge(web::routes());
    }
    router
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
}

async fn require_api_key(State(state): State<Arc<AppState>>, headers: HeaderMap, request: Request, next: Next) -> Response {
    if let Some(key) = &state.api_key {
        let given = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
        if given.map(str::trim) != Some(key.as_str()) {
            return ApiError::unauthorized().into_response();
        }
    }
    next.run(request).await
}

async fn health(State(state): State<Arc<AppState>>) -> Response {
    match state.engine_if_loaded() {
        Some(_) => StatusCode::OK.into_response(),
        None => ApiError::loading().into_response(),
    }
}

async fn version() -> Json<serde_json::Value> {
    Json(json!({"version": crate::VERSION}))
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    let snapshot = state.engine_if_loaded().map(|e| e.stats());
    let text = state.metrics.render(snapshot.as_ref());
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], text).into_response()
}

async fn models(State(state): State<Arc<AppState>>) -> Result<Json<serde_json::Value>, ApiError> {
    let info = state.engine()?.info();
    Ok(Json(json!({
        "object": "list",
        "data": [{
            "id": state.served_model_name,
            "object": "model",
            "created": state.started_unix,
            "owned_by": "kvault",
            "root": state.served_model_name,
            "parent": null,
            "max_model_len": info.max_model_len,
        }],
    })))
}

async fn not_found(request: Request) -> ApiError {
    ApiError::route_not_found(request.method().as_str(), request.uri().path())
}

async fn method_not_allowed(request: Request) -> ApiError {
    ApiError {
        status: StatusCode::METHOD_NOT_ALLOWED,
        message: format!("{} is not allowed on {}", request.method(), request.uri().path()),
        param: None,
        code: Some("method_not_allowed"),
    }
}
