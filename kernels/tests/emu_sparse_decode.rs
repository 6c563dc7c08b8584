//! The LycheeDecode CUDA kernels (kernels/cuda/sparse_decode.cu, block_select.cu), run on the
//! host emulator, against the CPU ops `paged_attention_sparse` and `select_blocks`: every float
//! dtype × block size × head dim × GQA ratio 1/3/8 and the int8/fp8 caches, ragged contexts,
//! random roles (layer 0 all retrieval), random selections with -1 slots (also all -1, and the
//! whole context), batches mixing prefill chunks and non-sparse decode rows in, forced split
//! counts, score ties, and a three-layer chain where each layer's selection feeds the next.
//! Selections must agree exactly; attention within the dtype's rounding, and bit for bit with the
//! emulated paged_decode wherever the contract says it is paged_attention's output.

mod emu_support;

use std::time::Instant;

use candle_core::{DType, Device, Result, Tensor};
use emu_support::sparse::*;
use emu_support::*;
use kvault_kernels::{paged_attention_sparse, select_blocks, HeadRoles, KvDtype, SparseDecodePlan};
use kvault_kernels_emu::LaunchStats;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn scale(head_dim: usize) -> f32 {
    1.0 / (head_dim as f32).sqrt()
}

/// Decode rows: one too short to decode sparsely, ragged contexts of 3..9 blocks.
fn decode_batch(block_size: usize) -> Vec<(usize, usize)> {
    vec![(1, 5), (1, 3 * block_size + 7), (1, 6 * block_size), (1, 8 * block_size + 1)]
}

/// Attention and selection of one layer, emulated and on the CPU; returns the CPU's selection.
fn check_layer(inp: &AttnInputs, plan: &SparseDecodePlan, layer: usize, selection: &Tensor, splits: Option<usize>, what: &str) -> Result<(Tensor, LaunchStats)> {
    let sc = scale(inp.case.head_dim);
    let want = paged_attention_sparse(&inp.q, &inp.cache, &inp.meta, sc, plan, layer, selection)?;
    let (got, mut stats) = emulate_sparse_decode(inp, plan, layer, selection, sc, splits)?;
    assert_close(&got, &want, &format!("sparse decode layer {layer}, {what}"))?;
    let want_sel = select_blocks(&inp.q, &inp.cache, &inp.meta, plan, layer, selection)?;
    let (got_sel, s) = emulate_select_blocks(inp, plan, layer, selection)?;
    stats += s;
    assert_eq!(
        got_sel.to_vec3::<i32>()?,
        want_sel.to_vec3::<i32>()?,
        "select_blocks layer {layer}, {what}: old selection {:?}",
        selection.to_vec3::<i32>()?
    );
    Ok((want_sel, stats))
}

#[test]
fn sparse_decode_and_selection_match_cpu_ops_for_every_dtype_shape_and_gqa_ratio() -> Result<()> {
    let start = Instant::now();
    let mut stats = LaunchStats::default();
    let mut rng = StdRng::seed_from_u64(61);
    let mut cases = 0;
    for (dtype, block_size, head_dim, group) in attention_grid() {
        let case = AttnCase { dtype, block_size, head_dim, num_kv_heads: 2, group, seqs: decode_batch(block_size) };
        let inp = build_attention(&case, &mut rng)?;
        let roles = random_roles(&mut rng, 2)?;
        let plan = random_plan(&mut rng, &inp, roles)?;
        let selection = random_selection(&mut rng, &inp, &plan)?;
        let layer = rng.random_range(1..LAYERS);
        stats += check_layer(&inp, &plan, layer, &selection, None, &format!("{case:?}"))?.1;
        cases += 1;
    }
    report("sparse decode + select × dtype × shape × gqa", cases, stats, start.elapsed());
    Ok(())
}

#[test]
fn quantized_caches_match_cpu_ops_for_every_format_shape_and_gqa_ratio() -> Result<()> {
    let start = Instant::now();
    let mut stats = LaunchStats::default();
    let mut rng = StdRng::seed_from_u64(62);
    let mut cases = 0;
    for kind in [KvDtype::Int8, KvDtype::Fp8] {
        for (block_size, head_dim) in SHAPES {
            for group in GROUPS {
                let dtype = DTYPES[cases % DTYPES.len()];
                let case = AttnCase { dtype, block_size, head_dim, num_kv_heads: 2, group, seqs: decode_batch(block_size) };
                let mut inp = build_attention(&case, &mut rng)?;
                quantize_cache(&mut inp, kind)?;
                let roles = random_roles(&mut rng, 2)?;
        let plan = random_plan(&mut rng, &inp, roles)?;
                let selection = random_selection(&mut rng, &inp, &plan)?;
                stats += check_layer(&inp, &plan, 1 + cases % 2, &selection, None, &format!("{kind} {case:?}"))?.1;
                cases += 1;
            }
        }
    }
    report("sparse decode + select × int8/fp8 × shape × gqa", cases, stats, start.elapsed());
    Ok(())
}

#[test]
fn full_heads_and_full_selections_are_bit_identical_to_paged_decode() -> Result<()> {
    let start = Instant::now();
    let mut stats = LaunchStats::default();
    let mut rng = StdRng::seed_from_u64(63);
    let mut cases = 0;
    for dtype in DTYPES {
        for group in GROUPS {
            for splits in [None, Some(1), Some(3)] {
                let case = AttnCase { dtype, block_size: 16, head_dim: 64, num_kv_heads: 3, group, seqs: decode_batch(16) };
                let inp = build_attention(&case, &mut rng)?;
                let sc = scale(64);
                let (dense, _, s) = emulate_decode(&inp, sc, splits)?;
                stats += s;
                let dense = bytes_of(&dense)?;
                // Budgets as wide as the longest context, every sparse head listing every block.
                let n_max = inp.meta.host.max_blocks_per_seq as u32;
                let budget: Vec<u32> = (0..inp.meta.num_seqs).map(|s| if s == 0 { 0 } else { n_max }).collect();
                let ones = vec![1; budget.len()];
                let plan = SparseDecodePlan::new(random_roles(&mut rng, 3)?, budget, ones.clone(), ones, &inp.meta, &Device::Cpu)?;
                let (got, s) = emulate_sparse_decode(&inp, &plan, 1, &full_selection(&inp, &plan)?, sc, splits)?;
                stats += s;
                assert!(bytes_of(&got)? == dense, "full selections, {splits:?} splits, {case:?}: not paged_decode's bits");
                // Random selections: the rows of full heads (retrieval, or sequence 0 without a budget) still are.
                let (got, s) = emulate_sparse_decode(&inp, &plan, 2, &random_selection(&mut rng, &inp, &plan)?, sc, splits)?;
                stats += s;
                let row = 64 * dtype.size_in_bytes();
                let retrieval = plan.roles.layer(2);
                let got = bytes_of(&got)?;
                for (i, (g, d)) in got.chunks_exact(row).zip(dense.chunks_exact(row)).enumerate() {
                    let (seq, kv_head) = (i / (3 * group), i % (3 * group) / group);
                    if seq == 0 || retrieval[kv_head] {
                        assert!(g == d, "seq {seq} kv head {kv_head} (full), {splits:?} splits, {case:?}: not paged_decode's bits");
                    }
                }
                cases += 2;
            }
        }
    }
    report("full heads / full selections bit-identical to paged_decode", cases, stats, start.elapsed());
    Ok(())
}

#[test]
fn batches_with_prefill_chunks_and_forced_split_counts_match_cpu_ops() -> Result<()> {
    let start = Instant::now();
    let mut stats = LaunchStats::default();
    let mut rng = StdRng::seed_from_u64(64);
    let mut cases = 0;
    for dtype in [DType::F32, DType::BF16] {
        for (block_size, head_dim) in [(16, 64), (32, 128)] {
            for group in GROUPS {
                // Prefill chunks (whose rows paged_prefill serves) around sparse decode rows.
                let seqs = [mixed_batch(block_size), decode_batch(block_size)].concat();
                let case = AttnCase { dtype, block_size, head_dim, num_kv_heads: 2, group, seqs };
                let inp = build_attention(&case, &mut rng)?;
                let roles = random_roles(&mut rng, 2)?;
        let plan = random_plan(&mut rng, &inp, roles)?;
                let selection = random_selection(&mut rng, &inp, &plan)?;
                stats += check_layer(&inp, &plan, 1, &selection, None, &format!("mixed {case:?}"))?.1;
                // Decode rows only, at forced split counts (many empty splits for the sparse heads).
                let case = AttnCase { seqs: decode_batch(block_size), ..case };
                let inp = build_attention(&case, &mut rng)?;
                let roles = random_roles(&mut rng, 2)?;
        let plan = random_plan(&mut rng, &inp, roles)?;
                let selection = random_selection(&mut rng, &inp, &plan)?;
                let splits = rng.random_range(1..=6);
                stats += check_layer(&inp, &plan, 2, &selection, Some(splits), &format!("{splits} splits {case:?}"))?.1;
                cases += 2;
            }
        }
    }
    report("mixed batches + split counts", cases, stats, start.elapsed());
    Ok(())
}

#[test]
fn selection_breaks_score_ties_toward_the_lower_block_and_keeps_sink_and_recent() -> Result<()> {
    let start = Instant::now();
    let mut rng = StdRng::seed_from_u64(65);
    let case = AttnCase { dtype: DType::F16, block_size: 16, head_dim: 64, num_kv_heads: 1, group: 3, seqs: vec![(1, 12 * 16 - 5)] };
    let mut inp = build_attention(&case, &mut rng)?;
    // Every key the same: every block scores the same, so the lowest middle blocks win.
    inp.cache.key = Tensor::ones(inp.cache.key.dims(), DType::F16, &Device::Cpu)?;
    let roles = std::sync::Arc::new(HeadRoles::all_retrieval(1, 1));
    let plan = SparseDecodePlan::new(roles, vec![6], vec![1], vec![2], &inp.meta, &Device::Cpu)?;
    let selection = plan.initial_selection(&inp.meta)?;
    let (got, stats) = check_layer(&inp, &plan, 0, &selection, None, "ties")?;
    assert_eq!(got.flatten_all()?.to_vec1::<i32>()?, vec![0, 1, 2, 3, 10, 11]);
    report("score ties", 1, stats, start.elapsed());
    Ok(())
}

#[test]
fn a_three_layer_chain_on_random_ragged_batches_matches_cpu_ops() -> Result<()> {
    let start = Instant::now();
    let mut stats = LaunchStats::default();
    let mut rng = StdRng::seed_from_u64(66);
    let trials = 8;
    for trial in 0..trials {
        let (block_size, head_dim) = SHAPES[rng.random_range(0..SHAPES.len())];
        let seqs = (0..rng.random_range(1..=4))
            .map(|_| {
                let ctx = rng.random_range(1..=10 * block_size);
                (if rng.random_bool(0.2) { rng.random_range(1..=ctx.min(20)) } else { 1 }, ctx)
            })
            .collect();
        let num_kv_heads = rng.random_range(1..=3);
        let case = AttnCase { dtype: DTYPES[trial % 3], block_size, head_dim, num_kv_heads, group: GROUPS[trial % 3], seqs };
        let mut inp = build_attention(&case, &mut rng)?;
        if trial % 4 == 3 {
            quantize_cache(&mut inp, if trial % 8 == 3 { KvDtype::Int8 } else { KvDtype::Fp8 })?;
        }
        let roles = random_roles(&mut rng, num_kv_heads)?;
        let plan = random_plan(&mut rng, &inp, roles)?;
        // The engine's loop: layer 0 starts from the initial selection, each layer's retrieval
        // heads choose for the sparse heads above (the CPU's choice carried, checked equal).
        let mut selection = plan.initial_selection(&inp.meta)?;
        for layer in 0..LAYERS {
            let (next, s) = check_layer(&inp, &plan, layer, &selection, None, &format!("trial {trial}: {case:?}"))?;
            selection = next;
            stats += s;
        }
    }
    report("three-layer chains on random ragged batches", trials, stats, start.elapsed());
    Ok(())
}
