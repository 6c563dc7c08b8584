//! `cuda_fwd` bodies for the ops' CustomOps: each function takes exactly the arguments of the
//! candle trait method it implements (plus the op struct's fields), checks layouts, and launches
//! the kernels with the geometry from [`super::plan`] and the same argument lists the emulation
//! tests use (kernels/tests/emu_support).
//!
//! Must not know: the CPU implementations. Inputs must be contiguous (a start offset is fine);
//! the public op wrappers already make them so.

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{CudaFunction, CudaSlice, CudaStream, CudaView, DeviceRepr, LaunchArgs, PushKernelArg};
use candle_core::cuda_backend::{cudarc, CudaDevice, CudaStorageSlice, WrapErr};
use candle_core::{bail, CudaStorage, DType, Layout, Result, Shape, Storage, StorageRef, Tensor};

use super::plan::{self, AttentionShape, CacheFormat, KernelDtype, LaunchConfig};
use super::ptx;
use crate::AttentionMetadata;

pub use super::kv_policy::{attention_mass, copy_blocks, move_slots};
pub use super::sparse::{paged_attention_sparse, select_blocks};

pub(super) fn plan_err(e: plan::PlanError) -> candle_core::Error {
    candle_core::Error::Msg(e.0)
}

pub(super) fn start_offset(l: &Layout, op: &str, what: &str) -> Result<usize> {
    match l.contiguous_offsets() {
        Some((start, _)) => Ok(start),
        None => bail!("{op} (cuda): {what} must be contiguous, got strides {:?}", l.stride()),
    }
}

pub(super) fn kernel_dtype(dtype: DType, op: &str) -> Result<KernelDtype> {
    Ok(match dtype {
        DType::F32 => KernelDtype::F32,
        DType::F16 => KernelDtype::F16,
        DType::BF16 => KernelDtype::Bf16,
        other => bail!("{op} (cuda): no kernel for {other:?}"),
    })
}

/// The format of a K/V cache storage read with queries of dtype `q`: the same float dtype, or
/// int8 (U8 storage) / fp8 (F8E4M3 storage) rows of codes and scale.
pub(super) fn cache_format(q: DType, cache: DType, op: &str) -> Result<CacheFormat> {
    match cache {
        DType::U8 => Ok(CacheFormat::Int8),
        DType::F8E4M3 => Ok(CacheFormat::Fp8),
        c if c == q => Ok(CacheFormat::Float),
        c => bail!("{op} (cuda): a {c:?} KV cache is read with {c:?} queries, got {q:?}"),
    }
}

pub(super) fn as_i32(v: usize, what: &str) -> Result<i32> {
    i32::try_from(v).map_err(|_| candle_core::Error::Msg(format!("{what} = {v} exceeds i32")))
}

/// The kernel `cfg.kernel` from kernels/cuda/<module>.cu, loaded once per device.
pub(super) fn function(dev: &CudaDevice, module: &str, cfg: &LaunchConfig) -> Result<CudaFunction> {
    let cc = dev.cuda_stream().context().compute_capability().w()?;
    let arch = ptx::arch_for(cc)?;
    let text = ptx::ptx(module, arch)?;
    Ok(dev.get_or_load_custom_func(&cfg.kernel, &format!("kvault_{module}_{arch}"), &text)?.into_cuda_function())
}

/// Streaming multiprocessors of the stream's device (the split heuristics aim at about two CTAs each).
pub(super) fn sm_count(stream: &CudaStream) -> Result<usize> {
    let n = stream
        .context()
        .attribute(cudarc::driver::sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
        .w()?;
    Ok(n.max(1) as usize)
}

pub(super) fn launch(mut args: LaunchArgs<'_>, cfg: &LaunchConfig) -> Result<()> {
    let c = cudarc::driver::LaunchConfig {
        grid_dim: (cfg.grid[0], cfg.grid[1], cfg.grid[2]),
        block_dim: (cfg.block[0], cfg.block[1], cfg.block[2]),
        shared_mem_bytes: cfg.shared_bytes,
    };
    // SAFETY: every caller pushes arguments in the kernel's parameter order with matching types
    // (the emulation tests check the same lists against the compiled signatures), and buffer
    // sizes were validated against the shapes the geometry was planned for.
    unsafe { args.launch(c) }.w()?;
    Ok(())
}

/// Runs `$body` with `$t` bound to the Rust element type of a float storage.
macro_rules! with_float_slice {
    ($storage:expr, $op:expr, |$s:ident : $t:ident| $body:block) => {
        match $storage {
            CudaStorageSlice::F32($s) => {
                type $t = f32;
                $body
            }
            CudaStorageSlice::F16($s) => {
                type $t = half::f16;
                $body
            }
            CudaStorageSlice::BF16($s) => {
                type $t = half::bf16;
                $body
            }
            _ => bail!("{} (cuda): unsupported dtype", $op),
        }
    };
}
pub(super) use with_float_slice;

/// Device slice of one metadata tensor; the read guard must outlive the launch.
pub(super) fn metadata_storage<'a>(t: &'a Tensor, op: &str, what: &str) -> Result<(StorageRef<'a>, usize)> {
    let (storage, layout) = t.storage_and_layout();
    let offset = start_offset(layout, op, what)?;
    if !matches!(&*storage, Storage::Cuda(_)) {
        bail!("{op} (cuda): metadata {what} is not on the CUDA device")
    }
    Ok((storage, offset))
}

pub(super) fn cuda_of<'a>(s: &'a Storage) -> Result<&'a CudaStorage> {
    match s {
        Storage::Cuda(c) => Ok(c),
        _ => bail!("expected CUDA storage"),
    }
}

/// cuda_fwd of write_kv's row scatter (InplaceOp3: cache, new rows, slot_mapping).
pub fn write_kv_rows(
    dst: &mut CudaStorage,
    dst_l: &Layout,
    src: &CudaStorage,
    src_l: &Layout,
    slots: &CudaStorage,
    slots_l: &Layout,
) -> Result<()> {
    const OP: &str = "write_kv";
    let dims = dst_l.dims().to_vec();
    if dims.len() != 4 {
        bail!("{OP} (cuda): cache must be rank 4, got {dims:?}")
    }
    if matches!(dst.dtype(), DType::U8 | DType::F8E4M3) {
        return write_kv_quantized(dst, dst_l, &dims, src, src_l, slots, slots_l);
    }
    if src.dtype() != dst.dtype() {
        bail!("{OP} (cuda): rows are {:?} but the cache is {:?}", src.dtype(), dst.dtype())
    }
    let num_tokens = slots_l.shape().elem_count();
    if src_l.shape().elem_count() != num_tokens * dims[1] * dims[3] {
        bail!("{OP} (cuda): source shape {:?} does not match {num_tokens} tokens", src_l.dims())
    }
    let (dst_off, src_off) = (start_offset(dst_l, OP, "cache")?, start_offset(src_l, OP, "rows")?);
    let slots = slots.as_cuda_slice::<i64>()?.slice(start_offset(slots_l, OP, "slot_mapping")?..);
    let cfg = plan::write_kv_rows_plan(kernel_dtype(dst.dtype(), OP)?, num_tokens).map_err(plan_err)?;
    let dev = dst.device.clone();
    let stream = dev.cuda_stream();
    let func = function(&dev, "write_kv", &cfg)?;
    let (heads, block_size, row) = (as_i32(dims[1], "heads")?, as_i32(dims[2], "block_size")?, as_i32(dims[3], "row")?);
    with_float_slice!(&mut dst.slice, OP, |d: T| {
        let mut d = d.slice_mut(dst_off..);
        let s = src.as_cuda_slice::<T>()?.slice(src_off..);
        let mut args = stream.launch_builder(&func);
        args.arg(&mut d).arg(&s).arg(&slots).arg(&heads).arg(&block_size).arg(&row);
        launch(args, &cfg)
    })
}

/// write_kv into an int8/fp8 cache: f32 rows in, each (token, head) row quantized with its own
/// scale by kernels/cuda/write_kv.cu (the CPU op's bytes exactly, see kv_quant.cuh).
fn write_kv_quantized(
    dst: &mut CudaStorage,
    dst_l: &Layout,
    dims: &[usize],
    src: &CudaStorage,
    src_l: &Layout,
    slots: &CudaStorage,
    slots_l: &Layout,
) -> Result<()> {
    const OP: &str = "write_kv";
    if src.dtype() != DType::F32 {
        bail!("{OP} (cuda): rows for a quantized cache must be f32, got {:?}", src.dtype())
    }
    let Some(head_dim) = dims[3].checked_sub(4).filter(|d| *d > 0) else {
        bail!("{OP} (cuda): a quantized cache row of {} bytes holds no codes", dims[3])
    };
    let num_tokens = slots_l.shape().elem_count();
    if src_l.shape().elem_count() != num_tokens * dims[1] * head_dim {
        bail!("{OP} (cuda): source shape {:?} does not match {num_tokens} tokens", src_l.dims())
    }
    let format = if dst.dtype() == DType::U8 { CacheFormat::Int8 } else { CacheFormat::Fp8 };
    let cfg = plan::write_kv_quant_plan(format, num_tokens).map_err(plan_err)?;
    let (dst_off, src_off) = (start_offset(dst_l, OP, "cache")?, start_offset(src_l, OP, "rows")?);
    let s = src.as_cuda_slice::<f32>()?.slice(src_off..);
    let slots = slots.as_cuda_slice::<i64>()?.slice(start_offset(slots_l, OP, "slot_mapping")?..);
    let dev = dst.device.clone();
    let stream = dev.cuda_stream();
    let func = function(&dev, "write_kv", &cfg)?;
    let (heads, block_size, d) = (as_i32(dims[1], "heads")?, as_i32(dims[2], "block_size")?, as_i32(head_dim, "head_dim")?);
    macro_rules! go {
        ($slice:expr) => {{
            let mut out = $slice.slice_mut(dst_off..);
            let mut args = stream.launch_builder(&func);
            args.arg(&mut out).arg(&s).arg(&slots).arg(&heads).arg(&block_size).arg(&d);
            launch(args, &cfg)
        }};
    }
    match &mut dst.slice {
        CudaStorageSlice::U8(c) => go!(c),
        CudaStorageSlice::F8E4M3(c) => go!(c),
        _ => bail!("{OP} (cuda): not a quantized cache"),
    }
}

/// cuda_fwd of write_kv's position scatter (InplaceOp3: slot_pos, positions, slot_mapping).
pub fn write_kv_positions(
    dst: &mut CudaStorage,
    dst_l: &Layout,
    positions: &CudaStorage,
    positions_l: &Layout,
    slots: &CudaStorage,
    slots_l: &Layout,
) -> Result<()> {
    const OP: &str = "write_kv(slot_pos)";
    let dims = dst_l.dims().to_vec();
    if dims.len() != 3 {
        bail!("{OP} (cuda): slot_pos must be rank 3, got {dims:?}")
    }
    let num_tokens = slots_l.shape().elem_count();
    let cfg = plan::write_kv_positions_plan(num_tokens, dims[1]).map_err(plan_err)?;
    let dev = dst.device.clone();
    let stream = dev.cuda_stream();
    let func = function(&dev, "write_kv", &cfg)?;
    let dst_off = start_offset(dst_l, OP, "slot_pos")?;
    let pos = positions.as_cuda_slice::<u32>()?.slice(start_offset(positions_l, OP, "positions")?..);
    let slots = slots.as_cuda_slice::<i64>()?.slice(start_offset(slots_l, OP, "slot_mapping")?..);
    let mut d = dst.as_cuda_slice_mut::<i32>()?.slice_mut(dst_off..);
    let (t, heads, bs) = (as_i32(num_tokens, "tokens")?, as_i32(dims[1], "heads")?, as_i32(dims[2], "block_size")?);
    let mut args = stream.launch_builder(&func);
    args.arg(&mut d).arg(&pos).arg(&slots).arg(&t).arg(&heads).arg(&bs);
    launch(args, &cfg)
}

/// cuda_fwd of paged_attention (CustomOp3: q, key cache, value cache; metadata and scale from
/// the op struct). Decode batches (every q_len = 1) take the flash-decoding split + merge path,
/// anything else the varlen prefill kernel.
pub fn paged_attention(
    meta: &AttentionMetadata,
    softmax_scale: f32,
    q: &CudaStorage,
    q_l: &Layout,
    k: &CudaStorage,
    k_l: &Layout,
    v: &CudaStorage,
    v_l: &Layout,
) -> Result<(CudaStorage, Shape)> {
    const OP: &str = "paged_attention";
    let (num_tokens, num_heads, head_dim) = q_l.shape().dims3()?;
    let (_, num_kv_heads, block_size, _) = k_l.shape().dims4()?;
    if k.dtype() != v.dtype() {
        bail!("{OP} (cuda): key cache {:?} and value cache {:?} differ", k.dtype(), v.dtype())
    }
    let shape = AttentionShape {
        dtype: kernel_dtype(q.dtype(), OP)?,
        cache: cache_format(q.dtype(), k.dtype(), OP)?,
        num_seqs: meta.num_seqs,
        num_heads,
        num_kv_heads,
        block_size,
        head_dim,
    };
    let (q_off, k_off, v_off) =
        (start_offset(q_l, OP, "q")?, start_offset(k_l, OP, "key cache")?, start_offset(v_l, OP, "value cache")?);
    let (bt_guard, bt_off) = metadata_storage(&meta.block_tables, OP, "block_tables")?;
    let (ctx_guard, ctx_off) = metadata_storage(&meta.context_lens, OP, "context_lens")?;
    let (cu_guard, cu_off) = metadata_storage(&meta.cu_seqlens_q, OP, "cu_seqlens_q")?;
    let dev = q.device.clone();
    let attn = AttnLaunch {
        meta,
        shape,
        softmax_scale,
        dev: &dev,
        stream: dev.cuda_stream(),
        bt: cuda_of(&bt_guard)?.as_cuda_slice::<u32>()?.slice(bt_off..),
        ctx: cuda_of(&ctx_guard)?.as_cuda_slice::<u32>()?.slice(ctx_off..),
        cu: cuda_of(&cu_guard)?.as_cuda_slice::<u32>()?.slice(cu_off..),
        out_len: num_tokens * num_heads * head_dim,
    };
    let out = with_float_slice!(&q.slice, OP, |qs: T| {
        let qv = qs.slice(q_off..);
        let out = match shape.cache {
            CacheFormat::Float => attn.run(&qv, &k.as_cuda_slice::<T>()?.slice(k_off..), &v.as_cuda_slice::<T>()?.slice(v_off..))?,
            CacheFormat::Int8 => attn.run(&qv, &k.as_cuda_slice::<u8>()?.slice(k_off..), &v.as_cuda_slice::<u8>()?.slice(v_off..))?,
            CacheFormat::Fp8 => attn.run(
                &qv,
                &k.as_cuda_slice::<float8::F8E4M3>()?.slice(k_off..),
                &v.as_cuda_slice::<float8::F8E4M3>()?.slice(v_off..),
            )?,
        };
        CudaStorage::wrap_cuda_slice(out, dev.clone())
    });
    Ok((out, q_l.shape().clone()))
}

/// One paged_attention launch: everything but the query and cache slices, whose element types
/// vary (query dtype × cache format).
struct AttnLaunch<'a> {
    meta: &'a AttentionMetadata,
    shape: AttentionShape,
    softmax_scale: f32,
    dev: &'a CudaDevice,
    stream: std::sync::Arc<CudaStream>,
    bt: CudaView<'a, u32>,
    ctx: CudaView<'a, u32>,
    cu: CudaView<'a, u32>,
    out_len: usize,
}

impl AttnLaunch<'_> {
    /// Decode batches (every q_len = 1) take the flash-decoding split + merge path, anything else
    /// the varlen prefill kernel. Returns the output `[T, H, D]` in the query's dtype.
    fn run<T: DeviceRepr, C>(&self, qv: &CudaView<T>, kv: &CudaView<C>, vv: &CudaView<C>) -> Result<CudaSlice<T>> {
        let (meta, shape, dev, stream) = (self.meta, &self.shape, self.dev, &self.stream);
        let (bt, ctx, cu, softmax_scale) = (&self.bt, &self.ctx, &self.cu, self.softmax_scale);
        let (h, kvh) = (as_i32(shape.num_heads, "num_heads")?, as_i32(shape.num_kv_heads, "num_kv_heads")?);
        let max_blocks = as_i32(meta.host.max_blocks_per_seq, "max_blocks_per_seq")?;
        // SAFETY: every element is written by the merge or prefill kernel before it is read.
        let mut out = unsafe { dev.alloc::<T>(self.out_len)? };
        if meta.max_query_len == 1 {
            let p = plan::decode_plan(shape, meta.max_context_len, None, sm_count(stream)?).map_err(plan_err)?;
            let rows = meta.num_seqs * shape.num_heads * p.num_splits as usize;
            let mut part_out = dev.alloc_zeros::<f32>(rows * shape.head_dim)?;
            let mut part_m = dev.alloc_zeros::<f32>(rows)?;
            let mut part_l = dev.alloc_zeros::<f32>(rows)?;
            let bps = p.blocks_per_split as i32;
            let split = function(dev, "paged_decode", &p.split)?;
            let mut args = stream.launch_builder(&split);
            args.arg(qv).arg(kv).arg(vv).arg(bt).arg(ctx).arg(cu);
            args.arg(&mut part_out).arg(&mut part_m).arg(&mut part_l);
            args.arg(&h).arg(&kvh).arg(&max_blocks).arg(&bps).arg(&softmax_scale);
            launch(args, &p.split)?;
            let (d, splits) = (as_i32(shape.head_dim, "head_dim")?, p.num_splits as i32);
            let merge = function(dev, "paged_decode", &p.merge)?;
            let mut args = stream.launch_builder(&merge);
            args.arg(&mut out).arg(&part_out).arg(&part_m).arg(&part_l).arg(cu).arg(&h).arg(&d).arg(&splits);
            launch(args, &p.merge)?;
        } else {
            let p = plan::prefill_plan(shape, meta.max_query_len).map_err(plan_err)?;
            let tile = p.tile_tokens as i32;
            let func = function(dev, "paged_prefill", &p.attn)?;
            let mut args = stream.launch_builder(&func);
            args.arg(&mut out).arg(qv).arg(kv).arg(vv).arg(bt).arg(ctx).arg(cu);
            args.arg(&h).arg(&kvh).arg(&max_blocks).arg(&tile).arg(&softmax_scale);
            launch(args, &p.attn)?;
        }
        Ok(out)
    }
}

/// cuda_fwd of rms_norm (CustomOp2: x, weight). The weight is upcast to f32 like the CPU op does.
pub fn rms_norm(eps: f32, x: &CudaStorage, x_l: &Layout, w: &CudaStorage, w_l: &Layout) -> Result<(CudaStorage, Shape)> {
    const OP: &str = "rms_norm";
    let cols = *x_l.dims().last().unwrap_or(&0);
    let rows = x_l.shape().elem_count() / cols.max(1);
    let cfg = plan::rms_norm_plan(kernel_dtype(x.dtype(), OP)?, rows, cols).map_err(plan_err)?;
    let x_off = start_offset(x_l, OP, "x")?;
    let w32 = w.to_dtype(w_l, DType::F32)?; // contiguous f32 copy, offset 0
    let wv = w32.as_cuda_slice::<f32>()?;
    let dev = x.device.clone();
    let stream = dev.cuda_stream();
    let func = function(&dev, "rms_norm", &cfg)?;
    let c = as_i32(cols, "cols")?;
    let out = with_float_slice!(&x.slice, OP, |xs: T| {
        let xv = xs.slice(x_off..);
        // SAFETY: every element is written by the kernel before it is read.
        let mut out = unsafe { dev.alloc::<T>(rows * cols)? };
        let mut args = stream.launch_builder(&func);
        args.arg(&mut out).arg(&xv).arg(wv).arg(&c).arg(&eps);
        launch(args, &cfg)?;
        CudaStorage::wrap_cuda_slice(out, dev.clone())
    });
    Ok((out, x_l.shape().clone()))
}

/// cuda_fwd of rope (CustomOp3: x [T, H, D], cos and sin already gathered per token [T, D/2]).
pub fn rope(
    x: &CudaStorage,
    x_l: &Layout,
    cos: &CudaStorage,
    cos_l: &Layout,
    sin: &CudaStorage,
    sin_l: &Layout,
) -> Result<(CudaStorage, Shape)> {
    const OP: &str = "rope";
    let (num_tokens, heads, head_dim) = x_l.shape().dims3()?;
    let cfg = plan::rope_plan(kernel_dtype(x.dtype(), OP)?, num_tokens).map_err(plan_err)?;
    let x_off = start_offset(x_l, OP, "x")?;
    let cv = cos.as_cuda_slice::<f32>()?.slice(start_offset(cos_l, OP, "cos")?..);
    let sv = sin.as_cuda_slice::<f32>()?.slice(start_offset(sin_l, OP, "sin")?..);
    let dev = x.device.clone();
    let stream = dev.cuda_stream();
    let func = function(&dev, "rope", &cfg)?;
    let (h, d) = (as_i32(heads, "heads")?, as_i32(head_dim, "head_dim")?);
    let no_positions: u64 = 0; // null: tables are per token already
    let out = with_float_slice!(&x.slice, OP, |xs: T| {
        let xv = xs.slice(x_off..);
        // SAFETY: every element is written by the kernel before it is read.
        let mut out = unsafe { dev.alloc::<T>(num_tokens * heads * head_dim)? };
        let mut args = stream.launch_builder(&func);
        args.arg(&mut out).arg(&xv).arg(&cv).arg(&sv).arg(&no_positions).arg(&h).arg(&d);
        launch(args, &cfg)?;
        CudaStorage::wrap_cuda_slice(out, dev.clone())
    });
    Ok((out, x_l.shape().clone()))
}

/// cuda_fwd of silu_mul (CustomOp2: gate, up).
pub fn silu_mul(g: &CudaStorage, g_l: &Layout, u: &CudaStorage, u_l: &Layout) -> Result<(CudaStorage, Shape)> {
    const OP: &str = "silu_mul";
    let n = g_l.shape().elem_count();
    let cfg = plan::silu_mul_plan(kernel_dtype(g.dtype(), OP)?, n).map_err(plan_err)?;
    let (g_off, u_off) = (start_offset(g_l, OP, "gate")?, start_offset(u_l, OP, "up")?);
    let dev = g.device.clone();
    let stream = dev.cuda_stream();
    let func = function(&dev, "silu_mul", &cfg)?;
    let len = n as i64;
    let out = with_float_slice!(&g.slice, OP, |gs: T| {
        let gv = gs.slice(g_off..);
        let uv = u.as_cuda_slice::<T>()?.slice(u_off..);
        // SAFETY: every element is written by the kernel before it is read.
        let mut out = unsafe { dev.alloc::<T>(n)? };
        let mut args = stream.launch_builder(&func);
        args.arg(&mut out).arg(&gv).arg(&uv).arg(&len);
        launch(args, &cfg)?;
        CudaStorage::wrap_cuda_slice(out, dev.clone())
    });
    Ok((out, g_l.shape().clone()))
}
