//! Each new token's `log β` per KV head for the requests whose rule ranks by learned retention:
//! the rows of all such requests in this step's batch go through the layer's gate together (one
//! gather, two small matmuls on the model's device), and only the `[rows, kv_heads]` result comes
//! back to the host, where it becomes the new slots' scores.
//!
//! Must not know: how the score is used (the `trimkv` rule), or anything about other policies.

use anyhow::{ensure, Result};
use candle_core::Tensor;
use kvault_kernels::AttentionMetadata;
use kvault_models::gates::LayerGate;

/// `log β` of the new tokens of each listed sequence (`seqs`: batch sequence indices), as
/// `[sequence][token][kv_head]`.
pub fn new_tokens_log_beta(gate: &LayerGate, hidden: &Tensor, meta: &AttentionMetadata, seqs: &[usize]) -> Result<Vec<Vec<Vec<f32>>>> {
    let cu = &meta.host.cu_seqlens_q;
    let mut rows = Vec::new();
    for &s in seqs {
        ensure!(s + 1 < cu.len(), "sequence {s} is not in this batch");
        rows.extend(cu[s]..cu[s + 1]);
    }
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let index = Tensor::new(rows.as_slice(), hidden.device())?;
    let log_beta = gate.log_beta(&hidden.index_select(&index, 0)?)?.to_vec2::<f32>()?;
    let mut out = Vec::with_capacity(seqs.len());
    let mut it = log_beta.into_iter();
    for &s in seqs {
        out.push(it.by_ref().take((cu[s + 1] - cu[s]) as usize).collect());
    }
    Ok(out)
}
