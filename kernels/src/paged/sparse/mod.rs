//! LycheeDecode hybrid-head sparse decode (ALGORITHMS.md §2, the contract in
//! notes/lychee-contract.md): per layer, retrieval KV heads attend the whole context and choose
//! blocks, sparse KV heads attend only the blocks the nearest retrieval head below them chose.
//!
//! Owns: the two ops as candle CustomOps — [`paged_attention_sparse`] (attention with sparse
//! heads) and [`select_blocks`] (the retrieval heads' choice) — with their checks against the
//! cache and metadata; head roles ([`roles`]) and the step plan ([`plan`]). The CPU work lives in
//! the attention kernel (`attention::cpu`, walking the selection that `walk` checks and builds)
//! and in `select`.
//! Must not know: requests, policies or how budgets are picked (the engine builds the plan), nor
//! how roles were calibrated (the models crate).
//!
//! # One decode step (the engine's side)
//! ```text
//! let plan = SparseDecodePlan::new(roles.clone(), budgets, sinks, recents, &meta, &device)?; // blocks; 0 = dense
//! let mut selection = plan.initial_selection(&meta)?;                                        // [S, H, plan.width]
//! for layer in 0..num_layers {
//!     write_kv(&cache.layers[layer], &k, &v, &meta)?;
//!     let out = paged_attention_sparse(&q, &cache.layers[layer], &meta, scale, &plan, layer, &selection)?;
//!     selection = select_blocks(&q, &cache.layers[layer], &meta, &plan, layer, &selection)?;
//! }
//! ```
//! `select_blocks` reads only `q` and the cache, so it may run before or after the attention of
//! its layer, but after its `write_kv` (the newest key takes part in the scores) and before the
//! layers above. With no budget in the batch both ops reduce to `paged_attention` / a no-op.
//!
//! # CUDA hooks
//! With the `cuda` feature the ops' `cuda_fwd` call these (implemented on the CUDA branch in
//! `kernels/src/cuda/`, re-exported from `crate::cuda::ops`; until it lands the `cuda` feature
//! does not build on this branch alone):
//! ```text
//! /// cuda_fwd of paged_attention_sparse (CustomOp3: q, key cache, value cache). `selection` is
//! /// the I32 [S, H, plan.width] device tensor; plan tensors: budget_blocks, roles_tensor.
//! pub fn paged_attention_sparse(
//!     meta: &AttentionMetadata, softmax_scale: f32, plan: &SparseDecodePlan, layer: usize,
//!     selection: &Tensor,
//!     q: &CudaStorage, q_l: &Layout, k: &CudaStorage, k_l: &Layout, v: &CudaStorage, v_l: &Layout,
//! ) -> Result<(CudaStorage, Shape)>;  // [T, num_heads, head_dim] in q's dtype
//! /// cuda_fwd of select_blocks (CustomOp3: q, key cache, selection I32 [S, H, plan.width]).
//! pub fn select_blocks(
//!     meta: &AttentionMetadata, plan: &SparseDecodePlan, layer: usize,
//!     q: &CudaStorage, q_l: &Layout, k: &CudaStorage, k_l: &Layout, sel: &CudaStorage, sel_l: &Layout,
//! ) -> Result<(CudaStorage, Shape)>;  // a new I32 [S, H, plan.width]
//! ```

pub mod plan;
pub mod roles;
mod select;
mod walk;

#[cfg(test)]
mod test_fixture;
#[cfg(test)]
mod tests_attention;
#[cfg(test)]
mod tests_select;

use candle_core::{bail, CpuStorage, CustomOp3, DType, Layout, Result, Shape, Storage, Tensor};

pub use plan::{SparseDecodePlan, SparsePlanHost};
pub use roles::HeadRoles;

use crate::elem::{cache_bytes, contiguous, dtype_of, is_quantized_storage, to_f32_vec, with_float_type};
use crate::paged::attention::cpu::{self, FloatRows, Geometry, Level, QuantRows};
use crate::paged::attention::{check_attention_args, from_f32, paged_attention};
use crate::paged::kv_dtype::KvDtype;
use crate::paged::{AttentionMetadata, LayerKvCache};

/// `paged_attention` with sparse heads. For every sequence with a budget (`plan`), each KV head
/// that is sparse in `layer` attends only the logical blocks listed in its row of `selection`
/// (I32 `[S, H, plan.width]`, ascending then -1 padded; all -1 → zeros); every other head, and
/// every sequence without a budget, attends exactly as `paged_attention` does, bit for bit.
#[allow(clippy::too_many_arguments)]
pub fn paged_attention_sparse(
    q: &Tensor,
    cache: &LayerKvCache,
    meta: &AttentionMetadata,
    softmax_scale: f32,
    plan: &SparseDecodePlan,
    layer: usize,
    selection: &Tensor,
) -> Result<Tensor> {
    const OP: &str = "paged_attention_sparse";
    check_sparse_args(OP, q, cache, meta, softmax_scale, plan, layer, selection)?;
    // Nothing sparse this layer: the dense op is the same bits (and the tuned kernel on a GPU).
    let any_sparse_head = plan.roles.layer(layer).iter().any(|&r| !r);
    if !any_sparse_head || !plan.host.budget_blocks.iter().any(|&b| b > 0) {
        return paged_attention(q, cache, meta, softmax_scale);
    }
    run_attention(Level::detect(), q, cache, meta, softmax_scale, plan, layer, selection)
}

/// The retrieval heads' choice: a new selection tensor = `selection` with rows `[s, h]` replaced
/// for every sparse sequence `s` and every KV head `h` retrieval in `layer`: all blocks when they
/// fit the budget, else the sink blocks, the recent blocks and the highest-scoring others
/// (score = max over the block's keys of mean-of-group-query · key; ties → lower block),
/// ascending and -1 padded. `q`: `[T, num_heads, head_dim]` (after RoPE).
pub fn select_blocks(
    q: &Tensor,
    cache: &LayerKvCache,
    meta: &AttentionMetadata,
    plan: &SparseDecodePlan,
    layer: usize,
    selection: &Tensor,
) -> Result<Tensor> {
    const OP: &str = "select_blocks";
    check_sparse_args(OP, q, cache, meta, 1.0, plan, layer, selection)?;
    let any_retrieval_head = plan.roles.layer(layer).iter().any(|&r| r);
    if !any_retrieval_head || !plan.host.budget_blocks.iter().any(|&b| b > 0) {
        return Ok(selection.clone()); // no row to rewrite
    }
    run_select(Level::detect(), q, cache, meta, plan, layer, selection)
}

/// [`paged_attention_sparse`]'s checks: those of `paged_attention`, the plan against the batch
/// and the cache, and the selection's shape, dtype and device.
#[allow(clippy::too_many_arguments)]
fn check_sparse_args(
    op: &str,
    q: &Tensor,
    cache: &LayerKvCache,
    meta: &AttentionMetadata,
    softmax_scale: f32,
    plan: &SparseDecodePlan,
    layer: usize,
    selection: &Tensor,
) -> Result<()> {
    let shape = check_attention_args(op, q, cache, meta, softmax_scale)?;
    plan.check_batch(meta, op)?;
    let roles = &plan.roles;
    if roles.num_kv_heads() != shape.num_kv_heads {
        bail!("{op}: head roles are for {} KV heads, the cache has {}", roles.num_kv_heads(), shape.num_kv_heads)
    }
    if layer >= roles.num_layers() {
        bail!("{op}: layer {layer} but the head roles cover {} layers", roles.num_layers())
    }
    let want = [meta.num_seqs, shape.num_kv_heads, plan.width];
    if selection.dims() != want {
        bail!("{op}: selection is {:?}, expected [sequences, KV heads, plan width] = {want:?}", selection.dims())
    }
    if selection.dtype() != DType::I32 {
        bail!("{op}: selection must be I32, got {:?}", selection.dtype())
    }
    if !selection.device().same_device(q.device()) {
        bail!("{op}: selection is on {:?} but q on {:?}", selection.device().location(), q.device().location())
    }
    Ok(())
}

/// The op behind [`paged_attention_sparse`] at a chosen CPU level (tests run every level).
#[allow(clippy::too_many_arguments)]
fn run_attention(
    level: Level,
    q: &Tensor,
    cache: &LayerKvCache,
    meta: &AttentionMetadata,
    softmax_scale: f32,
    plan: &SparseDecodePlan,
    layer: usize,
    selection: &Tensor,
) -> Result<Tensor> {
    let selection = &selection.contiguous()?;
    let op = PagedAttentionSparse { meta, softmax_scale, plan, layer, selection, level };
    q.contiguous()?.apply_op3_no_bwd(&cache.key, &cache.value, &op)
}

/// The op behind [`select_blocks`] at a chosen CPU level.
fn run_select(
    level: Level,
    q: &Tensor,
    cache: &LayerKvCache,
    meta: &AttentionMetadata,
    plan: &SparseDecodePlan,
    layer: usize,
    selection: &Tensor,
) -> Result<Tensor> {
    let op = SelectBlocks { meta, plan, layer, level };
    q.contiguous()?.apply_op3_no_bwd(&cache.key, &selection.contiguous()?, &op)
}

/// CustomOp3 of [`paged_attention_sparse`]: inputs `(q, key_cache, value_cache)`; the selection
/// rides in the struct like the metadata (a fourth tensor input does not exist in candle).
struct PagedAttentionSparse<'a> {
    meta: &'a AttentionMetadata,
    softmax_scale: f32,
    plan: &'a SparseDecodePlan,
    layer: usize,
    selection: &'a Tensor,
    /// CPU instruction-set level (`Level::detect()` outside tests).
    level: Level,
}

impl CustomOp3 for PagedAttentionSparse<'_> {
    fn name(&self) -> &'static str {
        "paged_attention_sparse"
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        q: &candle_core::CudaStorage,
        ql: &Layout,
        k: &candle_core::CudaStorage,
        kl: &Layout,
        v: &candle_core::CudaStorage,
        vl: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        crate::cuda::ops::paged_attention_sparse(self.meta, self.softmax_scale, self.plan, self.layer, self.selection, q, ql, k, kl, v, vl)
    }

    fn cpu_fwd(
        &self,
        q: &CpuStorage,
        q_l: &Layout,
        key: &CpuStorage,
        key_l: &Layout,
        value: &CpuStorage,
        value_l: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let name = self.name();
        let (num_tokens, num_heads, head_dim) = q_l.shape().dims3()?;
        let (_, num_kv_heads, block_size, _) = key_l.shape().dims4()?;
        if dtype_of(key) != dtype_of(value) {
            bail!("{name}: key cache {:?} and value cache {:?} differ", dtype_of(key), dtype_of(value))
        }
        let (sel_storage, sel_l) = self.selection.storage_and_layout();
        let Storage::Cpu(sel_cpu) = &*sel_storage else { bail!("{name}: the selection is not on the CPU") };
        let indices = contiguous::<i32>(sel_cpu, sel_l, name, "selection")?;
        let host = &self.meta.host;
        let blocks = walk::block_selection(indices, self.plan, self.layer, host, name)?;
        let g = Geometry { num_heads, num_kv_heads, head_dim, block_size };
        let q_f32 = to_f32_vec(q, q_l, name, "q")?;
        let (level, scale) = (self.level, self.softmax_scale);
        let out = if is_quantized_storage(key) {
            let kind = KvDtype::from_storage(dtype_of(key))?;
            let rows = |data| QuantRows { data, kind, head_dim, block_size };
            let (k, v) = (rows(cache_bytes(key, key_l, name, "key cache")?), rows(cache_bytes(value, value_l, name, "value cache")?));
            cpu::attention_selected_at(level, &q_f32, &k, &v, host, &g, scale, &blocks)
        } else {
            with_float_type!(key, name, C => {
                let rows = |data| FloatRows::<C> { data, head_dim, block_size };
                let k = rows(contiguous::<C>(key, key_l, name, "key cache")?);
                let v = rows(contiguous::<C>(value, value_l, name, "value cache")?);
                cpu::attention_selected_at(level, &q_f32, &k, &v, host, &g, scale, &blocks)
            })
        };
        let storage = with_float_type!(q, name, Q => from_f32::<Q>(out))?;
        Ok((storage, Shape::from((num_tokens, num_heads, head_dim))))
    }
}

/// CustomOp3 of [`select_blocks`]: inputs `(q, key_cache, selection)`, output a new selection.
struct SelectBlocks<'a> {
    meta: &'a AttentionMetadata,
    plan: &'a SparseDecodePlan,
    layer: usize,
    level: Level,
}

impl CustomOp3 for SelectBlocks<'_> {
    fn name(&self) -> &'static str {
        "select_blocks"
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        q: &candle_core::CudaStorage,
        ql: &Layout,
        k: &candle_core::CudaStorage,
        kl: &Layout,
        sel: &candle_core::CudaStorage,
        sl: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        crate::cuda::ops::select_blocks(self.meta, self.plan, self.layer, q, ql, k, kl, sel, sl)
    }

    fn cpu_fwd(
        &self,
        q: &CpuStorage,
        q_l: &Layout,
        key: &CpuStorage,
        key_l: &Layout,
        selection: &CpuStorage,
        selection_l: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let name = self.name();
        let (_, num_heads, head_dim) = q_l.shape().dims3()?;
        let (_, num_kv_heads, block_size, _) = key_l.shape().dims4()?;
        let g = Geometry { num_heads, num_kv_heads, head_dim, block_size };
        let q = to_f32_vec(q, q_l, name, "q")?;
        let mut out = contiguous::<i32>(selection, selection_l, name, "selection")?.to_vec();
        let (host, plan, layer, level) = (&self.meta.host, self.plan, self.layer, self.level);
        if is_quantized_storage(key) {
            let kind = KvDtype::from_storage(dtype_of(key))?;
            let k = QuantRows { data: cache_bytes(key, key_l, name, "key cache")?, kind, head_dim, block_size };
            select::choose_blocks(level, &q, &k, host, &g, plan, layer, &mut out);
        } else {
            with_float_type!(key, name, C => {
                let k = FloatRows::<C> { data: contiguous::<C>(key, key_l, name, "key cache")?, head_dim, block_size };
                select::choose_blocks(level, &q, &k, host, &g, plan, layer, &mut out);
            })
        }
        Ok((CpuStorage::I32(out), selection_l.shape().clone()))
    }
}
