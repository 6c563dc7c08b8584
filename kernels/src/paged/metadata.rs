//! The description of one flattened varlen batch (prefill chunks and decode rows back to back) that
//! every attention/cache op reads: slot mapping, positions, block tables, query offsets and
//! context lengths, as device tensors plus host mirrors.
//!
//! Owns: building those tensors from host vectors and validating them once per step, so the ops
//! (called once per layer) only do O(1) checks against the cache they are given.
//! Must not know: how blocks were allocated or which request a sequence belongs to.

use std::collections::HashSet;
use std::sync::Arc;

use candle_core::{bail, Device, Result, Tensor};

/// Host copies of the metadata, for the CPU kernels and launch sizing. Identical in content to
/// the tensors of [`AttentionMetadata`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostMetadata {
    /// `[T]`: cache slot of each token, -1 = don't write.
    pub slot_mapping: Vec<i64>,
    /// `[T]`: absolute position of each token.
    pub positions: Vec<u32>,
    /// `[S * max_blocks_per_seq]`, row-major, padded with 0.
    pub block_tables: Vec<u32>,
    pub max_blocks_per_seq: usize,
    /// `[S + 1]`: token offset of each sequence.
    pub cu_seqlens_q: Vec<u32>,
    /// `[S]`: cached + new tokens of each sequence after this step's write.
    pub context_lens: Vec<u32>,
    pub block_size: usize,
    /// Largest physical block id a table entry inside some context uses (padding excluded), so an
    /// op can check the whole batch against its cache in O(1).
    pub max_block_id: u32,
    /// Largest slot in `slot_mapping`, `None` when no token writes.
    pub max_slot: Option<i64>,
}

impl HostMetadata {
    /// The used part of sequence `s`'s block table (blocks covering its context).
    pub fn block_table(&self, s: usize) -> &[u32] {
        let row = &self.block_tables[s * self.max_blocks_per_seq..(s + 1) * self.max_blocks_per_seq];
        &row[..(self.context_lens[s] as usize).div_ceil(self.block_size)]
    }

    /// Token range of sequence `s` in the flattened batch.
    pub fn query_range(&self, s: usize) -> std::ops::Range<usize> {
        self.cu_seqlens_q[s] as usize..self.cu_seqlens_q[s + 1] as usize
    }
}

/// Describes one flattened varlen batch: sequences `s = 0..S`, each contributing `q_len_s >= 1`
/// new tokens (a prefill chunk, or 1 for a decode row), laid out back to back
/// (`T = Σ q_len_s` tokens). All tensors live on the model's device; `host` mirrors them.
#[derive(Clone, Debug)]
pub struct AttentionMetadata {
    /// I64 `[T]`: cache slot (`block_id * block_size + offset`) where token t's K/V goes; -1 = don't write.
    pub slot_mapping: Tensor,
    /// U32 `[T]`: absolute position of each token (for RoPE and `slot_pos`).
    pub positions: Tensor,
    /// U32 `[S, max_blocks_per_seq]`, padded with 0 past each sequence's blocks.
    pub block_tables: Tensor,
    /// U32 `[S+1]`: token offsets of each sequence in the flattened batch.
    pub cu_seqlens_q: Tensor,
    /// U32 `[S]`: tokens in the cache for sequence s after this step's write (cached + new).
    pub context_lens: Tensor,
    pub max_query_len: usize,
    pub max_context_len: usize,
    pub num_seqs: usize,
    pub num_tokens: usize,
    pub host: Arc<HostMetadata>,
    /// LycheeDecode: which sequences decode sparsely this step and with which head roles; set by
    /// the caller after `new` (the plan validates against this metadata). `None`: plain attention.
    pub sparse_decode: Option<Arc<crate::paged::SparseDecodePlan>>,
}

impl AttentionMetadata {
    /// Builds every tensor from host vectors after validating them: lengths agree,
    /// `1 <= q_len <= context_len`, each block table covers its context, every written slot lies
    /// in a block of its own sequence's context and no slot is written twice.
    pub fn new(
        slot_mapping: Vec<i64>,
        positions: Vec<u32>,
        block_tables: Vec<Vec<u32>>,
        query_lens: Vec<usize>,
        context_lens: Vec<usize>,
        block_size: usize,
        device: &Device,
    ) -> Result<Self> {
        let host = validate(slot_mapping, positions, &block_tables, &query_lens, &context_lens, block_size)?;
        let num_seqs = query_lens.len();
        let num_tokens = host.slot_mapping.len();
        let max_blocks = host.max_blocks_per_seq;
        Ok(Self {
            slot_mapping: Tensor::from_slice(&host.slot_mapping, num_tokens, device)?,
            positions: Tensor::from_slice(&host.positions, num_tokens, device)?,
            block_tables: Tensor::from_slice(&host.block_tables, (num_seqs, max_blocks), device)?,
            cu_seqlens_q: Tensor::from_slice(&host.cu_seqlens_q, num_seqs + 1, device)?,
            context_lens: Tensor::from_slice(&host.context_lens, num_seqs, device)?,
            max_query_len: query_lens.iter().copied().max().unwrap_or(0),
            max_context_len: context_lens.iter().copied().max().unwrap_or(0),
            num_seqs,
            num_tokens,
            host: Arc::new(host),
            sparse_decode: None,
        })
    }

    pub fn block_size(&self) -> usize {
        self.host.block_size
    }
}

fn to_u32(value: usize, what: &str) -> Result<u32> {
    match u32::try_from(value) {
        Ok(v) => Ok(v),
        Err(_) => bail!("AttentionMetadata: {what} = {value} does not fit in u32"),
    }
}

fn validate(
    slot_mapping: Vec<i64>,
    positions: Vec<u32>,
    block_tables: &[Vec<u32>],
    query_lens: &[usize],
    context_lens: &[usize],
    block_size: usize,
) -> Result<HostMetadata> {
    let num_seqs = query_lens.len();
    if num_seqs == 0 {
        bail!("AttentionMetadata: the batch has no sequences")
    }
    if block_size == 0 {
        bail!("AttentionMetadata: block_size must be positive")
    }
    if block_tables.len() != num_seqs || context_lens.len() != num_seqs {
        bail!(
            "AttentionMetadata: {} query_lens, {} context_lens and {} block tables must agree",
            num_seqs,
            context_lens.len(),
            block_tables.len()
        )
    }
    let num_tokens: usize = query_lens.iter().sum();
    if slot_mapping.len() != num_tokens || positions.len() != num_tokens {
        bail!(
            "AttentionMetadata: query_lens sum to {num_tokens} tokens but slot_mapping has {} and positions {}",
            slot_mapping.len(),
            positions.len()
        )
    }
    to_u32(num_tokens, "total tokens")?;
    if let Some(p) = positions.iter().find(|&&p| p > i32::MAX as u32) {
        bail!("AttentionMetadata: position {p} exceeds i32::MAX (slot_pos is i32)")
    }

    let max_blocks_per_seq = block_tables.iter().map(Vec::len).max().unwrap_or(0);
    let mut flat_tables = vec![0u32; num_seqs * max_blocks_per_seq];
    let mut cu_seqlens_q = Vec::with_capacity(num_seqs + 1);
    cu_seqlens_q.push(0u32);
    let mut ctx_u32 = Vec::with_capacity(num_seqs);
    let mut max_block_id = 0u32;
    let mut max_slot: Option<i64> = None;
    let mut written = HashSet::new();
    let mut token = 0usize;
    for s in 0..num_seqs {
        let (q_len, ctx, table) = (query_lens[s], context_lens[s], &block_tables[s]);
        if q_len == 0 {
            bail!("AttentionMetadata: sequence {s} has no new tokens (q_len = 0)")
        }
        if q_len > ctx {
            bail!("AttentionMetadata: sequence {s} has q_len {q_len} > context_len {ctx}")
        }
        let used_blocks = ctx.div_ceil(block_size);
        if used_blocks > table.len() {
            bail!(
                "AttentionMetadata: sequence {s} context_len {ctx} needs {used_blocks} blocks of {block_size} but its block table has {}",
                table.len()
            )
        }
        let used = &table[..used_blocks];
        max_block_id = max_block_id.max(used.iter().copied().max().unwrap_or(0));
        flat_tables[s * max_blocks_per_seq..s * max_blocks_per_seq + table.len()].copy_from_slice(table);
        let own_blocks: HashSet<u32> = used.iter().copied().collect();
        for t in token..token + q_len {
            let slot = slot_mapping[t];
            if slot == -1 {
                continue;
            }
            if slot < -1 {
                bail!("AttentionMetadata: token {t} has slot {slot} (only -1 may be negative)")
            }
            let block = slot / block_size as i64;
            if u32::try_from(block).map_or(true, |b| !own_blocks.contains(&b)) {
                bail!(
                    "AttentionMetadata: token {t} of sequence {s} writes slot {slot} (block {block}), outside its context's blocks {used:?}"
                )
            }
            if !written.insert(slot) {
                bail!("AttentionMetadata: slot {slot} is written by more than one token")
            }
            max_slot = Some(max_slot.map_or(slot, |m| m.max(slot)));
        }
        token += q_len;
        cu_seqlens_q.push(to_u32(token, "cu_seqlens_q")?);
        ctx_u32.push(to_u32(ctx, "context_len")?);
    }
    Ok(HostMetadata {
        slot_mapping,
        positions,
        block_tables: flat_tables,
        max_blocks_per_seq,
        cu_seqlens_q,
        context_lens: ctx_u32,
        block_size,
        max_block_id,
        max_slot,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Seq 0: prefill chunk of 3 after 2 cached tokens (ctx 5, blocks [7, 2]); seq 1: one decode
    /// token at ctx 4 (block [4]). Block size 4.
    fn valid() -> (Vec<i64>, Vec<u32>, Vec<Vec<u32>>, Vec<usize>, Vec<usize>) {
        (
            vec![7 * 4 + 2, 7 * 4 + 3, 2 * 4, 4 * 4 + 3],
            vec![2, 3, 4, 3],
            vec![vec![7, 2], vec![4]],
            vec![3, 1],
            vec![5, 4],
        )
    }

    fn build(
        (slots, pos, tables, q, ctx): (Vec<i64>, Vec<u32>, Vec<Vec<u32>>, Vec<usize>, Vec<usize>),
    ) -> Result<AttentionMetadata> {
        AttentionMetadata::new(slots, pos, tables, q, ctx, 4, &Device::Cpu)
    }

    #[test]
    fn tensors_mirror_the_host_vectors_with_padded_tables() -> Result<()> {
        let meta = build(valid())?;
        assert_eq!((meta.num_seqs, meta.num_tokens), (2, 4));
        assert_eq!((meta.max_query_len, meta.max_context_len), (3, 5));
        assert_eq!(meta.slot_mapping.to_vec1::<i64>()?, vec![30, 31, 8, 19]);
        assert_eq!(meta.positions.to_vec1::<u32>()?, vec![2, 3, 4, 3]);
        assert_eq!(meta.block_tables.to_vec2::<u32>()?, vec![vec![7, 2], vec![4, 0]]);
        assert_eq!(meta.cu_seqlens_q.to_vec1::<u32>()?, vec![0, 3, 4]);
        assert_eq!(meta.context_lens.to_vec1::<u32>()?, vec![5, 4]);
        assert_eq!(meta.host.block_table(1), &[4]);
        assert_eq!(meta.host.query_range(0), 0..3);
        assert_eq!((meta.host.max_block_id, meta.host.max_slot), (7, Some(31)));
        Ok(())
    }

    #[test]
    fn unwritten_tokens_may_use_minus_one() -> Result<()> {
        let mut input = valid();
        input.0 = vec![-1, -1, -1, -1];
        assert_eq!(build(input)?.host.max_slot, None);
        Ok(())
    }

    #[test]
    fn mismatched_lengths_are_errors() {
        let mut input = valid();
        input.0.pop();
        assert!(build(input).is_err(), "slot_mapping shorter than the tokens");
        let mut input = valid();
        input.1.push(9);
        assert!(build(input).is_err(), "positions longer than the tokens");
        let mut input = valid();
        input.4.push(3);
        assert!(build(input).is_err(), "more context_lens than sequences");
        let mut input = valid();
        input.2.pop();
        assert!(build(input).is_err(), "fewer block tables than sequences");
    }

    #[test]
    fn query_longer_than_context_or_empty_is_an_error() {
        let mut input = valid();
        input.4[1] = 0;
        assert!(build(input).is_err());
        let mut input = valid();
        input.3 = vec![4, 0];
        input.4 = vec![5, 4];
        assert!(build(input).is_err(), "zero-length query");
    }

    #[test]
    fn context_beyond_block_table_is_an_error() {
        let mut input = valid();
        input.4[0] = 9; // needs 3 blocks, the table has 2
        let err = build(input).expect_err("context beyond table").to_string();
        assert!(err.contains("needs 3 blocks"), "{err}");
    }

    #[test]
    fn slot_outside_the_sequences_blocks_is_an_error() {
        let mut input = valid();
        input.0[3] = 2 * 4 + 1; // seq 1 writing into seq 0's block 2
        assert!(build(input).is_err());
        let mut input = valid();
        input.0[0] = -5;
        assert!(build(input).is_err());
        let mut input = valid();
        input.0[1] = input.0[0];
        assert!(build(input).is_err(), "same slot written twice");
    }

    #[test]
    fn empty_batch_and_zero_block_size_are_errors() {
        assert!(AttentionMetadata::new(vec![], vec![], vec![], vec![], vec![], 4, &Device::Cpu).is_err());
        let (a, b, c, d, e) = valid();
        assert!(AttentionMetadata::new(a, b, c, d, e, 0, &Device::Cpu).is_err());
    }
}
