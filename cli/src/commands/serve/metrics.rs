//! `/metrics`: Prometheus text exposition with vLLM's metric names under a `kvault:` prefix,
//! kvault's own KV-policy families (requests and evicted tokens per policy, tokens held), plus
//! per-request latency observation (TTFT, inter-token gaps, end-to-end, SLA goodput), and the
//! cache's configuration (`kvault:cache_config_info` with the KV cache dtype, as vLLM's
//! `cache_config_info`, and the bytes one cached token costs).
//!
//! Engine gauges and counters are copied from the engine's lock-free stats at scrape time;
//! latency histograms are fed by [`ObservedStream`], which wraps every engine request the
//! server submits. Owns: names, help texts, buckets. Must not know: HTTP or request shapes.

use std::sync::Mutex;
use std::time::Instant;

use kvault_engine::events::RequestEvent;
use kvault_engine::handle::RequestStream;
use kvault_engine::kv_policy::KvPolicyKind;
use kvault_engine::stats::{KvPolicyCounters, StatsSnapshot};
use kvault_scheduler::sla::{LatencyTracker, SlaConfig};
use kvault_engine::engine::EngineInfo;
use prometheus::{Encoder, Gauge, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder};

// Buckets reach down to 1 ms because small models on CPU decode in a few milliseconds.
const TTFT_BUCKETS: &[f64] = &[0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 600.0];
const ITL_BUCKETS: &[f64] = &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];
const E2E_BUCKETS: &[f64] = &[0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0];

pub struct Metrics {
    registry: Registry,
    epoch: Instant,
    sla: SlaConfig,
    running: IntGauge,
    waiting: IntGauge,
    kv_usage: Gauge,
    /// Engine counters are monotonic; each scrape adds what grew since the previous one.
    engine_counters: Mutex<StatsSnapshot>,
    prefix_queries: IntCounter,
    prefix_hits: IntCounter,
    preemptions: IntCounter,
    prompt_tokens: IntCounter,
    generation_tokens: IntCounter,
    /// Per KV policy (label `policy`), every policy present from the first scrape.
    kv_policy_requests: IntCounterVec,
    kv_evicted_tokens: IntCounterVec,
    kv_tokens_held: IntGauge,
    /// Set once the engine is loaded: labels block size, blocks and KV cache dtype; value 1.
    cache_config: IntGaugeVec,
    kv_bytes_per_token: IntGauge,
    ttft: Histogram,
    itl: Histogram,
    e2e: Histogram,
    success: IntCounterVec,
    good: IntCounter,
    sla_checked: IntCounter,
    offload: super::metrics_offload::OffloadMetrics,
}

fn registered<C: prometheus::core::Collector + Clone + 'static>(registry: &Registry, c: C) -> C {
    // Names are fixed and distinct, so registration cannot fail; a failure would only drop the
    // metric from the output, never take the server down.
    if let Err(e) = registry.register(Box::new(c.clone())) {
        tracing::error!("metrics: {e}");
    }
    c
}

/// A counter family with one child per KV policy, so every `policy` label shows from the start.
fn per_policy(registry: &Registry, name: &str, help: &str) -> prometheus::Result<IntCounterVec> {
    let family = registered(registry, IntCounterVec::new(Opts::new(name, help), &["policy"])?);
    for kind in KvPolicyKind::ALL {
        family.with_label_values(&[kind.as_str()]);
    }
    Ok(family)
}

fn histogram(registry: &Registry, name: &str, help: &str, buckets: &[f64]) -> prometheus::Result<Histogram> {
    Ok(registered(registry, Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets.to_vec()))?))
}

impl Metrics {
    pub fn new(sla: SlaConfig) -> prometheus::Result<Self> {
        let r = Registry::new();
        let gauge = |name: &str, help: &str| IntGauge::new(name, help).map(|g| registered(&r, g));
        let counter = |name: &str, help: &str| IntCounter::new(name, help).map(|c| registered(&r, c));
        Ok(Self {
            running: gauge("kvault:num_requests_running", "Requests in the running batch.")?,
            waiting: gauge("kvault:num_requests_waiting", "Requests waiting to be admitted.")?,
            kv_usage: registered(&r, Gauge::new("kvault:kv_cache_usage_perc", "Fraction of KV-cache blocks in use (0-1).")?),
            engine_counters: Mutex::new(StatsSnapshot::default()),
            prefix_queries: counter("kvault:prefix_cache_queries_total", "Prompt tokens looked up in the prefix cache.")?,
            prefix_hits: counter("kvault:prefix_cache_hits_total", "Prompt tokens served from the prefix cache.")?,
            preemptions: counter("kvault:num_preemptions_total", "Requests preempted (recomputed later).")?,
            prompt_tokens: counter("kvault:prompt_tokens_total", "Prompt tokens admitted.")?,
            generation_tokens: counter("kvault:generation_tokens_total", "Tokens generated.")?,
            kv_policy_requests: per_policy(&r, "kvault:kv_policy_requests_total", "Requests admitted, by KV policy.")?,
            kv_evicted_tokens: per_policy(
                &r,
                "kvault:kv_evicted_tokens_total",
                "Tokens evicted from requests' KV cache, by KV policy (one per token, not per layer and head).",
            )?,
            kv_tokens_held: gauge(
                "kvault:kv_tokens_held",
                "KV tokens held by running requests (per KV head per layer, summed over requests).",
            )?,
            cache_config: registered(
                &r,
                IntGaugeVec::new(
                    Opts::new("kvault:cache_config_info", "KV cache configuration (value 1; the labels carry it)."),
                    &["block_size", "num_blocks", "kv_cache_dtype"],
                )?,
            ),
            kv_bytes_per_token: gauge(
                "kvault:kv_cache_bytes_per_token",
                "KV cache bytes per cached token: K and V of every layer and KV head (int8/fp8 scales included) plus slot metadata.",
            )?,
            ttft: histogram(&r, "kvault:time_to_first_token_seconds", "Arrival to first token.", TTFT_BUCKETS)?,
            itl: histogram(&r, "kvault:inter_token_latency_seconds", "Gap between consecutive tokens.", ITL_BUCKETS)?,
            e2e: histogram(&r, "kvault:e2e_request_latency_seconds", "Arrival to the final token.", E2E_BUCKETS)?,
            success: registered(
                &r,
                IntCounterVec::new(Opts::new("kvault:request_success_total", "Finished requests by finish reason."), &["finished_reason"])?,
            ),
            good: counter(
                "kvault:good_requests_total",
                "Finished requests within the SLA (TTFT and maximum inter-token gap); its rate is goodput.",
            )?,
            sla_checked: counter("kvault:sla_checked_requests_total", "Finished requests checked against the SLA.")?,
            offload: super::metrics_offload::OffloadMetrics::new(&r)?,
            registry: r,
            epoch: Instant::now(),
            sla,
        })
    }

    /// Records the loaded engine's cache configuration.
    pub fn set_cache_config(&self, info: &EngineInfo) {
        let labels = [info.block_size.to_string(), info.num_blocks.to_string(), info.kv_cache_dtype.name().to_string()];
        self.cache_config.with_label_values(&labels.each_ref().map(|l| l.as_str())).set(1);
        self.kv_bytes_per_token.set(info.kv_bytes_per_token as i64);
    }

    /// Prometheus text format, engine figures as of now.
    pub fn render(&self, engine: Option<&StatsSnapshot>) -> String {
        if let Some(s) = engine {
            self.sync_engine(s);
        }
        let mut out = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::error!("metrics: cannot encode: {e}");
        }
        String::from_utf8_lossy(&out).into_owned()
    }

    fn sync_engine(&self, s: &StatsSnapshot) {
        self.running.set(s.running as i64);
        self.waiting.set(s.waiting as i64);
        self.kv_usage.set(s.kv_usage);
        // A poisoned lock only means a scrape panicked mid-copy; the snapshot is still usable.
        let mut last = self.engine_counters.lock().unwrap_or_else(|e| e.into_inner());
        let grow = |c: &IntCounter, now: u64, before: u64| c.inc_by(now.saturating_sub(before));
        grow(&self.prefix_queries, s.prefix_cache_queries, last.prefix_cache_queries);
        grow(&self.prefix_hits, s.prefix_cache_hits, last.prefix_cache_hits);
        grow(&self.preemptions, s.preemptions, last.preemptions);
        grow(&self.prompt_tokens, s.prompt_tokens, last.prompt_tokens);
        grow(&self.generation_tokens, s.generation_tokens, last.generation_tokens);
        self.kv_tokens_held.set(s.kv_tokens_held as i64);
        for now in &s.kv_policies {
            let before = last.kv_policies.iter().find(|c| c.policy == now.policy).copied().unwrap_or_default();
            let label = [now.policy.as_str()];
            let KvPolicyCounters { requests, evicted_tokens, .. } = before;
            grow(&self.kv_policy_requests.with_label_values(&label), now.requests, requests);
            grow(&self.kv_evicted_tokens.with_label_values(&label), now.evicted_tokens, evicted_tokens);
        }
        self.offload.sync(&s.offload, &last.offload);
        *last = s.clone();
    }

    fn seconds(&self, t: Instant) -> f64 {
        t.saturating_duration_since(self.epoch).as_secs_f64()
    }
}

/// An engine request whose events feed the latency metrics as they pass through. Dropping it
/// drops the `RequestStream`, which aborts the request.
pub struct ObservedStream {
    stream: RequestStream,
    metrics: std::sync::Arc<Metrics>,
    arrival: Instant,
    tracker: LatencyTracker,
    last_token: Option<Instant>,
}

impl ObservedStream {
    pub fn new(stream: RequestStream, metrics: std::sync::Arc<Metrics>, arrival: Instant) -> Self {
        let tracker = LatencyTracker::new(metrics.seconds(arrival));
        Self { stream, metrics, arrival, tracker, last_token: None }
    }

    pub async fn next(&mut self) -> Option<RequestEvent> {
        let event = self.stream.next().await;
        match &event {
            Some(RequestEvent::Tokens(d)) => self.on_tokens(d.at, d.token_ids.len()),
            Some(RequestEvent::Finished(done)) => self.on_finished(done.at, done.reason.as_str()),
            _ => {}
        }
        event
    }

    fn on_tokens(&mut self, at: Instant, n: usize) {
        if n == 0 {
            return;
        }
        let m = &self.metrics;
        match self.last_token {
            None => m.ttft.observe(at.saturating_duration_since(self.arrival).as_secs_f64()),
            // Tokens delivered together share the gap, as vLLM does for multi-token steps.
            Some(prev) => {
                let gap = at.saturating_duration_since(prev).as_secs_f64() / n as f64;
                for _ in 0..n {
                    m.itl.observe(gap);
                }
            }
        }
        for _ in 0..n {
            self.tracker.on_token(m.seconds(at));
        }
        self.last_token = Some(at);
    }

    fn on_finished(&mut self, at: Instant, reason: &str) {
        let m = &self.metrics;
        m.e2e.observe(at.saturating_duration_since(self.arrival).as_secs_f64());
        m.success.with_label_values(&[reason]).inc();
        m.sla_checked.inc();
        if let Some(ttft) = self.tracker.ttft_s() {
            if m.sla.is_good(ttft, self.tracker.max_itl_s()) {
                m.good.inc();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(text: &str, name: &str) -> f64 {
        let line = text.lines().find(|l| l.split(' ').next() == Some(name)).unwrap_or_else(|| panic!("{name} missing in:\n{text}"));
        line.rsplit(' ').next().and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("bad line {line}"))
    }

    #[test]
    fn engine_counters_are_exported_cumulatively_across_scrapes() {
        let m = Metrics::new(SlaConfig::default()).unwrap();
        let mut s = StatsSnapshot { running: 3, waiting: 2, kv_usage: 0.25, prompt_tokens: 100, prefix_cache_queries: 64, prefix_cache_hits: 32, ..Default::default() };
        m.render(Some(&s));
        s.prompt_tokens = 150;
        s.running = 1;
        let text = m.render(Some(&s));
        assert_eq!(value(&text, "kvault:prompt_tokens_total"), 150.0);
        assert_eq!(value(&text, "kvault:prefix_cache_hits_total"), 32.0);
        assert_eq!(value(&text, "kvault:num_requests_running"), 1.0);
        assert_eq!(value(&text, "kvault:num_requests_waiting"), 2.0);
        assert_eq!(value(&text, "kvault:kv_cache_usage_perc"), 0.25);
    }

    #[test]
    fn every_documented_metric_name_is_present() {
        let text = Metrics::new(SlaConfig::default()).unwrap().render(None);
        for name in [
            "kvault:num_requests_running", "kvault:num_requests_waiting", "kvault:kv_cache_usage_perc",
            "kvault:prefix_cache_queries_total", "kvault:prefix_cache_hits_total", "kvault:num_preemptions_total",
            "kvault:prompt_tokens_total", "kvault:generation_tokens_total", "kvault:time_to_first_token_seconds_bucket",
            "kvault:inter_token_latency_seconds_count", "kvault:e2e_request_latency_seconds_sum",
            "kvault:good_requests_total", "kvault:sla_checked_requests_total", "kvault:kv_tokens_held",
        ] {
            assert!(text.lines().any(|l| l.starts_with(name)), "{name} missing in:\n{text}");
        }
        for family in ["kvault:kv_policy_requests_total", "kvault:kv_evicted_tokens_total"] {
            assert!(text.contains(&format!("# TYPE {family} counter")), "{family} missing in:\n{text}");
            for kind in KvPolicyKind::ALL {
                assert_eq!(value(&text, &format!("{family}{{policy=\"{kind}\"}}")), 0.0);
            }
        }
        assert!(text.contains("# TYPE kvault:kv_tokens_held gauge"), "{text}");
    }

    #[test]
    fn kv_policy_counters_follow_the_engine_per_policy() {
        let m = Metrics::new(SlaConfig::default()).unwrap();
        let counters = |h2o: (u64, u64), snapkv: (u64, u64)| {
            KvPolicyKind::ALL
                .iter()
                .map(|&policy| {
                    let (requests, evicted_tokens) = match policy {
                        KvPolicyKind::H2o => h2o,
                        KvPolicyKind::SnapKv => snapkv,
                        _ => (0, 0),
                    };
                    KvPolicyCounters { policy, requests, evicted_tokens }
                })
                .collect()
        };
        let mut s = StatsSnapshot { kv_policies: counters((2, 100), (0, 0)), kv_tokens_held: 96, ..Default::default() };
        m.render(Some(&s));
        s.kv_policies = counters((3, 250), (1, 7));
        s.kv_tokens_held = 40;
        let text = m.render(Some(&s));
        assert_eq!(value(&text, "kvault:kv_policy_requests_total{policy=\"h2o\"}"), 3.0);
        assert_eq!(value(&text, "kvault:kv_evicted_tokens_total{policy=\"h2o\"}"), 250.0);
        assert_eq!(value(&text, "kvault:kv_evicted_tokens_total{policy=\"snapkv\"}"), 7.0);
        assert_eq!(value(&text, "kvault:kv_evicted_tokens_total{policy=\"streaming\"}"), 0.0);
        assert_eq!(value(&text, "kvault:kv_tokens_held"), 40.0);
    }
}
