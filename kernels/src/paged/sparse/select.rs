//! The retrieval heads' block choice on the CPU (ALGORITHMS.md §2.2, block-level variant): for each
//! sparse sequence and each KV head that is retrieval in the layer, score every block by the max
//! over its valid keys of `q̄ · k` (q̄ = mean of the group's query vectors, raw logits), keep the
//! sink and recent blocks, and the highest-scoring others up to the budget.
//!
//! Owns: the scores and the top-k rule, ties to the lower block index so the choice is
//! deterministic. Must not know: roles beyond "which rows to rewrite", or how the selection is
//! consumed (the sparse heads of the layers above, through `walk` and the attention kernel).

use std::cmp::Ordering;
use std::ops::Range;

use rayon::prelude::*;

use super::plan::SparseDecodePlan;
use crate::paged::attention::cpu::{dot_at, Geometry, KvRows, Level, SPLIT_KEYS};
use crate::paged::HostMetadata;

/// Rewrites, in `selection` (`[S, H, plan.width]`), the row of every sparse sequence and every KV
/// head retrieval in `layer`; other rows are left as they are. `q` is `[T, num_heads, head_dim]`.
///
/// Scoring runs in tasks of at most `SPLIT_KEYS` keys, like the attention kernel's items, so one
/// long sequence's scoring keeps every core busy too; the top-k of each row is then sequential.
#[allow(clippy::too_many_arguments)]
pub(super) fn choose_blocks<K: KvRows>(
    level: Level,
    q: &[f32],
    key: &K,
    host: &HostMetadata,
    g: &Geometry,
    plan: &SparseDecodePlan,
    layer: usize,
    selection: &mut [i32],
) {
    let (retrieval, heads, width) = (plan.roles.layer(layer), g.num_kv_heads, plan.width);
    let rows: Vec<RowChoice> = (0..selection.len() / width)
        .filter(|row| plan.is_sparse(row / heads) && retrieval[row % heads])
        .map(|row| RowChoice::new(row, row / heads, row % heads, host, g, plan))
        .collect();
    let per_task = (SPLIT_KEYS / g.block_size).max(1);
    let tasks: Vec<(usize, Range<usize>)> = rows
        .iter()
        .enumerate()
        .flat_map(|(i, r)| r.scored.clone().step_by(per_task).map(move |b| (i, b..(b + per_task).min(r.scored.end))))
        .collect();
    let scores: Vec<Vec<f32>> = tasks
        .par_iter()
        .map(|(i, blocks)| {
            let r = &rows[*i];
            let q_mean = group_mean(q, host.query_range(r.seq).start, r.kv_head, g);
            let mut reader = KeyReader { scratch: Vec::new(), scales: vec![0f32; g.block_size] };
            blocks.clone().map(|b| reader.block_score(level, &q_mean, key, host, g, r.seq, r.kv_head, b)).collect()
        })
        .collect();
    let mut row_scores: Vec<Vec<f32>> = vec![Vec::new(); rows.len()];
    for ((i, _), task_scores) in tasks.iter().zip(scores) {
        row_scores[*i].extend(task_scores); // a row's tasks are in block order
    }
    for (r, scores) in rows.iter().zip(row_scores) {
        r.write(&scores, &mut selection[r.row * width..(r.row + 1) * width]);
    }
}

/// One retrieval head's choice for one sparse sequence.
struct RowChoice {
    /// Row of the selection (`seq * H + kv_head`).
    row: usize,
    seq: usize,
    kv_head: usize,
    /// Blocks of the context.
    blocks: usize,
    /// The budget covers the context: every block, no scores.
    fits: bool,
    sink: usize,
    recent: usize,
    /// Blocks chosen by score.
    picks: usize,
    /// Blocks competing for the picks (empty when there is nothing to pick).
    scored: Range<usize>,
}

impl RowChoice {
    fn new(row: usize, seq: usize, kv_head: usize, host: &HostMetadata, g: &Geometry, plan: &SparseDecodePlan) -> Self {
        let blocks = (host.context_lens[seq] as usize).div_ceil(g.block_size);
        let budget = plan.host.budget_blocks[seq] as usize;
        let (sink, recent) = (plan.host.sink_blocks[seq] as usize, plan.host.recent_blocks[seq] as usize);
        // sink + recent <= budget (plan validation); when budget < blocks the sink and recent
        // ranges never meet and `picks` blocks come from between them.
        let fits = blocks <= budget;
        let picks = if fits { 0 } else { budget - sink - recent };
        let scored = if picks > 0 { sink..blocks - recent } else { 0..0 };
        Self { row, seq, kv_head, blocks, fits, sink, recent, picks, scored }
    }

    /// Writes the choice, ascending and -1 padded; `scores[i]` is block `scored.start + i`'s.
    fn write(&self, scores: &[f32], out: &mut [i32]) {
        out.fill(-1);
        let chosen: Vec<usize> = if self.fits {
            (0..self.blocks).collect()
        } else {
            let mut ranked: Vec<(f32, usize)> = scores.iter().zip(self.scored.clone()).map(|(&s, b)| (s, b)).collect();
            ranked.sort_unstable_by(higher_score_then_lower_block);
            let mut top: Vec<usize> = ranked[..self.picks].iter().map(|&(_, b)| b).collect();
            top.sort_unstable();
            (0..self.sink).chain(top).chain(self.blocks - self.recent..self.blocks).collect()
        };
        for (o, b) in out.iter_mut().zip(chosen) {
            *o = b as i32;
        }
    }
}

/// Descending score, then ascending block: a total order, so the top-k is unique. `+ 0.0`
/// turns -0.0 into +0.0, which `total_cmp` would otherwise rank below it.
fn higher_score_then_lower_block(a: &(f32, usize), b: &(f32, usize)) -> Ordering {
    (b.0 + 0.0).total_cmp(&(a.0 + 0.0)).then(a.1.cmp(&b.1))
}

/// `(Σ_g q_g) / G` over the group's query heads of `token`, summed in head order.
fn group_mean(q: &[f32], token: usize, kv_head: usize, g: &Geometry) -> Vec<f32> {
    let (group, hd) = (g.num_heads / g.num_kv_heads, g.head_dim);
    let heads = &q[(token * g.num_heads + kv_head * group) * hd..][..group * hd];
    let mut mean = heads[..hd].to_vec();
    for head in heads.chunks_exact(hd).skip(1) {
        mean.iter_mut().zip(head).for_each(|(m, &x)| *m += x);
    }
    mean.iter_mut().for_each(|m| *m /= group as f32);
    mean
}

/// Scratch for reading one block's keys at a time.
struct KeyReader {
    scratch: Vec<f32>,
    scales: Vec<f32>,
}

impl KeyReader {
    /// Max over the block's valid keys of `q_mean · k`; a quantized key's dot is scaled by its row
    /// scale afterwards (the dequantized dot, as `paged_attention` computes scores).
    #[allow(clippy::too_many_arguments)]
    fn block_score<K: KvRows>(
        &mut self,
        level: Level,
        q_mean: &[f32],
        key: &K,
        host: &HostMetadata,
        g: &Geometry,
        seq: usize,
        kv_head: usize,
        block: usize,
    ) -> f32 {
        let (bs, hd) = (g.block_size, g.head_dim);
        let valid = (host.context_lens[seq] as usize - block * bs).min(bs);
        let slab = host.block_table(seq)[block] as usize * g.num_kv_heads + kv_head;
        let (rows, quantized) = key.rows(slab, valid, &mut self.scratch, &mut self.scales);
        let mut best = f32::NEG_INFINITY;
        for (i, k) in rows.chunks_exact(hd).take(valid).enumerate() {
            let dot = dot_at(level, q_mean, k);
            best = best.max(if quantized { dot * self.scales[i] } else { dot });
        }
        best
    }
}
