//! In-place moves inside one layer's cache for the KV policies: [`move_slots`] moves single
//! (KV head, slot) entries — key, value, `slot_pos`, `slot_score` together — and
//! [`copy_blocks`] copies whole blocks (every head) so a request can own a private copy of
//! blocks it found in the prefix cache before it evicts anything.
//!
//! Why moves: a request with a budget keeps, in every head, its tokens in slots `[0, held)`.
//! After a head chooses which tokens to keep, each kept token sitting past the budget moves
//! into a slot freed below it. That keeps the slot range identical across heads, so the next
//! step's tokens land in the same slots in every head (one slot mapping per token), and every
//! new token still comes after every kept one, so attention's causal rule needs no change.
//! Attention is order-invariant over keys once RoPE is applied, so a moved key means the same.
//!
//! A quantized cache's rows are codes followed by their scale (see `kv_dtype`), so moving or
//! copying rows moves each token's scale with its codes; nothing here treats them apart.
//!
//! Must not know: why an entry moves (the policies decide), nor which request owns a block.

use std::collections::HashSet;

use candle_core::{bail, CpuStorage, Device, InplaceOp2, Layout, Result, Tensor};

use super::LayerKvCache;
use crate::elem::{cache_bytes_mut, contiguous, contiguous_mut, with_float_type, KernelFloat};

/// Entry moves for one layer: `(kv_head, src_slot, dst_slot)` with slot = `block * block_size
/// + offset`. Validated so the result cannot depend on the order moves are applied: per head,
/// no slot is written twice and no destination is also a source.
#[derive(Clone, Debug)]
pub struct SlotMoves {
    /// U32 `[n, 3]` on the cache's device.
    pub moves: Tensor,
    pub host: Vec<[u32; 3]>,
    max_head: u32,
    max_slot: u32,
}

impl SlotMoves {
    pub fn new(host: Vec<[u32; 3]>, device: &Device) -> Result<Self> {
        let mut dsts = HashSet::new();
        let mut srcs = HashSet::new();
        for &[head, src, dst] in &host {
            if src == dst {
                bail!("move_slots: head {head} moves slot {src} onto itself")
            }
            if !dsts.insert((head, dst)) {
                bail!("move_slots: head {head} slot {dst} is written twice")
            }
            if !srcs.insert((head, src)) {
                bail!("move_slots: head {head} slot {src} is moved twice")
            }
        }
        if let Some(&[head, slot, _]) = host.iter().find(|[h, src, _]| dsts.contains(&(*h, *src))) {
            bail!("move_slots: head {head} slot {slot} is both a source and a destination")
        }
        let max_head = host.iter().map(|m| m[0]).max().unwrap_or(0);
        let max_slot = host.iter().map(|m| m[1].max(m[2])).max().unwrap_or(0);
        let flat: Vec<u32> = host.iter().flatten().copied().collect();
        let moves = Tensor::from_vec(flat, (host.len(), 3), device)?;
        Ok(Self { moves, host, max_head, max_slot })
    }

    pub fn is_empty(&self) -> bool {
        self.host.is_empty()
    }
}

/// Applies `moves` to the layer: key/value rows, `slot_pos` and `slot_score` move from source to
/// destination; each source is left empty (`slot_pos = -1`, `slot_score = 0`).
pub fn move_slots(cache: &LayerKvCache, moves: &SlotMoves) -> Result<()> {
    if moves.is_empty() {
        return Ok(());
    }
    let shape = cache.shape()?;
    if moves.max_head as usize >= shape.num_kv_heads || moves.max_slot as usize >= shape.num_slots() {
        bail!(
            "move_slots: head {} / slot {} outside the cache ({} kv heads, {} slots)",
            moves.max_head,
            moves.max_slot,
            shape.num_kv_heads,
            shape.num_slots()
        )
    }
    cache.key.inplace_op2(&moves.moves, &MoveEntries { clear: None })?;
    cache.value.inplace_op2(&moves.moves, &MoveEntries { clear: None })?;
    cache.slot_pos.inplace_op2(&moves.moves, &MoveEntries { clear: Some(-1.0) })?;
    cache.slot_score.inplace_op2(&moves.moves, &MoveEntries { clear: Some(0.0) })
}

/// Block copies for one layer: `(src_block, dst_block)`; destinations distinct, never a source.
#[derive(Clone, Debug)]
pub struct BlockCopies {
    /// U32 `[n, 2]` on the cache's device.
    pub pairs: Tensor,
    pub host: Vec<[u32; 2]>,
    max_block: u32,
}

impl BlockCopies {
    pub fn new(host: Vec<[u32; 2]>, device: &Device) -> Result<Self> {
        let dsts: HashSet<u32> = host.iter().map(|p| p[1]).collect();
        if dsts.len() != host.len() {
            bail!("copy_blocks: a destination block is written twice")
        }
        if let Some(p) = host.iter().find(|p| dsts.contains(&p[0])) {
            bail!("copy_blocks: block {} is both a source and a destination", p[0])
        }
        let max_block = host.iter().map(|p| p[0].max(p[1])).max().unwrap_or(0);
        let flat: Vec<u32> = host.iter().flatten().copied().collect();
        let pairs = Tensor::from_vec(flat, (host.len(), 2), device)?;
        Ok(Self { pairs, host, max_block })
    }
}

/// Copies whole blocks (every head's keys, values, `slot_pos`, `slot_score`) within the layer.
pub fn copy_blocks(cache: &LayerKvCache, copies: &BlockCopies) -> Result<()> {
    if copies.host.is_empty() {
        return Ok(());
    }
    let shape = cache.shape()?;
    if copies.max_block as usize >= shape.num_blocks {
        bail!("copy_blocks: block {} outside the cache's {} blocks", copies.max_block, shape.num_blocks)
    }
    for t in cache.tensors() {
        t.inplace_op2(&copies.pairs, &CopyBlocks)?;
    }
    Ok(())
}

/// `row` elements per (block, head, offset): `head_dim` for K/V, 1 for the slot metadata.
fn geometry(dims: &[usize]) -> Result<(usize, usize, usize)> {
    match *dims {
        [_, heads, block_size, row] => Ok((heads, block_size, row)),
        [_, heads, block_size] => Ok((heads, block_size, 1)),
        _ => bail!("expected a rank 3 or 4 cache tensor, got {dims:?}"),
    }
}

fn move_entries<T: Copy>(dst: &mut [T], dims: &[usize], moves: &[u32], clear: Option<T>) -> Result<()> {
    let (heads, bs, row) = geometry(dims)?;
    let at = |head: u32, slot: u32| {
        let (block, offset) = (slot as usize / bs, slot as usize % bs);
        ((block * heads + head as usize) * bs + offset) * row
    };
    for m in moves.chunks_exact(3) {
        let (s, d) = (at(m[0], m[1]), at(m[0], m[2]));
        dst.copy_within(s..s + row, d);
        if let Some(c) = clear {
            dst[s..s + row].fill(c);
        }
    }
    Ok(())
}

fn copy_whole_blocks<T: Copy>(dst: &mut [T], dims: &[usize], pairs: &[u32]) -> Result<()> {
    let (heads, bs, row) = geometry(dims)?;
    let len = heads * bs * row;
    for p in pairs.chunks_exact(2) {
        let (s, d) = (p[0] as usize * len, p[1] as usize * len);
        dst.copy_within(s..s + len, d);
    }
    Ok(())
}

/// `clear`: value a source takes afterwards (as f32; cast to the tensor's type), or leave it.
struct MoveEntries {
    clear: Option<f32>,
}

impl InplaceOp2 for MoveEntries {
    fn name(&self) -> &'static str {
        "move_slots"
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, d: &mut candle_core::CudaStorage, dl: &Layout, m: &candle_core::CudaStorage, ml: &Layout) -> Result<()> {
        crate::cuda::ops::move_slots(d, dl, m, ml, self.clear)
    }

    fn cpu_fwd(&self, dst: &mut CpuStorage, dst_l: &Layout, moves: &CpuStorage, moves_l: &Layout) -> Result<()> {
        let name = self.name();
        let dims = dst_l.dims().to_vec();
        let moves = contiguous::<u32>(moves, moves_l, name, "moves")?;
        match dst {
            CpuStorage::I32(_) => {
                let d = contiguous_mut::<i32>(dst, dst_l, name, "slot_pos")?;
                move_entries(d, &dims, moves, self.clear.map(|c| c as i32))
            }
            // Quantized K/V rows (codes + scale); never cleared (`clear` is for the metadata).
            CpuStorage::U8(_) | CpuStorage::F8E4M3(_) => move_entries(cache_bytes_mut(dst, dst_l, name, "cache")?, &dims, moves, None),
            _ => with_float_type!(dst, name, T => {
                let d = contiguous_mut::<T>(dst, dst_l, name, "cache")?;
                move_entries(d, &dims, moves, self.clear.map(T::from_f32))
            }),
        }
    }
}

struct CopyBlocks;

impl InplaceOp2 for CopyBlocks {
    fn name(&self) -> &'static str {
        "copy_blocks"
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, d: &mut candle_core::CudaStorage, dl: &Layout, p: &candle_core::CudaStorage, pl: &Layout) -> Result<()> {
        crate::cuda::ops::copy_blocks(d, dl, p, pl)
    }

    fn cpu_fwd(&self, dst: &mut CpuStorage, dst_l: &Layout, pairs: &CpuStorage, pairs_l: &Layout) -> Result<()> {
        let name = self.name();
        let dims = dst_l.dims().to_vec();
        let pairs = contiguous::<u32>(pairs, pairs_l, name, "pairs")?;
        match dst {
            CpuStorage::I32(_) => copy_whole_blocks(contiguous_mut::<i32>(dst, dst_l, name, "slot_pos")?, &dims, pairs),
            CpuStorage::U8(_) | CpuStorage::F8E4M3(_) => copy_whole_blocks(cache_bytes_mut(dst, dst_l, name, "cache")?, &dims, pairs),
            _ => with_float_type!(dst, name, T => {
                copy_whole_blocks(contiguous_mut::<T>(dst, dst_l, name, "cache")?, &dims, pairs)
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::paged::KvCacheShape;
    use candle_core::DType;

    const SHAPE: KvCacheShape = KvCacheShape { num_blocks: 4, num_kv_heads: 2, block_size: 4, head_dim: 3 };

    /// A layer whose every entry encodes where it sits: key = 1000·block + 100·head + 10·offset + d.
    fn numbered(dtype: DType) -> Result<LayerKvCache> {
        let n = SHAPE.num_blocks * SHAPE.num_kv_heads * SHAPE.block_size;
        let key: Vec<f32> = (0..n * 3).map(|i| ((i / 3 / 8) * 1000 + (i / 3 / 4 % 2) * 100 + (i / 3 % 4) * 10 + i % 3) as f32).collect();
        let pos: Vec<i32> = (0..n as i32).collect();
        let score: Vec<f32> = (0..n).map(|i| i as f32 + 0.5).collect();
        let dims = SHAPE.kv_dims();
        Ok(LayerKvCache {
            key: Tensor::from_vec(key.clone(), dims.as_slice(), &Device::Cpu)?.to_dtype(dtype)?,
            value: Tensor::from_vec(key.iter().map(|x| -x).collect::<Vec<_>>(), dims.as_slice(), &Device::Cpu)?.to_dtype(dtype)?,
            slot_pos: Tensor::from_vec(pos, SHAPE.slot_dims().as_slice(), &Device::Cpu)?,
            slot_score: Tensor::from_vec(score, SHAPE.slot_dims().as_slice(), &Device::Cpu)?,
        })
    }

    fn entry(layer: &LayerKvCache, head: usize, slot: usize) -> Result<(Vec<f32>, Vec<f32>, i32, f32)> {
        let (b, o) = (slot / 4, slot % 4);
        Ok((
            layer.key.to_dtype(DType::F32)?.get(b)?.get(head)?.get(o)?.to_vec1()?,
            layer.value.to_dtype(DType::F32)?.get(b)?.get(head)?.get(o)?.to_vec1()?,
            layer.slot_pos.get(b)?.get(head)?.get(o)?.to_scalar()?,
            layer.slot_score.get(b)?.get(head)?.get(o)?.to_scalar()?,
        ))
    }

    #[test]
    fn moves_carry_key_value_position_and_score_and_empty_the_source() -> Result<()> {
        for dtype in [DType::F32, DType::F16, DType::BF16] {
            let layer = numbered(dtype)?;
            let before_src = entry(&layer, 1, 13)?;
            let untouched = entry(&layer, 0, 13)?;
            let moves = SlotMoves::new(vec![[1, 13, 2], [0, 7, 5]], &Device::Cpu)?;
            move_slots(&layer, &moves)?;
            assert_eq!(entry(&layer, 1, 2)?, before_src, "{dtype:?}");
            let emptied = entry(&layer, 1, 13)?;
            assert_eq!((emptied.2, emptied.3), (-1, 0.0));
            assert_eq!(entry(&layer, 0, 13)?, untouched, "other heads keep their entry");
        }
        Ok(())
    }

    #[test]
    fn order_dependent_or_out_of_range_moves_are_refused() -> Result<()> {
        assert!(SlotMoves::new(vec![[0, 1, 2], [0, 3, 2]], &Device::Cpu).is_err(), "same destination");
        assert!(SlotMoves::new(vec![[0, 1, 2], [0, 2, 3]], &Device::Cpu).is_err(), "chained");
        assert!(SlotMoves::new(vec![[0, 1, 1]], &Device::Cpu).is_err(), "onto itself");
        assert!(SlotMoves::new(vec![[0, 1, 2], [1, 3, 2]], &Device::Cpu).is_ok(), "heads are independent");
        let layer = numbered(DType::F32)?;
        assert!(move_slots(&layer, &SlotMoves::new(vec![[2, 1, 2]], &Device::Cpu)?).is_err());
        assert!(move_slots(&layer, &SlotMoves::new(vec![[0, 16, 2]], &Device::Cpu)?).is_err());
        Ok(())
    }

    #[test]
    fn block_copies_duplicate_every_head() -> Result<()> {
        let layer = numbered(DType::F32)?;
        let want: Vec<_> = (0..2).flat_map(|h| (4..8).map(move |s| (h, s))).map(|(h, s)| entry(&layer, h, s).unwrap()).collect();
        copy_blocks(&layer, &BlockCopies::new(vec![[1, 3]], &Device::Cpu)?)?;
        let got: Vec<_> = (0..2).flat_map(|h| (12..16).map(move |s| (h, s))).map(|(h, s)| entry(&layer, h, s).unwrap()).collect();
        assert_eq!(got, want);
        assert!(BlockCopies::new(vec![[1, 3], [3, 2]], &Device::Cpu).is_err());
        assert!(copy_blocks(&layer, &BlockCopies::new(vec![[1, 4]], &Device::Cpu)?).is_err());
        Ok(())
    }

    #[test]
    fn quantized_moves_and_block_copies_carry_codes_and_scale_together() -> Result<()> {
        use crate::paged::{write_kv, AttentionMetadata, KvDtype, PagedKvCache};
        for dtype in [KvDtype::Int8, KvDtype::Fp8] {
            let cache = PagedKvCache::new(1, SHAPE, dtype, &Device::Cpu)?;
            let layer = &cache.layers[0];
            // Fill blocks 0 and 1 (slots 0..8) with rows of very different magnitudes, so every
            // row has its own scale.
            let t = 8;
            let k: Vec<f32> = (0..t * 2 * 3).map(|i| (i as f32 + 1.0) * if i % 2 == 0 { 0.01 } else { -3.0 }).collect();
            let k = Tensor::from_vec(k, (t, 2, 3), &Device::Cpu)?;
            let meta = AttentionMetadata::new((0..t as i64).collect(), (0..t as u32).collect(), vec![vec![0, 1]], vec![t], vec![t], 4, &Device::Cpu)?;
            write_kv(layer, &k, &(&k * 2.0)?, &meta)?;
            let rows = |t: &Tensor| -> Result<Vec<Vec<u8>>> {
                let b: Vec<u8> = match t.dtype() {
                    DType::U8 => t.flatten_all()?.to_vec1()?,
                    _ => t.flatten_all()?.to_vec1::<float8::F8E4M3>()?.iter().map(|c| c.to_bits()).collect(),
                };
                Ok(b.chunks(7).map(|r| r.to_vec()).collect())
            };
            let at = |head: usize, slot: usize| ((slot / 4) * 2 + head) * 4 + slot % 4;
            let (key0, value0) = (rows(&layer.key)?, rows(&layer.value)?);
            move_slots(layer, &SlotMoves::new(vec![[1, 6, 9], [0, 2, 12]], &Device::Cpu)?)?;
            let (key1, value1) = (rows(&layer.key)?, rows(&layer.value)?);
            assert_eq!(key1[at(1, 9)], key0[at(1, 6)], "{dtype}: codes and scale moved as one row");
            assert_eq!(value1[at(0, 12)], value0[at(0, 2)], "{dtype}");
            assert_ne!(key0[at(1, 6)][3..], key0[at(1, 5)][3..], "rows have their own scales");
            copy_blocks(layer, &BlockCopies::new(vec![[1, 3]], &Device::Cpu)?)?;
            let key2 = rows(&layer.key)?;
            for head in 0..2 {
                for off in 0..4 {
                    assert_eq!(key2[at(head, 12 + off)], key1[at(head, 4 + off)], "{dtype}: block copy");
                }
            }
        }
        Ok(())
    }
}
