//! A request's KV footprint, with or without an eviction budget (`kv_token_cap`): the one place
//! the engine's block manager, the scheduling step, the admission policies and the simulator take
//! it from, so they can never disagree about what a budgeted request holds.
//!
//! A request with budget `M` keeps at most `M` tokens per KV head per layer between steps. A step
//! writes its new tokens first and trims back to `M` only after attending them (the prompt's
//! tokens are fully attended before eviction, as TRIM-KV, H2O and SnapKV assume), so during a
//! step it holds `min(computed, M) + new` slots. Its prefill chunks are at most `M` tokens, so it
//! never holds more than `2M` slots: `ceil(2M / block_size)` blocks for its whole life; while
//! decoding it holds `M + 1`.
//!
//! Must not know: blocks' identities, tensors or which tokens a policy keeps.

/// Tokens whose KV a request holds between steps after computing `computed` tokens.
pub fn resting_tokens(computed: usize, cap: Option<usize>) -> usize {
    cap.map_or(computed, |c| computed.min(c))
}

/// Slots in use while a step computes `new` more tokens (before any eviction).
pub fn step_tokens(computed: usize, new: usize, cap: Option<usize>) -> usize {
    resting_tokens(computed, cap) + new
}

/// Blocks for `tokens` slots.
pub fn blocks(tokens: usize, block_size: usize) -> usize {
    tokens.div_ceil(block_size)
}

/// Blocks a step of `new` tokens needs, after `computed` tokens.
pub fn step_blocks(computed: usize, new: usize, cap: Option<usize>, block_size: usize) -> usize {
    blocks(step_tokens(computed, new, cap), block_size)
}

/// Blocks a request rests on between steps.
pub fn resting_blocks(computed: usize, cap: Option<usize>, block_size: usize) -> usize {
    blocks(resting_tokens(computed, cap), block_size)
}

/// The longest prefill chunk a request computes in one step (a budgeted one: its budget).
pub fn max_chunk(cap: Option<usize>) -> usize {
    cap.unwrap_or(usize::MAX)
}

/// The most blocks a budgeted request ever holds: budget plus its largest chunk.
pub fn peak_blocks(cap: usize, block_size: usize) -> usize {
    blocks(cap + max_chunk(Some(cap)), block_size)
}

/// The token cap the admission policies' peak formula uses: a decoding budgeted request holds
/// its budget plus the token being decoded.
pub fn decode_cap(cap: Option<usize>) -> Option<usize> {
    cap.map(|c| c + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uncapped_requests_hold_everything() {
        assert_eq!(step_blocks(100, 28, None, 16), 8);
        assert_eq!(resting_blocks(129, None, 16), 9);
        assert_eq!(max_chunk(None), usize::MAX);
        assert_eq!(decode_cap(None), None);
    }

    #[test]
    fn capped_requests_rest_on_the_budget_and_peak_at_budget_plus_chunk() {
        // Budget 64, 1000 tokens computed: rests on 64 (4 blocks), a 64-token chunk peaks at 128.
        assert_eq!(resting_blocks(1000, Some(64), 16), 4);
        assert_eq!(step_blocks(1000, 64, Some(64), 16), 8);
        assert_eq!(step_blocks(1000, 1, Some(64), 16), 5);
        assert_eq!(peak_blocks(64, 16), 8);
        // Below the budget nothing differs from an uncapped request.
        assert_eq!(step_blocks(30, 10, Some(64), 16), step_blocks(30, 10, None, 16));
        assert_eq!(decode_cap(Some(64)), Some(65));
    }
}
