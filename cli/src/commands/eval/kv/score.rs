//! Drives the engine for `eval kv`: every window is fed, teacher-forced, once with the full cache
//! (the reference) and once per (policy, budget), all in one engine batch, each in prefill chunks
//! of the same size so eviction happens after each chunk as when serving. Each run streams the raw
//! logits of every prompt position; positions are matched across runs and scored as they arrive,
//! so memory holds about one chunk of rows per run, not whole windows.
//!
//! The reference runs on its own engine when the policies run with another KV cache dtype
//! (`--kv-cache-dtype`): the reference is always the full cache in the model's dtype.
//!
//! Owns: batching windows, matching rows, and the tallies. Must not know: files, tables or plots.

use std::collections::HashMap;
use std::sync::mpsc;

use anyhow::{bail, Context, Result};
use indicatif::ProgressBar;
use kvault_engine::events::RequestEvent;
use kvault_engine::handle::EngineHandle;
use kvault_engine::kv_policy::KvPolicy;
use kvault_engine::request::NewRequest;
use kvault_engine::sampler::SamplingParams;

use super::metrics::{log_softmax, Tally};
use crate::kv;

/// One (policy, budget) row of the result; `KvPolicy::Full` is the reference itself.
#[derive(Clone, Debug)]
pub struct Scored {
    pub policy: KvPolicy,
    pub tally: Tally,
}

/// A scored run: which window, which policy (index into the policy list; `None` = reference).
#[derive(Clone, Copy)]
struct Run {
    window: usize,
    policy: Option<usize>,
}

/// The engines runs go to: the full-cache reference, and the policies (the same engine unless
/// the policies use another KV cache dtype).
#[derive(Clone, Copy)]
pub struct Engines<'a> {
    pub reference: &'a EngineHandle,
    pub policies: &'a EngineHandle,
}

/// Scores `policies` against the full cache on every window. `windows_per_batch` windows (each
/// with its reference and every policy) share the engine at once.
pub fn score(
    engine: Engines,
    windows: &[Vec<u32>],
    policies: &[KvPolicy],
    chunk: usize,
    windows_per_batch: usize,
    bar: &ProgressBar,
) -> Result<(Tally, Vec<Scored>)> {
    let mut reference = Tally::default();
    let mut scored: Vec<Scored> = policies.iter().map(|&policy| Scored { policy, tally: Tally::default() }).collect();
    for (b, batch) in windows.chunks(windows_per_batch.max(1)).enumerate() {
        let first = b * windows_per_batch.max(1);
        score_batch(engine, &windows[first..first + batch.len()], first, policies, chunk, bar, &mut reference, &mut scored)?;
    }
    Ok((reference, scored))
}

#[allow(clippy::too_many_arguments)]
fn score_batch(
    engines: Engines,
    windows: &[Vec<u32>],
    first_window: usize,
    policies: &[KvPolicy],
    chunk: usize,
    bar: &ProgressBar,
    reference: &mut Tally,
    scored: &mut [Scored],
) -> Result<()> {
    let mut runs = Vec::new();
    for w in 0..windows.len() {
        runs.push(Run { window: w, policy: None });
        runs.extend((0..policies.len()).map(|p| Run { window: w, policy: Some(p) }));
    }
    let (tx, rx) = mpsc::channel();
    let mut forwarders = Vec::with_capacity(runs.len());
    for (i, run) in runs.iter().enumerate() {
        let mut req = NewRequest::new(windows[run.window].clone(), SamplingParams { max_tokens: 0, temperature: 0.0, ..Default::default() });
        req.kv = run.policy.map_or(KvPolicy::Full, |p| policies[p]);
        req.prompt_logits = true;
        req.max_chunk_tokens = Some(chunk);
        let engine = if run.policy.is_some() { engines.policies } else { engines.reference };
        let mut stream = engine
            .submit(req)
            .map_err(kv::submit_error)
            .with_context(|| format!("window {} under {}", first_window + run.window, kv_name(&runs, i, policies)))?;
        let tx = tx.clone();
        // One forwarder per stream: rows are consumed in whatever order the runs produce them.
        forwarders.push(std::thread::spawn(move || {
            while let Some(event) = stream.blocking_next() {
                let last = matches!(event, RequestEvent::Finished(_) | RequestEvent::Failed(_));
                if tx.send((i, event)).is_err() || last {
                    break;
                }
            }
        }));
    }
    drop(tx);

    // Reference rows waiting for the policy runs that score them: (window, position) →
    // (log-distribution, runs still to come).
    let mut ref_rows: HashMap<(usize, usize), (Vec<f64>, usize)> = HashMap::new();
    // Policy rows that arrived before their reference: run → (position, log-distribution).
    let mut early: HashMap<usize, Vec<(usize, Vec<f64>)>> = HashMap::new();
    let mut finished = 0;
    while finished < runs.len() {
        let Ok((i, event)) = rx.recv() else { bail!("the engine stopped before every window was scored") };
        let run = runs[i];
        let tokens = &windows[run.window];
        match event {
            RequestEvent::PromptScores(s) => {
                let rows = s.logits.context("the engine sent prompt scores without logits")?;
                for (k, row) in rows.into_iter().enumerate() {
                    bar.inc(1);
                    // The row at position `pos` predicts token `pos + 1`.
                    let pos = s.first_token + k - 1;
                    let next = tokens[pos + 1];
                    let dist = log_softmax(&row);
                    match run.policy {
                        None => {
                            reference.add(&dist, &dist, next);
                            let needed: Vec<usize> = (0..policies.len()).filter(|&p| is_scored(&policies[p], pos)).collect();
                            let mut remaining = needed.len();
                            for p in needed {
                                let run_index = i + 1 + p;
                                if let Some(rows) = early.get_mut(&run_index) {
                                    if let Some(at) = rows.iter().position(|(q, _)| *q == pos) {
                                        let (_, policy_dist) = rows.swap_remove(at);
                                        scored[p].tally.add(&dist, &policy_dist, next);
                                        remaining -= 1;
                                    }
                                }
                            }
                            if remaining > 0 {
                                ref_rows.insert((run.window, pos), (dist, remaining));
                            }
                        }
                        Some(p) if is_scored(&policies[p], pos) => match ref_rows.get_mut(&(run.window, pos)) {
                            Some((full, remaining)) => {
                                scored[p].tally.add(full, &dist, next);
                                *remaining -= 1;
                                if *remaining == 0 {
                                    ref_rows.remove(&(run.window, pos));
                                }
                            }
                            None => early.entry(i).or_default().push((pos, dist)),
                        },
                        Some(_) => {} // within the budget: nothing was evicted yet
                    }
                }
            }
            RequestEvent::Finished(_) => finished += 1,
            RequestEvent::Failed(e) => bail!("window {}: the engine failed: {e}", first_window + run.window),
            RequestEvent::Tokens(_) => bail!("a scoring request generated tokens"),
        }
    }
    for f in forwarders {
        let _ = f.join();
    }
    if !ref_rows.is_empty() || early.values().any(|rows| !rows.is_empty()) {
        bail!("internal: some positions were never matched between the reference and a policy");
    }
    Ok(())
}

/// Positions scored for a policy: those predicted after eviction could have happened (more
/// tokens seen than the budget). Every position for the full cache.
pub fn is_scored(policy: &KvPolicy, pos: usize) -> bool {
    policy.budget().is_none_or(|b| pos >= b)
}

fn kv_name(runs: &[Run], i: usize, policies: &[KvPolicy]) -> String {
    runs[i].policy.map_or("the full cache".to_string(), |p| policies[p].describe())
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvault_engine::engine::EngineConfig;
    use kvault_engine::sizing::CacheBudget;
    use kvault_models::model::{load_model, LoadOptions};
    use kvault_models::source::ModelSource;

    /// Every raw logits row of one teacher-forced run, collected whole.
    fn all_rows(engine: &EngineHandle, window: &[u32], policy: KvPolicy, chunk: usize) -> Vec<Vec<f32>> {
        let mut req = NewRequest::new(window.to_vec(), SamplingParams { max_tokens: 0, ..Default::default() });
        req.kv = policy;
        req.prompt_logits = true;
        req.max_chunk_tokens = Some(chunk);
        let mut stream = engine.submit(req).unwrap();
        let mut rows = Vec::new();
        loop {
            match stream.blocking_next().unwrap() {
                RequestEvent::PromptScores(s) => rows.extend(s.logits.unwrap()),
                RequestEvent::Finished(_) => return rows,
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn streamed_scores_equal_a_direct_computation_from_the_logits() {
        let model = load_model(&ModelSource::Embedded, &LoadOptions::default()).unwrap();
        let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/data/texts/alice_in_wonderland.txt"))
            .expect("shared texts");
        let ids = model.tokenizer.encode(&text[3000..20000], true).unwrap();
        let windows = super::super::windows::windows(&ids, 160, 120, Some(3)).unwrap();
        let policies = [KvPolicy::Streaming { budget: 40, sink_tokens: 4 }, KvPolicy::H2o { budget: 48, recent_window: 16 }];
        let engine = EngineHandle::start(model, EngineConfig { cache_budget: CacheBudget::Blocks(512), ..Default::default() }).unwrap();
        let engines = Engines { reference: &engine, policies: &engine };
        let (reference, scored) = score(engines, &windows, &policies, 16, 2, &ProgressBar::hidden()).unwrap();

        // Direct: collect whole runs one at a time, then the textbook formulas.
        let (mut want_ref, mut want) = ((0f64, 0usize), vec![(0f64, 0f64, 0usize, 0usize); policies.len()]);
        for w in &windows {
            let full = all_rows(&engine, w, KvPolicy::Full, 16);
            for (pos, row) in full.iter().enumerate() {
                want_ref.0 -= log_softmax(row)[w[pos + 1] as usize];
                want_ref.1 += 1;
            }
            for (p, policy) in policies.iter().enumerate() {
                let rows = all_rows(&engine, w, *policy, 16);
                for pos in policy.budget().unwrap()..rows.len() {
                    let (lp, lq) = (log_softmax(&full[pos]), log_softmax(&rows[pos]));
                    let kl: f64 = lp.iter().zip(&lq).map(|(a, b)| a.exp() * (a - b)).sum();
                    let top = |v: &[f64]| v.iter().enumerate().fold(0, |best, (i, &x)| if x > v[best] { i } else { best });
                    want[p].0 += kl;
                    want[p].1 -= lq[w[pos + 1] as usize];
                    want[p].2 += usize::from(top(&lp) == top(&lq));
                    want[p].3 += 1;
                }
            }
        }
        let close = |a: f64, b: f64| (a - b).abs() <= 1e-9 * b.abs().max(1.0);
        assert!(close(reference.nll, want_ref.0) && reference.positions == want_ref.1);
        for (s, w) in scored.iter().zip(&want) {
            assert!(close(s.tally.kl, w.0), "{:?}: kl {} vs {}", s.policy, s.tally.kl, w.0);
            assert!(close(s.tally.nll, w.1), "{:?}: nll {} vs {}", s.policy, s.tally.nll, w.1);
            assert_eq!((s.tally.top1_agree, s.tally.positions), (w.2, w.3), "{:?}", s.policy);
            assert!(s.tally.kl > 0.0, "{:?} evicted, so it differs from the full cache", s.policy);
        }
        engine.check_idle().unwrap();
    }
}
