//! Which KV heads of which layers are retrieval heads (attend the whole context and choose blocks)
//! and which are sparse heads (attend only the blocks chosen below them): LycheeDecode's head roles
//! (ALGORITHMS.md §2.1).
//!
//! Owns: the `[num_layers, num_kv_heads]` role table and its invariant (layer 0 all retrieval, so
//! every selection slot is written before a sparse head reads it).
//! Must not know: how roles were calibrated or stored (the models crate's head-roles file), or
//! what a step's budgets are.

use candle_core::{bail, Result};

/// Retrieval/sparse role of every (layer, KV head).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeadRoles {
    num_layers: usize,
    num_kv_heads: usize,
    /// Row-major `[num_layers, num_kv_heads]`: true = retrieval.
    retrieval: Vec<bool>,
}

impl HeadRoles {
    /// Roles from a row-major `[num_layers, num_kv_heads]` table; errors unless the sizes agree and
    /// every head of layer 0 is retrieval.
    pub fn new(num_layers: usize, num_kv_heads: usize, retrieval: Vec<bool>) -> Result<Self> {
        if num_layers == 0 || num_kv_heads == 0 {
            bail!("HeadRoles: need at least one layer and one KV head, got {num_layers} layers × {num_kv_heads} KV heads")
        }
        if retrieval.len() != num_layers * num_kv_heads {
            bail!(
                "HeadRoles: {} roles for {num_layers} layers × {num_kv_heads} KV heads (expected {})",
                retrieval.len(),
                num_layers * num_kv_heads
            )
        }
        if let Some(h) = retrieval[..num_kv_heads].iter().position(|&r| !r) {
            bail!("HeadRoles: layer 0 must be all retrieval (no lower layer chooses its blocks), but KV head {h} is sparse")
        }
        Ok(Self { num_layers, num_kv_heads, retrieval })
    }

    /// Every head retrieval: full attention everywhere (what `paged_attention` computes).
    pub fn all_retrieval(num_layers: usize, num_kv_heads: usize) -> Self {
        Self { num_layers, num_kv_heads, retrieval: vec![true; num_layers * num_kv_heads] }
    }

    pub fn num_layers(&self) -> usize {
        self.num_layers
    }

    pub fn num_kv_heads(&self) -> usize {
        self.num_kv_heads
    }

    /// Panics when `layer` or `kv_head` is out of range (the ops check both first).
    pub fn is_retrieval(&self, layer: usize, kv_head: usize) -> bool {
        assert!(kv_head < self.num_kv_heads, "HeadRoles: KV head {kv_head} of {}", self.num_kv_heads);
        self.layer(layer)[kv_head]
    }

    /// Layer `layer`'s roles, one per KV head (true = retrieval).
    pub fn layer(&self, layer: usize) -> &[bool] {
        &self.retrieval[layer * self.num_kv_heads..(layer + 1) * self.num_kv_heads]
    }

    /// Retrieval heads in every layer, layer 0 included.
    pub fn num_retrieval(&self) -> usize {
        self.retrieval.iter().filter(|&&r| r).count()
    }

    /// Retrieval heads outside layer 0 over all heads outside layer 0 (the calibrated density;
    /// layer 0 is retrieval by construction, so it says nothing about the calibration). A
    /// one-layer model has no such heads and counts as dense: 1.
    pub fn density(&self) -> f64 {
        let above = &self.retrieval[self.num_kv_heads..];
        if above.is_empty() {
            return 1.0;
        }
        above.iter().filter(|&&r| r).count() as f64 / above.len() as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::paged::sparse::test_fixture::message;

    #[test]
    fn roles_answer_per_layer_and_count_density_outside_layer_0() -> Result<()> {
        let roles = HeadRoles::new(3, 2, vec![true, true, true, false, false, false])?;
        assert_eq!((roles.num_layers(), roles.num_kv_heads()), (3, 2));
        assert_eq!(roles.layer(1), &[true, false]);
        assert!(roles.is_retrieval(1, 0) && !roles.is_retrieval(1, 1) && !roles.is_retrieval(2, 0));
        assert_eq!(roles.num_retrieval(), 3);
        assert_eq!(roles.density(), 0.25);
        let dense = HeadRoles::all_retrieval(4, 3);
        assert_eq!((dense.num_retrieval(), dense.density()), (12, 1.0));
        assert_eq!(HeadRoles::all_retrieval(1, 3).density(), 1.0);
        Ok(())
    }

    #[test]
    fn a_sparse_head_in_layer_0_or_a_wrong_size_is_a_one_line_error() {
        let err = message(&HeadRoles::new(2, 2, vec![true, false, true, true]).expect_err("layer 0 sparse"));
        assert!(err.contains("layer 0") && err.contains("KV head 1") && !err.contains('\n'), "{err}");
        let err = message(&HeadRoles::new(2, 2, vec![true; 3]).expect_err("size"));
        assert!(err.contains("3 roles") && err.contains("expected 4") && !err.contains('\n'), "{err}");
        assert!(HeadRoles::new(0, 2, vec![]).is_err());
    }
}
