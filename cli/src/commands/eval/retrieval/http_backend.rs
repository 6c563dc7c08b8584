//! Answers from a running OpenAI-compatible server: each job is one non-streaming
//! `/v1/completions` request whose prompt is the token ids (so the server reads exactly the
//! prompt the in-process run reads), greedy, with the KV policy spelled out in `kv_*` fields —
//! `full` too, so a server whose default policy is a budget still runs the full cache. At most
//! `--max-concurrency` requests are in flight.
//!
//! Before the run: the model name and context limit from `/v1/models`, and, where the server
//! has `/tokenize` (kvault, vLLM), a check that it tokenizes as the local tokenizer does.
//!
//! Must not know: tasks, scoring or the engine.

use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use futures_util::{StreamExt, TryStreamExt};
use indicatif::ProgressBar;
use kvault_engine::kv_policy::KvPolicy;
use kvault_models::tokenizer::Tokenizer;
use serde_json::{json, Value};

use super::backend::{Job, Limits};

pub struct HttpBackend {
    runtime: tokio::runtime::Runtime,
    client: reqwest::Client,
    base_url: String,
    /// The served model's name, sent with every request.
    model: String,
    max_model_len: Option<usize>,
    max_concurrency: usize,
}

impl HttpBackend {
    /// Reaches the server and learns its model (`model`, or the first it lists) and limit.
    pub fn connect(base_url: &str, model: Option<&str>, max_concurrency: usize) -> Result<Self> {
        let base_url = base_url.trim_end_matches('/').to_string();
        if !(base_url.starts_with("http://") || base_url.starts_with("https://")) {
            bail!("--base-url {base_url}: expected http://HOST:PORT");
        }
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        // No overall timeout shorter than a long prefill on a busy CPU server; a bounded connect.
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(6 * 3600))
            .connect_timeout(Duration::from_secs(30))
            .build()
            .context("cannot build the HTTP client")?;
        let url = format!("{base_url}/v1/models");
        let listing = runtime
            .block_on(get_json(&client, &url))
            .with_context(|| format!("--base-url {base_url}: is the server running?"))?;
        let models = listing["data"].as_array().cloned().unwrap_or_default();
        let card = match model {
            Some(name) => models.iter().find(|m| m["id"] == name).cloned(),
            None => models.first().cloned(),
        };
        let (model, max_model_len) = match (model, card) {
            (_, Some(card)) => (
                card["id"].as_str().context("GET /v1/models: a model without an id")?.to_string(),
                card["max_model_len"].as_u64().map(|n| n as usize),
            ),
            // A server that lists other names may still route this one; its limit is unknown.
            (Some(name), None) => (name.to_string(), None),
            (None, None) => bail!("GET {url}: the server lists no models; name one with --model"),
        };
        Ok(Self { runtime, client, base_url, model, max_model_len, max_concurrency })
    }

    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    pub fn model(&self) -> &str {
        &self.model
    }

    /// The server's full-cache limit; a budgeted request's limit (the model's context) is not
    /// published, so the server judges those.
    pub fn limits(&self) -> Limits {
        Limits { full: self.max_model_len, budgeted: None }
    }

    /// Fails when the server tokenizes `probe` differently from `tokenizer` (the prompts would
    /// be read as other words). A server without `/tokenize` is taken on trust; says so.
    pub fn check_tokenizer(&self, tokenizer: &Tokenizer, tokenizer_name: &str, probe: &str) -> Result<()> {
        let url = format!("{}/tokenize", self.base_url);
        let body = json!({"model": self.model, "prompt": probe, "add_special_tokens": false});
        let reply = self.runtime.block_on(async {
            let resp = self.client.post(&url).json(&body).send().await.with_context(|| format!("POST {url}"))?;
            if resp.status() == reqwest::StatusCode::NOT_FOUND {
                return Ok(None);
            }
            read_json(resp, &url).await.map(Some)
        })?;
        let Some(reply) = reply else {
            eprintln!("note: {url} does not exist; cannot check that the server tokenizes as {tokenizer_name}");
            return Ok(());
        };
        let served: Vec<u64> = reply["tokens"].as_array().map(|t| t.iter().filter_map(Value::as_u64).collect()).unwrap_or_default();
        let local: Vec<u64> = tokenizer.encode(probe, false)?.into_iter().map(u64::from).collect();
        if served != local {
            bail!(
                "--tokenizer {tokenizer_name}: the server's model `{}` tokenizes differently; pass its tokenizer with --tokenizer",
                self.model
            );
        }
        Ok(())
    }

    pub fn answer(&self, jobs: &[Job], bar: &ProgressBar) -> Result<Vec<String>> {
        let url = format!("{}/v1/completions", self.base_url);
        self.runtime.block_on(
            futures_util::stream::iter(jobs.iter().enumerate())
                .map(|(i, job)| {
                    let url = &url;
                    async move {
                        let text = self.complete(url, job).await.with_context(|| format!("request {i}: POST {url}"))?;
                        bar.inc(1);
                        Ok::<String, anyhow::Error>(text)
                    }
                })
                .buffered(self.max_concurrency)
                .try_collect(),
        )
    }

    async fn complete(&self, url: &str, job: &Job) -> Result<String> {
        let body = with_policy_fields(
            json!({"model": self.model, "prompt": job.prompt.as_ref(), "max_tokens": job.max_tokens, "temperature": 0}),
            &job.policy,
        );
        let resp = self.client.post(url).json(&body).send().await?;
        let reply = read_json(resp, url).await?;
        reply["choices"][0]["text"].as_str().map(str::to_string).ok_or_else(|| anyhow!("the response has no choices[0].text"))
    }
}

/// `body` with the `kv_*` request fields that make the server run exactly `policy` (the same fields
/// every kvault client sends: [`crate::kv::request_fields`]).
fn with_policy_fields(mut body: Value, policy: &KvPolicy) -> Value {
    if let (Some(body), Value::Object(fields)) = (body.as_object_mut(), crate::kv::request_fields(policy)) {
        body.extend(fields);
    }
    body
}

async fn get_json(client: &reqwest::Client, url: &str) -> Result<Value> {
    let resp = client.get(url).send().await.with_context(|| format!("GET {url}"))?;
    read_json(resp, url).await
}

/// The body as JSON; a non-success status is an error carrying the server's own message
/// (OpenAI error objects: `error.message`).
async fn read_json(resp: reqwest::Response, url: &str) -> Result<Value> {
    let status = resp.status();
    let text = resp.text().await.with_context(|| format!("{url}: the response broke off"))?;
    let body: Option<Value> = serde_json::from_str(&text).ok();
    if !status.is_success() {
        let message = body
            .as_ref()
            .and_then(|b| b["error"]["message"].as_str().map(str::to_string))
            .unwrap_or_else(|| text.chars().take(300).collect());
        bail!("HTTP {status}: {message}");
    }
    body.ok_or_else(|| anyhow!("{url}: the response is not JSON"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvault_engine::kv_policy::Pooling;

    #[test]
    fn every_policy_parameter_is_sent_and_full_is_explicit() {
        let sent = |p: &KvPolicy| with_policy_fields(json!({"prompt": "p"}), p);
        assert_eq!(sent(&KvPolicy::Full), json!({"prompt": "p", "kv_policy": "full"}));
        assert_eq!(
            sent(&KvPolicy::Streaming { budget: 64, sink_tokens: 4 }),
            json!({"prompt": "p", "kv_policy": "streaming", "kv_budget": 64, "kv_sink_tokens": 4})
        );
        assert_eq!(
            sent(&KvPolicy::H2o { budget: 64, recent_window: 32 }),
            json!({"prompt": "p", "kv_policy": "h2o", "kv_budget": 64, "kv_recent_window": 32})
        );
        assert_eq!(
            sent(&KvPolicy::SnapKv { budget: 64, window: 8, kernel: 3, pooling: Pooling::Max }),
            json!({"prompt": "p", "kv_policy": "snapkv", "kv_budget": 64, "kv_snapkv_window": 8, "kv_snapkv_kernel": 3,
                   "kv_snapkv_pooling": "max"})
        );
        assert_eq!(sent(&KvPolicy::TrimKv { budget: 64 }), json!({"prompt": "p", "kv_policy": "trimkv", "kv_budget": 64}));
    }

    #[test]
    fn an_unreachable_server_is_an_error_naming_the_url() {
        // Bind then drop a listener: nothing listens on that port afterwards.
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let err = HttpBackend::connect(&format!("http://127.0.0.1:{port}/"), None, 1).err().unwrap();
        let err = format!("{err:#}");
        assert!(err.starts_with(&format!("--base-url http://127.0.0.1:{port}: is the server running?")), "{err}");
        assert!(format!("{:#}", HttpBackend::connect("localhost:8000", None, 1).err().unwrap()).contains("expected http://"));
    }
}
