//! The offload tier seen from outside the engine: blocks that left the pool come back from RAM
//! or from disk (also in a new engine on the same directory) with identical output, swap
//! preemption changes no output, and nothing leaks, aborts included.

mod support;

use std::path::Path;

use kvault_engine::engine::EngineConfig;
use kvault_engine::handle::EngineHandle;
use kvault_engine::offload::fingerprint::WeightsIdentity;
use kvault_engine::offload::{OffloadConfig, PreemptionMode};
use kvault_engine::request::NewRequest;
use kvault_engine::sampler::SamplingParams;
use support::*;

fn greedy_logprobs(max_tokens: usize) -> SamplingParams {
    SamplingParams { logprobs: Some(2), ..greedy(max_tokens) }
}

fn with_tiers(num_blocks: usize, ram: Option<u64>, disk: Option<&Path>) -> EngineConfig {
    EngineConfig {
        offload: OffloadConfig {
            ram_bytes: ram,
            disk_dir: disk.map(Path::to_path_buf),
            disk_bytes: disk.map(|_| 1 << 30),
            preemption: PreemptionMode::Recompute,
            weights: Some(WeightsIdentity::Named("stories260K-test".into())),
        },
        ..config(num_blocks)
    }
}

/// Serves one request on a fresh engine, then shuts it down (which waits for the tier's writes).
fn serve_once(cfg: EngineConfig, req: (Vec<u32>, SamplingParams)) -> support::Collected {
    let engine = EngineHandle::start(stories(), cfg).unwrap();
    let out = run_all(&engine, &[req]).pop().unwrap();
    engine.shutdown();
    out
}

/// Runs other prompts until none of `target`'s blocks can still be in a pool of this size.
fn flush_pool(engine: &EngineHandle, others: &[Vec<u32>]) {
    for p in others {
        run_all(engine, &[(p.clone(), greedy(4))]);
    }
}

#[test]
fn blocks_evicted_from_the_pool_come_back_from_ram_with_identical_output() {
    let model = stories();
    let ps = prompts(&model, 8, 200);
    let target = ps[5].clone(); // the longest
    assert!(target.len() > 150);
    let engine = EngineHandle::start(stories(), with_tiers(24, Some(64 << 20), None)).unwrap();
    let first = run_all(&engine, &[(target.clone(), greedy_logprobs(20))]).pop().unwrap();
    assert_eq!(first.done.usage.cached_tokens, 0);
    flush_pool(&engine, &[ps[1].clone(), ps[2].clone(), ps[3].clone(), ps[4].clone(), ps[6].clone()]);
    let before = engine.stats().offload;
    let again = run_all(&engine, &[(target.clone(), greedy_logprobs(20))]).pop().unwrap();
    let after = engine.stats().offload;
    assert!(after.ram.hits > before.ram.hits, "the prefix came from the RAM tier: {after:?}");
    let expect = (target.len() - 1) / 16 * 16;
    assert_eq!(again.done.usage.cached_tokens, expect);
    assert_eq!((again.ids, again.logprobs), (first.ids, first.logprobs));
    assert!(after.ram.bytes_held <= after.ram.budget_bytes);
    engine.check_idle().unwrap();
}

#[test]
fn a_new_engine_on_the_same_directory_hits_the_disk_tier_with_identical_output() {
    let model = stories();
    let target = prompts(&model, 8, 200)[5].clone();
    let dir = tempfile::tempdir().unwrap();
    let first = serve_once(with_tiers(64, None, Some(dir.path())), (target.clone(), greedy_logprobs(20)));
    let engine = EngineHandle::start(stories(), with_tiers(64, None, Some(dir.path()))).unwrap();
    let again = run_all(&engine, &[(target.clone(), greedy_logprobs(20))]).pop().unwrap();
    let stats = engine.stats().offload;
    assert!(stats.disk.hits > 0 && stats.disk.bytes_out > 0, "{stats:?}");
    assert!(again.done.usage.cached_tokens * 10 >= target.len() * 9, "{} of {}", again.done.usage.cached_tokens, target.len());
    assert_eq!((again.ids, again.logprobs), (first.ids, first.logprobs));
    engine.check_idle().unwrap();
}

#[test]
fn another_model_layout_on_the_same_directory_never_hits() {
    let model = stories();
    let target = prompts(&model, 8, 200)[5].clone();
    let dir = tempfile::tempdir().unwrap();
    serve_once(with_tiers(64, None, Some(dir.path())), (target.clone(), greedy(4)));
    // Same weights, other block size: other keys, never a hit.
    let cfg = EngineConfig { block_size: 32, ..with_tiers(64, None, Some(dir.path())) };
    let engine = EngineHandle::start(stories(), cfg).unwrap();
    let again = run_all(&engine, &[(target, greedy(4))]).pop().unwrap();
    assert_eq!(again.done.usage.cached_tokens, 0);
    assert_eq!(engine.stats().offload.disk.hits, 0);
}

fn swap_config(num_blocks: usize, mode: PreemptionMode) -> EngineConfig {
    let mut cfg = with_tiers(num_blocks, Some(256 << 20), None);
    cfg.offload.preemption = mode;
    cfg.max_model_len = Some(256);
    cfg.policy = kvault_scheduler::PolicyKind::Aggressive;
    cfg
}

#[test]
fn swap_preemption_gives_the_outputs_of_an_unconstrained_run_and_frees_everything() {
    let model = stories();
    let reqs: Vec<_> = prompts(&model, 16, 60).into_iter().map(|p| (p, greedy_logprobs(120))).collect();
    let want = run_all(&EngineHandle::start(stories(), config(2048)).unwrap(), &reqs);
    for mode in [PreemptionMode::Swap, PreemptionMode::Auto] {
        // 40 blocks of 16 = 640 tokens for 16 requests of up to ~180 tokens each.
        let engine = EngineHandle::start(stories(), swap_config(40, mode)).unwrap();
        let got = run_all(&engine, &reqs);
        for (g, w) in got.iter().zip(&want) {
            assert_eq!((&g.ids, &g.logprobs), (&w.ids, &w.logprobs), "{mode:?}");
        }
        let stats = engine.stats();
        assert!(stats.preemptions > 0, "the pool was meant to force preemption");
        if mode == PreemptionMode::Swap {
            assert!(stats.offload.swap_outs > 0 && stats.offload.swap_ins == stats.offload.swap_outs, "{:?}", stats.offload);
        }
        assert_eq!(stats.offload.swap_bytes, 0);
        engine.check_idle().unwrap();
    }
}

#[test]
fn aborting_requests_while_swapped_out_leaks_nothing() {
    let model = stories();
    let reqs: Vec<_> = prompts(&model, 16, 60).into_iter().map(|p| (p, greedy(150))).collect();
    let engine = EngineHandle::start(stories(), swap_config(40, PreemptionMode::Swap)).unwrap();
    let mut streams: Vec<_> = reqs.iter().map(|(p, sp)| engine.submit(NewRequest::new(p.clone(), sp.clone())).unwrap()).collect();
    // Wait until something is swapped out, then abort every other request and drop a few more.
    let t = std::time::Instant::now();
    while engine.stats().offload.swap_outs == 0 && t.elapsed().as_secs() < 60 {
        for s in streams.iter_mut().take(4) {
            s.blocking_next();
        }
    }
    assert!(engine.stats().offload.swap_outs > 0, "nothing was swapped out");
    for s in streams.iter().step_by(2) {
        engine.abort(s.id());
    }
    let keep: Vec<_> = streams.drain(10..).collect();
    drop(streams);
    for s in keep {
        let _ = collect_any(s);
    }
    engine.check_idle().unwrap();
    assert_eq!(engine.stats().offload.swap_bytes, 0);
}

/// Reads a stream to its end whatever the outcome (an aborted request ends with Finished(abort)).
fn collect_any(mut s: kvault_engine::handle::RequestStream) -> usize {
    let mut n = 0;
    while s.blocking_next().is_some() {
        n += 1;
    }
    n
}

#[test]
fn bad_tier_settings_are_start_up_errors_naming_the_problem() {
    let missing = Path::new("/nonexistent/kvault-offload");
    let err = EngineHandle::start(stories(), with_tiers(64, None, Some(missing))).err().unwrap().to_string();
    assert!(err.contains("/nonexistent/kvault-offload"), "{err}");
    let err = EngineHandle::start(stories(), with_tiers(64, Some(10), None)).err().unwrap().to_string();
    assert!(err.contains("--kv-offload-ram") && err.contains("smaller than one KV block"), "{err}");
    let mut cfg = with_tiers(64, None, None);
    cfg.offload.preemption = PreemptionMode::Swap;
    let err = EngineHandle::start(stories(), cfg).err().unwrap().to_string();
    assert!(err.contains("--kv-offload-ram"), "{err}");
}

#[test]
fn a_disk_tier_that_cannot_write_disables_itself_and_serving_continues() {
    let model = stories();
    let ps = prompts(&model, 8, 200);
    let dir = tempfile::tempdir().unwrap();
    let engine = EngineHandle::start(stories(), with_tiers(64, None, Some(dir.path()))).unwrap();
    // The tier's directory vanishes under it (as a full or failed disk would fail writes).
    for sub in std::fs::read_dir(dir.path()).unwrap() {
        std::fs::remove_dir_all(sub.unwrap().path()).unwrap();
    }
    let first = run_all(&engine, &[(ps[5].clone(), greedy(8))]).pop().unwrap();
    let t = std::time::Instant::now();
    while !engine.stats().offload.disk.disabled && t.elapsed().as_secs() < 30 {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let stats = engine.stats().offload;
    assert!(stats.disk.disabled, "{stats:?}");
    assert_eq!(stats.disk.blocks_held, 0);
    // Serving goes on, with the same output, and later blocks are not even queued.
    let again = run_all(&engine, &[(ps[5].clone(), greedy(8)), (ps[6].clone(), greedy(8))]);
    assert_eq!(again[0].ids, first.ids);
    engine.check_idle().unwrap();
}

#[test]
fn the_disk_tier_never_holds_more_than_its_budget() {
    let model = stories();
    let ps = prompts(&model, 8, 200);
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = with_tiers(32, None, Some(dir.path()));
    // Room for a few stories260K blocks: most prompts' extents push older ones out.
    let budget = 96 * 1024;
    cfg.offload.disk_bytes = Some(budget);
    let engine = EngineHandle::start(stories(), cfg).unwrap();
    for p in &ps {
        run_all(&engine, &[(p.clone(), greedy(4))]);
        let on_disk: u64 = std::fs::read_dir(dir.path())
            .unwrap()
            .flat_map(|sub| std::fs::read_dir(sub.unwrap().path()).unwrap())
            .map(|f| f.unwrap().metadata().unwrap().len())
            .filter(|&len| len > 8)
            .sum();
        let held = engine.stats().offload.disk.bytes_held;
        assert!(held <= budget && on_disk <= budget + 4096, "held {held}, files {on_disk}, budget {budget}");
    }
    // Shutting down joins the writer, so every queued extent has been written (or dropped).
    engine.shutdown();
    let stats = engine.stats().offload.disk;
    assert!(stats.bytes_in > budget, "the budget was meant to be exceeded by what was written: {stats:?}");
    assert!(stats.bytes_held <= budget, "{stats:?}");
}
