//! Fan-out of one HTTP request into engine requests (each prompt × `n` choices, in OpenAI's
//! choice order) and fan-in of their events, either merged as they come (streaming) or
//! gathered into finished choices.
//!
//! Everything here owns its `ObservedStream`s: when the HTTP side drops the future or the
//! response body, the streams drop with it and the engine aborts those requests.
//! Must not know: JSON shapes of either endpoint.

use std::sync::Arc;

use futures_util::stream::{self, BoxStream, StreamExt};
use kvault_engine::events::{Completion, RequestEvent, TokenLogprob};
use kvault_engine::handle::EngineHandle;
use kvault_engine::kv_policy::KvPolicy;
use kvault_engine::request::{NewRequest, SubmitError};
use kvault_engine::sampler::SamplingParams;
use serde_json::{json, Map, Value};

use super::error::ApiError;
use super::metrics::{Metrics, ObservedStream};
use super::params::choice_seed;

/// One prompt with its sampling parameters (max_tokens may differ per prompt) and KV policy.
pub struct PromptJob {
    pub prompt_ids: Vec<u32>,
    pub params: SamplingParams,
    pub kv: KvPolicy,
}

/// Submits every choice; if any is refused, the ones already queued are dropped (aborted)
/// and the refusal is returned. Choice `p * n + i` is prompt `p`'s `i`-th completion.
/// `max_choices`: what the engine can hold at once (running + queued); a request asking for
/// more could never be served, so it is a 400 rather than a 503.
pub fn submit_all(engine: &EngineHandle, metrics: &Arc<Metrics>, jobs: &[PromptJob], n: usize, max_choices: usize) -> Result<Vec<ObservedStream>, ApiError> {
    let choices = jobs.len().saturating_mul(n);
    if choices > max_choices {
        return Err(ApiError::invalid(
            "n",
            format!("{} prompt(s) × n {n} = {choices} completions, more than this server holds at once ({max_choices})", jobs.len()),
        ));
    }
    let info = engine.info();
    for job in jobs {
        // The engine compares prompt + max_tokens with the context; a max_tokens near usize::MAX
        // must not wrap around in that sum.
        if job.prompt_ids.len().checked_add(job.params.max_tokens).is_none_or(|total| total > info.max_context_len) {
            return Err(SubmitError::TooLong { prompt_tokens: job.prompt_ids.len(), max_tokens: job.params.max_tokens, max_model_len: info.max_context_len }.into());
        }
    }
    let mut streams = Vec::with_capacity(choices);
    for job in jobs {
        for i in 0..n {
            let mut params = job.params.clone();
            params.seed = choice_seed(job.params.seed, i);
            let mut request = NewRequest::new(job.prompt_ids.clone(), params);
            request.kv = job.kv;
            let arrival = request.arrival;
            let stream = engine.submit(request)?;
            streams.push(ObservedStream::new(stream, metrics.clone(), arrival));
        }
    }
    Ok(streams)
}

/// Every choice's events, tagged with the choice index, as they arrive. Each choice ends with
/// exactly one `Finished` or `Failed` (an engine that stopped reads as `Failed`).
pub fn merged(streams: Vec<ObservedStream>) -> BoxStream<'static, (usize, RequestEvent)> {
    let per_choice = streams.into_iter().enumerate().map(|(index, s)| {
        stream::unfold(Some(s), move |state| async move {
            let mut s = state?;
            let event = s.next().await.unwrap_or_else(|| RequestEvent::Failed("the engine stopped before the request finished".into()));
            let last = matches!(event, RequestEvent::Finished(_) | RequestEvent::Failed(_));
            Some(((index, event), if last { None } else { Some(s) }))
        })
        .boxed()
    });
    stream::select_all(per_choice).boxed()
}

/// A finished choice, gathered.
#[derive(Debug, Clone)]
pub struct ChoiceOutput {
    pub text: String,
    pub logprobs: Vec<TokenLogprob>,
    /// Prompt tokens 1.. scored (when the request scored its prompt), in order.
    pub prompt_logprobs: Vec<TokenLogprob>,
    pub completion: Completion,
}

/// Waits for every choice. A failed choice fails the whole request (500).
pub async fn gather(streams: Vec<ObservedStream>) -> Result<Vec<ChoiceOutput>, ApiError> {
    let count = streams.len();
    let mut partial: Vec<(String, Vec<TokenLogprob>)> = vec![Default::default(); count];
    let mut prompt_logprobs: Vec<Vec<TokenLogprob>> = vec![Vec::new(); count];
    let mut done: Vec<Option<Completion>> = vec![None; count];
    let mut events = merged(streams);
    while let Some((i, event)) = events.next().await {
        match event {
            RequestEvent::Tokens(d) => {
                partial[i].0.push_str(&d.text);
                partial[i].1.extend(d.logprobs.unwrap_or_default());
            }
            RequestEvent::Finished(c) => {
                partial[i].0.push_str(&c.trailing_text);
                done[i] = Some(c);
            }
            RequestEvent::PromptScores(scores) => prompt_logprobs[i].extend(scores.logprobs),
            RequestEvent::Failed(e) => return Err(ApiError::internal(format!("generation failed: {e}"))),
        }
    }
    partial
        .into_iter()
        .zip(done)
        .zip(prompt_logprobs)
        .map(|(((text, logprobs), c), prompt_logprobs)| {
            let completion = c.ok_or_else(|| ApiError::internal("a choice ended without a final event"))?;
            Ok(ChoiceOutput { text, logprobs, prompt_logprobs, completion })
        })
        .collect()
}

/// OpenAI usage across choices: each prompt counted once (from its first choice), completion
/// tokens summed over all choices.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct UsageTally {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub cached_tokens: usize,
}

impl UsageTally {
    pub fn add(&mut self, choice: usize, n: usize, c: &Completion) {
        if choice % n == 0 {
            self.prompt_tokens += c.usage.prompt_tokens;
            self.cached_tokens += c.usage.cached_tokens;
        }
        self.completion_tokens += c.usage.completion_tokens;
    }

    pub fn json(&self) -> Value {
        json!({
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": self.cached_tokens},
        })
    }
}

/// The finish reason as OpenAI spells it, and vLLM's `stop_reason` (the stop string or token
/// id that matched, null for EOS or length).
pub fn finish_fields(c: &Completion) -> (&'static str, Value) {
    let stop_reason = match &c.matched_stop {
        Some(kvault_engine::events::MatchedStop::Text(s)) => Value::String(s.clone()),
        Some(kvault_engine::events::MatchedStop::TokenId(id)) => json!(id),
        None => Value::Null,
    };
    (c.reason.as_str(), stop_reason)
}

/// What every response object and chunk of one request starts with: id, object, created, model.
pub struct ResponseMeta {
    id: String,
    created: u64,
    model: String,
}

impl ResponseMeta {
    /// `prefix`: OpenAI's id prefix for the endpoint (`cmpl`, `chatcmpl`).
    pub fn new(prefix: &str, model: String) -> Self {
        Self { id: response_id(prefix), created: super::state::unix_now(), model }
    }

    pub fn envelope(&self, object: &str) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert("id".into(), json!(self.id));
        m.insert("object".into(), json!(object));
        m.insert("created".into(), json!(self.created));
        m.insert("model".into(), json!(self.model));
        m
    }

    /// A streaming chunk carrying one choice; `finish` (the choice's last chunk) sets its
    /// `finish_reason` and `stop_reason`, null otherwise.
    pub fn chunk(&self, object: &str, mut choice: Value, finish: Option<&Completion>) -> Value {
        let (reason, stop_reason) = finish.map(finish_fields).map_or((Value::Null, Value::Null), |(r, s)| (json!(r), s));
        if let Value::Object(c) = &mut choice {
            c.insert("finish_reason".into(), reason);
            c.insert("stop_reason".into(), stop_reason);
        }
        let mut m = self.envelope(object);
        m.insert("choices".into(), json!([choice]));
        Value::Object(m)
    }
}

/// A unique-enough response id: time plus a process-wide counter.
pub fn response_id(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_micros()).unwrap_or(0);
    format!("{prefix}-{t:x}{n:x}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvault_engine::events::{FinishReason, Usage};
    use std::time::Instant;

    fn completion(prompt: usize, completion_tokens: usize, cached: usize) -> Completion {
        Completion {
            reason: FinishReason::Length,
            matched_stop: None,
            usage: Usage { prompt_tokens: prompt, completion_tokens, cached_tokens: cached },
            trailing_text: String::new(),
            kv: Default::default(),
            at: Instant::now(),
        }
    }

    #[test]
    fn usage_counts_each_prompt_once_and_every_choice_completion() {
        // Two prompts (10 and 4 tokens), n = 3 each.
        let mut u = UsageTally::default();
        for (i, c) in [(0, completion(10, 5, 0)), (1, completion(10, 5, 8)), (2, completion(10, 2, 8)),
                       (3, completion(4, 1, 0)), (4, completion(4, 1, 0)), (5, completion(4, 1, 0))] {
            u.add(i, 3, &c);
        }
        assert_eq!(u, UsageTally { prompt_tokens: 14, completion_tokens: 15, cached_tokens: 0 });
        assert_eq!(u.json()["total_tokens"], 29);
    }

    #[test]
    fn stop_reason_reports_the_matched_stop() {
        let mut c = completion(1, 1, 0);
        c.reason = FinishReason::Stop;
        c.matched_stop = Some(kvault_engine::events::MatchedStop::Text("END".into()));
        assert_eq!(finish_fields(&c), ("stop", json!("END")));
    }

    #[test]
    fn response_ids_are_unique() {
        assert_ne!(response_id("cmpl"), response_id("cmpl"));
    }
}
