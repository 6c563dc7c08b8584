//! `write_kv`: scatter this step's new keys/values into their cache slots, and record each slot's
//! token position in `slot_pos`, in place.
//!
//! Three in-place CustomOps (key, value, slot_pos), each taking `slot_mapping` as a device tensor
//! so a CUDA twin needs no host data. Slot ranges were validated by `AttentionMetadata::new`
//! against the sequences' blocks; here only the O(1) check against this cache's size remains.
//! A quantized cache (int8, fp8) is written here and only here: each (token, KV head) row is
//! quantized once with its own scale ([`super::quant`]) as it lands in its slot.
//! Must not know: which tokens were evicted or why a slot was chosen.

use candle_core::{bail, CpuStorage, DType, InplaceOp3, Layout, Result, Tensor};

use super::kv_dtype::KvDtype;
use super::quant::quantize_row;
use super::{AttentionMetadata, LayerKvCache};
use crate::elem::{cache_bytes_mut, contiguous, contiguous_mut, dtype_of, is_quantized_storage, with_float_type};

/// Scatter new K/V (`[T, num_kv_heads, head_dim]`, any float dtype, cast to the cache dtype, or
/// quantized per (token, head) for an int8/fp8 cache) into the layer's cache slots given by
/// `meta.slot_mapping` (-1 = skip); also writes `slot_pos`.
pub fn write_kv(cache: &LayerKvCache, k: &Tensor, v: &Tensor, meta: &AttentionMetadata) -> Result<()> {
    let shape = cache.shape()?;
    let want = [meta.num_tokens, shape.num_kv_heads, shape.head_dim];
    for (name, t) in [("k", k), ("v", v)] {
        if t.dims() != want {
            bail!("write_kv: {name} has shape {:?}, expected [T, num_kv_heads, head_dim] = {want:?}", t.dims())
        }
    }
    if meta.block_size() != shape.block_size {
        bail!("write_kv: metadata block_size {} != cache block_size {}", meta.block_size(), shape.block_size)
    }
    if let Some(max_slot) = meta.host.max_slot {
        if max_slot as usize >= shape.num_slots() {
            bail!("write_kv: slot {max_slot} is beyond the cache's {} slots", shape.num_slots())
        }
    } else {
        return Ok(()); // nothing to write
    }
    if cache.slot_pos.dims() != shape.slot_dims() {
        bail!("write_kv: slot_pos has shape {:?}, expected {:?}", cache.slot_pos.dims(), shape.slot_dims())
    }
    // Quantizing kernels read f32 rows whatever the model computes in.
    let rows = if cache.kv_dtype()?.is_quantized() { DType::F32 } else { cache.dtype() };
    let k = k.to_dtype(rows)?.contiguous()?;
    let v = v.to_dtype(rows)?.contiguous()?;
    cache.key.inplace_op3(&k, &meta.slot_mapping, &ScatterRows)?;
    cache.value.inplace_op3(&v, &meta.slot_mapping, &ScatterRows)?;
    cache.slot_pos.inplace_op3(&meta.positions, &meta.slot_mapping, &ScatterPositions)
}

/// Calls `write(t, h, d)` for every written (token, head): `d` is the destination row's index in
/// `[num_blocks, heads, block_size]` order; slot -1 skips the token.
fn for_each_slot(dims: &[usize], slots: &[i64], op: &str, mut write: impl FnMut(usize, usize, usize)) -> Result<()> {
    let (num_blocks, heads, block_size) = (dims[0], dims[1], dims[2]);
    for (t, &slot) in slots.iter().enumerate() {
        if slot < 0 {
            continue;
        }
        let (block, offset) = (slot as usize / block_size, slot as usize % block_size);
        if block >= num_blocks {
            bail!("{op}: slot {slot} is beyond the cache's {num_blocks} blocks")
        }
        for h in 0..heads {
            write(t, h, (block * heads + h) * block_size + offset);
        }
    }
    Ok(())
}

/// dst `[num_blocks, heads, block_size, row]` ← src `[T, heads, row]` at slots `[T]` (I64).
/// `row` is `head_dim` for K/V and 1 for `slot_pos`.
fn scatter<T: Copy>(dst: &mut [T], dst_dims: &[usize], src: &[T], slots: &[i64], row: usize, op: &str) -> Result<()> {
    let heads = dst_dims[1];
    if src.len() != slots.len() * heads * row {
        bail!("{op}: source has {} elements, expected {} tokens × {heads} × {row}", src.len(), slots.len())
    }
    for_each_slot(dst_dims, slots, op, |t, h, d| {
        let s = (t * heads + h) * row;
        dst[d * row..(d + 1) * row].copy_from_slice(&src[s..s + row]);
    })
}

/// dst `[num_blocks, heads, block_size, head_dim + 4]` bytes ← src f32 `[T, heads, head_dim]`
/// quantized row by row at slots `[T]`.
fn scatter_quantized(kind: KvDtype, dst: &mut [u8], dst_dims: &[usize], src: &[f32], slots: &[i64], op: &str) -> Result<()> {
    let (heads, row) = (dst_dims[1], dst_dims[3]);
    let hd = kind.head_dim(row)?;
    if src.len() != slots.len() * heads * hd {
        bail!("{op}: source has {} elements, expected {} tokens × {heads} × {hd}", src.len(), slots.len())
    }
    for_each_slot(dst_dims, slots, op, |t, h, d| {
        let s = (t * heads + h) * hd;
        quantize_row(kind, &src[s..s + hd], &mut dst[d * row..(d + 1) * row]);
    })
}

struct ScatterRows;

impl InplaceOp3 for ScatterRows {
    fn name(&self) -> &'static str {
        "write_kv"
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        d: &mut candle_core::CudaStorage,
        dl: &Layout,
        s: &candle_core::CudaStorage,
        sl: &Layout,
        m: &candle_core::CudaStorage,
        ml: &Layout,
    ) -> Result<()> {
        crate::cuda::ops::write_kv_rows(d, dl, s, sl, m, ml)
    }

    fn cpu_fwd(
        &self,
        dst: &mut CpuStorage,
        dst_l: &Layout,
        src: &CpuStorage,
        src_l: &Layout,
        slots: &CpuStorage,
        slots_l: &Layout,
    ) -> Result<()> {
        let name = self.name();
        let dims = dst_l.dims().to_vec();
        if dims.len() != 4 {
            bail!("{name}: cache must be rank 4, got {dims:?}")
        }
        let slots = contiguous::<i64>(slots, slots_l, name, "slot_mapping")?;
        if is_quantized_storage(dst) {
            let kind = KvDtype::from_storage(dtype_of(dst))?;
            let src = contiguous::<f32>(src, src_l, name, "new k/v (f32 for a quantized cache)")?;
            let dst = cache_bytes_mut(dst, dst_l, name, "cache")?;
            return scatter_quantized(kind, dst, &dims, src, slots, name);
        }
        with_float_type!(dst, name, T => {
            let src = contiguous::<T>(src, src_l, name, "new k/v")?;
            let dst = contiguous_mut::<T>(dst, dst_l, name, "cache")?;
            scatter(dst, &dims, src, slots, dims[3], name)
        })
    }
}

struct ScatterPositions;

impl InplaceOp3 for ScatterPositions {
    fn name(&self) -> &'static str {
        "write_kv(slot_pos)"
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        d: &mut candle_core::CudaStorage,
        dl: &Layout,
        p: &candle_core::CudaStorage,
        pl: &Layout,
        m: &candle_core::CudaStorage,
        ml: &Layout,
    ) -> Result<()> {
        crate::cuda::ops::write_kv_positions(d, dl, p, pl, m, ml)
    }

    fn cpu_fwd(
        &self,
        dst: &mut CpuStorage,
        dst_l: &Layout,
        positions: &CpuStorage,
        positions_l: &Layout,
        slots: &CpuStorage,
        slots_l: &Layout,
    ) -> Result<()> {
        let name = self.name();
        let dims = dst_l.dims().to_vec();
        if dims.len() != 3 {
            bail!("{name}: slot_pos must be rank 3, got {dims:?}")
        }
        let slots = contiguous::<i64>(slots, slots_l, name, "slot_mapping")?;
        let positions = contiguous::<u32>(positions, positions_l, name, "positions")?;
        // Every head of the token gets its position: all heads write the same slot here;
        // per-head slot choice (eviction) happens in the policies, not in this op.
        let mut per_head = Vec::with_capacity(positions.len() * dims[1]);
        for &p in positions {
            per_head.extend(std::iter::repeat_n(p as i32, dims[1]));
        }
        let dst = contiguous_mut::<i32>(dst, dst_l, name, "slot_pos")?;
        scatter(dst, &dims, &per_head, slots, 1, name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::paged::{KvCacheShape, PagedKvCache};
    use candle_core::{DType, Device};
    use rand::{Rng, SeedableRng};

    const SHAPE: KvCacheShape = KvCacheShape { num_blocks: 6, num_kv_heads: 2, block_size: 4, head_dim: 3 };

    fn random(rng: &mut impl Rng, dims: &[usize]) -> Result<Tensor> {
        let n: usize = dims.iter().product();
        let data: Vec<f32> = (0..n).map(|_| rng.random_range(-2.0..2.0)).collect();
        Tensor::from_vec(data, dims, &Device::Cpu)
    }

    /// Seq 0 writes 3 tokens at positions 5..8 (ctx 8, blocks [3, 1]); seq 1 decodes 1 token
    /// whose write is skipped (-1), ctx 2 in block [5].
    fn meta() -> Result<AttentionMetadata> {
        AttentionMetadata::new(
            vec![4 + 1, 4 + 2, 4 + 3, -1],
            vec![5, 6, 7, 1],
            vec![vec![3, 1], vec![5]],
            vec![3, 1],
            vec![8, 2],
            4,
            &Device::Cpu,
        )
    }

    fn check_rows_landed(dtype: DType, tol: f32) -> Result<()> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let cache = PagedKvCache::new(1, SHAPE, KvDtype::from_float(dtype)?, &Device::Cpu)?;
        let layer = &cache.layers[0];
        let meta = meta()?;
        let k = random(&mut rng, &[4, 2, 3])?;
        let v = random(&mut rng, &[4, 2, 3])?;
        write_kv(layer, &k, &v, &meta)?;

        let key: Vec<f32> = layer.key.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
        let value: Vec<f32> = layer.value.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
        let pos: Vec<i32> = layer.slot_pos.flatten_all()?.to_vec1()?;
        let k3 = k.to_vec3::<f32>()?;
        let v3 = v.to_vec3::<f32>()?;
        let mut touched = vec![false; key.len()];
        for (t, slot) in [(0usize, 5usize), (1, 6), (2, 7)] {
            let (block, off) = (slot / 4, slot % 4);
            for h in 0..2 {
                let base = ((block * 2 + h) * 4 + off) * 3;
                for d in 0..3 {
                    assert!((key[base + d] - k3[t][h][d]).abs() <= tol, "k t{t} h{h} d{d}");
                    assert!((value[base + d] - v3[t][h][d]).abs() <= tol, "v t{t} h{h} d{d}");
                    touched[base + d] = true;
                }
                assert_eq!(pos[(block * 2 + h) * 4 + off], 5 + t as i32);
            }
        }
        // Everything else — including where the skipped token would have gone — is untouched.
        for (i, &x) in key.iter().enumerate() {
            if !touched[i] {
                assert_eq!(x, 0.0, "key element {i} was overwritten");
            }
        }
        assert_eq!(pos.iter().filter(|&&p| p != -1).count(), 3 * 2);
        Ok(())
    }

    #[test]
    fn rows_land_in_the_mapped_slots_and_minus_one_is_skipped_f32() -> Result<()> {
        check_rows_landed(DType::F32, 0.0)
    }

    #[test]
    fn rows_land_in_f16_cache_after_cast() -> Result<()> {
        check_rows_landed(DType::F16, 2e-3)
    }

    #[test]
    fn rows_land_in_bf16_cache_after_cast() -> Result<()> {
        check_rows_landed(DType::BF16, 1.6e-2)
    }

    #[test]
    fn slot_beyond_the_cache_is_an_error_and_writes_nothing() -> Result<()> {
        let small = KvCacheShape { num_blocks: 1, ..SHAPE };
        let cache = PagedKvCache::new(1, small, KvDtype::F32, &Device::Cpu)?;
        let meta = meta()?; // writes slots 5..8 (block 1), beyond a 1-block cache
        let k = Tensor::ones((4, 2, 3), DType::F32, &Device::Cpu)?;
        assert!(write_kv(&cache.layers[0], &k, &k, &meta).is_err());
        assert_eq!(cache.layers[0].key.sum_all()?.to_scalar::<f32>()?, 0.0);
        Ok(())
    }

    #[test]
    fn wrong_kv_shape_is_an_error() -> Result<()> {
        let cache = PagedKvCache::new(1, SHAPE, KvDtype::F32, &Device::Cpu)?;
        let k = Tensor::ones((4, 3, 3), DType::F32, &Device::Cpu)?;
        assert!(write_kv(&cache.layers[0], &k, &k, &meta()?).is_err());
        Ok(())
    }

    #[test]
    fn strided_input_is_made_contiguous_before_writing() -> Result<()> {
        let cache = PagedKvCache::new(1, SHAPE, KvDtype::F32, &Device::Cpu)?;
        // [T, 2*heads, d] narrowed to the second half: a strided view.
        let fused = Tensor::arange(0f32, 4.0 * 4.0 * 3.0, &Device::Cpu)?.reshape((4, 4, 3))?;
        let k = fused.narrow(1, 2, 2)?;
        assert!(!k.is_contiguous());
        write_kv(&cache.layers[0], &k, &k, &meta()?)?;
        let block1 = cache.layers[0].key.get(1)?.to_vec3::<f32>()?;
        // Token 0 → slot 5 = block 1 offset 1; its head 0 is fused head 2.
        assert_eq!(block1[0][1], k.get(0)?.get(0)?.to_vec1::<f32>()?);
        Ok(())
    }

    #[test]
    fn quantized_rows_land_with_their_own_scale_and_skipped_slots_stay_zero() -> Result<()> {
        use crate::paged::quant::dequantize_row;
        for kind in [KvDtype::Int8, KvDtype::Fp8] {
            let mut rng = rand::rngs::StdRng::seed_from_u64(8);
            let cache = PagedKvCache::new(1, SHAPE, kind, &Device::Cpu)?;
            let layer = &cache.layers[0];
            // bf16 input: quantization starts from the model's values, whatever their dtype.
            let k = random(&mut rng, &[4, 2, 3])?.to_dtype(DType::BF16)?;
            let v = random(&mut rng, &[4, 2, 3])?;
            write_kv(layer, &k, &v, &meta()?)?;
            let bytes = |t: &Tensor| -> Result<Vec<u8>> {
                Ok(match t.dtype() {
                    DType::U8 => t.flatten_all()?.to_vec1::<u8>()?,
                    _ => t.flatten_all()?.to_vec1::<float8::F8E4M3>()?.iter().map(|c| c.to_bits()).collect(),
                })
            };
            let (key, value) = (bytes(&layer.key)?, bytes(&layer.value)?);
            let (k3, v3) = (k.to_dtype(DType::F32)?.to_vec3::<f32>()?, v.to_vec3::<f32>()?);
            let row = 3 + 4;
            let mut written = 0;
            for (t, slot) in [(0usize, 5usize), (1, 6), (2, 7)] {
                for h in 0..2 {
                    let base = (((slot / 4) * 2 + h) * 4 + slot % 4) * row;
                    for (cache, want) in [(&key, &k3[t][h]), (&value, &v3[t][h])] {
                        let got = dequantize_row(kind, &cache[base..base + row]);
                        let amax = want.iter().fold(0f32, |m, x| m.max(x.abs()));
                        for (g, w) in got.iter().zip(want.iter()) {
                            // int8: half a step of amax/127; fp8: 1/16 relative (+ a subnormal step).
                            let tol = if kind == KvDtype::Int8 { amax / 254.0 } else { w.abs() / 16.0 + amax / 448.0 / 512.0 };
                            assert!((g - w).abs() <= tol + 1e-6, "{kind} t{t} h{h}: {g} vs {w}");
                        }
                        written += row;
                    }
                }
            }
            let nonzero = key.iter().chain(&value).filter(|&&b| b != 0).count();
            assert!(nonzero > 0 && nonzero <= written, "{kind}: only the 6 written rows per tensor hold bytes");
        }
        Ok(())
    }
}
