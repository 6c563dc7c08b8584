//! The flags of `kvault eval retrieval` and what they mean together: the grid (contexts ×
//! depths × samples), the KV policies it runs under (`--policies` × `--budgets`), and where the
//! model is (in-process with `--model`, or a server with `--base-url`). Every bad value or
//! combination is a one-line error naming the flag, found before anything is loaded.
//!
//! Must not know: prompts, tokens or how requests are run.

use std::path::PathBuf;
use std::str::FromStr;

use anyhow::{bail, Result};
use clap::Args;
use kvault_engine::kv_policy::{KvPolicy, KvPolicyConfig, KvPolicyKind};

use super::tasks::Task;
use crate::args::{EngineArgs, ModelArgs};

#[derive(Args, Debug)]
pub struct RetrievalArgs {
    /// Task: passkey (RULER niah_single), multikey (one key asked among four), vartrack
    /// (variable tracking: one chain of four hops).
    #[arg(long, value_parser = parse_task)]
    pub task: Task,
    /// Context lengths in tokens (prompt plus answer), comma-separated.
    #[arg(long, default_value = "1024,2048,4096", value_parser = parse_list::<ContextLen>)]
    pub context_lens: List<ContextLen>,
    /// Where the asked needle goes, as fractions of the haystack (0 = first, 1 = last).
    #[arg(long, default_value = "0.1,0.3,0.5,0.7,0.9", value_parser = parse_list::<Depth>)]
    pub depths: List<Depth>,
    /// Samples per (context length, depth).
    #[arg(long, default_value_t = 5, value_parser = parse_positive)]
    pub samples: usize,
    /// Seed of the generated samples: the same seed gives the same prompts.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Hide needles in this text file (split into sentences) instead of RULER's repeated filler.
    #[arg(long)]
    pub haystack: Option<PathBuf>,
    /// KV policies to evaluate, comma-separated: full, streaming, h2o, snapkv, trimkv. Every prompt
    /// runs under each (the budgeted ones once per --budgets value).
    #[arg(long, default_value = "full", value_parser = parse_list::<PolicyName>)]
    pub policies: List<PolicyName>,
    /// KV budgets (tokens kept per KV head per layer) for the budgeted policies, comma-separated.
    #[arg(long, value_parser = parse_list::<Budget>)]
    pub budgets: Option<List<Budget>>,
    /// Compress the context before the question arrives (the kvpress protocol): the engine
    /// finishes, and under a budget evicts, every context token before the question is read.
    #[arg(long)]
    pub two_turn: bool,
    /// Write every sample's result and the accuracy of every cell to this JSON file.
    #[arg(long)]
    pub output_json: PathBuf,
    /// Draw a depth × context accuracy heat map per policy into this PNG.
    #[arg(long)]
    pub plot: Option<PathBuf>,
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub engine: EngineArgs,
    /// Evaluate a running OpenAI-compatible server (its /v1/completions) instead of loading the
    /// model; --model then names the served model (default: the first it lists).
    #[arg(long, conflicts_with_all = ENGINE_FLAGS)]
    pub base_url: Option<String>,
    /// With --base-url: the served model's tokenizer (same forms as --model). Default: --model,
    /// or the served model's name, when it is a local path.
    #[arg(long)]
    pub tokenizer: Option<String>,
    /// With --base-url: requests in flight at once [default: 16].
    #[arg(long, value_parser = parse_positive)]
    pub max_concurrency: Option<usize>,
}

/// Flags that configure an in-process model and engine, meaningless against a server.
const ENGINE_FLAGS: [&str; 13] = [
    "dtype", "device", "kv_gates", "head_roles", "block_size", "kv_cache_memory", "num_blocks", "max_model_len", "max_num_seqs",
    "max_num_batched_tokens", "scheduler", "no_prefix_caching", "kv_cache_dtype",
];

/// A comma-separated flag value: at least one item, none twice.
#[derive(Clone, Debug, PartialEq)]
pub struct List<T>(pub Vec<T>);

fn parse_list<T: FromStr<Err = String> + PartialEq + std::fmt::Display>(s: &str) -> Result<List<T>, String> {
    if s.trim().is_empty() {
        return Err("the list is empty".into());
    }
    let mut items: Vec<T> = Vec::new();
    for part in s.split(',') {
        let item: T = part.trim().parse()?;
        if items.contains(&item) {
            return Err(format!("{item} is listed twice"));
        }
        items.push(item);
    }
    Ok(List(items))
}

fn parse_task(s: &str) -> Result<Task, String> {
    s.parse()
}

fn parse_positive(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(v) => Ok(v),
        Err(_) => Err(format!("`{s}` is not a positive integer")),
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ContextLen(pub usize);

impl FromStr for ContextLen {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        parse_positive(s).map(ContextLen).map_err(|e| format!("context length `{s}`: {e}"))
    }
}

impl std::fmt::Display for ContextLen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Depth(pub f64);

impl FromStr for Depth {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.parse::<f64>() {
            Ok(d) if (0.0..=1.0).contains(&d) => Ok(Depth(d)),
            _ => Err(format!("depth `{s}` is not a number in [0, 1]")),
        }
    }
}

impl std::fmt::Display for Depth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PolicyName(pub KvPolicyKind);

impl FromStr for PolicyName {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        s.parse().map(PolicyName)
    }
}

impl std::fmt::Display for PolicyName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0.as_str())
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Budget(pub usize);

impl FromStr for Budget {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        parse_positive(s).map(Budget).map_err(|e| format!("budget `{s}`: {e}"))
    }
}

impl std::fmt::Display for Budget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl RetrievalArgs {
    /// Every KV policy the prompts run under, in the order given: `full` once, each budgeted
    /// policy once per budget.
    pub fn kv_policies(&self) -> Result<Vec<KvPolicy>> {
        let budgets: &[Budget] = self.budgets.as_ref().map_or(&[], |b| &b.0);
        let budgeted: Vec<KvPolicyKind> = self.policies.0.iter().map(|p| p.0).filter(|k| *k != KvPolicyKind::Full).collect();
        if budgets.is_empty() && !budgeted.is_empty() {
            bail!("--budgets: {} needs at least one budget (e.g. --budgets 128,256)", budgeted[0]);
        }
        if !budgets.is_empty() && budgeted.is_empty() {
            bail!("--budgets: --policies full keeps every token; add streaming, h2o, snapkv or trimkv to use a budget");
        }
        let mut policies = Vec::new();
        for &PolicyName(kind) in &self.policies.0 {
            if kind == KvPolicyKind::Full {
                policies.push(KvPolicy::Full);
                continue;
            }
            for &Budget(budget) in budgets {
                let config = KvPolicyConfig { policy: Some(kind), budget: Some(budget), ..KvPolicyConfig::default() };
                let policy = config.resolve().map_err(|e| anyhow::anyhow!("--budgets {budget}: {kind}: {}", e.message))?;
                policies.push(policy);
            }
        }
        Ok(policies)
    }

    /// Combinations clap cannot express (or not on one line).
    pub fn check_combinations(&self) -> Result<()> {
        if self.base_url.is_none() {
            for (flag, given) in [("--tokenizer", self.tokenizer.is_some()), ("--max-concurrency", self.max_concurrency.is_some())] {
                if given {
                    bail!("{flag}: only used with --base-url (in-process, the model's own tokenizer and batching apply)");
                }
            }
        }
        if self.two_turn && self.base_url.is_some() {
            bail!(
                "--two-turn: not possible with --base-url (an HTTP request cannot ask the server to compress the context \
                 before reading the question); run in-process with --model"
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser, Debug)]
    struct Cli {
        #[command(flatten)]
        args: RetrievalArgs,
    }

    fn parse(extra: &[&str]) -> Result<RetrievalArgs, clap::Error> {
        let base = ["kvault", "--task", "passkey", "--output-json", "r.json"];
        Cli::try_parse_from(base.iter().chain(extra)).map(|c| c.args)
    }

    fn first_line(e: clap::Error) -> String {
        e.to_string().lines().next().unwrap_or_default().to_string()
    }

    #[test]
    fn defaults_are_rulers_depths_three_lengths_and_the_full_cache() {
        let a = parse(&[]).unwrap();
        assert_eq!(a.context_lens.0, [ContextLen(1024), ContextLen(2048), ContextLen(4096)]);
        assert_eq!(a.depths.0.iter().map(|d| d.0).collect::<Vec<_>>(), [0.1, 0.3, 0.5, 0.7, 0.9]);
        assert_eq!(a.kv_policies().unwrap(), [KvPolicy::Full]);
    }

    #[test]
    fn policies_times_budgets_in_the_order_given() {
        let a = parse(&["--policies", "snapkv,full,streaming", "--budgets", "128,64"]).unwrap();
        let got: Vec<(KvPolicyKind, Option<usize>)> = a.kv_policies().unwrap().iter().map(|p| (p.kind(), p.budget())).collect();
        use KvPolicyKind::*;
        assert_eq!(got, [(SnapKv, Some(128)), (SnapKv, Some(64)), (Full, None), (Streaming, Some(128)), (Streaming, Some(64))]);
    }

    #[test]
    fn bad_lists_and_combinations_name_their_flag() {
        let cases: [(&[&str], &str); 8] = [
            (&["--budgets", ""], "--budgets"),
            (&["--budgets", "128,,64"], "--budgets"),
            (&["--depths", "0.5,1.5"], "depth `1.5` is not a number in [0, 1]"),
            (&["--depths", "0.5,0.5"], "0.5 is listed twice"),
            (&["--context-lens", "0"], "--context-lens"),
            (&["--policies", "lru"], "unknown KV policy `lru`"),
            (&["--base-url", "http://x", "--num-blocks", "4"], "--num-blocks"),
            (&["--max-concurrency", "0"], "--max-concurrency"),
        ];
        for (flags, needle) in cases {
            let line = first_line(parse(flags).unwrap_err());
            assert!(line.contains(needle), "{flags:?}: {line}");
        }
        let task = Cli::try_parse_from(["kvault", "--task", "niah", "--output-json", "r"]).unwrap_err();
        assert!(first_line(task).contains("unknown task `niah` (expected passkey, multikey or vartrack)"));

        let e = parse(&["--policies", "h2o"]).unwrap().kv_policies().unwrap_err().to_string();
        assert_eq!(e, "--budgets: h2o needs at least one budget (e.g. --budgets 128,256)");
        let e = parse(&["--budgets", "64"]).unwrap().kv_policies().unwrap_err().to_string();
        assert!(e.starts_with("--budgets: --policies full keeps every token"), "{e}");
        let e = parse(&["--two-turn", "--base-url", "http://x"]).unwrap().check_combinations().unwrap_err().to_string();
        assert!(e.starts_with("--two-turn: not possible with --base-url"), "{e}");
        for flags in [["--tokenizer", "t"], ["--max-concurrency", "4"]] {
            let e = parse(&flags).unwrap().check_combinations().unwrap_err().to_string();
            assert!(e.starts_with(&format!("{}: only used with --base-url", flags[0])), "{e}");
        }
        assert!(parse(&["--base-url", "http://x", "--tokenizer", "t", "--max-concurrency", "4"]).unwrap().check_combinations().is_ok());
    }
}
