//! Past-Future admission (LightLLM, ASPLOS'25): sampled futures under a peak-memory bound.
//!
//! Owns: the output-length window of this policy, the Monte-Carlo futures of one round and the
//! admission test "max over futures of Peak(running + admitted + candidate) ≤ (1 − reserve) ·
//! capacity". Must not know: blocks held, preemption (the step logic pauses the newest request
//! when a sampled future proves too optimistic) or budgets.
//!
//! Per round, each running request gets one sampled final length per future from the
//! conditional tail of the window (it has already generated g tokens); the number of futures is
//! `min(max_futures, min_samples / |running| + 1)` as in the artifact, so small batches get more
//! draws. Demands are padded to blocks (`peak.rs`), so the bound also holds in blocks.
//! Unlike the artifact (one admission per round), a round may admit several requests: each
//! accepted candidate joins every future before the next one is tested.

use rand::rngs::StdRng;
use rand::SeedableRng;

use crate::error::{Result, SchedulerError};
use crate::history::{HistorySnapshot, OutputHistory};
use crate::peak::{peak_tokens, Demand};
use crate::policy::{AdmissionRound, Capacity, Occupant, Policy};
use crate::view::FinishKind;

#[derive(Debug, Clone, PartialEq)]
pub struct PastFutureConfig {
    /// Finished output lengths remembered (the artifact's 40).
    pub window: usize,
    /// Upper bound on Monte-Carlo futures per round (5).
    pub max_futures: usize,
    /// Aim for about this many sampled lengths per round (200).
    pub min_samples: usize,
    /// The pessimistic seed: half the window starts at this length (set it to the largest
    /// output the server allows).
    pub seed_output_len: usize,
    /// RNG seed, so runs (and the simulator) are reproducible.
    pub seed: u64,
}

impl Default for PastFutureConfig {
    fn default() -> Self {
        Self { window: 40, max_futures: 5, min_samples: 200, seed_output_len: 4096, seed: 0 }
    }
}

pub struct PastFuture {
    reserve: f64,
    max_futures: usize,
    min_samples: usize,
    history: OutputHistory,
    rng: StdRng,
}

impl PastFuture {
    pub fn new(reserve: f64, cfg: &PastFutureConfig) -> Result<Self> {
        if cfg.max_futures == 0 {
            return Err(SchedulerError::InvalidConfig("max_futures must be positive".into()));
        }
        Ok(Self {
            reserve,
            max_futures: cfg.max_futures,
            min_samples: cfg.min_samples,
            history: OutputHistory::new(cfg.window, cfg.seed_output_len)?,
            rng: StdRng::seed_from_u64(cfg.seed),
        })
    }

    pub fn history(&self) -> &OutputHistory {
        &self.history
    }

    fn futures_for(&self, running: usize) -> usize {
        self.max_futures.min(self.min_samples / running.max(1) + 1)
    }
}

/// A sampled final output length for `o` (conditional on what it has generated).
fn sample_final(snap: &HistorySnapshot, o: &Occupant, rng: &mut StdRng) -> usize {
    if o.output_tokens == 0 {
        snap.sample_new(o.max_output_tokens, rng)
    } else {
        snap.tail(o.output_tokens, o.max_output_tokens).sample(rng)
    }
}

struct Round<'a> {
    snap: HistorySnapshot,
    rng: &'a mut StdRng,
    futures: Vec<Vec<Demand>>,
    scratch: Vec<Demand>,
    limit: usize,
    block_size: usize,
}

impl Policy for PastFuture {
    fn name(&self) -> &'static str {
        "past-future"
    }

    fn start_round<'a>(&'a mut self, running: &[Occupant], capacity: Capacity)
        -> Box<dyn AdmissionRound + 'a> {
        let n = self.futures_for(running.len());
        let snap = self.history.snapshot();
        let bs = capacity.block_size;
        let mut futures: Vec<Vec<Demand>> = (0..n).map(|_| Vec::with_capacity(running.len() + 4)).collect();
        for o in running {
            // One tail per request, sampled once per future: the tail is the costly part.
            if o.output_tokens == 0 {
                for f in futures.iter_mut() {
                    let l = snap.sample_new(o.max_output_tokens, &mut self.rng);
                    f.push(o.demand(l).padded_to_blocks(bs));
                }
            } else {
                let tail = snap.tail(o.output_tokens, o.max_output_tokens);
                for f in futures.iter_mut() {
                    f.push(o.demand(tail.sample(&mut self.rng)).padded_to_blocks(bs));
                }
            }
        }
        Box::new(Round {
            snap,
            rng: &mut self.rng,
            futures,
            scratch: Vec::new(),
            limit: capacity.usable_tokens(self.reserve),
            block_size: bs,
        })
    }

    fn on_request_finished(&mut self, output_len: usize, reason: FinishKind) {
        self.history.record(output_len, reason);
    }
}

impl AdmissionRound for Round<'_> {
    fn try_admit(&mut self, candidate: &Occupant, _used_blocks_after: usize) -> bool {
        let mut picks = Vec::with_capacity(self.futures.len());
        let mut worst = 0;
        for f in &self.futures {
            let d = candidate.demand(sample_final(&self.snap, candidate, self.rng)).padded_to_blocks(self.block_size);
            self.scratch.clear();
            self.scratch.extend_from_slice(f);
            self.scratch.push(d);
            worst = worst.max(peak_tokens(&mut self.scratch));
            picks.push(d);
        }
        if worst > self.limit {
            return false;
        }
        for (f, d) in self.futures.iter_mut().zip(picks) {
            f.push(d);
        }
        true
    }
}

/// The policy's current load estimate: max over fresh futures of the running set's padded peak,
/// in tokens (a metric for /metrics; does not change the policy's state except its RNG).
pub fn estimated_peak_tokens(policy: &mut PastFuture, running: &[Occupant], block_size: usize) -> usize {
    let snap = policy.history.snapshot();
    let n = policy.futures_for(running.len());
    (0..n)
        .map(|_| {
            let mut f: Vec<Demand> = running
                .iter()
                .map(|o| o.demand(sample_final(&snap, o, &mut policy.rng)).padded_to_blocks(block_size))
                .collect();
            peak_tokens(&mut f)
        })
        .max()
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn occ(id: u64, prompt: usize, out: usize, max_out: usize) -> Occupant {
        Occupant { id, prompt_len: prompt, held_tokens: prompt + out, output_tokens: out, max_output_tokens: max_out, kv_token_cap: None }
    }

    fn policy(window: usize, seed_len: usize) -> PastFuture {
        PastFuture::new(0.0, &PastFutureConfig { window, seed_output_len: seed_len, ..Default::default() }).unwrap()
    }

    #[test]
    fn number_of_futures_follows_the_artifact_rule() {
        let p = policy(40, 100);
        assert_eq!(p.futures_for(0), 5);
        assert_eq!(p.futures_for(60), 4);
        assert_eq!(p.futures_for(100), 3);
        assert_eq!(p.futures_for(1000), 1);
    }

    #[test]
    fn learned_short_outputs_let_more_requests_in() {
        let cap = Capacity { total_blocks: 100, block_size: 1 }; // 100 tokens
        let count = |p: &mut PastFuture| {
            let mut r = p.start_round(&[], cap);
            (0..100).take_while(|i| r.try_admit(&occ(*i, 5, 0, 40), 0)).count()
        };
        // Pessimistic seed: every request looks like 5 + 40 − 1 = 44 tokens → 2 fit.
        let mut p = policy(4, 40);
        assert_eq!(count(&mut p), 2);
        for _ in 0..4 {
            p.on_request_finished(5, FinishKind::Stop);
        }
        // Learned: 5 + 5 − 1 = 9 tokens each → 11 fit.
        assert_eq!(count(&mut p), 11);
    }

    #[test]
    fn capped_requests_reserve_at_most_their_cap() {
        let cap = Capacity { total_blocks: 100, block_size: 1 };
        let mut p = policy(4, 1000);
        let mut r = p.start_round(&[], cap);
        let capped = Occupant { kv_token_cap: Some(20), ..occ(0, 5, 0, 1000) };
        assert_eq!((0..10).take_while(|_| r.try_admit(&capped, 0)).count(), 5);
    }

    #[test]
    fn load_estimate_grows_with_the_running_set() {
        let mut p = policy(4, 50);
        let one = estimated_peak_tokens(&mut p, &[occ(0, 10, 1, 50)], 1);
        let two = estimated_peak_tokens(&mut p, &[occ(0, 10, 1, 50), occ(1, 10, 1, 50)], 1);
        assert!(one >= 11 && two > one, "{one} {two}");
    }
}
