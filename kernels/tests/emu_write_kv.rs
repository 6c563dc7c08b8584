//! The CUDA write_kv kernels (kernels/cuda/write_kv.cu), run on the host emulator, leave the
//! cache exactly as the CPU `write_kv` op does: K and V rows in f32/f16/bf16 caches, slot_pos,
//! skipped (-1) tokens, shuffled block tables, several kv-head counts.

mod emu_support;

use std::time::Instant;

use candle_core::Result;
use emu_support::*;
use kvault_kernels::write_kv;
use kvault_kernels_emu::plan::{write_kv_positions_plan, write_kv_rows_plan};
use kvault_kernels_emu::{launch_checked, Arg, LaunchStats};
use rand::rngs::StdRng;
use rand::SeedableRng;

#[test]
fn write_kv_kernels_leave_the_cache_exactly_as_the_cpu_op() -> Result<()> {
    let start = Instant::now();
    let mut stats = LaunchStats::default();
    let mut rng = StdRng::seed_from_u64(21);
    let mut cases = 0;
    for dtype in DTYPES {
        for (num_kv_heads, head_dim, block_size) in [(1, 64, 16), (2, 128, 32), (3, 64, 16), (8, 16, 8)] {
            let case = AttnCase { dtype, block_size, head_dim, num_kv_heads, group: 1, seqs: vec![(9, 9), (1, 20), (4, 37)] };
            let mut inp = build_attention(&case, &mut rng)?;
            // Skip some writes: those slots must keep their old bytes.
            skip_some_writes(&mut inp, &mut rng)?;
            let t = inp.meta.num_tokens;
            let k = random_tensor(&mut rng, &[t, num_kv_heads, head_dim], 3.0, dtype)?;
            let v = random_tensor(&mut rng, &[t, num_kv_heads, head_dim], 3.0, dtype)?;

            let mut key = bytes_of(&inp.cache.key)?;
            let mut value = bytes_of(&inp.cache.value)?;
            let mut slot_pos = bytes_of(&inp.cache.slot_pos)?;
            let host = &inp.meta.host;
            let rows = write_kv_rows_plan(kernel_dtype(dtype), t).map_err(|e| candle_core::Error::Msg(e.0))?;
            for (dst, src) in [(&mut key, bytes_of(&k)?), (&mut value, bytes_of(&v)?)] {
                stats += launch_checked(
                    &rows,
                    &mut [
                        Arg::Out(dst),
                        Arg::In(&src),
                        Arg::input(&host.slot_mapping),
                        Arg::I32(num_kv_heads as i32),
                        Arg::I32(block_size as i32),
                        Arg::I32(head_dim as i32),
                    ],
                )
                .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
            }
            stats += launch_checked(
                &write_kv_positions_plan(t, num_kv_heads).map_err(|e| candle_core::Error::Msg(e.0))?,
                &mut [
                    Arg::output(&mut slot_pos),
                    Arg::input(&host.positions),
                    Arg::input(&host.slot_mapping),
                    Arg::I32(t as i32),
                    Arg::I32(num_kv_heads as i32),
                    Arg::I32(block_size as i32),
                ],
            )
            .map_err(|e| candle_core::Error::Msg(e.to_string()))?;

            write_kv(&inp.cache, &k, &v, &inp.meta)?;
            // Scatter is a copy: the results must be bit-identical, not merely close.
            assert_eq!(key, bytes_of(&inp.cache.key)?, "key cache, {dtype:?} {case:?}");
            assert_eq!(value, bytes_of(&inp.cache.value)?, "value cache, {dtype:?} {case:?}");
            assert_eq!(slot_pos, bytes_of(&inp.cache.slot_pos)?, "slot_pos, {dtype:?} {case:?}");
            assert!(bytes_of(&inp.cache.slot_pos)?.chunks(4).any(|c| c != [0xff; 4]), "something was written");
            cases += 1;
        }
    }
    report("write_kv × dtype × heads", cases, stats, start.elapsed());
    Ok(())
}
