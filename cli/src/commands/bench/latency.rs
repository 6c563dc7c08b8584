//! `kvault bench latency`: batch-1 prompt processing and generation speed, llama-bench's
//! `pp`/`tg` numbers, measured through the real engine.
//!
//! Each iteration sends one request of exactly `--input-len` random non-special token ids
//! (fresh ids every time, so the prefix cache never helps) asking for `--output-len` tokens with
//! EOS ignored, and reads the engine's own token timestamps:
//! - prefill tok/s = input tokens / TTFT (submission to the first token, which includes
//!   sampling that token);
//! - decode tok/s = (output tokens − 1) / (last token time − first token time).
//!
//! Warm-up iterations run first and are not counted. The mean and sample standard deviation
//! over iterations are printed as a llama-bench-style table (`pp512`, `tg128` rows, with the
//! `--kv-*` policy every request runs under as a column; the JSON names it too).
//!
//! Must not know: HTTP.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Result};
use clap::Args;
use kvault_engine::events::RequestEvent;
use kvault_engine::handle::EngineHandle;
use kvault_engine::kv_policy::KvPolicy;
use kvault_engine::request::NewRequest;
use kvault_engine::sampler::SamplingParams;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;

use super::serve::dataset::{allowed_token_ids, positive};
use super::serve::stats::{mean, sample_std};
use crate::args::{EngineArgs, ModelArgs};
use crate::kv::{self, KvArgs};

#[derive(Args, Debug)]
pub struct LatencyArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub engine: EngineArgs,
    #[command(flatten)]
    pub kv: KvArgs,
    /// Prompt tokens per request (the `pp` test).
    #[arg(long, default_value_t = 512, value_parser = positive)]
    pub input_len: usize,
    /// Generated tokens per request (the `tg` test); at least 2, since decode speed is measured
    /// between the first and the last token.
    #[arg(long, default_value_t = 128, value_parser = at_least_two)]
    pub output_len: usize,
    /// Measured iterations.
    #[arg(long, default_value_t = 5, value_parser = positive)]
    pub num_iters: usize,
    /// Unmeasured iterations first (caches, allocator, thread pools).
    #[arg(long, default_value_t = 1)]
    pub num_iters_warmup: usize,
    /// Seed for the random prompt ids.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Write every iteration's numbers and the summary as JSON to this file.
    #[arg(long)]
    pub output_json: Option<PathBuf>,
}

/// One iteration's timings, in seconds.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Iteration {
    pub ttft: f64,
    /// From the first token to the last.
    pub decode: f64,
    pub e2e: f64,
}

impl Iteration {
    pub fn prefill_tokens_per_s(&self, input_len: usize) -> f64 {
        input_len as f64 / self.ttft
    }

    pub fn decode_tokens_per_s(&self, output_len: usize) -> f64 {
        (output_len - 1) as f64 / self.decode
    }
}

fn at_least_two(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(v) if v >= 2 => Ok(v),
        Ok(v) => Err(format!("must be at least 2 (decode speed needs two tokens), got {v}")),
        Err(_) => Err(format!("`{s}` is not a positive integer")),
    }
}

pub fn run(args: LatencyArgs) -> Result<()> {
    let kv_policy = args.kv.resolve()?;
    let name = args.model.display_name();
    let loaded = args.model.load()?;
    let allowed = allowed_token_ids(&loaded.tokenizer);
    if allowed.is_empty() {
        bail!("the tokenizer has no non-special tokens to build prompts from");
    }
    let engine = EngineHandle::start(loaded, args.engine.config(1))?;
    let mut rng = StdRng::seed_from_u64(args.seed);
    let mut measured = Vec::with_capacity(args.num_iters);
    for i in 0..args.num_iters_warmup + args.num_iters {
        let prompt: Vec<u32> = (0..args.input_len).map(|_| allowed[rng.random_range(0..allowed.len())]).collect();
        let it = one_iteration(&engine, prompt, args.output_len, kv_policy)?;
        if i >= args.num_iters_warmup {
            measured.push(it);
        }
    }
    let pp: Vec<f64> = measured.iter().map(|m| m.prefill_tokens_per_s(args.input_len)).collect();
    let tg: Vec<f64> = measured.iter().map(|m| m.decode_tokens_per_s(args.output_len)).collect();
    print!("{}", table(&name, &kv_policy.describe(), args.input_len, &pp, args.output_len, &tg));
    if let Some(path) = &args.output_json {
        let ms = |f: fn(&Iteration) -> f64| measured.iter().map(|m| f(m) * 1000.0).collect::<Vec<_>>();
        let v = json!({
            "model": name,
            "input_len": args.input_len,
            "output_len": args.output_len,
            "num_iters": args.num_iters,
            "kv_policy": kv::policy_json(&kv_policy),
            "prefill_tokens_per_s": {"mean": mean(&pp), "stdev": sample_std(&pp), "samples": pp},
            "decode_tokens_per_s": {"mean": mean(&tg), "stdev": sample_std(&tg), "samples": tg},
            "ttft_ms": ms(|m| m.ttft),
            "decode_ms": ms(|m| m.decode),
            "e2e_latency_ms": ms(|m| m.e2e),
        });
        std::fs::write(path, serde_json::to_string_pretty(&v)?).map_err(|e| anyhow::anyhow!("{}: cannot write: {e}", path.display()))?;
    }
    Ok(())
}

fn one_iteration(engine: &EngineHandle, prompt: Vec<u32>, output_len: usize, kv_policy: KvPolicy) -> Result<Iteration> {
    let params = SamplingParams { temperature: 0.0, max_tokens: output_len, ignore_eos: true, ..SamplingParams::default() };
    let mut request = NewRequest::new(prompt, params);
    request.kv = kv_policy;
    let submitted = Instant::now();
    let mut stream = engine.submit(request).map_err(kv::submit_error)?;
    let (mut first, mut last, mut tokens) = (None, None, 0usize);
    loop {
        match stream.blocking_next() {
            Some(RequestEvent::Tokens(d)) if !d.token_ids.is_empty() => {
                first.get_or_insert(d.at);
                last = Some(d.at);
                tokens += d.token_ids.len();
            }
            Some(RequestEvent::Tokens(_)) => {}
            Some(RequestEvent::Finished(done)) => {
                let (Some(first), Some(last)) = (first, last) else { bail!("the request finished without tokens") };
                if done.usage.completion_tokens != output_len || tokens != output_len {
                    bail!("asked for {output_len} tokens, got {}", done.usage.completion_tokens);
                }
                return Ok(Iteration {
                    ttft: first.duration_since(submitted).as_secs_f64(),
                    decode: last.duration_since(first).as_secs_f64(),
                    e2e: done.at.duration_since(submitted).as_secs_f64(),
                });
            }
            Some(RequestEvent::PromptScores(_)) => {} // never asked for here
            Some(RequestEvent::Failed(e)) => bail!("the engine failed: {e}"),
            None => bail!("the engine stopped before the request finished"),
        }
    }
}

/// llama-bench's table: one row per test, `mean ± stdev` tokens per second, with the KV
/// policy as a configuration column (as llama-bench shows its settings).
fn table(model: &str, kv_policy: &str, input_len: usize, pp: &[f64], output_len: usize, tg: &[f64]) -> String {
    let rows = [
        (format!("pp{input_len}"), format!("{:.2} ± {:.2}", mean(pp), sample_std(pp))),
        (format!("tg{output_len}"), format!("{:.2} ± {:.2}", mean(tg), sample_std(tg))),
    ];
    let mw = model.chars().count().max(5);
    let kw = kv_policy.chars().count().max(9);
    let tw = rows.iter().map(|r| r.0.len()).max().unwrap_or(4).max(4);
    let vw = rows.iter().map(|r| r.1.chars().count()).max().unwrap_or(3).max(20);
    let mut s = format!("| {:<mw$} | {:<kw$} | {:>tw$} | {:>vw$} |\n", "model", "kv policy", "test", "t/s");
    s.push_str(&format!("| {} | {} | {}: | {}: |\n", "-".repeat(mw), "-".repeat(kw), "-".repeat(tw - 1), "-".repeat(vw - 1)));
    for (test, value) in rows {
        s.push_str(&format!("| {model:<mw$} | {kv_policy:<kw$} | {test:>tw$} | {value:>vw$} |\n"));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_follow_the_pp_and_tg_definitions() {
        let it = Iteration { ttft: 0.25, decode: 0.5, e2e: 0.8 };
        assert_eq!(it.prefill_tokens_per_s(512), 2048.0);
        // 129 tokens: 128 gaps in 0.5 s.
        assert_eq!(it.decode_tokens_per_s(129), 256.0);
    }

    #[test]
    fn the_table_has_pp_and_tg_rows_with_mean_and_sample_stdev() {
        let t = table("stories260K", "h2o (budget 64, recent 32)", 512, &[100.0, 300.0], 128, &[50.0, 50.0]);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 4);
        assert!(lines[0].starts_with("| model") && lines[0].contains("| kv policy ") && lines[0].ends_with("t/s |"));
        assert!(lines[2].contains("| h2o (budget 64, recent 32) |"), "{t}");
        // mean 200, stdev sqrt(((100)^2 + (100)^2) / 1) = 141.42
        assert!(lines[2].contains("| pp512 |") && lines[2].contains("200.00 ± 141.42"), "{t}");
        assert!(lines[3].contains("| tg128 |") && lines[3].contains("50.00 ± 0.00"), "{t}");
        assert!(lines.iter().all(|l| l.chars().count() == lines[0].chars().count()), "{t}");
    }
}
