//! Aggregate serving metrics over per-request records, with `vllm bench serve`'s definitions
//! (`calculate_metrics`): pure arithmetic over recorded timelines, no clocks, no I/O.
//!
//! - Failed requests are counted and otherwise excluded: they add nothing to input tokens,
//!   output tokens, TTFT, TPOT, ITL or E2EL samples.
//! - Throughputs divide by the benchmark duration (first dispatch to last completion).
//! - TPOT samples come from requests with more than one output token; ITL samples are pooled
//!   over every token gap of every successful request.
//! - Peak output throughput: every token is stamped `start + ttft + Σ itl` and dropped into
//!   1-second buckets counted from the earliest request start; the fullest bucket wins.
//! - Peak concurrent requests: a sweep over the half-open intervals `[start, start + e2el)`.
//! - Goodput (DistServe): successful requests meeting every given bound, per second. A request
//!   with one output token has TPOT 0 for this purpose (vLLM); `max_itl` (kvault's addition)
//!   bounds the request's longest token gap.
//!
//! Must not know: HTTP, printing, file formats.

use super::stats::{summarize, Summary};
use super::timeline::RequestRecord;

/// Service-level bounds for goodput, in seconds; `None` = not constrained.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Slo {
    pub ttft: Option<f64>,
    pub tpot: Option<f64>,
    pub e2el: Option<f64>,
    pub max_itl: Option<f64>,
}

impl Slo {
    pub fn is_set(&self) -> bool {
        self.ttft.is_some() || self.tpot.is_some() || self.e2el.is_some() || self.max_itl.is_some()
    }

    /// Whether a successful request meets every bound that is set.
    pub fn is_met_by(&self, r: &RequestRecord) -> bool {
        let within = |bound: Option<f64>, value: f64| bound.is_none_or(|b| value <= b);
        within(self.ttft, r.ttft)
            && within(self.tpot, r.tpot().unwrap_or(0.0))
            && within(self.e2el, r.e2el)
            && within(self.max_itl, r.max_itl())
    }
}

/// Every aggregate the report prints and the result file stores. Latency summaries are in
/// milliseconds.
#[derive(Clone, Debug, PartialEq)]
pub struct Metrics {
    pub completed: usize,
    pub failed: usize,
    pub duration_s: f64,
    pub total_input: usize,
    pub total_output: usize,
    pub request_throughput: f64,
    /// Present when an SLO was given.
    pub request_goodput: Option<f64>,
    pub output_throughput: f64,
    pub total_token_throughput: f64,
    pub peak_output_throughput: f64,
    pub peak_concurrent_requests: usize,
    pub ttft_ms: Summary,
    pub tpot_ms: Summary,
    pub itl_ms: Summary,
    pub e2el_ms: Summary,
    pub max_itl_ms: Summary,
}

pub fn compute(records: &[RequestRecord], duration_s: f64, slo: &Slo, percentiles: &[f64]) -> Metrics {
    let ok: Vec<&RequestRecord> = records.iter().filter(|r| r.success).collect();
    let completed = ok.len();
    let total_input: usize = ok.iter().map(|r| r.prompt_len).sum();
    let total_output: usize = ok.iter().map(|r| r.output_tokens).sum();
    let ttfts: Vec<f64> = ok.iter().map(|r| r.ttft).collect();
    let tpots: Vec<f64> = ok.iter().filter_map(|r| r.tpot()).collect();
    let itls: Vec<f64> = ok.iter().flat_map(|r| r.itls.iter().copied()).collect();
    let e2els: Vec<f64> = ok.iter().map(|r| r.e2el).collect();
    let max_itls: Vec<f64> = ok.iter().map(|r| r.max_itl()).collect();
    let good = ok.iter().filter(|r| slo.is_met_by(r)).count();
    // A zero duration (nothing ran) must not print inf/NaN.
    let per_s = |x: f64| if duration_s > 0.0 { x / duration_s } else { 0.0 };
    let ms = |xs: &[f64]| summarize(xs, percentiles).scaled(1000.0);
    Metrics {
        completed,
        failed: records.len() - completed,
        duration_s,
        total_input,
        total_output,
        request_throughput: per_s(completed as f64),
        request_goodput: slo.is_set().then(|| per_s(good as f64)),
        output_throughput: per_s(total_output as f64),
        total_token_throughput: per_s((total_input + total_output) as f64),
        peak_output_throughput: peak_tokens_per_second(&ok),
        peak_concurrent_requests: peak_concurrency(&ok),
        ttft_ms: ms(&ttfts),
        tpot_ms: ms(&tpots),
        itl_ms: ms(&itls),
        e2el_ms: ms(&e2els),
        max_itl_ms: ms(&max_itls),
    }
}

fn peak_tokens_per_second(ok: &[&RequestRecord]) -> f64 {
    let Some(t0) = ok.iter().map(|r| r.start).min_by(f64::total_cmp) else { return 0.0 };
    let end = ok.iter().map(|r| r.start + r.e2el).fold(t0, f64::max);
    let buckets = (end - t0).ceil() as usize + 1;
    let mut counts = vec![0usize; buckets];
    for r in ok {
        for t in r.token_times() {
            let b = (t - t0).floor();
            if b >= 0.0 && (b as usize) < buckets {
                counts[b as usize] += 1;
            }
        }
    }
    counts.into_iter().max().unwrap_or(0) as f64
}

fn peak_concurrency(ok: &[&RequestRecord]) -> usize {
    let mut events: Vec<(f64, i32)> = ok.iter().flat_map(|r| [(r.start, 1), (r.start + r.e2el, -1)]).collect();
    // Departures sort before arrivals at the same instant: intervals are half-open.
    events.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    let (mut now, mut peak) = (0i32, 0i32);
    for (_, delta) in events {
        now += delta;
        peak = peak.max(now);
    }
    peak as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    /// A successful request from its start, TTFT and token gaps (seconds).
    fn ok(start: f64, prompt_len: usize, ttft: f64, itls: &[f64]) -> RequestRecord {
        RequestRecord {
            success: true,
            start,
            prompt_len,
            output_tokens: itls.len() + 1,
            ttft,
            itls: itls.to_vec(),
            e2el: ttft + itls.iter().sum::<f64>(),
            ..RequestRecord::default()
        }
    }

    fn failed(start: f64) -> RequestRecord {
        RequestRecord { success: false, start, prompt_len: 100, error: Some("HTTP 500".into()), ..RequestRecord::default() }
    }

    /// Times are dyadic so that sums are exact in binary floating point.
    /// Request A: sent at 0, prompt 10, tokens at 0.25, 0.375, 0.375 (one chunk carried two), 0.5.
    /// Request B: sent at 0.5, prompt 20, tokens at 1.5, 2.0.
    /// Request C: failed.
    fn fixture() -> Vec<RequestRecord> {
        vec![ok(0.0, 10, 0.25, &[0.125, 0.0, 0.125]), ok(0.5, 20, 1.0, &[0.5]), failed(0.125)]
    }

    #[test]
    fn counts_and_throughputs_exclude_failed_requests() {
        let m = compute(&fixture(), 4.0, &Slo::default(), &[99.0]);
        assert_eq!((m.completed, m.failed), (2, 1));
        assert_eq!((m.total_input, m.total_output), (30, 6));
        assert!(close(m.request_throughput, 0.5));
        assert!(close(m.output_throughput, 1.5));
        assert!(close(m.total_token_throughput, 9.0));
        assert_eq!(m.request_goodput, None);
    }

    #[test]
    fn latency_summaries_match_hand_computed_values() {
        let m = compute(&fixture(), 4.0, &Slo::default(), &[90.0, 99.0]);
        // TTFT 250 and 1000 ms.
        assert!(close(m.ttft_ms.mean, 625.0) && close(m.ttft_ms.median, 625.0));
        assert!(close(m.ttft_ms.percentiles[0].1, 925.0) && close(m.ttft_ms.percentiles[1].1, 992.5));
        assert!(close(m.ttft_ms.std, 375.0));
        // TPOT: A (0.5 - 0.25)/3 s; B (1.5 - 1.0)/1 s.
        assert!(close(m.tpot_ms.mean, (250.0 / 3.0 + 500.0) / 2.0));
        // ITL pooled: 125, 0, 125, 500 ms -> mean 187.5, median 125, p90 = 125 + 0.7*375.
        assert!(close(m.itl_ms.mean, 187.5) && close(m.itl_ms.median, 125.0));
        assert!(close(m.itl_ms.percentiles[0].1, 387.5), "{:?}", m.itl_ms);
        // E2EL 500 and 1500 ms; per-request max ITL 125 and 500 ms.
        assert!(close(m.e2el_ms.mean, 1000.0));
        assert!(close(m.max_itl_ms.mean, 312.5));
    }

    #[test]
    fn peak_output_throughput_counts_tokens_in_one_second_buckets() {
        // Tokens at 0.25, 0.375, 0.375, 0.5 (A) and 1.5, 2.0 (B): bucket 0 holds 4.
        let m = compute(&fixture(), 4.0, &Slo::default(), &[]);
        assert!(close(m.peak_output_throughput, 4.0));
        // Three tokens in [1, 2) beat two in [0, 1).
        let records = vec![ok(0.0, 1, 0.5, &[0.625, 0.125, 0.125]), ok(0.0, 1, 0.875, &[])];
        assert!(close(compute(&records, 2.0, &Slo::default(), &[]).peak_output_throughput, 3.0));
    }

    #[test]
    fn peak_concurrency_treats_intervals_as_half_open() {
        // A is active [0, 0.5), B [0.5, 2.0): they touch but never overlap.
        assert_eq!(compute(&fixture(), 4.0, &Slo::default(), &[]).peak_concurrent_requests, 1);
        let overlapping = vec![ok(0.0, 1, 0.5, &[0.5]), ok(0.2, 1, 0.5, &[]), ok(0.9, 1, 0.05, &[])];
        assert_eq!(compute(&overlapping, 2.0, &Slo::default(), &[]).peak_concurrent_requests, 2);
    }

    #[test]
    fn goodput_counts_requests_meeting_every_bound() {
        let records = fixture();
        // TTFT <= 500 ms: only A.
        let slo = Slo { ttft: Some(0.5), ..Slo::default() };
        assert_eq!(compute(&records, 4.0, &slo, &[]).request_goodput, Some(0.25));
        // TPOT <= 600 ms holds for both, but max ITL <= 300 ms fails B (its gap is 500 ms).
        let slo = Slo { tpot: Some(0.6), max_itl: Some(0.3), ..Slo::default() };
        assert_eq!(compute(&records, 4.0, &slo, &[]).request_goodput, Some(0.25));
        let slo = Slo { tpot: Some(0.6), e2el: Some(2.0), ..Slo::default() };
        assert_eq!(compute(&records, 4.0, &slo, &[]).request_goodput, Some(0.5));
    }

    #[test]
    fn a_single_token_request_has_tpot_zero_for_goodput_and_no_tpot_sample() {
        let records = vec![ok(0.0, 1, 0.1, &[])];
        let m = compute(&records, 1.0, &Slo { tpot: Some(0.0), ..Slo::default() }, &[]);
        assert_eq!(m.request_goodput, Some(1.0));
        assert_eq!(m.tpot_ms.mean, 0.0);
        assert!(close(m.ttft_ms.mean, 100.0));
    }

    #[test]
    fn all_failed_gives_zeros_not_nan() {
        let m = compute(&[failed(0.0), failed(1.0)], 2.0, &Slo::default(), &[99.0]);
        assert_eq!((m.completed, m.failed, m.total_output), (0, 2, 0));
        assert_eq!((m.peak_output_throughput, m.peak_concurrent_requests), (0.0, 0));
        assert_eq!(m.ttft_ms.percentiles[0].1, 0.0);
        assert!(compute(&[], 0.0, &Slo::default(), &[]).request_throughput == 0.0);
    }
}
