//! Server-sent events exactly as OpenAI streams them: `data: {json}\n\n` per chunk, an optional
//! final usage chunk (empty `choices`), then `data: [DONE]\n\n`.
//!
//! The endpoint supplies a [`ChunkFormatter`] for its chunk shape; this module owns the
//! framing, usage accounting, `usage: null` on ordinary chunks when usage was asked for, and
//! ending the stream after a failure. Dropping the response body drops the merged engine
//! streams, which aborts their requests.

use std::collections::VecDeque;

use axum::body::{Body, Bytes};
use axum::http::{header, StatusCode};
use axum::response::Response;
use futures_util::stream::{self, BoxStream, StreamExt};
use kvault_engine::events::{Completion, PromptScores, RequestEvent, TokenDelta};
use serde_json::{Map, Value};

use super::error::ApiError;
use super::generation::UsageTally;

pub trait ChunkFormatter: Send + 'static {
    /// Chunks sent before any engine output (chat's role deltas, completions' echoed prompts).
    fn opening(&mut self) -> Vec<Value>;
    /// Prompt scores of `choice` (they all arrive before its first tokens); nothing is sent
    /// yet, so by default they are dropped.
    fn prompt_scores(&mut self, _choice: usize, _scores: &PromptScores) {}
    /// Chunks for new tokens of `choice`; none when there is nothing to send yet.
    fn tokens(&mut self, choice: usize, delta: &TokenDelta) -> Vec<Value>;
    /// The last chunks of `choice`, the final one carrying its finish reason.
    fn finished(&mut self, choice: usize, done: &Completion) -> Vec<Value>;
    /// A chunk with this chunk kind's envelope (id, object, created, model) and empty choices.
    fn envelope(&self) -> Map<String, Value>;
}

pub struct SseOptions {
    pub include_usage: bool,
    /// Choices per prompt, for counting each prompt's tokens once.
    pub n: usize,
}

struct State<F> {
    events: Option<BoxStream<'static, (usize, RequestEvent)>>,
    formatter: F,
    options: SseOptions,
    usage: UsageTally,
    pending: VecDeque<Bytes>,
}

impl<F: ChunkFormatter> State<F> {
    fn push(&mut self, mut chunk: Value) {
        if self.options.include_usage {
            if let Some(obj) = chunk.as_object_mut() {
                obj.entry("usage").or_insert(Value::Null);
            }
        }
        self.pending.push_back(frame(&chunk));
    }

    fn close(&mut self) {
        self.events = None;
        if self.options.include_usage {
            let mut last = self.formatter.envelope();
            last.insert("choices".into(), Value::Array(Vec::new()));
            last.insert("usage".into(), self.usage.json());
            self.pending.push_back(frame(&Value::Object(last)));
        }
        self.pending.push_back(Bytes::from_static(b"data: [DONE]\n\n"));
    }
}

fn frame(v: &Value) -> Bytes {
    Bytes::from(format!("data: {v}\n\n"))
}

/// The streaming response for merged choice events.
pub fn response<F: ChunkFormatter>(events: BoxStream<'static, (usize, RequestEvent)>, mut formatter: F, options: SseOptions) -> Response {
    let opening = formatter.opening();
    let mut state = State { events: Some(events), formatter, options, usage: UsageTally::default(), pending: VecDeque::new() };
    for chunk in opening {
        state.push(chunk);
    }
    let body = stream::unfold(state, |mut st| async move {
        loop {
            if let Some(bytes) = st.pending.pop_front() {
                return Some((Ok::<Bytes, std::convert::Infallible>(bytes), st));
            }
            let events = st.events.as_mut()?;
            match events.next().await {
                Some((i, RequestEvent::Tokens(d))) => {
                    for chunk in st.formatter.tokens(i, &d) {
                        st.push(chunk);
                    }
                }
                Some((i, RequestEvent::Finished(c))) => {
                    st.usage.add(i, st.options.n, &c);
                    for chunk in st.formatter.finished(i, &c) {
                        st.push(chunk);
                    }
                }
                Some((i, RequestEvent::PromptScores(scores))) => st.formatter.prompt_scores(i, &scores),
                Some((_, RequestEvent::Failed(e))) => {
                    // OpenAI-style clients raise on an `error` event; the other choices are
                    // aborted when their streams drop in `close`.
                    let err = ApiError::internal(format!("generation failed: {e}"));
                    st.pending.push_back(frame(&err.body()));
                    st.close();
                }
                None => st.close(),
            }
        }
    });
    let mut response = Response::new(Body::from_stream(body));
    *response.status_mut() = StatusCode::OK;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, header::HeaderValue::from_static("text/event-stream"));
    headers.insert(header::CACHE_CONTROL, header::HeaderValue::from_static("no-cache"));
    response
}
