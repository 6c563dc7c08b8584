//! What a request asks of its KV cache: the policy and its budget, as the user spelled it
//! ([`KvPolicyConfig`], every field optional so server defaults can fill the gaps) and as the
//! engine runs it ([`KvPolicy`], validated, defaults applied).
//!
//! Owns: the names users type (`full`, `streaming`, `h2o`, `snapkv`, `trimkv`, `lychee`; `kv_budget`,
//! `kv_sink_tokens`, …), the defaults of every parameter, and every rule that makes a
//! combination invalid, each error naming the request field at fault. Must not know how a
//! policy evicts (its own module) nor HTTP or flags (the cli crate maps those onto this).

use std::fmt;
use std::str::FromStr;

/// Which tokens a request keeps once it holds more than its budget.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum KvPolicyKind {
    /// Keep everything (no budget): today's behaviour.
    #[default]
    Full,
    /// StreamingLLM: the first `sink_tokens` plus the most recent tokens.
    Streaming,
    /// H2O: heavy hitters by accumulated attention plus a recent window.
    H2o,
    /// SnapKV: the last prompt queries vote (pooled); decode evicts the oldest unselected token.
    SnapKv,
    /// TRIM-KV: learned retention gates; keep the tokens with the highest `β^(t − pos)`.
    TrimKv,
    /// LycheeDecode: keeps every token, but at decode the sparse heads read only the blocks the
    /// retrieval heads selected (`kv_budget` tokens of them): less KV read per token, nothing freed.
    Lychee,
}

impl KvPolicyKind {
    pub const ALL: [KvPolicyKind; 6] = [
        KvPolicyKind::Full,
        KvPolicyKind::Streaming,
        KvPolicyKind::H2o,
        KvPolicyKind::SnapKv,
        KvPolicyKind::TrimKv,
        KvPolicyKind::Lychee,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            KvPolicyKind::Full => "full",
            KvPolicyKind::Streaming => "streaming",
            KvPolicyKind::H2o => "h2o",
            KvPolicyKind::SnapKv => "snapkv",
            KvPolicyKind::TrimKv => "trimkv",
            KvPolicyKind::Lychee => "lychee",
        }
    }
}

impl fmt::Display for KvPolicyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for KvPolicyKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        KvPolicyKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| format!("unknown KV policy `{s}` (expected one of: full, streaming, h2o, snapkv, trimkv, lychee)"))
    }
}

/// How SnapKV smooths the window's votes before picking the top tokens.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Pooling {
    /// SnapKV's code default.
    #[default]
    Avg,
    Max,
}

impl Pooling {
    pub fn as_str(self) -> &'static str {
        match self {
            Pooling::Avg => "avg",
            Pooling::Max => "max",
        }
    }
}

impl FromStr for Pooling {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "avg" => Ok(Pooling::Avg),
            "max" => Ok(Pooling::Max),
            other => Err(format!("unknown pooling `{other}` (expected avg or max)")),
        }
    }
}

/// Default attention sinks (StreamingLLM's S = 4).
pub const DEFAULT_SINK_TOKENS: usize = 4;
/// Default SnapKV observation window (the SnapKV code's w = 32).
pub const DEFAULT_SNAPKV_WINDOW: usize = 32;
/// Default SnapKV pooling kernel (odd, "same" padding).
pub const DEFAULT_SNAPKV_KERNEL: usize = 5;

/// A request's KV settings as given: any field may be missing. Field names match the request
/// fields (`kv_policy`, `kv_budget`, …) that errors name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KvPolicyConfig {
    pub policy: Option<KvPolicyKind>,
    /// Tokens kept per KV head per layer (lychee: tokens a sparse head reads per decode step).
    pub budget: Option<usize>,
    /// StreamingLLM: leading tokens always kept. Lychee: leading tokens every sparse head reads.
    pub sink_tokens: Option<usize>,
    /// H2O: most recent tokens always kept (the rest of the budget goes to heavy hitters).
    /// Lychee: most recent tokens every sparse head reads.
    pub recent_window: Option<usize>,
    /// SnapKV: prompt queries that vote.
    pub snapkv_window: Option<usize>,
    /// SnapKV: pooling kernel width (odd).
    pub snapkv_kernel: Option<usize>,
    pub snapkv_pooling: Option<Pooling>,
}

/// A validated, fully specified policy: what the engine runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum KvPolicy {
    #[default]
    Full,
    Streaming { budget: usize, sink_tokens: usize },
    H2o { budget: usize, recent_window: usize },
    SnapKv { budget: usize, window: usize, kernel: usize, pooling: Pooling },
    /// Needs retention gates for the model (the engine refuses it without them).
    TrimKv { budget: usize },
    /// Needs head roles for the model (the engine refuses it without them). Evicts nothing:
    /// `budget` is what each sparse head reads, `sink_tokens + recent_window` of it fixed.
    Lychee { budget: usize, sink_tokens: usize, recent_window: usize },
}

impl KvPolicy {
    pub fn kind(&self) -> KvPolicyKind {
        match self {
            KvPolicy::Full => KvPolicyKind::Full,
            KvPolicy::Streaming { .. } => KvPolicyKind::Streaming,
            KvPolicy::H2o { .. } => KvPolicyKind::H2o,
            KvPolicy::SnapKv { .. } => KvPolicyKind::SnapKv,
            KvPolicy::TrimKv { .. } => KvPolicyKind::TrimKv,
            KvPolicy::Lychee { .. } => KvPolicyKind::Lychee,
        }
    }

    /// The request's `kv_budget`: tokens kept per KV head per layer, or for `lychee` tokens read
    /// per sparse head per decode step; `None` for `full`.
    pub fn budget(&self) -> Option<usize> {
        match *self {
            KvPolicy::Full => None,
            KvPolicy::Streaming { budget, .. }
            | KvPolicy::H2o { budget, .. }
            | KvPolicy::SnapKv { budget, .. }
            | KvPolicy::TrimKv { budget }
            | KvPolicy::Lychee { budget, .. } => Some(budget),
        }
    }

    /// Tokens the request keeps per KV head per layer when it evicts; `None` when it keeps every
    /// token (`full`, and `lychee`, which only reads fewer). What cache sizing and admission use.
    pub fn eviction_budget(&self) -> Option<usize> {
        match *self {
            KvPolicy::Full | KvPolicy::Lychee { .. } => None,
            _ => self.budget(),
        }
    }

    /// "h2o (budget 256, recent 128)" for logs and stats lines.
    pub fn describe(&self) -> String {
        match *self {
            KvPolicy::Full => "full".into(),
            KvPolicy::Streaming { budget, sink_tokens } => format!("streaming (budget {budget}, sinks {sink_tokens})"),
            KvPolicy::H2o { budget, recent_window } => format!("h2o (budget {budget}, recent {recent_window})"),
            KvPolicy::SnapKv { budget, window, kernel, pooling } => {
                format!("snapkv (budget {budget}, window {window}, {}-pool {kernel})", pooling.as_str())
            }
            KvPolicy::TrimKv { budget } => format!("trimkv (budget {budget})"),
            KvPolicy::Lychee { budget, sink_tokens, recent_window } => {
                format!("lychee (budget {budget}, sinks {sink_tokens}, recent {recent_window})")
            }
        }
    }
}

/// An invalid KV setting, naming the request field at fault (`kv_budget`, …).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KvParamError {
    pub param: &'static str,
    pub message: String,
}

impl fmt::Display for KvParamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.param, self.message)
    }
}

impl std::error::Error for KvParamError {}

fn err(param: &'static str, message: impl Into<String>) -> KvParamError {
    KvParamError { param, message: message.into() }
}

impl KvPolicyConfig {
    /// This request's settings on top of the server's defaults. A request that names its own
    /// `kv_policy` takes none of the defaults' policy parameters (they may belong to another
    /// policy), only the default budget when it gives none; a request that names no policy gets
    /// the default policy with its own fields overriding the default's.
    pub fn over(&self, defaults: &KvPolicyConfig) -> KvPolicyConfig {
        match self.policy {
            Some(KvPolicyKind::Full) => self.clone(),
            Some(_) => KvPolicyConfig { budget: self.budget.or(defaults.budget), ..self.clone() },
            None => KvPolicyConfig {
                policy: defaults.policy,
                budget: self.budget.or(defaults.budget),
                sink_tokens: self.sink_tokens.or(defaults.sink_tokens),
                recent_window: self.recent_window.or(defaults.recent_window),
                snapkv_window: self.snapkv_window.or(defaults.snapkv_window),
                snapkv_kernel: self.snapkv_kernel.or(defaults.snapkv_kernel),
                snapkv_pooling: self.snapkv_pooling.or(defaults.snapkv_pooling),
            },
        }
    }

    /// Validates and fills defaults. Every parameter that does not belong to the chosen policy
    /// is an error (silently ignoring it would hide a typo'd policy name).
    pub fn resolve(&self) -> Result<KvPolicy, KvParamError> {
        let kind = self.policy.unwrap_or_default();
        let foreign = |param: &'static str, set: bool, owner: &str| -> Result<(), KvParamError> {
            if set {
                return Err(err(param, format!("applies to kv_policy {owner} only, not {kind}")));
            }
            Ok(())
        };
        let budget = match (kind, self.budget) {
            (KvPolicyKind::Full, Some(_)) => {
                return Err(err("kv_budget", "kv_policy full keeps every token; choose streaming, h2o, snapkv, trimkv or lychee to set a budget"))
            }
            (KvPolicyKind::Full, None) => 0,
            (_, None) => return Err(err("kv_budget", format!("kv_policy {kind} needs a kv_budget (tokens kept per KV head per layer)"))),
            (_, Some(0)) => return Err(err("kv_budget", "must be a positive number of tokens")),
            (_, Some(b)) => b,
        };
        if !matches!(kind, KvPolicyKind::Streaming | KvPolicyKind::Lychee) {
            foreign("kv_sink_tokens", self.sink_tokens.is_some(), "streaming or lychee")?;
        }
        if !matches!(kind, KvPolicyKind::H2o | KvPolicyKind::Lychee) {
            foreign("kv_recent_window", self.recent_window.is_some(), "h2o or lychee")?;
        }
        if kind != KvPolicyKind::SnapKv {
            foreign("kv_snapkv_window", self.snapkv_window.is_some(), "snapkv")?;
            foreign("kv_snapkv_kernel", self.snapkv_kernel.is_some(), "snapkv")?;
            foreign("kv_snapkv_pooling", self.snapkv_pooling.is_some(), "snapkv")?;
        }
        Ok(match kind {
            KvPolicyKind::Full => KvPolicy::Full,
            KvPolicyKind::Streaming => {
                let sink_tokens = self.sink_tokens.unwrap_or(DEFAULT_SINK_TOKENS.min(budget - 1));
                if sink_tokens >= budget {
                    return Err(err(
                        "kv_budget",
                        format!("{budget} leaves no room for recent tokens after {sink_tokens} kv_sink_tokens"),
                    ));
                }
                KvPolicy::Streaming { budget, sink_tokens }
            }
            KvPolicyKind::H2o => {
                let recent_window = self.recent_window.unwrap_or(budget / 2);
                if recent_window > budget {
                    return Err(err("kv_budget", format!("{budget} is smaller than kv_recent_window {recent_window}")));
                }
                KvPolicy::H2o { budget, recent_window }
            }
            KvPolicyKind::SnapKv => {
                let window = self.snapkv_window.unwrap_or(DEFAULT_SNAPKV_WINDOW.min(budget));
                if window == 0 {
                    return Err(err("kv_snapkv_window", "must be at least 1 (the queries that vote)"));
                }
                if window > budget {
                    return Err(err("kv_budget", format!("{budget} is smaller than kv_snapkv_window {window}")));
                }
                let kernel = self.snapkv_kernel.unwrap_or(DEFAULT_SNAPKV_KERNEL);
                if kernel == 0 || kernel % 2 == 0 {
                    return Err(err("kv_snapkv_kernel", format!("must be an odd width (1, 3, 5, …), got {kernel}")));
                }
                KvPolicy::SnapKv { budget, window, kernel, pooling: self.snapkv_pooling.unwrap_or_default() }
            }
            KvPolicyKind::TrimKv => KvPolicy::TrimKv { budget },
            KvPolicyKind::Lychee => {
                // LycheeDecode's code keeps 128 sink + 256 recent of a 1024 budget: the same shares.
                let sink_tokens = self.sink_tokens.unwrap_or((budget / 8).max(1));
                let recent_window = self.recent_window.unwrap_or((budget / 4).max(1));
                if recent_window == 0 {
                    return Err(err("kv_recent_window", "must be at least 1 (the token being decoded is always read)"));
                }
                if sink_tokens + recent_window > budget {
                    return Err(err(
                        "kv_budget",
                        format!("{budget} is smaller than kv_sink_tokens {sink_tokens} + kv_recent_window {recent_window}"),
                    ));
                }
                KvPolicy::Lychee { budget, sink_tokens, recent_window }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(policy: KvPolicyKind, budget: Option<usize>) -> KvPolicyConfig {
        KvPolicyConfig { policy: Some(policy), budget, ..Default::default() }
    }

    #[test]
    fn defaults_fill_each_policy() {
        assert_eq!(KvPolicyConfig::default().resolve(), Ok(KvPolicy::Full));
        assert_eq!(cfg(KvPolicyKind::Streaming, Some(64)).resolve(), Ok(KvPolicy::Streaming { budget: 64, sink_tokens: 4 }));
        assert_eq!(cfg(KvPolicyKind::H2o, Some(64)).resolve(), Ok(KvPolicy::H2o { budget: 64, recent_window: 32 }));
        assert_eq!(
            cfg(KvPolicyKind::SnapKv, Some(64)).resolve(),
            Ok(KvPolicy::SnapKv { budget: 64, window: 32, kernel: 5, pooling: Pooling::Avg })
        );
        assert_eq!(cfg(KvPolicyKind::TrimKv, Some(64)).resolve(), Ok(KvPolicy::TrimKv { budget: 64 }));
        assert_eq!("trimkv".parse::<KvPolicyKind>(), Ok(KvPolicyKind::TrimKv));
        assert_eq!(
            cfg(KvPolicyKind::Lychee, Some(1024)).resolve(),
            Ok(KvPolicy::Lychee { budget: 1024, sink_tokens: 128, recent_window: 256 })
        );
        let custom = KvPolicyConfig { sink_tokens: Some(16), recent_window: Some(32), ..cfg(KvPolicyKind::Lychee, Some(256)) };
        assert_eq!(custom.resolve(), Ok(KvPolicy::Lychee { budget: 256, sink_tokens: 16, recent_window: 32 }));
    }

    #[test]
    fn lychee_keeps_every_token_but_reports_its_budget() {
        let p = cfg(KvPolicyKind::Lychee, Some(256)).resolve().unwrap();
        assert_eq!((p.budget(), p.eviction_budget()), (Some(256), None));
        let h2o = cfg(KvPolicyKind::H2o, Some(256)).resolve().unwrap();
        assert_eq!((h2o.budget(), h2o.eviction_budget()), (Some(256), Some(256)));
    }

    #[test]
    fn every_bad_value_names_its_field() {
        let param = |c: KvPolicyConfig| c.resolve().unwrap_err().param;
        assert_eq!(param(cfg(KvPolicyKind::H2o, None)), "kv_budget");
        assert_eq!(param(cfg(KvPolicyKind::H2o, Some(0))), "kv_budget");
        assert_eq!(param(cfg(KvPolicyKind::Full, Some(10))), "kv_budget");
        assert_eq!(param(KvPolicyConfig { sink_tokens: Some(8), ..cfg(KvPolicyKind::Streaming, Some(8)) }), "kv_budget");
        assert_eq!(param(KvPolicyConfig { recent_window: Some(65), ..cfg(KvPolicyKind::H2o, Some(64)) }), "kv_budget");
        assert_eq!(param(KvPolicyConfig { snapkv_window: Some(65), ..cfg(KvPolicyKind::SnapKv, Some(64)) }), "kv_budget");
        assert_eq!(param(KvPolicyConfig { snapkv_window: Some(0), ..cfg(KvPolicyKind::SnapKv, Some(64)) }), "kv_snapkv_window");
        assert_eq!(param(KvPolicyConfig { snapkv_kernel: Some(4), ..cfg(KvPolicyKind::SnapKv, Some(64)) }), "kv_snapkv_kernel");
        assert_eq!(param(KvPolicyConfig { sink_tokens: Some(4), ..cfg(KvPolicyKind::H2o, Some(64)) }), "kv_sink_tokens");
        assert_eq!(param(KvPolicyConfig { recent_window: Some(4), ..cfg(KvPolicyKind::Streaming, Some(64)) }), "kv_recent_window");
        assert_eq!(param(KvPolicyConfig { snapkv_pooling: Some(Pooling::Max), ..cfg(KvPolicyKind::H2o, Some(64)) }), "kv_snapkv_pooling");
        assert_eq!(param(cfg(KvPolicyKind::TrimKv, Some(0))), "kv_budget");
        assert_eq!(param(KvPolicyConfig { sink_tokens: Some(4), ..cfg(KvPolicyKind::TrimKv, Some(64)) }), "kv_sink_tokens");
        assert_eq!(param(cfg(KvPolicyKind::Lychee, None)), "kv_budget");
        assert_eq!(param(KvPolicyConfig { recent_window: Some(0), ..cfg(KvPolicyKind::Lychee, Some(64)) }), "kv_recent_window");
        assert_eq!(param(KvPolicyConfig { sink_tokens: Some(40), recent_window: Some(40), ..cfg(KvPolicyKind::Lychee, Some(64)) }), "kv_budget");
        assert_eq!(param(KvPolicyConfig { snapkv_window: Some(4), ..cfg(KvPolicyKind::Lychee, Some(64)) }), "kv_snapkv_window");
        assert!("lru".parse::<KvPolicyKind>().is_err());
    }

    #[test]
    fn requests_override_server_defaults_without_inheriting_foreign_parameters() {
        let server = KvPolicyConfig { recent_window: Some(16), ..cfg(KvPolicyKind::H2o, Some(128)) };
        // No policy named: the server's policy, the request's budget.
        let req = KvPolicyConfig { budget: Some(64), ..Default::default() };
        assert_eq!(req.over(&server).resolve(), Ok(KvPolicy::H2o { budget: 64, recent_window: 16 }));
        // Another policy named: the default budget carries over, h2o's window does not.
        let req = cfg(KvPolicyKind::Streaming, None);
        assert_eq!(req.over(&server).resolve(), Ok(KvPolicy::Streaming { budget: 128, sink_tokens: 4 }));
        // Explicit full on a server whose default is h2o: the default budget is not inherited.
        let req = cfg(KvPolicyKind::Full, None);
        assert_eq!(req.over(&server).resolve(), Ok(KvPolicy::Full));
    }
}
