//! One decode step's sparse-decode description: which sequences decode sparsely, with what block
//! budget, sink and recent window, under which head roles, plus the selection layer 0 starts from.
//!
//! Owns: building the plan's device tensors and host mirrors, validating them against the step's
//! [`AttentionMetadata`] once (the ops, called per layer, repeat only the O(S) checks), and the
//! initial selection. Must not know: how the engine picks budgets (its `kv_budget` and defaults)
//! or how blocks are scored.

use std::sync::Arc;

use candle_core::{bail, Device, Result, Tensor};

use super::roles::HeadRoles;
use crate::paged::AttentionMetadata;

/// Host copies of the plan's per-sequence tensors, for the CPU ops and launch sizing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SparsePlanHost {
    /// `[S]` blocks a sparse sequence's sparse heads attend; 0 = the sequence attends fully.
    pub budget_blocks: Vec<u32>,
    /// `[S]` leading blocks a retrieval head always keeps.
    pub sink_blocks: Vec<u32>,
    /// `[S]` trailing blocks a retrieval head always keeps (>= 1 where budget > 0).
    pub recent_blocks: Vec<u32>,
}

/// One step's sparse-decode description (built by the engine beside `AttentionMetadata`).
#[derive(Clone, Debug)]
pub struct SparseDecodePlan {
    pub roles: Arc<HeadRoles>,
    /// Mirrors of the tensors below.
    pub host: SparsePlanHost,
    /// U32 `[S]`: 0 = attends fully.
    pub budget_blocks: Tensor,
    /// U32 `[S]`.
    pub sink_blocks: Tensor,
    /// U32 `[S]`.
    pub recent_blocks: Tensor,
    /// U8 `[L, H]`: 1 = retrieval (for device kernels).
    pub roles_tensor: Tensor,
    /// Selection width `K` = max budget_blocks (>= 1).
    pub width: usize,
}

impl SparseDecodePlan {
    /// Validates against `meta`: one entry per sequence; budget > 0 only for q_len == 1 rows;
    /// sink + recent <= budget and recent >= 1 where budget > 0. (Roles' KV heads against the
    /// cache's are checked by the ops, which see the cache.)
    pub fn new(
        roles: Arc<HeadRoles>,
        budget_blocks: Vec<u32>,
        sink_blocks: Vec<u32>,
        recent_blocks: Vec<u32>,
        meta: &AttentionMetadata,
        device: &Device,
    ) -> Result<Self> {
        let num_seqs = meta.num_seqs;
        if budget_blocks.len() != num_seqs || sink_blocks.len() != num_seqs || recent_blocks.len() != num_seqs {
            bail!(
                "SparseDecodePlan: {} budgets, {} sinks and {} recent windows for a batch of {num_seqs} sequences",
                budget_blocks.len(),
                sink_blocks.len(),
                recent_blocks.len()
            )
        }
        for s in 0..num_seqs {
            let (budget, sink, recent) = (budget_blocks[s], sink_blocks[s], recent_blocks[s]);
            if budget == 0 {
                continue;
            }
            if recent == 0 {
                bail!("SparseDecodePlan: sequence {s} decodes sparsely (budget {budget} blocks) with no recent block; its newest block must stay in")
            }
            if sink as u64 + recent as u64 > budget as u64 {
                bail!("SparseDecodePlan: sequence {s}: sink {sink} + recent {recent} blocks exceed its budget of {budget} blocks")
            }
        }
        let host = SparsePlanHost { budget_blocks, sink_blocks, recent_blocks };
        check_decode_rows(&host.budget_blocks, meta, "SparseDecodePlan")?;
        let width = host.budget_blocks.iter().copied().max().unwrap_or(0).max(1) as usize;
        let retrieval: Vec<u8> = (0..roles.num_layers()).flat_map(|l| roles.layer(l).iter().map(|&r| r as u8)).collect();
        Ok(Self {
            budget_blocks: Tensor::from_slice(&host.budget_blocks, num_seqs, device)?,
            sink_blocks: Tensor::from_slice(&host.sink_blocks, num_seqs, device)?,
            recent_blocks: Tensor::from_slice(&host.recent_blocks, num_seqs, device)?,
            roles_tensor: Tensor::from_vec(retrieval, (roles.num_layers(), roles.num_kv_heads()), device)?,
            roles,
            host,
            width,
        })
    }

    /// Whether sequence `seq` decodes sparsely this step (budget > 0).
    pub fn is_sparse(&self, seq: usize) -> bool {
        self.host.budget_blocks[seq] > 0
    }

    /// I32 `[S, H, K]`: for sparse sequences, every head's list = sink blocks ∪ recent blocks
    /// (ascending, -1 padded); all -1 for the others. What layer 0 (all retrieval) starts from.
    pub fn initial_selection(&self, meta: &AttentionMetadata) -> Result<Tensor> {
        self.check_batch(meta, "initial_selection")?;
        let (heads, width) = (self.roles.num_kv_heads(), self.width);
        let mut rows = vec![-1i32; meta.num_seqs * heads * width];
        for (s, seq_rows) in rows.chunks_exact_mut(heads * width).enumerate() {
            if !self.is_sparse(s) {
                continue;
            }
            let n = (meta.host.context_lens[s] as usize).div_ceil(meta.block_size());
            let sink = (self.host.sink_blocks[s] as usize).min(n);
            let recent_start = n.saturating_sub(self.host.recent_blocks[s] as usize).max(sink);
            let blocks: Vec<i32> = (0..sink).chain(recent_start..n).map(|b| b as i32).collect();
            for row in seq_rows.chunks_exact_mut(width) {
                row[..blocks.len()].copy_from_slice(&blocks);
            }
        }
        Tensor::from_vec(rows, (meta.num_seqs, heads, width), self.budget_blocks.device())
    }

    /// The O(S) checks an op repeats against the metadata it is given: one entry per sequence,
    /// and only decode rows decode sparsely.
    pub(crate) fn check_batch(&self, meta: &AttentionMetadata, op: &str) -> Result<()> {
        if self.host.budget_blocks.len() != meta.num_seqs {
            bail!("{op}: the sparse plan has {} sequences, the metadata {}", self.host.budget_blocks.len(), meta.num_seqs)
        }
        check_decode_rows(&self.host.budget_blocks, meta, op)
    }
}

fn check_decode_rows(budget_blocks: &[u32], meta: &AttentionMetadata, op: &str) -> Result<()> {
    for (s, &budget) in budget_blocks.iter().enumerate() {
        let q_len = meta.host.query_range(s).len();
        if budget > 0 && q_len != 1 {
            bail!("{op}: sequence {s} has a budget of {budget} blocks but {q_len} queries; only decode rows (q_len 1) decode sparsely")
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::paged::sparse::test_fixture::message;

    /// Seq 0: decode at context 100 (7 blocks of 16); seq 1: a 5-token prefill chunk at context
    /// 40; seq 2: decode at context 20 (2 blocks).
    fn meta() -> Result<AttentionMetadata> {
        AttentionMetadata::new(
            vec![-1; 7],
            vec![99, 35, 36, 37, 38, 39, 19],
            vec![vec![0, 1, 2, 3, 4, 5, 6], vec![7, 8, 9], vec![10, 11]],
            vec![1, 5, 1],
            vec![100, 40, 20],
            16,
            &Device::Cpu,
        )
    }

    fn roles() -> Arc<HeadRoles> {
        Arc::new(HeadRoles::all_retrieval(2, 2))
    }

    fn plan(budget: Vec<u32>, sink: Vec<u32>, recent: Vec<u32>) -> Result<SparseDecodePlan> {
        SparseDecodePlan::new(roles(), budget, sink, recent, &meta()?, &Device::Cpu)
    }

    fn one_line_error(result: Result<SparseDecodePlan>, needles: &[&str]) {
        let err = message(&result.expect_err("an invalid plan"));
        assert!(!err.contains('\n'), "{err}");
        for needle in needles {
            assert!(err.contains(needle), "{err:?} should mention {needle:?}");
        }
    }

    #[test]
    fn plan_mirrors_its_vectors_and_its_width_is_the_largest_budget() -> Result<()> {
        let p = plan(vec![4, 0, 3], vec![1, 0, 1], vec![2, 0, 1])?;
        assert_eq!(p.width, 4);
        assert_eq!(p.budget_blocks.to_vec1::<u32>()?, vec![4, 0, 3]);
        assert_eq!(p.sink_blocks.to_vec1::<u32>()?, vec![1, 0, 1]);
        assert_eq!(p.recent_blocks.to_vec1::<u32>()?, vec![2, 0, 1]);
        assert_eq!(p.roles_tensor.to_vec2::<u8>()?, vec![vec![1, 1], vec![1, 1]]);
        assert!(p.is_sparse(0) && !p.is_sparse(1));
        assert_eq!(plan(vec![0, 0, 0], vec![0; 3], vec![0; 3])?.width, 1, "no sparse sequence: width 1");
        Ok(())
    }

    #[test]
    fn initial_selection_is_sink_and_recent_blocks_for_sparse_sequences_only() -> Result<()> {
        // Seq 0: 7 blocks, sink 1, recent 2 → [0, 5, 6]; seq 2: 2 blocks, sink 1 + recent 2
        // overlap → [0, 1]; seq 1 attends fully → -1.
        let p = plan(vec![4, 0, 3], vec![1, 0, 1], vec![2, 0, 2])?;
        let sel = p.initial_selection(&meta()?)?.to_vec3::<i32>()?;
        for (seq, want) in [vec![0, 5, 6, -1], vec![-1; 4], vec![0, 1, -1, -1]].into_iter().enumerate() {
            assert_eq!(sel[seq], vec![want.clone(), want], "sequence {seq}, both heads");
        }
        Ok(())
    }

    #[test]
    fn invalid_plans_are_one_line_errors() {
        one_line_error(plan(vec![4, 2, 0], vec![1, 0, 0], vec![1, 1, 0]), &["sequence 1", "5 queries"]);
        one_line_error(plan(vec![4, 0, 0], vec![3, 0, 0], vec![2, 0, 0]), &["sequence 0", "sink 3 + recent 2", "budget of 4"]);
        one_line_error(plan(vec![4, 0], vec![1, 0], vec![1, 0]), &["2 budgets", "3 sequences"]);
        one_line_error(plan(vec![4, 0, 0], vec![1, 0, 0], vec![1, 0]), &["2 recent", "3 sequences"]);
        one_line_error(plan(vec![4, 0, 0], vec![1, 0, 0], vec![0, 0, 0]), &["sequence 0", "no recent block"]);
    }
}
