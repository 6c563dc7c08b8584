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
fn local_profile_runs_the_sharegpt_like_workload_under_its_default_sla() {
    let hw = Hardware::profile(HardwareKind::Local);
    let mut cfg = small(vec![Workload::ShareGpt], vec![8], 24);
    cfg.sla = hw.default_sla();
    cfg.hardware = vec![hw];
    for r in simulate(&cfg).unwrap() {
        assert_eq!((r.hardware.as_str(), r.good), ("local", 24), "{r:?}");
        // Light load on the local profile meets its own SLA without a single re-send.
        assert_eq!(r.failed, 0, "{r:?}");
    }
}

#[test]
fn failed_requests_are_resent_until_every_prompt_meets_the_sla() {
    // 40 clients of long requests against a 4 s TTFT: many requests miss it and are re-sent, but
    // the run only ends once each of the 60 prompts has succeeded once.
    let mut cfg = small(vec![Workload::Uniform1], vec![40], 60);
    cfg.sla = kvault_scheduler::SlaConfig::new(4_000.0, 1_500.0).unwrap();
    for r in simulate(&cfg).unwrap() {
        assert!(!r.timed_out, "{r:?}");
        assert_eq!(r.good, 60, "{r:?}");
        assert!(r.failed > 0, "the tight SLA must cause re-sends: {r:?}");
        assert!((r.goodput_rps - 60.0 / r.sim_time_s).abs() < 1e-9, "goodput = good / wall time: {r:?}");
    }
}

#[test]
fn the_issue_grid_runs_every_client_count_from_10_to_100() {
    let clients = vec![10, 20, 40, 60, 80, 100];
    let recs = simulate(&small(vec![Workload::ShareGpt], clients.clone(), 120)).unwrap();
    assert_eq!(recs.len(), clients.len() * 3);
    for (i, r) in recs.iter().enumerate() {
        assert_eq!(r.clients, clients[i / 3]);
        assert_eq!(r.good, 120, "{r:?}");
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

#[test]
fn a_kv_budget_runs_under_every_policy_with_the_engines_footprint_and_preempts_less() {
    // The simulator checks every step against the decision contract, with the budgeted
    // footprint (`footprint`), so a violation would be an error here.
    let base = small(vec![Workload::Uniform1], vec![60], 60);
    let full = simulate(&base).unwrap();
    let capped = simulate(&SimConfig { kv_budget: Some(512), ..base }).unwrap();
    for (f, c) in full.iter().zip(&capped) {
        assert!(!c.timed_out && c.good == 60, "{c:?}");
        assert!(c.preemptions <= f.preemptions, "{}: budget {} vs full {}", c.policy, c.preemptions, f.preemptions);
    }
    let aggressive = |recs: &[kvault_scheduler::sim::SimRecord]| recs.iter().find(|r| r.policy == "aggressive").unwrap().preemptions;
    assert!(aggressive(&capped) < aggressive(&full), "a budget frees memory: fewer preemptions");
}
