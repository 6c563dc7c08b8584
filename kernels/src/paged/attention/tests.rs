//! `paged_attention` against a plain reference: gather each sequence's K/V through its block
//! table into contiguous rows, full softmax in f64.

use super::*;
use crate::paged::quant::{dequantize_row, quantize_row};
use crate::paged::{write_kv, KvCacheShape};
use candle_core::{DType, Device};
use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

/// A random cache, a batch over it, and the f32 values the cache really holds (after rounding
/// to its dtype) for the reference.
pub(crate) struct Case {
    pub cache: LayerKvCache,
    pub meta: AttentionMetadata,
    pub q: Tensor,
    pub num_heads: usize,
    pub shape: KvCacheShape,
    pub tables: Vec<Vec<u32>>,
    pub query_lens: Vec<usize>,
    pub context_lens: Vec<usize>,
    /// What the cache holds as f32: rounded to its dtype, or dequantized (`code · scale`).
    pub key: Vec<f32>,
    pub value: Vec<f32>,
}

pub(crate) struct Spec {
    pub block_size: usize,
    pub num_kv_heads: usize,
    pub group: usize,
    pub head_dim: usize,
    pub cache_dtype: KvDtype,
    pub q_dtype: DType,
}

impl Spec {
    pub(crate) fn f32(block_size: usize, num_kv_heads: usize, group: usize, head_dim: usize) -> Self {
        Self { block_size, num_kv_heads, group, head_dim, cache_dtype: KvDtype::F32, q_dtype: DType::F32 }
    }
}

pub(crate) fn uniform(rng: &mut StdRng, n: usize, amplitude: f32) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-amplitude..amplitude)).collect()
}

/// Block tables for `(cached, q_len)` sequences from a pool of physical blocks (shuffled or in
/// order), plus a few spare blocks nobody owns. Returns (tables, num_blocks).
pub(crate) fn allocate(rng: &mut StdRng, seqs: &[(usize, usize)], block_size: usize, shuffle: bool) -> (Vec<Vec<u32>>, usize) {
    let needed: Vec<usize> = seqs.iter().map(|(c, q)| (c + q).div_ceil(block_size)).collect();
    let num_blocks = needed.iter().sum::<usize>() + 3;
    let mut ids: Vec<u32> = (0..num_blocks as u32).collect();
    if shuffle {
        ids.shuffle(rng);
    }
    let mut next = ids.into_iter();
    let tables = needed.iter().map(|&n| next.by_ref().take(n).collect()).collect();
    (tables, num_blocks)
}

/// A cache tensor of `dtype` holding `data` (`[.., head_dim]` f32 rows): cast, or quantized row by
/// row. Returns it with the f32 values it really holds.
pub(crate) fn cache_tensor(data: Vec<f32>, dims: [usize; 4], dtype: KvDtype) -> Result<(Tensor, Vec<f32>)> {
    let dev = Device::Cpu;
    if !dtype.is_quantized() {
        let t = Tensor::from_vec(data, dims.as_slice(), &dev)?.to_dtype(dtype.storage_dtype())?;
        let held = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
        return Ok((t, held));
    }
    let hd = dims[3];
    let row = dtype.row_len(hd);
    let mut bytes = vec![0u8; data.len() / hd * row];
    let mut held = Vec::with_capacity(data.len());
    for (x, r) in data.chunks_exact(hd).zip(bytes.chunks_exact_mut(row)) {
        quantize_row(dtype, x, r);
        held.extend(dequantize_row(dtype, r));
    }
    let storage = [dims[0], dims[1], dims[2], row];
    let t = match dtype {
        KvDtype::Int8 => Tensor::from_vec(bytes, storage.as_slice(), &dev)?,
        _ => Tensor::from_vec(bytes.into_iter().map(float8::F8E4M3::from_bits).collect::<Vec<_>>(), storage.as_slice(), &dev)?,
    };
    Ok((t, held))
}

pub(crate) fn build(rng: &mut StdRng, spec: &Spec, seqs: &[(usize, usize)], tables: Vec<Vec<u32>>, num_blocks: usize) -> Result<Case> {
    let shape = KvCacheShape {
        num_blocks,
        num_kv_heads: spec.num_kv_heads,
        block_size: spec.block_size,
        head_dim: spec.head_dim,
    };
    let dims = shape.kv_dims();
    let n: usize = dims.iter().product();
    let dev = Device::Cpu;
    let (key_t, key) = cache_tensor(uniform(rng, n, 1.0), dims, spec.cache_dtype)?;
    let (value_t, value) = cache_tensor(uniform(rng, n, 1.0), dims, spec.cache_dtype)?;
    let mut cache = LayerKvCache::new(shape, spec.cache_dtype, &dev)?;
    cache.key = key_t;
    cache.value = value_t;

    let query_lens: Vec<usize> = seqs.iter().map(|s| s.1).collect();
    let context_lens: Vec<usize> = seqs.iter().map(|(c, q)| c + q).collect();
    let (mut slots, mut positions) = (Vec::new(), Vec::new());
    for (s, &(cached, q_len)) in seqs.iter().enumerate() {
        for pos in cached..cached + q_len {
            slots.push((tables[s][pos / spec.block_size] as usize * spec.block_size + pos % spec.block_size) as i64);
            positions.push(pos as u32);
        }
    }
    let meta = AttentionMetadata::new(
        slots,
        positions,
        tables.clone(),
        query_lens.clone(),
        context_lens.clone(),
        spec.block_size,
        &dev,
    )?;
    let num_heads = spec.num_kv_heads * spec.group;
    let num_tokens = meta.num_tokens;
    // Amplitude 3 makes some softmaxes peaky, so max-subtraction errors would show.
    let q = Tensor::from_vec(uniform(rng, num_tokens * num_heads * spec.head_dim, 3.0), (num_tokens, num_heads, spec.head_dim), &dev)?
        .to_dtype(spec.q_dtype)?;
    Ok(Case { cache, meta, q, num_heads, shape, tables, query_lens, context_lens, key, value })
}

pub(crate) fn random_case(seed: u64, spec: &Spec, seqs: &[(usize, usize)], shuffle: bool) -> Result<Case> {
    let mut rng = StdRng::seed_from_u64(seed);
    let (tables, num_blocks) = allocate(&mut rng, seqs, spec.block_size, shuffle);
    build(&mut rng, spec, seqs, tables, num_blocks)
}

/// Plain attention: gather the visible keys of each (token, head) through the block table,
/// softmax in f64, weighted sum of values.
pub(crate) fn reference(case: &Case, scale: f32) -> Result<Vec<f32>> {
    let KvCacheShape { num_kv_heads, block_size, head_dim: hd, .. } = case.shape;
    let group = case.num_heads / num_kv_heads;
    let q: Vec<f32> = case.q.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
    let mut out = Vec::with_capacity(q.len());
    let mut token = 0;
    for s in 0..case.tables.len() {
        let (q_len, ctx) = (case.query_lens[s], case.context_lens[s]);
        for j in 0..q_len {
            for h in 0..case.num_heads {
                let g = h / group;
                let row = |data: &[f32], i: usize| -> Vec<f64> {
                    let block = case.tables[s][i / block_size] as usize;
                    let at = ((block * num_kv_heads + g) * block_size + i % block_size) * hd;
                    data[at..at + hd].iter().map(|&x| x as f64).collect()
                };
                let qr = &q[(token * case.num_heads + h) * hd..][..hd];
                let visible = ctx - q_len + j + 1;
                let scores: Vec<f64> = (0..visible)
                    .map(|i| row(&case.key, i).iter().zip(qr).map(|(k, &q)| k * q as f64).sum::<f64>() * scale as f64)
                    .collect();
                let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let weights: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
                let total: f64 = weights.iter().sum();
                let mut acc = vec![0f64; hd];
                for (i, w) in weights.iter().enumerate() {
                    for (a, v) in acc.iter_mut().zip(row(&case.value, i)) {
                        *a += w / total * v;
                    }
                }
                out.extend(acc.iter().map(|&x| x as f32));
            }
            token += 1;
        }
    }
    Ok(out)
}

pub(crate) fn assert_matches_reference(case: &Case, tol: f32) -> Result<()> {
    let scale = 1.0 / (case.shape.head_dim as f32).sqrt();
    let out = paged_attention(&case.q, &case.cache, &case.meta, scale)?;
    assert_eq!(out.dims(), case.q.dims());
    assert_eq!(out.dtype(), case.q.dtype());
    let got: Vec<f32> = out.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
    let want = reference(case, scale)?;
    let hd = case.shape.head_dim;
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        let (token, head) = (i / hd / case.num_heads, i / hd % case.num_heads);
        assert!((g - w).abs() <= tol, "token {token} head {head} dim {}: {g} vs {w}", i % hd);
    }
    Ok(())
}

/// Fresh prefill, decode rows, a prefill chunk after cached context, a one-token prompt: all in
/// one batch, contexts not multiples of the block size.
pub(crate) const MIXED: [(usize, usize); 5] = [(0, 37), (100, 1), (33, 20), (7, 1), (0, 1)];

#[test]
fn mixed_batch_matches_reference_for_block_sizes_and_gqa_ratios() -> Result<()> {
    for (seed, block_size) in [8usize, 16, 32].into_iter().enumerate() {
        for group in [1, 3, 8] {
            // head_dim 40 exercises the non-multiple-of-8 tail of the dot product.
            for head_dim in [40, 64] {
                let spec = Spec::f32(block_size, 2, group, head_dim);
                let case = random_case(seed as u64 * 100 + group as u64, &spec, &MIXED, false)?;
                assert_matches_reference(&case, 2e-5)?;
            }
        }
    }
    Ok(())
}

#[test]
fn shuffled_block_tables_match_reference() -> Result<()> {
    for block_size in [8, 16, 32] {
        let case = random_case(block_size as u64, &Spec::f32(block_size, 3, 3, 64), &MIXED, true)?;
        assert_matches_reference(&case, 2e-5)?;
    }
    Ok(())
}

#[test]
fn long_decode_split_across_items_matches_reference() -> Result<()> {
    // 3000 keys: the planner splits the key range; the partial softmaxes must merge exactly.
    let case = random_case(5, &Spec::f32(16, 3, 3, 64), &[(2999, 1)], true)?;
    assert!(cpu_plan_len(&case) > case.shape.num_kv_heads, "expected a split plan");
    assert_matches_reference(&case, 2e-5)
}

#[test]
fn long_prefill_chunk_after_cached_context_matches_reference() -> Result<()> {
    // 100 queries span several query tiles; 50 cached tokens precede them.
    let case = random_case(6, &Spec::f32(16, 2, 4, 32), &[(50, 100), (3, 1)], true)?;
    assert_matches_reference(&case, 2e-5)
}

fn cpu_plan_len(case: &Case) -> usize {
    let g = cpu::Geometry {
        num_heads: case.num_heads,
        num_kv_heads: case.shape.num_kv_heads,
        head_dim: case.shape.head_dim,
        block_size: case.shape.block_size,
    };
    cpu::plan_len(&case.meta.host, &g)
}

#[test]
fn sequences_sharing_prefix_blocks_match_reference_and_their_solo_runs() -> Result<()> {
    let mut rng = StdRng::seed_from_u64(9);
    let spec = Spec::f32(16, 2, 3, 64);
    // Physical blocks 4 and 1 hold a shared 32-token prefix; each sequence has its own tail.
    let seqs = [(44, 1), (32, 8)];
    let tables = vec![vec![4, 1, 6], vec![4, 1, 2]];
    let case = build(&mut rng, &spec, &seqs, tables, 8)?;
    assert_matches_reference(&case, 2e-5)?;

    let scale = 0.125;
    let batched = paged_attention(&case.q, &case.cache, &case.meta, scale)?;
    let solo_meta = AttentionMetadata::new(vec![-1], vec![44], vec![vec![4, 1, 6]], vec![1], vec![45], 16, &Device::Cpu)?;
    let solo = paged_attention(&case.q.narrow(0, 0, 1)?, &case.cache, &solo_meta, scale)?;
    let diff = (batched.narrow(0, 0, 1)? - solo)?.abs()?.max_all()?.to_scalar::<f32>()?;
    assert!(diff < 1e-6, "batching changed a sequence's output by {diff}");
    Ok(())
}

#[test]
fn half_precision_caches_match_reference_on_their_rounded_values() -> Result<()> {
    for (cache_dtype, q_dtype, tol) in [
        (KvDtype::F16, DType::F32, 2e-5),
        (KvDtype::Bf16, DType::F32, 2e-5),
        (KvDtype::F16, DType::F16, 2e-3),
        (KvDtype::Bf16, DType::BF16, 1.6e-2),
        (KvDtype::F32, DType::BF16, 1.6e-2),
    ] {
        let spec = Spec { cache_dtype, q_dtype, ..Spec::f32(16, 2, 3, 64) };
        let case = random_case(21, &spec, &MIXED, true)?;
        assert_matches_reference(&case, tol)?;
    }
    Ok(())
}

#[test]
fn prefill_written_through_write_kv_equals_dense_causal_attention() -> Result<()> {
    // The path the model takes: write this chunk's K/V, then attend. Compared against dense
    // causal attention over the raw k/v, the cache must be invisible.
    let mut rng = StdRng::seed_from_u64(3);
    let (tokens, kv_heads, group, hd, bs) = (21usize, 2usize, 2usize, 16usize, 8usize);
    let shape = KvCacheShape { num_blocks: 6, num_kv_heads: kv_heads, block_size: bs, head_dim: hd };
    let cache = LayerKvCache::new(shape, KvDtype::F32, &Device::Cpu)?;
    let table = vec![5u32, 0, 3];
    let slots = (0..tokens).map(|p| (table[p / bs] as usize * bs + p % bs) as i64).collect();
    let meta = AttentionMetadata::new(slots, (0..tokens as u32).collect(), vec![table], vec![tokens], vec![tokens], bs, &Device::Cpu)?;
    let k = uniform(&mut rng, tokens * kv_heads * hd, 1.0);
    let v = uniform(&mut rng, tokens * kv_heads * hd, 1.0);
    let q = uniform(&mut rng, tokens * kv_heads * group * hd, 2.0);
    let dev = Device::Cpu;
    write_kv(
        &cache,
        &Tensor::from_slice(&k, (tokens, kv_heads, hd), &dev)?,
        &Tensor::from_slice(&v, (tokens, kv_heads, hd), &dev)?,
        &meta,
    )?;
    let out = paged_attention(&Tensor::from_slice(&q, (tokens, kv_heads * group, hd), &dev)?, &cache, &meta, 0.25)?;
    let got: Vec<f32> = out.flatten_all()?.to_vec1()?;
    let want = dense_causal(&q, &k, &v, kv_heads, group, hd, 0.25);
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert!((*g as f64 - w).abs() < 2e-5, "[{i}]: {g} vs {w}");
    }
    Ok(())
}

/// Dense causal attention in f64 over contiguous rows: q `[T, kv_heads·group, hd]`, k and v
/// `[T, kv_heads, hd]`; token t attends tokens `0..=t`. Output `[T, kv_heads·group, hd]`.
pub(crate) fn dense_causal(q: &[f32], k: &[f32], v: &[f32], kv_heads: usize, group: usize, hd: usize, scale: f64) -> Vec<f64> {
    let tokens = k.len() / (kv_heads * hd);
    let mut out = Vec::with_capacity(q.len());
    for t in 0..tokens {
        for h in 0..kv_heads * group {
            let g = h / group;
            let qr = &q[(t * kv_heads * group + h) * hd..][..hd];
            let scores: Vec<f64> = (0..=t)
                .map(|i| (0..hd).map(|d| qr[d] as f64 * k[(i * kv_heads + g) * hd + d] as f64).sum::<f64>() * scale)
                .collect();
            let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let total: f64 = scores.iter().map(|s| (s - max).exp()).sum();
            for d in 0..hd {
                out.push((0..=t).map(|i| (scores[i] - max).exp() / total * v[(i * kv_heads + g) * hd + d] as f64).sum());
            }
        }
    }
    out
}

#[test]
fn inconsistent_inputs_are_errors_not_panics() -> Result<()> {
    let case = random_case(1, &Spec::f32(16, 2, 3, 64), &MIXED, false)?;
    let dev = Device::Cpu;
    let t = case.meta.num_tokens;
    let bad_tokens = Tensor::zeros((t + 1, 6, 64), DType::F32, &dev)?;
    assert!(paged_attention(&bad_tokens, &case.cache, &case.meta, 1.0).is_err(), "token count");
    let bad_heads = Tensor::zeros((t, 5, 64), DType::F32, &dev)?;
    assert!(paged_attention(&bad_heads, &case.cache, &case.meta, 1.0).is_err(), "heads not a multiple");
    let bad_dim = Tensor::zeros((t, 6, 32), DType::F32, &dev)?;
    assert!(paged_attention(&bad_dim, &case.cache, &case.meta, 1.0).is_err(), "head_dim");
    assert!(paged_attention(&case.q, &case.cache, &case.meta, f32::NAN).is_err(), "scale");

    // Metadata built for another block size, or pointing past this cache's blocks.
    let other_bs = AttentionMetadata::new(vec![-1], vec![0], vec![vec![0]], vec![1], vec![1], 8, &dev)?;
    let q1 = Tensor::zeros((1, 6, 64), DType::F32, &dev)?;
    assert!(paged_attention(&q1, &case.cache, &other_bs, 1.0).is_err(), "block size");
    let far = AttentionMetadata::new(vec![-1], vec![0], vec![vec![case.shape.num_blocks as u32]], vec![1], vec![1], 16, &dev)?;
    assert!(paged_attention(&q1, &case.cache, &far, 1.0).is_err(), "block beyond cache");
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]
    #[test]
    fn random_shapes_match_reference(
        seed in 0u64..1_000,
        block_size in prop::sample::select(vec![1usize, 4, 8, 16]),
        num_kv_heads in 1usize..4,
        group in 1usize..5,
        head_dim in prop::sample::select(vec![4usize, 12, 32, 64]),
        seqs in prop::collection::vec((0usize..90, 1usize..40), 1..5),
        shuffle in any::<bool>(),
    ) {
        let case = random_case(seed, &Spec::f32(block_size, num_kv_heads, group, head_dim), &seqs, shuffle)
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        assert_matches_reference(&case, 3e-5).map_err(|e| TestCaseError::fail(e.to_string()))?;
    }
}

/// `cargo test --release -p kvault-kernels -- --ignored --nocapture decode_step_timing`
#[test]
#[ignore = "timing, not a check"]
fn decode_step_timing() -> Result<()> {
    for dtype in KvDtype::ALL {
        decode_step_timing_for(dtype)?;
    }
    Ok(())
}

fn decode_step_timing_for(dtype: KvDtype) -> Result<()> {
    let context = std::env::var("KVAULT_TIMING_CONTEXT").ok().and_then(|c| c.parse().ok()).unwrap_or(2048usize);
    let spec = Spec { cache_dtype: dtype, ..Spec::f32(16, 3, 3, 64) };
    let case = random_case(1, &spec, &[(context - 1, 1)], true)?;
    let scale = 0.125;
    for _ in 0..50 {
        paged_attention(&case.q, &case.cache, &case.meta, scale)?;
    }
    let mut times = Vec::new();
    for _ in 0..500 {
        let start = std::time::Instant::now();
        let out = paged_attention(&case.q, &case.cache, &case.meta, scale)?;
        times.push(start.elapsed());
        std::hint::black_box(out);
    }
    times.sort();
    eprintln!(
        "paged_attention decode, {dtype} cache (1 seq, 9 q heads / 3 kv heads, head_dim 64, context {context}, block 16, {} threads): median {:?}, p10 {:?}, p90 {:?}",
        rayon::current_num_threads(),
        times[times.len() / 2],
        times[times.len() / 10],
        times[times.len() * 9 / 10]
    );
    Ok(())
}
