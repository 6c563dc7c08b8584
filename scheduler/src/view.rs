//! The read-only picture the engine hands the scheduler each step, and the decision it gets back.
//!
//! Owns: the data contract between engine and scheduler, and its validation. Must not know: how
//! the engine stores requests or blocks, or which policy decides.
//!
//! # Executing a decision (the contract)
//! The decision is computed from one snapshot and is exactly executable if the engine applies it
//! to that same snapshot in this order:
//! 1. free every request in [`StepDecision::preempted`] (recompute: drop its blocks, reset
//!    `num_computed_tokens` to 0, push it to the FRONT of waiting, keeping the order given: the
//!    list is oldest-first, so prepending it as one block preserves arrival order);
//! 2. for every admitted chunk, take its `num_prefix_hit_tokens / block_size` prefix-hit blocks
//!    (touching them before any fresh allocation, so no fresh allocation can evict them);
//! 3. allocate `new_blocks` fresh blocks per chunk, in the order given. A request with a
//!    `kv_token_cap` does not share its hit blocks (its eviction rewrites slots): its
//!    `new_blocks` include a private copy of each, after which the hit blocks go back to the
//!    free queue.
//!
//! The scheduler guarantees `Σ (new_blocks + hit_blocks_from_free) ≤ free_blocks +
//! Σ exclusive_blocks(preempted)`, so no allocation in steps 2–3 can fail. `hit_blocks_from_free`
//! is an upper bound (the view only says how many of a request's hit blocks sit in the free
//! queue, not which), so the engine may end up with free blocks to spare, never short.

use crate::error::{Result, SchedulerError};

/// One request as the scheduler sees it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RequestView {
    pub id: u64,
    /// Monotone arrival order (smaller = older); only used for diagnostics and tie-breaks.
    pub arrival_seq: u64,
    pub prompt_len: usize,
    /// Prompt plus output generated so far: the tokens whose KV must eventually be computed.
    pub num_tokens: usize,
    /// Tokens whose KV is already in the cache (0 for a waiting or preempted request).
    pub num_computed_tokens: usize,
    pub num_output_tokens: usize,
    /// Maximum output tokens (OpenAI `max_tokens`); the effective cap is also bounded by
    /// `max_model_len − prompt_len`.
    pub max_tokens: usize,
    /// Blocks in the request's block table.
    pub blocks_held: usize,
    /// Blocks that return to the free queue if this request is freed (its block-table entries
    /// with ref count 1). Equal to `blocks_held` when nothing is shared.
    pub exclusive_blocks: usize,
    /// Waiting only: tokens a prefix-cache hit would supply (a multiple of the block size).
    pub prefix_hit_tokens: usize,
    /// Waiting only: how many of the hit blocks currently sit in the free queue (touching them
    /// takes them out of it, so they cost free blocks like fresh ones).
    pub prefix_hit_free_blocks: usize,
    /// KV eviction budget: tokens kept per KV head per layer between steps (see `footprint`:
    /// a step holds the budget plus its chunk, and a chunk is at most the budget).
    pub kv_token_cap: Option<usize>,
    /// Largest prefill chunk the request accepts (besides its KV budget's), e.g. so evaluation
    /// runs compare chunk for chunk.
    pub max_chunk_tokens: Option<usize>,
    /// A position no prefill chunk crosses: the tokens before it are computed (and, under a KV
    /// budget, compressed) before any token after it (a context, then a question).
    pub chunk_break: Option<usize>,
}

impl RequestView {
    /// The longest chunk this request may compute in one step, once `computed` tokens are.
    pub fn chunk_limit(&self, computed: usize) -> usize {
        let to_break = match self.chunk_break {
            Some(b) if computed < b => b - computed,
            _ => usize::MAX,
        };
        crate::footprint::max_chunk(self.kv_token_cap).min(self.max_chunk_tokens.unwrap_or(usize::MAX)).min(to_break)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolView {
    pub total_blocks: usize,
    pub free_blocks: usize,
    pub block_size: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budgets {
    /// Tokens computed in one step across all requests (`--max-num-batched-tokens`).
    pub max_num_batched_tokens: usize,
    /// Requests running at once (`--max-num-seqs`).
    pub max_num_seqs: usize,
    pub max_model_len: usize,
}

#[derive(Debug, Clone, Copy)]
pub struct StepInput<'a> {
    /// Running requests in admission order (the last is the newest: the first preemption victim).
    pub running: &'a [RequestView],
    /// Waiting requests, FIFO, preempted ones at the front.
    pub waiting: &'a [RequestView],
    pub pool: PoolView,
    pub budgets: Budgets,
}

/// Work for one request this step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScheduledChunk {
    pub id: u64,
    /// Tokens to compute this step (a decode is 1; a prefill chunk may be less than the prompt).
    pub num_new_tokens: usize,
    /// True if the request moves from waiting to running this step.
    pub admitted: bool,
    /// Admitted only: tokens taken from the prefix cache (block aligned; always leaves at least
    /// one token to compute so the step produces logits).
    pub num_prefix_hit_tokens: usize,
    /// Upper bound on prefix-hit blocks taken out of the free queue.
    pub hit_blocks_from_free: usize,
    /// Fresh blocks to allocate for this chunk (exact).
    pub new_blocks: usize,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StepDecision {
    /// Running requests first (in running order), then admitted ones (in FIFO order).
    pub scheduled: Vec<ScheduledChunk>,
    /// Preempted by recompute, oldest first (see the module doc for how to requeue them).
    pub preempted: Vec<u64>,
}

impl StepDecision {
    pub fn total_new_tokens(&self) -> usize {
        self.scheduled.iter().map(|c| c.num_new_tokens).sum()
    }
    /// Blocks the decision takes out of the free queue (fresh plus the hit upper bound).
    pub fn free_blocks_taken(&self) -> usize {
        self.scheduled.iter().map(|c| c.new_blocks + c.hit_blocks_from_free).sum()
    }
}

/// Why a request finished; length-capped and aborted outputs are right-censored samples.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FinishKind {
    /// Stopped on its own (EOS or a stop string): the output length is an exact sample.
    Stop,
    /// Hit `max_tokens` or the model length: the natural length was at least this.
    Length,
    /// Aborted by the client or the SLA guard: also only a lower bound.
    Abort,
}

impl<'a> StepInput<'a> {
    /// Rejects views the step logic cannot reason about; every check names the offending request.
    pub fn validate(&self) -> Result<()> {
        let bad = |msg: String| Err(SchedulerError::InvalidView(msg));
        let p = self.pool;
        if p.block_size == 0 {
            return bad("block_size is 0".into());
        }
        if p.free_blocks > p.total_blocks {
            return bad(format!("free_blocks {} > total_blocks {}", p.free_blocks, p.total_blocks));
        }
        if self.budgets.max_num_seqs == 0 || self.budgets.max_num_batched_tokens == 0 {
            return bad("max_num_seqs and max_num_batched_tokens must be positive".into());
        }
        for r in self.running.iter().chain(self.waiting) {
            if r.num_computed_tokens > r.num_tokens {
                return bad(format!(
                    "request {}: computed {} > tokens {}",
                    r.id, r.num_computed_tokens, r.num_tokens
                ));
            }
            if r.prompt_len + r.num_output_tokens != r.num_tokens {
                return bad(format!(
                    "request {}: prompt {} + output {} != tokens {}",
                    r.id, r.prompt_len, r.num_output_tokens, r.num_tokens
                ));
            }
            if r.exclusive_blocks > r.blocks_held {
                return bad(format!(
                    "request {}: exclusive_blocks {} > blocks_held {}",
                    r.id, r.exclusive_blocks, r.blocks_held
                ));
            }
            if r.kv_token_cap == Some(0) || r.max_chunk_tokens == Some(0) {
                return bad(format!("request {}: kv_token_cap or max_chunk_tokens is 0", r.id));
            }
        }
        for w in self.waiting {
            if w.num_computed_tokens != 0 || w.blocks_held != 0 {
                return bad(format!("waiting request {} holds KV (computed or blocks)", w.id));
            }
            if w.prefix_hit_tokens % p.block_size != 0 {
                return bad(format!(
                    "waiting request {}: prefix_hit_tokens {} not block aligned",
                    w.id, w.prefix_hit_tokens
                ));
            }
            if w.prefix_hit_free_blocks > w.prefix_hit_tokens / p.block_size {
                return bad(format!(
                    "waiting request {}: more free hit blocks than hit blocks",
                    w.id
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input<'a>(running: &'a [RequestView], waiting: &'a [RequestView]) -> StepInput<'a> {
        StepInput {
            running,
            waiting,
            pool: PoolView { total_blocks: 10, free_blocks: 10, block_size: 4 },
            budgets: Budgets { max_num_batched_tokens: 64, max_num_seqs: 4, max_model_len: 128 },
        }
    }

    #[test]
    fn validate_rejects_computed_beyond_tokens() {
        let r = RequestView { id: 7, prompt_len: 3, num_tokens: 3, num_computed_tokens: 4, ..Default::default() };
        let err = input(std::slice::from_ref(&r), &[]).validate().unwrap_err();
        assert!(err.to_string().contains("request 7"), "{err}");
    }

    #[test]
    fn validate_rejects_unaligned_prefix_hit_and_waiting_blocks() {
        let w = RequestView { id: 1, prompt_len: 8, num_tokens: 8, prefix_hit_tokens: 5, ..Default::default() };
        assert!(input(&[], std::slice::from_ref(&w)).validate().is_err());
        let w = RequestView { id: 1, prompt_len: 8, num_tokens: 8, blocks_held: 1, exclusive_blocks: 1, ..Default::default() };
        assert!(input(&[], std::slice::from_ref(&w)).validate().is_err());
        let ok = RequestView { id: 1, prompt_len: 8, num_tokens: 8, prefix_hit_tokens: 4, prefix_hit_free_blocks: 1, ..Default::default() };
        assert!(input(&[], std::slice::from_ref(&ok)).validate().is_ok());
    }
}
