//! One decode row on the CPU, SmolLM2-135M attention geometry (9 query heads, 3 KV heads,
//! head_dim 64, blocks of 16): `paged_attention` (every head attends the whole context) against
//! `paged_attention_sparse` in a layer where 1 of the 3 KV heads is retrieval and 2 attend a
//! budget of 256/512/1024 tokens, alone and followed by that layer's `select_blocks` (the whole
//! per-layer cost of LycheeDecode). Contexts 4K and 8K, f32 and int8 caches. Sink and recent
//! windows are the engine's defaults: max(1 block, budget/8) and max(1 block, budget/4).
//!
//! Before criterion's runs it prints each case's fastest of 200 interleaved calls (`min …` lines),
//! the figure to compare on a shared machine.
//!
//! `cargo bench -p kvault-kernels --bench sparse_decode_cpu`

use std::sync::Arc;
use std::time::{Duration, Instant};

use candle_core::{Device, Result, Tensor};
use criterion::{criterion_group, criterion_main, Criterion};
use kvault_kernels::{
    paged_attention, paged_attention_sparse, select_blocks, write_kv, AttentionMetadata, HeadRoles, KvCacheShape, KvDtype, LayerKvCache,
    SparseDecodePlan,
};

const HEADS: usize = 9;
const KV_HEADS: usize = 3;
const HEAD_DIM: usize = 64;
const BLOCK: usize = 16;
const SCALE: f32 = 0.125;

/// A cache holding `context` random tokens of one sequence, and the metadata of its decode row.
fn decode_row(dtype: KvDtype, context: usize, dev: &Device) -> Result<(LayerKvCache, AttentionMetadata, Tensor)> {
    let blocks = context.div_ceil(BLOCK);
    let shape = KvCacheShape { num_blocks: blocks, num_kv_heads: KV_HEADS, block_size: BLOCK, head_dim: HEAD_DIM };
    let cache = LayerKvCache::new(shape, dtype, dev)?;
    let table: Vec<u32> = (0..blocks as u32).collect();
    let prefill = AttentionMetadata::new(
        (0..context as i64).collect(),
        (0..context as u32).collect(),
        vec![table.clone()],
        vec![context],
        vec![context],
        BLOCK,
        dev,
    )?;
    let kv = || Tensor::randn(0f32, 1.0, (context, KV_HEADS, HEAD_DIM), dev);
    write_kv(&cache, &kv()?, &kv()?, &prefill)?;
    let decode = AttentionMetadata::new(vec![-1], vec![context as u32 - 1], vec![table], vec![1], vec![context], BLOCK, dev)?;
    let q = Tensor::randn(0f32, 1.0, (1, HEADS, HEAD_DIM), dev)?;
    Ok((cache, decode, q))
}

/// One measured call, by name.
type Case<'a> = (String, Box<dyn Fn() + 'a>);

fn bench(c: &mut Criterion) {
    let dev = Device::Cpu;
    // Layer 0 all retrieval (it chooses the selection layer 1 reads); layer 1: KV head 0 retrieval.
    let roles = Arc::new(HeadRoles::new(2, KV_HEADS, vec![true, true, true, true, false, false]).expect("roles"));
    for dtype in [KvDtype::F32, KvDtype::Int8] {
        for context in [4096, 8192] {
            let (cache, meta, q) = decode_row(dtype, context, &dev).expect("setup");
            let (cache, meta, q) = (&cache, &meta, &q);
            let mut cases: Vec<Case> =
                vec![("paged_attention".into(), Box::new(move || drop(paged_attention(q, cache, meta, SCALE).expect("dense"))))];
            for budget in [256usize, 512, 1024] {
                let blocks = (budget / BLOCK) as u32;
                let (sink, recent) = ((blocks / 8).max(1), (blocks / 4).max(1));
                let plan = SparseDecodePlan::new(roles.clone(), vec![blocks], vec![sink], vec![recent], meta, &dev).expect("plan");
                let initial = plan.initial_selection(meta).expect("initial selection");
                let selection = select_blocks(q, cache, meta, &plan, 0, &initial).expect("layer 0 choice");
                let (plan, selection) = (Arc::new(plan), Arc::new(selection));
                let (p, s) = (plan.clone(), selection.clone());
                cases.push((
                    format!("sparse_budget{budget}"),
                    Box::new(move || drop(paged_attention_sparse(q, cache, meta, SCALE, &p, 1, &s).expect("sparse"))),
                ));
                cases.push((
                    format!("sparse_budget{budget}_with_select"),
                    Box::new(move || {
                        paged_attention_sparse(q, cache, meta, SCALE, &plan, 1, &selection).expect("sparse");
                        drop(select_blocks(q, cache, meta, &plan, 1, &selection).expect("select"));
                    }),
                ));
            }
            let name = format!("decode_{dtype}_ctx{context}");
            report_minima(&name, &cases);
            let mut group = c.benchmark_group(name);
            for (case, run) in &cases {
                group.bench_function(case.as_str(), |b| b.iter(run));
            }
            group.finish();
        }
    }
}

/// Fastest of many calls of each case, taken in turns: on a machine shared with other jobs the
/// minimum is the least disturbed figure, and taking turns exposes every case to the same load.
fn report_minima(group: &str, cases: &[Case]) {
    let mut best = vec![Duration::MAX; cases.len()];
    for _ in 0..200 {
        for ((_, run), best) in cases.iter().zip(&mut best) {
            let start = Instant::now();
            run();
            *best = (*best).min(start.elapsed());
        }
    }
    let dense = best[0].as_secs_f64();
    for ((case, _), t) in cases.iter().zip(&best) {
        eprintln!("min {group}/{case}: {:.0} µs ({:.2}x of paged_attention)", t.as_secs_f64() * 1e6, t.as_secs_f64() / dense);
    }
}

fn quiet() -> Criterion {
    Criterion::default().sample_size(20).warm_up_time(Duration::from_millis(300)).measurement_time(Duration::from_secs(2))
}

criterion_group! { name = benches; config = quiet(); targets = bench }
criterion_main!(benches);
