//! Whole blocks in and out of the paged KV cache as bytes: every layer, every per-block tensor
//! (`LayerKvCache::tensors`), concatenated in that order. Blocks move as stored.
//!
//! Owns: the byte layout of one block in the tiers, and the cache layout the fingerprint sees.
//! Must not know: which tensors there are or what dtype they hold.

use anyhow::{bail, Result};
use kvault_kernels::paged::{block_nbytes, read_blocks, write_block};
use kvault_kernels::PagedKvCache;

use super::fingerprint::CacheLayout;

pub fn block_bytes(cache: &PagedKvCache) -> usize {
    cache.layers.iter().flat_map(|l| l.tensors()).map(block_nbytes).sum()
}

pub fn layout(cache: &PagedKvCache, compute_dtype: &str) -> CacheLayout {
    let tensors = cache
        .layers
        .iter()
        .flat_map(|l| l.tensors())
        .map(|t| (t.dims()[1..].to_vec(), format!("{:?}", t.dtype()).to_lowercase()))
        .collect();
    CacheLayout { block_size: cache.shape.block_size, compute_dtype: compute_dtype.to_string(), tensors }
}

/// Copies blocks out, one buffer per block.
pub fn copy_out(cache: &PagedKvCache, blocks: &[u32]) -> Result<Vec<Vec<u8>>> {
    let size = block_bytes(cache);
    let mut out: Vec<Vec<u8>> = blocks.iter().map(|_| Vec::with_capacity(size)).collect();
    for layer in &cache.layers {
        for t in layer.tensors() {
            read_blocks(t, blocks, &mut out)?;
        }
    }
    Ok(out)
}

/// Writes each `(block, bytes)` back, bytes as `copy_out` produced them.
pub fn copy_in(cache: &PagedKvCache, blocks: &[(u32, &[u8])]) -> Result<()> {
    let size = block_bytes(cache);
    for &(block, bytes) in blocks {
        if bytes.len() != size {
            bail!("KV offload: {} bytes for block {block}, blocks are {size} bytes", bytes.len());
        }
        let mut at = 0;
        for layer in &cache.layers {
            for t in layer.tensors() {
                let n = block_nbytes(t);
                write_block(t, block, &bytes[at..at + n])?;
                at += n;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, Tensor};
    use kvault_kernels::{KvCacheShape, KvDtype};

    #[test]
    fn a_block_copied_out_and_in_lands_bit_for_bit_in_every_tensor() -> Result<()> {
        // bf16 rows, and int8 rows (codes followed by their scale in one u8 row).
        for kv_dtype in [KvDtype::Bf16, KvDtype::Int8] {
            let shape = KvCacheShape { num_blocks: 4, num_kv_heads: 2, block_size: 3, head_dim: 5 };
            let cache = PagedKvCache::new(2, shape, kv_dtype, &Device::Cpu)?;
            for (i, layer) in cache.layers.iter().enumerate() {
                let kv = (Tensor::rand(0f32, 1.0, layer.key.dims(), &Device::Cpu)? * 200.0)?.to_dtype(layer.key.dtype())?;
                layer.key.slice_set(&kv, 0, 0)?;
                let pos = Tensor::full(i as i32 + 7, shape.slot_dims().as_slice(), &Device::Cpu)?;
                layer.slot_pos.slice_set(&pos, 0, 0)?;
            }
            let out = copy_out(&cache, &[1])?;
            assert_eq!(out[0].len(), block_bytes(&cache));
            copy_in(&cache, &[(3, &out[0])])?;
            for layer in &cache.layers {
                for t in layer.tensors() {
                    let a = t.get(1)?.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
                    let b = t.get(3)?.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
                    assert_eq!(a, b, "{kv_dtype}");
                }
            }
            assert!(copy_in(&cache, &[(0, &out[0][1..])]).is_err());
        }
        Ok(())
    }
}
