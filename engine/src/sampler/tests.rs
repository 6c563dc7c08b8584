//! End-to-end tests of `sample` / `sample_batch`: order of transformations, reproducibility,
//! statistical sanity and raw logprobs.

use super::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn random_logits(vocab: usize, seed: u64) -> Vec<f32> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..vocab).map(|_| rng.random_range(-5.0f32..5.0)).collect()
}

fn draw_n(logits: &[f32], params: &SamplingParams, steps: usize) -> Vec<u32> {
    let mut state = SamplerState::new(params, &[]);
    (0..steps)
        .map(|_| {
            let mut row = logits.to_vec();
            sample(&mut row, params, &mut state, &[], &[])
                .expect("valid row")
                .token
        })
        .collect()
}

#[test]
fn greedy_takes_the_argmax_after_penalties_with_ties_to_lowest_id() {
    let p = SamplingParams::greedy();
    let mut s = SamplerState::new(&p, &[]);
    assert_eq!(
        sample(&mut [0.5, 2.0, 2.0, 1.0], &p, &mut s, &[], &[]).map(|x| x.token),
        Ok(1)
    );
    // Repetition penalty 4 on token 1 (seen in the prompt): 2.0 -> 0.5, so token 2 wins.
    let p = SamplingParams {
        repetition_penalty: 4.0,
        ..SamplingParams::greedy()
    };
    assert_eq!(
        sample(&mut [0.5, 2.0, 1.9, 1.0], &p, &mut s, &[1], &[]).map(|x| x.token),
        Ok(2)
    );
    // A logit bias applies before everything else.
    let p = SamplingParams {
        logit_bias: vec![(0, 3.0)],
        ..SamplingParams::greedy()
    };
    assert_eq!(
        sample(&mut [0.5, 2.0, 1.9, 1.0], &p, &mut s, &[], &[]).map(|x| x.token),
        Ok(0)
    );
}

#[test]
fn same_seed_gives_the_same_tokens() {
    let logits = random_logits(1000, 1);
    let p = SamplingParams {
        seed: Some(42),
        top_k: 50,
        top_p: 0.9,
        ..SamplingParams::default()
    };
    let a = draw_n(&logits, &p, 64);
    assert_eq!(a, draw_n(&logits, &p, 64));
    let other = SamplingParams {
        seed: Some(43),
        ..p
    };
    assert_ne!(a, draw_n(&logits, &other, 64));
}

#[test]
fn seeded_sequence_is_independent_of_batch_composition() {
    let vocab = 500;
    let seeded = SamplingParams {
        seed: Some(5),
        ..SamplingParams::default()
    };
    let noise = SamplingParams {
        seed: Some(99),
        top_k: 3,
        ..SamplingParams::default()
    };
    let target_row = random_logits(vocab, 2);
    // Alone.
    let mut alone = SamplerState::new(&seeded, &[]);
    let solo: Vec<u32> = (0..20)
        .map(|_| {
            sample(&mut target_row.clone(), &seeded, &mut alone, &[], &[])
                .expect("ok")
                .token
        })
        .collect();
    // In a batch of 9 (parallel path), at row 4, next to other seeded and unseeded rows.
    let mut states: Vec<SamplerState> = (0..9)
        .map(|i| {
            if i == 4 {
                SamplerState::new(&seeded, &[])
            } else {
                SamplerState::new(&noise, &[])
            }
        })
        .collect();
    let mut batched = Vec::new();
    for step in 0..20u64 {
        let mut logits: Vec<f32> = (0..9)
            .flat_map(|i| {
                if i == 4 {
                    target_row.clone()
                } else {
                    random_logits(vocab, 100 + step)
                }
            })
            .collect();
        let mut rows: Vec<SampleRow<'_>> = states
            .iter_mut()
            .enumerate()
            .map(|(i, state)| SampleRow {
                params: if i == 4 { &seeded } else { &noise },
                state,
                prompt_ids: &[],
                output_ids: &[],
            })
            .collect();
        let out = sample_batch(&mut logits, vocab, &mut rows).expect("shape");
        batched.push(out[4].as_ref().expect("ok").token);
    }
    assert_eq!(solo, batched);
}

#[test]
fn top_k_two_never_yields_the_third_token() {
    let logits = [3.0f32, 2.9, 2.8, 0.0];
    let p = SamplingParams {
        top_k: 2,
        seed: Some(0),
        ..SamplingParams::default()
    };
    let tokens = draw_n(&logits, &p, 3000);
    assert!(
        tokens.iter().all(|&t| t < 2),
        "only the two most likely tokens may appear"
    );
    assert!(
        tokens.contains(&0) && tokens.contains(&1),
        "both kept tokens appear"
    );
}

#[test]
fn sampled_frequencies_match_the_softmax_distribution() {
    // Probabilities 0.1, 0.2, 0.3, 0.4. With 20,000 draws each frequency lies within 5 standard
    // deviations (sd <= 0.0035) of its probability unless the sampler is biased.
    let logits: Vec<f32> = [1.0f32, 2.0, 3.0, 4.0].iter().map(|x| x.ln()).collect();
    let p = SamplingParams {
        seed: Some(11),
        ..SamplingParams::default()
    };
    let n = 20_000;
    let mut counts = [0usize; 4];
    for t in draw_n(&logits, &p, n) {
        counts[t as usize] += 1;
    }
    for (i, &c) in counts.iter().enumerate() {
        let freq = c as f64 / n as f64;
        let want = (i + 1) as f64 / 10.0;
        assert!((freq - want).abs() < 0.0175, "token {i}: {freq} vs {want}");
    }
}

#[test]
fn low_temperature_concentrates_and_zero_temperature_is_greedy() {
    let logits = [1.0f32, 1.5, 0.5];
    let cold = SamplingParams {
        temperature: 0.05,
        seed: Some(3),
        ..SamplingParams::default()
    };
    // At T = 0.05 token 1 beats token 0 by e^10: essentially always.
    assert!(draw_n(&logits, &cold, 200).iter().all(|&t| t == 1));
    let below_eps = SamplingParams {
        temperature: 1e-6,
        ..SamplingParams::default()
    };
    assert!(below_eps.is_greedy());
    assert!(draw_n(&logits, &below_eps, 5).iter().all(|&t| t == 1));
}

#[test]
fn logprobs_describe_the_raw_distribution_not_the_processed_one() {
    // Raw probabilities 0.1, 0.2, 0.3, 0.4. A bias makes token 0 the greedy choice, but its
    // reported logprob stays ln 0.1 and the top list stays the model's ranking.
    let mut logits: Vec<f32> = [1.0f32, 2.0, 3.0, 4.0].iter().map(|x| x.ln()).collect();
    let p = SamplingParams {
        logit_bias: vec![(0, 10.0)],
        logprobs: Some(2),
        temperature: 0.0,
        ..SamplingParams::default()
    };
    let mut s = SamplerState::new(&p, &[]);
    let out = sample(&mut logits, &p, &mut s, &[], &[]).expect("valid");
    assert_eq!(out.token, 0);
    let lp = out.logprob.expect("requested");
    assert!((lp - 0.1f32.ln()).abs() < 1e-5, "{lp}");
    let ids: Vec<u32> = out.top_logprobs.iter().map(|&(i, _)| i).collect();
    assert_eq!(ids, vec![3, 2]);
    assert!((out.top_logprobs[0].1 - 0.4f32.ln()).abs() < 1e-5);
}

#[test]
fn logprobs_zero_returns_chosen_only_and_none_returns_nothing() {
    let logits = [0.0f32, 0.0];
    let p = SamplingParams {
        logprobs: Some(0),
        ..SamplingParams::greedy()
    };
    let mut s = SamplerState::new(&p, &[]);
    let out = sample(&mut logits.clone(), &p, &mut s, &[], &[]).expect("valid");
    assert!((out.logprob.expect("requested") - 0.5f32.ln()).abs() < 1e-6);
    assert!(out.top_logprobs.is_empty());
    let p = SamplingParams::greedy();
    let out = sample(&mut logits.clone(), &p, &mut s, &[], &[]).expect("valid");
    assert_eq!((out.logprob, out.top_logprobs.len()), (None, 0));
}

#[test]
fn min_tokens_prevents_eos_until_reached() {
    let p = SamplingParams {
        min_tokens: 1,
        ..SamplingParams::greedy()
    };
    let mut s = SamplerState::new(&p, &[2]);
    let logits = [0.0f32, 1.0, 5.0];
    assert_eq!(
        sample(&mut logits.clone(), &p, &mut s, &[], &[]).map(|x| x.token),
        Ok(1)
    );
    assert_eq!(
        sample(&mut logits.clone(), &p, &mut s, &[], &[1]).map(|x| x.token),
        Ok(2)
    );
}

#[test]
fn broken_rows_are_errors_not_panics() {
    let p = SamplingParams::default();
    let mut s = SamplerState::new(&p, &[0]);
    assert_eq!(
        sample(&mut [], &p, &mut s, &[], &[]),
        Err(SampleError::EmptyLogits)
    );
    assert_eq!(
        sample(&mut [0.0, f32::NAN], &p, &mut s, &[], &[]),
        Err(SampleError::NonFiniteLogits(1))
    );
    assert_eq!(
        sample(&mut [f32::INFINITY], &p, &mut s, &[], &[]),
        Err(SampleError::NonFiniteLogits(0))
    );
    // The only token is EOS, masked by min_tokens: nothing left to sample.
    let masked = SamplingParams {
        min_tokens: 1,
        ..SamplingParams::default()
    };
    assert_eq!(
        sample(&mut [1.0], &masked, &mut s, &[], &[]),
        Err(SampleError::NoCandidate)
    );
    let mut rows: Vec<SampleRow<'_>> = Vec::new();
    assert!(matches!(
        sample_batch(&mut [0.0; 3], 2, &mut rows),
        Err(SampleError::BatchShape { .. })
    ));
}

#[test]
fn large_vocabulary_with_all_filters_samples_inside_the_kept_set() {
    // 49,152 tokens (SmolLM's vocabulary): top_k 40 must only yield one of the 40 largest.
    let logits = random_logits(49_152, 9);
    let mut order: Vec<u32> = (0..logits.len() as u32).collect();
    order.sort_by(|&a, &b| logits[b as usize].total_cmp(&logits[a as usize]));
    let top40: std::collections::HashSet<u32> = order[..40].iter().copied().collect();
    let p = SamplingParams {
        top_k: 40,
        top_p: 0.95,
        min_p: 0.01,
        seed: Some(1),
        ..SamplingParams::default()
    };
    assert!(draw_n(&logits, &p, 200).iter().all(|t| top40.contains(t)));
}
