//! The per-step side of KV budgets: an [`AttentionObserver`] that, in every layer right after
//! its attention, records this step's tokens for each budgeted request of the batch, lets the
//! requests' rules score them (one `attention_mass` call for all rows that vote), and trims
//! every head back to its budget by moving kept entries into freed slots (`move_slots`).
//!
//! Every layer trims to exactly the budget, so after the forward each budgeted request holds
//! `min(held + new, budget)` slots in every layer and head, and the block manager can free
//! the blocks past that (`KvCacheManager::trim`).
//!
//! Must not know: scheduling, sampling or which request a batch row belongs to beyond the
//! [`BudgetedSeq`] entries it is given.

use anyhow::{ensure, Result};
use kvault_kernels::{attention_mass, move_slots, MassVoter, SlotMoves};
use kvault_models::gates::RetentionGates;
use kvault_models::model::{AttentionObserver, LayerAttention};

use super::retention::new_tokens_log_beta;

use super::rule::{Chunk, EvictionRule};
use super::slots::{compact, RequestSlots};

/// One budgeted request in this step's batch.
pub struct BudgetedSeq<'a> {
    /// Its sequence index in the batch metadata.
    pub seq: usize,
    pub budget: usize,
    /// Position of the chunk's first token.
    pub start_pos: usize,
    /// Slots in use before this step (the chunk takes `[held_before, held_before + q_len)`).
    pub held_before: usize,
    pub chunk: Chunk,
    pub block_table: &'a [u32],
    pub rule: &'a dyn EvictionRule,
    pub slots: &'a mut RequestSlots,
}

pub struct Evictor<'a> {
    pub seqs: Vec<BudgetedSeq<'a>>,
    pub block_size: usize,
    /// The model's retention gates, for rules that rank by learned retention (`trimkv`).
    pub gates: Option<&'a RetentionGates>,
}

impl Evictor<'_> {
    fn physical(&self, table: &[u32], slot: usize) -> u32 {
        table[slot / self.block_size] * self.block_size as u32 + (slot % self.block_size) as u32
    }
}

impl Evictor<'_> {
    /// Stores each new token's `log β` (per KV head) as its slot's score, for the requests whose
    /// rule ranks by retention; one gate forward for all of them.
    fn score_retention(&mut self, a: &LayerAttention<'_>) -> Result<()> {
        let users: Vec<usize> = (0..self.seqs.len()).filter(|&i| self.seqs[i].rule.uses_retention()).collect();
        if users.is_empty() {
            return Ok(());
        }
        let gates = self.gates.ok_or_else(|| anyhow::anyhow!("kv_policy trimkv needs retention gates, and none are loaded"))?;
        let gate = gates.layers.get(a.layer).ok_or_else(|| anyhow::anyhow!("the retention gates have no layer {}", a.layer))?;
        let batch_seqs: Vec<usize> = users.iter().map(|&i| self.seqs[i].seq).collect();
        let log_beta = new_tokens_log_beta(gate, a.hidden, a.meta, &batch_seqs)?;
        for (&i, per_token) in users.iter().zip(log_beta) {
            let s = &mut self.seqs[i];
            for (h, head) in s.slots.layers[a.layer].iter_mut().enumerate() {
                for (j, token) in per_token.iter().enumerate() {
                    head.score[s.held_before + j] = token[h];
                }
            }
        }
        Ok(())
    }
}

impl AttentionObserver for Evictor<'_> {
    fn after_attention(&mut self, a: LayerAttention<'_>) -> Result<()> {
        let layer = a.layer;
        for s in &mut self.seqs {
            let heads = s.slots.layers.get_mut(layer).ok_or_else(|| anyhow::anyhow!("no slot state for layer {layer}"))?;
            for head in heads.iter_mut() {
                ensure!(head.len() == s.held_before, "layer {layer}: slot state holds {} tokens, the cache {}", head.len(), s.held_before);
                head.push_chunk(s.start_pos, s.chunk.q_len);
            }
        }
        self.score_retention(&a)?;
        // One mass computation for every row that votes, across requests.
        let voting: Vec<(usize, MassVoter)> = self
            .seqs
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.rule.voters(s.chunk).map(|first_query| (i, MassVoter { seq: s.seq, first_query })))
            .collect();
        if !voting.is_empty() {
            let voters: Vec<MassVoter> = voting.iter().map(|v| v.1).collect();
            let mass = attention_mass(a.q, a.cache, a.meta, a.softmax_scale, &voters)?.to_vec3::<f32>()?;
            for ((i, _), per_head) in voting.iter().zip(mass) {
                let s = &mut self.seqs[*i];
                for (head, m) in s.slots.layers[layer].iter_mut().zip(per_head) {
                    let n = head.len();
                    s.rule.observe(head, &m[..n], s.chunk);
                }
            }
        }
        let mut moves = Vec::new();
        for i in 0..self.seqs.len() {
            let s = &mut self.seqs[i];
            if s.held_before + s.chunk.q_len <= s.budget {
                continue;
            }
            let (budget, chunk, rule) = (s.budget, s.chunk, s.rule);
            let mut head_moves = Vec::new();
            for (h, head) in s.slots.layers[layer].iter_mut().enumerate() {
                let keep = rule.keep(head, budget, chunk);
                head_moves.extend(compact(head, &keep, budget).into_iter().map(|(from, to)| (h, from, to)));
            }
            let table = self.seqs[i].block_table;
            moves.extend(
                head_moves.into_iter().map(|(h, from, to)| [h as u32, self.physical(table, from), self.physical(table, to)]),
            );
        }
        if !moves.is_empty() {
            move_slots(a.cache, &SlotMoves::new(moves, a.q.device())?)?;
        }
        Ok(())
    }
}
