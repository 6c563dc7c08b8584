//! The engine's side of the offload tier: the few places the step loop meets it.
//!
//! Owns: when blocks are written down (a request lets go of them), when waiting requests' blocks
//! are brought back (before scheduling), swap-out of a preemption victim and swap-in when the
//! pool has room again. Must not know: how tiers store blocks (that is `crate::offload`).
//!
//! Everything here runs on the engine thread and only touches memory: disk reads and writes are
//! queued to the tier's threads, and a request whose blocks are being read sits out scheduling.

use std::sync::Arc;
use std::time::Instant;

use anyhow::Result;

use super::Engine;
use crate::block_pool::PrefixHit;
use crate::offload::block_io::{copy_in, copy_out};
use crate::sequence::Status;

impl Engine {
    /// Between steps: take in finished disk reads, swap requests back in while the pool has
    /// room, and bring waiting requests' prefix blocks up from the tiers into the pool.
    pub(super) fn tier_before_schedule(&mut self) {
        if self.offload.is_none() {
            return;
        }
        if let Some(off) = self.offload.as_mut() {
            off.poll();
        }
        self.swap_in_ready();
        self.promote_waiting();
    }

    /// Requests the scheduler must not see yet: their blocks are being read from disk.
    pub(super) fn tier_is_loading(&self, id: u64) -> bool {
        self.offload.as_ref().is_some_and(|o| o.is_loading(id))
    }

    pub(super) fn num_swapped(&self) -> usize {
        self.offload.as_ref().map_or(0, |o| o.swap.len())
    }

    pub(super) fn swapped_ids(&self) -> Vec<u64> {
        self.offload.as_ref().map_or_else(Vec::new, |o| o.swap.ids().collect())
    }

    pub(super) fn tier_busy(&self) -> bool {
        self.offload.as_ref().is_some_and(|o| !o.swap.is_empty() || o.any_loading())
    }

    /// Copies the request's hashed blocks that no tier holds yet down to the tiers. Called
    /// whenever a request lets go of its blocks (finish, abort, recompute preemption).
    pub(super) fn tier_write_down(&mut self, id: u64) {
        let Some(off) = self.offload.as_mut() else { return };
        if !off.keeps_prefixes() {
            return;
        }
        let blocks: Vec<_> = self.kv.hashed_blocks(id).into_iter().filter(|(_, h)| off.wants(h)).collect();
        if blocks.is_empty() {
            return;
        }
        let ids: Vec<u32> = blocks.iter().map(|b| b.0).collect();
        let started = Instant::now();
        match copy_out(self.runner.cache(), &ids) {
            Ok(data) => {
                off.cost.observe_copy(data.iter().map(|d| d.len() as u64).sum(), started.elapsed());
                off.store(blocks.iter().map(|b| b.1).zip(data.into_iter().map(Arc::new)).collect());
            }
            Err(e) => tracing::warn!("request {id}: copying KV blocks out for the offload tier failed: {e:#}"),
        }
    }

    /// The request ended: the tier forgets it (loads, staged blocks, swap space).
    pub(super) fn tier_forget(&mut self, id: u64) {
        if let Some(off) = self.offload.as_mut() {
            off.forget(id);
        }
    }

    /// Preemption by swap: copies the victim's blocks to the RAM tier and frees them. Returns
    /// false (nothing changed) when the victim should be recomputed instead: recompute mode, the
    /// cost model prefers it, a KV budget (its eviction state would need swapping too), or the
    /// RAM tier cannot hold it.
    pub(super) fn tier_swap_out(&mut self, id: u64) -> Result<bool> {
        let Some(off) = self.offload.as_mut() else { return Ok(false) };
        if self.budgets.contains_key(&id) {
            return Ok(false);
        }
        let (Some(table), Some(slotted), Some(seq)) = (self.kv.block_table(id), self.kv.num_slotted_tokens(id), self.seqs.get(&id)) else {
            return Ok(false);
        };
        let table = table.to_vec();
        if table.is_empty() || !off.should_swap(table.len() as u64 * off.block_bytes, seq.num_computed) {
            return Ok(false);
        }
        let started = Instant::now();
        let data = copy_out(self.runner.cache(), &table)?;
        off.cost.observe_copy(table.len() as u64 * off.block_bytes, started.elapsed());
        if !off.swap_out(id, data.into_iter().map(Arc::new).collect(), slotted) {
            return Ok(false);
        }
        self.kv.free(id)?;
        self.running.retain(|&r| r != id);
        if let Some(seq) = self.seqs.get_mut(&id) {
            seq.status = Status::Waiting;
        }
        Ok(true)
    }

    /// Swaps requests back in, oldest first, while the pool can hold them and leave a block per
    /// running request for its next tokens (so a swap-in does not force the next preemption).
    fn swap_in_ready(&mut self) {
        loop {
            let Some(off) = self.offload.as_ref() else { return };
            let Some(id) = off.swap.ids().min_by_key(|id| self.seqs.get(id).map_or(0, |s| s.arrival_seq)) else { return };
            let need = off.swap.entry(id).map_or(0, |e| e.blocks.len());
            let headroom = self.running.len();
            if self.running.len() >= self.config.max_num_seqs || self.kv.num_free_blocks() < need + headroom {
                return;
            }
            let Some(entry) = self.offload.as_mut().and_then(|o| o.swap_in(id)) else { return };
            let started = Instant::now();
            let restored = self.kv.allocate_slots(id, entry.num_slotted, &PrefixHit::none()).map_err(anyhow::Error::from).and_then(|_| {
                let table = self.kv.block_table(id).unwrap_or(&[]);
                let pairs: Vec<(u32, &[u8])> = table.iter().copied().zip(entry.blocks.iter().map(|b| b.as_slice())).collect();
                copy_in(self.runner.cache(), &pairs)
            });
            if let Some(off) = self.offload.as_mut() {
                off.cost.observe_copy(entry.bytes, started.elapsed());
            }
            match restored {
                Ok(()) => {
                    let arrival = self.seqs.get(&id).map_or(0, |s| s.arrival_seq);
                    if let Some(seq) = self.seqs.get_mut(&id) {
                        seq.status = Status::Running;
                    }
                    // Back at its place in admission order, so it is not the next victim again.
                    let at = self.running.iter().position(|r| self.seqs.get(r).is_some_and(|s| s.arrival_seq > arrival)).unwrap_or(self.running.len());
                    self.running.insert(at, id);
                }
                Err(e) => {
                    if let Some(seq) = self.seqs.get_mut(&id) {
                        seq.fail(format!("swapping its KV back in failed: {e:#}"));
                    }
                    let _ = self.kv.disable_caching(id);
                    self.remove(id, kvault_scheduler::FinishKind::Abort);
                }
            }
        }
    }

    /// For the waiting requests the scheduler will look at: copy the blocks that follow their
    /// pool hit from RAM (or staged from disk) into free pool blocks, cached under their hashes.
    fn promote_waiting(&mut self) {
        if self.num_swapped() > 0 {
            return; // nobody new is admitted until the swapped-out requests are back
        }
        let lookahead = self.config.max_num_seqs.saturating_sub(self.running.len()).min(self.waiting.len());
        let ids: Vec<u64> = self.waiting.iter().take(lookahead).copied().collect();
        for id in ids {
            if self.tier_is_loading(id) || self.seqs.get(&id).is_none_or(|s| s.prompt_scoring.is_some()) {
                continue;
            }
            let Some(missed) = self.kv.missed_hashes(id) else { continue };
            let Some(off) = self.offload.as_mut() else { return };
            if missed.is_empty() {
                continue;
            }
            let walk = off.walk(id, &missed);
            if walk.promote.is_empty() {
                continue;
            }
            let adopted = match self.kv.adopt_blocks(id, walk.promote.len()) {
                Ok(a) => a,
                Err(e) => {
                    tracing::error!("request {id}: adopting blocks from the offload tier failed: {e}");
                    continue;
                }
            };
            let pairs: Vec<(u32, &[u8])> = adopted.fresh.iter().copied().zip(walk.promote.iter().map(|b| b.as_slice())).collect();
            let copied = copy_in(self.runner.cache(), &pairs);
            let n = adopted.fresh.len();
            if let Some(off) = self.offload.as_mut() {
                off.promoted(&missed[..n]);
            }
            if let Err(e) = self.kv.release_adopted(adopted, copied.is_ok()) {
                tracing::error!("request {id}: releasing adopted blocks failed: {e}");
            }
            if let Err(e) = copied {
                tracing::warn!("request {id}: copying blocks from the offload tier failed (computing them instead): {e:#}");
            }
        }
    }
}
