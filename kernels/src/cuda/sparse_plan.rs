//! Launch geometry of the LycheeDecode kernels (kernels/cuda/sparse_decode.cu, block_select.cu).
//! A child of [`super`] (plan.rs) so the host emulator, which includes plan.rs by path, gets it
//! too; same rules: pure arithmetic, no devices.

use super::{
    attention_smem, choose_num_splits, decode_plan, err, to_u32, AttentionShape, LaunchConfig, PlanError, ATTN_THREADS,
    MAX_GRID_YZ,
};

/// Hybrid-head decode: `split` writes per-split partials for every (sequence, KV head, split),
/// `combine` merges them into the output rows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HybridDecodePlan {
    pub split: LaunchConfig,
    pub combine: LaunchConfig,
    pub num_splits: u32,
    /// Blocks a full head's split walks, and selection slots a sparse head's split walks.
    pub blocks_per_split: u32,
}

/// Plans sparse decode for a batch whose selection rows are `width` slots wide. The split size
/// and count are exactly [`decode_plan`]'s for the same batch (so full heads, and sparse heads
/// whose selection lists every block, merge to paged_decode's bits); the split count grows only
/// if a selection row is wider than the longest context, which the contract never produces.
pub fn sparse_decode_plan(
    shape: &AttentionShape,
    max_context_len: usize,
    width: usize,
    num_splits: Option<usize>,
    sm_count: usize,
) -> Result<HybridDecodePlan, PlanError> {
    if width == 0 {
        return err("sparse decode: the selection width must be at least 1".to_string());
    }
    let dense = decode_plan(shape, max_context_len, num_splits, sm_count)?;
    let bps = dense.blocks_per_split as usize;
    let splits = (dense.num_splits as usize).max(width.div_ceil(bps));
    if splits > MAX_GRID_YZ {
        return err(format!("sparse decode: {splits} splits exceed the grid limit"));
    }
    let group = shape.num_heads / shape.num_kv_heads;
    let split = LaunchConfig {
        kernel: shape.kernel_name("sparse_decode"),
        grid: [dense.split.grid[0], dense.split.grid[1], to_u32(splits, "splits")?],
        block: [ATTN_THREADS, 1, 1],
        shared_bytes: attention_smem(shape, group, "sparse decode")?,
    };
    let combine = LaunchConfig { kernel: format!("sparse_decode_combine_{}", shape.dtype.suffix()), ..dense.merge };
    Ok(HybridDecodePlan { split, combine, num_splits: to_u32(splits, "splits")?, blocks_per_split: dense.blocks_per_split })
}

/// Threads of the block-selection kernels (4 warps; both .cu kernels are compiled with this bound).
pub const SELECT_THREADS: u32 = 128;
/// block_topk's dynamic shared memory: 33 ints of scan scratch and 32 floats of sum scratch.
pub const TOPK_SHARED_BYTES: u32 = 4 * (33 + 32);

/// Block selection: `scores` (one warp per block, chunks of `blocks_per_cta` blocks per CTA)
/// fills the F32 `[S, KVH, max_blocks_per_seq]` score scratch, `topk` writes the new selection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockSelectPlan {
    pub scores: LaunchConfig,
    pub topk: LaunchConfig,
    pub blocks_per_cta: u32,
}

/// Spreads the longest context over about two CTAs per SM (at least 4 blocks each, as decode
/// splits are); a selection's own arithmetic does not depend on the chunking.
pub fn block_select_plan(shape: &AttentionShape, max_context_len: usize, sm_count: usize) -> Result<BlockSelectPlan, PlanError> {
    shape.validate()?;
    if max_context_len == 0 {
        return err("block selection with an empty context".to_string());
    }
    let max_blocks = max_context_len.div_ceil(shape.block_size);
    let chunks = choose_num_splits(shape.num_seqs * shape.num_kv_heads, max_blocks, sm_count);
    let blocks_per_cta = max_blocks.div_ceil(chunks);
    let (seqs, kv_heads) = (to_u32(shape.num_seqs, "num_seqs")?, to_u32(shape.num_kv_heads, "num_kv_heads")?);
    let scores = LaunchConfig {
        kernel: shape.kernel_name("block_scores"),
        grid: [seqs, kv_heads, to_u32(max_blocks.div_ceil(blocks_per_cta), "score chunks")?],
        block: [SELECT_THREADS, 1, 1],
        shared_bytes: to_u32(4 * shape.head_dim, "shared bytes")?,
    };
    let topk = LaunchConfig {
        kernel: "block_topk".to_string(),
        grid: [seqs, kv_heads, 1],
        block: [SELECT_THREADS, 1, 1],
        shared_bytes: TOPK_SHARED_BYTES,
    };
    Ok(BlockSelectPlan { scores, topk, blocks_per_cta: to_u32(blocks_per_cta, "blocks per CTA")? })
}

#[cfg(test)]
mod tests {
    use super::super::{CacheFormat, KernelDtype};
    use super::*;

    fn shape(seqs: usize, kv_heads: usize) -> AttentionShape {
        AttentionShape {
            dtype: KernelDtype::F16,
            cache: CacheFormat::Int8,
            num_seqs: seqs,
            num_heads: 3 * kv_heads,
            num_kv_heads: kv_heads,
            block_size: 16,
            head_dim: 64,
        }
    }

    #[test]
    fn sparse_decode_splits_like_paged_decode() {
        for (ctx, width, forced) in [(100, 3, None), (5000, 40, None), (700, 9, Some(5)), (33, 1, Some(1))] {
            let s = shape(2, 2);
            let dense = decode_plan(&s, ctx, forced, 108).unwrap();
            let p = sparse_decode_plan(&s, ctx, width, forced, 108).unwrap();
            assert_eq!((p.num_splits, p.blocks_per_split), (dense.num_splits, dense.blocks_per_split), "ctx {ctx}");
            assert_eq!(p.split.grid, dense.split.grid);
            assert_eq!(p.split.shared_bytes, dense.split.shared_bytes);
            assert_eq!(p.split.kernel, "sparse_decode_f16_int8_bs16_d64");
            assert_eq!((p.combine.kernel.as_str(), p.combine.grid), ("sparse_decode_combine_f16", dense.merge.grid));
        }
        // A selection wider than the context (never handed by the engine) still gets its slots covered.
        let p = sparse_decode_plan(&shape(1, 1), 16, 7, Some(1), 108).unwrap();
        assert_eq!(p.num_splits, 7);
        assert!(sparse_decode_plan(&shape(1, 1), 16, 0, None, 108).is_err());
    }

    #[test]
    fn block_select_chunks_cover_the_longest_context() {
        for ctx in [1, 16, 17, 300, 20_000] {
            let p = block_select_plan(&shape(3, 2), ctx, 108).unwrap();
            let blocks = ctx.div_ceil(16) as u32;
            assert!(p.blocks_per_cta * p.scores.grid[2] >= blocks);
            assert!((p.scores.grid[2] - 1) * p.blocks_per_cta < blocks);
            assert_eq!(p.scores.kernel, "block_scores_f16_int8_bs16_d64");
            assert_eq!(p.topk.grid, [3, 2, 1]);
        }
    }
}
