//! The retrieval heads' block choice on the CPU (ALGORITHMS.md §2.2, block-level variant): for each
//! sparse sequence and each KV head that is retrieval in the layer, score every block by the max
//! over its valid keys of `q̄ · k` (q̄ = mean of the group's query vectors, raw logits), keep the
//! sink and recent blocks, and the highest-scoring others up to the budget.
//!
//! Owns: the scores and the top-k rule, ties to the lower block index so the choice is
//! deterministic. Must not know: roles beyond "which rows to rewrite", or how the selection is
//! consumed (the sparse heads of the layers above, through `walk` and the attention kernel).

use std::cmp::Ordering;

use rayon::prelude::*;

use super::plan::SparseDecodePlan;
use crate::paged::attention::cpu::{dot_at, Geometry, KvRows, Level};
use crate::paged::HostMetadata;

/// Rewrites, in `selection` (`[S, H, plan.width]`), the row of every sparse sequence and every KV
/// head retrieval in `layer`; other rows are left as they are. `q` is `[T, num_heads, head_dim]`.
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
    let retrieval = plan.roles.layer(layer);
    let heads = g.num_kv_heads;
    selection
        .par_chunks_mut(plan.width)
        .enumerate()
        .filter(|(row, _)| plan.is_sparse(row / heads) && retrieval[row % heads])
        .for_each(|(row, out)| choose_row(level, q, key, host, g, plan, row / heads, row % heads, out));
}

/// One retrieval head's choice for one sequence, written ascending and -1 padded into `out`.
#[allow(clippy::too_many_arguments)]
fn choose_row<K: KvRows>(
    level: Level,
    q: &[f32],
    key: &K,
    host: &HostMetadata,
    g: &Geometry,
    plan: &SparseDecodePlan,
    seq: usize,
    kv_head: usize,
    out: &mut [i32],
) {
    let blocks = (host.context_lens[seq] as usize).div_ceil(g.block_size);
    let budget = plan.host.budget_blocks[seq] as usize;
    out.fill(-1);
    if blocks <= budget {
        out.iter_mut().zip(0..).take(blocks).for_each(|(o, b)| *o = b);
        return;
    }
    // sink + recent <= budget < blocks (plan validation), so the two ranges never meet.
    let (sink, recent) = (plan.host.sink_blocks[seq] as usize, plan.host.recent_blocks[seq] as usize);
    let middle = sink..blocks - recent;
    let picks = budget - sink - recent;
    let mut chosen: Vec<usize> = Vec::with_capacity(budget);
    chosen.extend(0..sink);
    if picks > 0 {
        let q_mean = group_mean(q, host.query_range(seq).start, kv_head, g);
        let mut reader = KeyReader { scratch: Vec::new(), scales: vec![0f32; g.block_size] };
        let mut scored: Vec<(f32, usize)> =
            middle.clone().map(|b| (reader.block_score(level, &q_mean, key, host, g, seq, kv_head, b), b)).collect();
        scored.sort_unstable_by(higher_score_then_lower_block);
        let mut top: Vec<usize> = scored[..picks].iter().map(|&(_, b)| b).collect();
        top.sort_unstable();
        chosen.extend(top);
    }
    chosen.extend(middle.end..blocks);
    for (o, b) in out.iter_mut().zip(chosen) {
        *o = b as i32;
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
