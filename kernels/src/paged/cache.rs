//! The paged KV cache tensors: per layer one key and one value tensor
//! `[num_blocks, num_kv_heads, block_size, head_dim]` (HND: each head's block is one contiguous
//! `block_size × head_dim` slab, so attention streams it and a CUDA warp reads it coalesced), and
//! the per-(block, head, slot) metadata the KV eviction policies need.
//!
//! The element format is a [`KvDtype`]: f32/f16/bf16 rows of `head_dim`, or int8/fp8 rows of
//! `head_dim` codes followed by their f32 scale, so a quantized cache is still exactly these
//! four tensors and whatever moves a slot or a block moves its scale with it.
//!
//! Owns: allocation, shape checks and sizing arithmetic. Must not know which blocks belong to whom
//! (that is the engine's block pool) nor what the policies do with the metadata.

use candle_core::{bail, DType, Device, Result, Tensor};

use super::kv_dtype::KvDtype;

/// Shape of one layer's paged cache: key and value are each
/// `[num_blocks, num_kv_heads, block_size, head_dim]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KvCacheShape {
    pub num_blocks: usize,
    pub num_kv_heads: usize,
    pub block_size: usize,
    pub head_dim: usize,
}

impl KvCacheShape {
    /// Key/value dims in elements of `head_dim` (a float cache's tensor dims).
    pub fn kv_dims(&self) -> [usize; 4] {
        [self.num_blocks, self.num_kv_heads, self.block_size, self.head_dim]
    }

    /// Key/value tensor dims for a cache of `dtype` (quantized rows carry their scale).
    pub fn storage_dims(&self, dtype: KvDtype) -> [usize; 4] {
        [self.num_blocks, self.num_kv_heads, self.block_size, dtype.row_len(self.head_dim)]
    }

    /// `slot_pos` / `slot_score` dims.
    pub fn slot_dims(&self) -> [usize; 3] {
        [self.num_blocks, self.num_kv_heads, self.block_size]
    }

    /// Number of token slots per head (`num_blocks * block_size`).
    pub fn num_slots(&self) -> usize {
        self.num_blocks * self.block_size
    }

    fn validate(&self) -> Result<()> {
        if self.num_blocks == 0 || self.num_kv_heads == 0 || self.block_size == 0 || self.head_dim == 0 {
            bail!("KvCacheShape: every dimension must be positive, got {self:?}")
        }
        Ok(())
    }
}

/// One layer's cache: keys (stored after RoPE) and values in any [`KvDtype`], plus the per-(block, head, slot)
/// metadata the KV eviction policies need: `slot_pos` I32 `[num_blocks, num_kv_heads, block_size]`
/// (original position of the token in that slot, -1 = empty) and `slot_score` F32, same shape
/// (policy score). `write_kv` fills `slot_pos`; nothing reads it yet.
#[derive(Clone, Debug)]
pub struct LayerKvCache {
    pub key: Tensor,
    pub value: Tensor,
    pub slot_pos: Tensor,
    pub slot_score: Tensor,
}

impl LayerKvCache {
    /// Zeroed key/value (quantized: zero codes, scale 0), `slot_pos = -1` (empty), `slot_score = 0`.
    pub fn new(shape: KvCacheShape, dtype: KvDtype, device: &Device) -> Result<Self> {
        shape.validate()?;
        let dims = shape.storage_dims(dtype);
        Ok(Self {
            key: Tensor::zeros(dims.as_slice(), dtype.storage_dtype(), device)?,
            value: Tensor::zeros(dims.as_slice(), dtype.storage_dtype(), device)?,
            slot_pos: Tensor::full(-1i32, shape.slot_dims().as_slice(), device)?,
            slot_score: Tensor::zeros(shape.slot_dims().as_slice(), DType::F32, device)?,
        })
    }

    /// The shape the tensors actually have; errors if key and value disagree or are not rank 4.
    pub fn shape(&self) -> Result<KvCacheShape> {
        let (num_blocks, num_kv_heads, block_size, row_len) = self.key.dims4()?;
        if self.value.dims() != self.key.dims() {
            bail!("LayerKvCache: key {:?} and value {:?} shapes differ", self.key.dims(), self.value.dims())
        }
        if self.value.dtype() != self.key.dtype() {
            bail!("LayerKvCache: key {:?} and value {:?} dtypes differ", self.key.dtype(), self.value.dtype())
        }
        let head_dim = self.kv_dtype()?.head_dim(row_len)?;
        Ok(KvCacheShape { num_blocks, num_kv_heads, block_size, head_dim })
    }

    /// The candle dtype of the key/value tensors.
    pub fn dtype(&self) -> DType {
        self.key.dtype()
    }

    /// Every per-block tensor of the layer (dim 0 indexes blocks), in a fixed order. Code that
    /// moves whole blocks as stored (the offload tier) iterates over this, so a tensor added here
    /// travels with its block without that code knowing what it holds.
    pub fn tensors(&self) -> Vec<&Tensor> {
        vec![&self.key, &self.value, &self.slot_pos, &self.slot_score]
    }

    /// The element format the key/value tensors hold.
    pub fn kv_dtype(&self) -> Result<KvDtype> {
        KvDtype::from_storage(self.key.dtype())
    }
}

/// Every layer's cache, all of one shape and dtype.
#[derive(Clone, Debug)]
pub struct PagedKvCache {
    pub layers: Vec<LayerKvCache>,
    pub shape: KvCacheShape,
    pub dtype: KvDtype,
}

impl PagedKvCache {
    /// Allocates `num_layers` zeroed layers (`slot_pos = -1`).
    pub fn new(num_layers: usize, shape: KvCacheShape, dtype: KvDtype, device: &Device) -> Result<Self> {
        if num_layers == 0 {
            bail!("PagedKvCache: num_layers must be positive")
        }
        let layers = (0..num_layers)
            .map(|_| LayerKvCache::new(shape, dtype, device))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { layers, shape, dtype })
    }

    /// Bytes one block costs across all layers: key + value (quantized: codes and scales), plus
    /// the per-slot policy metadata (`slot_pos` i32 and `slot_score` f32), so the engine can size
    /// `num_blocks` from a budget.
    pub fn bytes_per_block(
        num_layers: usize,
        num_kv_heads: usize,
        block_size: usize,
        head_dim: usize,
        dtype: KvDtype,
    ) -> usize {
        let slots = num_layers * num_kv_heads * block_size;
        let kv = 2 * slots * dtype.row_bytes(head_dim);
        let metadata = slots * (DType::I32.size_in_bytes() + DType::F32.size_in_bytes());
        kv + metadata
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape() -> KvCacheShape {
        KvCacheShape { num_blocks: 5, num_kv_heads: 2, block_size: 4, head_dim: 8 }
    }

    #[test]
    fn new_cache_is_zeroed_with_empty_slots() -> Result<()> {
        let cache = PagedKvCache::new(3, shape(), KvDtype::F16, &Device::Cpu)?;
        assert_eq!(cache.layers.len(), 3);
        let layer = &cache.layers[1];
        assert_eq!(layer.key.dims(), &[5, 2, 4, 8]);
        assert_eq!(layer.key.dtype(), DType::F16);
        assert_eq!(layer.shape()?, shape());
        assert!(layer.value.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?.iter().all(|&x| x == 0.0));
        let pos = layer.slot_pos.flatten_all()?.to_vec1::<i32>()?;
        assert_eq!(pos.len(), 5 * 2 * 4);
        assert!(pos.iter().all(|&p| p == -1));
        assert_eq!(layer.slot_score.dtype(), DType::F32);
        Ok(())
    }

    #[test]
    fn bytes_per_block_counts_kv_and_slot_metadata() {
        // 2 layers × 3 heads × 16 slots: K+V at 2 bytes × 64 dims, plus 8 bytes of metadata.
        let slots = 2 * 3 * 16;
        assert_eq!(
            PagedKvCache::bytes_per_block(2, 3, 16, 64, KvDtype::Bf16),
            slots * (2 * 64 * 2 + 8)
        );
        assert_eq!(PagedKvCache::bytes_per_block(1, 1, 1, 1, KvDtype::F32), 2 * 4 + 8);
        // int8: 64 codes and a 4-byte scale per row.
        assert_eq!(PagedKvCache::bytes_per_block(2, 3, 16, 64, KvDtype::Int8), slots * (2 * 68 + 8));
    }

    #[test]
    fn quantized_layers_hold_codes_and_scales_in_one_tensor_and_report_head_dim() -> Result<()> {
        for dtype in [KvDtype::Int8, KvDtype::Fp8] {
            let layer = LayerKvCache::new(shape(), dtype, &Device::Cpu)?;
            assert_eq!(layer.key.dims(), &[5, 2, 4, 8 + 4]);
            assert_eq!(layer.key.dtype(), dtype.storage_dtype());
            assert_eq!(layer.shape()?, shape());
            assert_eq!(layer.kv_dtype()?, dtype);
        }
        Ok(())
    }

    #[test]
    fn zero_dims_and_foreign_tensors_are_rejected() -> Result<()> {
        let mut bad = shape();
        bad.block_size = 0;
        assert!(PagedKvCache::new(1, bad, KvDtype::F32, &Device::Cpu).is_err());
        assert!(PagedKvCache::new(0, shape(), KvDtype::F32, &Device::Cpu).is_err());
        let mut layer = LayerKvCache::new(shape(), KvDtype::F32, &Device::Cpu)?;
        layer.key = layer.key.to_dtype(DType::U32)?;
        layer.value = layer.value.to_dtype(DType::U32)?;
        assert!(layer.shape().is_err(), "a u32 tensor is no cache format");
        Ok(())
    }
}
