//! Planted-needle tests of the eviction machinery on synthetic queries and keys (no model): the
//! real `write_kv`, `paged_attention`, `attention_mass` and `move_slots` ops run one layer of a
//! 400-token sequence through chunked prefill and decode under a 5% budget, with one key that
//! every query hits. H2O and SnapKV must keep it, StreamingLLM must drop it, and after every
//! step the cache must hold exactly the kept tokens in slots `[0, held)`: what attention sees
//! equals a naive attention over the kept tokens.

use candle_core::{Device, Tensor};
use kvault_kernels::{paged_attention, write_kv, AttentionMetadata, KvCacheShape, KvDtype, LayerKvCache, PagedKvCache};
use kvault_models::model::{AttentionObserver, LayerAttention};
use rand::{rngs::StdRng, Rng, SeedableRng};

use super::evictor::{BudgetedSeq, Evictor};
use super::rule::{rule_for, Chunk};
use super::slots::RequestSlots;
use super::spec::{KvPolicy, Pooling};

const HD: usize = 16;
const GROUP: usize = 2;
const BS: usize = 16;
const LEN: usize = 400;
const NEEDLE: usize = 150;
const BUDGET: usize = 20; // 5% of the sequence
const SCALE: f32 = 0.25;

struct Synthetic {
    keys: Vec<Vec<f32>>,
    values: Vec<Vec<f32>>,
    queries: Vec<Vec<f32>>, // per position, GROUP heads back to back
}

fn synthetic() -> Synthetic {
    let mut rng = StdRng::seed_from_u64(5);
    let mut noise = |s: f32| -> Vec<f32> { (0..HD).map(|_| rng.random_range(-s..s)).collect() };
    let needle: Vec<f32> = (0..HD).map(|i| if i % 2 == 0 { 1.0 } else { -1.0 }).collect();
    let keys = (0..LEN).map(|p| if p == NEEDLE { needle.iter().map(|x| 4.0 * x).collect() } else { noise(0.5) }).collect();
    let values = (0..LEN).map(|_| noise(1.0)).collect();
    // Every query leans towards the needle's direction (its tokens attend it once it exists).
    let queries = (0..LEN)
        .map(|_| (0..GROUP).flat_map(|_| needle.iter().zip(noise(0.3)).map(|(n, e)| 2.0 * n + e).collect::<Vec<_>>()).collect())
        .collect();
    Synthetic { keys, values, queries }
}

/// Naive attention of `q` (one head) over the given (key, value) pairs.
fn naive(q: &[f32], kv: &[(&Vec<f32>, &Vec<f32>)]) -> Vec<f32> {
    let s: Vec<f32> = kv.iter().map(|(k, _)| SCALE * q.iter().zip(k.iter()).map(|(a, b)| a * b).sum::<f32>()).collect();
    let m = s.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    let z: f32 = s.iter().map(|x| (x - m).exp()).sum();
    let mut out = vec![0f32; HD];
    for (w, (_, v)) in s.iter().zip(kv) {
        for (o, x) in out.iter_mut().zip(v.iter()) {
            *o += (w - m).exp() / z * x;
        }
    }
    out
}

/// Runs the sequence under `policy`; returns the positions held after every step.
fn run(policy: KvPolicy) -> Vec<Vec<u32>> {
    let data = synthetic();
    let shape = KvCacheShape { num_blocks: 4, num_kv_heads: 1, block_size: BS, head_dim: HD };
    let cache = PagedKvCache::new(1, shape, KvDtype::F32, &Device::Cpu).unwrap();
    let layer: &LayerKvCache = &cache.layers[0];
    let table: Vec<u32> = vec![2, 0, 3, 1];
    let rule = rule_for(&policy).unwrap();
    let mut slots = RequestSlots::new(1, 1);
    let (mut pos, mut held) = (0usize, 0usize);
    let prompt_len = LEN - 20;
    let mut history = Vec::new();
    while pos < LEN {
        let q_len = if pos < prompt_len { BUDGET.min(prompt_len - pos) } else { 1 };
        let ctx = held + q_len;
        let slot_ids: Vec<i64> = (held..ctx).map(|s| (table[s / BS] as usize * BS + s % BS) as i64).collect();
        let positions: Vec<u32> = (pos..pos + q_len).map(|p| p as u32).collect();
        let meta = AttentionMetadata::new(slot_ids, positions, vec![table.clone()], vec![q_len], vec![ctx], BS, &Device::Cpu).unwrap();
        let rows = |v: &Vec<Vec<f32>>| -> Vec<f32> { v[pos..pos + q_len].iter().flatten().copied().collect() };
        let k = Tensor::from_vec(rows(&data.keys), (q_len, 1, HD), &Device::Cpu).unwrap();
        let v = Tensor::from_vec(rows(&data.values), (q_len, 1, HD), &Device::Cpu).unwrap();
        let q = Tensor::from_vec(rows(&data.queries), (q_len, GROUP, HD), &Device::Cpu).unwrap();
        write_kv(layer, &k, &v, &meta).unwrap();
        let out = paged_attention(&q, layer, &meta, SCALE).unwrap().to_vec3::<f32>().unwrap();
        // What attention saw for the chunk's last query: every held token plus the chunk.
        let visible: Vec<usize> = slots.layers[0][0].pos.iter().map(|&p| p as usize).chain(pos..pos + q_len).collect();
        let kv: Vec<_> = visible.iter().map(|&p| (&data.keys[p], &data.values[p])).collect();
        let want = naive(&data.queries[pos + q_len - 1][..HD], &kv);
        for (a, b) in out[q_len - 1][0].iter().zip(&want) {
            assert!((a - b).abs() < 1e-4, "{}: attention at position {pos} sees other tokens than the kept ones", policy.describe());
        }
        let mut evictor = Evictor {
            seqs: vec![BudgetedSeq {
                seq: 0,
                budget: BUDGET,
                start_pos: pos,
                held_before: held,
                chunk: Chunk { q_len, in_prompt: pos < prompt_len },
                block_table: &table,
                rule: rule.as_ref(),
                slots: &mut slots,
            }],
            block_size: BS,
            gates: None,
        };
        evictor.after_attention(LayerAttention { layer: 0, q: &q, hidden: &q, cache: layer, meta: &meta, softmax_scale: SCALE }).unwrap();
        pos += q_len;
        held = ctx.min(BUDGET);
        // The cache's slot_pos for slots [0, held) is exactly the host's picture: no held slot
        // is empty, none holds a token twice.
        let device_pos: Vec<i32> = layer.slot_pos.flatten_all().unwrap().to_vec1().unwrap();
        let host = &slots.layers[0][0].pos;
        assert_eq!(host.len(), held);
        for (s, &p) in host.iter().enumerate() {
            assert_eq!(device_pos[table[s / BS] as usize * BS + s % BS], p as i32, "slot {s}");
        }
        let mut sorted = host.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), held, "a token is held twice");
        history.push(sorted);
    }
    history
}

fn kept_needle_throughout(history: &[Vec<u32>]) -> bool {
    history.iter().filter(|h| h.last().is_some_and(|&p| p as usize >= NEEDLE)).all(|h| h.contains(&(NEEDLE as u32)))
}

#[test]
fn h2o_keeps_the_key_every_query_hits_under_a_5_percent_budget() {
    let history = run(KvPolicy::H2o { budget: BUDGET, recent_window: BUDGET / 2 });
    assert!(kept_needle_throughout(&history), "H2O dropped the needle");
}

#[test]
fn snapkv_keeps_the_key_every_query_hits_under_a_5_percent_budget() {
    for pooling in [Pooling::Avg, Pooling::Max] {
        let history = run(KvPolicy::SnapKv { budget: BUDGET, window: 4, kernel: 5, pooling });
        assert!(kept_needle_throughout(&history), "SnapKV ({pooling:?}) dropped the needle");
    }
}

#[test]
fn streaming_drops_the_needle_and_keeps_sinks_and_recent_tokens() {
    let history = run(KvPolicy::Streaming { budget: BUDGET, sink_tokens: 4 });
    let last = history.last().unwrap();
    assert!(!last.contains(&(NEEDLE as u32)));
    let want: Vec<u32> = (0..4).chain(LEN as u32 - 16..LEN as u32).collect();
    assert_eq!(last, &want);
}
