//! End-to-end checks of the simulator: the real scheduler and policies against the cost model.

use kvault_scheduler::sim::{simulate, simulate_one, Hardware, HardwareKind, SimConfig, Workload};
use kvault_scheduler::PolicyKind;

fn small(workloads: Vec<Workload>, clients: Vec<usize>, prompts: usize) -> SimConfig {
    SimConfig { workloads, clients, num_prompts: prompts, seed: 42, ..SimConfig::default() }
}

#[test]
fn simulation_is_deterministic_for_a_seed() {
    let cfg = small(vec![Workload::Uniform3], vec![20], 40);
    let a = simulate(&cfg).unwrap();
    let b = simulate(&cfg).unwrap();
    assert_eq!(a, b);
    let c = simulate(&SimConfig { seed: 43, ..cfg }).unwrap();
    assert_ne!(a, c, "a different seed draws different prompts");
}

#[test]
fn every_workload_completes_at_small_scale_under_every_policy() {
    for w in Workload::ALL {
        let recs = simulate(&small(vec![w], vec![4], 12)).unwrap();
        assert_eq!(recs.len(), 3);
        for r in &recs {
            assert!(!r.timed_out, "{r:?}");
            assert_eq!(r.good, 12, "every prompt eventually succeeds: {r:?}");
            assert!(r.goodput_rps > 0.0 && r.throughput_tok_s > 0.0 && r.p99_ttft_ms > 0.0);
        }
    }
}

#[test]
fn local_profile_runs_the_sharegpt_like_workload() {
    let mut cfg = small(vec![Workload::ShareGpt], vec![8], 24);
    cfg.hardware = vec![Hardware::profile(HardwareKind::Local)];
    cfg.sla = kvault_scheduler::SlaConfig::new(60_000.0, 5_000.0).unwrap();
    for r in simulate(&cfg).unwrap() {
        assert_eq!((r.hardware.as_str(), r.good), ("local", 24), "{r:?}");
    }
}

#[test]
fn light_load_policies_agree_and_heavy_load_aggressive_preempts_most() {
    let light = simulate(&small(vec![Workload::Uniform1], vec![4], 24)).unwrap();
    let g: Vec<f64> = light.iter().map(|r| r.goodput_rps).collect();
    let (lo, hi) = g.iter().fold((f64::MAX, 0.0f64), |(lo, hi), &x| (lo.min(x), hi.max(x)));
    assert!(hi / lo < 1.15, "light load goodputs differ too much: {light:#?}");

    let heavy = simulate(&small(vec![Workload::Uniform1], vec![80], 160)).unwrap();
    let by = |k: PolicyKind| heavy.iter().find(|r| r.policy == k.as_str()).unwrap();
    let (agg, con, pf) = (by(PolicyKind::Aggressive), by(PolicyKind::Conservative), by(PolicyKind::PastFuture));
    assert!(agg.preemptions > 0 && agg.preemptions > pf.preemptions && agg.preemptions > con.preemptions, "{heavy:#?}");
    assert_eq!(con.preemptions, 0, "reserving max_tokens never runs out of blocks");
}

#[test]
fn bad_configs_are_errors_not_panics() {
    let mut cfg = small(vec![Workload::Uniform2], vec![0], 10);
    assert!(simulate(&cfg).is_err());
    cfg.clients = vec![4];
    let mut run = cfg.runs().remove(0);
    run.hardware.max_model_len = 6000; // uniform2 needs up to 10000
    assert!(simulate_one(&run).is_err());
}
