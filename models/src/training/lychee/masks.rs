//! The two ways a sparse head's keys are chosen, on host data (masks carry no gradient):
//!
//! - [`RatioMask`], the paper's training form: per query head and query, the sink and recent
//!   tokens plus the top `keep_ratio` of the context by that head's attention logits (its
//!   "ratio" mode with `sparse_ratio = 0.7`, so 30% kept); token-level, as the paper trains.
//! - [`BlockBudget`], the inference rule of the contract (notes/lychee-contract.md): per KV
//!   head, blocks of 16 scored by the max over their tokens of `q̄ · k` (q̄ = the group's mean
//!   query), sink and recent blocks plus the best others up to the budget, ties to the lower
//!   block.

/// Token-level training mask.
#[derive(Clone, Copy, Debug)]
pub struct RatioMask {
    pub keep_ratio: f64,
    pub sink_tokens: usize,
    pub recent_tokens: usize,
}

impl RatioMask {
    /// Marks in `keep` (length ≥ `logits.len()`) the kept keys of one query whose valid keys
    /// are `logits` (positions `0..logits.len()`).
    pub fn keep(&self, logits: &[f32], keep: &mut [bool]) {
        let n = logits.len();
        keep[..n].fill(false);
        let sink = self.sink_tokens.min(n);
        let recent_from = n.saturating_sub(self.recent_tokens).max(sink);
        keep[..sink].fill(true);
        keep[recent_from..n].fill(true);
        let mut rest: Vec<usize> = (sink..recent_from).collect();
        let top = ((self.keep_ratio * n as f64).ceil() as usize).min(rest.len());
        if top == 0 {
            return;
        }
        // The highest logits first; equal logits keep the earlier key (deterministic).
        let by_score = |&i: &usize, &j: &usize| logits[j].total_cmp(&logits[i]).then(i.cmp(&j));
        if top < rest.len() {
            rest.select_nth_unstable_by(top - 1, by_score);
        }
        for &i in &rest[..top] {
            keep[i] = true;
        }
    }
}

/// The inference rule's budget, in blocks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockBudget {
    pub block_size: usize,
    pub budget: usize,
    pub sink: usize,
    pub recent: usize,
}

impl BlockBudget {
    /// The engine's defaults for a token budget: the budget rounded down to whole blocks (at
    /// least 2), sink = max(1 block, budget/8) and recent = max(1 block, budget/4), both rounded
    /// up to whole blocks (and together at most the budget).
    pub fn from_tokens(budget_tokens: usize, block_size: usize) -> Self {
        let budget = (budget_tokens / block_size).max(2);
        let blocks_up = |t: usize| t.max(block_size).div_ceil(block_size);
        let recent = blocks_up(budget_tokens / 4).min(budget - 1);
        let sink = blocks_up(budget_tokens / 8).min(budget - recent);
        Self { block_size, budget, sink, recent }
    }

    /// The selected blocks (ascending) for one query whose valid keys' raw scores `q̄ · k_i` are
    /// `scores` (positions `0..scores.len()`).
    pub fn select(&self, scores: &[f32]) -> Vec<usize> {
        let n = scores.len().div_ceil(self.block_size);
        if n <= self.budget {
            return (0..n).collect();
        }
        let block_score = |j: usize| scores[j * self.block_size..((j + 1) * self.block_size).min(scores.len())].iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut middle: Vec<(usize, f32)> = (self.sink..n - self.recent).map(|j| (j, block_score(j))).collect();
        middle.sort_by(|x, y| y.1.total_cmp(&x.1).then(x.0.cmp(&y.0)));
        let mut chosen: Vec<usize> = (0..self.sink).chain(n - self.recent..n).collect();
        chosen.extend(middle.iter().take(self.budget - self.sink - self.recent).map(|&(j, _)| j));
        chosen.sort_unstable();
        chosen
    }

    /// Marks in `keep` the keys `0..valid` inside `blocks`.
    pub fn keep(&self, blocks: &[usize], valid: usize, keep: &mut [bool]) {
        keep[..valid].fill(false);
        for &j in blocks {
            let lo = j * self.block_size;
            keep[lo.min(valid)..((j + 1) * self.block_size).min(valid)].fill(true);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratio_mask_keeps_sink_recent_and_the_top_share() {
        let m = RatioMask { keep_ratio: 0.2, sink_tokens: 2, recent_tokens: 3 };
        let logits = [0.0, 0.0, 5.0, -1.0, 9.0, 1.0, 9.0, 0.0, 0.0, 0.0];
        let mut keep = [false; 12];
        m.keep(&logits, &mut keep);
        // 2 sink + 3 recent + ceil(0.2·10) = 2 best of positions 2..7 (9.0 at 4 and at 6).
        assert_eq!(keep[..10], [true, true, false, false, true, false, true, true, true, true]);
        // A short context keeps everything it has.
        m.keep(&logits[..4], &mut keep);
        assert!(keep[..4].iter().all(|&k| k));
    }

    #[test]
    fn block_selection_follows_the_contract() {
        let b = BlockBudget::from_tokens(64, 4); // 16 blocks of 4, sink 2, recent 4
        assert_eq!((b.budget, b.sink, b.recent), (16, 2, 4));
        let b = BlockBudget { block_size: 2, budget: 4, sink: 1, recent: 1 };
        // 6 blocks of 2 tokens (the last partial): scores max-pooled per block.
        let s = [0.0, 0.0, 3.0, 1.0, 7.0, 0.0, 3.0, 2.0, 5.0, 9.0, 1.0];
        assert_eq!(b.select(&s), vec![0, 2, 4, 5]);
        // A tie between blocks 1 and 3 (both 3.0) for the one free slot: the lower wins.
        let tight = BlockBudget { budget: 3, ..b };
        let s = [0.0, 0.0, 3.0, 1.0, 0.0, 0.0, 3.0, 2.0, 0.0, 0.0, 1.0];
        assert_eq!(tight.select(&s), vec![0, 1, 5]);
        // Few blocks: all of them.
        assert_eq!(b.select(&s[..7]), vec![0, 1, 2, 3]);
        let mut keep = [false; 11];
        b.keep(&[0, 5], 11, &mut keep);
        assert_eq!(keep.iter().filter(|&&k| k).count(), 3);
    }
}
