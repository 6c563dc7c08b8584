//! Shared fixture of the sparse-decode tests: a random paged batch (the attention tests' [`Case`]),
//! head roles, a plan with budgets for some decode rows, and random well-formed selections.

use std::sync::Arc;

use candle_core::{Device, Result, Tensor};
use rand::rngs::StdRng;
use rand::seq::index::sample;
use rand::{Rng, SeedableRng};

use super::{HeadRoles, SparseDecodePlan};
use crate::paged::attention::tests::{random_case, Case, Spec};

/// A batch, its plan and a selection for it.
pub(super) struct SparseCase {
    pub case: Case,
    pub plan: SparseDecodePlan,
    /// Host copy of `selection`, `[S, H, plan.width]`.
    pub rows: Vec<i32>,
    pub selection: Tensor,
}

impl SparseCase {
    pub fn blocks(&self, seq: usize) -> usize {
        self.case.context_lens[seq].div_ceil(self.case.shape.block_size)
    }

    pub fn row(&self, seq: usize, kv_head: usize) -> &[i32] {
        let (h, w) = (self.case.shape.num_kv_heads, self.plan.width);
        &self.rows[(seq * h + kv_head) * w..][..w]
    }

    /// Replaces the selection (host rows and tensor).
    pub fn set_rows(&mut self, rows: Vec<i32>) -> Result<()> {
        let dims = (self.case.meta.num_seqs, self.case.shape.num_kv_heads, self.plan.width);
        self.selection = Tensor::from_slice(&rows, dims, &Device::Cpu)?;
        self.rows = rows;
        Ok(())
    }
}

/// Three layers over `num_kv_heads` heads: layer 0 all retrieval, layer 1 only head 0
/// retrieval, layer 2 all sparse.
pub(super) fn three_layer_roles(num_kv_heads: usize) -> Arc<HeadRoles> {
    let mut retrieval = vec![true; num_kv_heads];
    retrieval.extend((0..num_kv_heads).map(|h| h == 0));
    retrieval.extend(vec![false; num_kv_heads]);
    Arc::new(HeadRoles::new(3, num_kv_heads, retrieval).expect("valid roles"))
}

/// `seqs` as `(cached, q_len, budget_blocks)`: sink 1 and recent 1 block where budget > 0; the
/// selection is random (see [`random_rows`]).
pub(super) fn sparse_case(seed: u64, spec: &Spec, seqs: &[(usize, usize, u32)], roles: Arc<HeadRoles>) -> Result<SparseCase> {
    let shape: Vec<(usize, usize)> = seqs.iter().map(|&(c, q, _)| (c, q)).collect();
    let case = random_case(seed, spec, &shape, true)?;
    let budgets: Vec<u32> = seqs.iter().map(|s| s.2).collect();
    let ones: Vec<u32> = budgets.iter().map(|&b| (b > 0) as u32).collect();
    let plan = SparseDecodePlan::new(roles, budgets, ones.clone(), ones, &case.meta, &Device::Cpu)?;
    let mut sc = SparseCase { case, plan, rows: vec![], selection: Tensor::zeros(1, candle_core::DType::I32, &Device::Cpu)? };
    let rows = random_rows(&mut StdRng::seed_from_u64(seed ^ 0x5e1ec7), &sc);
    sc.set_rows(rows)?;
    Ok(sc)
}

/// Per (sequence, KV head) of a sparse sequence: a random number (0 included, the budget
/// included) of distinct random blocks of its context, ascending, -1 padded; -1 rows elsewhere.
pub(super) fn random_rows(rng: &mut StdRng, sc: &SparseCase) -> Vec<i32> {
    let (heads, width) = (sc.case.shape.num_kv_heads, sc.plan.width);
    let mut rows = vec![-1i32; sc.case.meta.num_seqs * heads * width];
    for (i, row) in rows.chunks_exact_mut(width).enumerate() {
        let seq = i / heads;
        if !sc.plan.is_sparse(seq) {
            continue;
        }
        let n = sc.blocks(seq);
        let count = rng.random_range(0..=n.min(sc.plan.host.budget_blocks[seq] as usize));
        let mut picked: Vec<usize> = sample(rng, n, count).into_vec();
        picked.sort_unstable();
        for (r, b) in row.iter_mut().zip(picked) {
            *r = b as i32;
        }
    }
    rows
}

/// Rows listing every block of each sparse sequence (the plan's width must allow it).
pub(super) fn every_block_rows(sc: &SparseCase) -> Vec<i32> {
    let (heads, width) = (sc.case.shape.num_kv_heads, sc.plan.width);
    let mut rows = vec![-1i32; sc.case.meta.num_seqs * heads * width];
    for (i, row) in rows.chunks_exact_mut(width).enumerate() {
        if sc.plan.is_sparse(i / heads) {
            for (r, b) in row.iter_mut().zip(0..sc.blocks(i / heads) as i32) {
                *r = b;
            }
        }
    }
    rows
}

/// An error's own message, without the backtrace candle appends when RUST_BACKTRACE is set (the
/// message is what users see on one line).
pub(super) fn message(err: &candle_core::Error) -> String {
    match err {
        candle_core::Error::WithBacktrace { inner, .. } => message(inner),
        other => other.to_string(),
    }
}
