//! Launch geometry of kvault's CUDA kernels: kernel names, grid and block sizes, dynamic shared
//! memory, the flash-decoding split count and the prefill query tile.
//!
//! Pure arithmetic, shared word for word by the device glue (this module's parent, behind the
//! `cuda` feature) and the host-emulation tests (kernels/emu includes this file by path), so the
//! emulator runs the kernels exactly as a GPU launch would. Must not know: cudarc, candle,
//! devices, or what the kernels compute beyond their launch contract (kernels/cuda/*.cu).

use std::fmt;

// The LycheeDecode kernels' geometry, in its own file (same rules as this one).
#[path = "sparse_plan.rs"]
pub mod sparse;

/// Threads per attention CTA (4 warps); the .cu kernels are compiled with this launch bound.
pub const ATTN_THREADS: u32 = 128;
/// Cache block sizes with compiled attention kernels.
pub const SUPPORTED_BLOCK_SIZES: [usize; 2] = [16, 32];
/// Head dims with compiled attention kernels.
pub const SUPPORTED_HEAD_DIMS: [usize; 2] = [64, 128];
/// Dynamic shared memory a kernel may use without the per-kernel opt-in attribute.
pub const MAX_SHARED_BYTES: usize = 48 * 1024;
/// Query rows (tokens × GQA group) one prefill CTA aims to serve.
pub const PREFILL_TARGET_ROWS: usize = 16;
/// Grid y/z limit.
const MAX_GRID_YZ: usize = 65_535;

/// Element type of a kernel instantiation (the `_f32` / `_f16` / `_bf16` name suffix).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KernelDtype {
    F32,
    F16,
    Bf16,
}

impl KernelDtype {
    pub fn suffix(self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::F16 => "f16",
            Self::Bf16 => "bf16",
        }
    }

    pub fn size_in_bytes(self) -> usize {
        match self {
            Self::F32 => 4,
            Self::F16 | Self::Bf16 => 2,
        }
    }
}

/// The KV cache an attention kernel reads: in the query's float dtype, or quantized rows of
/// `head_dim` one-byte codes followed by their f32 scale (int8, fp8 e4m3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CacheFormat {
    /// The cache holds the query's dtype.
    Float,
    Int8,
    Fp8,
}

impl CacheFormat {
    /// Appended to the query dtype in kernel names (`paged_decode_f16_int8_bs16_d64`).
    pub fn suffix(self) -> &'static str {
        match self {
            Self::Float => "",
            Self::Int8 => "_int8",
            Self::Fp8 => "_fp8",
        }
    }

    /// Bytes of one cache row (one token in one KV head).
    pub fn row_bytes(self, query: KernelDtype, head_dim: usize) -> usize {
        match self {
            Self::Float => head_dim * query.size_in_bytes(),
            Self::Int8 | Self::Fp8 => head_dim + 4,
        }
    }
}

/// Everything a launch needs besides its arguments.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LaunchConfig {
    pub kernel: String,
    pub grid: [u32; 3],
    pub block: [u32; 3],
    pub shared_bytes: u32,
}

/// A shape the compiled kernels cannot serve (the message says which limit and why).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlanError(pub String);

impl fmt::Display for PlanError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for PlanError {}

fn err<T>(msg: String) -> Result<T, PlanError> {
    Err(PlanError(msg))
}

fn to_u32(v: usize, what: &str) -> Result<u32, PlanError> {
    u32::try_from(v).or_else(|_| err(format!("{what} = {v} does not fit a CUDA grid dimension")))
}

/// The attention problem as the kernels see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttentionShape {
    /// The query's (and output's) dtype.
    pub dtype: KernelDtype,
    pub cache: CacheFormat,
    pub num_seqs: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub block_size: usize,
    pub head_dim: usize,
}

impl AttentionShape {
    fn validate(&self) -> Result<usize, PlanError> {
        if !SUPPORTED_BLOCK_SIZES.contains(&self.block_size) {
            return err(format!(
                "CUDA paged attention is compiled for block sizes {SUPPORTED_BLOCK_SIZES:?}, not {}",
                self.block_size
            ));
        }
        if !SUPPORTED_HEAD_DIMS.contains(&self.head_dim) {
            return err(format!(
                "CUDA paged attention is compiled for head dims {SUPPORTED_HEAD_DIMS:?}, not {}",
                self.head_dim
            ));
        }
        if self.num_kv_heads == 0 || self.num_heads % self.num_kv_heads != 0 {
            return err(format!(
                "num_heads {} is not a multiple of num_kv_heads {}",
                self.num_heads, self.num_kv_heads
            ));
        }
        if self.num_seqs == 0 {
            return err("attention over an empty batch".to_string());
        }
        if self.num_kv_heads > MAX_GRID_YZ {
            return err(format!("num_kv_heads {} exceeds the grid limit", self.num_kv_heads));
        }
        Ok(self.num_heads / self.num_kv_heads)
    }

    fn kernel_name(&self, op: &str) -> String {
        format!("{op}_{}{}_bs{}_d{}", self.dtype.suffix(), self.cache.suffix(), self.block_size, self.head_dim)
    }
}

/// Dynamic shared memory of an attention CTA serving `rows` query rows; must match
/// `kv_attn_smem_bytes` in kernels/cuda/attention.cuh. `row_bytes`: one cache row.
pub fn attention_smem_bytes(row_bytes: usize, block_size: usize, head_dim: usize, rows: usize) -> usize {
    let v_tile = (block_size * row_bytes).div_ceil(16) * 16;
    v_tile + 4 * (2 * rows * head_dim + rows * block_size + 4 * rows)
}

fn attention_smem(shape: &AttentionShape, rows: usize, what: &str) -> Result<u32, PlanError> {
    let row_bytes = shape.cache.row_bytes(shape.dtype, shape.head_dim);
    let bytes = attention_smem_bytes(row_bytes, shape.block_size, shape.head_dim, rows);
    if bytes > MAX_SHARED_BYTES {
        return err(format!(
            "{what}: {rows} query rows per CTA need {bytes} bytes of shared memory (limit {MAX_SHARED_BYTES}); \
             GQA group {} is too large for these kernels",
            shape.num_heads / shape.num_kv_heads
        ));
    }
    to_u32(bytes, "shared bytes")
}

/// Flash-decoding launch: `split` writes per-split partials, `merge` combines them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DecodePlan {
    pub split: LaunchConfig,
    pub merge: LaunchConfig,
    pub num_splits: u32,
    pub blocks_per_split: u32,
}

/// Splits per sequence: enough CTAs to give every SM about two, but at least 4 cache blocks of
/// work per split so the merge stays cheap next to the attention itself.
pub fn choose_num_splits(ctas_without_split: usize, max_blocks: usize, sm_count: usize) -> usize {
    let want = (2 * sm_count.max(1)).div_ceil(ctas_without_split.max(1));
    want.min(max_blocks / 4).clamp(1, MAX_GRID_YZ)
}

/// Plans a decode step (every sequence has exactly one query token). `num_splits` overrides the
/// heuristic (tests use it to force empty splits); splits beyond a sequence's blocks are empty.
pub fn decode_plan(
    shape: &AttentionShape,
    max_context_len: usize,
    num_splits: Option<usize>,
    sm_count: usize,
) -> Result<DecodePlan, PlanError> {
    let group = shape.validate()?;
    if max_context_len == 0 {
        return err("decode with an empty context".to_string());
    }
    let max_blocks = max_context_len.div_ceil(shape.block_size);
    let splits = match num_splits {
        Some(0) => return err("num_splits must be at least 1".to_string()),
        Some(n) if n > MAX_GRID_YZ => return err(format!("num_splits {n} exceeds the grid limit")),
        Some(n) => n,
        None => choose_num_splits(shape.num_seqs * shape.num_kv_heads, max_blocks, sm_count),
    };
    let blocks_per_split = max_blocks.div_ceil(splits);
    let split = LaunchConfig {
        kernel: shape.kernel_name("paged_decode"),
        grid: [to_u32(shape.num_seqs, "num_seqs")?, to_u32(shape.num_kv_heads, "num_kv_heads")?, to_u32(splits, "splits")?],
        block: [ATTN_THREADS, 1, 1],
        shared_bytes: attention_smem(shape, group, "paged decode")?,
    };
    let merge = LaunchConfig {
        kernel: format!("paged_decode_merge_{}", shape.dtype.suffix()),
        grid: [to_u32(shape.num_seqs, "num_seqs")?, to_u32(shape.num_heads, "num_heads")?, 1],
        block: [to_u32(shape.head_dim, "head_dim")?, 1, 1],
        shared_bytes: 0,
    };
    if shape.num_heads > MAX_GRID_YZ {
        return err(format!("num_heads {} exceeds the grid limit", shape.num_heads));
    }
    Ok(DecodePlan { split, merge, num_splits: to_u32(splits, "splits")?, blocks_per_split: to_u32(blocks_per_split, "blocks per split")? })
}

/// Varlen prefill launch; `tile_tokens` is a kernel argument.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PrefillPlan {
    pub attn: LaunchConfig,
    pub tile_tokens: u32,
}

pub fn prefill_plan(shape: &AttentionShape, max_query_len: usize) -> Result<PrefillPlan, PlanError> {
    let group = shape.validate()?;
    if max_query_len == 0 {
        return err("prefill with no query tokens".to_string());
    }
    let tile_tokens = (PREFILL_TARGET_ROWS / group).max(1);
    let tiles = max_query_len.div_ceil(tile_tokens);
    if tiles > MAX_GRID_YZ {
        return err(format!("query chunk of {max_query_len} tokens needs {tiles} tiles, over the grid limit"));
    }
    Ok(PrefillPlan {
        attn: LaunchConfig {
            kernel: shape.kernel_name("paged_prefill"),
            grid: [to_u32(shape.num_seqs, "num_seqs")?, to_u32(shape.num_kv_heads, "num_kv_heads")?, to_u32(tiles, "tiles")?],
            block: [ATTN_THREADS, 1, 1],
            shared_bytes: attention_smem(shape, tile_tokens * group, "paged prefill")?,
        },
        tile_tokens: to_u32(tile_tokens, "tile tokens")?,
    })
}

/// Scatter of K or V rows: one CTA per token.
pub fn write_kv_rows_plan(dtype: KernelDtype, num_tokens: usize) -> Result<LaunchConfig, PlanError> {
    Ok(LaunchConfig {
        kernel: format!("write_kv_rows_{}", dtype.suffix()),
        grid: [to_u32(num_tokens.max(1), "num_tokens")?, 1, 1],
        block: [128, 1, 1],
        shared_bytes: 0,
    })
}

/// Quantizing scatter of K or V rows into an int8/fp8 cache: one CTA per token, one warp per
/// KV head (f32 rows in).
pub fn write_kv_quant_plan(cache: CacheFormat, num_tokens: usize) -> Result<LaunchConfig, PlanError> {
    let kernel = match cache {
        CacheFormat::Int8 => "write_kv_quant_int8",
        CacheFormat::Fp8 => "write_kv_quant_fp8",
        CacheFormat::Float => return err("write_kv_quant_plan: a float cache takes write_kv_rows".to_string()),
    };
    Ok(LaunchConfig {
        kernel: kernel.to_string(),
        grid: [to_u32(num_tokens.max(1), "num_tokens")?, 1, 1],
        block: [128, 1, 1],
        shared_bytes: 0,
    })
}

/// Scatter of slot positions: one thread per (token, kv head).
pub fn write_kv_positions_plan(num_tokens: usize, num_kv_heads: usize) -> Result<LaunchConfig, PlanError> {
    Ok(LaunchConfig {
        kernel: "write_kv_positions".to_string(),
        grid: [to_u32((num_tokens * num_kv_heads).div_ceil(256).max(1), "positions grid")?, 1, 1],
        block: [256, 1, 1],
        shared_bytes: 0,
    })
}

/// RMSNorm: one CTA per row, a warp-multiple of threads up to 1024 (short rows use fewer).
pub fn rms_norm_plan(dtype: KernelDtype, rows: usize, cols: usize) -> Result<LaunchConfig, PlanError> {
    if cols == 0 {
        return err("rms_norm over an empty last dim".to_string());
    }
    let threads = cols.div_ceil(32).clamp(1, 8) * 32;
    Ok(LaunchConfig {
        kernel: format!("rms_norm_{}", dtype.suffix()),
        grid: [to_u32(rows.max(1), "rows")?, 1, 1],
        block: [to_u32(threads, "threads")?, 1, 1],
        shared_bytes: 32 * 4,
    })
}

/// RoPE: one CTA per token.
pub fn rope_plan(dtype: KernelDtype, num_tokens: usize) -> Result<LaunchConfig, PlanError> {
    Ok(LaunchConfig {
        kernel: format!("rope_{}", dtype.suffix()),
        grid: [to_u32(num_tokens.max(1), "num_tokens")?, 1, 1],
        block: [128, 1, 1],
        shared_bytes: 0,
    })
}

/// silu_mul: grid-stride, at most 4096 CTAs of 256 threads.
pub fn silu_mul_plan(dtype: KernelDtype, len: usize) -> Result<LaunchConfig, PlanError> {
    Ok(LaunchConfig {
        kernel: format!("silu_mul_{}", dtype.suffix()),
        grid: [to_u32(len.div_ceil(256).clamp(1, 4096), "silu grid")?, 1, 1],
        block: [256, 1, 1],
        shared_bytes: 0,
    })
}

/// Threads per attention-mass CTA (4 warps); attention_mass.cu is compiled with this bound.
pub const MASS_THREADS: u32 = 128;
/// Query rows one attention-mass tile scores together (`KV_MASS_ROWS` in attention_mass.cu).
pub const MASS_ROWS: usize = 8;

/// Dynamic shared memory of an attention-mass CTA: the tile's scaled queries `[MASS_ROWS][D]`
/// and the per-warp (max, sum) of each row, all f32 (the carve-up in attention_mass.cu).
pub fn attention_mass_smem_bytes(head_dim: usize) -> usize {
    4 * (MASS_ROWS * head_dim + 2 * (MASS_THREADS as usize / 32) * MASS_ROWS)
}

/// Attention mass: one CTA per (voter, kv head), writing that voter's `[max_ctx]` row.
pub fn attention_mass_plan(shape: &AttentionShape, num_voters: usize, max_ctx: usize) -> Result<LaunchConfig, PlanError> {
    shape.validate()?;
    if shape.cache != CacheFormat::Float {
        return err(format!(
            "attention_mass (H2O/SnapKV scores) has no CUDA kernel for a{} KV cache yet; use an f16/bf16 cache with these policies",
            shape.cache.suffix().replace('_', "n ")
        ));
    }
    if num_voters == 0 || max_ctx == 0 {
        return err(format!("attention_mass needs voters and a context, got {num_voters} voters, max_ctx {max_ctx}"));
    }
    Ok(LaunchConfig {
        kernel: shape.kernel_name("attention_mass"),
        grid: [to_u32(num_voters, "voters")?, to_u32(shape.num_kv_heads, "num_kv_heads")?, 1],
        block: [MASS_THREADS, 1, 1],
        shared_bytes: to_u32(attention_mass_smem_bytes(shape.head_dim), "shared bytes")?,
    })
}

/// Element type of a cache tensor that move_slots / copy_blocks rewrite: K/V in a float dtype,
/// int8/fp8 K/V rows as bytes (codes and scale move together), or the slot metadata (`slot_pos`
/// i32, `slot_score` f32 = `Float(F32)`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CacheElem {
    Float(KernelDtype),
    Bytes,
    I32,
}

impl CacheElem {
    pub fn suffix(self) -> &'static str {
        match self {
            Self::Float(d) => d.suffix(),
            Self::Bytes => "u8",
            Self::I32 => "i32",
        }
    }
}

/// Slot moves: one thread per (move, element of the row), grid-stride, at most 4096 CTAs.
pub fn move_slots_plan(elem: CacheElem, num_moves: usize, row: usize) -> Result<LaunchConfig, PlanError> {
    if i32::try_from(num_moves).is_err() || i32::try_from(row).is_err() {
        return err(format!("move_slots: {num_moves} moves of {row} elements exceed the kernel's int arguments"));
    }
    Ok(LaunchConfig {
        kernel: format!("move_slots_{}", elem.suffix()),
        grid: [to_u32((num_moves * row).div_ceil(256).clamp(1, 4096), "move grid")?, 1, 1],
        block: [256, 1, 1],
        shared_bytes: 0,
    })
}

/// Block copies: grid.x = pair, grid.y CTAs of 256 threads share a block's `block_elems`
/// elements (about 2048 each, at most 1024 CTAs per pair).
pub fn copy_blocks_plan(elem: CacheElem, num_pairs: usize, block_elems: usize) -> Result<LaunchConfig, PlanError> {
    Ok(LaunchConfig {
        kernel: format!("copy_blocks_{}", elem.suffix()),
        grid: [to_u32(num_pairs.max(1), "block pairs")?, to_u32(block_elems.div_ceil(2048).clamp(1, 1024), "copy grid")?, 1],
        block: [256, 1, 1],
        shared_bytes: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(dtype: KernelDtype, heads: usize, kv_heads: usize, bs: usize, d: usize) -> AttentionShape {
        AttentionShape { dtype, cache: CacheFormat::Float, num_seqs: 3, num_heads: heads, num_kv_heads: kv_heads, block_size: bs, head_dim: d }
    }

    #[test]
    fn decode_splits_cover_every_block_of_the_longest_context() {
        for splits in 1..=7 {
            let plan = decode_plan(&shape(KernelDtype::F16, 8, 2, 16, 64), 100, Some(splits), 80).unwrap();
            let covered = plan.blocks_per_split as usize * plan.num_splits as usize;
            assert!(covered >= 100usize.div_ceil(16), "splits {splits}: {covered} blocks covered");
            assert!((plan.blocks_per_split as usize - 1) * splits < 100usize.div_ceil(16));
            assert_eq!(plan.split.grid, [3, 2, splits as u32]);
            assert_eq!(plan.merge.grid, [3, 8, 1]);
        }
    }

    #[test]
    fn heuristic_splits_long_contexts_only_when_the_grid_is_small() {
        assert_eq!(choose_num_splits(64, 2048 / 16, 108), 4);
        assert_eq!(choose_num_splits(1024, 2048 / 16, 108), 1);
        assert_eq!(choose_num_splits(2, 2, 108), 1); // too short to split
    }

    #[test]
    fn unsupported_shapes_are_errors_that_name_the_limit() {
        let e = decode_plan(&shape(KernelDtype::F32, 8, 2, 8, 64), 10, None, 1).unwrap_err();
        assert!(e.0.contains("block sizes"), "{e}");
        let e = prefill_plan(&shape(KernelDtype::F32, 8, 2, 16, 96), 10).unwrap_err();
        assert!(e.0.contains("head dims"), "{e}");
        let e = prefill_plan(&shape(KernelDtype::F32, 9, 2, 16, 64), 10).unwrap_err();
        assert!(e.0.contains("multiple"), "{e}");
        assert!(decode_plan(&shape(KernelDtype::F32, 8, 2, 16, 64), 10, Some(0), 1).is_err());
    }

    #[test]
    fn kv_policy_plans_name_their_instantiation_and_cover_the_work() {
        let s = shape(KernelDtype::Bf16, 24, 3, 32, 128);
        let p = attention_mass_plan(&s, 5, 700).unwrap();
        assert_eq!((p.kernel.as_str(), p.grid), ("attention_mass_bf16_bs32_d128", [5, 3, 1]));
        assert!(p.shared_bytes as usize <= MAX_SHARED_BYTES);
        assert!(attention_mass_plan(&s, 0, 700).is_err());
        assert!(attention_mass_plan(&shape(KernelDtype::F32, 8, 2, 8, 64), 1, 10).is_err(), "block size 8");
        let p = move_slots_plan(CacheElem::I32, 1000, 1).unwrap();
        assert_eq!((p.kernel.as_str(), p.grid[0]), ("move_slots_i32", 4));
        assert_eq!(move_slots_plan(CacheElem::Float(KernelDtype::F16), 1 << 20, 128).unwrap().grid[0], 4096);
        let p = copy_blocks_plan(CacheElem::Float(KernelDtype::F32), 7, 8 * 16 * 128).unwrap();
        assert_eq!((p.kernel.as_str(), p.grid), ("copy_blocks_f32", [7, 8, 1]));
    }

    #[test]
    fn quantized_caches_name_their_format_and_stage_rows_with_their_scales() {
        let s = AttentionShape { cache: CacheFormat::Int8, ..shape(KernelDtype::F16, 8, 2, 16, 64) };
        let p = decode_plan(&s, 100, None, 8).unwrap();
        assert_eq!(p.split.kernel, "paged_decode_f16_int8_bs16_d64");
        assert_eq!(p.split.shared_bytes as usize, attention_smem_bytes(68, 16, 64, 4));
        assert_eq!(prefill_plan(&AttentionShape { cache: CacheFormat::Fp8, ..s }, 9).unwrap().attn.kernel, "paged_prefill_f16_fp8_bs16_d64");
        assert_eq!(write_kv_quant_plan(CacheFormat::Fp8, 3).unwrap().kernel, "write_kv_quant_fp8");
        assert!(write_kv_quant_plan(CacheFormat::Float, 3).is_err());
        let e = attention_mass_plan(&s, 1, 10).unwrap_err();
        assert!(e.0.contains("int8") && !e.0.contains('\n'), "{e}");
    }

    #[test]
    fn shared_memory_stays_under_the_default_limit_for_gqa_up_to_8() {
        for dtype in [KernelDtype::F32, KernelDtype::F16, KernelDtype::Bf16] {
            for (bs, d) in [(16, 64), (16, 128), (32, 64), (32, 128)] {
                for group in [1, 3, 8] {
                  for cache in [CacheFormat::Float, CacheFormat::Int8, CacheFormat::Fp8] {
                    let s = AttentionShape { cache, ..shape(dtype, 2 * group, 2, bs, d) };
                    let p = prefill_plan(&s, 40).unwrap();
                    assert!(p.attn.shared_bytes as usize <= MAX_SHARED_BYTES);
                    assert!(p.tile_tokens as usize * group <= PREFILL_TARGET_ROWS.max(group));
                    decode_plan(&s, 40, None, 8).unwrap();
                  }
                }
            }
        }
    }
}
