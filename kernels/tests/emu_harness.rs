//! The emulation harness itself catches the kernel bugs it exists to catch: a missing barrier
//! (through the forward/reverse schedule comparison), a barrier reached by only part of a block,
//! divergent barriers, a shuffle waiting for an exited lane, and launches that do not match the
//! kernel (wrong argument kinds, unknown names, too much shared memory). The broken kernels live
//! in kernels/emu/csrc/broken.

use kvault_kernels_emu::plan::{rms_norm_plan, KernelDtype, LaunchConfig};
use kvault_kernels_emu::{launch_checked, launch_raw, signature, Arg, EmuError, Schedule};

fn one_block(kernel: &str, threads: u32, shared_bytes: u32) -> LaunchConfig {
    LaunchConfig { kernel: kernel.to_string(), grid: [1, 1, 1], block: [threads, 1, 1], shared_bytes }
}

fn rms_norm_args<'a>(out: &'a mut [f32], x: &'a [f32], w: &'a [f32], cols: usize) -> Vec<Arg<'a>> {
    vec![Arg::output(out), Arg::input(x), Arg::input(w), Arg::I32(cols as i32), Arg::F32(1e-6)]
}

fn rows(n_rows: usize, cols: usize) -> Vec<f32> {
    (0..n_rows * cols).map(|i| ((i * 37 % 101) as f32 - 50.0) / 25.0).collect()
}

#[test]
fn missing_barrier_is_reported_as_schedule_dependent() {
    let (n_rows, cols) = (3, 256);
    let x = rows(n_rows, cols);
    let w = vec![1.0f32; cols];
    let mut cfg = rms_norm_plan(KernelDtype::F32, n_rows, cols).unwrap();
    // The correct kernel passes the same check.
    let mut out = vec![0f32; x.len()];
    launch_checked(&cfg, &mut rms_norm_args(&mut out, &x, &w, cols)).expect("rms_norm_f32 is barrier-correct");

    cfg.kernel = "broken_rms_norm_missing_barrier_f32".to_string();
    let mut out = vec![0f32; x.len()];
    let err = launch_checked(&cfg, &mut rms_norm_args(&mut out, &x, &w, cols)).unwrap_err();
    assert!(matches!(err, EmuError::ScheduleDependent { arg: 0, .. }), "got {err}");
    assert!(err.to_string().contains("missing barrier"), "{err}");
}

#[test]
fn barrier_reached_by_part_of_the_block_is_an_error_not_a_hang() {
    let mut out = vec![0f32; 64];
    let err = launch_raw(&one_block("broken_partial_barrier", 64, 0), &mut [Arg::output(&mut out)], Schedule::Forward)
        .unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("only part of the block") && msg.contains("32 of 64"), "{msg}");
}

#[test]
fn threads_waiting_at_different_barriers_are_reported() {
    let mut out = vec![0f32; 128];
    let err = launch_raw(&one_block("broken_divergent_barrier", 128, 0), &mut [Arg::output(&mut out)], Schedule::Reverse)
        .unwrap_err();
    assert!(err.to_string().contains("divergent barriers"), "{err}");
}

#[test]
fn shuffle_waiting_for_an_exited_lane_is_reported() {
    let mut out = vec![0f32; 32];
    let err = launch_raw(&one_block("broken_shuffle_after_exit", 32, 0), &mut [Arg::output(&mut out)], Schedule::Forward)
        .unwrap_err();
    assert!(err.to_string().contains("never arrive"), "{err}");
}

#[test]
fn argument_kinds_are_checked_against_the_kernel_signature() {
    assert_eq!(signature("rms_norm_f16").as_deref(), Some("pppif"));
    let x = rows(1, 64);
    let w = vec![1.0f32; 64];
    let mut out = vec![0f32; 64];
    let cfg = rms_norm_plan(KernelDtype::F32, 1, 64).unwrap();
    // eps passed as an int: the kernel would read garbage bits on a GPU.
    let mut args = vec![Arg::output(&mut out), Arg::input(&x), Arg::input(&w), Arg::I32(64), Arg::I32(0)];
    let err = launch_checked(&cfg, &mut args).unwrap_err();
    assert!(err.to_string().contains("do not match the kernel's signature"), "{err}");
}

#[test]
fn unknown_kernels_and_oversized_shared_memory_are_rejected() {
    let mut out = vec![0f32; 32];
    let err = launch_raw(&one_block("no_such_kernel", 32, 0), &mut [Arg::output(&mut out)], Schedule::Forward).unwrap_err();
    assert!(err.to_string().contains("no emulated kernel"), "{err}");
    let err = launch_raw(&one_block("broken_partial_barrier", 32, 64 * 1024), &mut [Arg::output(&mut out)], Schedule::Forward)
        .unwrap_err();
    assert!(err.to_string().contains("48 KiB"), "{err}");
}

#[test]
fn writes_into_read_only_buffers_are_reported() {
    // rms_norm writes its first argument; declaring it read-only must be caught.
    let x = rows(1, 64);
    let w = vec![1.0f32; 64];
    let out = vec![0f32; 64];
    let cfg = rms_norm_plan(KernelDtype::F32, 1, 64).unwrap();
    let mut args = vec![Arg::input(&out), Arg::input(&x), Arg::input(&w), Arg::I32(64), Arg::F32(1e-6)];
    let err = launch_checked(&cfg, &mut args).unwrap_err();
    assert!(matches!(err, EmuError::WroteReadOnly { arg: 0, .. }), "got {err}");
}

#[test]
fn warp_votes_shuffles_and_atomics_follow_cuda_semantics_in_both_thread_orders() {
    let threads = 64usize;
    let cfg = one_block("probe_warp_primitives", threads as u32, 0);
    let mut out = vec![0i32; threads * 8];
    let mut counter = vec![0i32; 1];
    // Forward order only: the atomic counter legitimately depends on the thread order.
    launch_raw(&cfg, &mut [Arg::output(&mut out), Arg::output(&mut counter)], Schedule::Forward).unwrap();
    let mut reversed = vec![0i32; threads * 8];
    let mut counter2 = vec![0i32; 1];
    launch_raw(&cfg, &mut [Arg::output(&mut reversed), Arg::output(&mut counter2)], Schedule::Reverse).unwrap();
    for t in 0..threads {
        assert_eq!(out[t * 8..t * 8 + 7], reversed[t * 8..t * 8 + 7], "warp results depend on thread order, thread {t}");
    }
    assert_eq!(counter[0], threads as i32);
    let mut seen: Vec<i32> = (0..threads).map(|t| out[t * 8 + 7]).collect();
    seen.sort();
    assert_eq!(seen, (0..threads as i32).collect::<Vec<_>>(), "every atomicAdd saw a distinct old value");
    let ballot = (0..32).filter(|l| l % 3 == 0).fold(0u32, |b, l| b | 1 << l) as i32;
    for t in 0..threads {
        let (lane, warp_base) = (t % 32, t / 32 * 32);
        let v = |lane: usize| ((warp_base + lane) * 10) as i32;
        let o = &out[t * 8..t * 8 + 7];
        assert_eq!(o[0], ballot, "ballot, thread {t}");
        assert_eq!(o[1], (warp_base == 32) as i32, "any: only the second warp has thread 40");
        assert_eq!(o[2], 1, "all");
        assert_eq!(o[3], if lane >= 1 { v(lane - 1) } else { v(lane) }, "shfl_up keeps lane 0's own value");
        assert_eq!(o[4], if lane + 3 < 32 { v(lane + 3) } else { v(lane) }, "shfl_down keeps the top lanes' values");
        assert_eq!(o[5], v(5), "shfl from lane 5");
        assert_eq!(o[6], v(lane / 8 * 8 + ((lane % 8) ^ 2)), "shfl_xor within 8-lane segments");
    }
}
