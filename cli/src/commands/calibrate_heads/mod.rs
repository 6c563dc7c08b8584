//! `kvault calibrate-heads`: finds LycheeDecode head roles (retrieval or sparse per layer and KV
//! head, issue 14) for a model on the CPU, and writes the roles file
//! (`kvault_models::head_roles`) with its provenance in the metadata and in a JSON beside it.
//!
//! - [`haystacks`]: multi-passkey haystacks (the retrieval eval's generator);
//! - [`hardkuma`]: the paper's HardKuma training, with [`schedule`] and [`checkpoint`];
//! - [`heuristic`]: the training-free ranking by attention mass outside a head's own top-k blocks;
//! - [`compare`]: both on held-out haystacks, as hard roles under the inference rule.
//!
//! A hardkuma run also ranks heads heuristically at the same density and compares the two (and
//! the all-sparse floor), so its JSON says which method won.
//!
//! Must not know: the paged engine or the sparse-decode kernels.

mod checkpoint;
mod compare;
mod hardkuma;
mod haystacks;
mod heuristic;
mod schedule;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use clap::{Args, ValueEnum};
use kvault_models::head_roles::{save_head_roles, HeadRolesFile};
use kvault_models::model::{load_model, open_weights, LoadOptions};
use kvault_models::source::ModelSource;
use kvault_models::training::lychee::{BlockBudget, RatioMask};
use kvault_models::training::TrainingModel;
use serde_json::{json, Value};

use compare::{compare, RoleSet};
use haystacks::Haystacks;

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum Method {
    /// Learn HardKuma gates (a, b) per head by distillation under a density constraint.
    Hardkuma,
    /// Rank heads by the attention mass outside their own top-k blocks (no training).
    Heuristic,
}

impl Method {
    fn as_str(self) -> &'static str {
        match self {
            Method::Hardkuma => "hardkuma",
            Method::Heuristic => "heuristic",
        }
    }
}

/// Heuristic windows when `--steps` is not given.
const DEFAULT_WINDOWS: usize = 8;
const DEFAULT_STEPS: usize = 300;
const BLOCK_SIZE: usize = 16;

#[derive(Args, Debug, Clone)]
pub struct CalibrateHeadsArgs {
    /// The model (as for `generate`; default: the embedded stories260K).
    #[arg(long, short = 'm')]
    pub model: Option<String>,
    /// Haystack text: .txt files or folders of them (repeatable); the last 10% of the sentences
    /// are held out for the comparison. Default: RULER's noise filler.
    #[arg(long)]
    pub data: Vec<PathBuf>,
    /// Target share of retrieval heads outside layer 0 (layer 0 is always retrieval).
    #[arg(long, default_value_t = 0.1, allow_negative_numbers = true)]
    pub density: f64,
    #[arg(long, value_enum, default_value_t = Method::Hardkuma)]
    pub method: Method,
    /// Where the roles go; provenance also goes to OUT with the extension .json.
    #[arg(long)]
    pub out: PathBuf,
    /// hardkuma: training steps (one haystack each; default 300). heuristic: calibration
    /// haystacks (default 8).
    #[arg(long)]
    pub steps: Option<usize>,
    /// Tokens per haystack (prompt + answer).
    #[arg(long, default_value_t = 1024)]
    pub context_len: usize,
    /// AdamW learning rate of (a, b), before the warm-up/decay schedule.
    #[arg(long, default_value_t = 0.01)]
    pub lr: f64,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Write a checkpoint (OUT.ckpt.safetensors) every this many steps (0: only at the end).
    #[arg(long, default_value_t = 25)]
    pub checkpoint_every: usize,
    /// Continue from OUT.ckpt.safetensors (same settings required; --steps may change, and the
    /// schedule then follows the new count from the checkpoint on).
    #[arg(long)]
    pub resume: bool,
    /// hardkuma: stop after this step (checkpointed) without writing roles, to continue later
    /// with --resume (a long run in slices on a shared machine).
    #[arg(long)]
    pub stop_at: Option<usize>,
    /// Sparse heads' budget in tokens at inference (rounded down to blocks of 16), for the
    /// heuristic's top-k and the comparison. Default: a quarter of --context-len.
    #[arg(long)]
    pub budget: Option<usize>,
    /// Training masks: the share of each query's context a sparse head keeps by score (the
    /// paper's ratio mode: 0.3) ...
    #[arg(long, default_value_t = 0.3)]
    pub keep_ratio: f64,
    /// ... plus this many first tokens (the paper: 128, at 1K–10K contexts) ...
    #[arg(long, default_value_t = 32)]
    pub sink_tokens: usize,
    /// ... and this many last tokens (the paper: 256).
    #[arg(long, default_value_t = 64)]
    pub recent_tokens: usize,
    /// heuristic: the last queries of each haystack that are scored.
    #[arg(long, default_value_t = 16)]
    pub last_queries: usize,
    /// Held-out haystacks for the comparison (0: none).
    #[arg(long, default_value_t = 8)]
    pub eval_samples: usize,
}

impl CalibrateHeadsArgs {
    /// Checked here rather than by clap so each is a one-line error naming its flag.
    fn check(&self) -> Result<()> {
        if !(self.density > 0.0 && self.density < 1.0) {
            bail!("--density: must be strictly between 0 and 1, got {}", self.density);
        }
        if self.steps == Some(0) {
            bail!("--steps: must be at least 1, got 0");
        }
        if self.context_len < 64 {
            bail!("--context-len: must be at least 64, got {}", self.context_len);
        }
        if !(self.lr > 0.0 && self.lr.is_finite()) {
            bail!("--lr: must be positive, got {}", self.lr);
        }
        if !(self.keep_ratio > 0.0 && self.keep_ratio <= 1.0) {
            bail!("--keep-ratio: must be in (0, 1], got {}", self.keep_ratio);
        }
        if self.last_queries == 0 {
            bail!("--last-queries: must be at least 1");
        }
        if let Some(b) = self.budget {
            if b < 2 * BLOCK_SIZE {
                bail!("--budget: must be at least {} tokens (two blocks), got {b}", 2 * BLOCK_SIZE);
            }
        }
        Ok(())
    }
}

pub fn run(a: CalibrateHeadsArgs) -> Result<()> {
    a.check()?;
    let started = Instant::now();
    let source = ModelSource::parse(a.model.as_deref())?;
    let data = Haystacks::load(&a.data, a.context_len, a.seed)?;
    let tokenizer = load_model(&source, &LoadOptions::default())?.tokenizer;
    let (config, weights) = open_weights(&source, true, &Device::Cpu)?;
    if a.context_len > config.max_position_embeddings {
        bail!("--context-len {}: the model's context is {} tokens", a.context_len, config.max_position_embeddings);
    }
    let model = TrainingModel::load(config, weights.as_ref(), DType::F32)?;
    let (layers, kv) = (model.config.num_layers, model.config.num_kv_heads);
    if layers < 2 {
        bail!("the model has {layers} layer(s): layer 0 is all retrieval, nothing is left to calibrate");
    }
    let heads = (layers - 1) * kv;
    let count = (a.density * heads as f64).round() as usize;
    let budget = BlockBudget::from_tokens(a.budget.unwrap_or(a.context_len / 4).max(2 * BLOCK_SIZE), BLOCK_SIZE);
    let model_name = a.model.clone().unwrap_or_else(|| kvault_models::embedded::NAME.into());
    eprintln!(
        "calibrate-heads: {layers} layers × {kv} KV heads ({heads} outside layer 0; target {count} retrieval = density {}), method {}, haystacks of {} tokens from {}",
        a.density,
        a.method.as_str(),
        a.context_len,
        data.description
    );

    // Wall time of the earlier slices of a resumed run, so wall_seconds covers the whole run.
    let mut earlier_wall = 0.0;
    let mut md = BTreeMap::from([
        ("method".to_string(), a.method.as_str().to_string()),
        ("model".into(), model_name.clone()),
        ("command".into(), std::env::args().collect::<Vec<_>>().join(" ")),
        ("data".into(), format!("multi-passkey haystacks (kvault eval retrieval's multikey task, 4 needles at depths 5–95%) in {}", data.description)),
        ("target_density".into(), a.density.to_string()),
        ("context_len".into(), a.context_len.to_string()),
        ("seed".into(), a.seed.to_string()),
        ("budget_tokens".into(), (budget.budget * BLOCK_SIZE).to_string()),
    ]);
    let mut file = match a.method {
        Method::Hardkuma => {
            let steps = a.steps.unwrap_or(DEFAULT_STEPS);
            let mask = RatioMask { keep_ratio: a.keep_ratio, sink_tokens: a.sink_tokens, recent_tokens: a.recent_tokens };
            let fixed = BTreeMap::from([
                ("model".to_string(), model_name.clone()),
                ("target_density".into(), a.density.to_string()),
                ("context_len".into(), a.context_len.to_string()),
                ("seed".into(), a.seed.to_string()),
                ("lr".into(), a.lr.to_string()),
                ("mask".into(), format!("{mask:?}")),
            ]);
            let settings = hardkuma::Settings {
                steps,
                lr: a.lr,
                target: a.density,
                mask,
                seed: a.seed,
                checkpoint_every: a.checkpoint_every,
                resume: a.resume,
                stop_at: a.stop_at,
                out: &a.out,
                fixed,
            };
            let Some(t) = hardkuma::train(&model, &tokenizer, &data, &settings)? else { return Ok(()) };
            md.insert("steps".into(), steps.to_string());
            if let Some(n) = t.replanned_from {
                md.insert("schedule_note".into(), format!("resumed from a checkpoint of a run planned for {n} steps: the steps before it followed that run's warm-up"));
            }
            md.insert("lr".into(), a.lr.to_string());
            md.insert("training_mask".into(), format!("keep {} of each query's context by the lower layer's logits + {} sink + {} recent tokens, per query head", a.keep_ratio, a.sink_tokens, a.recent_tokens));
            md.insert("final_distill".into(), format!("{:.6}", t.final_terms[0]));
            md.insert("final_density_term".into(), format!("{:.6}", t.final_terms[1]));
            md.insert("final_expected_density".into(), format!("{:.4}", t.final_terms[2]));
            md.insert("lagrange_lambda".into(), format!("{:.6}", t.lagrange.lambda));
            md.insert("training_wall_seconds".into(), format!("{:.1}", t.wall_seconds));
            earlier_wall = t.wall_before_resume;
            if let Some(tps) = t.tokens_per_second {
                md.insert("tokens_per_second".into(), format!("{tps:.1}"));
            }
            // The file holds exactly the target count, ranked by E[Kuma(a, b)]: the engine's
            // budget is sized for that density, and the paper's rule (E > 0.5) only lands on the
            // target after a full-length run (3000 steps); what it picks here is recorded and
            // compared too.
            let decision = t.retrieval(kv)?;
            let top = heuristic::top_heads(&t.means()?, kv, count);
            let decided = decision[kv..].iter().filter(|&&r| r).count();
            md.insert("selection".into(), format!("the top {count} heads outside layer 0 by E[Kuma(a, b)]; the paper's rule E[Kuma] > 0.5 picks {decided}"));
            let mut f = HeadRolesFile::new(layers, kv, top.clone())?;
            f.kuma = Some((t.a.clone(), t.b.clone()));
            let mut sets = vec![RoleSet { name: format!("hardkuma (top {count} by E[Kuma])"), retrieval: top.clone() }];
            if decision != top {
                sets.push(RoleSet { name: "hardkuma (E[Kuma] > 0.5 rule)".into(), retrieval: decision });
            }
            if a.eval_samples > 0 {
                let h = heuristic::rank(&model, &tokenizer, &data, budget, DEFAULT_WINDOWS, a.last_queries, count)?;
                sets.push(RoleSet { name: "heuristic".into(), retrieval: h.retrieval });
            }
            finish_comparison(&a, &model, &tokenizer, &data, sets, budget, kv, &mut md)?;
            f
        }
        Method::Heuristic => {
            let windows = a.steps.unwrap_or(DEFAULT_WINDOWS);
            let h = heuristic::rank(&model, &tokenizer, &data, budget, windows, a.last_queries, count)?;
            md.insert("steps".into(), format!("{} haystacks × their last {} queries ({} queries scored)", h.windows, a.last_queries, h.queries));
            md.insert("score".into(), format!("mean attention mass outside the head's own top-{} blocks of {BLOCK_SIZE}", budget.budget));
            let mut f = HeadRolesFile::new(layers, kv, h.retrieval.clone())?;
            f.score = Some(Tensor::from_vec(h.score.iter().map(|&s| s as f32).collect::<Vec<_>>(), (layers, kv), &Device::Cpu)?);
            finish_comparison(&a, &model, &tokenizer, &data, vec![RoleSet { name: "heuristic".into(), retrieval: h.retrieval }], budget, kv, &mut md)?;
            f
        }
    };
    md.insert("density".into(), format!("{:.4}", file.density()));
    md.insert("retrieval_heads".into(), format!("{} of {heads} outside layer 0 (+ {kv} in layer 0)", file.num_retrieval() - kv));
    md.insert("wall_seconds".into(), format!("{:.1}", earlier_wall + started.elapsed().as_secs_f64()));
    let comparison = md.remove("comparison_json");
    file.metadata = md.clone();
    save_head_roles(&file, &a.out)?;
    let mut json: serde_json::Map<String, Value> = md.into_iter().map(|(k, v)| (k, Value::String(v))).collect();
    json.insert("format".into(), Value::String(kvault_models::head_roles::FORMAT.into()));
    if let Some(c) = comparison {
        json.insert("comparison".into(), serde_json::from_str(&c)?);
    }
    json.insert("roles".into(), json!((0..layers).map(|l| file.layer(l).iter().map(|&r| if r { "R" } else { "s" }).collect::<String>()).collect::<Vec<_>>()));
    let json_path = a.out.with_extension("json");
    std::fs::write(&json_path, serde_json::to_string_pretty(&Value::Object(json))? + "\n").with_context(|| format!("{}: cannot write", json_path.display()))?;
    eprintln!("calibrate-heads: wrote {} and {} (density {:.4}, {:.0} s)", a.out.display(), json_path.display(), file.density(), started.elapsed().as_secs_f64());
    Ok(())
}

/// Runs the comparison (unless `--eval-samples 0`), prints it, and files it in `md` (one
/// summary string per set, and the whole as JSON under `comparison_json` for the .json file).
#[allow(clippy::too_many_arguments)]
fn finish_comparison(
    a: &CalibrateHeadsArgs,
    model: &TrainingModel,
    tokenizer: &kvault_models::tokenizer::Tokenizer,
    data: &Haystacks,
    mut sets: Vec<RoleSet>,
    budget: BlockBudget,
    kv: usize,
    md: &mut BTreeMap<String, String>,
) -> Result<()> {
    if a.eval_samples == 0 {
        return Ok(());
    }
    // The floor: every head outside layer 0 sparse.
    let n = sets[0].retrieval.len();
    sets.push(RoleSet { name: "all sparse (layer 0 only)".into(), retrieval: (0..n).map(|i| i < kv).collect() });
    let c = compare(model, tokenizer, data, &sets, a.eval_samples, budget)?;
    for line in c.lines() {
        eprintln!("calibrate-heads: {line}");
    }
    for o in &c.outcomes {
        md.insert(
            format!("eval {}", o.name),
            format!("{} retrieval heads, distill MSE {:.6}, greedy agreement {:.4}, answer accuracy {:.4}", o.retrieval_heads, o.distill, o.agreement, o.answer_accuracy),
        );
    }
    md.insert("eval_heldout".into(), format!("{} held-out haystacks, {} answer rows, full attention answer accuracy {:.4}", c.samples, c.rows, c.full_answer_accuracy));
    md.insert("comparison_json".into(), c.json(budget).to_string());
    Ok(())
}
