//! TRIM-KV (Bui et al., "Cache What Lasts", ICLR 2026): every token gets, per KV head, a learned
//! retention `β` when it is written (its slot's score holds `log β`); at step `t` its importance
//! is `β^(t − pos)`, and each head keeps the `budget` tokens with the highest
//! `log β · (t − pos)`. The ranking changes over time — an old high-β token can overtake a young
//! low-β one — so scores are recomputed at every eviction (one multiply per slot).

use super::rule::{Chunk, EvictionRule};
use super::slots::{mask, top_k_by_score, HeadSlots};

pub struct TrimKv;

/// What a user without gates should run (the one-line errors of every entry point end with it).
pub const NO_GATES_HINT: &str = "train them with `kvault train-gates --model MODEL --data TEXT --budget 128 --out trimkv_gates.safetensors`, then pass --kv-gates PATH or put the file beside the model as trimkv_gates.safetensors";

/// `log β · (t − pos)` for every slot, with `t` the position of the next token (the paper's
/// `t_next`: the newest held position + 1).
pub fn retention_scores(head: &HeadSlots) -> Vec<f32> {
    let t = head.pos.iter().max().map_or(0, |&p| p + 1);
    head.pos.iter().zip(&head.score).map(|(&p, &log_beta)| log_beta * (t - p) as f32).collect()
}

impl EvictionRule for TrimKv {
    fn voters(&self, _chunk: Chunk) -> Option<usize> {
        None
    }

    fn observe(&self, _head: &mut HeadSlots, _mass: &[f32], _chunk: Chunk) {}

    fn keep(&self, head: &HeadSlots, budget: usize, _chunk: Chunk) -> Vec<bool> {
        // Rank by the decayed retention; ties (β = 1 everywhere, say) keep the newer token.
        let ranked = HeadSlots { pos: head.pos.clone(), score: retention_scores(head), pinned: Vec::new() };
        let all: Vec<usize> = (0..head.len()).collect();
        mask(head.len(), top_k_by_score(&ranked, &all, budget))
    }

    fn uses_retention(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::super::slots::compact;
    use super::*;

    /// Hand-set β: the needle (position 2) has β = 0.9999, one young token (position 9) β = 0.5,
    /// every other token 0.99. One token arrives per step under a budget of 4.
    #[test]
    fn evicts_in_the_analytic_order_over_time() {
        let log_beta = |p: u32| -> f32 {
            match p {
                2 => 0.9999f32.ln(),
                9 => 0.5f32.ln(),
                _ => 0.99f32.ln(),
            }
        };
        let budget = 4;
        let mut head = HeadSlots::default();
        // The analytic process on positions alone: add the token, and when over budget keep the
        // 4 highest log β_p · (t − p) (ties: the newer), with t = the new token's position + 1.
        let mut want: Vec<u32> = Vec::new();
        let mut history = Vec::new();
        for pos in 0..14u32 {
            head.push_chunk(pos as usize, 1);
            let n = head.len();
            head.score[n - 1] = log_beta(pos);
            if head.len() > budget {
                let keep = TrimKv.keep(&head, budget, Chunk { q_len: 1, in_prompt: false });
                compact(&mut head, &keep, budget);
            }
            want.push(pos);
            if want.len() > budget {
                let t = pos + 1;
                want.sort_by(|&a, &b| (log_beta(b) * (t - b) as f32).total_cmp(&(log_beta(a) * (t - a) as f32)).then(b.cmp(&a)));
                want.truncate(budget);
            }
            want.sort();
            let mut held = head.pos.clone();
            held.sort();
            assert_eq!(held, want, "after position {pos}");
            history.push(held);
        }
        // By hand: each step drops the oldest β = 0.99 token; the needle stays throughout; the
        // young β = 0.5 token (9) is dropped the step it arrives, behind older 0.99 tokens (6–8).
        assert_eq!(history[8], vec![2, 6, 7, 8]);
        assert_eq!(history[9], vec![2, 6, 7, 8]);
        assert_eq!(history[10], vec![2, 7, 8, 10]);
        assert_eq!(history[13], vec![2, 11, 12, 13]);
        assert!(history[2..].iter().all(|h| h.contains(&2)));
    }

    #[test]
    fn a_young_token_leads_an_older_high_beta_one_only_for_a_while() {
        // A: position 0, β = 0.999; B: position 80, β = 0.99; the newest token has β = 1.
        // log α_A = t·ln 0.999, log α_B = (t − 80)·ln 0.99: B leads until t ≈ 88.9, then A.
        let kept = |t_next: u32| {
            let h = HeadSlots { pos: vec![0, 80, t_next - 1], score: vec![0.999f32.ln(), 0.99f32.ln(), 0.0], pinned: vec![false; 3] };
            let keep = TrimKv.keep(&h, 2, Chunk { q_len: 1, in_prompt: false });
            (0..3).filter(|&i| keep[i]).map(|i| h.pos[i]).collect::<Vec<_>>()
        };
        assert_eq!(kept(82), vec![80, 81]);
        assert_eq!(kept(88), vec![80, 87]);
        assert_eq!(kept(89), vec![0, 88]);
        assert_eq!(kept(200), vec![0, 199]);
    }

    #[test]
    fn equal_retention_keeps_the_newest_tokens() {
        let h = HeadSlots { pos: vec![4, 1, 3, 0, 2], score: vec![0.0; 5], pinned: vec![false; 5] };
        let keep = TrimKv.keep(&h, 3, Chunk { q_len: 5, in_prompt: true });
        assert_eq!(keep, vec![true, false, true, false, true]);
    }
}
