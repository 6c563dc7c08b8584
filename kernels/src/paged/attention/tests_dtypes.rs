//! `paged_attention` over every KV cache dtype: equal to the f32 reference run on what the cache
//! holds (rounded, or dequantized `code · scale`) at every instruction-set level this CPU has,
//! batch invariant, and for an f32 cache bit-exact with the kernel before KV dtypes existed.

use super::cpu::{self, FloatRows, Level, QuantRows};
use super::tests::{assert_matches_reference, dense_causal, random_case, reference, Case, Spec, MIXED};
use super::*;
use candle_core::{DType, Device};

fn geometry(case: &Case) -> cpu::Geometry {
    cpu::Geometry {
        num_heads: case.num_heads,
        num_kv_heads: case.shape.num_kv_heads,
        head_dim: case.shape.head_dim,
        block_size: case.shape.block_size,
    }
}

fn bytes(t: &Tensor) -> Result<Vec<u8>> {
    Ok(match t.dtype() {
        DType::U8 => t.flatten_all()?.to_vec1::<u8>()?,
        _ => t.flatten_all()?.to_vec1::<float8::F8E4M3>()?.iter().map(|c| c.to_bits()).collect(),
    })
}

/// The CPU kernel at `level` on the case (q taken as f32).
fn run_at(level: Level, case: &Case, scale: f32) -> Result<Vec<f32>> {
    let q: Vec<f32> = case.q.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
    let (g, host) = (geometry(case), &case.meta.host);
    let (head_dim, block_size) = (g.head_dim, g.block_size);
    let kind = case.cache.kv_dtype()?;
    Ok(match kind {
        KvDtype::Int8 | KvDtype::Fp8 => {
            let (k, v) = (bytes(&case.cache.key)?, bytes(&case.cache.value)?);
            let rows = |data| QuantRows { data, kind, head_dim, block_size };
            cpu::attention_at(level, &q, &rows(&k), &rows(&v), host, &g, scale)
        }
        KvDtype::F32 => {
            let k: Vec<f32> = case.cache.key.flatten_all()?.to_vec1()?;
            let v: Vec<f32> = case.cache.value.flatten_all()?.to_vec1()?;
            let rows = |data| FloatRows { data, head_dim, block_size };
            cpu::attention_at(level, &q, &rows(&k[..]), &rows(&v[..]), host, &g, scale)
        }
        KvDtype::F16 => {
            let k: Vec<half::f16> = case.cache.key.flatten_all()?.to_vec1()?;
            let v: Vec<half::f16> = case.cache.value.flatten_all()?.to_vec1()?;
            let rows = |data| FloatRows { data, head_dim, block_size };
            cpu::attention_at(level, &q, &rows(&k[..]), &rows(&v[..]), host, &g, scale)
        }
        KvDtype::Bf16 => {
            let k: Vec<half::bf16> = case.cache.key.flatten_all()?.to_vec1()?;
            let v: Vec<half::bf16> = case.cache.value.flatten_all()?.to_vec1()?;
            let rows = |data| FloatRows { data, head_dim, block_size };
            cpu::attention_at(level, &q, &rows(&k[..]), &rows(&v[..]), host, &g, scale)
        }
    })
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// FNV-1a over the output bits.
fn bits_hash(values: &[f32]) -> u64 {
    let mut h = 0xcbf29ce484222325u64;
    for v in values {
        for b in v.to_bits().to_le_bytes() {
            h = (h ^ b as u64).wrapping_mul(0x100000001b3);
        }
    }
    h
}

#[test]
fn f32_cache_output_bits_are_pinned() -> Result<()> {
    // Hashes of the output on these two cases on the x86 paths, pinned so that cache-dtype work
    // never moves the f32 cache's bits. They were commit 371636b's (before KV dtypes) until the
    // vectorized block step (eight keys' dots reduced together, a vector exp) changed the
    // rounding on purpose. The portable path rounds differently (narrower dot, libm exp).
    let levels: Vec<Level> = Level::available().into_iter().filter(|l| *l != Level::Portable).collect();
    if levels.is_empty() {
        return Ok(());
    }
    let a = random_case(77, &Spec::f32(16, 3, 3, 64), &[(0, 37), (100, 1), (33, 20), (7, 1), (0, 1), (1500, 1)], true)?;
    let b = random_case(78, &Spec::f32(32, 2, 8, 128), &[(0, 45), (300, 1), (64, 3)], true)?;
    for (case, want) in [(a, 0x118fc45a12774b5eu64), (b, 0x5ff2e6ebc7cbf2c3)] {
        let scale = 1.0 / (case.shape.head_dim as f32).sqrt();
        let public: Vec<f32> = paged_attention(&case.q, &case.cache, &case.meta, scale)?.flatten_all()?.to_vec1()?;
        assert_eq!(bits_hash(&public), want, "paged_attention on an f32 cache changed its output bits");
        for &level in &levels {
            assert_eq!(bits_hash(&run_at(level, &case, scale)?), want, "{level:?}");
        }
    }
    Ok(())
}

#[test]
fn every_dtype_equals_the_f32_op_on_the_dequantized_cache_at_every_level() -> Result<()> {
    // GQA 1/3/8, block sizes 16/32, ragged contexts (MIXED plus a decode long enough to split).
    let seqs: Vec<(usize, usize)> = MIXED.iter().copied().chain([(700, 1)]).collect();
    for (i, dtype) in KvDtype::ALL.into_iter().enumerate() {
        for block_size in [16, 32] {
            for group in [1, 3, 8] {
                let spec = Spec { cache_dtype: dtype, ..Spec::f32(block_size, 2, group, 64) };
                let case = random_case(1000 + i as u64 * 10 + group as u64, &spec, &seqs, true)?;
                assert_matches_reference(&case, 3e-5)?;
                let scale = 0.125;
                let want = reference(&case, scale)?;
                for level in Level::available() {
                    let got = run_at(level, &case, scale)?;
                    for (j, (g, w)) in got.iter().zip(&want).enumerate() {
                        assert!((g - w).abs() <= 3e-5, "{dtype} bs{block_size} g{group} {level:?} [{j}]: {g} vs {w}");
                    }
                }
            }
        }
    }
    Ok(())
}

#[test]
fn avx2_and_avx512_levels_give_the_same_bits_for_every_dtype() -> Result<()> {
    let levels = Level::available();
    if !levels.contains(&Level::Avx512) {
        return Ok(()); // one x86 level on this CPU: nothing to compare
    }
    for dtype in KvDtype::ALL {
        let spec = Spec { cache_dtype: dtype, ..Spec::f32(16, 3, 3, 64) };
        let case = random_case(31, &spec, &[(0, 40), (900, 1), (20, 5)], true)?;
        let (a, b) = (run_at(Level::Avx2, &case, 0.125)?, run_at(Level::Avx512, &case, 0.125)?);
        assert_eq!(bits(&a), bits(&b), "{dtype}");
    }
    Ok(())
}

#[test]
fn a_request_gives_the_same_bits_alone_and_in_a_batch_of_32_for_every_dtype() -> Result<()> {
    // 32 sequences: decode rows with ragged contexts (some long enough to split), and prefill
    // chunks after cached context.
    let seqs: Vec<(usize, usize)> =
        (0..32).map(|i| if i % 4 == 3 { (i * 7, 1 + i % 9 * 5) } else { (i * 37 % 1100 + i, 1) }).collect();
    for dtype in KvDtype::ALL {
        let spec = Spec { cache_dtype: dtype, ..Spec::f32(16, 3, 3, 64) };
        let case = random_case(41, &spec, &seqs, true)?;
        let scale = 0.125;
        let batched = paged_attention(&case.q, &case.cache, &case.meta, scale)?;
        let mut first_token = 0;
        for (s, &(cached, q_len)) in seqs.iter().enumerate() {
            let ctx = cached + q_len;
            let solo_meta = AttentionMetadata::new(
                vec![-1; q_len],
                (cached as u32..ctx as u32).collect(),
                vec![case.tables[s].clone()],
                vec![q_len],
                vec![ctx],
                16,
                &Device::Cpu,
            )?;
            let solo = paged_attention(&case.q.narrow(0, first_token, q_len)?, &case.cache, &solo_meta, scale)?;
            let together = batched.narrow(0, first_token, q_len)?;
            let (a, b): (Vec<f32>, Vec<f32>) = (solo.flatten_all()?.to_vec1()?, together.flatten_all()?.to_vec1()?);
            assert_eq!(bits(&a), bits(&b), "{dtype}: sequence {s} (context {ctx}, {q_len} queries)");
            first_token += q_len;
        }
    }
    Ok(())
}

#[test]
fn quantized_cache_written_by_write_kv_attends_like_dense_attention_on_dequantized_rows() -> Result<()> {
    use crate::paged::quant::dequantize_row;
    use crate::paged::{write_kv, KvCacheShape};
    let (tokens, kv_heads, group, hd, bs) = (40usize, 2usize, 3usize, 64usize, 16usize);
    let dev = Device::Cpu;
    for dtype in [KvDtype::Int8, KvDtype::Fp8] {
        let shape = KvCacheShape { num_blocks: 5, num_kv_heads: kv_heads, block_size: bs, head_dim: hd };
        let cache = LayerKvCache::new(shape, dtype, &dev)?;
        let table = vec![4u32, 0, 2];
        let slots = (0..tokens).map(|p| (table[p / bs] as usize * bs + p % bs) as i64).collect();
        let meta = AttentionMetadata::new(slots, (0..tokens as u32).collect(), vec![table], vec![tokens], vec![tokens], bs, &dev)?;
        let wave = |n: usize, f: f32| (0..n).map(|i| ((i as f32) * f).sin() * (1.0 + (i % 7) as f32)).collect::<Vec<f32>>();
        let (k, v, q) = (wave(tokens * kv_heads * hd, 0.37), wave(tokens * kv_heads * hd, 0.11), wave(tokens * kv_heads * group * hd, 0.23));
        write_kv(&cache, &Tensor::from_slice(&k, (tokens, kv_heads, hd), &dev)?, &Tensor::from_slice(&v, (tokens, kv_heads, hd), &dev)?, &meta)?;
        let out: Vec<f32> = paged_attention(&Tensor::from_slice(&q, (tokens, kv_heads * group, hd), &dev)?, &cache, &meta, 0.125)?
            .flatten_all()?
            .to_vec1()?;
        // Dense causal attention in f64 over the rows exactly as quantized.
        let deq = |x: &[f32]| -> Vec<f32> {
            let mut row = vec![0u8; hd + 4];
            x.chunks_exact(hd).flat_map(|r| {
                crate::paged::quant::quantize_row(dtype, r, &mut row);
                dequantize_row(dtype, &row)
            }).collect()
        };
        let (kq, vq) = (deq(&k), deq(&v));
        let want = dense_causal(&q, &kq, &vq, kv_heads, group, hd, 0.125);
        for (i, (&got, want)) in out.iter().zip(&want).enumerate() {
            assert!((got as f64 - want).abs() < 1e-4 * (1.0 + want.abs()), "{dtype} [{i}]: {got} vs {want}");
        }
    }
    Ok(())
}
