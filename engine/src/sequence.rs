//! One request inside the engine: its tokens, progress, sampling state, and the output
//! pipeline that turns sampled ids into text deltas and a finish decision.
//!
//! Owns: the per-request state machine (waiting → running → finished, and back to waiting when
//! preempted) and the stop rules (EOS and stop ids, stop strings with hold-back, max tokens,
//! model length). Must not know: blocks (the KV cache manager tracks those by request id),
//! batches, or the scheduling policy.

use std::sync::Arc;
use std::time::Instant;

use kvault_models::tokenizer::{IncrementalDecoder, Tokenizer};

use crate::events::{Completion, FinishReason, KvReport, MatchedStop, PromptScores, RequestEvent, TokenDelta, TokenLogprob, Usage};
use crate::sink::EventSink;
use crate::kv_policy::KvPolicy;
use crate::request::NewRequest;
use crate::sampler::{SamplerState, SamplingParams};
use crate::stop::StopStringMatcher;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Status {
    Waiting,
    Running,
}

pub(crate) struct Sequence {
    pub id: u64,
    pub arrival_seq: u64,
    pub prompt_len: usize,
    /// Prompt followed by every generated token.
    pub tokens: Vec<u32>,
    /// Tokens whose K/V is in the cache.
    pub num_computed: usize,
    pub status: Status,
    pub params: SamplingParams,
    pub sampler: SamplerState,
    /// Prompt tokens served by the prefix cache at first admission (reported as usage).
    pub cached_tokens: Option<usize>,
    pub kv: KvPolicy,
    /// What the KV policy did so far (reported with the final event).
    pub kv_report: KvReport,
    /// Prompt scoring: `Some(top_n)` when the prompt's tokens are scored.
    pub prompt_scoring: Option<usize>,
    /// Send raw logits rows with the prompt scores.
    pub prompt_logits: bool,
    /// Next prompt token to score (a recomputed chunk is not scored twice).
    pub next_scored: usize,
    pub max_chunk_tokens: Option<usize>,
    pub chunk_break: Option<usize>,
    decoder: IncrementalDecoder,
    stop: StopStringMatcher,
    events: Option<EventSink>,
    eos_token_ids: Arc<Vec<u32>>,
    max_model_len: usize,
}

/// What happened after appending one sampled token.
pub(crate) enum Appended {
    Continue,
    Finished(FinishReason),
}

impl Sequence {
    pub fn new(
        req: NewRequest,
        arrival_seq: u64,
        tokenizer: Arc<Tokenizer>,
        eos_token_ids: Arc<Vec<u32>>,
        max_model_len: usize,
    ) -> Self {
        let sampler = SamplerState::new(&req.params, &eos_token_ids);
        let prompt_scoring = req.params.prompt_logprobs.or(req.prompt_logits.then_some(0));
        // Decoding in the prompt's context keeps SentencePiece's leading space on the first
        // generated word (decoded alone, "▁there" would lose it).
        let decoder = IncrementalDecoder::with_context(tokenizer.clone(), true, &req.prompt_ids)
            .unwrap_or_else(|_| IncrementalDecoder::new(tokenizer, true));
        Self {
            id: req.id,
            arrival_seq,
            prompt_len: req.prompt_ids.len(),
            tokens: req.prompt_ids,
            num_computed: 0,
            status: Status::Waiting,
            stop: StopStringMatcher::new(req.params.stop.clone()),
            params: req.params,
            sampler,
            cached_tokens: None,
            kv: req.kv,
            kv_report: KvReport { policy: req.kv, ..KvReport::default() },
            prompt_scoring,
            prompt_logits: req.prompt_logits,
            next_scored: 1,
            max_chunk_tokens: req.max_chunk_tokens,
            chunk_break: req.chunk_break,
            decoder,
            events: req.events,
            eos_token_ids,
            max_model_len,
        }
    }

    pub fn num_output(&self) -> usize {
        self.tokens.len() - self.prompt_len
    }

    /// The caller went away: nothing more can be delivered.
    pub fn is_orphaned(&self) -> bool {
        self.events.as_ref().is_none_or(|e| e.is_closed())
    }

    /// Appends a sampled token, streams its text, and decides whether the request is done.
    /// Returns the matched stop reason when it is.
    pub fn append(&mut self, token: u32, logprob: Option<TokenLogprob>) -> Appended {
        self.tokens.push(token);
        let n_out = self.num_output();
        let is_eos = !self.params.ignore_eos && self.eos_token_ids.contains(&token);
        let is_stop_id = self.params.stop_token_ids.contains(&token);
        let min_reached = n_out >= self.params.min_tokens;

        // The end-of-sequence token's own text is never shown.
        let mut text = String::new();
        let mut stop_hit = None;
        if !(is_eos || is_stop_id) || !min_reached {
            let piece = self.decoder.push(token).unwrap_or_default();
            let step = self.stop.push(&piece);
            text = step.emit;
            if step.stopped && min_reached {
                stop_hit = step.matched.map(MatchedStop::Text);
            }
        }
        let finish = if min_reached && (is_eos || is_stop_id) {
            Some((FinishReason::Stop, is_stop_id.then_some(MatchedStop::TokenId(token))))
        } else if stop_hit.is_some() {
            Some((FinishReason::Stop, stop_hit))
        } else if n_out >= self.params.max_tokens || self.tokens.len() >= self.max_model_len {
            Some((FinishReason::Length, None))
        } else {
            None
        };
        let delta = TokenDelta {
            token_ids: vec![token],
            text,
            logprobs: logprob.map(|l| vec![l]),
            at: Instant::now(),
        };
        self.send(RequestEvent::Tokens(delta));
        match finish {
            None => Appended::Continue,
            Some((reason, matched)) => {
                // Whatever the hold-back still keeps is real output unless a stop string ended it.
                let trailing = if matches!(matched, Some(MatchedStop::Text(_))) {
                    String::new()
                } else {
                    let mut rest = self.decoder.finish().unwrap_or_default();
                    rest = self.stop.push(&rest).emit + &self.stop.flush();
                    rest
                };
                self.finish_with(reason, matched, trailing);
                Appended::Finished(reason)
            }
        }
    }

    /// Sends the scores of prompt tokens predicted by the rows of positions
    /// `[first_row, first_row + rows.len())`; tokens already scored are skipped.
    pub fn score_prompt(&mut self, first_row: usize, rows: Vec<Vec<f32>>) {
        let Some(top_n) = self.prompt_scoring else { return };
        let mut logprobs = Vec::new();
        let mut kept = Vec::new();
        let first_token = self.next_scored;
        for (i, row) in rows.into_iter().enumerate() {
            let token_pos = first_row + i + 1;
            if token_pos < self.next_scored || token_pos >= self.prompt_len {
                continue;
            }
            let token = self.tokens[token_pos];
            let lse = crate::sampler::logprobs::log_sum_exp(&row);
            logprobs.push(TokenLogprob {
                token_id: token,
                logprob: row[token as usize] - lse,
                top: crate::sampler::logprobs::top_logprobs(&row, lse, top_n),
            });
            if self.prompt_logits {
                kept.push(row);
            }
            self.next_scored = token_pos + 1;
        }
        if !logprobs.is_empty() {
            let logits = self.prompt_logits.then_some(kept);
            self.send(RequestEvent::PromptScores(PromptScores { first_token, logprobs, logits }));
        }
    }

    /// Sends the final event (for aborts: nothing held back is released).
    pub fn finish_with(&mut self, reason: FinishReason, matched_stop: Option<MatchedStop>, trailing_text: String) {
        let usage = Usage {
            prompt_tokens: self.prompt_len,
            completion_tokens: self.num_output(),
            cached_tokens: self.cached_tokens.unwrap_or(0),
        };
        let kv = self.kv_report;
        self.send(RequestEvent::Finished(Completion { reason, matched_stop, usage, trailing_text, kv, at: Instant::now() }));
    }

    /// Ends a request that asked for no output tokens once its prompt is computed.
    pub fn finish_scored(&mut self) {
        self.finish_with(FinishReason::Length, None, String::new());
    }

    pub fn fail(&mut self, message: String) {
        self.send(RequestEvent::Failed(message));
    }

    fn send(&mut self, event: RequestEvent) {
        if let Some(sink) = &mut self.events {
            sink.send(event);
        }
    }
}
