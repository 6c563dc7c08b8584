//! The KV-policy kernels (kernels/cuda/attention_mass.cu, slot_moves.cu), run on the host
//! emulator, agree with the CPU ops: `attention_mass` for every compiled dtype × block size ×
//! head dim, GQA ratios 1/3/8, ragged contexts, shuffled block tables, batches mixing prefill
//! chunks and decode rows, voters from the first query and from later ones, and sequences that
//! do not vote; `move_slots` and `copy_blocks` bit-exact on keys, values, `slot_pos` and
//! `slot_score` for every cache dtype.

mod emu_support;

use std::time::Instant;

use candle_core::{Device, Result};
use emu_support::kv_policy::*;
use emu_support::*;
use kvault_kernels::{attention_mass, copy_blocks, move_slots, BlockCopies, KvCacheShape, MassVoter, SlotMoves};
use kvault_kernels_emu::LaunchStats;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};


fn voter(seq: usize, first_query: usize) -> MassVoter {
    MassVoter { seq, first_query }
}

/// Compares the emulated kernel with the CPU op; also requires every voting row's probabilities
/// to be there (each voter/head row sums to rows × group), so a kernel that dropped a tile fails
/// even where the CPU op's tolerance band would not notice.
fn check_mass(inp: &AttnInputs, scale: f32, voters: &[MassVoter], what: &str) -> Result<LaunchStats> {
    let want = attention_mass(&inp.q, &inp.cache, &inp.meta, scale, voters)?;
    let (got, stats) = emulate_attention_mass(inp, scale, voters)?;
    assert_close(&got, &want, what)?;
    let sums = got.sum(2)?.to_vec2::<f32>()?;
    for (v, row) in voters.iter().zip(&sums) {
        let q_len = inp.meta.host.query_range(v.seq).len();
        let rows = ((q_len - v.first_query) * inp.case.group) as f32;
        assert!(row.iter().all(|&s| (s - rows).abs() < 1e-3 * rows), "{what}: {v:?} sums {row:?}, expected {rows}");
    }
    Ok(stats)
}

#[test]
fn attention_mass_kernel_matches_cpu_op_for_every_dtype_shape_and_gqa_ratio() -> Result<()> {
    let start = Instant::now();
    let mut stats = LaunchStats::default();
    let mut rng = StdRng::seed_from_u64(31);
    let mut cases = 0;
    for (dtype, block_size, head_dim, group) in attention_grid() {
        let case = AttnCase {
            dtype,
            block_size,
            head_dim,
            num_kv_heads: 2,
            group,
            // The mixed batch (its decode row does not vote) plus a decode row that votes.
            seqs: [mixed_batch(block_size), vec![(1, 3 * block_size + 7)]].concat(),
        };
        let inp = build_attention(&case, &mut rng)?;
        // SnapKV-style windows (the last 10 rows, the last row) next to whole chunks and
        // decode rows, out of batch order. Rows per voter × group cover row tiles of
        // 1, 2 (10 rows at G=1: 8 + 2), 3-4 and 5-8.
        let voters = [voter(3, 9), voter(0, 0), voter(2, 4), voter(4, 0)];
        let what = format!("attention_mass {case:?}");
        stats += check_mass(&inp, 1.0 / (head_dim as f32).sqrt(), &voters, &what)?;
        cases += 1;
    }
    report("attention_mass × dtype × shape × gqa", cases, stats, start.elapsed());
    Ok(())
}

#[test]
fn attention_mass_kernel_matches_cpu_op_on_random_ragged_batches() -> Result<()> {
    let start = Instant::now();
    let mut stats = LaunchStats::default();
    let mut rng = StdRng::seed_from_u64(32);
    let trials = 10;
    for trial in 0..trials {
        let (block_size, head_dim) = SHAPES[rng.random_range(0..SHAPES.len())];
        let num_seqs = rng.random_range(1..=4);
        let seqs: Vec<(usize, usize)> = (0..num_seqs)
            .map(|_| {
                let ctx = rng.random_range(1..=6 * block_size);
                (if rng.random_bool(0.4) { 1 } else { rng.random_range(1..=ctx.min(20)) }, ctx)
            })
            .collect();
        let case = AttnCase {
            dtype: DTYPES[trial % 3],
            block_size,
            head_dim,
            num_kv_heads: rng.random_range(1..=3),
            group: GROUPS[rng.random_range(0..GROUPS.len())],
            seqs: seqs.clone(),
        };
        let inp = build_attention(&case, &mut rng)?;
        let mut voters = Vec::new();
        for (s, &(q_len, _)) in seqs.iter().enumerate() {
            if rng.random_bool(0.7) {
                voters.push(voter(s, rng.random_range(0..q_len)));
            }
        }
        if voters.is_empty() {
            voters.push(voter(num_seqs - 1, 0));
        }
        let scale = rng.random_range(0.05..0.3);
        stats += check_mass(&inp, scale, &voters, &format!("trial {trial}: {case:?} voters {voters:?}"))?;
    }
    report("attention_mass random ragged batches", trials, stats, start.elapsed());
    Ok(())
}

/// Cache shapes for the move/copy tests: every supported block size and head dim, 1 to 8 heads.
const MOVE_SHAPES: [(usize, usize, usize); 4] = [(1, 16, 64), (2, 32, 128), (3, 16, 128), (8, 32, 64)];

#[test]
fn move_slots_kernels_leave_the_layer_exactly_as_the_cpu_op() -> Result<()> {
    let start = Instant::now();
    let mut stats = LaunchStats::default();
    let mut rng = StdRng::seed_from_u64(33);
    let mut cases = 0;
    for dtype in DTYPES {
        for (num_kv_heads, block_size, head_dim) in MOVE_SHAPES {
            let shape = KvCacheShape { num_blocks: 5, num_kv_heads, block_size, head_dim };
            let layer = random_layer(&mut rng, shape, dtype)?;
            let moves = random_moves(&mut rng, shape);
            if moves.is_empty() {
                continue; // the op returns before any kernel; nothing to compare
            }
            let before = layer_bytes(&layer)?;
            let (got, s) = emulate_move_slots(&layer, &moves)?;
            move_slots(&layer, &SlotMoves::new(moves.clone(), &Device::Cpu)?)?;
            let want = layer_bytes(&layer)?;
            for (i, name) in ["key", "value", "slot_pos", "slot_score"].iter().enumerate() {
                assert!(want[i] != before[i], "{name}: the moves changed nothing, {dtype:?} {shape:?}");
                assert!(got[i] == want[i], "{name} differs from the CPU op, {dtype:?} {shape:?}, {} moves", moves.len());
            }
            stats += s;
            cases += 1;
        }
    }
    assert!(cases >= 9, "only {cases} cases had moves");
    report("move_slots × dtype × shape", cases, stats, start.elapsed());
    Ok(())
}

#[test]
fn copy_blocks_kernels_leave_the_layer_exactly_as_the_cpu_op() -> Result<()> {
    let start = Instant::now();
    let mut stats = LaunchStats::default();
    let mut rng = StdRng::seed_from_u64(34);
    let mut cases = 0;
    for dtype in DTYPES {
        for (num_kv_heads, block_size, head_dim) in MOVE_SHAPES {
            let shape = KvCacheShape { num_blocks: 7, num_kv_heads, block_size, head_dim };
            let layer = random_layer(&mut rng, shape, dtype)?;
            let pairs = random_block_copies(&mut rng, shape.num_blocks);
            let before = layer_bytes(&layer)?;
            let (got, s) = emulate_copy_blocks(&layer, &pairs)?;
            copy_blocks(&layer, &BlockCopies::new(pairs.clone(), &Device::Cpu)?)?;
            let want = layer_bytes(&layer)?;
            for (i, name) in ["key", "value", "slot_pos", "slot_score"].iter().enumerate() {
                assert!(want[i] != before[i], "{name}: the copies changed nothing, {dtype:?} {shape:?}");
                assert!(got[i] == want[i], "{name} differs from the CPU op, {dtype:?} {shape:?}, pairs {pairs:?}");
            }
            stats += s;
            cases += 1;
        }
    }
    report("copy_blocks × dtype × shape", cases, stats, start.elapsed());
    Ok(())
}
