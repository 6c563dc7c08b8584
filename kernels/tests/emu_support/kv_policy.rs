//! The KV-policy kernels' pieces of the emulation tests: random voters, slot moves and block
//! copies that pass the ops' validation, random layers for them to rewrite, and the launch
//! sequences of attention_mass, move_slots and copy_blocks (argument lists in the kernels'
//! parameter order, geometry from `plan`, exactly as kernels/src/cuda/kv_policy.rs launches them).
//!
//! Must not know: expected results; the tests compare with the CPU ops.

use candle_core::{DType, Device, Result, Tensor};
use kvault_kernels::{KvCacheShape, LayerKvCache, MassVoter};
use kvault_kernels_emu::plan::{self, AttentionShape, CacheElem, KernelDtype};
use kvault_kernels_emu::{launch_checked, Arg, LaunchStats};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::Rng;

use super::{bytes_of, emu, kernel_dtype, random_tensor, AttnInputs};

fn plan_err(e: plan::PlanError) -> candle_core::Error {
    candle_core::Error::Msg(e.0)
}

/// attention_mass through its kernel. The output buffer starts as NaN bytes, so an element the
/// kernel forgot to write fails the comparison.
pub fn emulate_attention_mass(inp: &AttnInputs, scale: f32, voters: &[MassVoter]) -> Result<(Tensor, LaunchStats)> {
    let host = &inp.meta.host;
    let shape = AttentionShape {
        dtype: kernel_dtype(inp.case.dtype),
        cache: super::cache_format(&inp.cache),
        num_seqs: inp.meta.num_seqs,
        num_heads: inp.case.num_kv_heads * inp.case.group,
        num_kv_heads: inp.case.num_kv_heads,
        block_size: inp.case.block_size,
        head_dim: inp.case.head_dim,
    };
    let max_ctx = voters.iter().map(|v| host.context_lens[v.seq] as usize).max().unwrap_or(0);
    let cfg = plan::attention_mass_plan(&shape, voters.len(), max_ctx).map_err(plan_err)?;
    let flat: Vec<u32> = voters.iter().flat_map(|v| [v.seq as u32, v.first_query as u32]).collect();
    let (q, k) = (bytes_of(&inp.q)?, bytes_of(&inp.cache.key)?);
    let mut out = vec![f32::NAN; voters.len() * shape.num_kv_heads * max_ctx];
    let stats = launch_checked(
        &cfg,
        &mut [
            Arg::output(&mut out),
            Arg::In(&q),
            Arg::In(&k),
            Arg::input(&flat),
            Arg::input(&host.block_tables),
            Arg::input(&host.context_lens),
            Arg::input(&host.cu_seqlens_q),
            Arg::I32(shape.num_heads as i32),
            Arg::I32(shape.num_kv_heads as i32),
            Arg::I32(host.max_blocks_per_seq as i32),
            Arg::I32(max_ctx as i32),
            Arg::F32(scale),
        ],
    )
    .map_err(emu)?;
    Ok((Tensor::from_vec(out, (voters.len(), shape.num_kv_heads, max_ctx), &Device::Cpu)?, stats))
}

/// A layer with random keys, values, positions (some -1) and scores.
pub fn random_layer(rng: &mut StdRng, shape: KvCacheShape, dtype: DType) -> Result<LayerKvCache> {
    let slots = shape.num_blocks * shape.num_kv_heads * shape.block_size;
    let pos: Vec<i32> = (0..slots).map(|_| rng.random_range(-1..5000)).collect();
    let score: Vec<f32> = (0..slots).map(|_| rng.random_range(-3.0..3.0)).collect();
    Ok(LayerKvCache {
        key: random_tensor(rng, &shape.kv_dims(), 2.0, dtype)?,
        value: random_tensor(rng, &shape.kv_dims(), 2.0, dtype)?,
        slot_pos: Tensor::from_vec(pos, shape.slot_dims().as_slice(), &Device::Cpu)?,
        slot_score: Tensor::from_vec(score, shape.slot_dims().as_slice(), &Device::Cpu)?,
    })
}

/// Random moves that `SlotMoves::new` accepts: per head, distinct sources and distinct
/// destinations drawn from disjoint slot sets (some heads move nothing), listed in random order.
pub fn random_moves(rng: &mut StdRng, shape: KvCacheShape) -> Vec<[u32; 3]> {
    let mut moves = Vec::new();
    for head in 0..shape.num_kv_heads as u32 {
        let mut slots: Vec<u32> = (0..shape.num_slots() as u32).collect();
        slots.shuffle(rng);
        let n = rng.random_range(0..=(shape.num_slots() / 2).min(24));
        moves.extend((0..n).map(|i| [head, slots[i], slots[n + i]]));
    }
    moves.shuffle(rng);
    moves
}

/// Random copies that `BlockCopies::new` accepts: distinct destinations, none of them a source.
pub fn random_block_copies(rng: &mut StdRng, num_blocks: usize) -> Vec<[u32; 2]> {
    let mut blocks: Vec<u32> = (0..num_blocks as u32).collect();
    blocks.shuffle(rng);
    let n = rng.random_range(1..=num_blocks / 2);
    let (dsts, rest) = blocks.split_at(n);
    // Sources may repeat (one block copied to two places).
    dsts.iter().map(|&d| [rest[rng.random_range(0..rest.len())], d]).collect()
}

/// The layer's four tensors as (bytes, element type, dims, the `clear` value move_slots gives
/// their sources: none for K/V, -1 for slot_pos, 0 for slot_score — as the CPU op wires them).
fn tensors(layer: &LayerKvCache) -> Result<Vec<(Vec<u8>, CacheElem, Vec<usize>, Option<f32>)>> {
    let kv = match layer.key.dtype() {
        DType::U8 | DType::F8E4M3 => CacheElem::Bytes, // int8/fp8 rows: codes + scale as bytes
        float => CacheElem::Float(kernel_dtype(float)),
    };
    Ok(vec![
        (bytes_of(&layer.key)?, kv, layer.key.dims().to_vec(), None),
        (bytes_of(&layer.value)?, kv, layer.value.dims().to_vec(), None),
        (bytes_of(&layer.slot_pos)?, CacheElem::I32, layer.slot_pos.dims().to_vec(), Some(-1.0)),
        (bytes_of(&layer.slot_score)?, CacheElem::Float(KernelDtype::F32), layer.slot_score.dims().to_vec(), Some(0.0)),
    ])
}

/// `(heads, block_size, row)` of a rank 4 (K/V) or rank 3 (slot metadata) tensor.
fn geometry(dims: &[usize]) -> (usize, usize, usize) {
    (dims[1], dims[2], dims.get(3).copied().unwrap_or(1))
}

/// move_slots on all four tensors; returns their bytes afterwards (the layer is untouched).
pub fn emulate_move_slots(layer: &LayerKvCache, moves: &[[u32; 3]]) -> Result<(Vec<Vec<u8>>, LaunchStats)> {
    let flat: Vec<u32> = moves.iter().flatten().copied().collect();
    let mut stats = LaunchStats::default();
    let mut out = Vec::new();
    for (mut bytes, elem, dims, clear) in tensors(layer)? {
        let (heads, block_size, row) = geometry(&dims);
        let cfg = plan::move_slots_plan(elem, moves.len(), row).map_err(plan_err)?;
        stats += launch_checked(
            &cfg,
            &mut [
                Arg::Out(&mut bytes),
                Arg::input(&flat),
                Arg::I32(moves.len() as i32),
                Arg::I32(heads as i32),
                Arg::I32(block_size as i32),
                Arg::I32(row as i32),
                Arg::I32(clear.is_some() as i32),
                Arg::F32(clear.unwrap_or(0.0)),
            ],
        )
        .map_err(emu)?;
        out.push(bytes);
    }
    Ok((out, stats))
}

/// copy_blocks on all four tensors; returns their bytes afterwards (the layer is untouched).
pub fn emulate_copy_blocks(layer: &LayerKvCache, pairs: &[[u32; 2]]) -> Result<(Vec<Vec<u8>>, LaunchStats)> {
    let flat: Vec<u32> = pairs.iter().flatten().copied().collect();
    let mut stats = LaunchStats::default();
    let mut out = Vec::new();
    for (mut bytes, elem, dims, _) in tensors(layer)? {
        let (heads, block_size, row) = geometry(&dims);
        let block_elems = heads * block_size * row;
        let cfg = plan::copy_blocks_plan(elem, pairs.len(), block_elems).map_err(plan_err)?;
        stats += launch_checked(&cfg, &mut [Arg::Out(&mut bytes), Arg::input(&flat), Arg::I64(block_elems as i64)])
            .map_err(emu)?;
        out.push(bytes);
    }
    Ok((out, stats))
}

/// The layer's four tensors' bytes, in the order the emulate_* functions return them.
pub fn layer_bytes(layer: &LayerKvCache) -> Result<Vec<Vec<u8>>> {
    [&layer.key, &layer.value, &layer.slot_pos, &layer.slot_score].into_iter().map(bytes_of).collect()
}
