//! Paged decode attention on the CPU, against this machine's memory bandwidth measured in the
//! same run.
//!
//! First `memory_bandwidth`: a parallel sum (pure reads, as decode attention is) and a parallel
//! copy over 1 GiB buffers, on the same rayon pool as the kernel. Then `paged_attention_decode`:
//! one decode step of `kvault_kernels::paged_attention` (f32 cache, block 16, shuffled block ids)
//! for a SmolLM2-135M-like shape (9 query / 3 KV heads, head_dim 64) and a Llama-7B-like one
//! (32 / 32 / 128), batch 1 and 8, context 512 / 2K / 8K. Throughput is the K+V bytes a step
//! must read (`batch × context × 2 × kv_heads × head_dim × 4`) per second. Each step reads a
//! different layer's cache (round robin over ≥ 512 MiB), so K/V comes from DRAM as in a real
//! forward pass. A summary at the end prints achieved GB/s and its share of the read bandwidth,
//! both the reference group's and a spot check taken just before each case (the machine is
//! shared: load drifts between the reference and a case, the spot check tracks it).
//!
//! Run: `cargo bench -p kvault-benches --bench paged_attention -- --warm-up-time 1 --measurement-time 3`
//! (needs ~3.5 GB of free RAM: the 1 GiB reference buffer plus the Llama-7B batch-8 8K cache).

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, SamplingMode, Throughput};
use kvault_benches::bandwidth::{filled_buffer, parallel_copy, parallel_sum, BUFFER_BYTES};
use kvault_benches::paged_batch::{PagedBatch, SeqSpec, DRAM_RESIDENT_BYTES, LLAMA_7B, SMOLLM2_135M};
use kvault_benches::timings::{gb_per_s, Timings};
use kvault_kernels::paged_attention;

/// Criterion's minimum: the largest cases take ~0.2 s per step, so more samples would blow the
/// measurement time without tightening the median much.
const SAMPLES: usize = 10;

/// Times `iters` runs of `f` and keeps the sample for the summary.
fn timed(timings: &mut Timings, iters: u64, mut f: impl FnMut()) -> Duration {
    let start = Instant::now();
    for _ in 0..iters {
        f();
    }
    let elapsed = start.elapsed();
    timings.record(iters, elapsed);
    elapsed
}

/// Runs the bandwidth group; returns the parallel read bandwidth in GB/s (None if filtered out)
/// and the read buffer, kept for the spot checks next to each attention case.
fn memory_bandwidth(c: &mut Criterion) -> (Option<f64>, Vec<f32>) {
    let mut group = c.benchmark_group("memory_bandwidth");
    group.sample_size(SAMPLES).sampling_mode(SamplingMode::Flat);

    let src = filled_buffer(BUFFER_BYTES);
    let mut read = Timings::default();
    group.throughput(Throughput::BytesDecimal(BUFFER_BYTES as u64));
    group.bench_function("read_sum_1GiB", |b| {
        b.iter_custom(|iters| timed(&mut read, iters, || {
            black_box(parallel_sum(black_box(&src)));
        }))
    });

    let half = BUFFER_BYTES / 2;
    let (copy_src, mut copy_dst) = (&src[..half / 4], filled_buffer(half));
    let mut copy = Timings::default();
    group.throughput(Throughput::BytesDecimal(2 * half as u64));
    group.bench_function("copy_512MiB", |b| {
        b.iter_custom(|iters| timed(&mut copy, iters, || {
            parallel_copy(black_box(&mut copy_dst), black_box(copy_src));
        }))
    });
    group.finish();

    let read_gbs = read.median_per_iter(SAMPLES).map(|t| gb_per_s(BUFFER_BYTES as u64, t));
    let copy_gbs = copy.median_per_iter(SAMPLES).map(|t| gb_per_s(2 * half as u64, t));
    let show = |x: Option<f64>| x.map_or("skipped".to_string(), |g| format!("{g:.1} GB/s"));
    println!(
        "memory bandwidth ({} rayon threads): read {}, copy {}",
        rayon::current_num_threads(),
        show(read_gbs),
        show(copy_gbs)
    );
    (read_gbs, src)
}

/// Read bandwidth right now: median of a few passes over `buf`. The machine is shared, so the
/// load during one attention case can differ from the load during the reference group; a check
/// next to each case keeps the ratio honest.
fn spot_read_bandwidth(buf: &[f32]) -> f64 {
    let mut t = Timings::default();
    for _ in 0..5 {
        timed(&mut t, 1, || {
            black_box(parallel_sum(black_box(buf)));
        });
    }
    let bytes = std::mem::size_of_val(buf) as u64;
    t.median_per_iter(5).map_or(0.0, |d| gb_per_s(bytes, d))
}

struct Row {
    label: String,
    bytes: u64,
    per_step: Option<Duration>,
    /// Read bandwidth measured just before the case (GB/s).
    spot_bandwidth: f64,
}

fn decode(c: &mut Criterion) {
    let (bandwidth, buffer) = memory_bandwidth(c);
    let mut rows = Vec::new();
    let mut group = c.benchmark_group("paged_attention_decode");
    group.sample_size(SAMPLES).sampling_mode(SamplingMode::Flat);
    for shape in [SMOLLM2_135M, LLAMA_7B] {
        for batch in [1usize, 8] {
            for context in [512usize, 2048, 8192] {
                let seqs = vec![SeqSpec::decode(context); batch];
                let step = PagedBatch::new(shape, &seqs, DRAM_RESIDENT_BYTES, 7)
                    .unwrap_or_else(|e| panic!("building the {} batch: {e}", shape.name));
                let bytes = step.kv_bytes_read();
                let spot_bandwidth = spot_read_bandwidth(&buffer);
                let scale = shape.softmax_scale();
                let mut timings = Timings::default();
                let mut layer = 0usize;
                let id = format!("b{batch}/ctx{context}");
                group.throughput(Throughput::BytesDecimal(bytes));
                group.bench_function(BenchmarkId::new(shape.name, &id), |b| {
                    b.iter_custom(|iters| timed(&mut timings, iters, || {
                        let out = paged_attention(&step.q, step.layer(layer), &step.meta, scale)
                            .unwrap_or_else(|e| panic!("paged_attention: {e}"));
                        layer += 1;
                        black_box(out);
                    }))
                });
                let per_step = timings.median_per_iter(SAMPLES);
                rows.push(Row { label: format!("{} {id}", shape.name), bytes, per_step, spot_bandwidth });
            }
        }
    }
    group.finish();
    print_summary(&rows, bandwidth);
}

fn print_summary(rows: &[Row], bandwidth: Option<f64>) {
    println!("\npaged decode attention, f32 K/V read from DRAM (median of {SAMPLES} samples)");
    println!(
        "{:<28} {:>8} {:>12} {:>7} {:>11} {:>9} {:>9}",
        "case", "K+V MB", "step", "GB/s", "of ref bw", "spot bw", "of spot"
    );
    for r in rows {
        let Some(t) = r.per_step else {
            println!("{:<28} skipped", r.label);
            continue;
        };
        let gbs = gb_per_s(r.bytes, t);
        let share = bandwidth.map_or("n/a".to_string(), |bw| format!("{:.0}%", 100.0 * gbs / bw));
        println!(
            "{:<28} {:>8.1} {:>9.3} ms {:>7.1} {:>11} {:>9.1} {:>8.0}%",
            r.label,
            r.bytes as f64 / 1e6,
            t.as_secs_f64() * 1e3,
            gbs,
            share,
            r.spot_bandwidth,
            100.0 * gbs / r.spot_bandwidth
        );
    }
    if let Some(bw) = bandwidth {
        println!("ref bw: memory_bandwidth/read_sum_1GiB above ({bw:.1} GB/s); spot bw: 5 passes of the same read just before each case");
    }
}

criterion_group!(benches, decode);
criterion_main!(benches);
