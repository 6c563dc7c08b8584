//! The CUDA rms_norm, rope and silu_mul kernels, run on the host emulator, agree with the CPU
//! ops for f32/f16/bf16 over shapes that exercise partial warps, multi-warp reductions and
//! grid-stride loops.

mod emu_support;

use std::time::Instant;

use candle_core::{DType, Device, Result, Tensor};
use emu_support::*;
use kvault_kernels::{rms_norm, rope, silu_mul};
use kvault_kernels_emu::plan::{rms_norm_plan, rope_plan, silu_mul_plan};
use kvault_kernels_emu::{launch_checked, Arg, EmuError, LaunchStats};
use rand::rngs::StdRng;
use rand::SeedableRng;

fn emu(e: EmuError) -> candle_core::Error {
    candle_core::Error::Msg(e.to_string())
}

fn plan_err(e: kvault_kernels_emu::plan::PlanError) -> candle_core::Error {
    candle_core::Error::Msg(e.0)
}

#[test]
fn rms_norm_kernel_matches_cpu_op() -> Result<()> {
    let start = Instant::now();
    let mut stats = LaunchStats::default();
    let mut rng = StdRng::seed_from_u64(31);
    let mut cases = 0;
    for dtype in DTYPES {
        // [T, hidden] rows of several widths, and qwen3's per-head [T, heads, head_dim] norm.
        for dims in [vec![3, 7], vec![2, 64], vec![4, 576], vec![2, 1000], vec![3, 4, 128]] {
            let cols = *dims.last().unwrap_or(&1);
            let x = random_tensor(&mut rng, &dims, 4.0, dtype)?;
            let w = random_tensor(&mut rng, &[cols], 1.5, DType::F32)?;
            let want = rms_norm(&x, &w, 1e-6)?;
            let rows = x.elem_count() / cols;
            let cfg = rms_norm_plan(kernel_dtype(dtype), rows, cols).map_err(plan_err)?;
            let xb = bytes_of(&x)?;
            let mut out = vec![0u8; xb.len()];
            let wv = w.to_vec1::<f32>()?;
            stats += launch_checked(
                &cfg,
                &mut [Arg::Out(&mut out), Arg::In(&xb), Arg::input(&wv), Arg::I32(cols as i32), Arg::F32(1e-6)],
            )
            .map_err(emu)?;
            assert_close(&tensor_from_bytes(&out, dtype, &dims)?, &want, &format!("rms_norm {dtype:?} {dims:?}"))?;
            cases += 1;
        }
    }
    report("rms_norm × dtype × shape", cases, stats, start.elapsed());
    Ok(())
}

fn rope_tables(max_pos: usize, half: usize) -> Result<(Tensor, Tensor)> {
    let mut cos = Vec::with_capacity(max_pos * half);
    let mut sin = Vec::with_capacity(max_pos * half);
    for p in 0..max_pos {
        for i in 0..half {
            let theta = p as f32 / 10000f32.powf(i as f32 / half as f32);
            cos.push(theta.cos());
            sin.push(theta.sin());
        }
    }
    Ok((Tensor::from_vec(cos, (max_pos, half), &Device::Cpu)?, Tensor::from_vec(sin, (max_pos, half), &Device::Cpu)?))
}

#[test]
fn rope_kernel_matches_cpu_op_with_position_gather_and_pregathered_tables() -> Result<()> {
    let start = Instant::now();
    let mut stats = LaunchStats::default();
    let mut rng = StdRng::seed_from_u64(32);
    let mut cases = 0;
    for dtype in DTYPES {
        for (tokens, heads, head_dim) in [(5, 3, 64), (9, 8, 128), (2, 14, 64)] {
            let half = head_dim / 2;
            let (cos, sin) = rope_tables(300, half)?;
            let positions: Vec<u32> = (0..tokens).map(|t| (t * 37 % 300) as u32).collect();
            let pos_t = Tensor::from_slice(&positions, tokens, &Device::Cpu)?;
            let x = random_tensor(&mut rng, &[tokens, heads, head_dim], 2.0, dtype)?;
            let want = rope(&x, &cos, &sin, &pos_t)?;
            let xb = bytes_of(&x)?;
            let cfg = rope_plan(kernel_dtype(dtype), tokens).map_err(plan_err)?;
            // Fused gather (positions given) and the CPU op's layout (tables gathered per token).
            let gathered = (cos.index_select(&pos_t, 0)?, sin.index_select(&pos_t, 0)?);
            for pregathered in [false, true] {
                let (c, s) = if pregathered { (&gathered.0, &gathered.1) } else { (&cos, &sin) };
                let (cv, sv) = (c.flatten_all()?.to_vec1::<f32>()?, s.flatten_all()?.to_vec1::<f32>()?);
                let mut out = vec![0u8; xb.len()];
                stats += launch_checked(
                    &cfg,
                    &mut [
                        Arg::Out(&mut out),
                        Arg::In(&xb),
                        Arg::input(&cv),
                        Arg::input(&sv),
                        if pregathered { Arg::Null } else { Arg::input(&positions) },
                        Arg::I32(heads as i32),
                        Arg::I32(head_dim as i32),
                    ],
                )
                .map_err(emu)?;
                let got = tensor_from_bytes(&out, dtype, x.dims())?;
                assert_close(&got, &want, &format!("rope {dtype:?} T{tokens} H{heads} D{head_dim} pregathered={pregathered}"))?;
                cases += 1;
            }
        }
    }
    report("rope × dtype × shape × table layout", cases, stats, start.elapsed());
    Ok(())
}

#[test]
fn silu_mul_kernel_matches_cpu_op_including_grid_stride_tails() -> Result<()> {
    let start = Instant::now();
    let mut stats = LaunchStats::default();
    let mut rng = StdRng::seed_from_u64(33);
    let mut cases = 0;
    for dtype in DTYPES {
        for len in [1usize, 255, 257, 3000] {
            let gate = random_tensor(&mut rng, &[len], 8.0, dtype)?;
            let up = random_tensor(&mut rng, &[len], 3.0, dtype)?;
            let want = silu_mul(&gate, &up)?;
            let (g, u) = (bytes_of(&gate)?, bytes_of(&up)?);
            let mut out = vec![0u8; g.len()];
            let mut cfg = silu_mul_plan(kernel_dtype(dtype), len).map_err(plan_err)?;
            // Fewer CTAs than the plan would pick, so each thread loops over several elements.
            cfg.grid[0] = cfg.grid[0].min(2);
            stats += launch_checked(&cfg, &mut [Arg::Out(&mut out), Arg::In(&g), Arg::In(&u), Arg::I64(len as i64)])
                .map_err(emu)?;
            assert_close(&tensor_from_bytes(&out, dtype, &[len])?, &want, &format!("silu_mul {dtype:?} len {len}"))?;
            cases += 1;
        }
    }
    report("silu_mul × dtype × length", cases, stats, start.elapsed());
    Ok(())
}
