//! Token embeddings, dense or quantized (GGUF keeps `token_embd` quantized; rows are
//! dequantized on lookup).

use anyhow::Result;
use candle_core::Tensor;

use crate::weights::MatrixWeight;

#[derive(Clone, Debug)]
pub struct Embedding {
    table: MatrixWeight,
}

impl Embedding {
    pub fn new(table: MatrixWeight) -> Self {
        Self { table }
    }

    /// The table, for tying it to the output head.
    pub fn table(&self) -> &MatrixWeight {
        &self.table
    }

    /// `ids`: `[tokens]` (u32) → `[tokens, hidden]`.
    pub fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        match &self.table {
            MatrixWeight::Dense(w) => Ok(w.index_select(ids, 0)?),
            MatrixWeight::Quantized(q, _) => Ok(q.embedding(ids)?),
        }
    }
}
