//! H2O (Zhang et al., 2023): every token accumulates the attention it receives from every query
//! (prefill rows included, summed over the query heads of its KV head); keep the
//! `recent_window` most recent tokens plus the heaviest hitters among the rest.

use super::rule::{Chunk, EvictionRule};
use super::slots::{mask, top_k_by_score, HeadSlots};

pub struct H2o {
    pub recent_window: usize,
}

impl EvictionRule for H2o {
    fn voters(&self, _chunk: Chunk) -> Option<usize> {
        Some(0)
    }

    fn observe(&self, head: &mut HeadSlots, mass: &[f32], _chunk: Chunk) {
        for (s, m) in head.score.iter_mut().zip(mass) {
            *s += m;
        }
    }

    fn keep(&self, head: &HeadSlots, budget: usize, _chunk: Chunk) -> Vec<bool> {
        let order = head.by_position();
        let recent = self.recent_window.min(budget);
        let (older, newest) = order.split_at(order.len() - recent);
        let heavy = top_k_by_score(head, older, budget - recent);
        mask(head.len(), heavy.into_iter().chain(newest.iter().copied()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_recent_window_and_the_heaviest_older_tokens() {
        let mut head = HeadSlots::default();
        head.push_chunk(0, 8);
        let rule = H2o { recent_window: 2 };
        let chunk = Chunk { q_len: 8, in_prompt: true };
        rule.observe(&mut head, &[0.1, 3.0, 0.2, 0.1, 2.0, 0.1, 0.0, 0.0], chunk);
        rule.observe(&mut head, &[0.0, 0.0, 0.0, 0.1, 0.5, 0.1, 0.0, 0.0], chunk);
        let keep = rule.keep(&head, 4, chunk);
        assert_eq!(keep, vec![false, true, false, false, true, false, true, true]);
    }
}
