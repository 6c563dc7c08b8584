//! `cuda_fwd` bodies of the LycheeDecode ops: `paged_attention_sparse` (kernels/cuda/
//! sparse_decode.cu) and `select_blocks` (kernels/cuda/block_select.cu). Re-exported from
//! [`super::ops`], where the CustomOps in kernels/src/paged/sparse call them; same conventions as
//! there (layout checks, geometry from [`super::plan::sparse`], argument lists identical to the
//! emulation tests' in kernels/tests/emu_support/sparse.rs).
//!
//! Must not know: the CPU implementations, or how the engine picked budgets. The public ops
//! validated the plan, the roles and the selection's shape against the batch and the cache.
//!
//! Batches with prefill chunks: paged_attention (its prefill kernel) serves every row first and
//! the sparse kernels then overwrite only the rows of sparse heads of sparse sequences. That
//! reads the whole context once more for those heads in such steps, but keeps one decode kernel
//! for both head types and leaves the prefill kernel untouched; decode-only batches (the steady
//! state) run the sparse kernels alone.

use std::sync::Arc;

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{CudaSlice, CudaStream, CudaView, DeviceRepr, PushKernelArg};
// CudaStorageSlice: named by with_float_slice! at its call sites.
use candle_core::cuda_backend::{CudaDType, CudaDevice, CudaStorageSlice};
use candle_core::{bail, CudaStorage, Layout, Result, Shape, StorageRef, Tensor};

use super::ops::{
    as_i32, cache_format, cuda_of, function, kernel_dtype, launch, metadata_storage, plan_err, sm_count, start_offset,
    with_float_slice,
};
use super::plan::sparse::{block_select_plan, sparse_decode_plan, HybridDecodePlan};
use super::plan::{AttentionShape, CacheFormat};
use crate::paged::sparse::SparseDecodePlan;
use crate::AttentionMetadata;

fn attention_shape(op: &str, meta: &AttentionMetadata, q: &CudaStorage, q_l: &Layout, k: &CudaStorage, k_l: &Layout) -> Result<AttentionShape> {
    let (_, num_heads, head_dim) = q_l.shape().dims3()?;
    let (_, num_kv_heads, block_size, _) = k_l.shape().dims4()?;
    Ok(AttentionShape {
        dtype: kernel_dtype(q.dtype(), op)?,
        cache: cache_format(q.dtype(), k.dtype(), op)?,
        num_seqs: meta.num_seqs,
        num_heads,
        num_kv_heads,
        block_size,
        head_dim,
    })
}

/// Read guards of every device tensor the sparse kernels take besides q and the cache; they
/// must outlive the launches.
struct SparseInputs<'a> {
    block_tables: (StorageRef<'a>, usize),
    context_lens: (StorageRef<'a>, usize),
    cu_seqlens_q: (StorageRef<'a>, usize),
    roles: (StorageRef<'a>, usize),
    budget_blocks: (StorageRef<'a>, usize),
}

impl<'a> SparseInputs<'a> {
    fn new(op: &str, meta: &'a AttentionMetadata, plan: &'a SparseDecodePlan) -> Result<Self> {
        Ok(Self {
            block_tables: metadata_storage(&meta.block_tables, op, "block_tables")?,
            context_lens: metadata_storage(&meta.context_lens, op, "context_lens")?,
            cu_seqlens_q: metadata_storage(&meta.cu_seqlens_q, op, "cu_seqlens_q")?,
            roles: metadata_storage(&plan.roles_tensor, op, "roles_tensor")?,
            budget_blocks: metadata_storage(&plan.budget_blocks, op, "budget_blocks")?,
        })
    }
}

fn view<'a, T: CudaDType + DeviceRepr>(guard: &'a (StorageRef<'_>, usize)) -> Result<CudaView<'a, T>> {
    Ok(cuda_of(&guard.0)?.as_cuda_slice::<T>()?.slice(guard.1..))
}

/// cuda_fwd of paged_attention_sparse (CustomOp3: q, key cache, value cache; metadata, scale,
/// plan, layer and the I32 `[S, H, plan.width]` selection from the op struct).
#[allow(clippy::too_many_arguments)]
pub fn paged_attention_sparse(
    meta: &AttentionMetadata,
    softmax_scale: f32,
    plan: &SparseDecodePlan,
    layer: usize,
    selection: &Tensor,
    q: &CudaStorage,
    q_l: &Layout,
    k: &CudaStorage,
    k_l: &Layout,
    v: &CudaStorage,
    v_l: &Layout,
) -> Result<(CudaStorage, Shape)> {
    const OP: &str = "paged_attention_sparse";
    if k.dtype() != v.dtype() {
        bail!("{OP} (cuda): key cache {:?} and value cache {:?} differ", k.dtype(), v.dtype())
    }
    let shape = attention_shape(OP, meta, q, q_l, k, k_l)?;
    let dev = q.device.clone();
    let stream = dev.cuda_stream();
    let geometry = sparse_decode_plan(&shape, meta.max_context_len, plan.width, None, sm_count(&stream)?).map_err(plan_err)?;
    let sparse_only = meta.max_query_len > 1;
    // With prefill chunks in the batch every row starts as paged_attention's (see the module doc).
    let mut dense = if sparse_only { Some(super::ops::paged_attention(meta, softmax_scale, q, q_l, k, k_l, v, v_l)?.0) } else { None };
    let (q_off, k_off, v_off) =
        (start_offset(q_l, OP, "q")?, start_offset(k_l, OP, "key cache")?, start_offset(v_l, OP, "value cache")?);
    let inputs = SparseInputs::new(OP, meta, plan)?;
    let sel = metadata_storage(selection, OP, "selection")?;
    let launch = DecodeLaunch {
        geometry,
        shape,
        dev: &dev,
        stream,
        bt: view(&inputs.block_tables)?,
        ctx: view(&inputs.context_lens)?,
        cu: view(&inputs.cu_seqlens_q)?,
        roles: view(&inputs.roles)?,
        budget: view(&inputs.budget_blocks)?,
        sel: view(&sel)?,
        max_blocks: as_i32(meta.host.max_blocks_per_seq, "max_blocks_per_seq")?,
        width: as_i32(plan.width, "selection width")?,
        layer: as_i32(layer, "layer")?,
        sparse_only: i32::from(sparse_only),
        softmax_scale,
    };
    let out_len = q_l.shape().elem_count();
    let out = with_float_slice!(&q.slice, OP, |qs: T| {
        let qv = qs.slice(q_off..);
        let mut out = match dense.take() {
            Some(storage) => storage,
            // SAFETY: a decode-only batch's combine writes every output row before any read.
            None => CudaStorage::wrap_cuda_slice(unsafe { dev.alloc::<T>(out_len)? }, dev.clone()),
        };
        let o = out.as_cuda_slice_mut::<T>()?;
        match shape.cache {
            CacheFormat::Float => launch.run(&qv, &k.as_cuda_slice::<T>()?.slice(k_off..), &v.as_cuda_slice::<T>()?.slice(v_off..), o)?,
            CacheFormat::Int8 => launch.run(&qv, &k.as_cuda_slice::<u8>()?.slice(k_off..), &v.as_cuda_slice::<u8>()?.slice(v_off..), o)?,
            CacheFormat::Fp8 => launch.run(
                &qv,
                &k.as_cuda_slice::<float8::F8E4M3>()?.slice(k_off..),
                &v.as_cuda_slice::<float8::F8E4M3>()?.slice(v_off..),
                o,
            )?,
        }
        out
    });
    Ok((out, q_l.shape().clone()))
}

/// One sparse decode: everything but the query, cache and output slices, whose element types
/// vary (query dtype × cache format).
struct DecodeLaunch<'a> {
    geometry: HybridDecodePlan,
    shape: AttentionShape,
    dev: &'a CudaDevice,
    stream: Arc<CudaStream>,
    bt: CudaView<'a, u32>,
    ctx: CudaView<'a, u32>,
    cu: CudaView<'a, u32>,
    roles: CudaView<'a, u8>,
    budget: CudaView<'a, u32>,
    sel: CudaView<'a, i32>,
    max_blocks: i32,
    width: i32,
    layer: i32,
    sparse_only: i32,
    softmax_scale: f32,
}

impl DecodeLaunch<'_> {
    /// Split kernel into partials, then the combine into `out` `[T, H, D]` (query dtype).
    fn run<T: DeviceRepr, C>(&self, qv: &CudaView<T>, kv: &CudaView<C>, vv: &CudaView<C>, out: &mut CudaSlice<T>) -> Result<()> {
        let (p, shape, dev, stream) = (&self.geometry, &self.shape, self.dev, &self.stream);
        let (h, kvh) = (as_i32(shape.num_heads, "num_heads")?, as_i32(shape.num_kv_heads, "num_kv_heads")?);
        let rows = shape.num_seqs * shape.num_heads * p.num_splits as usize;
        // Every partial the combine reads is written by its split CTA (empty splits included).
        let mut part_out = dev.alloc_zeros::<f32>(rows * shape.head_dim)?;
        let mut part_m = dev.alloc_zeros::<f32>(rows)?;
        let mut part_l = dev.alloc_zeros::<f32>(rows)?;
        let bps = p.blocks_per_split as i32;
        let split = function(dev, "sparse_decode", &p.split)?;
        let mut args = stream.launch_builder(&split);
        args.arg(qv).arg(kv).arg(vv).arg(&self.bt).arg(&self.ctx).arg(&self.cu);
        args.arg(&self.roles).arg(&self.budget).arg(&self.sel);
        args.arg(&mut part_out).arg(&mut part_m).arg(&mut part_l);
        args.arg(&h).arg(&kvh).arg(&self.max_blocks).arg(&bps).arg(&self.width).arg(&self.layer);
        args.arg(&self.sparse_only).arg(&self.softmax_scale);
        launch(args, &p.split)?;
        let (d, splits) = (as_i32(shape.head_dim, "head_dim")?, p.num_splits as i32);
        let combine = function(dev, "sparse_decode", &p.combine)?;
        let mut args = stream.launch_builder(&combine);
        args.arg(out).arg(&part_out).arg(&part_m).arg(&part_l).arg(&self.cu).arg(&self.roles).arg(&self.budget);
        args.arg(&h).arg(&kvh).arg(&d).arg(&splits).arg(&self.layer).arg(&self.sparse_only);
        launch(args, &p.combine)
    }
}

/// cuda_fwd of select_blocks (CustomOp3: q, key cache, selection I32 `[S, H, plan.width]`;
/// metadata, plan and layer from the op struct). Returns the new selection, same shape.
#[allow(clippy::too_many_arguments)]
pub fn select_blocks(
    meta: &AttentionMetadata,
    plan: &SparseDecodePlan,
    layer: usize,
    q: &CudaStorage,
    q_l: &Layout,
    k: &CudaStorage,
    k_l: &Layout,
    sel: &CudaStorage,
    sel_l: &Layout,
) -> Result<(CudaStorage, Shape)> {
    const OP: &str = "select_blocks";
    let shape = attention_shape(OP, meta, q, q_l, k, k_l)?;
    let dev = q.device.clone();
    let stream = dev.cuda_stream();
    let p = block_select_plan(&shape, meta.max_context_len, sm_count(&stream)?).map_err(plan_err)?;
    let (q_off, k_off) = (start_offset(q_l, OP, "q")?, start_offset(k_l, OP, "key cache")?);
    let old = sel.as_cuda_slice::<i32>()?.slice(start_offset(sel_l, OP, "selection")?..);
    let inputs = SparseInputs::new(OP, meta, plan)?;
    let sink = metadata_storage(&plan.sink_blocks, OP, "sink_blocks")?;
    let recent = metadata_storage(&plan.recent_blocks, OP, "recent_blocks")?;
    let (bt, ctx, cu) = (view::<u32>(&inputs.block_tables)?, view::<u32>(&inputs.context_lens)?, view::<u32>(&inputs.cu_seqlens_q)?);
    let (roles, budget) = (view::<u8>(&inputs.roles)?, view::<u32>(&inputs.budget_blocks)?);
    let (sink, recent) = (view::<u32>(&sink)?, view::<u32>(&recent)?);
    let (h, kvh) = (as_i32(shape.num_heads, "num_heads")?, as_i32(shape.num_kv_heads, "num_kv_heads")?);
    let max_blocks = as_i32(meta.host.max_blocks_per_seq, "max_blocks_per_seq")?;
    let (bpc, layer) = (p.blocks_per_cta as i32, as_i32(layer, "layer")?);
    let (width, block_size) = (as_i32(plan.width, "selection width")?, as_i32(shape.block_size, "block_size")?);

    // Only the chosen rows' scores are written and only those are read.
    let mut scores = dev.alloc_zeros::<f32>(shape.num_seqs * shape.num_kv_heads * meta.host.max_blocks_per_seq)?;
    let func = function(&dev, "block_select", &p.scores)?;
    macro_rules! scores {
        ($qv:expr, $kv:expr) => {{
            let kv = $kv;
            let mut args = stream.launch_builder(&func);
            args.arg(&mut scores).arg($qv).arg(&kv).arg(&bt).arg(&ctx).arg(&cu).arg(&roles).arg(&budget);
            args.arg(&h).arg(&kvh).arg(&max_blocks).arg(&bpc).arg(&layer);
            launch(args, &p.scores)?
        }};
    }
    with_float_slice!(&q.slice, OP, |qs: T| {
        let qv = qs.slice(q_off..);
        match shape.cache {
            CacheFormat::Float => scores!(&qv, k.as_cuda_slice::<T>()?.slice(k_off..)),
            CacheFormat::Int8 => scores!(&qv, k.as_cuda_slice::<u8>()?.slice(k_off..)),
            CacheFormat::Fp8 => scores!(&qv, k.as_cuda_slice::<float8::F8E4M3>()?.slice(k_off..)),
        }
    });

    // SAFETY: block_topk writes every element (a copied row, a new row, or -1 padding).
    let mut out = unsafe { dev.alloc::<i32>(sel_l.shape().elem_count())? };
    let func = function(&dev, "block_select", &p.topk)?;
    let mut args = stream.launch_builder(&func);
    args.arg(&mut out).arg(&old).arg(&scores).arg(&ctx).arg(&roles).arg(&budget).arg(&sink).arg(&recent);
    args.arg(&kvh).arg(&max_blocks).arg(&width).arg(&block_size).arg(&layer);
    launch(args, &p.topk)?;
    Ok((CudaStorage::wrap_cuda_slice(out, dev.clone()), sel_l.shape().clone()))
}
