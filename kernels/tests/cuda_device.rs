//! On a machine with a GPU (`cargo test --features cuda`): the same comparisons as the emulation
//! tests, on the device, through the public ops (whose `cuda_fwd` launches kernels/cuda). Without
//! a usable device this test FAILS with the reason: building with `cuda` means you meant to test
//! on a GPU.
#![cfg(feature = "cuda")]

mod emu_support;

use candle_core::{DType, Device, Result, Tensor};
use emu_support::kv_policy::{layer_bytes, random_block_copies, random_layer, random_moves};
use emu_support::sparse::{random_plan, random_roles, random_selection, LAYERS};
use emu_support::*;
use kvault_kernels::{
    attention_mass, copy_blocks, move_slots, paged_attention, paged_attention_sparse, rms_norm, rope, select_blocks, silu_mul,
    write_kv, AttentionMetadata, BlockCopies, KvCacheShape, KvDtype, LayerKvCache, MassVoter, SlotMoves, SparseDecodePlan,
};
use rand::rngs::StdRng;
use rand::SeedableRng;

fn gpu() -> Device {
    kvault_kernels::cuda::open_device(0).unwrap_or_else(|e| panic!("cargo test --features cuda needs a CUDA GPU: {e}"))
}

fn to_device(inp: &AttnInputs, dev: &Device) -> Result<(Tensor, LayerKvCache, AttentionMetadata)> {
    let host = &inp.meta.host;
    let tables = (0..inp.meta.num_seqs).map(|s| host.block_table(s).to_vec()).collect();
    let meta = AttentionMetadata::new(
        host.slot_mapping.clone(),
        host.positions.clone(),
        tables,
        inp.case.seqs.iter().map(|s| s.0).collect(),
        inp.case.seqs.iter().map(|s| s.1).collect(),
        inp.case.block_size,
        dev,
    )?;
    let cache = LayerKvCache {
        key: inp.cache.key.to_device(dev)?,
        value: inp.cache.value.to_device(dev)?,
        slot_pos: inp.cache.slot_pos.to_device(dev)?,
        slot_score: inp.cache.slot_score.to_device(dev)?,
    };
    Ok((inp.q.to_device(dev)?, cache, meta))
}

#[test]
fn device_attention_matches_cpu_op_for_decode_and_prefill() -> Result<()> {
    let dev = gpu();
    let mut rng = StdRng::seed_from_u64(41);
    for dtype in DTYPES {
        for (block_size, head_dim) in [(16, 64), (16, 128), (32, 64), (32, 128)] {
            for group in [1, 3, 8] {
                for seqs in [vec![(1, 5), (1, 300), (1, 2 * block_size + 1)], vec![(7, 7), (1, 40), (33, 90)]] {
                    let case = AttnCase { dtype, block_size, head_dim, num_kv_heads: 2, group, seqs };
                    let inp = build_attention(&case, &mut rng)?;
                    let scale = 1.0 / (head_dim as f32).sqrt();
                    let want = paged_attention(&inp.q, &inp.cache, &inp.meta, scale)?;
                    let (q, cache, meta) = to_device(&inp, &dev)?;
                    let got = paged_attention(&q, &cache, &meta, scale)?.to_device(&Device::Cpu)?;
                    assert_close(&got, &want, &format!("device attention {case:?}"))?;
                }
            }
        }
    }
    Ok(())
}

#[test]
fn device_write_kv_leaves_the_cache_exactly_as_the_cpu_op() -> Result<()> {
    let dev = gpu();
    let mut rng = StdRng::seed_from_u64(42);
    for dtype in DTYPES {
        let case = AttnCase { dtype, block_size: 16, head_dim: 128, num_kv_heads: 2, group: 1, seqs: vec![(9, 9), (1, 20), (4, 37)] };
        let inp = build_attention(&case, &mut rng)?;
        let t = inp.meta.num_tokens;
        let k = random_tensor(&mut rng, &[t, 2, 128], 3.0, dtype)?;
        let v = random_tensor(&mut rng, &[t, 2, 128], 3.0, dtype)?;
        let (_, cache, meta) = to_device(&inp, &dev)?;
        write_kv(&cache, &k.to_device(&dev)?, &v.to_device(&dev)?, &meta)?;
        write_kv(&inp.cache, &k, &v, &inp.meta)?;
        assert_eq!(bytes_of(&cache.key.to_device(&Device::Cpu)?)?, bytes_of(&inp.cache.key)?);
        assert_eq!(bytes_of(&cache.value.to_device(&Device::Cpu)?)?, bytes_of(&inp.cache.value)?);
        assert_eq!(bytes_of(&cache.slot_pos.to_device(&Device::Cpu)?)?, bytes_of(&inp.cache.slot_pos)?);
    }
    Ok(())
}

#[test]
fn device_rms_norm_rope_and_silu_mul_match_cpu_ops() -> Result<()> {
    let dev = gpu();
    let mut rng = StdRng::seed_from_u64(43);
    for dtype in DTYPES {
        let x = random_tensor(&mut rng, &[5, 576], 4.0, dtype)?;
        let w = random_tensor(&mut rng, &[576], 1.5, DType::F32)?;
        let want = rms_norm(&x, &w, 1e-6)?;
        let got = rms_norm(&x.to_device(&dev)?, &w.to_device(&dev)?, 1e-6)?.to_device(&Device::Cpu)?;
        assert_close(&got, &want, &format!("rms_norm {dtype:?}"))?;
        let (g, u) = (random_tensor(&mut rng, &[3000], 8.0, dtype)?, random_tensor(&mut rng, &[3000], 3.0, dtype)?);
        let want = silu_mul(&g, &u)?;
        let got = silu_mul(&g.to_device(&dev)?, &u.to_device(&dev)?)?.to_device(&Device::Cpu)?;
        assert_close(&got, &want, &format!("silu_mul {dtype:?}"))?;
        let x = random_tensor(&mut rng, &[9, 8, 128], 2.0, dtype)?;
        let cos = random_tensor(&mut rng, &[300, 64], 1.0, DType::F32)?;
        let sin = random_tensor(&mut rng, &[300, 64], 1.0, DType::F32)?;
        let pos = Tensor::from_vec((0..9u32).map(|t| t * 31 % 300).collect::<Vec<_>>(), 9, &Device::Cpu)?;
        let want = rope(&x, &cos, &sin, &pos)?;
        let got = rope(&x.to_device(&dev)?, &cos.to_device(&dev)?, &sin.to_device(&dev)?, &pos.to_device(&dev)?)?
            .to_device(&Device::Cpu)?;
        assert_close(&got, &want, &format!("rope {dtype:?}"))?;
    }
    Ok(())
}

#[test]
fn device_attention_mass_matches_cpu_op() -> Result<()> {
    let dev = gpu();
    let mut rng = StdRng::seed_from_u64(44);
    let voters = [
        MassVoter { seq: 3, first_query: 9 },
        MassVoter { seq: 0, first_query: 0 },
        MassVoter { seq: 2, first_query: 4 },
        MassVoter { seq: 4, first_query: 0 },
    ];
    for dtype in DTYPES {
        for (block_size, head_dim) in [(16, 64), (16, 128), (32, 64), (32, 128)] {
            for group in [1, 3, 8] {
                // Seq 1 (a decode row) does not vote; seq 4's long context spans many CTA strides.
                let seqs = vec![(7, 7), (1, 40), (5, 2 * block_size + 3), (19, 19), (1, 700)];
                let case = AttnCase { dtype, block_size, head_dim, num_kv_heads: 2, group, seqs };
                let inp = build_attention(&case, &mut rng)?;
                let scale = 1.0 / (head_dim as f32).sqrt();
                let want = attention_mass(&inp.q, &inp.cache, &inp.meta, scale, &voters)?;
                let (q, cache, meta) = to_device(&inp, &dev)?;
                let got = attention_mass(&q, &cache, &meta, scale, &voters)?.to_device(&Device::Cpu)?;
                assert_close(&got, &want, &format!("device attention_mass {case:?}"))?;
            }
        }
    }
    Ok(())
}

#[test]
fn device_move_slots_and_copy_blocks_leave_the_layer_exactly_as_the_cpu_ops() -> Result<()> {
    let dev = gpu();
    let mut rng = StdRng::seed_from_u64(45);
    for dtype in DTYPES {
        for (num_kv_heads, block_size, head_dim) in [(1, 16, 64), (2, 32, 128), (8, 16, 128)] {
            let shape = KvCacheShape { num_blocks: 9, num_kv_heads, block_size, head_dim };
            let layer = random_layer(&mut rng, shape, dtype)?;
            let on_device = |l: &LayerKvCache| -> Result<LayerKvCache> {
                Ok(LayerKvCache {
                    key: l.key.to_device(&dev)?,
                    value: l.value.to_device(&dev)?,
                    slot_pos: l.slot_pos.to_device(&dev)?,
                    slot_score: l.slot_score.to_device(&dev)?,
                })
            };
            let gpu_layer = on_device(&layer)?;
            let moves = random_moves(&mut rng, shape);
            move_slots(&gpu_layer, &SlotMoves::new(moves.clone(), &dev)?)?;
            move_slots(&layer, &SlotMoves::new(moves, &Device::Cpu)?)?;
            let pairs = random_block_copies(&mut rng, shape.num_blocks);
            copy_blocks(&gpu_layer, &BlockCopies::new(pairs.clone(), &dev)?)?;
            copy_blocks(&layer, &BlockCopies::new(pairs, &Device::Cpu)?)?;
            let got = LayerKvCache {
                key: gpu_layer.key.to_device(&Device::Cpu)?,
                value: gpu_layer.value.to_device(&Device::Cpu)?,
                slot_pos: gpu_layer.slot_pos.to_device(&Device::Cpu)?,
                slot_score: gpu_layer.slot_score.to_device(&Device::Cpu)?,
            };
            let (got, want) = (layer_bytes(&got)?, layer_bytes(&layer)?);
            for (i, name) in ["key", "value", "slot_pos", "slot_score"].iter().enumerate() {
                assert!(got[i] == want[i], "{name} differs from the CPU ops, {dtype:?} {shape:?}");
            }
        }
    }
    Ok(())
}

/// The CPU plan rebuilt on the device (its tensors must live where the kernels run).
fn plan_on(plan: &SparseDecodePlan, meta: &AttentionMetadata, dev: &Device) -> Result<SparseDecodePlan> {
    let h = &plan.host;
    SparseDecodePlan::new(plan.roles.clone(), h.budget_blocks.clone(), h.sink_blocks.clone(), h.recent_blocks.clone(), meta, dev)
}

#[test]
fn device_sparse_decode_and_block_selection_match_cpu_ops() -> Result<()> {
    let dev = gpu();
    let mut rng = StdRng::seed_from_u64(46);
    for (i, (dtype, block_size, head_dim, group)) in attention_grid().enumerate() {
        // Long contexts (several splits per full head), a prefill chunk every other case.
        let mut seqs = vec![(1, 5), (1, 300), (1, 40 * block_size + 3), (1, 2 * block_size + 1)];
        if i % 2 == 1 {
            seqs.push((33, 90));
        }
        let case = AttnCase { dtype, block_size, head_dim, num_kv_heads: 2, group, seqs };
        let mut inp = build_attention(&case, &mut rng)?;
        if i % 3 > 0 {
            quantize_cache(&mut inp, if i % 3 == 1 { KvDtype::Int8 } else { KvDtype::Fp8 })?;
        }
        let roles = random_roles(&mut rng, 2)?;
        let plan = random_plan(&mut rng, &inp, roles)?;
        let (q, cache, meta) = to_device(&inp, &dev)?;
        let gpu_plan = plan_on(&plan, &meta, &dev)?;
        let scale = 1.0 / (head_dim as f32).sqrt();
        let mut selection = plan.initial_selection(&inp.meta)?;
        for layer in 0..LAYERS {
            if layer > 0 && i % 2 == 0 {
                selection = random_selection(&mut rng, &inp, &plan)?;
            }
            let gpu_selection = selection.to_device(&dev)?;
            let want = paged_attention_sparse(&inp.q, &inp.cache, &inp.meta, scale, &plan, layer, &selection)?;
            let got = paged_attention_sparse(&q, &cache, &meta, scale, &gpu_plan, layer, &gpu_selection)?.to_device(&Device::Cpu)?;
            assert_close(&got, &want, &format!("device sparse decode layer {layer}, {case:?}"))?;
            let want = select_blocks(&inp.q, &inp.cache, &inp.meta, &plan, layer, &selection)?;
            let got = select_blocks(&q, &cache, &meta, &gpu_plan, layer, &gpu_selection)?.to_device(&Device::Cpu)?;
            assert_eq!(got.to_vec3::<i32>()?, want.to_vec3::<i32>()?, "device select_blocks layer {layer}, {case:?}");
            selection = want;
        }
    }
    Ok(())
}
