//! Shared pieces of the emulation tests: moving candle tensors in and out of kernel buffers,
//! tolerances, random paged-attention batches, and the launch sequences (argument lists in the
//! kernels' parameter order, geometry from `plan`, the same as the device glue uses); the
//! KV-policy kernels' pieces are in [`kv_policy`], the LycheeDecode kernels' in [`sparse`].
//!
//! Must not know: expected results. Every comparison is against the CPU ops of kvault-kernels.
#![allow(dead_code)] // each test file uses a different subset

pub mod kv_policy;
pub mod sparse;

use std::time::Duration;

use candle_core::{DType, Device, Result, Tensor};
use half::{bf16, f16};
use kvault_kernels::paged::quant::quantize_row;
use kvault_kernels::{AttentionMetadata, KvCacheShape, KvDtype, LayerKvCache};
use kvault_kernels_emu::plan::{self, AttentionShape, CacheFormat, KernelDtype};
use kvault_kernels_emu::{launch_checked, Arg, EmuError, LaunchStats};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::Rng;

pub const DTYPES: [DType; 3] = [DType::F32, DType::F16, DType::BF16];
/// GQA ratios (query heads per KV head) the attention kernels are checked at.
pub const GROUPS: [usize; 3] = [1, 3, 8];
/// (block size, head dim) pairs the attention kernels are compiled for.
pub const SHAPES: [(usize, usize); 4] = [(16, 64), (16, 128), (32, 64), (32, 128)];

/// A batch mixing prefill chunks and decode rows, as `(q_len, context_len)`: a fresh prefill
/// shorter than a block, a decode row, a chunk after cached context straddling blocks, and a
/// chunk long enough for several query tiles at every group size.
pub fn mixed_batch(block_size: usize) -> Vec<(usize, usize)> {
    vec![(7, 7), (1, block_size + 2), (5, 2 * block_size + 3), (19, 19)]
}

/// Every (dtype, block size, head dim, GQA ratio) an attention kernel is checked at.
pub fn attention_grid() -> impl Iterator<Item = (DType, usize, usize, usize)> {
    DTYPES.into_iter().flat_map(|dtype| {
        SHAPES.into_iter().flat_map(move |(block_size, head_dim)| GROUPS.into_iter().map(move |group| (dtype, block_size, head_dim, group)))
    })
}

pub fn kernel_dtype(dtype: DType) -> KernelDtype {
    match dtype {
        DType::F32 => KernelDtype::F32,
        DType::F16 => KernelDtype::F16,
        DType::BF16 => KernelDtype::Bf16,
        other => panic!("no kernels for {other:?}"),
    }
}

/// Raw little-endian bytes of a tensor (row-major).
pub fn bytes_of(t: &Tensor) -> Result<Vec<u8>> {
    let t = t.flatten_all()?;
    Ok(match t.dtype() {
        DType::F32 => t.to_vec1::<f32>()?.iter().flat_map(|v| v.to_le_bytes()).collect(),
        DType::F16 => t.to_vec1::<f16>()?.iter().flat_map(|v| v.to_le_bytes()).collect(),
        DType::BF16 => t.to_vec1::<bf16>()?.iter().flat_map(|v| v.to_le_bytes()).collect(),
        DType::U32 => t.to_vec1::<u32>()?.iter().flat_map(|v| v.to_le_bytes()).collect(),
        DType::I64 => t.to_vec1::<i64>()?.iter().flat_map(|v| v.to_le_bytes()).collect(),
        DType::I32 => t.to_vec1::<i32>()?.iter().flat_map(|v| v.to_le_bytes()).collect(),
        DType::U8 => t.to_vec1::<u8>()?,
        DType::F8E4M3 => t.to_vec1::<float8::F8E4M3>()?.iter().map(|c| c.to_bits()).collect(),
        other => panic!("bytes_of: unsupported {other:?}"),
    })
}

pub fn tensor_from_bytes(bytes: &[u8], dtype: DType, dims: &[usize]) -> Result<Tensor> {
    let dev = &Device::Cpu;
    Ok(match dtype {
        DType::F32 => Tensor::from_vec(bytes.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect::<Vec<_>>(), dims, dev)?,
        DType::F16 => Tensor::from_vec(bytes.chunks_exact(2).map(|c| f16::from_le_bytes(c.try_into().unwrap())).collect::<Vec<_>>(), dims, dev)?,
        DType::BF16 => Tensor::from_vec(bytes.chunks_exact(2).map(|c| bf16::from_le_bytes(c.try_into().unwrap())).collect::<Vec<_>>(), dims, dev)?,
        DType::I32 => Tensor::from_vec(bytes.chunks_exact(4).map(|c| i32::from_le_bytes(c.try_into().unwrap())).collect::<Vec<_>>(), dims, dev)?,
        DType::U8 => Tensor::from_vec(bytes.to_vec(), dims, dev)?,
        DType::F8E4M3 => Tensor::from_vec(bytes.iter().map(|&b| float8::F8E4M3::from_bits(b)).collect::<Vec<_>>(), dims, dev)?,
        other => panic!("tensor_from_bytes: unsupported {other:?}"),
    })
}

/// (absolute, relative) tolerance for comparing a kernel's output with the CPU op's: both
/// accumulate in f32 but in different orders, then round to the storage dtype.
pub fn tolerance(dtype: DType) -> (f32, f32) {
    match dtype {
        DType::F32 => (2e-5, 1e-4),
        DType::F16 => (2e-3, 2e-3),
        DType::BF16 => (1.6e-2, 1.6e-2),
        other => panic!("no tolerance for {other:?}"),
    }
}

/// Panics with the worst element when `got` and `want` differ beyond the dtype's tolerance.
pub fn assert_close(got: &Tensor, want: &Tensor, what: &str) -> Result<()> {
    assert_eq!(got.dims(), want.dims(), "{what}: shape");
    let (atol, rtol) = tolerance(want.dtype());
    let g = got.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    let w = want.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    let mut worst: Option<(usize, f32)> = None;
    for (i, (a, b)) in g.iter().zip(&w).enumerate() {
        let excess = (a - b).abs() - (atol + rtol * b.abs());
        if !(excess <= 0.0) && worst.is_none_or(|(_, e)| excess > e || excess.is_nan()) {
            worst = Some((i, excess));
        }
    }
    if let Some((i, _)) = worst {
        panic!("{what}: element {i} is {} but the CPU op gives {} (atol {atol}, rtol {rtol})", g[i], w[i]);
    }
    Ok(())
}

pub fn random_tensor(rng: &mut StdRng, dims: &[usize], scale: f32, dtype: DType) -> Result<Tensor> {
    let n: usize = dims.iter().product();
    let data: Vec<f32> = (0..n).map(|_| rng.random_range(-scale..scale)).collect();
    Tensor::from_vec(data, dims, &Device::Cpu)?.to_dtype(dtype)
}

/// A paged-attention batch: per sequence `(q_len, context_len)`.
#[derive(Clone, Debug)]
pub struct AttnCase {
    pub dtype: DType,
    pub block_size: usize,
    pub head_dim: usize,
    pub num_kv_heads: usize,
    pub group: usize,
    pub seqs: Vec<(usize, usize)>,
}

pub struct AttnInputs {
    pub case: AttnCase,
    pub cache: LayerKvCache,
    pub meta: AttentionMetadata,
    pub q: Tensor,
}

/// Random cache contents everywhere (also in slots no sequence owns, which must never be read),
/// block tables drawn from a shuffled pool, the new tokens' slots at the end of each context.
pub fn build_attention(case: &AttnCase, rng: &mut StdRng) -> Result<AttnInputs> {
    let bs = case.block_size;
    let needed: usize = case.seqs.iter().map(|&(_, ctx)| ctx.div_ceil(bs)).sum();
    let num_blocks = needed + 3;
    let mut pool: Vec<u32> = (0..num_blocks as u32).collect();
    pool.shuffle(rng);
    let mut tables = Vec::new();
    let (mut slots, mut positions) = (Vec::new(), Vec::new());
    for &(q_len, ctx) in &case.seqs {
        let table: Vec<u32> = pool.drain(..ctx.div_ceil(bs)).collect();
        for pos in ctx - q_len..ctx {
            slots.push(table[pos / bs] as i64 * bs as i64 + (pos % bs) as i64);
            positions.push(pos as u32);
        }
        tables.push(table);
    }
    let shape = KvCacheShape { num_blocks, num_kv_heads: case.num_kv_heads, block_size: bs, head_dim: case.head_dim };
    let kv_dims = shape.kv_dims();
    let cache = LayerKvCache {
        key: random_tensor(rng, &kv_dims, 1.0, case.dtype)?,
        value: random_tensor(rng, &kv_dims, 1.0, case.dtype)?,
        slot_pos: Tensor::full(-1i32, shape.slot_dims().as_slice(), &Device::Cpu)?,
        slot_score: Tensor::zeros(shape.slot_dims().as_slice(), DType::F32, &Device::Cpu)?,
    };
    let num_tokens = slots.len();
    let meta = AttentionMetadata::new(
        slots,
        positions,
        tables,
        case.seqs.iter().map(|s| s.0).collect(),
        case.seqs.iter().map(|s| s.1).collect(),
        bs,
        &Device::Cpu,
    )?;
    let q = random_tensor(rng, &[num_tokens, case.num_kv_heads * case.group, case.head_dim], 2.0, case.dtype)?;
    Ok(AttnInputs { case: case.clone(), cache, meta, q })
}

/// Rebuilds the inputs' metadata with about a quarter of the tokens' slots set to -1 (writes
/// the kernels must skip, leaving those slots untouched).
pub fn skip_some_writes(inp: &mut AttnInputs, rng: &mut StdRng) -> Result<()> {
    let host = &inp.meta.host;
    let slots = host.slot_mapping.iter().map(|&s| if rng.random_bool(0.25) { -1 } else { s }).collect();
    let tables = (0..inp.meta.num_seqs).map(|s| host.block_table(s).to_vec()).collect();
    inp.meta = AttentionMetadata::new(
        slots,
        host.positions.clone(),
        tables,
        inp.case.seqs.iter().map(|s| s.0).collect(),
        inp.case.seqs.iter().map(|s| s.1).collect(),
        inp.case.block_size,
        &Device::Cpu,
    )?;
    Ok(())
}

/// Replaces the inputs' float K/V cache with the same values quantized row by row (int8, fp8),
/// as `write_kv` would have stored them.
pub fn quantize_cache(inp: &mut AttnInputs, kind: KvDtype) -> Result<()> {
    inp.cache.key = quantize_tensor(&inp.cache.key, kind)?;
    inp.cache.value = quantize_tensor(&inp.cache.value, kind)?;
    Ok(())
}

/// A float K/V tensor `[.., head_dim]` as int8/fp8 rows (codes + scale), quantized row by row.
pub fn quantize_tensor(t: &Tensor, kind: KvDtype) -> Result<Tensor> {
    let (nb, heads, bs, hd) = t.dims4()?;
    let values: Vec<f32> = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
    let row = kind.row_len(hd);
    let mut bytes = vec![0u8; nb * heads * bs * row];
    for (x, r) in values.chunks_exact(hd).zip(bytes.chunks_exact_mut(row)) {
        quantize_row(kind, x, r);
    }
    tensor_from_bytes(&bytes, kind.storage_dtype(), &[nb, heads, bs, row])
}

/// The kernels' name for the inputs' cache format.
pub fn cache_format(cache: &LayerKvCache) -> CacheFormat {
    match cache.kv_dtype().expect("a cache dtype") {
        KvDtype::Int8 => CacheFormat::Int8,
        KvDtype::Fp8 => CacheFormat::Fp8,
        _ => CacheFormat::Float,
    }
}

pub fn emu(e: EmuError) -> candle_core::Error {
    candle_core::Error::Msg(e.to_string())
}

pub fn attention_shape(inp: &AttnInputs) -> AttentionShape {
    AttentionShape {
        dtype: kernel_dtype(inp.case.dtype),
        cache: cache_format(&inp.cache),
        num_seqs: inp.meta.num_seqs,
        num_heads: inp.case.num_kv_heads * inp.case.group,
        num_kv_heads: inp.case.num_kv_heads,
        block_size: inp.case.block_size,
        head_dim: inp.case.head_dim,
    }
}

/// Decode through the flash-decoding split + merge kernels. Returns the output, the number of
/// (sequence, split) pairs whose range was empty, and the launch statistics.
pub fn emulate_decode(inp: &AttnInputs, scale: f32, num_splits: Option<usize>) -> Result<(Tensor, usize, LaunchStats)> {
    let shape = attention_shape(inp);
    let host = &inp.meta.host;
    let p = plan::decode_plan(&shape, inp.meta.max_context_len, num_splits, 108).map_err(|e| candle_core::Error::Msg(e.0))?;
    let (s, h, d, splits) = (shape.num_seqs, shape.num_heads, shape.head_dim, p.num_splits as usize);
    let (q, k, v) = (bytes_of(&inp.q)?, bytes_of(&inp.cache.key)?, bytes_of(&inp.cache.value)?);
    let mut part_out = vec![0f32; s * h * splits * d];
    let mut part_m = vec![0f32; s * h * splits];
    let mut part_l = vec![0f32; s * h * splits];
    let mut stats = launch_checked(
        &p.split,
        &mut [
            Arg::In(&q),
            Arg::In(&k),
            Arg::In(&v),
            Arg::input(&host.block_tables),
            Arg::input(&host.context_lens),
            Arg::input(&host.cu_seqlens_q),
            Arg::output(&mut part_out),
            Arg::output(&mut part_m),
            Arg::output(&mut part_l),
            Arg::I32(h as i32),
            Arg::I32(shape.num_kv_heads as i32),
            Arg::I32(host.max_blocks_per_seq as i32),
            Arg::I32(p.blocks_per_split as i32),
            Arg::F32(scale),
        ],
    )
    .map_err(emu)?;
    let mut out = vec![0u8; q.len()];
    stats += launch_checked(
        &p.merge,
        &mut [
            Arg::Out(&mut out),
            Arg::input(&part_out),
            Arg::input(&part_m),
            Arg::input(&part_l),
            Arg::input(&host.cu_seqlens_q),
            Arg::I32(h as i32),
            Arg::I32(d as i32),
            Arg::I32(splits as i32),
        ],
    )
    .map_err(emu)?;
    let empty_splits = host
        .context_lens
        .iter()
        .map(|&ctx| {
            let blocks = (ctx as usize).div_ceil(shape.block_size);
            (0..splits).filter(|z| z * p.blocks_per_split as usize >= blocks).count()
        })
        .sum();
    Ok((tensor_from_bytes(&out, inp.case.dtype, inp.q.dims())?, empty_splits, stats))
}

/// Varlen prefill kernel (any mix of chunks and decode rows).
pub fn emulate_prefill(inp: &AttnInputs, scale: f32) -> Result<(Tensor, LaunchStats)> {
    let shape = attention_shape(inp);
    let host = &inp.meta.host;
    let p = plan::prefill_plan(&shape, inp.meta.max_query_len).map_err(|e| candle_core::Error::Msg(e.0))?;
    let (q, k, v) = (bytes_of(&inp.q)?, bytes_of(&inp.cache.key)?, bytes_of(&inp.cache.value)?);
    let mut out = vec![0u8; q.len()];
    let stats = launch_checked(
        &p.attn,
        &mut [
            Arg::Out(&mut out),
            Arg::In(&q),
            Arg::In(&k),
            Arg::In(&v),
            Arg::input(&host.block_tables),
            Arg::input(&host.context_lens),
            Arg::input(&host.cu_seqlens_q),
            Arg::I32(shape.num_heads as i32),
            Arg::I32(shape.num_kv_heads as i32),
            Arg::I32(host.max_blocks_per_seq as i32),
            Arg::I32(p.tile_tokens as i32),
            Arg::F32(scale),
        ],
    )
    .map_err(emu)?;
    Ok((tensor_from_bytes(&out, inp.case.dtype, inp.q.dims())?, stats))
}

/// One line per test for the report: what ran and how long the emulation took.
pub fn report(test: &str, cases: usize, stats: LaunchStats, elapsed: Duration) {
    eprintln!(
        "[emu] {test}: {cases} cases, {} blocks, {} threads, {} fiber switches, {} barriers, {:.2}s",
        stats.blocks,
        stats.threads,
        stats.switches,
        stats.barriers,
        elapsed.as_secs_f64()
    );
}
