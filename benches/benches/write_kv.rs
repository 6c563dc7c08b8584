//! `kvault_kernels::write_kv` on the CPU: scattering one step's new keys and values (and their
//! positions) into the paged cache.
//!
//! Cases: a prefill chunk of 512 tokens (one sequence) and a decode batch of 32 rows (one token
//! each, context 256), for the SmolLM2-135M-like shape (3 KV heads, head_dim 64) and the
//! Llama-7B-like one (32 KV heads, head_dim 128), f32 cache, block 16, shuffled block ids. Each
//! step writes a different layer's cache (round robin over ≥ 512 MiB) so the destination lines
//! come from DRAM, as in a forward pass. Throughput is the K+V bytes written.
//!
//! Run: `cargo bench -p kvault-benches --bench write_kv -- --warm-up-time 1 --measurement-time 3`

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use kvault_benches::paged_batch::{PagedBatch, SeqSpec, DRAM_RESIDENT_BYTES, LLAMA_7B, SMOLLM2_135M};
use kvault_kernels::write_kv;

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("write_kv");
    // Millisecond-scale cases: 50 samples fit a 3 s measurement without criterion's warning.
    group.sample_size(50);
    let cases: [(&str, Vec<SeqSpec>); 2] =
        [("prefill_chunk512", vec![SeqSpec::prefill(512)]), ("decode_batch32", vec![SeqSpec::decode(256); 32])];
    for shape in [SMOLLM2_135M, LLAMA_7B] {
        for (name, seqs) in &cases {
            let step = PagedBatch::new(shape, seqs, DRAM_RESIDENT_BYTES, 11)
                .unwrap_or_else(|e| panic!("building the {} batch: {e}", shape.name));
            group.throughput(Throughput::BytesDecimal(step.kv_bytes_written()));
            let mut layer = 0usize;
            group.bench_function(BenchmarkId::new(shape.name, name), |b| {
                b.iter(|| {
                    write_kv(step.layer(layer), &step.k, &step.v, &step.meta)
                        .unwrap_or_else(|e| panic!("write_kv: {e}"));
                    layer += 1;
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
