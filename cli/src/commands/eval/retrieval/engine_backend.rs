//! Answers in-process: every job is submitted to one engine at once, so continuous batching
//! runs them together; `--two-turn` is the request's `chunk_break`.
//!
//! Must not know: HTTP, tasks or scoring.

use anyhow::{bail, Context, Result};
use indicatif::ProgressBar;
use kvault_engine::engine::EngineConfig;
use kvault_engine::events::RequestEvent;
use kvault_engine::handle::{EngineHandle, RequestStream};
use kvault_engine::request::{NewRequest, SubmitError};
use kvault_engine::sampler::SamplingParams;
use kvault_models::model::LoadedModel;

use super::backend::{Job, Limits};

pub struct EngineBackend {
    engine: EngineHandle,
}

impl EngineBackend {
    pub fn start(model: LoadedModel, config: EngineConfig) -> Result<Self> {
        Ok(Self { engine: EngineHandle::start(model, config)? })
    }

    pub fn limits(&self) -> Limits {
        let info = self.engine.info();
        Limits { full: Some(info.max_model_len), budgeted: Some(info.max_context_len) }
    }

    pub fn answer(&self, jobs: &[Job], bar: &ProgressBar) -> Result<Vec<String>> {
        let mut streams = Vec::with_capacity(jobs.len());
        for (i, job) in jobs.iter().enumerate() {
            let params = SamplingParams { max_tokens: job.max_tokens, temperature: 0.0, ..SamplingParams::default() };
            let mut request = NewRequest::new(job.prompt.to_vec(), params);
            request.kv = job.policy;
            request.chunk_break = job.chunk_break;
            let stream = self.engine.submit(request).map_err(|e| refusal(e, job)).with_context(|| format!("request {i}"))?;
            streams.push(stream);
        }
        let mut answers = Vec::with_capacity(jobs.len());
        for (i, stream) in streams.into_iter().enumerate() {
            answers.push(collect_text(stream).with_context(|| format!("request {i}"))?);
            bar.inc(1);
        }
        Ok(answers)
    }
}

/// The engine's refusal, naming the flag at fault when it is the budget (one larger than the
/// cache holds).
fn refusal(e: SubmitError, job: &Job) -> anyhow::Error {
    match (e.param(), job.policy.budget()) {
        (Some("kv_budget"), Some(budget)) => anyhow::anyhow!("--budgets {budget}: {e}"),
        _ => anyhow::Error::new(e),
    }
}

/// The whole generated text of one request.
fn collect_text(mut stream: RequestStream) -> Result<String> {
    let mut text = String::new();
    loop {
        match stream.blocking_next() {
            Some(RequestEvent::Tokens(delta)) => text.push_str(&delta.text),
            Some(RequestEvent::Finished(done)) => {
                text.push_str(&done.trailing_text);
                return Ok(text);
            }
            Some(RequestEvent::PromptScores(_)) => {} // never asked for here
            Some(RequestEvent::Failed(e)) => bail!("the engine failed: {e}"),
            None => bail!("the engine stopped before the request finished"),
        }
    }
}
