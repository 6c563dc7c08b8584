//! `kvault eval kv`: what a KV budget costs in quality, through the same engine that serves.
//! Teacher-forced windows of a text, each scored with the full cache and with every
//! (policy, budget); with `--kv-cache-dtype` the policies (and `full`) run with that KV cache
//! dtype while the reference stays the full cache in the model's dtype. Per policy the mean KL(full ‖ policy), perplexity and top-1 agreement over
//! the positions past the budget, as a table, a JSON file and a PNG.
//!
//! Layout: [`windows`] cuts the text, [`score`] drives the engine and matches rows (or
//! [`remote`] asks a running server), [`metrics`] computes KL/NLL/top-1, [`report`] writes the
//! table, JSON and plot.

mod metrics;
mod remote;
mod report;
mod score;
mod windows;

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use kvault_engine::handle::EngineHandle;
use kvault_engine::kv_policy::{KvPolicy, KvPolicyConfig, KvPolicyKind};
use kvault_kernels::KvDtype;

use crate::args::{EngineArgs, ModelArgs};

#[derive(Args, Debug)]
pub struct EvalKvArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub engine: EngineArgs,
    /// Plain-text file to score.
    #[arg(long)]
    pub text: PathBuf,
    /// Tokens per window.
    #[arg(long, default_value_t = 2048)]
    pub context_len: usize,
    /// Tokens between window starts (default: the context length, non-overlapping windows).
    #[arg(long)]
    pub stride: Option<usize>,
    /// Score at most this many windows.
    #[arg(long)]
    pub max_windows: Option<usize>,
    /// Policies to compare with the full cache (comma-separated; `trimkv` needs the model's
    /// retention gates, see --kv-gates).
    #[arg(long, value_delimiter = ',', default_value = "full,streaming,h2o,snapkv")]
    pub policies: Vec<KvPolicyKind>,
    /// Budgets (tokens per KV head per layer), each run with every budgeted policy.
    #[arg(long, value_delimiter = ',', default_value = "64,128,256,512")]
    pub budgets: Vec<usize>,
    /// Prefill chunk: the tokens fed per step (eviction follows each chunk, as when serving).
    #[arg(long, default_value_t = 64)]
    pub chunk: usize,
    /// Write the results as JSON.
    #[arg(long)]
    pub output_json: PathBuf,
    /// Write KL and perplexity against budget as a PNG.
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// Evaluate a running OpenAI-compatible server instead (e.g. http://127.0.0.1:8000): its own
    /// chunking and batching; perplexity and top-1 agreement only (no KL: the API returns no
    /// whole distributions). The tokenizer comes from --tokenizer. The server's own KV cache dtype
    /// is what gets measured, so `--kv-cache-dtype` is refused with it.
    #[arg(long, conflicts_with = "kv_cache_dtype")]
    pub base_url: Option<String>,
    /// With --base-url: the model's tokenizer (a folder, .gguf or the embedded model's name).
    #[arg(long, requires = "base_url")]
    pub tokenizer: Option<String>,
    /// With --base-url: the model name to send.
    #[arg(long = "served-model-name", requires = "base_url")]
    pub served_model_name: Option<String>,
}

pub fn run(args: EvalKvArgs) -> Result<()> {
    let policies = policy_grid(&args.policies, &args.budgets)?;
    if args.chunk == 0 || args.context_len < 2 {
        bail!("--chunk must be at least 1 and --context-len at least 2");
    }
    // Lychee narrows what one-token steps read and leaves prefill alone: scored in chunks (or
    // through a server, which scores prompts in prefill) it would report the full cache's numbers.
    if args.policies.contains(&KvPolicyKind::Lychee) {
        if args.base_url.is_some() {
            bail!("--policies lychee: a server scores the prompt in prefill, which lychee leaves unchanged; run it locally with --chunk 1");
        }
        if args.chunk != 1 {
            bail!("--policies lychee changes decode steps only: score it with --chunk 1 (every token a one-token step)");
        }
    }
    let text = std::fs::read_to_string(&args.text).with_context(|| format!("{}: cannot read the text", args.text.display()))?;
    if let Some(url) = &args.base_url {
        return run_remote(&args, url, &policies, &text);
    }
    let loaded = args.model.load()?;
    let ids = loaded.tokenizer.encode(&text, true).with_context(|| format!("{}: cannot tokenize", args.text.display()))?;
    let windows = windows::windows(&ids, args.context_len, args.stride.unwrap_or(args.context_len), args.max_windows)
        .with_context(|| args.text.display().to_string())?;
    let reference_dtype = KvDtype::from_float(loaded.model.dtype())?;
    let kv_dtype = args.engine.kv_cache_dtype.resolve().unwrap_or(reference_dtype);
    // Another KV dtype: the reference gets an engine of its own, and `full` becomes a scored
    // run (the full cache in that dtype) instead of the reference row.
    let separate = kv_dtype != reference_dtype;
    let mut policies = policies;
    if separate && args.policies.contains(&KvPolicyKind::Full) {
        policies.insert(0, KvPolicy::Full);
    }
    let runs_per_window = 1 + policies.len();
    // Enough windows at once to fill a step's token budget with one chunk per run.
    let per_batch = (args.engine.max_num_batched_tokens / (runs_per_window * args.chunk)).max(1);
    let config = args.engine.config(per_batch * runs_per_window);
    let reference_engine = match separate {
        true => Some(EngineHandle::start(loaded.clone(), kvault_engine::engine::EngineConfig { kv_cache_dtype: None, ..config.clone() })?),
        false => None,
    };
    let engine = EngineHandle::start(loaded, config)?;
    let engines = score::Engines { reference: reference_engine.as_ref().unwrap_or(&engine), policies: &engine };
    for info in [engines.reference.info(), engines.policies.info()] {
        if args.context_len > info.max_model_len {
            bail!(
                "--context-len {} exceeds what the {} KV cache holds for a full-cache request ({} tokens): raise --kv-cache-memory",
                args.context_len,
                info.kv_cache_dtype,
                info.max_model_len
            );
        }
    }
    let total_rows = (windows.len() * runs_per_window * (args.context_len - 1)) as u64;
    let bar = ProgressBar::new(total_rows);
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} positions scored [{elapsed_precise}<{eta_precise}]")
            .expect("static progress template is valid"),
    );
    let started = Instant::now();
    let (reference, scored) = score::score(engines, &windows, &policies, args.chunk, per_batch, &bar)?;
    bar.finish_and_clear();
    let report = report::Report {
        model: args.model.display_name(),
        kv_cache_dtype: Some((kv_dtype, reference_dtype)),
        text: args.text.display().to_string(),
        context_len: args.context_len,
        chunk: args.chunk,
        windows: windows.len(),
        elapsed_s: started.elapsed().as_secs_f64(),
        reference,
        scored,
        include_full: args.policies.contains(&KvPolicyKind::Full) && !separate,
        has_kl: true,
    };
    publish(&report, &args)
}

fn publish(report: &report::Report, args: &EvalKvArgs) -> Result<()> {
    print!("{}", report.markdown());
    report.write_json(&args.output_json)?;
    if let Some(path) = &args.plot {
        report.write_png(path)?;
    }
    Ok(())
}

fn run_remote(args: &EvalKvArgs, url: &str, policies: &[KvPolicy], text: &str) -> Result<()> {
    let tokenizer = crate::commands::bench::serve::load_tokenizer(args.tokenizer.as_deref())?;
    let ids = tokenizer.encode(text, true).with_context(|| format!("{}: cannot tokenize", args.text.display()))?;
    let windows = windows::windows(&ids, args.context_len, args.stride.unwrap_or(args.context_len), args.max_windows)
        .with_context(|| args.text.display().to_string())?;
    let bar = ProgressBar::new((windows.len() * (1 + policies.len()) * (args.context_len - 1)) as u64);
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} positions scored [{elapsed_precise}<{eta_precise}]")
            .expect("static progress template is valid"),
    );
    let started = Instant::now();
    let (reference, scored) = remote::score(url, args.served_model_name.as_deref(), &windows, policies, &bar)?;
    bar.finish_and_clear();
    let report = report::Report {
        model: format!("{url} ({})", args.served_model_name.as_deref().unwrap_or("served model")),
        kv_cache_dtype: None,
        text: args.text.display().to_string(),
        context_len: args.context_len,
        chunk: 0,
        windows: windows.len(),
        elapsed_s: started.elapsed().as_secs_f64(),
        reference,
        scored,
        include_full: args.policies.contains(&KvPolicyKind::Full),
        has_kl: false,
    };
    publish(&report, args)
}

/// Every budgeted policy at every budget, with its default parameters; `full` is the reference.
fn policy_grid(kinds: &[KvPolicyKind], budgets: &[usize]) -> Result<Vec<KvPolicy>> {
    let budgeted: Vec<KvPolicyKind> = kinds.iter().copied().filter(|&k| k != KvPolicyKind::Full).collect();
    if !budgeted.is_empty() && budgets.is_empty() {
        bail!("--budgets is empty: give at least one budget");
    }
    let mut out = Vec::new();
    for &kind in &budgeted {
        for &budget in budgets {
            let cfg = KvPolicyConfig { policy: Some(kind), budget: Some(budget), ..Default::default() };
            out.push(cfg.resolve().map_err(|e| anyhow::anyhow!("--budgets {budget} with {kind}: {}", e.message))?);
        }
    }
    Ok(out)
}
