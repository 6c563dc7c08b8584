//! Quantized matmul on the CPU: kvault's `QuantizedMatrix` (f32 activations, weights never
//! expanded to memory; and with `MatmulPrecision::Int8`, activations rounded to 8 bits and
//! integer dot products) next to candle's `QMatMul` (activations quantized to Q8), on SmolLM2-135M
//! shapes, in the same run.
//!
//! Throughput is reported in bytes of quantized weights streamed per call, so at batch 1 the
//! GB/s figure is the achieved weight bandwidth. `decode_all_matrices` runs every matrix of the
//! real SmolLM2-135M Q4_1 GGUF once at batch 1 — the matmul share of one decode step.
//!
//! Run when the machine is quiet (check `uptime`): `cargo bench --release -p kvault-benches --bench qmatmul`.

use std::sync::Arc;

use candle_core::quantized::{gguf_file, GgmlDType, QMatMul, QTensor};
use candle_core::{Device, Module, Tensor};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use rand::{Rng, SeedableRng};

const GGUF: &str =
    concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf");

fn random(shape: (usize, usize), seed: u64) -> Tensor {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let v: Vec<f32> = (0..shape.0 * shape.1).map(|_| rng.random_range(-1.0f32..1.0)).collect();
    Tensor::from_vec(v, shape, &Device::Cpu).expect("random tensor")
}

struct Contenders {
    ours: kvault_kernels::QuantizedMatrix,
    ours_int8: kvault_kernels::QuantizedMatrix,
    candle: QMatMul,
    weight_bytes: u64,
}

fn contenders(q: Arc<QTensor>) -> Contenders {
    Contenders {
        ours: kvault_kernels::QuantizedMatrix::new(q.clone()).expect("ours"),
        ours_int8: kvault_kernels::QuantizedMatrix::with_precision(q.clone(), kvault_kernels::MatmulPrecision::Int8)
            .expect("ours int8"),
        weight_bytes: q.storage_size_in_bytes() as u64,
        candle: QMatMul::from_arc(q).expect("candle"),
    }
}

fn shapes(c: &mut Criterion) {
    // (tokens, out_dim, in_dim, format): decode projections, the tied LM head, a prefill chunk.
    let cases: [(usize, usize, usize, GgmlDType); 8] = [
        (1, 1536, 576, GgmlDType::Q4_1),
        (1, 576, 1536, GgmlDType::Q4_1),
        (1, 49152, 576, GgmlDType::Q8_0),
        (4, 1536, 576, GgmlDType::Q4_1),
        (8, 1536, 576, GgmlDType::Q4_1),
        (128, 1536, 576, GgmlDType::Q4_1),
        (1, 1536, 576, GgmlDType::Q4K),
        (128, 1536, 576, GgmlDType::Q4K),
    ];
    for (m, n, k, dtype) in cases {
        // Q4_K needs 256-element rows: pad the reduction dimension for it.
        let k = if dtype.block_size() == 256 { k.div_ceil(256) * 256 } else { k };
        let q = Arc::new(QTensor::quantize(&random((n, k), 1), dtype).expect("quantize"));
        let all = contenders(q);
        let x = random((m, k), 2);
        let mut g = c.benchmark_group(format!("qmatmul/{dtype:?}/[{m},{k}]x[{n},{k}]T"));
        g.throughput(Throughput::Bytes(all.weight_bytes));
        g.bench_function("kvault_qmatmul", |b| b.iter(|| all.ours.matmul(&x).expect("ours")));
        g.bench_function("kvault_qmatmul_int8", |b| b.iter(|| all.ours_int8.matmul(&x).expect("ours int8")));
        g.bench_function("candle_qmatmul", |b| b.iter(|| all.candle.forward(&x).expect("candle")));
        g.finish();
    }
}

fn decode_all_matrices(c: &mut Criterion) {
    let mut file = std::fs::File::open(GGUF).unwrap_or_else(|e| panic!("test model missing at {GGUF}: {e}"));
    let content = gguf_file::Content::read(&mut file).expect("gguf header");
    let mut names: Vec<&String> = content.tensor_infos.keys().collect();
    names.sort();
    let mut all = Vec::new();
    for name in names {
        let q = content.tensor(&mut file, name, &Device::Cpu).expect("gguf tensor");
        if q.shape().rank() == 2 && q.dtype() != GgmlDType::F32 {
            all.push(contenders(Arc::new(q)));
        }
    }
    let bytes: u64 = all.iter().map(|m| m.weight_bytes).sum();
    let xs: Vec<Tensor> = all.iter().map(|m| random((1, m.ours.in_dim()), 3)).collect();
    let mut g = c.benchmark_group(format!("qmatmul/smollm2_135m_all_{}_matrices_batch1", all.len()));
    g.throughput(Throughput::Bytes(bytes));
    g.sample_size(20);
    g.bench_function(BenchmarkId::from_parameter("kvault_qmatmul"), |b| {
        b.iter(|| all.iter().zip(&xs).for_each(|(m, x)| drop(m.ours.matmul(x).expect("ours"))))
    });
    g.bench_function(BenchmarkId::from_parameter("kvault_qmatmul_int8"), |b| {
        b.iter(|| all.iter().zip(&xs).for_each(|(m, x)| drop(m.ours_int8.matmul(x).expect("ours int8"))))
    });
    g.bench_function(BenchmarkId::from_parameter("candle_qmatmul"), |b| {
        b.iter(|| all.iter().zip(&xs).for_each(|(m, x)| drop(m.candle.forward(x).expect("candle"))))
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(std::time::Duration::from_millis(500))
        .measurement_time(std::time::Duration::from_secs(2))
        .sample_size(30);
    targets = shapes, decode_all_matrices
}
criterion_main!(benches);
