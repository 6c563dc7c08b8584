//! `eval kv --base-url`: the same windows scored by a running OpenAI-compatible server (kvault
//! serve or any server with `echo` + `logprobs` + `max_tokens: 0` and the `kv_*` fields), as
//! the deployment serves them: its own prefill chunks, its own batching.
//!
//! The OpenAI API returns each prompt token's logprob and the top alternatives, not whole
//! distributions, so remotely the perplexity (and the full cache's on the same positions) and
//! top-1 agreement are exact, and KL is not reported.
//!
//! Must not know: the engine; HTTP in, tallies out.

use anyhow::{bail, Context, Result};
use indicatif::ProgressBar;
use kvault_engine::kv_policy::KvPolicy;
use serde_json::{json, Value};

use super::metrics::Tally;
use super::score::{is_scored, Scored};
use crate::kv;

/// Per prompt position (from token 1): the token's logprob and the most likely token's text.
type Scores = Vec<(f64, String)>;

pub fn score(base_url: &str, model: Option<&str>, windows: &[Vec<u32>], policies: &[KvPolicy], bar: &ProgressBar) -> Result<(Tally, Vec<Scored>)> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let client = reqwest::Client::new();
    let url = format!("{}/v1/completions", base_url.trim_end_matches('/'));
    let mut reference = Tally::default();
    let mut scored: Vec<Scored> = policies.iter().map(|&policy| Scored { policy, tally: Tally::default() }).collect();
    for (w, window) in windows.iter().enumerate() {
        // Every run of a window at once, so the server batches them as it would.
        let runs: Vec<KvPolicy> = std::iter::once(KvPolicy::Full).chain(policies.iter().copied()).collect();
        let results = runtime.block_on(async {
            let mut set = tokio::task::JoinSet::new();
            for (i, policy) in runs.iter().enumerate() {
                let body = body(model, window, policy);
                let (client, url) = (client.clone(), url.clone());
                set.spawn(async move { (i, request(&client, &url, body).await) });
            }
            let mut out: Vec<Option<Result<Scores>>> = (0..runs.len()).map(|_| None).collect();
            while let Some(joined) = set.join_next().await {
                let (i, r) = joined.context("a request task")?;
                out[i] = Some(r);
            }
            anyhow::Ok(out)
        })?;
        let mut results = results.into_iter();
        let full = results.next().flatten().context("missing reference")?.with_context(|| format!("window {w}, the full cache"))?;
        expect_len(&full, window, "the full cache")?;
        for (lp, _) in &full {
            reference.add_observed(-lp, -lp, true);
        }
        bar.inc(full.len() as u64);
        for (p, result) in results.enumerate() {
            let policy = policies[p];
            let got = result.context("missing result")?.with_context(|| format!("window {w}, {}", policy.describe()))?;
            expect_len(&got, window, &policy.describe())?;
            for (pos, ((lp, top), (lp_full, top_full))) in got.iter().zip(&full).enumerate() {
                if is_scored(&policy, pos) {
                    scored[p].tally.add_observed(-lp, -lp_full, top == top_full);
                }
            }
            bar.inc(got.len() as u64);
        }
    }
    Ok((reference, scored))
}

fn body(model: Option<&str>, window: &[u32], policy: &KvPolicy) -> Value {
    let mut body = json!({
        "prompt": window,
        "max_tokens": 0,
        "echo": true,
        "logprobs": 1,
        "temperature": 0.0,
    });
    if let Some(m) = model {
        body["model"] = json!(m);
    }
    if let (Some(obj), Value::Object(fields)) = (body.as_object_mut(), kv::request_fields(policy)) {
        obj.extend(fields);
    }
    body
}

async fn request(client: &reqwest::Client, url: &str, body: Value) -> Result<Scores> {
    let resp = client.post(url).json(&body).send().await.with_context(|| format!("POST {url}"))?;
    let status = resp.status();
    let text = resp.text().await?;
    if !status.is_success() {
        bail!("{url} answered {status}: {text}");
    }
    let v: Value = serde_json::from_str(&text).with_context(|| format!("{url}: not JSON"))?;
    parse(&v).with_context(|| format!("{url}: the response has no echoed prompt logprobs"))
}

/// `choices[0].logprobs`: `token_logprobs` and `top_logprobs`, both `null` for the first token.
fn parse(v: &Value) -> Result<Scores> {
    let lp = &v["choices"][0]["logprobs"];
    let (Some(tokens), Some(tops)) = (lp["token_logprobs"].as_array(), lp["top_logprobs"].as_array()) else {
        bail!("no logprobs.token_logprobs / top_logprobs")
    };
    let mut out = Vec::with_capacity(tokens.len().saturating_sub(1));
    for (t, top) in tokens.iter().zip(tops).skip(1) {
        let logprob = t.as_f64().context("a prompt token without a logprob")?;
        let best = top
            .as_object()
            .and_then(|m| m.iter().max_by(|a, b| a.1.as_f64().unwrap_or(f64::MIN).total_cmp(&b.1.as_f64().unwrap_or(f64::MIN))))
            .map(|(k, _)| k.clone())
            .context("a prompt token without top_logprobs")?;
        out.push((logprob, best));
    }
    Ok(out)
}

fn expect_len(scores: &Scores, window: &[u32], what: &str) -> Result<()> {
    if scores.len() != window.len() - 1 {
        bail!("{what}: the server scored {} prompt tokens, expected {}", scores.len(), window.len() - 1);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echoed_prompt_logprobs_parse_from_the_openai_shape() {
        let v = json!({"choices": [{"logprobs": {
            "tokens": ["a", "b", "c"],
            "token_logprobs": [null, -0.5, -2.0],
            "top_logprobs": [null, {"b": -0.5}, {"x": -0.1, "c": -2.0}],
        }}]});
        assert_eq!(parse(&v).unwrap(), vec![(-0.5, "b".to_string()), (-2.0, "x".to_string())]);
        assert!(parse(&json!({"choices": [{"text": "no logprobs"}]})).is_err());
    }
}
