//! StreamingLLM (Xiao et al., 2023): keep the first `sink_tokens` positions ("attention sinks")
//! and the most recent `budget − sink_tokens`, the same tokens in every layer and head.
//! Keys keep their original RoPE positions (no position shift: kvault stays within the model's
//! trained context, where StreamingLLM works without re-rotation).

use super::rule::{Chunk, EvictionRule};
use super::slots::{mask, HeadSlots};

pub struct Streaming {
    pub sink_tokens: usize,
}

impl EvictionRule for Streaming {
    fn voters(&self, _chunk: Chunk) -> Option<usize> {
        None
    }

    fn observe(&self, _head: &mut HeadSlots, _mass: &[f32], _chunk: Chunk) {}

    fn keep(&self, head: &HeadSlots, budget: usize, _chunk: Chunk) -> Vec<bool> {
        let order = head.by_position();
        let sinks = self.sink_tokens.min(budget);
        let recent = budget - sinks;
        let kept = order[..sinks].iter().chain(&order[order.len() - recent..]).copied();
        mask(head.len(), kept)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_sinks_and_the_most_recent_tokens_whatever_the_slot_order() {
        let head = HeadSlots { pos: vec![9, 0, 5, 1, 8, 2, 7], score: vec![0.0; 7], pinned: vec![false; 7] };
        let keep = Streaming { sink_tokens: 2 }.keep(&head, 4, Chunk { q_len: 1, in_prompt: false });
        let kept: Vec<u32> = (0..7).filter(|&i| keep[i]).map(|i| head.pos[i]).collect();
        assert_eq!(kept, vec![9, 0, 1, 8]);
    }
}
