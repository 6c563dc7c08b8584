//! `cuda_fwd` bodies of the KV-policy ops: `attention_mass` (kernels/cuda/attention_mass.cu) and
//! the in-place `move_slots` / `copy_blocks` (kernels/cuda/slot_moves.cu). Re-exported from
//! [`super::ops`], where the CustomOps in kernels/src/paged call them; same conventions as there
//! (layout checks, geometry from [`super::plan`], argument lists identical to the emulation
//! tests' in kernels/tests/emu_support/kv_policy.rs).
//!
//! Must not know: the CPU implementations, or what the policies do with the sums and moves. The
//! public ops validated voters, moves and pairs against the batch and the cache.

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::PushKernelArg;
use candle_core::cuda_backend::CudaStorageSlice;
use candle_core::{bail, CudaStorage, DType, Layout, Result, Shape};

use super::ops::{as_i32, cache_format, cuda_of, function, kernel_dtype, launch, metadata_storage, plan_err, start_offset};
use super::plan::{self, AttentionShape, CacheElem};
use crate::AttentionMetadata;

/// Runs `$body` with `$s` the typed device slice and `$t` its Rust element type, for the listed
/// storage variants; any other dtype is an error naming the op.
macro_rules! with_slice {
    ($storage:expr, $op:expr, [$($variant:ident => $ty:ty),*], |$s:ident : $t:ident| $body:block) => {
        match $storage {
            $(CudaStorageSlice::$variant($s) => {
                #[allow(dead_code)]
                type $t = $ty;
                $body
            })*
            _ => bail!("{} (cuda): unsupported dtype", $op),
        }
    };
}

/// cuda_fwd of attention_mass (CustomOp3: q, key cache, voters U32 `[n, 2]`; metadata, scale
/// and the output width `max_ctx` from the op struct). Output F32 `[voters, num_kv_heads, max_ctx]`.
#[allow(clippy::too_many_arguments)]
pub fn attention_mass(
    meta: &AttentionMetadata,
    softmax_scale: f32,
    max_ctx: usize,
    q: &CudaStorage,
    q_l: &Layout,
    k: &CudaStorage,
    k_l: &Layout,
    voters: &CudaStorage,
    voters_l: &Layout,
) -> Result<(CudaStorage, Shape)> {
    const OP: &str = "attention_mass";
    let (_, num_heads, head_dim) = q_l.shape().dims3()?;
    let (_, num_kv_heads, block_size, _) = k_l.shape().dims4()?;
    let (num_voters, pair) = voters_l.shape().dims2()?;
    if pair != 2 || voters.dtype() != DType::U32 {
        bail!("{OP} (cuda): voters must be U32 [n, 2], got {:?} {:?}", voters.dtype(), voters_l.dims())
    }
    let shape = AttentionShape {
        dtype: kernel_dtype(q.dtype(), OP)?,
        // An int8/fp8 cache gets the plan's one-line refusal (no quantized kernel yet).
        cache: cache_format(q.dtype(), k.dtype(), OP)?,
        num_seqs: meta.num_seqs,
        num_heads,
        num_kv_heads,
        block_size,
        head_dim,
    };
    let cfg = plan::attention_mass_plan(&shape, num_voters, max_ctx).map_err(plan_err)?;
    let (q_off, k_off) = (start_offset(q_l, OP, "q")?, start_offset(k_l, OP, "key cache")?);
    // The kernel reads K rows as 16-byte vectors; rows are 16-byte multiples, so the start must be.
    if k_off * k.dtype().size_in_bytes() % 16 != 0 {
        bail!("{OP} (cuda): the key cache must start 16-byte aligned (element offset {k_off})")
    }
    let v_off = start_offset(voters_l, OP, "voters")?;
    let (bt_guard, bt_off) = metadata_storage(&meta.block_tables, OP, "block_tables")?;
    let (ctx_guard, ctx_off) = metadata_storage(&meta.context_lens, OP, "context_lens")?;
    let (cu_guard, cu_off) = metadata_storage(&meta.cu_seqlens_q, OP, "cu_seqlens_q")?;
    let bt = cuda_of(&bt_guard)?.as_cuda_slice::<u32>()?.slice(bt_off..);
    let ctx = cuda_of(&ctx_guard)?.as_cuda_slice::<u32>()?.slice(ctx_off..);
    let cu = cuda_of(&cu_guard)?.as_cuda_slice::<u32>()?.slice(cu_off..);
    let vs = voters.as_cuda_slice::<u32>()?.slice(v_off..);
    let dev = q.device.clone();
    let stream = dev.cuda_stream();
    let func = function(&dev, "attention_mass", &cfg)?;
    let (h, kvh) = (as_i32(num_heads, "num_heads")?, as_i32(num_kv_heads, "num_kv_heads")?);
    let max_blocks = as_i32(meta.host.max_blocks_per_seq, "max_blocks_per_seq")?;
    let width = as_i32(max_ctx, "max_ctx")?;
    // SAFETY: the kernel writes every element (zeros past each voter's context) before any read.
    let mut out = unsafe { dev.alloc::<f32>(num_voters * num_kv_heads * max_ctx)? };
    with_slice!(&q.slice, OP, [F32 => f32, F16 => half::f16, BF16 => half::bf16], |qs: T| {
        let qv = qs.slice(q_off..);
        let kv = k.as_cuda_slice::<T>()?.slice(k_off..);
        let mut args = stream.launch_builder(&func);
        args.arg(&mut out).arg(&qv).arg(&kv).arg(&vs).arg(&bt).arg(&ctx).arg(&cu);
        args.arg(&h).arg(&kvh).arg(&max_blocks).arg(&width).arg(&softmax_scale);
        launch(args, &cfg)?;
    });
    Ok((CudaStorage::wrap_cuda_slice(out, dev.clone()), Shape::from((num_voters, num_kv_heads, max_ctx))))
}

/// `(heads, block_size, row, element type)` of a cache tensor: K/V `[blocks, heads, bs, head_dim]`
/// or slot metadata `[blocks, heads, bs]` (row 1).
fn cache_geometry(dst: &CudaStorage, l: &Layout, op: &str) -> Result<(usize, usize, usize, CacheElem)> {
    let (heads, block_size, row) = match *l.dims() {
        [_, heads, block_size, row] => (heads, block_size, row),
        [_, heads, block_size] => (heads, block_size, 1),
        ref dims => bail!("{op} (cuda): expected a rank 3 or 4 cache tensor, got {dims:?}"),
    };
    let elem = match dst.dtype() {
        DType::I32 => CacheElem::I32,
        // int8/fp8 K/V rows (codes + scale) move as bytes.
        DType::U8 | DType::F8E4M3 => CacheElem::Bytes,
        other => CacheElem::Float(kernel_dtype(other, op)?),
    };
    Ok((heads, block_size, row, elem))
}

/// cuda_fwd of move_slots (InplaceOp2: cache tensor, moves U32 `[n, 3]`); `clear` is the value
/// each source takes afterwards (as f32, converted to the tensor's type), if any.
pub fn move_slots(dst: &mut CudaStorage, dst_l: &Layout, moves: &CudaStorage, moves_l: &Layout, clear: Option<f32>) -> Result<()> {
    const OP: &str = "move_slots";
    let (heads, block_size, row, elem) = cache_geometry(dst, dst_l, OP)?;
    let (num_moves, triple) = moves_l.shape().dims2()?;
    if triple != 3 || moves.dtype() != DType::U32 {
        bail!("{OP} (cuda): moves must be U32 [n, 3], got {:?} {:?}", moves.dtype(), moves_l.dims())
    }
    if num_moves == 0 {
        return Ok(());
    }
    let cfg = plan::move_slots_plan(elem, num_moves, row).map_err(plan_err)?;
    let dst_off = start_offset(dst_l, OP, "cache")?;
    let mv = moves.as_cuda_slice::<u32>()?.slice(start_offset(moves_l, OP, "moves")?..);
    let dev = dst.device.clone();
    let stream = dev.cuda_stream();
    let func = function(&dev, "slot_moves", &cfg)?;
    let (n, h, bs, r) = (as_i32(num_moves, "moves")?, as_i32(heads, "heads")?, as_i32(block_size, "block_size")?, as_i32(row, "row")?);
    let (has_clear, clear) = (i32::from(clear.is_some()), clear.unwrap_or(0.0));
    with_slice!(&mut dst.slice, OP, [F32 => f32, F16 => half::f16, BF16 => half::bf16, I32 => i32, U8 => u8, F8E4M3 => float8::F8E4M3], |s: T| {
        let mut d = s.slice_mut(dst_off..);
        let mut args = stream.launch_builder(&func);
        args.arg(&mut d).arg(&mv).arg(&n).arg(&h).arg(&bs).arg(&r).arg(&has_clear).arg(&clear);
        launch(args, &cfg)
    })
}

/// cuda_fwd of copy_blocks (InplaceOp2: cache tensor, pairs U32 `[n, 2]` of (src, dst) blocks).
pub fn copy_blocks(dst: &mut CudaStorage, dst_l: &Layout, pairs: &CudaStorage, pairs_l: &Layout) -> Result<()> {
    const OP: &str = "copy_blocks";
    let (heads, block_size, row, elem) = cache_geometry(dst, dst_l, OP)?;
    let (num_pairs, two) = pairs_l.shape().dims2()?;
    if two != 2 || pairs.dtype() != DType::U32 {
        bail!("{OP} (cuda): pairs must be U32 [n, 2], got {:?} {:?}", pairs.dtype(), pairs_l.dims())
    }
    if num_pairs == 0 {
        return Ok(());
    }
    let block_elems = heads * block_size * row;
    let cfg = plan::copy_blocks_plan(elem, num_pairs, block_elems).map_err(plan_err)?;
    let dst_off = start_offset(dst_l, OP, "cache")?;
    let ps = pairs.as_cuda_slice::<u32>()?.slice(start_offset(pairs_l, OP, "pairs")?..);
    let dev = dst.device.clone();
    let stream = dev.cuda_stream();
    let func = function(&dev, "slot_moves", &cfg)?;
    let len = block_elems as i64;
    with_slice!(&mut dst.slice, OP, [F32 => f32, F16 => half::f16, BF16 => half::bf16, I32 => i32, U8 => u8, F8E4M3 => float8::F8E4M3], |s: T| {
        let mut d = s.slice_mut(dst_off..);
        let mut args = stream.launch_builder(&func);
        args.arg(&mut d).arg(&ps).arg(&len);
        launch(args, &cfg)
    })
}
