//! One closed-loop serving run: clients, an engine loop over a fake block pool, the real
//! [`Scheduler`], and the cost model for time.
//!
//! Owns: request lifecycles in the simulation (arrive, wait, run, get preempted, finish, be
//! re-sent on an SLA miss) and the block counting that checks every decision against the
//! contract in `view.rs`. Must not know how policies decide.
//!
//! Clients: each of N clients sends a prompt, waits for it to finish and sends the next one from
//! the shared data set. A request that misses the SLA is re-sent (same prompt, fresh clock), so
//! the run ends when every prompt has succeeded once; goodput = prompts / virtual wall time. As in
//! the paper's router, a waiting request that has produced no token by the TTFT SLA minus a
//! margin is aborted (and re-sent) instead of being served uselessly; a running request that misses the ITL SLA
//! runs to the end and is re-sent after. Preemption is by recompute without a prefix cache (the
//! paper's engine drops a paused request's KV), so a resumed request recomputes everything.

use std::collections::VecDeque;

use rand::rngs::StdRng;
use rand::SeedableRng;

use super::cost::Hardware;
use super::workload::{PromptSpec, Workload};
use super::SimRecord;
use crate::error::{Result, SchedulerError};
use crate::footprint;
use crate::choice::PolicyConfig;
use crate::sla::{LatencyTracker, SlaAccumulator, SlaConfig};
use crate::step::Scheduler;
use crate::view::{Budgets, FinishKind, PoolView, RequestView, StepInput};

/// One cell of a simulation grid.
#[derive(Debug, Clone)]
pub struct RunConfig {
    pub hardware: Hardware,
    pub workload: Workload,
    pub clients: usize,
    pub policy: PolicyConfig,
    pub num_prompts: usize,
    /// Seeds the prompt set (policies and client counts share the same prompts).
    pub seed: u64,
    pub sla: SlaConfig,
    /// Virtual-time limit; a run that hits it reports `timed_out` with what it finished.
    pub max_sim_time_s: f64,
    /// A waiting request with no token yet is aborted (and re-sent) this long before its TTFT
    /// deadline: admitting it later would waste a whole generation on a request whose prefill
    /// ends past the deadline (the paper's router aborts at 8 s for a 10 s SLA).
    pub abort_margin_s: f64,
    /// Clients omit `max_tokens`, so each request may run to `max_model_len − input` (the
    /// paper's server limit); otherwise they send the workload's `max_tokens`.
    pub server_max_tokens: bool,
    /// Every request keeps at most this many KV tokens (a KV eviction policy's budget): it
    /// holds and reads what `footprint` says, as in the engine.
    pub kv_budget: Option<usize>,
}

struct Live {
    id: u64,
    prompt: usize,
    spec: PromptSpec,
    output: usize,
    computed: usize,
    blocks: usize,
    tracker: LatencyTracker,
}

impl Live {
    fn num_tokens(&self) -> usize {
        self.spec.input_len + self.output
    }

    fn view(&self, kv_budget: Option<usize>) -> RequestView {
        RequestView {
            id: self.id,
            arrival_seq: self.id,
            prompt_len: self.spec.input_len,
            num_tokens: self.num_tokens(),
            num_computed_tokens: self.computed,
            num_output_tokens: self.output,
            max_tokens: self.spec.max_tokens,
            blocks_held: self.blocks,
            exclusive_blocks: self.blocks,
            prefix_hit_tokens: 0,
            prefix_hit_free_blocks: 0,
            kv_token_cap: kv_budget,
            max_chunk_tokens: None,
            chunk_break: None,
        }
    }
}

fn violation(msg: String) -> SchedulerError {
    SchedulerError::ContractViolation(msg)
}

/// Runs one configuration to completion (or to the time limit).
pub fn simulate_one(cfg: &RunConfig) -> Result<SimRecord> {
    if cfg.clients == 0 || cfg.num_prompts == 0 {
        return Err(SchedulerError::InvalidConfig("clients and num_prompts must be positive".into()));
    }
    let hw = &cfg.hardware;
    let mut prompts = cfg.workload.generate(cfg.num_prompts, &mut StdRng::seed_from_u64(cfg.seed));
    if cfg.server_max_tokens {
        for p in &mut prompts {
            p.max_tokens = hw.max_model_len.saturating_sub(p.input_len).max(p.output_len);
        }
    }
    if let Some(p) = prompts.iter().find(|p| p.input_len + p.max_tokens > hw.max_model_len) {
        return Err(SchedulerError::InvalidConfig(format!(
            "workload {} has requests of {} tokens, above max_model_len {}",
            cfg.workload, p.input_len + p.max_tokens, hw.max_model_len
        )));
    }
    let mut sched = Scheduler::from_config(&cfg.policy)?;
    let mut acc = SlaAccumulator::new(cfg.sla);
    let total_blocks = hw.total_blocks();
    let budgets = Budgets {
        max_num_batched_tokens: hw.max_num_batched_tokens,
        max_num_seqs: hw.max_num_seqs,
        max_model_len: hw.max_model_len,
    };

    let mut next_id = 0u64;
    let mut spawn = |prompt: usize, t: f64| {
        next_id += 1;
        Live { id: next_id, prompt, spec: prompts[prompt], output: 0, computed: 0, blocks: 0, tracker: LatencyTracker::new(t) }
    };
    let mut next_prompt = cfg.clients.min(cfg.num_prompts);
    let mut waiting: VecDeque<Live> = (0..next_prompt).map(|p| spawn(p, 0.0)).collect();
    let mut running: Vec<Live> = Vec::new();
    let (mut t, mut free, mut steps, mut preemptions, mut idle_steps) = (0.0f64, total_blocks, 0u64, 0u64, 0u32);
    let mut timed_out = false;

    while !(running.is_empty() && waiting.is_empty()) {
        if t > cfg.max_sim_time_s {
            timed_out = true;
            break;
        }
        let run_views: Vec<RequestView> = running.iter().map(|r| r.view(cfg.kv_budget)).collect();
        let wait_views: Vec<RequestView> = waiting.iter().map(|w| w.view(cfg.kv_budget)).collect();
        let input = StepInput {
            running: &run_views,
            waiting: &wait_views,
            pool: PoolView { total_blocks, free_blocks: free, block_size: hw.block_size },
            budgets,
        };
        let decision = sched.schedule(&input)?;
        steps += 1;

        // Preempted requests are the newest running ones, reported oldest first.
        let k = decision.preempted.len();
        if k > running.len() {
            return Err(violation(format!("{k} preempted but only {} running", running.len())));
        }
        let victims = running.split_off(running.len() - k);
        for (v, &id) in victims.iter().zip(&decision.preempted) {
            if v.id != id {
                return Err(violation(format!("preempted {id} is not the newest running request")));
            }
        }
        for mut v in victims.into_iter().rev() {
            free += v.blocks;
            v.blocks = 0;
            v.computed = 0;
            waiting.push_front(v);
        }
        preemptions += k as u64;

        // Admitted requests are a prefix of the waiting queue, in order.
        for c in decision.scheduled.iter().filter(|c| c.admitted) {
            match waiting.pop_front() {
                Some(w) if w.id == c.id => running.push(w),
                _ => return Err(violation(format!("admitted {} is not at the head of waiting", c.id))),
            }
        }

        // Scheduled chunks follow running order; walk both with one cursor.
        let mut work = Vec::with_capacity(decision.scheduled.len());
        let mut touched = Vec::with_capacity(decision.scheduled.len());
        let mut j = 0;
        for c in &decision.scheduled {
            while j < running.len() && running[j].id != c.id {
                j += 1;
            }
            let Some(r) = running.get_mut(j) else {
                return Err(violation(format!("scheduled {} is not running", c.id)));
            };
            let take = c.new_blocks + c.hit_blocks_from_free;
            if take > free {
                return Err(violation(format!("step takes {take} blocks for {} with {free} free", c.id)));
            }
            if r.computed + c.num_new_tokens > r.num_tokens() {
                return Err(violation(format!("request {} scheduled past its tokens", c.id)));
            }
            free -= take;
            r.blocks += c.new_blocks;
            let cap = cfg.kv_budget;
            if r.blocks * hw.block_size < footprint::step_tokens(r.computed, c.num_new_tokens, cap) {
                return Err(violation(format!("request {} lacks blocks for its tokens", c.id)));
            }
            // A budgeted request attends only what it kept, then trims back to its resting blocks.
            work.push((footprint::resting_tokens(r.computed, cap), c.num_new_tokens));
            r.computed += c.num_new_tokens;
            let resting = footprint::resting_blocks(r.computed, cap, hw.block_size);
            free += r.blocks.saturating_sub(resting);
            r.blocks = r.blocks.min(resting);
            touched.push(j);
        }
        let dt = hw.step_time_s(work);
        if dt == 0.0 {
            idle_steps += 1;
            if running.is_empty() || idle_steps > 10_000 {
                let head = waiting.front().map_or(0, |w| w.spec.input_len + w.spec.max_tokens);
                return Err(SchedulerError::Stalled(format!(
                    "{} cannot admit a {head}-token request into an idle {}-block pool",
                    sched.policy_name(), total_blocks
                )));
            }
        } else {
            idle_steps = 0;
        }
        t += dt;

        // A request whose KV caught up with its tokens samples one more token.
        let mut finished = Vec::new();
        for &j in &touched {
            let r = &mut running[j];
            if r.computed == r.num_tokens() {
                r.tracker.on_token(t);
                r.output += 1;
                if r.output >= r.spec.output_len {
                    finished.push((r.id, FinishKind::Stop));
                } else if r.output >= r.spec.max_tokens {
                    finished.push((r.id, FinishKind::Length));
                }
            }
        }
        for (id, kind) in finished {
            let Some(pos) = running.iter().position(|r| r.id == id) else { continue };
            let r = running.remove(pos);
            free += r.blocks;
            sched.on_request_finished(r.output, kind);
            if acc.record(&r.tracker) {
                if next_prompt < cfg.num_prompts {
                    waiting.push_back(spawn(next_prompt, t));
                    next_prompt += 1;
                }
            } else {
                waiting.push_back(spawn(r.prompt, t));
            }
        }

        // Waiting requests that can no longer make their TTFT are aborted and re-sent.
        let deadline_s = (cfg.sla.ttft_ms / 1e3 - cfg.abort_margin_s).max(0.0);
        let (doomed, keep): (Vec<Live>, Vec<Live>) = waiting
            .drain(..)
            .partition(|w| w.tracker.ttft_s().is_none() && t - w.tracker.arrival_s() > deadline_s);
        waiting = keep.into();
        for d in doomed {
            acc.record(&d.tracker);
            sched.on_request_finished(d.output, FinishKind::Abort);
            waiting.push_back(spawn(d.prompt, t));
        }
    }

    let s = acc.summary(t);
    Ok(SimRecord {
        hardware: hw.kind.to_string(),
        workload: cfg.workload.to_string(),
        clients: cfg.clients,
        policy: sched.policy_name().to_string(),
        goodput_rps: s.goodput_rps,
        throughput_tok_s: s.throughput_tok_s,
        preemptions,
        p99_ttft_ms: s.p99_ttft_ms,
        p99_max_itl_ms: s.p99_max_itl_ms,
        good: s.good,
        failed: s.failed,
        sim_time_s: t,
        steps,
        timed_out,
    })
}
