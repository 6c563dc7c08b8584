//! `kvault generate`: one prompt streamed to the terminal, or a JSONL file of prompts run
//! through the engine concurrently.

use std::io::{IsTerminal, Read, Write};
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Args;
use kvault_engine::events::{KvReport, RequestEvent};
use kvault_engine::handle::EngineHandle;
use kvault_engine::request::NewRequest;

use crate::args::{EngineArgs, ModelArgs, SamplingArgs};
use crate::kv::{self, KvArgs};
use crate::prompt;

/// Used when no prompt is given and stdin has none, so `kvault generate` alone shows the engine.
const DEFAULT_PROMPT: &str = "Once upon a time";

#[derive(Args, Debug)]
pub struct GenerateArgs {
    /// The prompt. Read from stdin when omitted (and stdin is not a terminal); with neither,
    /// a default prompt is used.
    pub prompt: Option<String>,
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub engine: EngineArgs,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    #[command(flatten)]
    pub kv: KvArgs,
    /// Format the prompt as a user message with the model's chat template.
    #[arg(long)]
    pub chat: bool,
    /// System prompt for --chat.
    #[arg(long, requires = "chat")]
    pub system: Option<String>,
    /// Chat template file overriding the model's.
    #[arg(long)]
    pub chat_template: Option<PathBuf>,
    /// Batch mode: a JSONL file of requests ({"prompt": ...} or {"messages": [...]}, plus
    /// optional sampling and `kv_*` fields over the flags); writes one result line per request to --output-file.
    #[arg(long, requires = "output_file", conflicts_with = "prompt")]
    pub input_file: Option<PathBuf>,
    /// Where batch mode writes its results (JSONL, input order).
    #[arg(long, requires = "input_file")]
    pub output_file: Option<PathBuf>,
    /// Do not print timing statistics to stderr.
    #[arg(long)]
    pub quiet: bool,
}

pub fn run(args: GenerateArgs) -> Result<()> {
    let kv_policy = args.kv.resolve()?;
    if let (Some(input), Some(output)) = (&args.input_file, &args.output_file) {
        return crate::commands::generate_batch::run(&args, input, output);
    }
    let prompt_text = read_prompt(args.prompt.as_deref())?;
    let loaded = args.model.load()?;
    let engine = EngineHandle::start(loaded, args.engine.config(0))?;
    let info = engine.info().clone();
    let template = args.chat_template.as_deref().map(|p| prompt::load_template_file(p, &info)).transpose()?;
    let prompt_ids = if args.chat {
        let mut messages = Vec::new();
        if let Some(system) = &args.system {
            messages.push(prompt::message("system", system));
        }
        messages.push(prompt::message("user", &prompt_text));
        prompt::encode_chat(&info, template.as_ref(), &messages)?
    } else {
        prompt::encode_text(&info, &prompt_text)?
    };
    let n_prompt = prompt_ids.len();
    let started = Instant::now();
    let mut request = NewRequest::new(prompt_ids, args.sampling.params());
    request.kv = kv_policy;
    let mut stream = engine.submit(request).map_err(kv::submit_error)?;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let (mut first, mut last, mut generated) = (None, started, 0usize);
    loop {
        match stream.blocking_next() {
            Some(RequestEvent::Tokens(delta)) => {
                first.get_or_insert(delta.at);
                last = delta.at;
                generated += delta.token_ids.len();
                out.write_all(delta.text.as_bytes())?;
                out.flush()?;
            }
            Some(RequestEvent::Finished(done)) => {
                out.write_all(done.trailing_text.as_bytes())?;
                out.flush()?;
                if !args.quiet {
                    print_stats(n_prompt, started, first, last, generated, done.reason.as_str(), &done.kv);
                }
                break;
            }
            Some(RequestEvent::PromptScores(_)) => {} // never asked for here
            Some(RequestEvent::Failed(e)) => anyhow::bail!("generation failed: {e}"),
            None => anyhow::bail!("the engine stopped before the request finished"),
        }
    }
    // Terminals expect a final newline; pipes get exactly the generated text.
    if std::io::stdout().is_terminal() {
        writeln!(out)?;
    }
    Ok(())
}

fn read_prompt(arg: Option<&str>) -> Result<String> {
    if let Some(p) = arg {
        return Ok(p.to_string());
    }
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        let mut text = String::new();
        stdin.lock().read_to_string(&mut text).context("reading the prompt from stdin")?;
        if !text.trim().is_empty() {
            return Ok(text);
        }
    }
    Ok(DEFAULT_PROMPT.to_string())
}

fn print_stats(n_prompt: usize, started: Instant, first: Option<Instant>, last: Instant, generated: usize, reason: &str, kv: &KvReport) {
    let kv = kv::report_summary(kv);
    let Some(first) = first else {
        eprintln!("\n[prompt {n_prompt} tokens, nothing generated, finish: {reason}; {kv}]");
        return;
    };
    let ttft = first.duration_since(started).as_secs_f64();
    let decode_s = last.duration_since(first).as_secs_f64();
    let decode_rate = if generated > 1 && decode_s > 0.0 { (generated - 1) as f64 / decode_s } else { 0.0 };
    eprintln!(
        "\n[prompt {n_prompt} tokens, time to first token {:.1} ms ({:.1} tok/s prefill); generated {generated} tokens, {:.1} tok/s decode; finish: {reason}; {kv}]",
        ttft * 1e3,
        n_prompt as f64 / ttft,
        decode_rate
    );
}
