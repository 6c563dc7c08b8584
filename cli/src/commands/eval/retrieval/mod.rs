//! `kvault eval retrieval`: RULER-style synthetic retrieval under KV policies. Samples are
//! generated from the seed, turned into prompts of exactly the requested lengths, answered
//! greedily under every policy (in-process, or by a server with `--base-url`), and judged by
//! exact match; the result is a table on stdout, a JSON file and optionally a heat map.
//!
//! Flow: flags ([`args`]) → haystack ([`haystack`]) → model or server ([`backend`]:
//! [`engine_backend`], [`http_backend`]) → samples ([`tasks`], drawn with [`rng`] and
//! [`words`]) → prompts ([`layout`]) → answers → verdicts ([`answer`]) → [`report`] and
//! [`heatmap`].
//!
//! `kvault calibrate-heads` reuses the generator ([`tasks`], [`haystack`], [`layout`]) for its
//! multi-passkey haystacks.

pub(crate) mod answer;
mod args;
mod backend;
mod engine_backend;
pub(crate) mod haystack;
mod heatmap;
mod http_backend;
pub(crate) mod layout;
#[cfg(test)]
mod layout_tests;
mod report;
mod rng;
pub(crate) mod tasks;
mod words;

use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use kvault_engine::kv_policy::KvPolicy;
use kvault_models::tokenizer::Tokenizer;

pub use args::RetrievalArgs;
use backend::{Backend, Job, Limits};
use engine_backend::EngineBackend;
use haystack::Haystack;
use http_backend::HttpBackend;
use layout::{assemble, PieceEncoder, Prompt};
use report::{Report, RunInfo, SampleResult};
use tasks::{generate, Sample, SampleId};

/// Requests in flight against a server unless --max-concurrency says otherwise: enough to keep
/// a server's batches full, few enough not to fill its queue.
const DEFAULT_MAX_CONCURRENCY: usize = 16;

/// Text the server's tokenizer must split as the local one does: words, digits, capitals.
const TOKENIZER_PROBE: &str = "One of the special magic numbers for misty-lantern is: 4829113. VAR QXWTR = VAR JNBKA.";

pub fn run(args: RetrievalArgs) -> Result<()> {
    args.check_combinations()?;
    let policies = args.kv_policies()?;
    let haystack = match &args.haystack {
        Some(path) => Haystack::from_file(path)?,
        None => Haystack::filler(),
    };
    let contexts: Vec<usize> = args.context_lens.0.iter().map(|c| c.0).collect();
    let depths: Vec<f64> = args.depths.0.iter().map(|d| d.0).collect();
    let jobs_count = contexts.len() * depths.len() * args.samples * policies.len();

    let (backend, tokenizer, model) = match &args.base_url {
        Some(url) => {
            let http = HttpBackend::connect(url, args.model.model.as_deref(), args.max_concurrency.unwrap_or(DEFAULT_MAX_CONCURRENCY))?;
            let (tokenizer, name) = served_tokenizer(&args, http.model())?;
            http.check_tokenizer(&tokenizer, &name, TOKENIZER_PROBE)?;
            let model = http.model().to_string();
            (Backend::Http(http), Arc::new(tokenizer), model)
        }
        None => {
            let loaded = args.model.load()?;
            let tokenizer = loaded.tokenizer.clone();
            let engine = EngineBackend::start(loaded, args.engine.config(jobs_count))?;
            (Backend::Engine(engine), tokenizer, args.model.display_name())
        }
    };
    check_limits(&backend.limits(), &policies, &contexts, &backend.describe())?;

    let max_tokens = args.task.max_tokens();
    let mut enc = PieceEncoder::new(&tokenizer)?;
    let mut prompts: Vec<(Sample, Arc<[u32]>, Prompt)> = Vec::new();
    for &context_len in &contexts {
        for &depth in &depths {
            for index in 0..args.samples {
                let sample = generate(args.seed, SampleId { task: args.task, context_len, depth, index });
                let prompt = assemble(&sample, &haystack, &mut enc, context_len, max_tokens)?;
                prompts.push((sample, prompt.ids.clone().into(), prompt));
            }
        }
    }
    let jobs: Vec<Job> = policies
        .iter()
        .flat_map(|&policy| {
            prompts.iter().map(move |(_, ids, prompt)| Job {
                prompt: ids.clone(),
                max_tokens,
                policy,
                chunk_break: args.two_turn.then_some(prompt.context_tokens),
            })
        })
        .collect();

    let bar = ProgressBar::new(jobs.len() as u64);
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} answers [{elapsed_precise}<{eta_precise}]")
            .expect("static progress template is valid"),
    );
    let started = Instant::now();
    let answers = backend.answer(&jobs, &bar)?;
    let elapsed_s = started.elapsed().as_secs_f64();
    bar.finish_and_clear();

    let results = jobs
        .iter()
        .zip(answers)
        .zip(prompts.iter().cycle())
        .map(|((job, output), (sample, _, prompt))| SampleResult {
            context_len: sample.id.context_len,
            depth: sample.id.depth,
            index: sample.id.index,
            policy: job.policy,
            prompt_tokens: prompt.ids.len(),
            context_tokens: prompt.context_tokens,
            needle_token: prompt.needle_positions[0],
            needle_depth: prompt.needle_depth,
            expected: sample.answer.expected(),
            correct: sample.answer.is_correct(&output),
            ruler_score: sample.answer.ruler_score(&output),
            output,
        })
        .collect();
    let report = Report {
        info: RunInfo {
            task: args.task,
            model,
            backend: backend.describe(),
            haystack: haystack.name.clone(),
            two_turn: args.two_turn,
            seed: args.seed,
            samples: args.samples,
            context_lens: contexts,
            depths,
            policies,
            max_tokens,
        },
        results,
        elapsed_s,
    };
    print!("{}", report.table());
    let path = &args.output_json;
    std::fs::write(path, serde_json::to_string_pretty(&report.json())?).with_context(|| format!("--output-json {}: cannot write", path.display()))?;
    if let Some(path) = &args.plot {
        let (title, subtitle) = report.plot_titles();
        heatmap::heatmap_png(path, &title, &subtitle, &report.panels()).with_context(|| format!("--plot {}", path.display()))?;
    }
    Ok(())
}

/// Refuses, before any prompt is built, a context length some policy cannot run.
fn check_limits(limits: &Limits, policies: &[KvPolicy], contexts: &[usize], backend: &str) -> Result<()> {
    let longest = contexts.iter().copied().max().unwrap_or(0);
    for p in policies {
        match limits.for_policy(p) {
            Some(limit) if longest > limit => {
                let whose = match (p, limits.budgeted) {
                    (KvPolicy::Full, Some(model)) if limit < model => {
                        format!("what a full-cache request can hold in this KV cache ({limit} tokens; the model's context is {model})")
                    }
                    _ if backend == "in-process" => format!("the model's context ({limit} tokens)"),
                    _ => format!("the server's max_model_len ({limit} tokens)"),
                };
                bail!("--context-lens {longest}: longer than {whose}");
            }
            _ => {}
        }
    }
    Ok(())
}

/// The tokenizer of the served model: `--tokenizer`, else `--model` or the served name when it
/// is a local path (as `kvault serve --model PATH` names its model) or the embedded model.
fn served_tokenizer(args: &RetrievalArgs, served: &str) -> Result<(Tokenizer, String)> {
    let local = |name: &str| name == kvault_models::embedded::NAME || std::path::Path::new(name).exists();
    let spec = match (&args.tokenizer, &args.model.model) {
        (Some(t), _) => t.clone(),
        (None, Some(m)) if local(m) => m.clone(),
        (None, _) if local(served) => served.to_string(),
        (None, _) => bail!("--tokenizer: the served model `{served}` is not a local path; name its tokenizer with --tokenizer"),
    };
    let tokenizer = crate::commands::bench::serve::load_tokenizer(Some(&spec))?;
    Ok((tokenizer, spec))
}
