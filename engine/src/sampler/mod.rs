//! The sampler: turns one row of logits into the next token, with vLLM's semantics.
//!
//! Owns: the order of transformations — logit bias → `min_tokens` mask → repetition penalty →
//! presence/frequency penalties → temperature → min-p → top-k → top-p → draw (greedy = argmax,
//! lowest id on ties) — per-sequence seeded generators, and raw-distribution logprobs.
//!
//! Must not know: tensors, models, batching policy or detokenisation. Rows arrive as `&mut [f32]`
//! (the runner copies logits to the host once per step).
//!
//! Layout: `params` (SamplingParams + validation), `state` (per-sequence RNG and counts),
//! `penalties` (sparse adjustments), `draw` (truncation and the draw), `logprobs`.

pub mod draw;
pub mod logprobs;
pub mod params;
pub mod penalties;
pub mod state;

pub use params::{InvalidParam, SamplingParams, GREEDY_TEMPERATURE, MAX_LOGPROBS};
pub use state::SamplerState;

use draw::Truncation;
use rayon::prelude::*;

/// One sampled token.
#[derive(Debug, Clone, PartialEq)]
pub struct Sampled {
    pub token: u32,
    /// Log-probability of `token` under the raw model distribution; `Some` exactly when the
    /// request set `logprobs`. NOTE(why) not always computed: it costs a full `exp` pass over
    /// the row (~0.25 ms at a 49k vocabulary on this machine), as much as greedy sampling itself.
    pub logprob: Option<f32>,
    /// The requested number of most likely tokens with their raw logprobs, descending.
    pub top_logprobs: Vec<(u32, f32)>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SampleError {
    #[error("empty logits row")]
    EmptyLogits,
    #[error("logits contain NaN or +inf at token {0}: the model output is broken")]
    NonFiniteLogits(u32),
    #[error("every token is masked (all logits are -inf)")]
    NoCandidate,
    #[error("logits hold {len} values, expected {rows} rows x {vocab_size} vocabulary")]
    BatchShape {
        len: usize,
        rows: usize,
        vocab_size: usize,
    },
}

/// Samples the next token of one sequence. `logits` is modified in place (penalties applied).
/// `prompt_ids` / `output_ids` are the sequence's history (for penalties and `min_tokens`).
pub fn sample(
    logits: &mut [f32],
    params: &SamplingParams,
    state: &mut SamplerState,
    prompt_ids: &[u32],
    output_ids: &[u32],
) -> Result<Sampled, SampleError> {
    if logits.is_empty() {
        return Err(SampleError::EmptyLogits);
    }
    if let Some(bad) = logits.iter().position(|&l| l.is_nan() || l == f32::INFINITY) {
        return Err(SampleError::NonFiniteLogits(bad as u32));
    }
    // Logprobs describe the raw distribution, so take what they need before any adjustment.
    // Penalties rewrite a few entries in place: keep the raw row only when they will.
    let raw = params.logprobs.map(|n| {
        let lse = logprobs::log_sum_exp(logits);
        let top = logprobs::top_logprobs(logits, lse, n);
        let row = penalties::modifies_logits(params, output_ids.len()).then(|| logits.to_vec());
        (lse, top, row)
    });
    penalties::apply_penalties(logits, params, state, prompt_ids, output_ids);
    let token = if params.is_greedy() {
        draw::argmax(logits).ok_or(SampleError::NoCandidate)?
    } else {
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        if max == f32::NEG_INFINITY {
            return Err(SampleError::NoCandidate);
        }
        let t = Truncation {
            temperature: params.temperature,
            top_k: params.top_k,
            top_p: params.top_p,
            min_p: params.min_p,
        };
        draw::sample_truncated(logits, max, t, state.uniform()).ok_or(SampleError::NoCandidate)?
    };
    let (logprob, top_logprobs) = match raw {
        Some((lse, top, row)) => (
            Some(row.as_deref().unwrap_or(logits)[token as usize] - lse),
            top,
        ),
        None => (None, Vec::new()),
    };
    Ok(Sampled {
        token,
        logprob,
        top_logprobs,
    })
}

/// One sequence's share of a batched sampling call.
pub struct SampleRow<'a> {
    pub params: &'a SamplingParams,
    pub state: &'a mut SamplerState,
    pub prompt_ids: &'a [u32],
    pub output_ids: &'a [u32],
}

/// Batches at least this large are sampled on the rayon pool; below it, thread hand-off costs
/// more than the work.
const PARALLEL_MIN_ROWS: usize = 8;

/// Samples every row of a `[rows.len(), vocab_size]` logits matrix. Each row's result is
/// independent (a bad row does not fail the others); each row draws only from its own state,
/// so results do not depend on batch composition or thread scheduling.
pub fn sample_batch(
    logits: &mut [f32],
    vocab_size: usize,
    rows: &mut [SampleRow<'_>],
) -> Result<Vec<Result<Sampled, SampleError>>, SampleError> {
    if vocab_size == 0 || logits.len() != rows.len() * vocab_size {
        return Err(SampleError::BatchShape {
            len: logits.len(),
            rows: rows.len(),
            vocab_size,
        });
    }
    let one = |(row_logits, row): (&mut [f32], &mut SampleRow<'_>)| {
        sample(
            row_logits,
            row.params,
            row.state,
            row.prompt_ids,
            row.output_ids,
        )
    };
    Ok(if rows.len() >= PARALLEL_MIN_ROWS {
        logits
            .par_chunks_mut(vocab_size)
            .zip(rows.par_iter_mut())
            .map(one)
            .collect()
    } else {
        logits
            .chunks_mut(vocab_size)
            .zip(rows.iter_mut())
            .map(one)
            .collect()
    })
}

#[cfg(test)]
mod tests;
