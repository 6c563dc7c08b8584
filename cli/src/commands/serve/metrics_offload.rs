//! `/metrics` families of the KV offload tier, labelled by `tier` (`ram`, `disk`): hits, misses,
//! bytes in and out, blocks and bytes held, budget, discarded files, dropped writes, disabled;
//! plus swap-outs, swap-ins and the bytes swapped-out requests hold.
//!
//! Owns: names and help texts, and turning the engine's monotonic counters into Prometheus
//! counters. Must not know: how the tiers work.

use kvault_engine::offload::counters::{OffloadSnapshot, TierSnapshot};
use prometheus::{IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

const TIERS: [&str; 2] = ["ram", "disk"];

pub struct OffloadMetrics {
    hits: IntCounterVec,
    misses: IntCounterVec,
    bytes_in: IntCounterVec,
    bytes_out: IntCounterVec,
    discarded: IntCounterVec,
    dropped: IntCounterVec,
    blocks_held: IntGaugeVec,
    bytes_held: IntGaugeVec,
    budget: IntGaugeVec,
    disabled: IntGaugeVec,
    swap_outs: IntCounter,
    swap_ins: IntCounter,
    swap_bytes: IntGauge,
}

fn reg<C: prometheus::core::Collector + Clone + 'static>(r: &Registry, c: C) -> C {
    if let Err(e) = r.register(Box::new(c.clone())) {
        tracing::error!("metrics: {e}");
    }
    c
}

impl OffloadMetrics {
    pub fn new(r: &Registry) -> prometheus::Result<Self> {
        let counters = |name: &str, help: &str| -> prometheus::Result<IntCounterVec> {
            let c = reg(r, IntCounterVec::new(Opts::new(name, help), &["tier"])?);
            for t in TIERS {
                c.with_label_values(&[t]);
            }
            Ok(c)
        };
        let gauges = |name: &str, help: &str| -> prometheus::Result<IntGaugeVec> {
            let g = reg(r, IntGaugeVec::new(Opts::new(name, help), &["tier"])?);
            for t in TIERS {
                g.with_label_values(&[t]);
            }
            Ok(g)
        };
        Ok(Self {
            hits: counters("kvault:kv_offload_hits_total", "Prefix blocks found in an offload tier (looked up once per request).")?,
            misses: counters("kvault:kv_offload_misses_total", "Prefix blocks looked up in an offload tier and not found there.")?,
            bytes_in: counters("kvault:kv_offload_bytes_in_total", "Bytes written into an offload tier.")?,
            bytes_out: counters("kvault:kv_offload_bytes_out_total", "Bytes read back out of an offload tier.")?,
            discarded: counters(
                "kvault:kv_offload_discarded_total",
                "Files found torn, corrupt or written for another model or layout: deleted, each a miss.",
            )?,
            dropped: counters("kvault:kv_offload_dropped_blocks_total", "Blocks not written down (queue full or tier disabled).")?,
            blocks_held: gauges("kvault:kv_offload_blocks", "Blocks an offload tier holds.")?,
            bytes_held: gauges("kvault:kv_offload_bytes", "Bytes an offload tier holds (RAM: including swapped-out requests).")?,
            budget: gauges("kvault:kv_offload_budget_bytes", "Byte budget of an offload tier.")?,
            disabled: gauges("kvault:kv_offload_disabled", "1 once a tier turned itself off (disk full or unwritable).")?,
            swap_outs: reg(r, IntCounter::new("kvault:kv_swap_outs_total", "Preempted requests whose KV was swapped out to RAM.")?),
            swap_ins: reg(r, IntCounter::new("kvault:kv_swap_ins_total", "Swapped-out requests whose KV was swapped back in.")?),
            swap_bytes: reg(r, IntGauge::new("kvault:kv_swap_bytes", "Bytes swapped-out requests hold in the RAM tier.")?),
        })
    }

    /// Adds what grew since `before` and sets the gauges.
    pub fn sync(&self, now: &OffloadSnapshot, before: &OffloadSnapshot) {
        let grow = |c: &IntCounter, now: u64, before: u64| c.inc_by(now.saturating_sub(before));
        for (tier, n, b) in [("ram", &now.ram, &before.ram), ("disk", &now.disk, &before.disk)] {
            let l = [tier];
            let TierSnapshot { hits, misses, bytes_in, bytes_out, discarded, dropped, .. } = *b;
            grow(&self.hits.with_label_values(&l), n.hits, hits);
            grow(&self.misses.with_label_values(&l), n.misses, misses);
            grow(&self.bytes_in.with_label_values(&l), n.bytes_in, bytes_in);
            grow(&self.bytes_out.with_label_values(&l), n.bytes_out, bytes_out);
            grow(&self.discarded.with_label_values(&l), n.discarded, discarded);
            grow(&self.dropped.with_label_values(&l), n.dropped, dropped);
            self.blocks_held.with_label_values(&l).set(n.blocks_held as i64);
            self.bytes_held.with_label_values(&l).set(n.bytes_held as i64);
            self.budget.with_label_values(&l).set(n.budget_bytes as i64);
            self.disabled.with_label_values(&l).set(n.disabled as i64);
        }
        grow(&self.swap_outs, now.swap_outs, before.swap_outs);
        grow(&self.swap_ins, now.swap_ins, before.swap_ins);
        self.swap_bytes.set(now.swap_bytes as i64);
    }
}
