//! A request as submitted, and the checks it must pass before it is queued.
//!
//! Owns: `NewRequest` and `SubmitError` (every way a submission can be refused, each naming the
//! parameter and the numbers involved). Must not know: how requests are scheduled.

use std::fmt;
use std::time::Instant;

use kvault_scheduler::footprint;

use crate::info::EngineInfo;
use crate::sink::EventSink;
use crate::kv_policy::lychee::NO_ROLES_HINT;
use crate::kv_policy::trimkv::NO_GATES_HINT;
use crate::kv_policy::{KvPolicy, KvPolicyKind};
use crate::sampler::SamplingParams;

pub struct NewRequest {
    /// Assigned by the engine handle.
    pub id: u64,
    pub prompt_ids: Vec<u32>,
    pub params: SamplingParams,
    /// How this request's KV cache is kept (validated; `Full` unless the caller chose).
    pub kv: KvPolicy,
    /// Also send the raw logits row of every scored prompt position (for evaluation tools that
    /// compare whole distributions); implies scoring the prompt.
    pub prompt_logits: bool,
    /// Largest prefill chunk for this request (`None`: the engine's token budget decides), so
    /// runs that must be compared chunk for chunk can be.
    pub max_chunk_tokens: Option<usize>,
    /// A prompt position no prefill chunk crosses: everything before it is computed (and, under a
    /// KV budget, compressed) before the rest arrives, as when a question follows a context
    /// in a second turn.
    pub chunk_break: Option<usize>,
    pub arrival: Instant,
    pub(crate) events: Option<EventSink>,
}

impl NewRequest {
    pub fn new(prompt_ids: Vec<u32>, params: SamplingParams) -> Self {
        Self {
            id: 0,
            prompt_ids,
            params,
            kv: KvPolicy::Full,
            prompt_logits: false,
            max_chunk_tokens: None,
            chunk_break: None,
            arrival: Instant::now(),
            events: None,
        }
    }

    /// Whether the engine computes every prompt position's distribution for this request.
    pub fn scores_prompt(&self) -> bool {
        self.prompt_logits || self.params.prompt_logprobs.is_some()
    }

    pub(crate) fn validate(&self, info: &EngineInfo) -> Result<(), SubmitError> {
        if self.prompt_ids.is_empty() {
            return Err(SubmitError::EmptyPrompt);
        }
        if let Some(&bad) = self.prompt_ids.iter().find(|&&id| id as usize >= info.vocab_size) {
            return Err(SubmitError::TokenOutOfVocab { token_id: bad, vocab_size: info.vocab_size });
        }
        let invalid = |e: crate::sampler::InvalidParam| SubmitError::InvalidParam { param: e.param.to_string(), message: e.message };
        if self.params.max_tokens == 0 && self.prompt_logits {
            // Scoring only: every other sampling field must still be valid.
            SamplingParams { max_tokens: 1, ..self.params.clone() }.validate(info.vocab_size).map_err(invalid)?;
        } else {
            self.params.validate(info.vocab_size).map_err(invalid)?;
        }
        if self.kv.kind() == KvPolicyKind::TrimKv && !info.retention_gates {
            return Err(SubmitError::InvalidParam {
                param: "kv_policy".into(),
                message: format!("trimkv needs retention gates for this model and none are loaded; {NO_GATES_HINT}"),
            });
        }
        if let KvPolicy::Lychee { budget, .. } = self.kv {
            if !info.head_roles {
                return Err(SubmitError::InvalidParam {
                    param: "kv_policy".into(),
                    message: format!("lychee needs head roles for this model and none are loaded; {NO_ROLES_HINT}"),
                });
            }
            if budget < 2 * info.block_size {
                return Err(SubmitError::InvalidParam {
                    param: "kv_budget".into(),
                    message: format!(
                        "lychee reads whole blocks: kv_budget {budget} must be at least 2 blocks ({} tokens)",
                        2 * info.block_size
                    ),
                });
            }
        }
        // A budgeted request never holds more than its budget plus a chunk, so its length is
        // bounded by the model's context; one that keeps everything must fit the cache.
        let max_len = match self.kv.eviction_budget() {
            None => info.max_model_len,
            Some(budget) => {
                let needs = footprint::peak_blocks(budget, info.block_size);
                if needs > info.num_blocks {
                    return Err(SubmitError::InvalidParam {
                        param: "kv_budget".into(),
                        message: format!(
                            "kv_budget {budget} needs up to {needs} KV blocks (budget + one prefill chunk of as many \
                             tokens) but the cache has {}: at most {} fits",
                            info.num_blocks,
                            info.num_blocks * info.block_size / 2
                        ),
                    });
                }
                info.max_len_for(&self.kv)
            }
        };
        if self.max_chunk_tokens == Some(0) {
            return Err(SubmitError::InvalidParam { param: "max_chunk_tokens".into(), message: "must be at least 1".into() });
        }
        if self.params.max_tokens == 0 && !self.scores_prompt() {
            return Err(SubmitError::InvalidParam {
                param: "max_tokens".into(),
                message: "max_tokens must be at least 1 unless the prompt is scored".into(),
            });
        }
        let total = self.prompt_ids.len() + self.params.max_tokens;
        if total > max_len {
            return Err(SubmitError::TooLong {
                prompt_tokens: self.prompt_ids.len(),
                max_tokens: self.params.max_tokens,
                max_model_len: max_len,
            });
        }
        Ok(())
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SubmitError {
    EmptyPrompt,
    TokenOutOfVocab { token_id: u32, vocab_size: usize },
    InvalidParam { param: String, message: String },
    TooLong { prompt_tokens: usize, max_tokens: usize, max_model_len: usize },
    QueueFull,
    ShuttingDown,
}

impl SubmitError {
    /// The request parameter at fault, when there is one.
    pub fn param(&self) -> Option<&str> {
        match self {
            SubmitError::EmptyPrompt | SubmitError::TokenOutOfVocab { .. } => Some("prompt"),
            SubmitError::InvalidParam { param, .. } => Some(param),
            SubmitError::TooLong { .. } => Some("max_tokens"),
            SubmitError::QueueFull | SubmitError::ShuttingDown => None,
        }
    }
}

impl fmt::Display for SubmitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SubmitError::EmptyPrompt => write!(f, "the prompt is empty"),
            SubmitError::TokenOutOfVocab { token_id, vocab_size } => {
                write!(f, "prompt token id {token_id} is outside the vocabulary (size {vocab_size})")
            }
            SubmitError::InvalidParam { message, .. } => write!(f, "{message}"),
            SubmitError::TooLong { prompt_tokens, max_tokens, max_model_len } => write!(
                f,
                "this model's maximum context length is {max_model_len} tokens, but {} were requested \
                 ({prompt_tokens} in the prompt + {max_tokens} max_tokens); shorten the prompt or lower max_tokens",
                prompt_tokens + max_tokens
            ),
            SubmitError::QueueFull => write!(f, "the server is at capacity (request queue full); retry later"),
            SubmitError::ShuttingDown => write!(f, "the engine is shutting down"),
        }
    }
}

impl std::error::Error for SubmitError {}
