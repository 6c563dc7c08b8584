//! The CUDA paged-attention kernels (kernels/cuda/paged_decode.cu, paged_prefill.cu), run on
//! the host emulator, agree with the CPU `paged_attention` op on random batches: every compiled
//! dtype × block size × head dim, GQA ratios 1/3/8, ragged contexts that are not multiples of
//! the block size, shuffled block tables, and flash-decoding split counts 1..=6 with empty splits.

mod emu_support;

use std::time::Instant;

use candle_core::{DType, Result};
use emu_support::*;
use kvault_kernels::paged_attention;
use kvault_kernels_emu::LaunchStats;
use rand::rngs::StdRng;
use rand::SeedableRng;


fn scale(head_dim: usize) -> f32 {
    1.0 / (head_dim as f32).sqrt()
}

#[test]
fn decode_kernel_matches_cpu_op_for_every_dtype_shape_and_gqa_ratio() -> Result<()> {
    let start = Instant::now();
    let mut stats = LaunchStats::default();
    let mut rng = StdRng::seed_from_u64(11);
    let mut cases = 0;
    for (dtype, block_size, head_dim, group) in attention_grid() {
        // Ragged decode contexts: shorter than a block, one past a block, a few blocks.
        let case = AttnCase {
            dtype,
            block_size,
            head_dim,
            num_kv_heads: 2,
            group,
            seqs: vec![(1, 5), (1, block_size + 1), (1, 3 * block_size + 7)],
        };
        let inp = build_attention(&case, &mut rng)?;
        let want = paged_attention(&inp.q, &inp.cache, &inp.meta, scale(head_dim))?;
        let (got, _, s) = emulate_decode(&inp, scale(head_dim), None)?;
        assert_close(&got, &want, &format!("decode {case:?}"))?;
        stats += s;
        cases += 1;
    }
    report("decode × dtype × shape × gqa", cases, stats, start.elapsed());
    Ok(())
}

#[test]
fn decode_split_merge_matches_cpu_op_for_split_counts_1_to_6_including_empty_splits() -> Result<()> {
    let start = Instant::now();
    let mut stats = LaunchStats::default();
    let mut rng = StdRng::seed_from_u64(12);
    let mut empty_total = 0;
    let mut cases = 0;
    for dtype in [DType::F32, DType::BF16] {
        for group in GROUPS {
            let case = AttnCase {
                dtype,
                block_size: 16,
                head_dim: 64,
                num_kv_heads: 1,
                group,
                // 9 blocks for the longest; the 1-token context leaves all but the first split empty.
                seqs: vec![(1, 1), (1, 17), (1, 70), (1, 9 * 16 - 3)],
            };
            let inp = build_attention(&case, &mut rng)?;
            let want = paged_attention(&inp.q, &inp.cache, &inp.meta, 0.125)?;
            for splits in 1..=6 {
                let (got, empty, s) = emulate_decode(&inp, 0.125, Some(splits))?;
                assert_close(&got, &want, &format!("{splits} splits, {case:?}"))?;
                if splits > 1 {
                    assert!(empty > 0, "{splits} splits should leave the 1-token context's later splits empty");
                }
                empty_total += empty;
                stats += s;
                cases += 1;
            }
        }
    }
    assert!(empty_total > 0);
    report("decode split counts 1..=6", cases, stats, start.elapsed());
    Ok(())
}

#[test]
fn prefill_kernel_matches_cpu_op_on_mixed_chunks_and_decode_rows() -> Result<()> {
    let start = Instant::now();
    let mut stats = LaunchStats::default();
    let mut rng = StdRng::seed_from_u64(13);
    let mut cases = 0;
    for (dtype, block_size, head_dim, group) in attention_grid() {
        let case = AttnCase {
            dtype,
            block_size,
            head_dim,
            num_kv_heads: 2,
            group,
            seqs: mixed_batch(block_size),
        };
        let inp = build_attention(&case, &mut rng)?;
        let want = paged_attention(&inp.q, &inp.cache, &inp.meta, scale(head_dim))?;
        let (got, s) = emulate_prefill(&inp, scale(head_dim))?;
        assert_close(&got, &want, &format!("prefill {case:?}"))?;
        stats += s;
        cases += 1;
    }
    report("prefill × dtype × shape × gqa", cases, stats, start.elapsed());
    Ok(())
}

#[test]
fn decode_and_prefill_kernels_agree_with_cpu_op_on_random_ragged_batches() -> Result<()> {
    use rand::Rng;
    let start = Instant::now();
    let mut stats = LaunchStats::default();
    let mut rng = StdRng::seed_from_u64(14);
    let trials = 12;
    for trial in 0..trials {
        let (block_size, head_dim) = SHAPES[rng.random_range(0..SHAPES.len())];
        let num_seqs = rng.random_range(1..=4);
        let decode = trial % 2 == 0;
        let seqs = (0..num_seqs)
            .map(|_| {
                let ctx = rng.random_range(1..=5 * block_size);
                (if decode { 1 } else { rng.random_range(1..=ctx.min(24)) }, ctx)
            })
            .collect();
        let case = AttnCase {
            dtype: DTYPES[trial % 3],
            block_size,
            head_dim,
            num_kv_heads: rng.random_range(1..=3),
            group: GROUPS[rng.random_range(0..GROUPS.len())],
            seqs,
        };
        let inp = build_attention(&case, &mut rng)?;
        let scale = rng.random_range(0.05..0.3);
        let want = paged_attention(&inp.q, &inp.cache, &inp.meta, scale)?;
        let (got, s) = if decode {
            let splits = rng.random_range(1..=5);
            let (got, _, s) = emulate_decode(&inp, scale, Some(splits))?;
            (got, s)
        } else {
            emulate_prefill(&inp, scale)?
        };
        assert_close(&got, &want, &format!("trial {trial}: {case:?}"))?;
        stats += s;
    }
    report("random ragged batches", trials, stats, start.elapsed());
    Ok(())
}
