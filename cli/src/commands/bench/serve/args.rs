//! `kvault bench serve` flags (vLLM's names and defaults where vLLM has the flag) and their
//! parsing into typed values: request rate and burstiness accept `inf`, `--goodput` takes
//! vLLM's `KEY:MS` pairs, percentiles and metric lists are comma-separated.
//!
//! Must not know: how the benchmark runs.

use std::path::PathBuf;

use clap::Args;

use super::dataset::DatasetArgs;
use super::metrics::Slo;
use super::report::MetricKind;

#[derive(Args, Debug)]
pub struct ServeBenchArgs {
    /// The server, e.g. http://127.0.0.1:8000 (no trailing path).
    #[arg(long, default_value = "http://127.0.0.1:8000")]
    pub base_url: String,
    /// API path: /v1/completions or /v1/chat/completions.
    #[arg(long, default_value = "/v1/completions")]
    pub endpoint: String,
    /// Model name sent in requests. Default: the first id of the server's GET /v1/models.
    #[arg(long)]
    pub model: Option<String>,
    /// Tokenizer for building prompts and counting tokens: a .gguf file, a model folder, a
    /// Hugging Face id, or stories260K. Default: the served model's own when its name is a
    /// local path; otherwise the embedded stories260K's.
    #[arg(long)]
    pub tokenizer: Option<String>,
    #[command(flatten)]
    pub dataset: DatasetArgs,
    /// Requests per second (`inf`: all at once). Finite rates draw gamma-distributed gaps.
    #[arg(long, default_value = "inf", value_parser = positive_or_inf)]
    pub request_rate: f64,
    /// Gamma shape of the gaps: 1 = Poisson, < 1 burstier, > 1 more regular, `inf` = constant.
    #[arg(long, default_value = "1.0", value_parser = positive_or_inf)]
    pub burstiness: f64,
    /// At most this many requests in flight; the rest wait their turn in the client.
    #[arg(long, value_parser = super::dataset::positive)]
    pub max_concurrency: Option<usize>,
    /// Closed loop: N clients, each sending its next request when its previous one ends, until
    /// --num-prompts are done (replaces --request-rate/--max-concurrency).
    #[arg(long, value_parser = super::dataset::positive, conflicts_with_all = ["request_rate", "max_concurrency", "burstiness"])]
    pub closed_loop_clients: Option<usize>,
    /// Service-level objectives for goodput, as KEY:MILLISECONDS pairs; keys ttft, tpot, e2el,
    /// max_itl. A request is good when it meets every one.
    #[arg(long, num_args = 1.., value_parser = parse_slo_pair)]
    pub goodput: Vec<(SloKey, f64)>,
    /// Latency metrics to print: any of ttft, tpot, itl, e2el, max_itl (the JSON has them all).
    #[arg(long, default_value = "ttft,tpot,itl,e2el,max_itl", value_parser = parse_metric_list)]
    pub percentile_metrics: MetricList,
    /// Percentiles to report, comma-separated (e.g. 50,90,99,99.9).
    #[arg(long, default_value = "90,99", value_parser = parse_percentiles)]
    pub metric_percentiles: Percentiles,
    /// Write every per-request measurement and the summary to this JSON file.
    #[arg(long)]
    pub result_file: Option<PathBuf>,
    /// Let generation stop at EOS (by default requests set ignore_eos so every request
    /// generates its full output length).
    #[arg(long)]
    pub no_ignore_eos: bool,
    /// Sampling temperature sent with each request (default: the server's).
    #[arg(long)]
    pub temperature: Option<f32>,
    /// Keep retrying the first request this long while the server starts up (0: one try).
    #[arg(long, default_value_t = 600)]
    pub ready_check_timeout_sec: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SloKey {
    Ttft,
    Tpot,
    E2el,
    MaxItl,
}

/// Newtypes so clap treats the comma lists as one value each.
#[derive(Clone, Debug, PartialEq)]
pub struct MetricList(pub Vec<MetricKind>);

#[derive(Clone, Debug, PartialEq)]
pub struct Percentiles(pub Vec<f64>);

impl ServeBenchArgs {
    pub fn slo(&self) -> Slo {
        let mut slo = Slo::default();
        for &(key, ms) in &self.goodput {
            let s = Some(ms / 1000.0);
            match key {
                SloKey::Ttft => slo.ttft = s,
                SloKey::Tpot => slo.tpot = s,
                SloKey::E2el => slo.e2el = s,
                SloKey::MaxItl => slo.max_itl = s,
            }
        }
        slo
    }
}

fn positive_or_inf(s: &str) -> Result<f64, String> {
    let v: f64 = match s.trim().to_ascii_lowercase().as_str() {
        "inf" | "infinity" => f64::INFINITY,
        t => t.parse().map_err(|_| format!("`{s}` is not a number (or inf)"))?,
    };
    if v.is_nan() || v <= 0.0 {
        return Err(format!("must be positive (or inf), got {s}"));
    }
    Ok(v)
}

fn parse_slo_pair(s: &str) -> Result<(SloKey, f64), String> {
    let (key, value) = s
        .split_once(':')
        .ok_or_else(|| format!("`{s}`: expected KEY:MILLISECONDS, e.g. ttft:500"))?;
    let key = match key {
        "ttft" => SloKey::Ttft,
        "tpot" => SloKey::Tpot,
        "e2el" => SloKey::E2el,
        "max_itl" => SloKey::MaxItl,
        other => return Err(format!("unknown objective `{other}` (expected ttft, tpot, e2el or max_itl)")),
    };
    let ms: f64 = value.parse().map_err(|_| format!("`{s}`: `{value}` is not a number of milliseconds"))?;
    if !ms.is_finite() || ms < 0.0 {
        return Err(format!("`{s}`: the bound must be a non-negative number of milliseconds"));
    }
    Ok((key, ms))
}

fn parse_metric_list(s: &str) -> Result<MetricList, String> {
    let mut out = Vec::new();
    for name in s.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        let kind = MetricKind::ALL
            .into_iter()
            .find(|k| k.key() == name)
            .ok_or_else(|| format!("unknown metric `{name}` (expected ttft, tpot, itl, e2el, max_itl)"))?;
        if !out.contains(&kind) {
            out.push(kind);
        }
    }
    Ok(MetricList(out))
}

fn parse_percentiles(s: &str) -> Result<Percentiles, String> {
    let mut out = Vec::new();
    for p in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let v: f64 = p.parse().map_err(|_| format!("`{p}` is not a number"))?;
        if !(0.0..=100.0).contains(&v) {
            return Err(format!("percentile {v} is outside [0, 100]"));
        }
        out.push(v);
    }
    Ok(Percentiles(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: ServeBenchArgs,
    }

    fn parse(argv: &[&str]) -> Result<ServeBenchArgs, String> {
        let mut full = vec!["bench"];
        full.extend_from_slice(argv);
        Cli::try_parse_from(full).map(|c| c.args).map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_follow_vllm() {
        let a = parse(&[]).unwrap();
        assert!(a.request_rate.is_infinite());
        assert_eq!(a.burstiness, 1.0);
        assert_eq!(a.endpoint, "/v1/completions");
        assert_eq!(a.dataset.num_prompts, 1000);
        assert_eq!(a.metric_percentiles, Percentiles(vec![90.0, 99.0]));
        assert!(!a.slo().is_set());
    }

    #[test]
    fn goodput_pairs_become_bounds_in_seconds() {
        let a = parse(&["--goodput", "ttft:500", "tpot:50", "max_itl:200"]).unwrap();
        assert_eq!(a.slo(), Slo { ttft: Some(0.5), tpot: Some(0.05), e2el: None, max_itl: Some(0.2) });
    }

    #[test]
    fn bad_goodput_rate_or_percentile_is_rejected_with_the_reason() {
        assert!(parse(&["--goodput", "latency:5"]).unwrap_err().contains("unknown objective `latency`"));
        assert!(parse(&["--goodput", "ttft=5"]).unwrap_err().contains("KEY:MILLISECONDS"));
        assert!(parse(&["--request-rate", "0"]).unwrap_err().contains("must be positive"));
        assert!(parse(&["--metric-percentiles", "101"]).unwrap_err().contains("outside [0, 100]"));
        assert!(parse(&["--percentile-metrics", "ttft,foo"]).unwrap_err().contains("unknown metric `foo`"));
    }

    #[test]
    fn closed_loop_excludes_open_loop_controls() {
        assert!(parse(&["--closed-loop-clients", "4"]).unwrap().closed_loop_clients == Some(4));
        assert!(parse(&["--closed-loop-clients", "4", "--request-rate", "2"]).is_err());
        assert!(parse(&["--closed-loop-clients", "4", "--max-concurrency", "2"]).is_err());
    }

    #[test]
    fn rates_accept_inf_and_decimals() {
        let a = parse(&["--request-rate", "2.5", "--burstiness", "inf"]).unwrap();
        assert_eq!(a.request_rate, 2.5);
        assert!(a.burstiness.is_infinite());
    }
}
