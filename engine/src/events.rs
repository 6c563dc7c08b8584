//! What a caller receives for one request: token deltas as they are produced, then exactly one
//! final event.
//!
//! Owns: the output vocabulary shared by the CLI and the HTTP server (finish reasons, usage,
//! logprobs). Must not know: JSON, SSE or terminals.

use std::time::Instant;

use crate::kv_policy::KvPolicy;

/// Why a request ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FinishReason {
    /// EOS, a stop token id, or a stop string.
    Stop,
    /// `max_tokens` reached, or the context is full.
    Length,
    /// Aborted by the caller (or its client went away).
    Abort,
}

impl FinishReason {
    /// The OpenAI spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::Abort => "abort",
        }
    }
}

/// Log-probability of one token and, when asked, the top alternatives at that position.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenLogprob {
    pub token_id: u32,
    pub logprob: f32,
    /// Sorted by logprob, descending.
    pub top: Vec<(u32, f32)>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct TokenDelta {
    /// The tokens sampled since the last event (one per engine step).
    pub token_ids: Vec<u32>,
    /// Text that became final with them (may be empty while UTF-8 or a possible stop string
    /// is held back).
    pub text: String,
    /// Present when the request asked for logprobs, one per token id.
    pub logprobs: Option<Vec<TokenLogprob>>,
    pub at: Instant,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    /// Prompt tokens served from the prefix cache (`prompt_tokens_details.cached_tokens`).
    pub cached_tokens: usize,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Completion {
    pub reason: FinishReason,
    /// The stop string or stop token that ended the request, when one did.
    pub matched_stop: Option<MatchedStop>,
    pub usage: Usage,
    /// Text still held back at the end (released when generation ended without a stop match).
    pub trailing_text: String,
    /// What the request's KV policy did.
    pub kv: KvReport,
    pub at: Instant,
}

/// A request's KV footprint over its life, in tokens per KV head per layer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KvReport {
    pub policy: KvPolicy,
    /// Most tokens the request held at once (a budgeted request: at most budget + one chunk).
    pub peak_tokens_held: usize,
    /// Tokens evicted (each counted once, though every layer and head evicts one).
    pub tokens_evicted: usize,
    /// Most KV blocks the request's block table held at once.
    pub peak_blocks_held: usize,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MatchedStop {
    Text(String),
    TokenId(u32),
}

/// Scores of prompt tokens computed in one step (requests that asked to score their prompt).
#[derive(Clone, Debug, PartialEq)]
pub struct PromptScores {
    /// Prompt position of the first scored token (≥ 1: the first token has no prediction).
    pub first_token: usize,
    /// `logprobs[i]`: prompt token `first_token + i` given the tokens before it.
    pub logprobs: Vec<TokenLogprob>,
    /// The raw f32 logits each of those tokens was predicted from (`NewRequest::prompt_logits`).
    pub logits: Option<Vec<Vec<f32>>>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum RequestEvent {
    /// Prompt tokens scored this step, in order, before any `Tokens` event.
    PromptScores(PromptScores),
    Tokens(TokenDelta),
    Finished(Completion),
    /// The engine could not run the request (e.g. a forward-pass failure); final.
    Failed(String),
}
