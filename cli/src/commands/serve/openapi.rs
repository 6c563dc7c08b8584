//! `GET /openapi.json`: the OpenAPI 3.1 document of every route, derived with utoipa from the
//! request types the handlers parse (their doc comments are the field descriptions, the
//! `kv_*` extensions included) and from the response shapes in `openapi/responses.rs`.
//!
//! The generating endpoints parse one body several times into field groups (endpoint fields,
//! `CommonFields`, `KvFields`); the document shows each body as the union of its groups.
//! Must not know: how handlers work; nothing here runs on a request except serving the text.

mod kv_state;
mod paths;
mod responses;

use std::sync::{Arc, OnceLock};

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, OneOfBuilder, Schema, Type};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::RefOr;
use serde_json::{json, Value};
use utoipa::{Modify, OpenApi, ToSchema};

use super::chat::ChatRequest;
use super::completions::CompletionRequest;
use super::params::CommonFields;
use super::state::AppState;
use crate::kv::KvFields;

/// The body of `POST /v1/completions`.
#[derive(ToSchema)]
#[schema(example = json!({"prompt": "Once upon a time", "max_tokens": 16, "temperature": 0, "kv_policy": "h2o", "kv_budget": 64}))]
#[allow(dead_code)]
pub struct CompletionBody {
    #[serde(flatten)]
    completion: CompletionRequest,
    #[serde(flatten)]
    sampling: CommonFields,
    #[serde(flatten)]
    kv: KvFields,
}

/// The body of `POST /v1/chat/completions`.
#[derive(ToSchema)]
#[schema(example = json!({"messages": [{"role": "user", "content": "Hi!"}], "max_tokens": 16, "kv_policy": "streaming", "kv_budget": 64}))]
#[allow(dead_code)]
pub struct ChatBody {
    #[serde(flatten)]
    chat: ChatRequest,
    #[serde(flatten)]
    sampling: CommonFields,
    #[serde(flatten)]
    kv: KvFields,
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "kvault",
        description = "kvault's OpenAI-compatible server. kvault extensions: the `kv_*` request fields \
                       (a per-request KV-cache policy and budget, also accepted as `model: NAME?kv_policy=…`), \
                       vLLM's `prompt_logprobs`, `top_k`, `min_p`, `ignore_eos`, and `GET /v1/kv/state`.",
        license(name = "Apache-2.0")
    ),
    paths(
        paths::index, paths::ui_asset, paths::openapi_json,
        paths::health, paths::version, paths::metrics,
        paths::tokenize, paths::detokenize, paths::tokenizer_info,
        paths::models, paths::completions, paths::chat_completions, paths::kv_state,
    ),
    // Reached only through the events' `data` (patched in by `document`).
    components(schemas(responses::CompletionChunk, responses::ChatCompletionChunk)),
    modifiers(&BearerAuth),
    tags(
        (name = "openai", description = "OpenAI-compatible endpoints"),
        (name = "vllm", description = "vLLM-compatible extras"),
        (name = "kvault", description = "kvault's own endpoints"),
    )
)]
struct ApiDoc;

/// `--api-key` makes `/v1/*` (the KV state included) require `Authorization: Bearer KEY`.
struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        let bearer = HttpBuilder::new()
            .scheme(HttpAuthScheme::Bearer)
            .description(Some("The --api-key the server was started with; not needed when it has none."))
            .build();
        components.add_security_scheme("bearer", SecurityScheme::Http(bearer));
    }
}

/// The document as JSON text, the same for every server (built once).
pub fn document() -> &'static str {
    static DOC: OnceLock<String> = OnceLock::new();
    DOC.get_or_init(|| {
        let mut doc = ApiDoc::openapi();
        doc.info.version = crate::VERSION.to_string();
        // Serializing a tree of plain data cannot fail; an empty document would show it did.
        let mut doc = serde_json::to_value(&doc).unwrap_or_default();
        let schemas = &mut doc["components"]["schemas"];
        // An event's `data` is JSON text of a chunk (or an error), or `[DONE]` at the end;
        // JSON Schema says so with contentMediaType + contentSchema, which utoipa cannot write.
        for (event, chunk) in [("CompletionEvent", "CompletionChunk"), ("ChatCompletionEvent", "ChatCompletionChunk")] {
            schemas[event]["properties"]["data"] = json!({
                "oneOf": [
                    {"type": "string", "const": "[DONE]"},
                    {
                        "type": "string",
                        "contentMediaType": "application/json",
                        "contentSchema": {"anyOf": [
                            {"$ref": format!("#/components/schemas/{chunk}")},
                            {"$ref": "#/components/schemas/ErrorResponse"},
                        ]},
                    },
                ],
            });
        }
        serde_json::to_string_pretty(&doc).unwrap_or_default()
    })
}

/// What a loaded server knows that bounds valid requests: the model's name, the context, the
/// vocabulary, the completions one request may ask for.
pub struct ServerFacts {
    pub model: String,
    pub max_context_len: usize,
    pub vocab_size: usize,
    pub max_choices: usize,
}

/// The document with this server's bounds written in: `model` is this server's name (optionally
/// with KV settings), `max_tokens` at most the context, token ids inside the vocabulary, `n` at
/// most what the engine holds. Clients and fuzzers then know what the server will accept.
pub fn specialized(facts: &ServerFacts) -> String {
    let mut doc: Value = serde_json::from_str(document()).unwrap_or_default();
    let schemas = &mut doc["components"]["schemas"];
    let escaped: String = facts.model.chars().flat_map(|c| if "\\^$.|?*+()[]{}".contains(c) { vec!['\\', c] } else { vec![c] }).collect();
    let model = json!({
        "description": "This server's model name; it may carry KV settings as a query string, NAME?kv_policy=h2o&kv_budget=64.",
        "anyOf": [
            {"type": "null"},
            {"const": facts.model},
            {"type": "string", "pattern": format!("^{escaped}\\?kv_policy=(full|streaming|h2o|snapkv)(&kv_budget=[1-9][0-9]{{0,3}})?$")},
        ],
    });
    for body in ["CommonFields", "TokenizeRequest", "DetokenizeRequest"] {
        schemas[body]["properties"]["model"] = model.clone();
    }
    for field in ["max_tokens", "max_completion_tokens"] {
        schemas["CommonFields"]["properties"][field]["maximum"] = json!(facts.max_context_len);
    }
    schemas["CommonFields"]["properties"]["n"]["maximum"] = json!(facts.max_choices.min(super::params::MAX_N));
    let last_id = json!(facts.vocab_size.saturating_sub(1));
    schemas["DetokenizeRequest"]["properties"]["tokens"]["items"]["maximum"] = last_id.clone();
    if let Some(forms) = schemas["CompletionRequest"]["properties"]["prompt"]["oneOf"].as_array_mut() {
        forms[2]["items"]["maximum"] = last_id.clone();
        forms[3]["items"]["items"]["maximum"] = last_id;
    }
    serde_json::to_string_pretty(&doc).unwrap_or_default()
}

pub async fn handle(State(state): State<Arc<AppState>>) -> Response {
    static LOADED: OnceLock<String> = OnceLock::new();
    let text = match state.engine_if_loaded() {
        Some(engine) => LOADED.get_or_init(|| {
            let info = engine.info();
            specialized(&ServerFacts {
                model: state.served_model_name.clone(),
                max_context_len: info.max_context_len,
                vocab_size: info.vocab_size,
                max_choices: state.max_choices,
            })
        }),
        None => document(),
    };
    ([(header::CONTENT_TYPE, "application/json")], text).into_response()
}

fn string() -> ObjectBuilder {
    ObjectBuilder::new().schema_type(Type::String)
}

fn token_ids() -> ArrayBuilder {
    ArrayBuilder::new().items(ObjectBuilder::new().schema_type(Type::Integer).minimum(Some(0))).min_items(Some(1))
}

/// `prompt`: a string, strings, token ids, or token-id lists (non-empty lists, so that exactly
/// one alternative matches).
pub fn prompt_schema() -> impl Into<RefOr<Schema>> {
    OneOfBuilder::new()
        .item(string())
        .item(ArrayBuilder::new().items(string()).min_items(Some(1)))
        .item(token_ids())
        .item(ArrayBuilder::new().items(token_ids()).min_items(Some(1)))
        .description(Some("A string, a list of strings, a list of token ids, or a list of token-id lists."))
}

/// `stop`: a string or a list of strings, or null.
pub fn stop_schema() -> impl Into<RefOr<Schema>> {
    OneOfBuilder::new()
        .item(string())
        .item(ArrayBuilder::new().items(string()))
        .item(ObjectBuilder::new().schema_type(Type::Null))
        .description(Some("Stop when this text (or any of these) is generated; it is not returned."))
}

/// A message's `content`: a string, text parts, or null (an assistant turn with tool calls).
pub fn content_schema() -> impl Into<RefOr<Schema>> {
    let part = ObjectBuilder::new()
        .property("type", string().enum_values(Some(["text"])))
        .required("type")
        .property("text", string())
        .required("text");
    OneOfBuilder::new()
        .item(string())
        .item(ArrayBuilder::new().items(part))
        .item(ObjectBuilder::new().schema_type(Type::Null))
        .description(Some("A string, an array of text parts (joined with newlines), or null for an assistant turn."))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc() -> Value {
        serde_json::from_str(document()).expect("the document is JSON")
    }

    #[test]
    fn every_route_is_documented() {
        let doc = doc();
        assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"));
        let mut paths: Vec<&str> = doc["paths"].as_object().unwrap().keys().map(String::as_str).collect();
        paths.sort();
        let mut want = vec![
            "/", "/ui/{asset}", "/openapi.json", "/health", "/version", "/metrics", "/tokenize", "/detokenize",
            "/tokenizer_info", "/v1/models", "/v1/completions", "/v1/chat/completions", "/v1/kv/state",
        ];
        want.sort();
        assert_eq!(paths, want);
    }

    #[test]
    fn a_loaded_server_writes_its_bounds_into_the_document() {
        let facts = ServerFacts { model: "../m/a.gguf".into(), max_context_len: 512, vocab_size: 512, max_choices: 8 };
        let doc: Value = serde_json::from_str(&specialized(&facts)).unwrap();
        let common = &doc["components"]["schemas"]["CommonFields"]["properties"];
        assert_eq!(common["model"]["anyOf"][1]["const"], "../m/a.gguf");
        let pattern = common["model"]["anyOf"][2]["pattern"].as_str().unwrap();
        assert!(pattern.starts_with("^\\.\\./m/a\\.gguf\\?kv_policy="), "{pattern}");
        assert_eq!((common["max_tokens"]["maximum"].as_u64(), common["n"]["maximum"].as_u64()), (Some(512), Some(8)));
        let prompt = &doc["components"]["schemas"]["CompletionRequest"]["properties"]["prompt"]["oneOf"];
        assert_eq!(prompt[2]["items"]["maximum"], 511);
        assert_eq!(prompt[3]["items"]["items"]["maximum"], 511);
    }

    #[test]
    fn the_kv_extensions_and_prompt_logprobs_are_documented_on_both_generating_endpoints() {
        let doc = doc();
        let schemas = &doc["components"]["schemas"];
        for field in crate::kv::FIELDS {
            // Optional enum fields carry their description inside `oneOf`.
            let property = schemas["KvFields"]["properties"][field].to_string();
            assert!(property.contains("\"description\""), "{field} has no description: {property}");
        }
        for (body, endpoint) in [("CompletionBody", "CompletionRequest"), ("ChatBody", "ChatRequest")] {
            let text = schemas[body].to_string();
            assert!(text.contains("KvFields") && text.contains("CommonFields") && text.contains(endpoint), "{body}: {text}");
            assert!(schemas[endpoint]["properties"]["prompt_logprobs"].is_object(), "{endpoint}");
        }
        let policies = schemas["KvPolicyName"].to_string();
        for p in ["full", "streaming", "h2o", "snapkv"] {
            assert!(policies.contains(p), "{policies}");
        }
        // /v1/* may require the bearer key.
        assert!(doc["paths"]["/v1/kv/state"]["get"]["security"].to_string().contains("bearer"));
    }
}
