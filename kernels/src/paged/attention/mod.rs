//! `paged_attention`: causal attention of a flattened varlen batch (prefill chunks and decode rows
//! mixed) over the paged KV cache, through each sequence's block table, GQA-aware.
//!
//! Owns: the op's contract (shapes, masking rule, dtypes), the checks against the cache, and the
//! CustomOp that dispatches to the CPU kernel ([`cpu`]) — and, later, a CUDA one.
//! Must not know: models, requests, or how blocks were allocated or shared.
//!
//! # Masking rule
//! Token j (0-based) of a chunk of `q_len` new tokens in a sequence whose cache holds
//! `context_len` tokens after this step's write attends slots `[0, context_len - q_len + j]`.
//! For a decode row (`q_len = 1`) that is every valid slot, whatever token each holds: with slot
//! reuse (per-head eviction overwriting a slot) attention stays correct because keys carry their
//! RoPE and softmax is order-invariant.
//!
//! # KV policies
//! Policies such as H2O need the attention mass each slot received; [`mass::attention_mass`]
//! computes it for the few rows that ask, with this op's masking and scores, so this op stays
//! a pure online-softmax kernel that does no extra work for anyone.
//!
//! # Sparse heads
//! The CPU kernel also runs `paged_attention_sparse` (`crate::paged::sparse`, LycheeDecode): there
//! a work item may walk a selection of blocks instead of a block range, with the same inner loop.

#[cfg(target_arch = "x86_64")]
mod block_step;
pub(crate) mod cpu;
pub mod mass;
#[cfg(target_arch = "x86_64")]
mod simd;
#[cfg(test)]
pub(crate) mod tests;
#[cfg(test)]
mod tests_dtypes;

use candle_core::{bail, CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};

use super::{AttentionMetadata, KvCacheShape, LayerKvCache};
use crate::elem::{cache_bytes, contiguous, dtype_of, is_quantized_storage, to_f32_vec, with_float_type, Elem, KernelFloat};
use crate::paged::kv_dtype::KvDtype;

/// `q`: `[T, num_heads, head_dim]` → `[T, num_heads, head_dim]` in q's dtype (f32, f16 or bf16;
/// the cache may be any [`KvDtype`]: f32/f16/bf16, or int8/fp8 dequantized inside the kernel;
/// everything accumulates in f32). Token j of sequence s
/// attends cache entries `[0, context_len_s - q_len_s + j]` through its block table; query head
/// h reads kv head `h / (num_heads / num_kv_heads)`.
pub fn paged_attention(
    q: &Tensor,
    cache: &LayerKvCache,
    meta: &AttentionMetadata,
    softmax_scale: f32,
) -> Result<Tensor> {
    check_attention_args("paged_attention", q, cache, meta, softmax_scale)?;
    let q = q.contiguous()?;
    let op = PagedAttention { meta, softmax_scale };
    q.apply_op3_no_bwd(&cache.key, &cache.value, &op)
}

/// The checks every attention op over the paged cache makes: q `[T, num_heads, head_dim]` fits the
/// metadata and the cache, the block tables fit the cache, and the scale is finite.
pub(crate) fn check_attention_args(
    op: &str,
    q: &Tensor,
    cache: &LayerKvCache,
    meta: &AttentionMetadata,
    softmax_scale: f32,
) -> Result<KvCacheShape> {
    let shape = cache.shape()?;
    let (num_tokens, num_heads, head_dim) = q.dims3()?;
    if num_tokens != meta.num_tokens {
        bail!("{op}: q has {num_tokens} tokens, metadata {}", meta.num_tokens)
    }
    if head_dim != shape.head_dim {
        bail!("{op}: q head_dim {head_dim} != cache head_dim {}", shape.head_dim)
    }
    if num_heads == 0 || num_heads % shape.num_kv_heads != 0 {
        bail!(
            "{op}: num_heads {num_heads} must be a positive multiple of num_kv_heads {}",
            shape.num_kv_heads
        )
    }
    if meta.block_size() != shape.block_size {
        bail!("{op}: metadata block_size {} != cache block_size {}", meta.block_size(), shape.block_size)
    }
    if meta.host.max_block_id as usize >= shape.num_blocks {
        bail!(
            "{op}: block table references block {} but the cache has {}",
            meta.host.max_block_id,
            shape.num_blocks
        )
    }
    if !softmax_scale.is_finite() {
        bail!("{op}: softmax_scale must be finite, got {softmax_scale}")
    }
    Ok(shape)
}

/// The instruction-set level the CPU attention kernel runs at on this machine (for `doctor`).
pub fn cpu_attention_level() -> &'static str {
    match cpu::Level::detect() {
        cpu::Level::Avx512 => "avx512",
        cpu::Level::Avx2 => "avx2+fma",
        cpu::Level::Portable => "portable",
    }
}

/// The CustomOp: inputs `(q, key_cache, value_cache)`, metadata and scale carried in the struct.
/// (A CUDA `cuda_fwd` reads the metadata's device tensors; the CPU path reads `meta.host`.)
pub(crate) struct PagedAttention<'a> {
    pub(crate) meta: &'a AttentionMetadata,
    pub(crate) softmax_scale: f32,
}

impl CustomOp3 for PagedAttention<'_> {
    fn name(&self) -> &'static str {
        "paged_attention"
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
        crate::cuda::ops::paged_attention(self.meta, self.softmax_scale, q, ql, k, kl, v, vl)
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
        let kind = KvDtype::from_storage(dtype_of(key))?;
        let geometry = cpu::Geometry { num_heads, num_kv_heads, head_dim, block_size };
        let q_f32;
        let q_slice: &[f32] = match q {
            CpuStorage::F32(_) => contiguous::<f32>(q, q_l, name, "q")?,
            _ => {
                q_f32 = to_f32_vec(q, q_l, name, "q")?;
                &q_f32
            }
        };
        let out = if is_quantized_storage(key) {
            let rows = |data| cpu::QuantRows { data, kind, head_dim, block_size };
            let k = rows(cache_bytes(key, key_l, name, "key cache")?);
            let v = rows(cache_bytes(value, value_l, name, "value cache")?);
            cpu::attention(q_slice, &k, &v, &self.meta.host, &geometry, self.softmax_scale)
        } else {
            with_float_type!(key, name, C => {
                let rows = |data| cpu::FloatRows::<C> { data, head_dim, block_size };
                let k = rows(contiguous::<C>(key, key_l, name, "key cache")?);
                let v = rows(contiguous::<C>(value, value_l, name, "value cache")?);
                cpu::attention(q_slice, &k, &v, &self.meta.host, &geometry, self.softmax_scale)
            })
        };
        let storage = with_float_type!(q, name, Q => from_f32::<Q>(out))?;
        Ok((storage, Shape::from((num_tokens, num_heads, head_dim))))
    }
}

pub(crate) fn from_f32<T: KernelFloat>(out: Vec<f32>) -> Result<CpuStorage> {
    if T::DTYPE == f32::DTYPE {
        return Ok(CpuStorage::F32(out));
    }
    let mut converted = vec![T::default(); out.len()];
    T::convert_from_f32(&out, &mut converted);
    Ok(T::into_storage(converted))
}
