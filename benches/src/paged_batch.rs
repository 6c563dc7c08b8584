//! Inputs for the paged-cache kernel benches: one step's batch (decode rows or prefill chunks)
//! over a paged KV cache with random contents, as the model runner would hand it to
//! `write_kv` / `paged_attention`.
//!
//! Two choices make the numbers honest:
//! - block ids are a shuffled permutation of the pool, as after a server has run for a while,
//!   not one contiguous run per sequence;
//! - the cache is replicated into as many layers as it takes to exceed a byte floor (several
//!   times the last-level cache), and a bench steps through them round robin. A real forward
//!   pass also visits every layer's cache once per step, with weights streamed in between, so
//!   each layer's K/V comes from DRAM; re-reading one small cache would time the L3 instead.
//!
//! Must not know: models or requests. Shapes are plain numbers ([`AttentionShape`]).

use candle_core::{DType, Device, Result, Tensor};
use kvault_kernels::{AttentionMetadata, KvCacheShape, LayerKvCache};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

/// Attention geometry of one layer, f32 cache (the CPU engine keeps K/V in the model's f32).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttentionShape {
    pub name: &'static str,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub block_size: usize,
}

/// SmolLM2-135M: 9 query heads over 3 KV heads (GQA 3), head_dim 64.
pub const SMOLLM2_135M: AttentionShape =
    AttentionShape { name: "smollm2-135m", num_heads: 9, num_kv_heads: 3, head_dim: 64, block_size: 16 };

/// Llama-2-7B: 32 heads, no GQA, head_dim 128.
pub const LLAMA_7B: AttentionShape =
    AttentionShape { name: "llama-7b", num_heads: 32, num_kv_heads: 32, head_dim: 128, block_size: 16 };

/// Byte floor of a replicated cache: about 5× this machine's 105 MiB L3.
pub const DRAM_RESIDENT_BYTES: usize = 512 << 20;

impl AttentionShape {
    /// K plus V bytes of one token in one layer.
    pub fn kv_bytes_per_token(&self) -> usize {
        2 * self.num_kv_heads * self.head_dim * DType::F32.size_in_bytes()
    }

    /// The `1 / sqrt(head_dim)` scale the models use.
    pub fn softmax_scale(&self) -> f32 {
        1.0 / (self.head_dim as f32).sqrt()
    }
}

/// One sequence of the step: `cached` tokens already in the cache, `new` computed this step
/// (1 = a decode row, more = a prefill chunk).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeqSpec {
    pub cached: usize,
    pub new: usize,
}

impl SeqSpec {
    /// A decode row whose cache holds `context` tokens after this step's write.
    pub fn decode(context: usize) -> SeqSpec {
        SeqSpec { cached: context.saturating_sub(1), new: 1 }
    }

    /// A prefill chunk of `tokens` new tokens with nothing cached.
    pub fn prefill(tokens: usize) -> SeqSpec {
        SeqSpec { cached: 0, new: tokens }
    }

    fn context(&self) -> usize {
        self.cached + self.new
    }
}

/// A step's batch over `layers.len()` identical-shape caches with different random contents.
pub struct PagedBatch {
    pub shape: AttentionShape,
    pub layers: Vec<LayerKvCache>,
    pub meta: AttentionMetadata,
    /// `[T, num_heads, head_dim]` queries.
    pub q: Tensor,
    /// `[T, num_kv_heads, head_dim]` new keys and values for `write_kv`.
    pub k: Tensor,
    pub v: Tensor,
    context_tokens: usize,
    new_tokens: usize,
}

impl PagedBatch {
    /// Builds the batch; the cache holds exactly the blocks the sequences need, replicated into
    /// enough layers that all of them together hold at least `min_total_bytes` of K/V.
    pub fn new(shape: AttentionShape, seqs: &[SeqSpec], min_total_bytes: usize, seed: u64) -> Result<PagedBatch> {
        if seqs.is_empty() || seqs.iter().any(|s| s.new == 0) {
            candle_core::bail!("PagedBatch: need at least one sequence, each with at least one new token")
        }
        let bs = shape.block_size;
        let mut rng = StdRng::seed_from_u64(seed);
        let blocks_per_seq: Vec<usize> = seqs.iter().map(|s| s.context().div_ceil(bs)).collect();
        let num_blocks: usize = blocks_per_seq.iter().sum();
        let mut ids: Vec<u32> = (0..num_blocks as u32).collect();
        ids.shuffle(&mut rng);
        let mut ids = ids.into_iter();
        let tables: Vec<Vec<u32>> = blocks_per_seq.iter().map(|&n| ids.by_ref().take(n).collect()).collect();

        let (mut slots, mut positions) = (Vec::new(), Vec::new());
        for (s, spec) in seqs.iter().enumerate() {
            for pos in spec.cached..spec.context() {
                slots.push((tables[s][pos / bs] as usize * bs + pos % bs) as i64);
                positions.push(pos as u32);
            }
        }
        let dev = Device::Cpu;
        let meta = AttentionMetadata::new(
            slots,
            positions,
            tables,
            seqs.iter().map(|s| s.new).collect(),
            seqs.iter().map(|s| s.context()).collect(),
            bs,
            &dev,
        )?;

        let cache_shape =
            KvCacheShape { num_blocks, num_kv_heads: shape.num_kv_heads, block_size: bs, head_dim: shape.head_dim };
        let layer_bytes = num_blocks * bs * shape.kv_bytes_per_token();
        let num_layers = min_total_bytes.div_ceil(layer_bytes).max(1);
        let layers = (0..num_layers).map(|_| random_layer(cache_shape, &mut rng)).collect::<Result<Vec<_>>>()?;

        let t = meta.num_tokens;
        let (h, kvh, hd) = (shape.num_heads, shape.num_kv_heads, shape.head_dim);
        Ok(PagedBatch {
            shape,
            layers,
            q: Tensor::from_vec(uniform(&mut rng, t * h * hd), (t, h, hd), &dev)?,
            k: Tensor::from_vec(uniform(&mut rng, t * kvh * hd), (t, kvh, hd), &dev)?,
            v: Tensor::from_vec(uniform(&mut rng, t * kvh * hd), (t, kvh, hd), &dev)?,
            meta,
            context_tokens: seqs.iter().map(SeqSpec::context).sum(),
            new_tokens: t,
        })
    }

    /// The cache of step `i`'s layer (round robin).
    pub fn layer(&self, i: usize) -> &LayerKvCache {
        &self.layers[i % self.layers.len()]
    }

    /// K/V bytes decode attention must read: every context token of every sequence, once.
    pub fn kv_bytes_read(&self) -> u64 {
        (self.context_tokens * self.shape.kv_bytes_per_token()) as u64
    }

    /// K/V bytes `write_kv` stores: every new token's key and value.
    pub fn kv_bytes_written(&self) -> u64 {
        (self.new_tokens * self.shape.kv_bytes_per_token()) as u64
    }
}

fn uniform(rng: &mut StdRng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect()
}

fn random_layer(shape: KvCacheShape, rng: &mut StdRng) -> Result<LayerKvCache> {
    let dev = Device::Cpu;
    let dims = shape.kv_dims();
    let n: usize = dims.iter().product();
    Ok(LayerKvCache {
        key: Tensor::from_vec(uniform(rng, n), dims.as_slice(), &dev)?,
        value: Tensor::from_vec(uniform(rng, n), dims.as_slice(), &dev)?,
        slot_pos: Tensor::full(-1i32, shape.slot_dims().as_slice(), &dev)?,
        slot_score: Tensor::zeros(shape.slot_dims().as_slice(), DType::F32, &dev)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvault_kernels::{paged_attention, write_kv};

    const TINY: AttentionShape =
        AttentionShape { name: "tiny", num_heads: 4, num_kv_heads: 2, head_dim: 8, block_size: 4 };

    #[test]
    fn decode_batch_counts_every_context_token_once() -> Result<()> {
        let b = PagedBatch::new(TINY, &[SeqSpec::decode(9), SeqSpec::decode(4)], 0, 1)?;
        assert_eq!(b.meta.num_tokens, 2);
        assert_eq!(b.meta.host.context_lens, vec![9, 4]);
        // 13 tokens × (K + V) × 2 kv heads × 8 dims × 4 bytes.
        assert_eq!(b.kv_bytes_read(), 13 * 2 * 2 * 8 * 4);
        assert_eq!(b.kv_bytes_written(), 2 * 2 * 2 * 8 * 4);
        assert_eq!(b.layers.len(), 1);
        let out = paged_attention(&b.q, b.layer(0), &b.meta, TINY.softmax_scale())?;
        assert_eq!(out.dims(), &[2, 4, 8]);
        Ok(())
    }

    #[test]
    fn cache_is_replicated_until_the_byte_floor_and_layers_differ() -> Result<()> {
        // 3 blocks of 4 tokens × 128 bytes per token = 1536 bytes per layer.
        let b = PagedBatch::new(TINY, &[SeqSpec::decode(12)], 4000, 2)?;
        assert_eq!(b.layers.len(), 3);
        assert_eq!(b.layers[0].key.dims(), &[3, 2, 4, 8]);
        let first = b.layers[0].key.flatten_all()?.to_vec1::<f32>()?;
        let second = b.layers[1].key.flatten_all()?.to_vec1::<f32>()?;
        assert_ne!(first, second, "identical layers would let the cache serve every step");
        assert!(std::ptr::eq(b.layer(4), &b.layers[1]));
        Ok(())
    }

    #[test]
    fn slots_place_each_new_token_at_its_position_in_its_own_blocks() -> Result<()> {
        let b = PagedBatch::new(TINY, &[SeqSpec { cached: 3, new: 3 }, SeqSpec::prefill(2)], 0, 3)?;
        let host = &b.meta.host;
        assert_eq!(host.positions, vec![3, 4, 5, 0, 1]);
        write_kv(b.layer(0), &b.k, &b.v, &b.meta)?;
        // The key written for token t must sit at its slot, in every kv head.
        let cache = b.layer(0).key.flatten_all()?.to_vec1::<f32>()?;
        let k = b.k.flatten_all()?.to_vec1::<f32>()?;
        for (t, &slot) in host.slot_mapping.iter().enumerate() {
            let (block, offset) = (slot as usize / 4, slot as usize % 4);
            for h in 0..2 {
                let at = ((block * 2 + h) * 4 + offset) * 8;
                assert_eq!(&cache[at..at + 8], &k[(t * 2 + h) * 8..(t * 2 + h + 1) * 8], "token {t} head {h}");
            }
        }
        let table0 = host.block_table(0);
        assert_eq!(host.slot_mapping[0], (table0[0] * 4 + 3) as i64, "position 3 is offset 3 of block 0");
        Ok(())
    }

    #[test]
    fn empty_batches_and_zero_new_tokens_are_errors() {
        assert!(PagedBatch::new(TINY, &[], 0, 0).is_err());
        assert!(PagedBatch::new(TINY, &[SeqSpec { cached: 4, new: 0 }], 0, 0).is_err());
    }
}
