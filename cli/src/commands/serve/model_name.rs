//! The `model` field of a request: the served model's name, optionally followed by a KV policy
//! written as a query string, `smollm2?kv_policy=h2o&kv_budget=64`. It is for clients that let
//! a user set nothing per request but the model name: lm-evaluation-harness's
//! `local-completions` builds its own request bodies, so `--model_args model=NAME?kv_policy=…`
//! is how a policy gets scored on standard tasks. These settings lie between the server's
//! `--kv-*` flags and the body's own `kv_*` fields.
//!
//! Must not know: HTTP, endpoints, what the policies do (the engine validates them).

use kvault_engine::kv_policy::KvPolicyConfig;

use super::error::ApiError;
use crate::kv::{KvFields, FIELDS};

/// The KV defaults one request starts from: its model name's settings over the server's.
/// A name other than the served one is a 404; a bad setting is a 400 naming `model`.
pub fn request_defaults(model: Option<&str>, served: &str, server: &KvPolicyConfig) -> Result<KvPolicyConfig, ApiError> {
    let Some(model) = model else { return Ok(server.clone()) };
    let (name, query) = match model.split_once('?') {
        Some((name, query)) => (name, Some(query)),
        None => (model, None),
    };
    if name != served {
        return Err(ApiError::model_not_found(model, served));
    }
    let Some(query) = query else { return Ok(server.clone()) };
    let fields = parse_query(query)?;
    let own = fields.config().map_err(|e| bad(format!("{}: {}", e.param, e.message)))?;
    Ok(own.over(server))
}

fn bad(message: impl Into<String>) -> ApiError {
    ApiError::invalid("model", format!("KV settings in the model name: {}", message.into()))
}

fn parse_query(query: &str) -> Result<KvFields, ApiError> {
    let mut fields = KvFields::default();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').ok_or_else(|| bad(format!("`{pair}` is not key=value")))?;
        let count = || value.parse::<usize>().map(Some).map_err(|_| bad(format!("{key} must be a non-negative integer, got `{value}`")));
        match key {
            "kv_policy" => fields.kv_policy = Some(value.to_string()),
            "kv_snapkv_pooling" => fields.kv_snapkv_pooling = Some(value.to_string()),
            "kv_budget" => fields.kv_budget = count()?,
            "kv_sink_tokens" => fields.kv_sink_tokens = count()?,
            "kv_recent_window" => fields.kv_recent_window = count()?,
            "kv_snapkv_window" => fields.kv_snapkv_window = count()?,
            "kv_snapkv_kernel" => fields.kv_snapkv_kernel = count()?,
            other => return Err(bad(format!("unknown setting `{other}`; expected one of {}", FIELDS.join(", ")))),
        }
    }
    Ok(fields)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvault_engine::kv_policy::{KvPolicy, KvPolicyKind};

    fn defaults(model: &str) -> Result<KvPolicy, ApiError> {
        let server = KvPolicyConfig { policy: Some(KvPolicyKind::Streaming), budget: Some(128), ..Default::default() };
        let d = request_defaults(Some(model), "smollm2", &server)?;
        d.resolve().map_err(|e| ApiError::invalid(e.param, e.message))
    }

    #[test]
    fn the_model_name_may_carry_a_kv_policy_over_the_server_defaults() {
        assert_eq!(defaults("smollm2"), Ok(KvPolicy::Streaming { budget: 128, sink_tokens: 4 }));
        assert_eq!(defaults("smollm2?kv_policy=h2o&kv_budget=64"), Ok(KvPolicy::H2o { budget: 64, recent_window: 32 }));
        assert_eq!(defaults("smollm2?kv_sink_tokens=8"), Ok(KvPolicy::Streaming { budget: 128, sink_tokens: 8 }));
        assert_eq!(defaults("smollm2?kv_policy=full"), Ok(KvPolicy::Full));
        assert_eq!(request_defaults(None, "smollm2", &KvPolicyConfig::default()), Ok(KvPolicyConfig::default()));
    }

    #[test]
    fn a_wrong_name_is_404_and_a_bad_setting_is_400_naming_model() {
        assert_eq!(defaults("gpt-4?kv_policy=h2o").unwrap_err().status.as_u16(), 404);
        for bad in ["smollm2?kv_policy=lru", "smollm2?kv_budget=lots", "smollm2?budget=64", "smollm2?kv_budget"] {
            let e = request_defaults(Some(bad), "smollm2", &KvPolicyConfig::default()).unwrap_err();
            assert_eq!((e.status.as_u16(), e.param.as_deref()), (400, Some("model")), "{bad}: {}", e.message);
        }
    }
}
