//! SnapKV (Li et al., 2024), under chunked prefill and a fixed budget: the last `window` queries
//! of each prompt chunk vote with their attention over every held token; the votes are pooled
//! along positions (kernel `kernel`, "same" padding) and the top `budget − window` older tokens
//! are kept with the window itself. The last prompt chunk's choice is the paper's; its voted
//! tokens are pinned, and decode then keeps them and slides the rest of the budget over the
//! newest tokens (evicting the oldest non-selected token once over budget).

use super::rule::{Chunk, EvictionRule};
use super::slots::{mask, top_k_by_score, HeadSlots};
use super::spec::Pooling;

pub struct SnapKv {
    pub window: usize,
    pub kernel: usize,
    pub pooling: Pooling,
}

impl SnapKv {
    /// Older tokens (outside the window) and the window, by position.
    fn split(&self, head: &HeadSlots) -> (Vec<usize>, Vec<usize>) {
        let order = head.by_position();
        let w = self.window.min(order.len());
        let (older, window) = order.split_at(order.len() - w);
        (older.to_vec(), window.to_vec())
    }
}

impl EvictionRule for SnapKv {
    fn voters(&self, chunk: Chunk) -> Option<usize> {
        chunk.in_prompt.then(|| chunk.q_len.saturating_sub(self.window))
    }

    /// Replaces the scores with this chunk's pooled votes and pins the tokens they select.
    fn observe(&self, head: &mut HeadSlots, mass: &[f32], _chunk: Chunk) {
        let order = head.by_position();
        let votes: Vec<f32> = order.iter().map(|&i| mass[i]).collect();
        let pooled = pool(&votes, self.kernel, self.pooling);
        for (&i, v) in order.iter().zip(pooled) {
            head.score[i] = v;
        }
        head.pinned.iter_mut().for_each(|p| *p = false);
        // Pinned = what this vote keeps of the older tokens if the budget were the whole head;
        // `keep` narrows it to the budget when it trims.
        let (older, _) = self.split(head);
        for i in older {
            head.pinned[i] = true;
        }
    }

    fn keep(&self, head: &HeadSlots, budget: usize, chunk: Chunk) -> Vec<bool> {
        if chunk.in_prompt {
            let (older, window) = self.split(head);
            let window = &window[window.len().saturating_sub(budget)..];
            let voted = top_k_by_score(head, &older, budget - window.len());
            return mask(head.len(), voted.into_iter().chain(window.iter().copied()));
        }
        // Decode: the prompt's selection stays; the newest unpinned tokens fill the rest.
        let order = head.by_position();
        let pinned: Vec<usize> = order.iter().copied().filter(|&i| head.pinned[i]).collect();
        let pinned = top_k_by_score(head, &pinned, budget);
        let room = budget - pinned.len();
        let unpinned: Vec<usize> = order.iter().copied().filter(|&i| !head.pinned[i]).collect();
        let newest = &unpinned[unpinned.len() - room.min(unpinned.len())..];
        mask(head.len(), pinned.into_iter().chain(newest.iter().copied()))
    }
}

/// 1-D pooling with stride 1 and "same" padding (the window shrinks at the edges, as
/// `avg_pool1d(count_include_pad=False)` / `max_pool1d` with padding do).
fn pool(votes: &[f32], kernel: usize, pooling: Pooling) -> Vec<f32> {
    let half = kernel / 2;
    (0..votes.len())
        .map(|i| {
            let window = &votes[i.saturating_sub(half)..(i + half + 1).min(votes.len())];
            match pooling {
                Pooling::Max => window.iter().copied().fold(f32::NEG_INFINITY, f32::max),
                Pooling::Avg => window.iter().sum::<f32>() / window.len() as f32,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pooling_smooths_votes_along_positions() {
        assert_eq!(pool(&[0.0, 3.0, 0.0, 0.0], 3, Pooling::Max), vec![3.0, 3.0, 3.0, 0.0]);
        assert_eq!(pool(&[0.0, 3.0, 0.0, 0.0], 3, Pooling::Avg), vec![1.5, 1.0, 1.0, 0.0]);
        assert_eq!(pool(&[1.0, 2.0], 1, Pooling::Avg), vec![1.0, 2.0]);
    }

    #[test]
    fn prompt_chunks_keep_the_window_and_the_top_voted_older_tokens_then_decode_slides() {
        let rule = SnapKv { window: 2, kernel: 1, pooling: Pooling::Avg };
        let prompt = Chunk { q_len: 8, in_prompt: true };
        let mut head = HeadSlots::default();
        head.push_chunk(0, 8);
        assert_eq!(rule.voters(prompt), Some(6));
        rule.observe(&mut head, &[0.1, 0.9, 0.0, 0.8, 0.0, 0.0, 0.1, 0.1], prompt);
        let keep = rule.keep(&head, 4, prompt);
        assert_eq!(keep, vec![false, true, false, true, false, false, true, true]);
        let moves = super::super::slots::compact(&mut head, &keep, 4);
        assert_eq!(moves.len(), 2);
        // Decode: positions 1 and 3 stay pinned; the newest tokens slide through the other slots.
        let decode = Chunk { q_len: 1, in_prompt: false };
        assert_eq!(rule.voters(decode), None);
        head.push_chunk(8, 1);
        let keep = rule.keep(&head, 4, decode);
        let kept: Vec<u32> = (0..5).filter(|&i| keep[i]).map(|i| head.pos[i]).collect();
        let mut kept_sorted = kept.clone();
        kept_sorted.sort();
        assert_eq!(kept_sorted, vec![1, 3, 7, 8]);
    }
}
