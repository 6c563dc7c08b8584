//! LycheeDecode's per-request side in the engine: the whole blocks a request's sparse heads read
//! at a decode step, from the `kv_budget`, `kv_sink_tokens` and `kv_recent_window` it asked for
//! in tokens. Nothing is evicted: the block manager treats the request like `full`.
//!
//! Must not know: how blocks are scored or attended (the kernels' `select_blocks` and
//! `paged_attention_sparse`), nor which heads are retrieval heads (the model's head roles).

use super::spec::KvPolicy;

/// What to tell a user whose model has no head roles.
pub const NO_ROLES_HINT: &str = "calibrate them with `kvault calibrate-heads --model MODEL --density 0.1 --out \
lychee_heads.safetensors`, then pass --head-roles PATH or put the file beside the model as lychee_heads.safetensors";

/// A lychee request's reading budget in whole cache blocks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SparseBlocks {
    /// Blocks a sparse head reads per decode step (the budget rounded down to whole blocks).
    pub budget: u32,
    /// Leading blocks always among them.
    pub sink: u32,
    /// Trailing blocks (the one being written included) always among them.
    pub recent: u32,
}

impl SparseBlocks {
    /// `None` unless `policy` is `lychee`. The request was validated to a budget of at least two
    /// blocks; the sink and recent windows round up to whole blocks (at least one recent block:
    /// the token being decoded is in it), and shrink back when rounding overfilled the budget.
    pub fn for_policy(policy: &KvPolicy, block_size: usize) -> Option<Self> {
        let KvPolicy::Lychee { budget, sink_tokens, recent_window } = *policy else { return None };
        let budget = (budget / block_size).max(2);
        let sink = sink_tokens.div_ceil(block_size).min(budget - 1);
        let recent = recent_window.div_ceil(block_size).max(1).min(budget - sink);
        Some(Self { budget: budget as u32, sink: sink as u32, recent: recent as u32 })
    }

    /// The budget for a decode row whose cache holds `context_len` tokens: 0 (attend fully, as
    /// `full` does, bit for bit) while the budget still covers every block.
    pub fn budget_at(&self, context_len: usize, block_size: usize) -> u32 {
        if context_len.div_ceil(block_size) <= self.budget as usize {
            0
        } else {
            self.budget
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lychee(budget: usize, sink_tokens: usize, recent_window: usize) -> KvPolicy {
        KvPolicy::Lychee { budget, sink_tokens, recent_window }
    }

    #[test]
    fn tokens_round_to_whole_blocks_within_the_budget() {
        assert_eq!(SparseBlocks::for_policy(&lychee(1024, 128, 256), 16), Some(SparseBlocks { budget: 64, sink: 8, recent: 16 }));
        // 100 tokens hold 6 whole blocks; 4 sink tokens still take a block.
        assert_eq!(SparseBlocks::for_policy(&lychee(100, 4, 1), 16), Some(SparseBlocks { budget: 6, sink: 1, recent: 1 }));
        // Rounding up would overfill two blocks: one sink, one recent.
        assert_eq!(SparseBlocks::for_policy(&lychee(32, 4, 20), 16), Some(SparseBlocks { budget: 2, sink: 1, recent: 1 }));
        assert_eq!(SparseBlocks::for_policy(&lychee(64, 0, 8), 16), Some(SparseBlocks { budget: 4, sink: 0, recent: 1 }));
        assert_eq!(SparseBlocks::for_policy(&KvPolicy::Full, 16), None);
    }

    #[test]
    fn a_budget_covering_the_context_attends_fully() {
        let b = SparseBlocks::for_policy(&lychee(256, 32, 64), 16).unwrap();
        assert_eq!(b.budget_at(256, 16), 0);
        assert_eq!(b.budget_at(257, 16), 16);
    }
}
