//! Paged decode on a GPU: achieved K/V read bandwidth (GB/s) of one decode step, printed next to
//! the device's device-to-device copy bandwidth, for a few batch × context shapes. Needs the
//! `cuda` feature and a GPU (`cargo bench -p kvault-kernels --features cuda`).

use std::time::Instant;

use candle_core::{DType, Device, Result, Tensor};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use kvault_kernels::{paged_attention, AttentionMetadata, KvCacheShape, LayerKvCache};

const BLOCK: usize = 16;
const HEAD_DIM: usize = 128;
const KV_HEADS: usize = 8;
const HEADS: usize = 32;

struct Step {
    q: Tensor,
    cache: LayerKvCache,
    meta: AttentionMetadata,
    kv_bytes: u64,
}

fn decode_step(dev: &Device, batch: usize, context: usize) -> Result<Step> {
    let blocks_per_seq = context.div_ceil(BLOCK);
    let shape = KvCacheShape { num_blocks: batch * blocks_per_seq, num_kv_heads: KV_HEADS, block_size: BLOCK, head_dim: HEAD_DIM };
    let kv = shape.kv_dims();
    let cache = LayerKvCache {
        key: Tensor::randn(0f32, 1.0, kv.as_slice(), dev)?.to_dtype(DType::BF16)?,
        value: Tensor::randn(0f32, 1.0, kv.as_slice(), dev)?.to_dtype(DType::BF16)?,
        slot_pos: Tensor::full(-1i32, shape.slot_dims().as_slice(), dev)?,
        slot_score: Tensor::zeros(shape.slot_dims().as_slice(), DType::F32, dev)?,
    };
    let tables: Vec<Vec<u32>> =
        (0..batch).map(|s| ((s * blocks_per_seq) as u32..((s + 1) * blocks_per_seq) as u32).collect()).collect();
    let slots = tables.iter().map(|t| (t[(context - 1) / BLOCK] as usize * BLOCK + (context - 1) % BLOCK) as i64).collect();
    let meta = AttentionMetadata::new(slots, vec![context as u32 - 1; batch], tables, vec![1; batch], vec![context; batch], BLOCK, dev)?;
    let q = Tensor::randn(0f32, 1.0, (batch, HEADS, HEAD_DIM), dev)?.to_dtype(DType::BF16)?;
    let kv_bytes = (2 * batch * context * KV_HEADS * HEAD_DIM * 2) as u64;
    Ok(Step { q, cache, meta, kv_bytes })
}

/// Device-to-device copy bandwidth (read + write bytes per second) of a 1 GiB buffer.
fn copy_bandwidth(dev: &Device) -> Result<f64> {
    let src = Tensor::zeros(256 * 1024 * 1024, DType::F32, dev)?;
    let _warm = src.copy()?;
    dev.synchronize()?;
    let start = Instant::now();
    let reps = 10;
    for _ in 0..reps {
        let _c = src.copy()?;
    }
    dev.synchronize()?;
    Ok(2.0 * reps as f64 * 1024.0 * 1024.0 * 1024.0 / start.elapsed().as_secs_f64() / 1e9)
}

fn bench(c: &mut Criterion) {
    let dev = kvault_kernels::cuda::open_device(0).unwrap_or_else(|e| panic!("this benchmark needs a CUDA GPU: {e}"));
    let copy = copy_bandwidth(&dev).unwrap_or_else(|e| panic!("copy bandwidth: {e}"));
    eprintln!("device copy bandwidth: {copy:.0} GB/s");
    let mut group = c.benchmark_group("paged_decode_bf16_bs16_d128_gqa4");
    for (batch, context) in [(1, 4096), (8, 2048), (32, 1024), (64, 4096)] {
        let step = decode_step(&dev, batch, context).unwrap_or_else(|e| panic!("setup: {e}"));
        group.throughput(Throughput::Bytes(step.kv_bytes));
        group.bench_function(format!("batch{batch}_ctx{context}"), |b| {
            b.iter_custom(|iters| {
                dev.synchronize().expect("sync");
                let start = Instant::now();
                for _ in 0..iters {
                    paged_attention(&step.q, &step.cache, &step.meta, 0.088).expect("decode");
                }
                dev.synchronize().expect("sync");
                let elapsed = start.elapsed();
                let gbs = step.kv_bytes as f64 * iters as f64 / elapsed.as_secs_f64() / 1e9;
                eprintln!("batch {batch} ctx {context}: {gbs:.0} GB/s of K/V ({:.0}% of copy bandwidth)", 100.0 * gbs / copy);
                elapsed
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
