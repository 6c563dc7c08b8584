//! `kvault_engine::sampler::sample` on one logits row: what choosing the next token costs per
//! sequence and step, at SmolLM2's vocabulary (49152) and Llama-3's (128256).
//!
//! Variants: `greedy` (argmax); `temperature` (vLLM's default: T = 1, no truncation, one full
//! `exp` pass); `top_k50_top_p0.9_t0.8` (a typical chat setting); `penalties` (the same plus
//! repetition 1.1, presence 0.5 and frequency 0.5 over a 1024-token prompt and 256 outputs).
//! Logits are N(0, 2) with 32 peaked tokens (8–16): peaked like a trained model's, where a
//! handful of tokens hold most of the mass and top-p keeps few candidates. Each iteration
//! samples a fresh copy of the row (copying is not timed), since penalties rewrite it in place.
//!
//! Run: `cargo bench -p kvault-benches --bench sampler -- --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion};
use kvault_engine::sampler::{sample, SamplerState, SamplingParams};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Normal};

const VOCABS: [usize; 2] = [49_152, 128_256];
const PEAKS: usize = 32;
const EOS: u32 = 2;

fn logits(vocab: usize, rng: &mut StdRng) -> Vec<f32> {
    let normal = Normal::new(0f32, 2.0).unwrap_or_else(|e| panic!("normal: {e}"));
    let mut row: Vec<f32> = (0..vocab).map(|_| normal.sample(rng)).collect();
    for _ in 0..PEAKS {
        row[rng.random_range(0..vocab)] = rng.random_range(8.0f32..16.0);
    }
    row
}

fn variants() -> Vec<(&'static str, SamplingParams)> {
    let seeded = SamplingParams { seed: Some(0), ..SamplingParams::default() };
    let chat = SamplingParams { temperature: 0.8, top_k: 50, top_p: 0.9, ..seeded.clone() };
    vec![
        ("greedy", SamplingParams { temperature: 0.0, ..seeded.clone() }),
        ("temperature", seeded),
        ("top_k50_top_p0.9_t0.8", chat.clone()),
        (
            "penalties",
            SamplingParams { repetition_penalty: 1.1, presence_penalty: 0.5, frequency_penalty: 0.5, ..chat },
        ),
    ]
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("sampler");
    // Millisecond-scale cases: 50 samples fit a 3 s measurement without criterion's warning.
    group.sample_size(50);
    let mut rng = StdRng::seed_from_u64(3);
    for vocab in VOCABS {
        let row = logits(vocab, &mut rng);
        let prompt: Vec<u32> = (0..1024).map(|_| rng.random_range(0..vocab as u32)).collect();
        let output: Vec<u32> = (0..256).map(|_| rng.random_range(0..vocab as u32)).collect();
        for (name, params) in variants() {
            params.validate(vocab).unwrap_or_else(|e| panic!("{name}: {e}"));
            let mut state = SamplerState::new(&params, &[EOS]);
            group.bench_function(BenchmarkId::new(name, vocab), |b| {
                b.iter_batched_ref(
                    || row.clone(),
                    |logits| {
                        let s = sample(logits, &params, &mut state, &prompt, &output)
                            .unwrap_or_else(|e| panic!("sample: {e}"));
                        black_box(s.token)
                    },
                    // A few rows at a time: a whole batch of 128k-entry copies would not fit in memory.
                    BatchSize::NumIterations(8),
                )
            });
        }
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
