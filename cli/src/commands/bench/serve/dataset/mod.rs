//! The prompts a benchmark sends, shared by `bench serve` and `bench throughput`: vLLM's
//! `random` dataset (synthetic token sequences of controlled length) or a ShareGPT JSON file.
//! Both are deterministic for a given `--seed`.
//!
//! Must not know: how prompts are sent (HTTP or in-process).

mod random;
mod sharegpt;

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use kvault_models::tokenizer::Tokenizer;

pub use random::{allowed_token_ids, RandomSpec};

/// One benchmark request.
#[derive(Clone, Debug, PartialEq)]
pub struct SampledRequest {
    pub prompt: String,
    /// Prompt tokens as vLLM counts them for the dataset (special tokens the server adds are
    /// not included for `random`; see each dataset).
    pub prompt_len: usize,
    /// `max_tokens` to ask for (generation ignores EOS, so this is the output length).
    pub expected_output_len: usize,
}

#[derive(Args, Debug, Clone)]
pub struct DatasetArgs {
    /// Number of prompts to send.
    #[arg(long, default_value_t = 1000, value_parser = positive)]
    pub num_prompts: usize,
    /// Random dataset: prompt tokens per request (including special tokens the tokenizer adds).
    /// Default 1024.
    #[arg(long, conflicts_with = "dataset_path")]
    pub input_len: Option<usize>,
    /// Output tokens per request. Default 128; with --dataset-path, overrides each
    /// conversation's reply length.
    #[arg(long, value_parser = positive)]
    pub output_len: Option<usize>,
    /// Random dataset: lengths are drawn uniformly from [L·(1−r), L·(1+r)]; r in [0, 1).
    #[arg(long, default_value_t = 0.0, value_parser = ratio, conflicts_with = "dataset_path")]
    pub range_ratio: f64,
    /// Random dataset: tokens of a random prefix shared by every prompt (prefix-cache hits).
    #[arg(long, default_value_t = 0, conflicts_with = "dataset_path")]
    pub prefix_len: usize,
    /// A ShareGPT JSON file (a list of {"conversations": [{"from", "value"}, ...]}): the first
    /// human turn is the prompt, the reply's token count the output length.
    #[arg(long)]
    pub dataset_path: Option<PathBuf>,
    /// Seed for prompt sampling and arrival times.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

pub const DEFAULT_INPUT_LEN: usize = 1024;
pub const DEFAULT_OUTPUT_LEN: usize = 128;

impl DatasetArgs {
    pub fn sample(&self, tokenizer: &Tokenizer) -> Result<Vec<SampledRequest>> {
        match &self.dataset_path {
            Some(path) => sharegpt::sample(path, self.num_prompts, self.output_len, self.seed, tokenizer),
            None => {
                let spec = RandomSpec {
                    input_len: self.input_len.unwrap_or(DEFAULT_INPUT_LEN),
                    output_len: self.output_len.unwrap_or(DEFAULT_OUTPUT_LEN),
                    range_ratio: self.range_ratio,
                    prefix_len: self.prefix_len,
                };
                random::sample(&spec, self.num_prompts, self.seed, tokenizer)
            }
        }
    }
}

pub fn positive(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(v) => Ok(v),
        Err(_) => Err(format!("`{s}` is not a positive integer")),
    }
}

fn ratio(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|_| format!("`{s}` is not a number"))?;
    if !(0.0..1.0).contains(&v) {
        return Err(format!("must be in [0, 1), got {v}"));
    }
    Ok(v)
}
