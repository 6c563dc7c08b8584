//! `kvault generate --input-file prompts.jsonl --output-file out.jsonl`: every prompt goes
//! into the engine at once (continuous batching does the rest); results are written in input
//! order with text, token ids, finish reason, usage and what the request's KV policy did. A
//! line's `kv_*` fields overlay the command's `--kv-*` flags. A malformed input line (a wrong
//! field, or KV settings that do not resolve) stops the run before anything is generated; a
//! request the engine refuses (e.g. too long) gets an `error` line and the others still run.

use std::io::{BufRead, BufWriter, Write};
use std::path::Path;
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use kvault_engine::events::RequestEvent;
use kvault_engine::handle::EngineHandle;
use kvault_engine::kv_policy::{KvPolicy, KvPolicyConfig};
use kvault_engine::request::NewRequest;
use kvault_engine::sampler::SamplingParams;
use kvault_models::chat_template::ChatMessage;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::generate::GenerateArgs;
use crate::kv::{self, KvFields};
use crate::prompt;

/// One input line, without its `kv_*` fields (those are [`KvFields`]). Unknown fields are
/// rejected so a typo ("max_token") is not silently ignored.
#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct InputLine {
    #[serde(default)]
    id: Option<Value>,
    #[serde(default)]
    prompt: Option<String>,
    #[serde(default)]
    messages: Option<Vec<ChatMessage>>,
    max_tokens: Option<usize>,
    temperature: Option<f32>,
    top_p: Option<f32>,
    top_k: Option<usize>,
    min_p: Option<f32>,
    seed: Option<u64>,
    stop: Option<StopField>,
    ignore_eos: Option<bool>,
    repetition_penalty: Option<f32>,
    presence_penalty: Option<f32>,
    frequency_penalty: Option<f32>,
}

#[derive(Deserialize, Debug)]
#[serde(untagged)]
enum StopField {
    One(String),
    Many(Vec<String>),
}

impl InputLine {
    fn params(&self, defaults: &SamplingParams) -> SamplingParams {
        let mut p = defaults.clone();
        macro_rules! set {
            ($($f:ident),*) => { $( if let Some(v) = self.$f { p.$f = v; } )* };
        }
        set!(max_tokens, temperature, top_p, top_k, min_p, ignore_eos, repetition_penalty, presence_penalty, frequency_penalty);
        if self.seed.is_some() {
            p.seed = self.seed;
        }
        match &self.stop {
            Some(StopField::One(s)) => p.stop = vec![s.clone()],
            Some(StopField::Many(v)) => p.stop = v.clone(),
            None => {}
        }
        p
    }
}

/// A line ready to submit: where it came from, its fields, its resolved KV policy.
struct Job {
    line_no: String,
    line: InputLine,
    kv: KvPolicy,
}

pub fn run(args: &GenerateArgs, input: &Path, output: &Path) -> Result<()> {
    let lines = read_input(input, &args.kv.config())?;
    let loaded = args.model.load()?;
    let engine = EngineHandle::start(loaded, args.engine.config(lines.len()))?;
    let info = engine.info().clone();
    let template = args.chat_template.as_deref().map(|p| prompt::load_template_file(p, &info)).transpose()?;
    let defaults = args.sampling.params();

    let bar = ProgressBar::new(lines.len() as u64);
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} requests {elapsed_precise} {msg}")
            .expect("static progress template is valid"),
    );
    let started = Instant::now();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let results: Vec<Value> = runtime.block_on(async {
        let mut tasks = Vec::with_capacity(lines.len());
        for (index, Job { line_no, line, kv }) in lines.iter().enumerate() {
            let ids = match (&line.prompt, &line.messages) {
                (Some(p), None) => prompt::encode_text(&info, p),
                (None, Some(m)) => prompt::encode_chat(&info, template.as_ref(), m),
                _ => unreachable!("checked when reading {line_no}"),
            };
            let submitted = ids.map_err(|e| format!("{e:#}")).and_then(|ids| {
                let mut request = NewRequest::new(ids, line.params(&defaults));
                request.kv = *kv;
                engine.submit(request).map_err(|e| e.to_string())
            });
            let id = line.id.clone();
            let bar = bar.clone();
            tasks.push(tokio::spawn(async move {
                let mut result = match submitted {
                    Ok(stream) => collect(stream).await,
                    Err(e) => json!({ "error": e }),
                };
                result["index"] = json!(index);
                if let Some(id) = id {
                    result["id"] = id;
                }
                bar.inc(1);
                result
            }));
        }
        let mut out = Vec::with_capacity(tasks.len());
        let mut generated = 0u64;
        for t in tasks {
            let r = t.await.expect("collector task does not panic");
            generated += r["usage"]["completion_tokens"].as_u64().unwrap_or(0);
            bar.set_message(format!("{:.1} tok/s", generated as f64 / started.elapsed().as_secs_f64()));
            out.push(r);
        }
        out
    });
    bar.finish();

    let file = std::fs::File::create(output).with_context(|| format!("{}: cannot create", output.display()))?;
    let mut w = BufWriter::new(file);
    for r in &results {
        serde_json::to_writer(&mut w, r)?;
        w.write_all(b"\n")?;
    }
    w.flush()?;
    let failed = results.iter().filter(|r| r.get("error").is_some()).count();
    let generated: u64 = results.iter().map(|r| r["usage"]["completion_tokens"].as_u64().unwrap_or(0)).sum();
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "{} requests ({failed} failed), {generated} tokens generated in {secs:.2} s: {:.1} output tok/s",
        results.len(),
        generated as f64 / secs
    );
    Ok(())
}

fn read_input(path: &Path, kv_defaults: &KvPolicyConfig) -> Result<Vec<Job>> {
    let file = std::fs::File::open(path).with_context(|| format!("{}: cannot open", path.display()))?;
    let mut lines = Vec::new();
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        let where_ = format!("{}:{}", path.display(), i + 1);
        let line = line.with_context(|| format!("{where_}: cannot read"))?;
        if line.trim().is_empty() {
            continue;
        }
        let (parsed, kv_fields) = parse_line(&line).with_context(|| format!("{where_}: invalid request"))?;
        if parsed.prompt.is_some() == parsed.messages.is_some() {
            bail!("{where_}: give exactly one of `prompt` or `messages`");
        }
        let kv = kv_fields.resolve(kv_defaults).map_err(|e| anyhow!("{where_}: {e}"))?;
        lines.push(Job { line_no: where_, line: parsed, kv });
    }
    if lines.is_empty() {
        bail!("{}: no requests in the file", path.display());
    }
    Ok(lines)
}

/// Splits a line's `kv_*` fields from the rest; a field of the wrong type is named by its path.
fn parse_line(line: &str) -> Result<(InputLine, KvFields)> {
    let mut object: Map<String, Value> = serde_json::from_str(line)?;
    let kv_fields: Map<String, Value> = kv::FIELDS.iter().filter_map(|f| object.remove_entry(*f)).collect();
    Ok((from_object(object)?, from_object(kv_fields)?))
}

fn from_object<T: DeserializeOwned>(object: Map<String, Value>) -> Result<T> {
    serde_path_to_error::deserialize(Value::Object(object)).map_err(|e| match e.path().to_string().as_str() {
        "" | "." => anyhow!("{}", e.inner()),
        path => anyhow!("`{path}`: {}", e.inner()),
    })
}

async fn collect(mut stream: kvault_engine::handle::RequestStream) -> Value {
    let (mut text, mut ids) = (String::new(), Vec::new());
    loop {
        match stream.next().await {
            Some(RequestEvent::Tokens(d)) => {
                text.push_str(&d.text);
                ids.extend_from_slice(&d.token_ids);
            }
            Some(RequestEvent::Finished(done)) => {
                text.push_str(&done.trailing_text);
                return json!({
                    "text": text,
                    "token_ids": ids,
                    "finish_reason": done.reason.as_str(),
                    "usage": {
                        "prompt_tokens": done.usage.prompt_tokens,
                        "completion_tokens": done.usage.completion_tokens,
                        "cached_tokens": done.usage.cached_tokens,
                    },
                    "kv": kv::report_json(&done.kv),
                });
            }
            Some(RequestEvent::PromptScores(_)) => {} // never asked for here
            Some(RequestEvent::Failed(e)) => return json!({ "error": e }),
            None => return json!({ "error": "the engine stopped before the request finished" }),
        }
    }
}
