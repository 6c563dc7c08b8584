//! Which token each slot of a budgeted request holds, per layer and KV head (the host's picture
//! of the cache's `slot_pos`, plus each policy's score), and the compaction that keeps a
//! request's kept tokens in slots `[0, budget)` after a head chose them.
//!
//! Owns: [`RequestSlots`] and [`compact`]. Must not know why a token is kept (the rules decide)
//! nor where slots live physically (the evictor maps slot indices through the block table).

/// One KV head's slots in one layer: entry `i` describes slot `i`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HeadSlots {
    /// Original position of the token in each slot (its key carries that RoPE).
    pub pos: Vec<u32>,
    /// The policy's score (H2O: accumulated attention; SnapKV: the last pooled vote).
    pub score: Vec<f32>,
    /// Kept no matter what (SnapKV: the tokens the prompt's window selected).
    pub pinned: Vec<bool>,
}

impl HeadSlots {
    pub fn len(&self) -> usize {
        self.pos.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pos.is_empty()
    }

    /// Appends a chunk's tokens, in position order, with no score yet.
    pub fn push_chunk(&mut self, start_pos: usize, len: usize) {
        self.pos.extend((start_pos..start_pos + len).map(|p| p as u32));
        self.score.resize(self.pos.len(), 0.0);
        self.pinned.resize(self.pos.len(), false);
    }

    /// Slot indices ordered by position, oldest first.
    pub fn by_position(&self) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.len()).collect();
        order.sort_unstable_by_key(|&i| self.pos[i]);
        order
    }
}

/// A budgeted request's slots: `[layer][kv_head]`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RequestSlots {
    pub layers: Vec<Vec<HeadSlots>>,
}

impl RequestSlots {
    pub fn new(num_layers: usize, num_kv_heads: usize) -> Self {
        Self { layers: vec![vec![HeadSlots::default(); num_kv_heads]; num_layers] }
    }

    /// Forgets every token (preemption by recompute starts the request over).
    pub fn clear(&mut self) {
        for head in self.layers.iter_mut().flatten() {
            *head = HeadSlots::default();
        }
    }
}

/// Keeps the slots marked in `keep` (exactly `budget` of them) in `[0, budget)`: each kept slot
/// at or past `budget` moves into an evicted slot below it, in order. Returns the moves as
/// `(from, to)` slot indices, already applied to `head`.
///
/// Why move instead of writing new tokens into holes: every head then uses the same slots
/// `[0, budget)`, so the next step's tokens take the same slots in every head (one slot mapping),
/// and every kept token stays before every new one (attention's causal rule is unchanged). It
/// costs one K/V row copy per moved token, at most the number evicted.
pub fn compact(head: &mut HeadSlots, keep: &[bool], budget: usize) -> Vec<(usize, usize)> {
    debug_assert_eq!(keep.len(), head.len());
    debug_assert_eq!(keep.iter().filter(|&&k| k).count(), budget);
    let holes = (0..budget.min(keep.len())).filter(|&i| !keep[i]);
    let movers = (budget..keep.len()).filter(|&i| keep[i]);
    let moves: Vec<(usize, usize)> = movers.zip(holes).collect();
    for &(from, to) in &moves {
        head.pos[to] = head.pos[from];
        head.score[to] = head.score[from];
        head.pinned[to] = head.pinned[from];
    }
    head.pos.truncate(budget);
    head.score.truncate(budget);
    head.pinned.truncate(budget);
    moves
}

/// The `k` indices of `candidates` with the highest score; ties go to the newer position, so the
/// choice never depends on slot order.
pub fn top_k_by_score(head: &HeadSlots, candidates: &[usize], k: usize) -> Vec<usize> {
    let mut sorted = candidates.to_vec();
    sorted.sort_unstable_by(|&a, &b| {
        head.score[b].total_cmp(&head.score[a]).then(head.pos[b].cmp(&head.pos[a]))
    });
    sorted.truncate(k);
    sorted
}

/// A keep mask over the head's slots from a list of kept indices.
pub fn mask(len: usize, kept: impl IntoIterator<Item = usize>) -> Vec<bool> {
    let mut m = vec![false; len];
    for i in kept {
        m[i] = true;
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(pos: &[u32]) -> HeadSlots {
        HeadSlots { pos: pos.to_vec(), score: pos.iter().map(|&p| p as f32 / 10.0).collect(), pinned: vec![false; pos.len()] }
    }

    #[test]
    fn compaction_moves_kept_tail_slots_into_holes_and_keeps_every_kept_token() {
        // Budget 4 of 7 slots: keep slots 0, 2, 5, 6 → 5 → 1, 6 → 3.
        let mut h = head(&[10, 11, 12, 13, 14, 15, 16]);
        let keep = mask(7, [0, 2, 5, 6]);
        let moves = compact(&mut h, &keep, 4);
        assert_eq!(moves, vec![(5, 1), (6, 3)]);
        let mut kept = h.pos.clone();
        kept.sort();
        assert_eq!(kept, vec![10, 12, 15, 16]);
        assert_eq!(h.score, vec![1.0, 1.5, 1.2, 1.6]);
    }

    #[test]
    fn nothing_moves_when_the_kept_slots_are_already_below_the_budget() {
        let mut h = head(&[1, 2, 3, 4, 5]);
        assert!(compact(&mut h, &mask(5, [0, 1, 2]), 3).is_empty());
        assert_eq!(h.pos, vec![1, 2, 3]);
    }

    #[test]
    fn top_k_breaks_ties_by_newer_position_whatever_the_slot_order() {
        let h = HeadSlots { pos: vec![7, 3, 9, 5], score: vec![1.0, 2.0, 1.0, 1.0], pinned: vec![false; 4] };
        assert_eq!(top_k_by_score(&h, &[0, 1, 2, 3], 2), vec![1, 2]);
        assert_eq!(top_k_by_score(&h, &[3, 2, 1, 0], 3), vec![1, 2, 0]);
    }
}
