//! The engine: one `step()` schedules, runs one batched forward, samples and streams.
//!
//! Owns: the waiting and running queues, applying scheduling decisions to the KV cache
//! manager, and the request lifecycle (admission, preemption by recompute, completion,
//! abort). Everything runs on one thread; callers reach it through `EngineHandle`.
//!
//! Must not know: HTTP, terminals, or which policy decides (that is the scheduler's).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

mod tier;

use anyhow::{Context, Result};
use kvault_kernels::KvDtype;
use kvault_models::gates::RetentionGates;
use kvault_models::model::LoadedModel;
use kvault_scheduler::{Budgets, FinishKind, PolicyConfig, PolicyKind, PoolView, RequestView, Scheduler, StepDecision, StepInput};

use crate::block_pool::{ExtraKeys, KvCacheManager, PrefixHit};
use crate::events::{FinishReason, TokenLogprob};
pub use crate::info::EngineInfo;
use crate::kv_policy::evictor::{BudgetedSeq, Evictor};
use crate::kv_policy::{Chunk, RequestBudget};
use crate::kv_policy::lychee::SparseBlocks;
use crate::kv_state::{KvState, RequestKvState, RequestPhase};
use crate::model_runner::{BatchEntry, LogitRows, ModelRunner};
use crate::offload::{block_io, Offload, OffloadConfig};
use crate::request::NewRequest;
use crate::sampler::sample;
use crate::sequence::{Appended, Sequence, Status};
use crate::sizing::{size_cache, BlockFootprint, CacheBudget};
use crate::stats::EngineStats;

#[derive(Clone, Debug)]
pub struct EngineConfig {
    pub block_size: usize,
    pub cache_budget: CacheBudget,
    pub max_model_len: Option<usize>,
    pub max_num_seqs: usize,
    pub max_num_batched_tokens: usize,
    pub policy: PolicyKind,
    pub enable_prefix_caching: bool,
    /// Requests allowed to wait beyond `max_num_seqs` running ones before submissions are refused.
    pub max_queued_requests: usize,
    /// RAM/disk tiers below the pool and the preemption mode (all off by default).
    pub offload: OffloadConfig,
    /// KV cache element type; `None` (`auto`): the model's compute dtype.
    pub kv_cache_dtype: Option<KvDtype>,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            block_size: 16,
            cache_budget: CacheBudget::Bytes(1 << 30),
            max_model_len: None,
            max_num_seqs: 256,
            max_num_batched_tokens: 2048,
            policy: PolicyKind::PastFuture,
            enable_prefix_caching: true,
            max_queued_requests: 4096,
            offload: OffloadConfig::default(),
            kv_cache_dtype: None,
        }
    }
}

pub struct Engine {
    runner: ModelRunner,
    kv: KvCacheManager,
    scheduler: Scheduler,
    info: Arc<EngineInfo>,
    stats: Arc<EngineStats>,
    eos_token_ids: Arc<Vec<u32>>,
    config: EngineConfig,
    seqs: HashMap<u64, Sequence>,
    /// Eviction state of the requests that may outgrow their KV budget.
    budgets: HashMap<u64, RequestBudget>,
    /// The model's retention gates (`kv_policy trimkv`), when it has any.
    retention_gates: Option<Arc<RetentionGates>>,
    num_layers: usize,
    num_kv_heads: usize,
    /// Admission order: the last is the newest, the first preemption victim.
    running: Vec<u64>,
    /// FIFO; preempted requests go back to the front.
    waiting: VecDeque<u64>,
    next_arrival: u64,
    /// Tiers below the pool and swapped-out requests (`None`: not configured).
    offload: Option<Offload>,
}

impl Engine {
    pub fn new(model: LoadedModel, config: EngineConfig, stats: Arc<EngineStats>) -> Result<Self> {
        let cfg = model.model.config().clone();
        let kv_dtype = match config.kv_cache_dtype {
            Some(d) => d,
            None => KvDtype::from_float(model.model.dtype())?,
        };
        let footprint = BlockFootprint {
            num_layers: cfg.num_layers,
            num_kv_heads: cfg.num_kv_heads,
            head_dim: cfg.head_dim,
            block_size: config.block_size,
            kv_row_bytes: kv_dtype.row_bytes(cfg.head_dim),
            slot_meta_bytes: 8,
        };
        let (size, note) = size_cache(footprint, config.cache_budget, config.max_model_len, cfg.max_position_embeddings)?;
        if let Some(note) = note {
            tracing::info!("{note}");
        }
        let runner =
            ModelRunner::new(model.model.clone(), size.num_blocks, size.block_size, kv_dtype, model.head_roles.clone())?;
        let kv = KvCacheManager::new(size.num_blocks, size.block_size, config.enable_prefix_caching)?;
        let layout = block_io::layout(runner.cache(), &format!("{:?}", model.model.dtype()).to_lowercase());
        let block_bytes = block_io::block_bytes(runner.cache()) as u64;
        let offload = Offload::open(&config.offload, &layout, block_bytes, stats.offload.clone())?;
        if let Some(off) = &offload {
            tracing::info!("{}", off.describe());
        }
        let scheduler = Scheduler::from_config(&PolicyConfig { kind: config.policy, ..PolicyConfig::default() })?;
        let eos_token_ids = Arc::new(model.special_tokens.eos_token_ids.clone());
        let info = Arc::new(EngineInfo {
            vocab_size: cfg.vocab_size,
            max_model_len: size.max_model_len,
            max_context_len: size.max_context_len,
            block_size: size.block_size,
            num_blocks: size.num_blocks,
            cache_bytes: size.bytes,
            kv_cache_dtype: kv_dtype,
            kv_bytes_per_token: footprint.bytes_per_token(),
            policy: config.policy,
            tokenizer: model.tokenizer.clone(),
            special_tokens: model.special_tokens.clone(),
            chat_template: model.chat_template.clone(),
            weights_description: model.weights_description.clone(),
            offload: offload.as_ref().map(Offload::describe),
            retention_gates: model.retention_gates.is_some(),
            head_roles: model.head_roles.is_some(),
        });
        stats.set_blocks(size.num_blocks, kv.num_free_blocks());
        Ok(Self {
            runner,
            kv,
            scheduler,
            info,
            stats,
            eos_token_ids,
            config,
            seqs: HashMap::new(),
            budgets: HashMap::new(),
            retention_gates: model.retention_gates.clone(),
            num_layers: cfg.num_layers,
            num_kv_heads: cfg.num_kv_heads,
            running: Vec::new(),
            waiting: VecDeque::new(),
            next_arrival: 0,
            offload,
        })
    }

    pub fn info(&self) -> &Arc<EngineInfo> {
        &self.info
    }

    pub fn has_work(&self) -> bool {
        !self.running.is_empty() || !self.waiting.is_empty() || self.tier_busy()
    }

    pub fn num_free_blocks(&self) -> usize {
        self.kv.num_free_blocks()
    }

    /// Queues a validated request. (The handle validated it; requests added directly in tests
    /// are validated here too, and refused with a Failed event.)
    pub fn add_request(&mut self, req: NewRequest) {
        let id = req.id;
        let max_len = self.info.max_len_for(&req.kv);
        let max_total = (req.prompt_ids.len() + req.params.max_tokens).min(max_len);
        let budget = RequestBudget::for_request(&req.kv, max_total, self.num_layers, self.num_kv_heads);
        let kind = req.kv.kind();
        let mut seq = Sequence::new(req, self.next_arrival, self.info.tokenizer.clone(), self.eos_token_ids.clone(), max_len);
        self.next_arrival += 1;
        if self.seqs.contains_key(&id) {
            seq.fail(format!("request id {id} is already in use"));
            return;
        }
        if let Err(e) = self.kv.add_request(id, &seq.tokens, ExtraKeys::none()) {
            seq.fail(format!("{e}"));
            return;
        }
        if let Some(b) = budget {
            if let Err(e) = self.kv.set_token_cap(id, b.budget) {
                seq.fail(format!("{e}"));
                let _ = self.kv.remove_request(id);
                return;
            }
            self.budgets.insert(id, b);
        }
        self.stats.add_kv_request(kind);
        self.stats.add_prompt_tokens(seq.prompt_len);
        self.seqs.insert(id, seq);
        self.waiting.push_back(id);
        self.publish_queues();
    }

    pub fn abort(&mut self, id: u64) {
        if self.seqs.contains_key(&id) {
            self.finish(id, FinishReason::Abort);
            self.publish_queues();
        }
    }

    pub fn abort_all(&mut self) {
        let mut ids: Vec<u64> = self.running.iter().chain(self.waiting.iter()).copied().collect();
        ids.extend(self.swapped_ids());
        for id in ids {
            self.finish(id, FinishReason::Abort);
        }
        self.publish_queues();
    }

    /// One engine iteration. Never panics on request state; a failed forward fails the requests
    /// in that batch and frees their blocks.
    pub fn step(&mut self) {
        self.stats.add_step();
        self.drop_orphans();
        self.tier_before_schedule();
        let decision = match self.schedule() {
            Ok(d) => d,
            Err(e) => {
                // An inconsistent view is an engine bug; fail everything rather than loop on it.
                tracing::error!("scheduler refused the engine's view: {e:#}");
                self.fail_all(&format!("internal scheduling error: {e:#}"));
                return;
            }
        };
        if let Err(e) = self.apply(&decision) {
            tracing::error!("applying a scheduling decision failed: {e:#}");
            self.fail_all(&format!("internal scheduling error: {e:#}"));
            return;
        }
        if !decision.scheduled.is_empty() {
            // Observers see this step's admissions and blocks before any of its tokens stream.
            self.publish_queues();
            self.run_batch(&decision);
        }
        self.publish_queues();
    }

    fn view(&self, id: u64, waiting: bool) -> RequestView {
        let seq = &self.seqs[&id];
        let blocks = self.kv.block_table(id).map_or(0, |t| t.len());
        let exclusive = self
            .kv
            .block_table(id)
            .map_or(0, |t| t.iter().filter(|&&b| self.kv.pool().ref_count(b) == Some(1)).count());
        // A request scoring its prompt must compute every position: no hit.
        let (hit_tokens, hit_free) = if waiting && self.config.enable_prefix_caching && seq.prompt_scoring.is_none() {
            // The request's block hashes are kept incrementally; no rehashing per step.
            let hit = self.kv.computed_blocks(id).unwrap_or_default();
            let free = hit.blocks.iter().filter(|&&b| self.kv.pool().ref_count(b) == Some(0)).count();
            (hit.num_tokens, free)
        } else {
            (0, 0)
        };
        RequestView {
            id,
            arrival_seq: seq.arrival_seq,
            prompt_len: seq.prompt_len,
            num_tokens: seq.tokens.len(),
            num_computed_tokens: seq.num_computed,
            num_output_tokens: seq.num_output(),
            max_tokens: seq.params.max_tokens,
            blocks_held: blocks,
            exclusive_blocks: exclusive,
            prefix_hit_tokens: hit_tokens,
            prefix_hit_free_blocks: hit_free,
            kv_token_cap: self.budgets.get(&id).map(|b| b.budget),
            max_chunk_tokens: seq.max_chunk_tokens,
            chunk_break: seq.chunk_break,
        }
    }

    fn schedule(&mut self) -> Result<StepDecision> {
        let running: Vec<RequestView> = self.running.iter().map(|&id| self.view(id, false)).collect();
        // Only the head of the queue can be admitted this step; looking up prefix hits for the
        // whole queue would cost O(queue) hashing per step for nothing.
        // Swapped-out requests come back before anyone new is admitted (they hold finished work).
        let lookahead = if self.num_swapped() > 0 { 0 } else { self.config.max_num_seqs.saturating_sub(self.running.len()).min(self.waiting.len()) };
        let waiting: Vec<RequestView> =
            self.waiting.iter().filter(|&&id| !self.tier_is_loading(id)).take(lookahead).map(|&id| self.view(id, true)).collect();
        let input = StepInput {
            running: &running,
            waiting: &waiting,
            pool: PoolView {
                total_blocks: self.info.num_blocks,
                free_blocks: self.kv.num_free_blocks(),
                block_size: self.info.block_size,
            },
            budgets: Budgets {
                max_num_batched_tokens: self.config.max_num_batched_tokens,
                max_num_seqs: self.config.max_num_seqs,
                max_model_len: self.info.max_model_len,
            },
        };
        Ok(self.scheduler.schedule(&input)?)
    }

    /// Executes the decision on the KV cache manager, in the order the scheduler's contract
    /// requires: preempt, then prefix hits, then fresh blocks.
    fn apply(&mut self, decision: &StepDecision) -> Result<()> {
        if !decision.preempted.is_empty() {
            self.stats.add_preemptions(decision.preempted.len());
            // Oldest first in the list; prepend as one block to keep arrival order at the front.
            for &id in decision.preempted.iter().rev() {
                if self.tier_swap_out(id)? {
                    continue;
                }
                self.tier_write_down(id);
                self.kv.free(id)?;
                self.running.retain(|&r| r != id);
                let seq = self.seqs.get_mut(&id).context("preempted an unknown request")?;
                seq.num_computed = 0;
                if let Some(b) = self.budgets.get_mut(&id) {
                    b.slots.clear(); // recompute starts over, evictions included
                }
                seq.status = Status::Waiting;
                self.waiting.push_front(id);
            }
        }
        // Prefix hits first, for every admitted request: touching a hit block takes it out of the
        // free queue, so no fresh allocation below can evict it.
        for chunk in decision.scheduled.iter().filter(|c| c.admitted) {
            let hit = if chunk.num_prefix_hit_tokens > 0 {
                let hit = self.kv.computed_blocks(chunk.id)?;
                // Preemption frees blocks without evicting their hashes and hits are taken before
                // any fresh allocation, so the hit cannot have shrunk since the view; truncating
                // to what the scheduler planned keeps its block accounting exact.
                truncate_hit(hit, chunk.num_prefix_hit_tokens, self.info.block_size)
            } else {
                PrefixHit::none()
            };
            let seq = self.seqs.get_mut(&chunk.id).context("admitted an unknown request")?;
            seq.num_computed = hit.num_tokens;
            if seq.cached_tokens.is_none() {
                seq.cached_tokens = Some(hit.num_tokens);
                self.stats.add_prefix_lookup(seq.prompt_len, hit.num_tokens);
            }
            seq.status = Status::Running;
            if !hit.blocks.is_empty() {
                self.kv.allocate_slots(chunk.id, 0, &hit)?;
            }
            self.waiting.retain(|&w| w != chunk.id);
            self.running.push(chunk.id);
        }
        // Budgeted requests that will evict copy their hit blocks rather than share them; done
        // after every hit is attached, so these allocations cannot evict another's hit.
        for chunk in decision.scheduled.iter().filter(|c| c.admitted && c.num_prefix_hit_tokens > 0) {
            let Some(budget) = self.budgets.get_mut(&chunk.id) else { continue };
            let private = self.kv.make_private_copies(chunk.id)?;
            if private.copies.is_empty() {
                self.kv.finish_private_copies(private)?;
                continue;
            }
            let copied = self.runner.copy_blocks(&private.copies);
            self.kv.finish_private_copies(private)?;
            copied?;
            let hit = self.seqs[&chunk.id].num_computed;
            for head in budget.slots.layers.iter_mut().flatten() {
                head.push_chunk(0, hit);
            }
        }
        for chunk in &decision.scheduled {
            self.kv.allocate_slots(chunk.id, chunk.num_new_tokens, &PrefixHit::none())?;
        }
        Ok(())
    }

    fn run_batch(&mut self, decision: &StepDecision) {
        let bs = self.info.block_size;
        let mut entries = Vec::with_capacity(decision.scheduled.len());
        let mut budgeted = Vec::new();
        let mut budgets: HashMap<u64, &mut RequestBudget> =
            self.budgets.iter_mut().map(|(&id, b)| (id, b)).collect();
        // (id, first row position, rows) for prompt scoring, and which requests sample.
        let mut plan: Vec<(u64, usize, LogitRows, bool)> = Vec::with_capacity(decision.scheduled.len());
        for (i, chunk) in decision.scheduled.iter().enumerate() {
            let seq = &self.seqs[&chunk.id];
            let start = seq.num_computed;
            let end = start + chunk.num_new_tokens;
            let samples = end == seq.tokens.len();
            let logits = if seq.prompt_scoring.is_some() && start + 1 < seq.prompt_len {
                LogitRows::All
            } else if samples {
                LogitRows::Last
            } else {
                LogitRows::None
            };
            plan.push((chunk.id, start, logits, samples));
            let block_table = self.kv.block_table(chunk.id).unwrap_or(&[]);
            let slots = self.kv.num_slotted_tokens(chunk.id).unwrap_or(0);
            let start_slot = slots.saturating_sub(chunk.num_new_tokens);
            let sparse = SparseBlocks::for_policy(&seq.kv, bs);
            entries.push(BatchEntry { tokens: &seq.tokens[start..end], start_pos: start, start_slot, block_table, logits, sparse });
            if let Some(b) = budgets.remove(&chunk.id) {
                budgeted.push(BudgetedSeq {
                    seq: i,
                    budget: b.budget,
                    start_pos: start,
                    held_before: start_slot,
                    chunk: Chunk { q_len: chunk.num_new_tokens, in_prompt: start < seq.prompt_len || chunk.num_new_tokens > 1 },
                    block_table,
                    rule: b.rule.as_ref(),
                    slots: &mut b.slots,
                });
            }
        }
        let forward_started = Instant::now();
        let result = if budgeted.is_empty() {
            self.runner.run(&entries, None)
        } else {
            let mut evictor = Evictor { seqs: budgeted, block_size: bs, gates: self.retention_gates.as_deref() };
            self.runner.run(&entries, Some(&mut evictor))
        };
        if let Some(off) = self.offload.as_mut() {
            if decision.scheduled.iter().any(|c| c.num_new_tokens > 1) {
                off.cost.observe_forward(decision.scheduled.iter().map(|c| c.num_new_tokens).sum(), forward_started.elapsed());
            }
        }
        let logits = match result {
            Ok(l) => l,
            Err(e) => {
                let msg = format!("forward pass failed: {e:#}");
                tracing::error!("{msg}");
                for chunk in &decision.scheduled {
                    if let Some(seq) = self.seqs.get_mut(&chunk.id) {
                        seq.fail(msg.clone());
                    }
                    // Its blocks were cached at allocation but never written: unhook them.
                    let _ = self.kv.disable_caching(chunk.id);
                    self.remove(chunk.id, FinishKind::Abort);
                }
                return;
            }
        };
        for chunk in &decision.scheduled {
            self.after_forward(chunk.id, chunk.num_new_tokens);
        }
        let mut generated = 0;
        let mut rows = logits.into_iter();
        for (id, start, wanted, samples) in plan {
            let chunk_rows: Vec<Vec<f32>> = match wanted {
                LogitRows::None => Vec::new(),
                LogitRows::Last => rows.next().into_iter().collect(),
                LogitRows::All => {
                    let n = self.seqs.get(&id).map_or(0, |s| s.num_computed - start);
                    rows.by_ref().take(n).collect()
                }
            };
            let Some(seq) = self.seqs.get_mut(&id) else { continue };
            let mut chunk_rows = chunk_rows;
            let sample_row = if samples { chunk_rows.last().cloned() } else { None };
            if wanted == LogitRows::All {
                seq.score_prompt(start, std::mem::take(&mut chunk_rows));
            }
            let Some(mut row) = sample_row else { continue };
            if seq.params.max_tokens == 0 {
                seq.finish_scored();
                self.remove(id, FinishKind::Length);
                continue;
            }
            let (prompt, output) = seq.tokens.split_at(seq.prompt_len);
            let sampled = match sample(&mut row, &seq.params, &mut seq.sampler, prompt, output) {
                Ok(s) => s,
                Err(e) => {
                    seq.fail(format!("sampling failed: {e}"));
                    self.remove(id, FinishKind::Abort);
                    continue;
                }
            };
            let logprob = sampled.logprob.map(|logprob| TokenLogprob {
                token_id: sampled.token,
                logprob,
                top: sampled.top_logprobs,
            });
            generated += 1;
            let outcome = seq.append(sampled.token, logprob);
            if let Err(e) = self.kv.append_tokens(id, &[sampled.token]) {
                tracing::error!("request {id}: {e}");
            }
            if let Appended::Finished(reason) = outcome {
                self.remove(id, finish_kind(reason));
            }
        }
        self.stats.add_generation_tokens(generated);
    }

    /// Books a computed chunk: progress, and for a budgeted request the blocks its policy freed.
    fn after_forward(&mut self, id: u64, num_new_tokens: usize) {
        let Some(seq) = self.seqs.get_mut(&id) else { return };
        seq.num_computed += num_new_tokens;
        let held = self.kv.num_slotted_tokens(id).unwrap_or(0);
        let blocks = self.kv.block_table(id).map_or(0, <[u32]>::len);
        let report = &mut seq.kv_report;
        report.peak_tokens_held = report.peak_tokens_held.max(held);
        report.peak_blocks_held = report.peak_blocks_held.max(blocks);
        match self.kv.trim(id) {
            Ok(0) => {}
            Ok(evicted) => {
                report.tokens_evicted += evicted;
                self.stats.add_kv_evicted(seq.kv.kind(), evicted);
            }
            Err(e) => tracing::error!("request {id}: trimming its KV blocks failed: {e}"),
        }
    }

    /// Ends a request that has not produced its own final event yet.
    fn finish(&mut self, id: u64, reason: FinishReason) {
        if let Some(seq) = self.seqs.get_mut(&id) {
            seq.finish_with(reason, None, String::new());
        }
        self.remove(id, finish_kind(reason));
    }

    /// Frees a request's blocks and forgets it.
    fn remove(&mut self, id: u64, kind: FinishKind) {
        let Some(seq) = self.seqs.remove(&id) else { return };
        self.budgets.remove(&id);
        self.tier_write_down(id);
        self.tier_forget(id);
        if let Err(e) = self.kv.free(id).and_then(|_| self.kv.remove_request(id)) {
            tracing::error!("request {id}: releasing KV blocks failed: {e}");
        }
        self.running.retain(|&r| r != id);
        self.waiting.retain(|&w| w != id);
        self.scheduler.on_request_finished(seq.num_output(), kind);
        self.stats.add_finished();
    }

    /// Requests whose caller went away are aborted before they cost another step.
    fn drop_orphans(&mut self) {
        let orphans: Vec<u64> = self.seqs.values().filter(|s| s.is_orphaned()).map(|s| s.id).collect();
        for id in orphans {
            self.remove(id, FinishKind::Abort);
        }
    }

    fn fail_all(&mut self, message: &str) {
        let ids: Vec<u64> = self.seqs.keys().copied().collect();
        for id in ids {
            if let Some(seq) = self.seqs.get_mut(&id) {
                seq.fail(message.to_string());
            }
            self.remove(id, FinishKind::Abort);
        }
        self.publish_queues();
    }

    fn publish_queues(&self) {
        self.stats.set_queues(self.running.len(), self.waiting.len() + self.num_swapped());
        let held: usize = self.running.iter().filter_map(|&id| self.kv.num_slotted_tokens(id)).sum();
        self.stats.set_kv_tokens_held(held);
        self.stats.set_kv_state(self.kv_state());
        self.stats.set_blocks(self.info.num_blocks, self.kv.num_free_blocks());
    }

    fn kv_state(&self) -> KvState {
        let request = |&id: &u64, phase| {
            let seq = self.seqs.get(&id)?;
            Some(RequestKvState {
                id,
                phase,
                policy: seq.kv,
                prompt_tokens: seq.prompt_len,
                output_tokens: seq.num_output(),
                computed_tokens: seq.num_computed,
                tokens_held: self.kv.num_slotted_tokens(id).unwrap_or(0),
                blocks_held: self.kv.block_table(id).map_or(0, <[u32]>::len),
                cached_tokens: seq.cached_tokens.unwrap_or(0),
                tokens_evicted: seq.kv_report.tokens_evicted,
            })
        };
        let running = self.running.iter().filter_map(|id| request(id, RequestPhase::Running));
        let waiting = self.waiting.iter().filter_map(|id| request(id, RequestPhase::Waiting));
        KvState {
            block_size: self.info.block_size,
            total_blocks: self.info.num_blocks,
            free_blocks: self.kv.num_free_blocks(),
            free_cached_blocks: self.kv.pool().num_free_cached_blocks(),
            requests: running.chain(waiting).collect(),
        }
    }

    /// For tests: every block free and nothing referenced.
    pub fn check_idle_invariants(&self) -> Result<(), String> {
        if self.has_work() {
            return Err(format!("{} running, {} waiting", self.running.len(), self.waiting.len()));
        }
        if self.kv.num_free_blocks() != self.info.num_blocks {
            return Err(format!("{} of {} blocks free", self.kv.num_free_blocks(), self.info.num_blocks));
        }
        if let Some(off) = &self.offload {
            off.idle_check()?;
        }
        self.kv.check_invariants()
    }
}

fn truncate_hit(mut hit: PrefixHit, tokens: usize, block_size: usize) -> PrefixHit {
    let blocks = (tokens / block_size).min(hit.blocks.len());
    hit.blocks.truncate(blocks);
    hit.num_tokens = blocks * block_size;
    hit
}

fn finish_kind(reason: FinishReason) -> FinishKind {
    match reason {
        FinishReason::Stop => FinishKind::Stop,
        FinishReason::Length => FinishKind::Length,
        FinishReason::Abort => FinishKind::Abort,
    }
}
