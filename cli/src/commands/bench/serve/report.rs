//! The benchmark's outputs: vLLM's result block with its exact labels and layout (label padded
//! to 40 columns, value to 10, section rules 50 wide), and the result JSON — vLLM's keys plus a
//! `requests` list holding every per-request measurement.
//!
//! kvault adds one printed section, per-request maximum ITL ("Max ITL"), and the `Closed-loop
//! clients:` line in closed-loop runs.
//!
//! Must not know: how the numbers were measured.

use serde_json::{json, Map, Value};

use super::metrics::Metrics;
use super::stats::Summary;
use super::timeline::RequestRecord;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetricKind {
    Ttft,
    Tpot,
    Itl,
    E2el,
    MaxItl,
}

impl MetricKind {
    pub const ALL: [MetricKind; 5] = [MetricKind::Ttft, MetricKind::Tpot, MetricKind::Itl, MetricKind::E2el, MetricKind::MaxItl];

    /// Flag spelling and JSON key fragment (`mean_ttft_ms`).
    pub fn key(self) -> &'static str {
        match self {
            MetricKind::Ttft => "ttft",
            MetricKind::Tpot => "tpot",
            MetricKind::Itl => "itl",
            MetricKind::E2el => "e2el",
            MetricKind::MaxItl => "max_itl",
        }
    }

    fn label(self) -> &'static str {
        match self {
            MetricKind::Ttft => "TTFT",
            MetricKind::Tpot => "TPOT",
            MetricKind::Itl => "ITL",
            MetricKind::E2el => "E2EL",
            MetricKind::MaxItl => "Max ITL",
        }
    }

    fn header(self) -> &'static str {
        match self {
            MetricKind::Ttft => "Time to First Token",
            MetricKind::Tpot => "Time per Output Token (excl. 1st token)",
            MetricKind::Itl => "Inter-token Latency",
            MetricKind::E2el => "End-to-end Latency",
            MetricKind::MaxItl => "Max Inter-token Latency per Request",
        }
    }

    fn summary(self, m: &Metrics) -> &Summary {
        match self {
            MetricKind::Ttft => &m.ttft_ms,
            MetricKind::Tpot => &m.tpot_ms,
            MetricKind::Itl => &m.itl_ms,
            MetricKind::E2el => &m.e2el_ms,
            MetricKind::MaxItl => &m.max_itl_ms,
        }
    }
}

/// How the load was offered, for the report header lines and the JSON.
#[derive(Clone, Debug)]
pub struct RunInfo {
    pub model: String,
    pub endpoint: String,
    pub request_rate: f64,
    pub burstiness: f64,
    pub max_concurrency: Option<usize>,
    pub closed_loop_clients: Option<usize>,
    pub num_prompts: usize,
}

/// Python's `"{s:{c}^{n}}"`: centred, the odd fill character on the right.
fn centred(title: &str, fill: char, width: usize) -> String {
    let pad = width.saturating_sub(title.chars().count());
    let left = pad / 2;
    format!("{}{title}{}", fill.to_string().repeat(left), fill.to_string().repeat(pad - left))
}

fn line(out: &mut String, label: &str, value: impl std::fmt::Display) {
    out.push_str(&format!("{:<40} {:<10}\n", label, value));
}

fn p_word(p: f64) -> String {
    if p.fract() == 0.0 {
        format!("{}", p as i64)
    } else {
        format!("{p}")
    }
}

/// The result block exactly as `vllm bench serve` prints it (see the module doc for additions).
pub fn render(m: &Metrics, info: &RunInfo, shown: &[MetricKind]) -> String {
    let mut s = String::new();
    s.push_str(&centred(" Serving Benchmark Result ", '=', 50));
    s.push('\n');
    line(&mut s, "Successful requests:", m.completed);
    line(&mut s, "Failed requests:", m.failed);
    if let Some(c) = info.max_concurrency {
        line(&mut s, "Maximum request concurrency:", c);
    }
    if let Some(c) = info.closed_loop_clients {
        line(&mut s, "Closed-loop clients:", c);
    }
    if info.request_rate.is_finite() && info.closed_loop_clients.is_none() {
        line(&mut s, "Request rate configured (RPS):", format!("{:.2}", info.request_rate));
    }
    line(&mut s, "Benchmark duration (s):", format!("{:.2}", m.duration_s));
    line(&mut s, "Total input tokens:", m.total_input);
    line(&mut s, "Total generated tokens:", m.total_output);
    line(&mut s, "Request throughput (req/s):", format!("{:.2}", m.request_throughput));
    if let Some(g) = m.request_goodput {
        line(&mut s, "Request goodput (req/s):", format!("{g:.2}"));
    }
    line(&mut s, "Output token throughput (tok/s):", format!("{:.2}", m.output_throughput));
    line(&mut s, "Peak output token throughput (tok/s):", format!("{:.2}", m.peak_output_throughput));
    line(&mut s, "Peak concurrent requests:", format!("{:.2}", m.peak_concurrent_requests as f64));
    line(&mut s, "Total token throughput (tok/s):", format!("{:.2}", m.total_token_throughput));
    for &kind in MetricKind::ALL.iter().filter(|k| shown.contains(k)) {
        let summary = kind.summary(m);
        s.push_str(&centred(kind.header(), '-', 50));
        s.push('\n');
        line(&mut s, &format!("Mean {} (ms):", kind.label()), format!("{:.2}", summary.mean));
        line(&mut s, &format!("Median {} (ms):", kind.label()), format!("{:.2}", summary.median));
        for &(p, v) in &summary.percentiles {
            line(&mut s, &format!("P{} {} (ms):", p_word(p), kind.label()), format!("{v:.2}"));
        }
    }
    s.push_str(&"=".repeat(50));
    s.push('\n');
    s
}

/// The result file: run settings, summary metrics under vLLM's keys, vLLM's per-request arrays,
/// and `requests` with every measurement of every request (seconds unless the key says ms).
pub fn result_json(m: &Metrics, info: &RunInfo, records: &[RequestRecord]) -> Value {
    let rate = if info.request_rate.is_finite() { json!(info.request_rate) } else { json!("inf") };
    let burstiness = if info.burstiness.is_finite() { json!(info.burstiness) } else { json!("inf") };
    let mut r = Map::new();
    let mut put = |k: &str, v: Value| {
        r.insert(k.to_string(), v);
    };
    put("model_id", json!(info.model));
    put("endpoint", json!(info.endpoint));
    put("num_prompts", json!(info.num_prompts));
    put("request_rate", rate);
    put("burstiness", burstiness);
    put("max_concurrency", json!(info.max_concurrency));
    put("closed_loop_clients", json!(info.closed_loop_clients));
    put("duration", json!(m.duration_s));
    put("completed", json!(m.completed));
    put("failed", json!(m.failed));
    put("total_input_tokens", json!(m.total_input));
    put("total_output_tokens", json!(m.total_output));
    put("request_throughput", json!(m.request_throughput));
    put("request_goodput", json!(m.request_goodput));
    put("output_throughput", json!(m.output_throughput));
    put("total_token_throughput", json!(m.total_token_throughput));
    put("max_output_tokens_per_s", json!(m.peak_output_throughput));
    put("max_concurrent_requests", json!(m.peak_concurrent_requests));
    for kind in MetricKind::ALL {
        let s = kind.summary(m);
        let k = kind.key();
        put(&format!("mean_{k}_ms"), json!(s.mean));
        put(&format!("median_{k}_ms"), json!(s.median));
        put(&format!("std_{k}_ms"), json!(s.std));
        for &(p, v) in &s.percentiles {
            put(&format!("p{}_{k}_ms", p_word(p)), json!(v));
        }
    }
    put("input_lens", json!(records.iter().map(|x| x.prompt_len).collect::<Vec<_>>()));
    put("output_lens", json!(records.iter().map(|x| x.output_tokens).collect::<Vec<_>>()));
    put("ttfts", json!(records.iter().map(|x| x.ttft).collect::<Vec<_>>()));
    put("itls", json!(records.iter().map(|x| &x.itls).collect::<Vec<_>>()));
    put("latencies", json!(records.iter().map(|x| x.e2el).collect::<Vec<_>>()));
    put("start_times", json!(records.iter().map(|x| x.start).collect::<Vec<_>>()));
    put("errors", json!(records.iter().map(|x| x.error.clone().unwrap_or_default()).collect::<Vec<_>>()));
    put("generated_texts", json!(records.iter().map(|x| &x.generated_text).collect::<Vec<_>>()));
    let requests: Vec<Value> = records
        .iter()
        .map(|x| {
            json!({
                "success": x.success,
                "error": x.error,
                "prompt_tokens": x.prompt_len,
                "output_tokens": x.output_tokens,
                "start": x.start,
                "queue_time": x.queue,
                "ttft": x.ttft,
                "tpot": x.tpot(),
                "e2el": x.e2el,
                "max_itl": x.max_itl(),
                "itls": x.itls,
                "chunk_tokens": x.chunk_tokens,
            })
        })
        .collect();
    put("requests", Value::Array(requests));
    Value::Object(r)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commands::bench::serve::metrics::{compute, Slo};

    fn records() -> Vec<RequestRecord> {
        vec![
            RequestRecord {
                success: true,
                prompt_len: 10,
                output_tokens: 3,
                ttft: 0.25,
                itls: vec![0.125, 0.125],
                e2el: 0.5,
                chunk_tokens: vec![1, 1, 1],
                ..RequestRecord::default()
            },
            RequestRecord { success: false, error: Some("HTTP 503".into()), prompt_len: 10, ..RequestRecord::default() },
        ]
    }

    fn info(rate: f64, max_concurrency: Option<usize>) -> RunInfo {
        RunInfo {
            model: "m".into(),
            endpoint: "/v1/completions".into(),
            request_rate: rate,
            burstiness: 1.0,
            max_concurrency,
            closed_loop_clients: None,
            num_prompts: 2,
        }
    }

    #[test]
    fn the_block_uses_vllm_labels_and_layout() {
        let m = compute(&records(), 2.0, &Slo::default(), &[99.0]);
        let text = render(&m, &info(f64::INFINITY, None), &MetricKind::ALL);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "============ Serving Benchmark Result ============");
        assert_eq!(lines[1], format!("{:<40} {:<10}", "Successful requests:", 1));
        assert_eq!(lines[1].len(), 51);
        assert_eq!(lines[2], "Failed requests:                         1         ");
        assert!(text.contains("\nBenchmark duration (s):                  2.00      \n"));
        assert!(text.contains("\nTotal generated tokens:                  3         \n"));
        assert!(text.contains("\nRequest throughput (req/s):              0.50      \n"));
        assert!(text.contains("\nOutput token throughput (tok/s):         1.50      \n"));
        assert!(text.contains("\nPeak output token throughput (tok/s):    3.00      \n"));
        assert!(text.contains("\nPeak concurrent requests:                1.00      \n"));
        assert!(text.contains("\n---------------Time to First Token----------------\n"));
        assert!(text.contains("\n-----Time per Output Token (excl. 1st token)------\n"));
        assert!(text.contains("\n---------------Inter-token Latency----------------\n"));
        assert!(text.contains("\n----------------End-to-end Latency----------------\n"));
        assert!(text.contains("\nMean TTFT (ms):                          250.00    \n"));
        assert!(text.contains("\nP99 ITL (ms):                            125.00    \n"));
        assert!(text.contains("\nMedian TPOT (ms):                        125.00    \n"));
        assert_eq!(*lines.last().unwrap(), "=".repeat(50));
        // Printed only when they apply.
        assert!(!text.contains("Request rate configured") && !text.contains("Maximum request concurrency"));
        assert!(!text.contains("goodput"));
    }

    #[test]
    fn optional_lines_appear_when_set_and_percentile_names_keep_decimals() {
        let m = compute(&records(), 2.0, &Slo { ttft: Some(1.0), ..Slo::default() }, &[99.9]);
        let text = render(&m, &info(4.0, Some(8)), &[MetricKind::Ttft]);
        assert!(text.contains("\nMaximum request concurrency:             8         \n"));
        assert!(text.contains("\nRequest rate configured (RPS):           4.00      \n"));
        assert!(text.contains("\nRequest goodput (req/s):                 0.50      \n"));
        assert!(text.contains("\nP99.9 TTFT (ms):"));
        assert!(!text.contains("TPOT"));
    }

    #[test]
    fn the_json_has_summary_keys_and_every_request() {
        let recs = records();
        let m = compute(&recs, 2.0, &Slo::default(), &[90.0, 99.0]);
        let v = result_json(&m, &info(f64::INFINITY, None), &recs);
        assert_eq!(v["request_rate"], "inf");
        assert_eq!((v["completed"].as_u64(), v["failed"].as_u64()), (Some(1), Some(1)));
        assert_eq!(v["total_output_tokens"], 3);
        assert_eq!(v["mean_ttft_ms"], 250.0);
        assert!(v["p90_itl_ms"].is_number() && v["p99_e2el_ms"].is_number() && v["std_max_itl_ms"].is_number());
        let reqs = v["requests"].as_array().unwrap();
        assert_eq!(reqs.len(), 2);
        assert_eq!(reqs[0]["itls"].as_array().unwrap().len(), 2);
        assert_eq!(reqs[0]["tpot"], 0.125);
        assert_eq!(reqs[1]["success"], false);
        assert_eq!(reqs[1]["error"], "HTTP 503");
        assert_eq!(v["errors"][1], "HTTP 503");
    }
}
