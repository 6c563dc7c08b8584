//! The shared step logic (vLLM v1 style) that every policy runs under.
//!
//! Owns: token budgets, chunked prefill, block accounting, preemption of the newest running
//! request, and the FIFO/head-of-line admission loop that consults the policy. Must not know how
//! a policy decides, nor anything about tensors or the block pool's internals; the decision
//! contract is documented in `view.rs`.
//!
//! 1. Running requests, in order: each gets `min(tokens not yet computed, budget left)` (and at
//!    most its KV budget, see `footprint`). It needs `footprint::step_blocks − held` more
//!    blocks; while the pool cannot supply them,
//!    the newest running request (the last one not yet preempted, possibly itself) is preempted
//!    by recompute and its exclusive blocks count as free again.
//! 2. Only if nothing was preempted (admitting right after a preemption just thrashes): waiting
//!    requests in FIFO order, while `max_num_seqs`, the token budget (the last one may get only a
//!    chunk of its prompt), the free blocks and the policy's admission test all allow. The first
//!    that does not fit stops the loop (head-of-line, no skipping).

use crate::error::Result;
use crate::choice::PolicyConfig;
use crate::policy::{Capacity, Occupant, Policy};
use crate::footprint::{decode_cap, step_blocks};
use crate::view::{FinishKind, RequestView, ScheduledChunk, StepDecision, StepInput};

pub struct Scheduler {
    policy: Box<dyn Policy>,
}

fn max_output(r: &RequestView, max_model_len: usize) -> usize {
    r.max_tokens.min(max_model_len.saturating_sub(r.prompt_len)).max(r.num_output_tokens)
}

fn occupant(r: &RequestView, held_tokens: usize, max_model_len: usize) -> Occupant {
    Occupant {
        id: r.id,
        prompt_len: r.prompt_len,
        held_tokens,
        output_tokens: r.num_output_tokens,
        max_output_tokens: max_output(r, max_model_len),
        kv_token_cap: decode_cap(r.kv_token_cap),
    }
}

impl Scheduler {
    pub fn new(policy: Box<dyn Policy>) -> Self {
        Self { policy }
    }

    pub fn from_config(cfg: &PolicyConfig) -> Result<Self> {
        Ok(Self::new(cfg.build()?))
    }

    pub fn policy_name(&self) -> &'static str {
        self.policy.name()
    }

    /// Feeds a finished request's output length to the policy's history.
    pub fn on_request_finished(&mut self, output_len: usize, reason: FinishKind) {
        self.policy.on_request_finished(output_len, reason);
    }

    /// Decides one step. Errors only on an inconsistent view.
    pub fn schedule(&mut self, input: &StepInput) -> Result<StepDecision> {
        input.validate()?;
        let bs = input.pool.block_size;
        let mut budget = input.budgets.max_num_batched_tokens;
        let mut free = input.pool.free_blocks;
        let mut decision = StepDecision::default();
        // Held tokens after this step, per running request still alive (parallel to `running`).
        let mut held_after: Vec<usize> = Vec::with_capacity(input.running.len());
        let mut alive = input.running.len();

        let mut i = 0;
        while i < alive && budget > 0 {
            let r = &input.running[i];
            let new = (r.num_tokens - r.num_computed_tokens).min(budget).min(r.chunk_limit(r.num_computed_tokens));
            if new == 0 {
                held_after.push(r.num_computed_tokens);
                i += 1;
                continue;
            }
            let need = step_blocks(r.num_computed_tokens, new, r.kv_token_cap, bs).saturating_sub(r.blocks_held);
            while need > free && alive > i {
                alive -= 1;
                let victim = &input.running[alive];
                free += victim.exclusive_blocks;
                decision.preempted.push(victim.id);
            }
            if alive == i {
                break; // it preempted itself: everything after it is already gone
            }
            free -= need;
            budget -= new;
            held_after.push(r.num_computed_tokens + new);
            decision.scheduled.push(ScheduledChunk {
                id: r.id,
                num_new_tokens: new,
                admitted: false,
                num_prefix_hit_tokens: 0,
                hit_blocks_from_free: 0,
                new_blocks: need,
            });
            i += 1;
        }
        // Requests left unvisited because the budget ran out still hold their KV.
        for r in &input.running[held_after.len().min(alive)..alive] {
            held_after.push(r.num_computed_tokens);
        }
        decision.preempted.reverse(); // victims were taken newest first; report oldest first

        if decision.preempted.is_empty() {
            self.admit(input, &held_after, budget, free, &mut decision);
        }
        Ok(decision)
    }

    fn admit(&mut self, input: &StepInput, held_after: &[usize], mut budget: usize, mut free: usize,
             decision: &mut StepDecision) {
        let bs = input.pool.block_size;
        let mml = input.budgets.max_model_len;
        let mut n_running = input.running.len();
        // Sampling futures costs more than the physical checks: skip the round when even the
        // head of the queue cannot get in.
        let head_fits = input.waiting.first().is_some_and(|w| fit(w, bs, budget, free).is_some());
        if !head_fits || n_running >= input.budgets.max_num_seqs {
            return;
        }
        let running: Vec<Occupant> =
            input.running.iter().zip(held_after).map(|(r, &h)| occupant(r, h, mml)).collect();
        let capacity = Capacity { total_blocks: input.pool.total_blocks, block_size: bs };
        let mut round = self.policy.start_round(&running, capacity);
        for w in input.waiting {
            if n_running >= input.budgets.max_num_seqs {
                break;
            }
            let Some(f) = fit(w, bs, budget, free) else { break };
            let used_after = input.pool.total_blocks - (free - f.taken());
            if !round.try_admit(&occupant(w, f.hit + f.new, mml), used_after) {
                break;
            }
            free -= f.taken();
            budget -= f.new;
            n_running += 1;
            decision.scheduled.push(ScheduledChunk {
                id: w.id,
                num_new_tokens: f.new,
                admitted: true,
                num_prefix_hit_tokens: f.hit,
                hit_blocks_from_free: f.hit_from_free,
                new_blocks: f.fresh,
            });
        }
    }
}

/// How a waiting request would enter this step, if the budget and the free blocks allow.
struct Fit {
    hit: usize,
    hit_from_free: usize,
    new: usize,
    fresh: usize,
}

impl Fit {
    fn taken(&self) -> usize {
        self.fresh + self.hit_from_free
    }
}

fn fit(w: &RequestView, bs: usize, budget: usize, free: usize) -> Option<Fit> {
    // Keep at least one token to compute so the step yields logits for it.
    let max_hit = (w.num_tokens.saturating_sub(1) / bs) * bs;
    let hit = w.prefix_hit_tokens.min(max_hit);
    let hit_blocks = hit / bs;
    let hit_from_free = w.prefix_hit_free_blocks.min(hit_blocks);
    let new = (w.num_tokens - hit).min(budget).min(w.chunk_limit(hit));
    // A capped request will rewrite its slots, so it gets private copies of its hit blocks.
    let shared = if w.kv_token_cap.is_some() { 0 } else { hit_blocks };
    let fresh = step_blocks(hit, new, w.kv_token_cap, bs).saturating_sub(shared);
    let f = Fit { hit, hit_from_free, new, fresh };
    (new > 0 && f.taken() <= free).then_some(f)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conservative::reserved_tokens;
    use crate::past_future::PastFutureConfig;
    use crate::choice::PolicyKind;
    use crate::view::{Budgets, PoolView};
    use rand::{rngs::StdRng, Rng, SeedableRng};

    const BS: usize = 16;

    /// A running request: `prompt` tokens, `output` generated, `computed` cached, blocks to match.
    fn run(id: u64, prompt: usize, output: usize, computed: usize) -> RequestView {
        let held = computed.div_ceil(BS);
        RequestView {
            id,
            arrival_seq: id,
            prompt_len: prompt,
            num_tokens: prompt + output,
            num_computed_tokens: computed,
            num_output_tokens: output,
            max_tokens: 1000,
            blocks_held: held,
            exclusive_blocks: held,
            ..Default::default()
        }
    }

    /// A decoding request whose next token starts a new block.
    fn decode_at_boundary(id: u64, blocks: usize) -> RequestView {
        let prompt = blocks * BS;
        run(id, prompt, 1, prompt)
    }

    fn wait(id: u64, prompt: usize) -> RequestView {
        RequestView { id, arrival_seq: id, prompt_len: prompt, num_tokens: prompt, max_tokens: 1000, ..Default::default() }
    }

    fn input<'a>(running: &'a [RequestView], waiting: &'a [RequestView], free: usize, budget: usize, seqs: usize) -> StepInput<'a> {
        StepInput {
            running,
            waiting,
            pool: PoolView { total_blocks: 1000, free_blocks: free, block_size: BS },
            budgets: Budgets { max_num_batched_tokens: budget, max_num_seqs: seqs, max_model_len: 100_000 },
        }
    }

    fn sched(kind: PolicyKind) -> Scheduler {
        Scheduler::from_config(&PolicyConfig { kind, reserve: 0.0, ..Default::default() }).unwrap()
    }

    fn ids(d: &StepDecision) -> Vec<(u64, usize)> {
        d.scheduled.iter().map(|c| (c.id, c.num_new_tokens)).collect()
    }

    #[test]
    fn running_requests_share_the_budget_in_order() {
        let running = [run(1, 50, 0, 0), run(2, 50, 0, 0), run(3, 50, 0, 0)];
        let d = sched(PolicyKind::Aggressive).schedule(&input(&running, &[], 100, 80, 8)).unwrap();
        assert_eq!(ids(&d), vec![(1, 50), (2, 30)]);
        assert!(d.total_new_tokens() <= 80);
        assert_eq!(d.scheduled[1].new_blocks, 2, "30 tokens need 2 blocks of 16");
    }

    #[test]
    fn last_admitted_prompt_gets_only_a_chunk() {
        let running = [run(1, 20, 3, 22)];
        let waiting = [wait(2, 60), wait(3, 60), wait(4, 5)];
        let d = sched(PolicyKind::Aggressive).schedule(&input(&running, &waiting, 100, 100, 8)).unwrap();
        assert_eq!(ids(&d), vec![(1, 1), (2, 60), (3, 39)]);
        assert!(d.scheduled[1].admitted && d.scheduled[2].admitted);
        assert_eq!(d.scheduled[2].new_blocks, 3);
    }

    #[test]
    fn out_of_blocks_preempts_the_newest_running_request() {
        let running = [decode_at_boundary(1, 2), decode_at_boundary(2, 2), decode_at_boundary(3, 2)];
        let d = sched(PolicyKind::Aggressive).schedule(&input(&running, &[], 0, 100, 8)).unwrap();
        assert_eq!(d.preempted, vec![3]);
        assert_eq!(ids(&d), vec![(1, 1), (2, 1)]);
        assert_eq!(d.free_blocks_taken(), 2, "exactly the victim's blocks");
    }

    #[test]
    fn preemption_victims_are_reported_oldest_first() {
        // Request 1 needs 3 blocks; 2 and 3 hold one each.
        let running = [run(1, 48, 0, 0), decode_at_boundary(2, 1), decode_at_boundary(3, 1)];
        let d = sched(PolicyKind::Aggressive).schedule(&input(&running, &[], 1, 100, 8)).unwrap();
        assert_eq!(d.preempted, vec![2, 3]);
        assert_eq!(ids(&d), vec![(1, 48)]);
    }

    #[test]
    fn a_request_that_cannot_grow_preempts_itself() {
        let running = [decode_at_boundary(1, 2)];
        let d = sched(PolicyKind::Aggressive).schedule(&input(&running, &[wait(2, 4)], 0, 100, 8)).unwrap();
        assert_eq!(d.preempted, vec![1]);
        assert!(d.scheduled.is_empty());
    }

    #[test]
    fn nothing_is_admitted_in_a_step_with_a_preemption() {
        let running = [decode_at_boundary(1, 2), decode_at_boundary(2, 2)];
        // After preempting 2 there are 2 − 1 = 1 free blocks: enough for the 4-token prompt.
        let d = sched(PolicyKind::Aggressive).schedule(&input(&running, &[wait(3, 4)], 0, 100, 8)).unwrap();
        assert_eq!(d.preempted, vec![2]);
        assert!(d.scheduled.iter().all(|c| !c.admitted), "{d:?}");
    }

    #[test]
    fn head_of_line_request_that_does_not_fit_blocks_the_queue() {
        let waiting = [wait(1, 100), wait(2, 4)];
        let d = sched(PolicyKind::Aggressive).schedule(&input(&[], &waiting, 3, 1000, 8)).unwrap();
        assert!(d.scheduled.is_empty(), "the 4-token request must not jump the queue: {d:?}");
        let d = sched(PolicyKind::Aggressive).schedule(&input(&[], &waiting, 8, 1000, 8)).unwrap();
        assert_eq!(ids(&d), vec![(1, 100), (2, 4)]);
    }

    #[test]
    fn max_num_seqs_caps_running_plus_admitted() {
        let running = [run(1, 20, 3, 22)];
        let waiting: Vec<RequestView> = (2..10).map(|i| wait(i, 4)).collect();
        let d = sched(PolicyKind::Aggressive).schedule(&input(&running, &waiting, 100, 1000, 4)).unwrap();
        assert_eq!(d.scheduled.len(), 4);
        assert_eq!(d.scheduled.iter().filter(|c| c.admitted).count(), 3);
    }

    #[test]
    fn full_prefix_hit_still_computes_one_block_and_counts_free_hit_blocks() {
        let mut w = wait(1, 32);
        w.prefix_hit_tokens = 32;
        w.prefix_hit_free_blocks = 2;
        let d = sched(PolicyKind::Aggressive).schedule(&input(&[], std::slice::from_ref(&w), 10, 100, 8)).unwrap();
        let c = &d.scheduled[0];
        assert_eq!((c.num_prefix_hit_tokens, c.num_new_tokens, c.new_blocks, c.hit_blocks_from_free), (16, 16, 1, 1));
        // With only one free block the fresh block plus the free hit block do not fit.
        let d = sched(PolicyKind::Aggressive).schedule(&input(&[], std::slice::from_ref(&w), 1, 100, 8)).unwrap();
        assert!(d.scheduled.is_empty());
    }

    #[test]
    fn conservative_never_admits_beyond_reserved_capacity() {
        let mut rng = StdRng::seed_from_u64(4);
        for _ in 0..300 {
            let mut s = Scheduler::from_config(&PolicyConfig { kind: PolicyKind::Conservative, reserve: 0.05, ..Default::default() }).unwrap();
            let total = rng.random_range(50..400);
            let waiting: Vec<RequestView> = (0..20)
                .map(|i| RequestView { max_tokens: rng.random_range(1..500), ..wait(i, rng.random_range(1..200)) })
                .collect();
            let inp = StepInput {
                running: &[],
                waiting: &waiting,
                pool: PoolView { total_blocks: total, free_blocks: total, block_size: BS },
                budgets: Budgets { max_num_batched_tokens: 100_000, max_num_seqs: 100, max_model_len: 100_000 },
            };
            let d = s.schedule(&inp).unwrap();
            let reserved: usize = d.scheduled.iter().map(|c| {
                let w = waiting.iter().find(|w| w.id == c.id).unwrap();
                reserved_tokens(&occupant(w, c.num_new_tokens, 100_000), BS)
            }).sum();
            assert!(reserved as f64 <= 0.95 * (total * BS) as f64, "{reserved} > 95% of {}", total * BS);
            // And it is not vacuous: the next in line would have broken the bound.
            if let Some(next) = waiting.get(d.scheduled.len()) {
                let extra = reserved_tokens(&occupant(next, next.num_tokens, 100_000), BS);
                let blocks_left = total - d.free_blocks_taken();
                assert!(reserved + extra > (0.95 * (total * BS) as f64) as usize || next.num_tokens.div_ceil(BS) > blocks_left);
            }
        }
    }

    #[test]
    fn past_future_admits_between_conservative_and_aggressive_on_a_pessimistic_history() {
        let waiting: Vec<RequestView> = (0..200).map(|i| wait(i, 100)).collect();
        let admitted = |kind| {
            let pf = PastFutureConfig { seed_output_len: 1000, ..Default::default() };
            let mut s = Scheduler::from_config(&PolicyConfig { kind, reserve: 0.05, past_future: pf }).unwrap();
            // Half the window is the pessimistic seed (1000); the rest were short (100).
            for _ in 0..20 {
                s.on_request_finished(100, FinishKind::Stop);
            }
            let inp = StepInput {
                running: &[],
                waiting: &waiting,
                pool: PoolView { total_blocks: 2000, free_blocks: 2000, block_size: BS },
                budgets: Budgets { max_num_batched_tokens: 1_000_000, max_num_seqs: 1000, max_model_len: 100_000 },
            };
            s.schedule(&inp).unwrap().scheduled.len()
        };
        let (agg, con, pf) = (admitted(PolicyKind::Aggressive), admitted(PolicyKind::Conservative), admitted(PolicyKind::PastFuture));
        assert!(con < pf && pf < agg, "conservative {con}, past-future {pf}, aggressive {agg}");
    }

    #[test]
    fn decisions_never_hand_out_more_blocks_than_are_free() {
        let mut rng = StdRng::seed_from_u64(7);
        for kind in PolicyKind::ALL {
            let mut s = sched(kind);
            for _ in 0..2000 {
                let n_run = rng.random_range(0..8);
                let running: Vec<RequestView> = (0..n_run)
                    .map(|i| {
                        let prompt = rng.random_range(1..100);
                        let output = rng.random_range(0..50);
                        let computed = rng.random_range(0..prompt + output);
                        let mut r = run(i, prompt, output, computed);
                        r.exclusive_blocks = rng.random_range(0..=r.blocks_held);
                        r.kv_token_cap = rng.random_bool(0.2).then(|| rng.random_range(1..200));
                        r
                    })
                    .collect();
                let waiting: Vec<RequestView> = (0..rng.random_range(0..6))
                    .map(|i| {
                        let mut w = wait(100 + i, rng.random_range(1..120));
                        w.prefix_hit_tokens = rng.random_range(0..=w.num_tokens / BS) * BS;
                        w.prefix_hit_free_blocks = rng.random_range(0..=w.prefix_hit_tokens / BS);
                        w.kv_token_cap = rng.random_bool(0.2).then(|| rng.random_range(1..200));
                        w.max_chunk_tokens = rng.random_bool(0.2).then(|| rng.random_range(1..50));
                        w.chunk_break = rng.random_bool(0.2).then(|| rng.random_range(1..120));
                        w
                    })
                    .collect();
                let free = rng.random_range(0..20);
                let budget = rng.random_range(1..300);
                let seqs = rng.random_range(1..10);
                let mut inp = input(&running, &waiting, free, budget, seqs);
                inp.pool.total_blocks = 200;
                let d = s.schedule(&inp).unwrap();
                let released: usize = d.preempted.iter().map(|id| running.iter().find(|r| r.id == *id).unwrap().exclusive_blocks).sum();
                assert!(d.free_blocks_taken() <= free + released, "{kind}: {d:?}");
                assert!(d.total_new_tokens() <= budget);
                let alive = running.len() - d.preempted.len() + d.scheduled.iter().filter(|c| c.admitted).count();
                assert!(d.scheduled.iter().all(|c| !c.admitted) || alive <= seqs);
                for c in &d.scheduled {
                    let r = running.iter().chain(&waiting).find(|r| r.id == c.id).unwrap();
                    assert!(!d.preempted.contains(&c.id));
                    let held = r.blocks_held + c.num_prefix_hit_tokens / BS + c.new_blocks;
                    let computed = r.num_computed_tokens + c.num_prefix_hit_tokens;
                    assert!(computed + c.num_new_tokens <= r.num_tokens && c.num_new_tokens > 0);
                    assert!(c.num_new_tokens <= r.chunk_limit(computed), "{c:?} for {r:?}");
                    assert!(held >= step_blocks(computed, c.num_new_tokens, r.kv_token_cap, BS), "{c:?} for {r:?}");
                }
            }
        }
    }
}
