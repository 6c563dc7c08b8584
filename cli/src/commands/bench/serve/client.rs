//! One benchmark request over HTTP: the OpenAI-compatible body (`/v1/completions` or
//! `/v1/chat/completions`, streaming with `include_usage`), and what arrived when.
//!
//! A chunk counts when its `choices` is non-empty (vLLM's rule), except a chat chunk that only
//! announces the role (a `role`, no text, no finish reason): some servers send it before any
//! token is computed, and counting it would make TTFT measure nothing.
//!
//! Timestamps are taken as each network read completes, before parsing, so the client's own
//! work does not inflate the latencies it reports. Every SSE message from one read shares that
//! read's timestamp: they did arrive together.
//!
//! Must not know: how requests are scheduled or how measurements are aggregated.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use super::dataset::SampledRequest;
use super::sse::SseParser;
use super::timeline::{Chunk, Observed};

/// Chat delta fields holding generated text.
const TEXT_FIELDS: [&str; 3] = ["reasoning_content", "reasoning", "content"];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EndpointKind {
    Completions,
    Chat,
}

impl EndpointKind {
    pub fn from_path(path: &str) -> Result<Self> {
        if path.ends_with("/chat/completions") {
            Ok(EndpointKind::Chat)
        } else if path.ends_with("/completions") {
            Ok(EndpointKind::Completions)
        } else {
            bail!("--endpoint {path}: expected a path ending in /completions or /chat/completions")
        }
    }
}

/// What every request shares: where to send it and the fixed body fields.
#[derive(Clone)]
pub struct Api {
    pub client: reqwest::Client,
    pub url: String,
    pub kind: EndpointKind,
    pub model: String,
    pub ignore_eos: bool,
    pub temperature: Option<f32>,
}

/// A non-success HTTP status, kept typed so callers can tell "not up yet" from "rejected".
#[derive(Debug)]
pub struct HttpStatus {
    pub status: reqwest::StatusCode,
    pub body: String,
}

impl std::fmt::Display for HttpStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HTTP {}: {}", self.status, self.body.chars().take(300).collect::<String>())
    }
}

impl std::error::Error for HttpStatus {}

/// Whether retrying may help: the server is not listening yet, timed out, or says it is
/// unavailable (503, still loading). Anything else will fail the same way again.
pub fn is_retryable(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<reqwest::Error>().is_some_and(|r| r.is_connect() || r.is_timeout())
            || c.downcast_ref::<HttpStatus>().is_some_and(|h| h.status == reqwest::StatusCode::SERVICE_UNAVAILABLE)
    })
}

/// A client for benchmarking: no overall timeout shorter than a long run (vLLM uses 6 h), but
/// a bounded connect.
pub fn http_client() -> Result<reqwest::Client> {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(6 * 3600))
        .connect_timeout(Duration::from_secs(30))
        .build()
        .context("cannot build the HTTP client")
}

/// The first model id the server lists at `GET /v1/models` (vLLM's default `--model`).
pub async fn first_model(client: &reqwest::Client, base_url: &str) -> Result<String> {
    let url = format!("{base_url}/v1/models");
    let resp = client.get(&url).send().await.with_context(|| format!("GET {url}: is the server running?"))?;
    let status = resp.status();
    if !status.is_success() {
        let body = resp.text().await.unwrap_or_default();
        return Err(anyhow::Error::new(HttpStatus { status, body }).context(format!("GET {url}")));
    }
    let body: Value = resp.json().await.with_context(|| format!("GET {url}: response is not JSON"))?;
    match body["data"].get(0).and_then(|m| m["id"].as_str()) {
        Some(id) => Ok(id.to_string()),
        None => bail!("GET {url}: the server lists no models; name one with --model"),
    }
}

impl Api {
    pub fn body(&self, req: &SampledRequest) -> Value {
        let mut body = match self.kind {
            EndpointKind::Completions => json!({
                "model": self.model,
                "prompt": req.prompt,
                "max_tokens": req.expected_output_len,
            }),
            EndpointKind::Chat => json!({
                "model": self.model,
                "messages": [{"role": "user", "content": req.prompt}],
                "max_completion_tokens": req.expected_output_len,
            }),
        };
        body["stream"] = json!(true);
        body["stream_options"] = json!({"include_usage": true});
        if self.ignore_eos {
            body["ignore_eos"] = json!(true);
        }
        if let Some(t) = self.temperature {
            body["temperature"] = json!(t);
        }
        body
    }

    /// Sends one request and records its stream. Never fails: errors are part of the record.
    /// `bench_start` anchors `Observed::start`; `queue` is the time already spent waiting.
    pub async fn send(&self, req: &SampledRequest, bench_start: Instant, queue: f64) -> Observed {
        let sent = Instant::now();
        let mut observed = Observed {
            start: sent.duration_since(bench_start).as_secs_f64(),
            queue,
            prompt_len: req.prompt_len,
            ..Observed::default()
        };
        if let Err(e) = self.stream_into(req, sent, &mut observed).await {
            observed.error = Some(format!("{e:#}"));
        }
        observed
    }

    /// One request whose failure is returned as an error (typed, for [`is_retryable`]).
    pub async fn probe(&self, req: &SampledRequest) -> Result<()> {
        let mut observed = Observed::default();
        self.stream_into(req, Instant::now(), &mut observed).await?;
        if observed.chunks.is_empty() {
            bail!("the server answered without generating anything");
        }
        Ok(())
    }

    async fn stream_into(&self, req: &SampledRequest, sent: Instant, observed: &mut Observed) -> Result<()> {
        let mut resp = self.client.post(&self.url).json(&self.body(req)).send().await.context("request failed")?;
        let status = resp.status();
        if !status.is_success() {
            let body = resp.text().await.unwrap_or_default();
            return Err(HttpStatus { status, body }.into());
        }
        let mut parser = SseParser::default();
        while let Some(bytes) = resp.chunk().await.context("the stream broke off")? {
            let at = sent.elapsed().as_secs_f64();
            for payload in parser.push(&bytes) {
                if self.message(&payload, at, observed)? {
                    return Ok(());
                }
            }
        }
        if let Some(payload) = parser.finish() {
            self.message(&payload, sent.elapsed().as_secs_f64(), observed)?;
        }
        Ok(())
    }

    /// Handles one SSE payload; true at `[DONE]`.
    fn message(&self, payload: &str, at: f64, observed: &mut Observed) -> Result<bool> {
        if payload.trim() == "[DONE]" {
            return Ok(true);
        }
        let data: Value = serde_json::from_str(payload)
            .with_context(|| format!("not JSON: {}", payload.chars().take(200).collect::<String>()))?;
        if let Some(err) = data.get("error").filter(|e| !e.is_null()) {
            let message = err["message"].as_str().map(str::to_string).unwrap_or_else(|| err.to_string());
            bail!("error event: {message}");
        }
        if let Some(choice) = data["choices"].as_array().and_then(|c| c.first()) {
            if !self.is_role_announcement(choice) {
                observed.chunks.push(Chunk { at, text: self.choice_text(choice) });
            }
        }
        if let Some(usage) = data.get("usage").filter(|u| u.is_object()) {
            if let Some(n) = usage["completion_tokens"].as_u64() {
                observed.usage_completion_tokens = Some(n as usize);
            }
            if let Some(n) = usage["prompt_tokens"].as_u64() {
                observed.prompt_len = n as usize;
            }
        }
        Ok(false)
    }

    fn is_role_announcement(&self, choice: &Value) -> bool {
        self.kind == EndpointKind::Chat
            && !choice["delta"]["role"].is_null()
            && choice["finish_reason"].is_null()
            && self.choice_text(choice).is_empty()
    }

    /// Generated text in a choice. Chat reasoning text counts: those are generated tokens too.
    fn choice_text(&self, choice: &Value) -> String {
        match self.kind {
            EndpointKind::Completions => choice["text"].as_str().unwrap_or_default().to_string(),
            EndpointKind::Chat => {
                let delta = &choice["delta"];
                TEXT_FIELDS
                    .iter()
                    .filter_map(|k| delta[*k].as_str())
                    .collect()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(kind: EndpointKind) -> Api {
        Api {
            client: reqwest::Client::new(),
            url: "http://127.0.0.1:1/v1/completions".into(),
            kind,
            model: "m".into(),
            ignore_eos: true,
            temperature: None,
        }
    }

    fn req() -> SampledRequest {
        SampledRequest { prompt: "hello".into(), prompt_len: 2, expected_output_len: 7 }
    }

    #[test]
    fn completions_body_streams_with_usage_and_ignores_eos() {
        let b = api(EndpointKind::Completions).body(&req());
        assert_eq!(b["prompt"], "hello");
        assert_eq!(b["max_tokens"], 7);
        assert_eq!(b["stream"], true);
        assert_eq!(b["stream_options"]["include_usage"], true);
        assert_eq!(b["ignore_eos"], true);
        assert!(b.get("temperature").is_none());
    }

    #[test]
    fn chat_body_sends_one_user_message_and_max_completion_tokens() {
        let b = api(EndpointKind::Chat).body(&req());
        assert_eq!(b["messages"][0]["role"], "user");
        assert_eq!(b["messages"][0]["content"], "hello");
        assert_eq!(b["max_completion_tokens"], 7);
    }

    #[test]
    fn messages_record_choices_chunks_usage_and_done() {
        let a = api(EndpointKind::Completions);
        let mut o = Observed { prompt_len: 2, ..Observed::default() };
        assert!(!a.message(r#"{"choices":[{"text":"Hi","index":0}],"usage":null}"#, 0.5, &mut o).unwrap());
        assert!(!a.message(r#"{"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":1}}"#, 0.6, &mut o).unwrap());
        assert!(a.message("[DONE]", 0.7, &mut o).unwrap());
        assert_eq!(o.chunks, vec![Chunk { at: 0.5, text: "Hi".into() }]);
        assert_eq!((o.prompt_len, o.usage_completion_tokens), (3, Some(1)));
    }

    #[test]
    fn chat_deltas_count_content_and_reasoning_and_role_announcements_are_not_chunks() {
        let a = api(EndpointKind::Chat);
        let mut o = Observed::default();
        a.message(r#"{"choices":[{"delta":{"role":"assistant","content":""},"finish_reason":null}]}"#, 0.1, &mut o).unwrap();
        a.message(r#"{"choices":[{"delta":{"role":"assistant"},"finish_reason":null}]}"#, 0.1, &mut o).unwrap();
        a.message(r#"{"choices":[{"delta":{"role":"assistant","content":"Hi"}}]}"#, 0.2, &mut o).unwrap();
        a.message(r#"{"choices":[{"delta":{"reasoning_content":"hm","content":"ok"}}]}"#, 0.3, &mut o).unwrap();
        a.message(r#"{"choices":[{"delta":{},"finish_reason":"length"}]}"#, 0.4, &mut o).unwrap();
        let got: Vec<(f64, &str)> = o.chunks.iter().map(|c| (c.at, c.text.as_str())).collect();
        assert_eq!(got, vec![(0.2, "Hi"), (0.3, "hmok"), (0.4, "")]);
    }

    #[test]
    fn an_error_event_fails_the_request_with_its_message() {
        let mut o = Observed::default();
        let err = api(EndpointKind::Completions)
            .message(r#"{"error":{"message":"generation failed: boom","type":"internal"}}"#, 0.1, &mut o)
            .unwrap_err();
        assert!(err.to_string().contains("generation failed: boom"), "{err}");
    }

    #[test]
    fn only_an_unreachable_or_unavailable_server_is_worth_retrying() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        // Bind then drop a listener: nothing listens on that port afterwards.
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let err = rt.block_on(first_model(&http_client().unwrap(), &format!("http://127.0.0.1:{port}"))).unwrap_err();
        assert!(is_retryable(&err), "{err:#}");
        let status = |code: u16| anyhow::Error::new(HttpStatus { status: reqwest::StatusCode::from_u16(code).unwrap(), body: String::new() });
        assert!(is_retryable(&status(503).context("GET /v1/models")));
        assert!(!is_retryable(&status(400)));
        assert!(!is_retryable(&anyhow::anyhow!("not JSON")));
    }

    #[test]
    fn endpoint_kind_follows_the_path() {
        assert_eq!(EndpointKind::from_path("/v1/chat/completions").unwrap(), EndpointKind::Chat);
        assert_eq!(EndpointKind::from_path("/v1/completions").unwrap(), EndpointKind::Completions);
        assert!(EndpointKind::from_path("/v1/embeddings").is_err());
    }
}
