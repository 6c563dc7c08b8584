//! `kvault train-gates`: fits TRIM-KV retention gates for a model on the CPU. The model is
//! frozen (GGUF matrices dequantized to f32); each step runs the teacher (the plain model) and
//! the student (the model with the retention bias) over one window of training text, and AdamW
//! updates only the gates. Writes f16 gates with their provenance in the file's metadata and in
//! a JSON file beside it.
//!
//! - [`data`]: text files, the held-out split, the window of each step;
//! - [`optim`]: AdamW with warm-up and clipping (its state is checkpointed);
//! - [`checkpoint`]: save / `--resume`.
//!
//! Must not know: the paged engine (training never touches the KV cache).

pub(crate) mod checkpoint;
pub(crate) mod data;
pub(crate) mod optim;

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor, Var};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use kvault_models::gates::file::named_tensors;
use kvault_models::gates::{save_gates, LayerGate, RetentionGates};
use kvault_models::model::{load_model, open_weights, LoadOptions};
use kvault_models::source::ModelSource;
use kvault_models::training::{ops::log_softmax, trimkv_loss, TrainingModel};
use rand::{rngs::StdRng, SeedableRng};
use rand_distr::{Distribution, Normal};

use data::Corpus;
use optim::AdamW;

#[derive(Args, Debug, Clone)]
pub struct TrainGatesArgs {
    /// The model (as for `generate`; default: the embedded stories260K).
    #[arg(long, short = 'm')]
    pub model: Option<String>,
    /// Training text: .txt files or folders of them (repeatable). The last `--holdout` of every
    /// file is never trained on.
    #[arg(long, required = true)]
    pub data: Vec<PathBuf>,
    /// M: the per-head budget the capacity loss trains for.
    #[arg(long)]
    pub budget: usize,
    /// Tokens per training window.
    #[arg(long, default_value_t = 1024)]
    pub seq_len: usize,
    #[arg(long, default_value_t = 1000)]
    pub steps: usize,
    #[arg(long, default_value_t = 2e-4)]
    pub lr: f64,
    /// Warm-up steps (linear). Default: a tenth of `--steps`, at most 100.
    #[arg(long)]
    pub warmup: Option<usize>,
    #[arg(long, default_value_t = 1e-5)]
    pub weight_decay: f64,
    /// Global gradient-norm clip (0: off).
    #[arg(long, default_value_t = 1.0)]
    pub clip: f64,
    /// Hidden width of each layer's gate MLP.
    #[arg(long, default_value_t = 512)]
    pub hidden: usize,
    /// Initial per-head bias: β ≈ σ(bias) ≈ 1 at the start, so early training forgets nothing.
    #[arg(long, default_value_t = 18.0)]
    pub bias_init: f64,
    /// λ, the weight of the capacity loss.
    #[arg(long, default_value_t = 1.0)]
    pub capacity_weight: f64,
    /// Fraction of every file held out from training.
    #[arg(long, default_value_t = 0.1)]
    pub holdout: f64,
    /// Write a checkpoint (`OUT.ckpt.safetensors`) every this many steps (0: only at the end).
    #[arg(long, default_value_t = 50)]
    pub checkpoint_every: usize,
    /// Continue from `OUT.ckpt.safetensors` (same settings required).
    #[arg(long)]
    pub resume: bool,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Where the gates go (f16 safetensors). Provenance is also written to `OUT.json`.
    #[arg(long)]
    pub out: PathBuf,
}

pub fn run(a: TrainGatesArgs) -> Result<()> {
    // Checked here rather than by clap so each is a one-line error naming its flag.
    for (flag, value, min) in [("--budget", a.budget, 1), ("--seq-len", a.seq_len, 2), ("--steps", a.steps, 1), ("--hidden", a.hidden, 1)] {
        if value < min {
            bail!("{flag}: must be at least {min}, got {value}");
        }
    }
    if !(0.0..1.0).contains(&a.holdout) {
        bail!("--holdout: must be in [0, 1), got {}", a.holdout);
    }
    if !(a.lr > 0.0) {
        bail!("--lr: must be positive, got {}", a.lr);
    }
    let (seq_len, steps, budget, hidden) = (a.seq_len, a.steps, a.budget, a.hidden);
    let source = ModelSource::parse(a.model.as_deref())?;
    let tokenizer = load_model(&source, &LoadOptions::default())?.tokenizer;
    let corpus = Corpus::load(&a.data, &tokenizer, a.holdout, seq_len + 1)?;
    let (config, weights) = open_weights(&source, true, &Device::Cpu)?;
    if seq_len > config.max_position_embeddings {
        bail!("--seq-len {seq_len}: the model's context is {} tokens", config.max_position_embeddings);
    }
    let model = TrainingModel::load(config, weights.as_ref(), DType::F32)?;
    let c = &model.config;
    eprintln!(
        "train-gates: {} layers × {} KV heads, gate width {hidden}; {} training / {} held-out tokens from {} file(s); M = {budget}, {steps} steps of {seq_len} tokens",
        c.num_layers,
        c.num_kv_heads,
        corpus.train_tokens(),
        corpus.heldout_tokens(),
        corpus.files.len()
    );

    let params = init_params(c.num_layers, c.hidden_size, c.num_kv_heads, hidden, a.bias_init, a.seed)?;
    let names: Vec<String> = named_tensors(&gates_of(&params)).into_iter().map(|(n, _)| n).collect();
    let warmup = a.warmup.unwrap_or((steps / 10).min(100));
    let mut opt = AdamW::new(&params, a.lr, warmup, a.weight_decay, a.clip)?;
    let settings = BTreeMap::from([
        ("model".to_string(), a.model.clone().unwrap_or_else(|| kvault_models::embedded::NAME.into())),
        ("budget".into(), budget.to_string()),
        ("seq_len".into(), seq_len.to_string()),
        ("hidden".into(), hidden.to_string()),
        ("seed".into(), a.seed.to_string()),
        ("lr".into(), a.lr.to_string()),
    ]);
    let ckpt = checkpoint::path_for(&a.out);
    let (first, mut wall_before) = if a.resume {
        let (s, w) = checkpoint::restore(&ckpt, &names, &params, &mut opt, &settings)?;
        eprintln!("train-gates: resumed at step {s} from {}", ckpt.display());
        (s, w)
    } else {
        (0, 0.0)
    };

    let bar = ProgressBar::new(steps as u64);
    bar.set_position(first as u64);
    bar.set_style(ProgressStyle::with_template("{bar:30} {pos}/{len} steps {elapsed_precise} (eta {eta}) {msg}").expect("static template"));
    let log_lines = !std::io::stderr().is_terminal();
    let started = Instant::now();
    let mut recent: Vec<[f32; 4]> = Vec::new();
    let mut last_ckpt = first;
    for step in first..steps {
        let window = corpus.window(a.seed, step, seq_len + 1);
        let (ids, labels) = (&window[..seq_len], &window[1..]);
        let teacher = log_softmax(&model.forward(ids, None)?.logits)?.detach();
        let student = model.forward(ids, Some(&gates_of(&params)))?;
        let loss = trimkv_loss(&student.logits, &teacher, labels, &student.occupancy, budget, a.capacity_weight)?;
        let grads = loss.total.backward()?;
        let norm = opt.step(&params, &grads, step)?;
        let total = loss.total.to_scalar::<f32>()?;
        if !total.is_finite() {
            bail!("step {step}: the loss is {total}; lower --lr");
        }
        recent.push([total, loss.fwkl, loss.ce, loss.capacity]);
        if recent.len() > 10 {
            recent.remove(0);
        }
        let elapsed = started.elapsed().as_secs_f64();
        let tok_s = ((step + 1 - first) * seq_len) as f64 / elapsed;
        let msg = format!(
            "loss {total:.4} (kl {:.4} ce {:.4} cap {:.4}) |g| {norm:.3} lr {:.2e} {tok_s:.0} tok/s",
            loss.fwkl,
            loss.ce,
            loss.capacity,
            opt.lr_at(step)
        );
        bar.set_message(msg.clone());
        bar.inc(1);
        if log_lines {
            eprintln!("step {}/{steps}: {msg}", step + 1);
        }
        if a.checkpoint_every > 0 && (step + 1) % a.checkpoint_every == 0 {
            checkpoint::save(&ckpt, &names, &params, &opt, step + 1, &settings, wall_before + elapsed)?;
            last_ckpt = step + 1;
        }
    }
    bar.finish();
    let trained = steps - first;
    let elapsed = started.elapsed().as_secs_f64();
    wall_before += elapsed;
    if last_ckpt != steps {
        checkpoint::save(&ckpt, &names, &params, &opt, steps, &settings, wall_before)?;
    }
    let heldout = heldout_loss(&model, &corpus, &gates_of(&params), seq_len, budget, a.capacity_weight)?;
    let mean = |i: usize| recent.iter().map(|r| r[i]).sum::<f32>() / recent.len().max(1) as f32;
    let mut md = settings.clone();
    md.insert("format".into(), "kvault TRIM-KV retention gates (rg: logsigmoid(W2·silu(W1·x+b1)+b)), f16".into());
    md.insert("command".into(), std::env::args().collect::<Vec<_>>().join(" "));
    md.insert("data".into(), data_summary(&corpus, a.holdout));
    md.insert("steps".into(), steps.to_string());
    md.insert("tokens_trained".into(), (steps * seq_len).to_string());
    md.insert("wall_seconds".into(), format!("{wall_before:.1}"));
    if trained > 0 {
        md.insert("tokens_per_second".into(), format!("{:.1}", (trained * seq_len) as f64 / elapsed));
    }
    md.insert("bias_init".into(), a.bias_init.to_string());
    md.insert("capacity_weight".into(), a.capacity_weight.to_string());
    md.insert("warmup".into(), warmup.to_string());
    if !recent.is_empty() {
        md.insert("final_loss".into(), format!("{:.5}", mean(0)));
        md.insert("final_fwkl".into(), format!("{:.5}", mean(1)));
        md.insert("final_ce".into(), format!("{:.5}", mean(2)));
        md.insert("final_capacity".into(), format!("{:.5}", mean(3)));
    }
    if let Some(h) = heldout {
        md.insert("heldout_loss".into(), format!("{:.5}", h[0]));
        md.insert("heldout_fwkl".into(), format!("{:.5}", h[1]));
        md.insert("heldout_ce".into(), format!("{:.5}", h[2]));
        md.insert("heldout_capacity".into(), format!("{:.5}", h[3]));
    }
    save_gates(&gates_of(&params), &md, &a.out)?;
    let json_path = a.out.with_extension("json");
    std::fs::write(&json_path, serde_json::to_string_pretty(&md)? + "\n").with_context(|| format!("{}: cannot write", json_path.display()))?;
    eprintln!("train-gates: wrote {} and {} ({wall_before:.0} s)", a.out.display(), json_path.display());
    if let Some(l) = md.get("final_loss") {
        println!("final loss {l} (mean of the last {} steps)", recent.len());
    }
    Ok(())
}

/// The gate parameters as `Var`s, four per layer: W1, W2 ~ N(0, 0.02) from `seed`, b1 = 0,
/// bias = `bias_init` (the official initialization).
fn init_params(layers: usize, d_model: usize, kv: usize, hidden: usize, bias_init: f64, seed: u64) -> Result<Vec<Var>> {
    let mut rng = StdRng::seed_from_u64(seed);
    let normal = Normal::new(0.0f32, 0.02).expect("valid normal");
    let mut randn = |shape: (usize, usize)| -> Result<Var> {
        let v: Vec<f32> = (0..shape.0 * shape.1).map(|_| normal.sample(&mut rng)).collect();
        Ok(Var::from_tensor(&Tensor::from_vec(v, shape, &Device::Cpu)?)?)
    };
    let mut params = Vec::with_capacity(layers * 4);
    for _ in 0..layers {
        params.push(randn((hidden, d_model))?);
        params.push(Var::zeros(hidden, DType::F32, &Device::Cpu)?);
        params.push(randn((kv, hidden))?);
        params.push(Var::from_tensor(&Tensor::full(bias_init as f32, kv, &Device::Cpu)?)?);
    }
    Ok(params)
}

/// The `Var`s viewed as gates (the tensors share their ids, so gradients reach the `Var`s).
fn gates_of(params: &[Var]) -> RetentionGates {
    RetentionGates {
        layers: params
            .chunks(4)
            .map(|p| LayerGate { w1: p[0].as_tensor().clone(), b1: p[1].as_tensor().clone(), w2: p[2].as_tensor().clone(), bias: p[3].as_tensor().clone() })
            .collect(),
    }
}

/// Mean loss terms over up to 4 held-out windows (no gradients), or `None` without any.
fn heldout_loss(model: &TrainingModel, corpus: &Corpus, gates: &RetentionGates, seq_len: usize, budget: usize, weight: f64) -> Result<Option<[f32; 4]>> {
    let gates = gates.to_f32()?; // plain tensors: nothing is tracked
    let windows = corpus.heldout_windows(seq_len + 1, 4);
    if windows.is_empty() {
        return Ok(None);
    }
    let mut sum = [0f32; 4];
    for w in &windows {
        let (ids, labels) = (&w[..seq_len], &w[1..]);
        let teacher = log_softmax(&model.forward(ids, None)?.logits)?;
        let s = model.forward(ids, Some(&gates))?;
        let l = trimkv_loss(&s.logits, &teacher, labels, &s.occupancy, budget, weight)?;
        for (acc, v) in sum.iter_mut().zip([l.total.to_scalar::<f32>()?, l.fwkl, l.ce, l.capacity]) {
            *acc += v / windows.len() as f32;
        }
    }
    Ok(Some(sum))
}

fn data_summary(corpus: &Corpus, holdout: f64) -> String {
    let files: Vec<String> = corpus
        .files
        .iter()
        .map(|(p, t, h)| format!("{} ({} train + {} held-out tokens)", p.file_name().and_then(|n| n.to_str()).unwrap_or("?"), t.len(), h.len()))
        .collect();
    format!("{}; the last {:.0}% of every file held out", files.join(", "), holdout * 100.0)
}
