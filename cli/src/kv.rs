//! Per-request KV-cache policies as users spell them: the `--kv-*` flags every generating
//! command shares ([`KvArgs`]), the `kv_*` fields of a JSONL line or an HTTP body
//! ([`KvFields`]), and how a finished request's KV outcome is shown (stats line, JSON).
//!
//! Validation belongs to the engine (`KvPolicyConfig::over` and `resolve`); this module maps
//! what the user typed onto it and its errors back onto what the user typed: `--kv-budget` on
//! the command line, `kv_budget` in a request. Must not know: HTTP statuses, terminals, models.

use anyhow::anyhow;
use clap::builder::{PossibleValuesParser, TypedValueParser};
use clap::Args;
use kvault_engine::events::KvReport;
use kvault_engine::kv_policy::{KvParamError, KvPolicy, KvPolicyConfig, KvPolicyKind, Pooling};
use kvault_engine::request::SubmitError;
use serde::Deserialize;
use serde_json::{json, Value};

/// Every request field of a KV setting, as the engine's errors name them.
pub const FIELDS: [&str; 7] =
    ["kv_policy", "kv_budget", "kv_sink_tokens", "kv_recent_window", "kv_snapkv_window", "kv_snapkv_kernel", "kv_snapkv_pooling"];

#[derive(Args, Debug, Clone, Default)]
pub struct KvArgs {
    /// KV-cache policy of each request: which tokens it keeps once it holds more than
    /// --kv-budget (`full` keeps every token; `lychee` keeps every token too, and its sparse
    /// heads read only --kv-budget of them per decode step). With `serve`: the default for
    /// requests that do not set `kv_policy`.
    #[arg(long, value_parser = policy_parser())]
    pub kv_policy: Option<KvPolicyKind>,
    /// Tokens a request keeps per KV head per layer (streaming, h2o, snapkv, trimkv), or reads
    /// per sparse head per decode step (lychee, whole blocks).
    #[arg(long, value_parser = parse_count, allow_negative_numbers = true)]
    pub kv_budget: Option<usize>,
    /// streaming: leading tokens always kept (default 4); lychee: leading tokens always read
    /// (default an eighth of the budget).
    #[arg(long, value_parser = parse_count, allow_negative_numbers = true)]
    pub kv_sink_tokens: Option<usize>,
    /// h2o: most recent tokens always kept (default half the budget); lychee: most recent
    /// tokens always read (default a quarter of the budget).
    #[arg(long, value_parser = parse_count, allow_negative_numbers = true)]
    pub kv_recent_window: Option<usize>,
    /// snapkv: last prompt tokens whose attention votes (default 32, at most the budget).
    #[arg(long, value_parser = parse_count, allow_negative_numbers = true)]
    pub kv_snapkv_window: Option<usize>,
    /// snapkv: pooling kernel width over the votes, odd (default 5).
    #[arg(long, value_parser = parse_count, allow_negative_numbers = true)]
    pub kv_snapkv_kernel: Option<usize>,
    /// snapkv: how the votes are pooled (default avg).
    #[arg(long, value_parser = pooling_parser())]
    pub kv_snapkv_pooling: Option<Pooling>,
}

fn policy_parser() -> impl TypedValueParser<Value = KvPolicyKind> {
    PossibleValuesParser::new(KvPolicyKind::ALL.map(KvPolicyKind::as_str)).try_map(|s| s.parse::<KvPolicyKind>())
}

fn pooling_parser() -> impl TypedValueParser<Value = Pooling> {
    PossibleValuesParser::new([Pooling::Avg, Pooling::Max].map(Pooling::as_str)).try_map(|s| s.parse::<Pooling>())
}

fn parse_count(s: &str) -> Result<usize, String> {
    s.parse().map_err(|_| format!("`{s}` is not a non-negative integer"))
}

impl KvArgs {
    pub fn config(&self) -> KvPolicyConfig {
        KvPolicyConfig {
            policy: self.kv_policy,
            budget: self.kv_budget,
            sink_tokens: self.kv_sink_tokens,
            recent_window: self.kv_recent_window,
            snapkv_window: self.kv_snapkv_window,
            snapkv_kernel: self.kv_snapkv_kernel,
            snapkv_pooling: self.kv_snapkv_pooling,
        }
    }

    /// The policy a request gets from these flags alone. Checked at start-up, before any
    /// model loads; a bad combination names the flag at fault.
    pub fn resolve(&self) -> anyhow::Result<KvPolicy> {
        self.config().resolve().map_err(|e| flag_error(e.param, &e.message))
    }
}

/// `kv_budget` → `--kv-budget`.
fn flag_name(field: &str) -> String {
    format!("--{}", field.replace('_', "-"))
}

/// "--kv-budget: 8 leaves no room … after 8 --kv-sink-tokens": the field at fault and every
/// field the message mentions, spelled as flags.
fn flag_error(field: &str, message: &str) -> anyhow::Error {
    let message = FIELDS.iter().fold(message.to_string(), |m, f| m.replace(f, &flag_name(f)));
    anyhow!("{}: {message}", flag_name(field))
}

/// An engine refusal on the command line; when a KV setting is at fault (a budget too large
/// for the cache), it names the flag.
pub fn submit_error(e: SubmitError) -> anyhow::Error {
    match e.param() {
        Some(field) if FIELDS.contains(&field) => flag_error(field, &e.to_string()),
        _ => anyhow::Error::new(e),
    }
}

// The `kv_*` fields of one request; every one optional. Parsed from the same JSON object as
// the rest of the request, so a wrong JSON type is reported at its field's path.
/// kvault's extension: the KV-cache policy of this request, over the server's `--kv-*` flags.
/// Tokens are counted per KV head per layer; a setting that does not belong to the chosen policy
/// is refused (400 naming the field).
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
pub struct KvFields {
    /// Which tokens the request keeps once it holds more than `kv_budget`: `full` keeps every
    /// token; `streaming` (StreamingLLM: sinks + recent window), `h2o` (heavy hitters + recent),
    /// `snapkv` (prompt compressed by the attention of its last tokens), `trimkv` (learned
    /// retention gates; the server must have gates for its model), `lychee` (keeps every token;
    /// at decode most heads read only `kv_budget` tokens the model's retrieval heads chose; the
    /// server must have head roles for its model).
    #[schema(value_type = Option<KvPolicyName>)]
    pub kv_policy: Option<String>,
    /// Tokens kept per KV head per layer (streaming, h2o, snapkv, trimkv), or read per sparse
    /// head per decode step (lychee).
    #[schema(minimum = 1)]
    pub kv_budget: Option<usize>,
    /// streaming: leading tokens always kept (default 4); lychee: leading tokens always read
    /// (default an eighth of the budget).
    pub kv_sink_tokens: Option<usize>,
    /// h2o: most recent tokens always kept (default half the budget); lychee: most recent
    /// tokens always read (default a quarter of the budget).
    pub kv_recent_window: Option<usize>,
    /// snapkv: last prompt tokens whose attention votes (default 32, at most the budget).
    #[schema(minimum = 1)]
    pub kv_snapkv_window: Option<usize>,
    /// snapkv: pooling kernel width over the votes, odd (default 5).
    #[schema(minimum = 1)]
    pub kv_snapkv_kernel: Option<usize>,
    /// snapkv: how the votes are pooled (default avg).
    #[schema(value_type = Option<KvPooling>)]
    pub kv_snapkv_pooling: Option<String>,
}

/// The KV policies a request may name (`kv_policy`).
#[derive(utoipa::ToSchema)]
#[allow(dead_code)] // Only describes the accepted strings in the OpenAPI document.
pub enum KvPolicyName {
    #[schema(rename = "full")]
    Full,
    #[schema(rename = "streaming")]
    Streaming,
    #[schema(rename = "h2o")]
    H2o,
    #[schema(rename = "snapkv")]
    SnapKv,
    #[schema(rename = "trimkv")]
    TrimKv,
    #[schema(rename = "lychee")]
    Lychee,
}

/// SnapKV's vote pooling (`kv_snapkv_pooling`).
#[derive(utoipa::ToSchema)]
#[allow(dead_code)] // Only describes the accepted strings in the OpenAPI document.
pub enum KvPooling {
    #[schema(rename = "avg")]
    Avg,
    #[schema(rename = "max")]
    Max,
}

impl KvFields {
    pub fn config(&self) -> Result<KvPolicyConfig, KvParamError> {
        fn named<T: std::str::FromStr<Err = String>>(param: &'static str, text: &Option<String>) -> Result<Option<T>, KvParamError> {
            text.as_deref().map(str::parse).transpose().map_err(|message| KvParamError { param, message })
        }
        Ok(KvPolicyConfig {
            policy: named("kv_policy", &self.kv_policy)?,
            budget: self.kv_budget,
            sink_tokens: self.kv_sink_tokens,
            recent_window: self.kv_recent_window,
            snapkv_window: self.kv_snapkv_window,
            snapkv_kernel: self.kv_snapkv_kernel,
            snapkv_pooling: named("kv_snapkv_pooling", &self.kv_snapkv_pooling)?,
        })
    }

    /// This request's policy: its fields over `defaults` (the command's or server's flags).
    pub fn resolve(&self, defaults: &KvPolicyConfig) -> Result<KvPolicy, KvParamError> {
        self.config()?.over(defaults).resolve()
    }
}

/// A policy with every parameter, for result files (`bench`, batch output lines).
pub fn policy_json(p: &KvPolicy) -> Value {
    let mut v = match *p {
        KvPolicy::Full => json!({"policy": "full"}),
        KvPolicy::Streaming { budget, sink_tokens } => json!({"policy": "streaming", "budget": budget, "sink_tokens": sink_tokens}),
        KvPolicy::H2o { budget, recent_window } => json!({"policy": "h2o", "budget": budget, "recent_window": recent_window}),
        KvPolicy::SnapKv { budget, window, kernel, pooling } => json!({
            "policy": "snapkv", "budget": budget, "snapkv_window": window, "snapkv_kernel": kernel, "snapkv_pooling": pooling.as_str(),
        }),
        KvPolicy::TrimKv { budget } => json!({"policy": "trimkv", "budget": budget}),
        KvPolicy::Lychee { budget, sink_tokens, recent_window } => {
            json!({"policy": "lychee", "budget": budget, "sink_tokens": sink_tokens, "recent_window": recent_window})
        }
    };
    v["description"] = json!(p.describe());
    v
}

/// The `kv_*` request fields that ask a server for exactly this policy (every parameter given,
/// so the server's defaults cannot change it).
pub fn request_fields(p: &KvPolicy) -> Value {
    match *p {
        KvPolicy::Full => json!({"kv_policy": "full"}),
        KvPolicy::Streaming { budget, sink_tokens } => json!({"kv_policy": "streaming", "kv_budget": budget, "kv_sink_tokens": sink_tokens}),
        KvPolicy::H2o { budget, recent_window } => json!({"kv_policy": "h2o", "kv_budget": budget, "kv_recent_window": recent_window}),
        KvPolicy::SnapKv { budget, window, kernel, pooling } => json!({
            "kv_policy": "snapkv", "kv_budget": budget, "kv_snapkv_window": window, "kv_snapkv_kernel": kernel,
            "kv_snapkv_pooling": pooling.as_str(),
        }),
        KvPolicy::TrimKv { budget } => json!({"kv_policy": "trimkv", "kv_budget": budget}),
        KvPolicy::Lychee { budget, sink_tokens, recent_window } => json!({
            "kv_policy": "lychee", "kv_budget": budget, "kv_sink_tokens": sink_tokens, "kv_recent_window": recent_window,
        }),
    }
}

/// What a finished request's policy did: the policy, its peak KV tokens held and tokens evicted.
pub fn report_json(r: &KvReport) -> Value {
    let mut v = policy_json(&r.policy);
    v["peak_tokens_held"] = json!(r.peak_tokens_held);
    v["tokens_evicted"] = json!(r.tokens_evicted);
    v
}

/// For stats lines: "KV full", or for a budgeted request
/// "KV h2o (budget 64, recent 32): peak 66 tokens held, 120 evicted".
pub fn report_summary(r: &KvReport) -> String {
    match r.policy.budget() {
        None => format!("KV {}", r.policy.describe()),
        Some(_) => format!("KV {}: peak {} tokens held, {} evicted", r.policy.describe(), r.peak_tokens_held, r.tokens_evicted),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_fields_ask_for_exactly_the_policy() {
        use kvault_engine::kv_policy::Pooling;
        let server = KvPolicyConfig { policy: Some(kvault_engine::kv_policy::KvPolicyKind::H2o), budget: Some(999), ..Default::default() };
        for p in [
            KvPolicy::Full,
            KvPolicy::Streaming { budget: 64, sink_tokens: 2 },
            KvPolicy::H2o { budget: 64, recent_window: 8 },
            KvPolicy::SnapKv { budget: 64, window: 16, kernel: 3, pooling: Pooling::Max },
        ] {
            let fields: KvFields = serde_json::from_value(request_fields(&p)).unwrap();
            assert_eq!(fields.resolve(&server).unwrap(), p);
        }
    }
    use clap::Parser;

    #[derive(Parser, Debug)]
    struct Cli {
        #[command(flatten)]
        kv: KvArgs,
    }

    fn flags(args: &[&str]) -> Result<KvArgs, clap::Error> {
        Cli::try_parse_from(std::iter::once("kvault").chain(args.iter().copied())).map(|c| c.kv)
    }

    #[test]
    fn flags_resolve_to_the_engine_policy() {
        assert_eq!(flags(&[]).unwrap().resolve().unwrap(), KvPolicy::Full);
        let kv = flags(&["--kv-policy", "snapkv", "--kv-budget", "64", "--kv-snapkv-window", "8", "--kv-snapkv-pooling", "max"]).unwrap();
        assert_eq!(kv.resolve().unwrap(), KvPolicy::SnapKv { budget: 64, window: 8, kernel: 5, pooling: Pooling::Max });
    }

    #[test]
    fn flag_errors_name_flags_not_request_fields() {
        let e = flags(&["--kv-policy", "streaming", "--kv-budget", "8", "--kv-sink-tokens", "8"]).unwrap().resolve().unwrap_err().to_string();
        assert!(e.starts_with("--kv-budget: ") && e.contains("8 --kv-sink-tokens") && !e.contains("kv_"), "{e}");
        let e = flags(&["--kv-budget", "8"]).unwrap().resolve().unwrap_err().to_string();
        assert!(e.starts_with("--kv-budget: --kv-policy full keeps every token"), "{e}");
        for bad in [&["--kv-policy", "lru"][..], &["--kv-budget", "-3"], &["--kv-budget", "lots"], &["--kv-snapkv-pooling", "median"]] {
            let e = flags(bad).unwrap_err().to_string();
            assert!(e.contains(bad[0]), "{bad:?}: {e}");
        }
    }

    #[test]
    fn an_engine_refusal_of_a_kv_setting_names_the_flag() {
        let refusal = SubmitError::InvalidParam { param: "kv_budget".into(), message: "kv_budget 9999 exceeds the cache".into() };
        assert_eq!(submit_error(refusal).to_string(), "--kv-budget: --kv-budget 9999 exceeds the cache");
        let other = SubmitError::InvalidParam { param: "top_p".into(), message: "top_p must be in (0, 1]".into() };
        assert_eq!(submit_error(other).to_string(), "top_p must be in (0, 1]");
    }

    #[test]
    fn every_request_field_is_read() {
        let values = ["\"snapkv\"", "64", "1", "2", "3", "5", "\"max\""];
        let body: String = FIELDS.iter().zip(values).map(|(f, v)| format!("\"{f}\": {v}")).collect::<Vec<_>>().join(", ");
        let fields: KvFields = serde_json::from_str(&format!("{{{body}}}")).unwrap();
        let c = fields.config().unwrap();
        assert_eq!(c.policy, Some(KvPolicyKind::SnapKv));
        assert_eq!((c.budget, c.sink_tokens, c.recent_window, c.snapkv_window, c.snapkv_kernel), (Some(64), Some(1), Some(2), Some(3), Some(5)));
        assert_eq!(c.snapkv_pooling, Some(Pooling::Max));
    }

    #[test]
    fn request_fields_overlay_the_defaults_and_bad_names_name_their_field() {
        let defaults = flags(&["--kv-policy", "h2o", "--kv-budget", "64"]).unwrap().config();
        let req = |json: &str| serde_json::from_str::<KvFields>(json).unwrap().resolve(&defaults);
        assert_eq!(req("{}"), Ok(KvPolicy::H2o { budget: 64, recent_window: 32 }));
        assert_eq!(req(r#"{"kv_budget": 16}"#), Ok(KvPolicy::H2o { budget: 16, recent_window: 8 }));
        assert_eq!(req(r#"{"kv_policy": "streaming"}"#), Ok(KvPolicy::Streaming { budget: 64, sink_tokens: 4 }));
        assert_eq!(req(r#"{"kv_policy": "lru"}"#).unwrap_err().param, "kv_policy");
        assert_eq!(req(r#"{"kv_policy": "snapkv", "kv_snapkv_pooling": "median"}"#).unwrap_err().param, "kv_snapkv_pooling");
        assert_eq!(req(r#"{"kv_sink_tokens": 2}"#).unwrap_err().param, "kv_sink_tokens");
    }

    #[test]
    fn reports_show_the_policy_and_for_budgets_what_it_did() {
        let full = KvReport { peak_tokens_held: 70, ..KvReport::default() };
        assert_eq!(report_summary(&full), "KV full");
        let h2o = KvReport { policy: KvPolicy::H2o { budget: 64, recent_window: 32 }, peak_tokens_held: 66, tokens_evicted: 120, peak_blocks_held: 5 };
        assert_eq!(report_summary(&h2o), "KV h2o (budget 64, recent 32): peak 66 tokens held, 120 evicted");
        let j = report_json(&h2o);
        assert_eq!((j["policy"].as_str(), j["budget"].as_u64(), j["recent_window"].as_u64()), (Some("h2o"), Some(64), Some(32)));
        assert_eq!((j["peak_tokens_held"].as_u64(), j["tokens_evicted"].as_u64()), (Some(66), Some(120)));
        let snap = policy_json(&KvPolicy::SnapKv { budget: 64, window: 8, kernel: 3, pooling: Pooling::Max });
        assert_eq!(snap["snapkv_pooling"], "max");
        assert_eq!(snap["description"], "snapkv (budget 64, window 8, max-pool 3)");
    }
}
