//! `kvault bench throughput`: offline throughput, vLLM's `bench throughput`. Every prompt goes
//! into an in-process engine at once with `ignore_eos` and `max_tokens` = its output length; the
//! clock runs from the first submission to the last completion. Token counts are what the
//! engine reports per request (prompt tokens as it saw them, BOS included).
//!
//! Prints vLLM's lines (`Throughput: … requests/s, … total tokens/s, … output tokens/s`,
//! `Total num prompt tokens:`, `Total num output tokens:`) under a `KV policy:` header (every
//! request runs under the `--kv-*` policy), and with `--output-json` writes vLLM's keys plus
//! the prompt/output split and the policy.
//!
//! Must not know: HTTP; prompt sampling (that is `serve::dataset`).

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use kvault_engine::events::RequestEvent;
use kvault_engine::handle::{EngineHandle, RequestStream};
use kvault_engine::kv_policy::KvPolicy;
use kvault_engine::request::NewRequest;
use kvault_engine::sampler::SamplingParams;
use serde_json::json;

use super::serve::dataset::DatasetArgs;
use crate::args::{EngineArgs, ModelArgs};
use crate::kv::{self, KvArgs};

#[derive(Args, Debug)]
pub struct ThroughputArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub engine: EngineArgs,
    #[command(flatten)]
    pub kv: KvArgs,
    #[command(flatten)]
    pub dataset: DatasetArgs,
    /// Write the results as JSON to this file.
    #[arg(long)]
    pub output_json: Option<PathBuf>,
}

/// What one run measured.
#[derive(Clone, Debug, PartialEq)]
pub struct Totals {
    pub kv_policy: KvPolicy,
    pub requests: usize,
    pub prompt_tokens: usize,
    pub output_tokens: usize,
    pub elapsed_s: f64,
    /// Most requests the engine ran at once.
    pub peak_running: u64,
}

impl Totals {
    pub fn requests_per_s(&self) -> f64 {
        self.requests as f64 / self.elapsed_s
    }

    pub fn total_tokens_per_s(&self) -> f64 {
        (self.prompt_tokens + self.output_tokens) as f64 / self.elapsed_s
    }

    pub fn output_tokens_per_s(&self) -> f64 {
        self.output_tokens as f64 / self.elapsed_s
    }

    /// The KV policy, then vLLM's printed lines (two spaces after the colon in the totals, as
    /// vLLM prints them).
    pub fn render(&self) -> String {
        format!(
            "KV policy: {}\n\
             Throughput: {:.2} requests/s, {:.2} total tokens/s, {:.2} output tokens/s\n\
             Total num prompt tokens:  {}\n\
             Total num output tokens:  {}\n\
             Peak running requests:    {}\n",
            self.kv_policy.describe(),
            self.requests_per_s(),
            self.total_tokens_per_s(),
            self.output_tokens_per_s(),
            self.prompt_tokens,
            self.output_tokens,
            self.peak_running
        )
    }

    pub fn json(&self) -> serde_json::Value {
        json!({
            "elapsed_time": self.elapsed_s,
            "num_requests": self.requests,
            "total_num_tokens": self.prompt_tokens + self.output_tokens,
            "total_num_prompt_tokens": self.prompt_tokens,
            "total_num_output_tokens": self.output_tokens,
            "requests_per_second": self.requests_per_s(),
            "tokens_per_second": self.total_tokens_per_s(),
            "output_tokens_per_second": self.output_tokens_per_s(),
            "kv_policy": kv::policy_json(&self.kv_policy),
            "peak_running_requests": self.peak_running,
        })
    }
}

pub fn run(args: ThroughputArgs) -> Result<()> {
    let kv_policy = args.kv.resolve()?;
    let loaded = args.model.load()?;
    let requests = args.dataset.sample(&loaded.tokenizer)?;
    let engine = EngineHandle::start(loaded, args.engine.config(requests.len()))?;
    let info = engine.info().clone();
    // Encode before the clock starts: vLLM's timer also excludes dataset preparation.
    let mut prompts = Vec::with_capacity(requests.len());
    for (i, r) in requests.iter().enumerate() {
        let ids = info.tokenizer.encode(&r.prompt, true).with_context(|| format!("prompt {i}"))?;
        prompts.push((ids, r.expected_output_len));
    }

    let bar = ProgressBar::new(prompts.len() as u64);
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} requests [{elapsed_precise}<{eta_precise}]")
            .expect("static progress template is valid"),
    );
    let started = Instant::now();
    let mut streams = Vec::with_capacity(prompts.len());
    for (i, (ids, output_len)) in prompts.into_iter().enumerate() {
        let params = SamplingParams { max_tokens: output_len, ignore_eos: true, ..SamplingParams::default() };
        let mut request = NewRequest::new(ids, params);
        request.kv = kv_policy;
        let stream = engine.submit(request).map_err(kv::submit_error).with_context(|| format!("request {i}"))?;
        streams.push(stream);
    }
    let mut totals =
        Totals { kv_policy, requests: streams.len(), prompt_tokens: 0, output_tokens: 0, elapsed_s: 0.0, peak_running: 0 };
    for (i, stream) in streams.into_iter().enumerate() {
        let (prompt, output) = wait_for(stream).with_context(|| format!("request {i}"))?;
        totals.prompt_tokens += prompt;
        totals.output_tokens += output;
        bar.inc(1);
    }
    // How many requests the KV pool let run at once: what a KV budget buys.
    totals.peak_running = engine.stats().peak_running;
    totals.elapsed_s = started.elapsed().as_secs_f64();
    bar.finish_and_clear();

    print!("{}", totals.render());
    if let Some(path) = &args.output_json {
        std::fs::write(path, serde_json::to_string_pretty(&totals.json())?)
            .with_context(|| format!("{}: cannot write", path.display()))?;
    }
    Ok(())
}

/// Drains one request's events; returns its (prompt, output) token counts.
fn wait_for(mut stream: RequestStream) -> Result<(usize, usize)> {
    loop {
        match stream.blocking_next() {
            Some(RequestEvent::Tokens(_)) => {}
            Some(RequestEvent::Finished(done)) => return Ok((done.usage.prompt_tokens, done.usage.completion_tokens)),
            Some(RequestEvent::PromptScores(_)) => {} // never asked for here
            Some(RequestEvent::Failed(e)) => bail!("the engine failed: {e}"),
            None => bail!("the engine stopped before the request finished"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_report_uses_vllm_lines_and_rates_divide_by_elapsed_time() {
        let t = Totals {
            kv_policy: KvPolicy::H2o { budget: 64, recent_window: 32 },
            requests: 4,
            prompt_tokens: 300,
            output_tokens: 100,
            elapsed_s: 2.0,
            peak_running: 3,
        };
        assert_eq!(
            t.render(),
            "KV policy: h2o (budget 64, recent 32)\n\
             Throughput: 2.00 requests/s, 200.00 total tokens/s, 50.00 output tokens/s\n\
             Total num prompt tokens:  300\n\
             Total num output tokens:  100\n\
             Peak running requests:    3\n"
        );
        let j = t.json();
        assert_eq!(j["total_num_tokens"], 400);
        assert_eq!(j["requests_per_second"], 2.0);
        assert_eq!(j["tokens_per_second"], 200.0);
        assert_eq!(j["elapsed_time"], 2.0);
        assert_eq!((j["kv_policy"]["policy"].as_str(), j["kv_policy"]["budget"].as_u64()), (Some("h2o"), Some(64)));
    }
}
