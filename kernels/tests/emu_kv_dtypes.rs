//! The CUDA kernels for int8 and fp8 KV caches (rows of codes + f32 scale), run on the host
//! emulator, against the CPU ops: paged decode and prefill for every query dtype, block size,
//! head dim and GQA ratio 1/3/8 on ragged contexts (within the query dtype's rounding), the
//! quantizing write_kv (the same bytes: one scale per token and KV head), and slot moves and
//! block copies (codes and scales move together, byte for byte).

mod emu_support;

use std::time::Instant;

use candle_core::{DType, Device, Result};
use emu_support::kv_policy::*;
use emu_support::*;
use kvault_kernels::{copy_blocks, move_slots, paged_attention, write_kv, BlockCopies, KvCacheShape, KvDtype, SlotMoves};
use kvault_kernels_emu::plan::{write_kv_quant_plan, CacheFormat};
use kvault_kernels_emu::{launch_checked, Arg, LaunchStats};
use rand::rngs::StdRng;
use rand::SeedableRng;

const QUANTIZED: [KvDtype; 2] = [KvDtype::Int8, KvDtype::Fp8];

/// Every (cache format, block size, head dim, GQA ratio), the query dtype cycling through
/// f32/f16/bf16 so each appears with every format and shape.
fn grid() -> Vec<(KvDtype, DType, usize, usize, usize)> {
    let mut out = Vec::new();
    for kind in QUANTIZED {
        for (block_size, head_dim) in SHAPES {
            for group in GROUPS {
                let q = DTYPES[out.len() % DTYPES.len()];
                out.push((kind, q, block_size, head_dim, group));
            }
        }
    }
    out
}

fn scale(head_dim: usize) -> f32 {
    1.0 / (head_dim as f32).sqrt()
}

#[test]
fn quantized_decode_matches_cpu_op_for_every_format_shape_and_gqa_ratio() -> Result<()> {
    let start = Instant::now();
    let mut stats = LaunchStats::default();
    let mut rng = StdRng::seed_from_u64(51);
    let cases = grid();
    for (i, &(kind, dtype, block_size, head_dim, group)) in cases.iter().enumerate() {
        let seqs = vec![(1, 5), (1, block_size + 1), (1, 3 * block_size + 7)];
        let case = AttnCase { dtype, block_size, head_dim, num_kv_heads: 2, group, seqs };
        let mut inp = build_attention(&case, &mut rng)?;
        quantize_cache(&mut inp, kind)?;
        let want = paged_attention(&inp.q, &inp.cache, &inp.meta, scale(head_dim))?;
        let (got, _, s) = emulate_decode(&inp, scale(head_dim), Some(1 + i % 3))?;
        assert_close(&got, &want, &format!("decode {kind} {case:?}"))?;
        stats += s;
    }
    report("decode × int8/fp8 × shape × gqa", cases.len(), stats, start.elapsed());
    Ok(())
}

#[test]
fn quantized_prefill_matches_cpu_op_on_mixed_chunks_and_decode_rows() -> Result<()> {
    let start = Instant::now();
    let mut stats = LaunchStats::default();
    let mut rng = StdRng::seed_from_u64(52);
    let cases = grid();
    for &(kind, dtype, block_size, head_dim, group) in &cases {
        let case = AttnCase { dtype, block_size, head_dim, num_kv_heads: 2, group, seqs: mixed_batch(block_size) };
        let mut inp = build_attention(&case, &mut rng)?;
        quantize_cache(&mut inp, kind)?;
        let want = paged_attention(&inp.q, &inp.cache, &inp.meta, scale(head_dim))?;
        let (got, s) = emulate_prefill(&inp, scale(head_dim))?;
        assert_close(&got, &want, &format!("prefill {kind} {case:?}"))?;
        stats += s;
    }
    report("prefill × int8/fp8 × shape × gqa", cases.len(), stats, start.elapsed());
    Ok(())
}

#[test]
fn quantizing_write_kv_kernels_store_the_same_codes_and_scales_as_the_cpu_op() -> Result<()> {
    let start = Instant::now();
    let mut stats = LaunchStats::default();
    let mut rng = StdRng::seed_from_u64(53);
    let mut cases = 0;
    for kind in QUANTIZED {
        for (num_kv_heads, head_dim, block_size) in [(1, 64, 16), (2, 128, 32), (3, 64, 16), (8, 16, 8)] {
            let case = AttnCase { dtype: DType::F32, block_size, head_dim, num_kv_heads, group: 1, seqs: vec![(9, 9), (1, 20), (4, 37)] };
            let mut inp = build_attention(&case, &mut rng)?;
            quantize_cache(&mut inp, kind)?;
            // Skip some writes: those slots must keep their old bytes.
            skip_some_writes(&mut inp, &mut rng)?;
            let t = inp.meta.num_tokens;
            // Magnitudes spanning 1e-3..10 per row, and one all-zero row (scale 0).
            let k = (random_tensor(&mut rng, &[t, num_kv_heads, head_dim], 3.0, DType::F32)? * 3.0)?;
            let v = random_tensor(&mut rng, &[t, num_kv_heads, head_dim], 1e-3, DType::F32)?;
            let v = v.slice_assign(&[0..1, 0..1, 0..head_dim], &candle_core::Tensor::zeros((1, 1, head_dim), DType::F32, &Device::Cpu)?)?;

            let (mut key, mut value) = (bytes_of(&inp.cache.key)?, bytes_of(&inp.cache.value)?);
            let format = if kind == KvDtype::Int8 { CacheFormat::Int8 } else { CacheFormat::Fp8 };
            let cfg = write_kv_quant_plan(format, t).map_err(|e| candle_core::Error::Msg(e.0))?;
            for (dst, src) in [(&mut key, bytes_of(&k)?), (&mut value, bytes_of(&v)?)] {
                stats += launch_checked(
                    &cfg,
                    &mut [
                        Arg::Out(dst),
                        Arg::In(&src),
                        Arg::input(&inp.meta.host.slot_mapping),
                        Arg::I32(num_kv_heads as i32),
                        Arg::I32(block_size as i32),
                        Arg::I32(head_dim as i32),
                    ],
                )
                .map_err(emu)?;
            }
            let before = bytes_of(&inp.cache.key)?;
            write_kv(&inp.cache, &k, &v, &inp.meta)?;
            assert_ne!(before, bytes_of(&inp.cache.key)?, "the CPU op wrote something");
            assert_eq!(key, bytes_of(&inp.cache.key)?, "key rows, {kind} {case:?}");
            assert_eq!(value, bytes_of(&inp.cache.value)?, "value rows, {kind} {case:?}");
            cases += 1;
        }
    }
    report("write_kv quantizing × int8/fp8 × heads", cases, stats, start.elapsed());
    Ok(())
}

#[test]
fn slot_moves_and_block_copies_carry_quantized_rows_byte_for_byte() -> Result<()> {
    let start = Instant::now();
    let mut stats = LaunchStats::default();
    let mut rng = StdRng::seed_from_u64(54);
    let mut cases = 0;
    for kind in QUANTIZED {
        for (num_kv_heads, block_size, head_dim) in [(1, 16, 64), (3, 32, 128)] {
            let shape = KvCacheShape { num_blocks: 6, num_kv_heads, block_size, head_dim };
            let quantized = |rng: &mut StdRng| -> Result<kvault_kernels::LayerKvCache> {
                let mut layer = random_layer(rng, shape, DType::F32)?;
                layer.key = quantize_tensor(&layer.key, kind)?;
                layer.value = quantize_tensor(&layer.value, kind)?;
                Ok(layer)
            };
            let layer = quantized(&mut rng)?;
            let moves = random_moves(&mut rng, shape);
            if !moves.is_empty() {
                let (got, s) = emulate_move_slots(&layer, &moves)?;
                move_slots(&layer, &SlotMoves::new(moves.clone(), &Device::Cpu)?)?;
                assert!(got == layer_bytes(&layer)?, "move_slots differs from the CPU op, {kind} {shape:?}");
                stats += s;
                cases += 1;
            }
            let layer = quantized(&mut rng)?;
            let pairs = random_block_copies(&mut rng, shape.num_blocks);
            let (got, s) = emulate_copy_blocks(&layer, &pairs)?;
            copy_blocks(&layer, &BlockCopies::new(pairs, &Device::Cpu)?)?;
            assert!(got == layer_bytes(&layer)?, "copy_blocks differs from the CPU op, {kind} {shape:?}");
            stats += s;
            cases += 1;
        }
    }
    report("move_slots/copy_blocks × int8/fp8", cases, stats, start.elapsed());
    Ok(())
}
