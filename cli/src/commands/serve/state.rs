//! What every handler shares: the engine handle (absent while the model loads), the served
//! model name, the API key, the default KV policy settings and the metrics.
//!
//! Must not know: HTTP routes or request shapes.

use std::sync::{Arc, OnceLock};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use kvault_engine::engine::EngineInfo;
use kvault_engine::handle::EngineHandle;
use kvault_engine::kv_policy::KvPolicyConfig;
use kvault_models::chat_template::ChatTemplate;

use super::error::ApiError;
use super::metrics::Metrics;

pub struct AppState {
    pub served_model_name: String,
    pub api_key: Option<String>,
    /// The `--kv-*` flags (valid on their own), which each request's `kv_*` fields overlay.
    pub kv_defaults: KvPolicyConfig,
    pub metrics: Arc<Metrics>,
    /// Completions the engine holds at once (running + queued): more in one request is a 400.
    pub max_choices: usize,
    /// Serve the web page at `/` (off with `--no-web-ui`).
    pub web_ui: bool,
    /// Set once, when the model has loaded; until then model endpoints answer 503.
    engine: OnceLock<Arc<EngineHandle>>,
    /// `--chat-template`, compiled once the model (and so its special tokens) has loaded.
    chat_template: OnceLock<ChatTemplate>,
    /// Unix time the server started (`created` of /v1/models).
    pub started_unix: u64,
    /// The same moment on the monotonic clock (the KV state's `time`).
    pub started: Instant,
}

impl AppState {
    pub fn new(served_model_name: String, api_key: Option<String>, kv_defaults: KvPolicyConfig, metrics: Arc<Metrics>) -> Self {
        Self {
            served_model_name,
            api_key,
            kv_defaults,
            metrics,
            max_choices: usize::MAX,
            web_ui: true,
            engine: OnceLock::new(),
            chat_template: OnceLock::new(),
            started_unix: unix_now(),
            started: Instant::now(),
        }
    }

    pub fn engine(&self) -> Result<&Arc<EngineHandle>, ApiError> {
        self.engine.get().ok_or_else(ApiError::loading)
    }

    pub fn set_engine(&self, engine: Arc<EngineHandle>) {
        self.metrics.set_cache_config(engine.info());
        // A second load never happens; ignoring the error keeps the first engine.
        let _ = self.engine.set(engine);
    }

    /// Replaces the model's chat template (set before the engine, so no request sees the other).
    pub fn set_chat_template(&self, template: ChatTemplate) {
        let _ = self.chat_template.set(template);
    }

    /// The template chat requests are rendered with: `--chat-template`, else the model's.
    pub fn chat_template<'a>(&'a self, info: &'a EngineInfo) -> Option<&'a ChatTemplate> {
        self.chat_template.get().or(info.chat_template.as_ref())
    }

    pub fn engine_if_loaded(&self) -> Option<&Arc<EngineHandle>> {
        self.engine.get()
    }

    /// The `model` field of a request must name this server's model (when given at all); it
    /// may carry KV settings (`name?kv_policy=h2o`), which are returned over the `--kv-*` flags:
    /// the defaults this request's own `kv_*` fields overlay.
    pub fn check_model(&self, requested: Option<&str>) -> Result<KvPolicyConfig, ApiError> {
        super::model_name::request_defaults(requested, &self.served_model_name, &self.kv_defaults)
    }
}

pub fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}
