//! `attention_mass`: how much attention each cached slot received from chosen query rows — the
//! per-slot probability sums that H2O accumulates and SnapKV's observation window votes with.
//!
//! Owns: the op's contract and its CPU kernel. For each listed sequence ("voter") and KV head it
//! sums, over the voter's query rows `[first_query, q_len)` and the query heads of that KV head,
//! the softmax probability `paged_attention` gives each visible key. The masking rule and the
//! scores (`(scale·q)·k`) are exactly `paged_attention`'s, so the sums are the probabilities that
//! op used. Output f32 `[voters, num_kv_heads, max_ctx]` indexed by logical slot (position in the
//! sequence's block table), zero past each voter's context.
//!
//! Why a second op and not an output of `paged_attention`: the attention kernels never build a
//! probability row (online softmax), and the policies need sums over a few rows (one decode row,
//! or SnapKV's window) of a few requests. Recomputing q·K for those rows costs about half an
//! attention pass for them alone, and nothing at all when no request in the batch asks.
//!
//! Must not know: which policy asked or what it does with the sums.

use candle_core::{bail, CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::cpu::{FloatRows, Geometry, KvRows, QuantRows};
use crate::elem::{cache_bytes, contiguous, dtype_of, is_quantized_storage, to_f32_vec, with_float_type};
use crate::paged::kv_dtype::KvDtype;
use crate::paged::{AttentionMetadata, HostMetadata, LayerKvCache};

/// One sequence of the batch whose query rows `[first_query, q_len)` vote.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MassVoter {
    /// Index of the sequence in the batch metadata.
    pub seq: usize,
    /// First voting query of its chunk (0: every row; `q_len - w`: SnapKV's last `w`).
    pub first_query: usize,
}

/// Per-slot attention mass, `[voters.len(), num_kv_heads, max_ctx]` f32 (see the module doc).
pub fn attention_mass(
    q: &Tensor,
    cache: &LayerKvCache,
    meta: &AttentionMetadata,
    softmax_scale: f32,
    voters: &[MassVoter],
) -> Result<Tensor> {
    let shape = cache.shape()?;
    let (num_tokens, num_heads, head_dim) = q.dims3()?;
    if num_tokens != meta.num_tokens || head_dim != shape.head_dim || num_heads % shape.num_kv_heads != 0 {
        bail!(
            "attention_mass: q {:?} does not fit the metadata ({} tokens) and cache ({} kv heads × {})",
            q.dims(),
            meta.num_tokens,
            shape.num_kv_heads,
            shape.head_dim
        )
    }
    if meta.block_size() != shape.block_size || meta.host.max_block_id as usize >= shape.num_blocks {
        bail!("attention_mass: the metadata does not fit the cache")
    }
    if !softmax_scale.is_finite() {
        bail!("attention_mass: softmax_scale must be finite, got {softmax_scale}")
    }
    if voters.is_empty() {
        bail!("attention_mass: no voters (skip the call when no request needs attention sums)")
    }
    let mut flat = Vec::with_capacity(voters.len() * 2);
    for v in voters {
        let Some(range) = (v.seq < meta.num_seqs).then(|| meta.host.query_range(v.seq)) else {
            bail!("attention_mass: voter sequence {} is not in the batch of {}", v.seq, meta.num_seqs)
        };
        if v.first_query >= range.len() {
            bail!("attention_mass: sequence {} votes from query {} but has {} queries", v.seq, v.first_query, range.len())
        }
        flat.extend([v.seq as u32, v.first_query as u32]);
    }
    let max_ctx = voters.iter().map(|v| meta.host.context_lens[v.seq] as usize).max().unwrap_or(0);
    let voters_t = Tensor::from_vec(flat, (voters.len(), 2), q.device())?;
    let op = AttentionMass { meta, softmax_scale, voters, max_ctx };
    q.contiguous()?.apply_op3_no_bwd(&cache.key, &voters_t, &op)
}

struct AttentionMass<'a> {
    meta: &'a AttentionMetadata,
    softmax_scale: f32,
    voters: &'a [MassVoter],
    max_ctx: usize,
}

impl CustomOp3 for AttentionMass<'_> {
    fn name(&self) -> &'static str {
        "attention_mass"
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        q: &candle_core::CudaStorage,
        ql: &Layout,
        k: &candle_core::CudaStorage,
        kl: &Layout,
        voters: &candle_core::CudaStorage,
        vl: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        crate::cuda::ops::attention_mass(self.meta, self.softmax_scale, self.max_ctx, q, ql, k, kl, voters, vl)
    }

    fn cpu_fwd(
        &self,
        q: &CpuStorage,
        q_l: &Layout,
        key: &CpuStorage,
        key_l: &Layout,
        _voters: &CpuStorage,
        _voters_l: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let name = self.name();
        let (_, num_heads, head_dim) = q_l.shape().dims3()?;
        let (_, num_kv_heads, block_size, _) = key_l.shape().dims4()?;
        let g = Geometry { num_heads, num_kv_heads, head_dim, block_size };
        let q = to_f32_vec(q, q_l, name, "q")?;
        let host = &self.meta.host;
        let out = if is_quantized_storage(key) {
            let kind = KvDtype::from_storage(dtype_of(key))?;
            let k = QuantRows { data: cache_bytes(key, key_l, name, "key cache")?, kind, head_dim, block_size };
            mass(&q, &k, host, &g, self.softmax_scale, self.voters, self.max_ctx)
        } else {
            with_float_type!(key, name, C => {
                let k = FloatRows::<C> { data: contiguous::<C>(key, key_l, name, "key cache")?, head_dim, block_size };
                mass(&q, &k, host, &g, self.softmax_scale, self.voters, self.max_ctx)
            })
        };
        Ok((CpuStorage::F32(out), Shape::from((self.voters.len(), num_kv_heads, self.max_ctx))))
    }
}

/// The CPU kernel: one rayon task per (voter, KV head), each owning its output row.
fn mass<K: KvRows>(
    q: &[f32],
    key: &K,
    host: &HostMetadata,
    g: &Geometry,
    scale: f32,
    voters: &[MassVoter],
    max_ctx: usize,
) -> Vec<f32> {
    let mut out = vec![0f32; voters.len() * g.num_kv_heads * max_ctx];
    if max_ctx == 0 {
        return out;
    }
    out.par_chunks_mut(max_ctx).enumerate().for_each(|(i, row)| {
        let (voter, kv_head) = (voters[i / g.num_kv_heads], i % g.num_kv_heads);
        voter_head_mass(q, key, host, g, scale, voter, kv_head, row);
    });
    out
}

#[allow(clippy::too_many_arguments)]
fn voter_head_mass<K: KvRows>(
    q: &[f32],
    key: &K,
    host: &HostMetadata,
    g: &Geometry,
    scale: f32,
    voter: MassVoter,
    kv_head: usize,
    out: &mut [f32],
) {
    let (hd, bs, group) = (g.head_dim, g.block_size, g.num_heads / g.num_kv_heads);
    let range = host.query_range(voter.seq);
    let q_len = range.len();
    let ctx = host.context_lens[voter.seq] as usize;
    let table = host.block_table(voter.seq);
    // The head's keys of this sequence in logical order, converted once (a quantized cache:
    // codes as f32 and one scale per key, applied after the dot exactly as paged_attention does).
    let mut keys = vec![0f32; ctx * hd];
    let mut key_scales: Option<Vec<f32>> = None;
    let (mut scratch, mut scales) = (Vec::new(), vec![0f32; bs]);
    for (logical, &physical) in table.iter().enumerate().take(ctx.div_ceil(bs)) {
        let n = bs.min(ctx - logical * bs);
        let (slab, quantized) = key.rows(physical as usize * g.num_kv_heads + kv_head, n, &mut scratch, &mut scales);
        keys[logical * bs * hd..(logical * bs + n) * hd].copy_from_slice(&slab[..n * hd]);
        if quantized {
            key_scales.get_or_insert_with(|| vec![0f32; ctx])[logical * bs..logical * bs + n].copy_from_slice(&scales[..n]);
        }
    }
    let mut scores = vec![0f32; ctx];
    let mut q_row = vec![0f32; hd];
    for j in voter.first_query..q_len {
        let visible = ctx - q_len + j + 1;
        let token = range.start + j;
        for h in 0..group {
            let start = (token * g.num_heads + kv_head * group + h) * hd;
            q_row.iter_mut().zip(&q[start..start + hd]).for_each(|(d, &x)| *d = x * scale);
            let mut max = f32::NEG_INFINITY;
            for (i, (s, k)) in scores[..visible].iter_mut().zip(keys.chunks_exact(hd)).enumerate() {
                *s = super::cpu::dot_dispatch(&q_row, k);
                if let Some(ks) = &key_scales {
                    *s *= ks[i];
                }
                max = max.max(*s);
            }
            let mut sum = 0f32;
            for s in &mut scores[..visible] {
                *s = (*s - max).exp();
                sum += *s;
            }
            let inv = 1.0 / sum;
            for (o, &p) in out[..visible].iter_mut().zip(&scores[..visible]) {
                *o += p * inv;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::paged::{write_kv, KvCacheShape, PagedKvCache};
    use candle_core::{DType, Device};
    use rand::{rngs::StdRng, Rng, SeedableRng};

    /// Softmax probabilities computed the obvious way from logical keys.
    fn naive(q: &[f32], keys: &[Vec<Vec<f32>>], heads: usize, kv_heads: usize, hd: usize, scale: f32,
             q_len: usize, token0: usize, first: usize) -> Vec<Vec<f32>> {
        let group = heads / kv_heads;
        let ctx = keys[0].len();
        let mut out = vec![vec![0f32; ctx]; kv_heads];
        for j in first..q_len {
            let visible = ctx - q_len + j + 1;
            for h in 0..heads {
                let g = h / group;
                let qr = &q[((token0 + j) * heads + h) * hd..((token0 + j) * heads + h + 1) * hd];
                let s: Vec<f64> = (0..visible)
                    .map(|k| qr.iter().zip(&keys[g][k]).map(|(a, b)| (*a as f64) * (*b as f64)).sum::<f64>() * scale as f64)
                    .collect();
                let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let z: f64 = s.iter().map(|x| (x - m).exp()).sum();
                for k in 0..visible {
                    out[g][k] += ((s[k] - m).exp() / z) as f32;
                }
            }
        }
        out
    }

    #[test]
    fn mass_equals_naive_softmax_sums_for_mixed_batches_and_every_dtype() -> Result<()> {
        let mut rng = StdRng::seed_from_u64(3);
        for dtype in KvDtype::ALL {
          for (kv_heads, group, bs) in [(2, 1, 16), (1, 3, 16), (2, 8, 32)] {
            let hd = 16;
            let heads = kv_heads * group;
            let shape = KvCacheShape { num_blocks: 24, num_kv_heads: kv_heads, block_size: bs, head_dim: hd };
            let cache = PagedKvCache::new(1, shape, dtype, &Device::Cpu)?;
            // The naive sums see what the cache holds: rounded, or dequantized.
            let held = |row: &Vec<f32>| -> Result<Vec<f32>> {
                if dtype.is_quantized() {
                    let mut bytes = vec![0u8; dtype.row_len(hd)];
                    crate::paged::quant::quantize_row(dtype, row, &mut bytes);
                    return Ok(crate::paged::quant::dequantize_row(dtype, &bytes));
                }
                Tensor::new(row.as_slice(), &Device::Cpu)?.to_dtype(dtype.storage_dtype())?.to_dtype(DType::F32)?.to_vec1()
            };
            let layer = &cache.layers[0];
            // Seq 0: prefill chunk of 20 after 7 cached; seq 1: a decode row at context 40;
            // seq 2: a first chunk of 5 (shorter than a block). Blocks shuffled.
            let seqs = [(20usize, 27usize), (1, 40), (5, 5)];
            let mut free: Vec<u32> = (0..24).rev().collect();
            let mut tables = Vec::new();
            let mut keys_logical = Vec::new();
            let (mut slots, mut positions) = (Vec::new(), Vec::new());
            let mut all_k = Vec::new();
            for &(_, ctx) in &seqs {
                let table: Vec<u32> = (0..ctx.div_ceil(bs)).map(|_| free.pop().unwrap()).collect();
                let per_head: Vec<Vec<Vec<f32>>> = (0..kv_heads)
                    .map(|_| (0..ctx).map(|_| (0..hd).map(|_| rng.random_range(-1.0..1.0)).collect()).collect())
                    .collect();
                for p in 0..ctx {
                    slots.push((table[p / bs] * bs as u32 + (p % bs) as u32) as i64);
                    positions.push(p as u32);
                    for head in &per_head {
                        all_k.extend_from_slice(&head[p]);
                    }
                }
                tables.push(table);
                let held_keys = per_head.iter().map(|h| h.iter().map(&held).collect::<Result<Vec<_>>>()).collect::<Result<Vec<_>>>()?;
                keys_logical.push(held_keys);
            }
            // Write every key with one whole-context "prefill" step, then attend with the real chunks.
            let n = slots.len();
            let ctxs: Vec<usize> = seqs.iter().map(|s| s.1).collect();
            let write_meta = AttentionMetadata::new(slots, positions, tables.clone(), ctxs.clone(), ctxs.clone(), bs, &Device::Cpu)?;
            let k = Tensor::from_vec(all_k, (n, kv_heads, hd), &Device::Cpu)?;
            write_kv(layer, &k, &k.zeros_like()?, &write_meta)?;
            let q_lens: Vec<usize> = seqs.iter().map(|s| s.0).collect();
            let t: usize = q_lens.iter().sum();
            let positions: Vec<u32> = seqs.iter().flat_map(|&(q, c)| (c - q..c).map(|p| p as u32)).collect();
            let meta = AttentionMetadata::new(vec![-1; t], positions, tables, q_lens.clone(), ctxs, bs, &Device::Cpu)?;
            let qv: Vec<f32> = (0..t * heads * hd).map(|_| rng.random_range(-2.0..2.0)).collect();
            let q = Tensor::from_vec(qv.clone(), (t, heads, hd), &Device::Cpu)?;
            let voters = [MassVoter { seq: 0, first_query: 12 }, MassVoter { seq: 1, first_query: 0 }, MassVoter { seq: 2, first_query: 0 }];
            let got = attention_mass(&q, layer, &meta, 0.25, &voters)?.to_vec3::<f32>()?;
            let mut token0 = 0;
            for (i, v) in voters.iter().enumerate() {
                let want = naive(&qv, &keys_logical[v.seq], heads, kv_heads, hd, 0.25, q_lens[v.seq], token0, v.first_query);
                token0 += q_lens[v.seq];
                for g in 0..kv_heads {
                    for (slot, (&a, &b)) in got[i][g].iter().zip(&want[g]).enumerate() {
                        assert!((a - b).abs() < 1e-4, "{dtype} voter {i} head {g} slot {slot}: {a} vs {b}");
                    }
                    // Every voting row's probabilities sum to one: total mass = rows × group.
                    let total: f32 = got[i][g].iter().sum();
                    let rows = (q_lens[v.seq] - v.first_query) * group;
                    assert!((total - rows as f32).abs() < 1e-3, "total {total} vs {rows}");
                    assert!(got[i][g][seqs[v.seq].1..].iter().all(|&x| x == 0.0), "no mass past the context");
                }
            }
          }
        }
        Ok(())
    }

    #[test]
    fn bad_voters_are_errors() -> Result<()> {
        let shape = KvCacheShape { num_blocks: 2, num_kv_heads: 1, block_size: 16, head_dim: 4 };
        let cache = PagedKvCache::new(1, shape, KvDtype::F32, &Device::Cpu)?;
        let meta = AttentionMetadata::new(vec![-1], vec![3], vec![vec![0]], vec![1], vec![4], 16, &Device::Cpu)?;
        let q = Tensor::zeros((1, 1, 4), DType::F32, &Device::Cpu)?;
        assert!(attention_mass(&q, &cache.layers[0], &meta, 1.0, &[]).is_err());
        assert!(attention_mass(&q, &cache.layers[0], &meta, 1.0, &[MassVoter { seq: 1, first_query: 0 }]).is_err());
        assert!(attention_mass(&q, &cache.layers[0], &meta, 1.0, &[MassVoter { seq: 0, first_query: 1 }]).is_err());
        Ok(())
    }
}
