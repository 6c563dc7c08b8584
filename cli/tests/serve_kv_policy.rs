//! The per-request KV policy over HTTP: the `kv_*` fields of /v1/completions and
//! /v1/chat/completions, the `--kv-*` server defaults they overlay, and the KV metric families,
//! against the real `kvault serve`.
//!
//! The last two tests need the engine to evict (budgeted requests dropping tokens, per-policy
//! counters, refusing a budget larger than the cache); the others test what the server itself
//! guarantees.

mod serve_support;

use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};
use serve_support::{assert_error, smollm2, text_of_chunks, Server};

const POLICIES: [&str; 4] = ["full", "streaming", "h2o", "snapkv"];

/// `base` with the `kv` fields added.
fn with(base: &Value, kv: &Value) -> Value {
    let mut body = base.clone();
    for (k, v) in kv.as_object().expect("kv fields are an object") {
        body[k] = v.clone();
    }
    body
}

fn completion(prompt: &str, max_tokens: usize) -> Value {
    json!({"prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "ignore_eos": true})
}

fn text(s: &Server, body: &Value) -> String {
    let (status, resp) = s.post("/v1/completions", body);
    assert_eq!(status, 200, "{body}: {resp}");
    resp["choices"][0]["text"].as_str().unwrap().to_string()
}

#[test]
fn every_bad_kv_field_is_a_400_naming_it_on_both_endpoints() {
    let s = Server::start(&["--model", &smollm2()]);
    let cases: Vec<(Value, &str)> = vec![
        (json!({"kv_policy": "lru"}), "kv_policy"),
        (json!({"kv_policy": 7}), "kv_policy"),
        (json!({"kv_policy": ["h2o"]}), "kv_policy"),
        (json!({"kv_policy": "h2o"}), "kv_budget"),
        (json!({"kv_policy": "h2o", "kv_budget": 0}), "kv_budget"),
        (json!({"kv_policy": "h2o", "kv_budget": -8}), "kv_budget"),
        (json!({"kv_policy": "h2o", "kv_budget": 12.5}), "kv_budget"),
        (json!({"kv_policy": "h2o", "kv_budget": "64"}), "kv_budget"),
        (json!({"kv_policy": "h2o", "kv_budget": true}), "kv_budget"),
        (json!({"kv_budget": 64}), "kv_budget"),
        (json!({"kv_policy": "full", "kv_budget": 64}), "kv_budget"),
        (json!({"kv_policy": "streaming", "kv_budget": 4, "kv_sink_tokens": 4}), "kv_budget"),
        (json!({"kv_policy": "h2o", "kv_budget": 16, "kv_recent_window": 32}), "kv_budget"),
        (json!({"kv_policy": "snapkv", "kv_budget": 16, "kv_snapkv_window": 32}), "kv_budget"),
        (json!({"kv_policy": "snapkv", "kv_budget": 64, "kv_snapkv_window": 0}), "kv_snapkv_window"),
        (json!({"kv_policy": "snapkv", "kv_budget": 64, "kv_snapkv_kernel": 4}), "kv_snapkv_kernel"),
        (json!({"kv_policy": "snapkv", "kv_budget": 64, "kv_snapkv_kernel": 3.0}), "kv_snapkv_kernel"),
        (json!({"kv_policy": "snapkv", "kv_budget": 64, "kv_snapkv_pooling": "median"}), "kv_snapkv_pooling"),
        (json!({"kv_policy": "snapkv", "kv_budget": 64, "kv_snapkv_pooling": 1}), "kv_snapkv_pooling"),
        (json!({"kv_policy": "streaming", "kv_budget": 64, "kv_sink_tokens": -1}), "kv_sink_tokens"),
        (json!({"kv_policy": "h2o", "kv_budget": 64, "kv_recent_window": "8"}), "kv_recent_window"),
        // A parameter of another policy.
        (json!({"kv_policy": "h2o", "kv_budget": 64, "kv_sink_tokens": 4}), "kv_sink_tokens"),
        (json!({"kv_policy": "streaming", "kv_budget": 64, "kv_recent_window": 8}), "kv_recent_window"),
        (json!({"kv_policy": "h2o", "kv_budget": 64, "kv_snapkv_window": 8}), "kv_snapkv_window"),
        (json!({"kv_policy": "streaming", "kv_budget": 64, "kv_snapkv_kernel": 3}), "kv_snapkv_kernel"),
        (json!({"kv_policy": "full", "kv_snapkv_pooling": "max"}), "kv_snapkv_pooling"),
    ];
    let endpoints = [
        ("/v1/completions", json!({"prompt": "Hi", "max_tokens": 2})),
        ("/v1/chat/completions", json!({"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2})),
    ];
    for (path, base) in &endpoints {
        for (kv, param) in &cases {
            for stream in [false, true] {
                let body = with(&with(base, kv), &json!({"stream": stream}));
                let (status, resp) = s.post(path, &body);
                let context = format!("{path} {body}");
                assert_error(status, &resp, 400, Some(param), &context);
                assert_eq!(resp["error"]["type"], "invalid_request_error", "{context}: {resp}");
                let message = resp["error"]["message"].as_str().unwrap();
                assert!(message.contains(param), "{context}: the message should name {param}: {message}");
            }
        }
        // Every policy with valid settings is accepted on the same endpoint.
        for kv in [
            json!({"kv_policy": "full"}),
            json!({"kv_policy": "streaming", "kv_budget": 64, "kv_sink_tokens": 2}),
            json!({"kv_policy": "h2o", "kv_budget": 64, "kv_recent_window": 16}),
            json!({"kv_policy": "snapkv", "kv_budget": 64, "kv_snapkv_window": 16, "kv_snapkv_kernel": 3, "kv_snapkv_pooling": "max"}),
            json!({"kv_policy": null, "kv_budget": null}),
        ] {
            let (status, resp) = s.post(path, &with(base, &kv));
            assert_eq!(status, 200, "{path} {kv}: {resp}");
        }
    }
    assert_eq!(s.get("/health").0, 200, "refusals leave the server healthy");
    s.wait_idle(Duration::from_secs(30));
}

#[test]
fn request_fields_overlay_the_server_defaults() {
    let s = Server::start(&["--kv-policy", "h2o", "--kv-budget", "64"]);
    assert!(s.stderr().contains("default KV policy h2o (budget 64, recent 32)"), "{}", s.stderr());
    let base = completion("Once upon a time", 24);
    // The default budget stands behind a request that only moves the window...
    let (status, resp) = s.post("/v1/completions", &with(&base, &json!({"kv_recent_window": 100})));
    assert_error(status, &resp, 400, Some("kv_budget"), "window over the default budget");
    assert!(resp["error"]["message"].as_str().unwrap().contains("64"), "{resp}");
    // ...the default policy decides which parameters belong...
    let (status, resp) = s.post("/v1/completions", &with(&base, &json!({"kv_sink_tokens": 2})));
    assert_error(status, &resp, 400, Some("kv_sink_tokens"), "a streaming parameter under the h2o default");
    // ...and a request naming its own policy keeps the default budget, not h2o's parameters.
    for kv in [json!({"kv_budget": 32}), json!({"kv_policy": "streaming", "kv_sink_tokens": 2}), json!({"kv_policy": "snapkv"})] {
        let (status, resp) = s.post("/v1/completions", &with(&base, &kv));
        assert_eq!(status, 200, "{kv}: {resp}");
    }
    let (status, resp) = s.post("/v1/completions", &with(&base, &json!({"kv_policy": "full", "kv_budget": 64})));
    assert_error(status, &resp, 400, Some("kv_budget"), "a budget with an explicit full policy");

    // Explicit full gives the plain greedy text, and so does the default h2o with a budget the
    // request never reaches (5 prompt + 24 output tokens < 64): nothing is evicted.
    let explicit_full = text(&s, &with(&base, &json!({"kv_policy": "full"})));
    assert!(!explicit_full.is_empty());
    assert_eq!(text(&s, &base), explicit_full);
    let mut streamed = with(&base, &json!({"kv_policy": "full", "stream": true}));
    let frames = s.stream("/v1/completions", &streamed);
    assert_eq!(text_of_chunks(&frames, |c| c["text"].as_str().map(str::to_string)), explicit_full);
    streamed["kv_policy"] = json!("streaming");
    let frames = s.stream("/v1/completions", &streamed);
    assert_eq!(text_of_chunks(&frames, |c| c["text"].as_str().map(str::to_string)), explicit_full);
    s.wait_idle(Duration::from_secs(30));
}

#[test]
fn bad_kv_server_defaults_fail_before_listening_naming_the_flag() {
    let cases: [(&[&str], &str); 5] = [
        (&["--kv-policy", "h2o"], "--kv-budget"),
        (&["--kv-budget", "64"], "--kv-budget"),
        (&["--kv-policy", "streaming", "--kv-budget", "8", "--kv-sink-tokens", "8"], "--kv-budget"),
        (&["--kv-policy", "h2o", "--kv-budget", "64", "--kv-snapkv-window", "8"], "--kv-snapkv-window"),
        (&["--kv-policy", "lru"], "--kv-policy"),
    ];
    for (args, flag) in cases {
        let o = Command::new(env!("CARGO_BIN_EXE_kvault"))
            .args(["serve", "--port", "0"])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("kvault runs");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{args:?} should fail: {err}");
        assert!(!err.contains("listening on"), "{args:?}: checked before binding: {err}");
        let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("error")).collect();
        assert!(lines.len() == 1 && lines[0].contains(flag), "{args:?}: one error line naming {flag}: {err}");
    }
}

#[test]
fn metrics_list_every_kv_family_with_every_policy_label() {
    let s = Server::start(&[]);
    let (status, _) = s.post("/v1/completions", &with(&completion("Once upon a time", 4), &json!({"kv_policy": "h2o", "kv_budget": 64})));
    assert_eq!(status, 200);
    s.wait_idle(Duration::from_secs(30));
    let (_, text) = s.get("/metrics");
    for (family, kind) in [
        ("kvault:kv_policy_requests_total", "counter"),
        ("kvault:kv_evicted_tokens_total", "counter"),
        ("kvault:kv_tokens_held", "gauge"),
    ] {
        assert!(text.contains(&format!("# TYPE {family} {kind}\n")), "{family} {kind} missing:\n{text}");
        assert!(text.lines().any(|l| l.starts_with(&format!("# HELP {family} "))), "{family} help missing:\n{text}");
    }
    for policy in POLICIES {
        for family in ["kvault:kv_policy_requests_total", "kvault:kv_evicted_tokens_total"] {
            let sample = format!("{family}{{policy=\"{policy}\"}}");
            assert!(s.metric(&sample).is_some_and(|v| v >= 0.0), "{sample} missing:\n{text}");
        }
    }
    assert_eq!(s.metric("kvault:kv_tokens_held"), Some(0.0), "nothing is held once idle");
}

/// Needs the engine's eviction: counters move per policy, and only for the policy that evicted.
#[test]
fn metrics_count_requests_and_evicted_tokens_per_policy() {
    let s = Server::start(&[]);
    let long = "Once upon a time, there was a little girl named Lily. She loved to play outside. ".repeat(4);
    for (policy, kv) in [
        ("h2o", json!({"kv_policy": "h2o", "kv_budget": 32})),
        ("streaming", json!({"kv_policy": "streaming", "kv_budget": 32})),
        ("snapkv", json!({"kv_policy": "snapkv", "kv_budget": 32, "kv_snapkv_window": 8})),
    ] {
        let (status, resp) = s.post("/v1/completions", &with(&completion(&long, 48), &kv));
        assert_eq!(status, 200, "{policy}: {resp}");
        assert!(resp["usage"]["prompt_tokens"].as_u64().unwrap() > 32, "the prompt alone exceeds the budget: {resp}");
        let requests = s.metric(&format!("kvault:kv_policy_requests_total{{policy=\"{policy}\"}}"));
        let evicted = s.metric(&format!("kvault:kv_evicted_tokens_total{{policy=\"{policy}\"}}"));
        assert_eq!(requests, Some(1.0), "{policy}");
        assert!(evicted.is_some_and(|e| e > 0.0), "{policy}: a budget of 32 under a long prompt evicts, got {evicted:?}");
    }
    let (status, _) = s.post("/v1/completions", &completion(&long, 8));
    assert_eq!(status, 200);
    assert_eq!(s.metric("kvault:kv_policy_requests_total{policy=\"full\"}"), Some(1.0));
    assert_eq!(s.metric("kvault:kv_evicted_tokens_total{policy=\"full\"}"), Some(0.0), "full never evicts");
    s.wait_idle(Duration::from_secs(30));
    assert_eq!(s.metric("kvault:kv_tokens_held"), Some(0.0));
}

/// Needs the engine's check: a budget the KV cache could never hold is refused, naming kv_budget.
#[test]
fn a_budget_larger_than_the_cache_is_a_400_naming_kv_budget() {
    let s = Server::start(&["--num-blocks", "16"]);
    let (status, resp) = s.post("/v1/completions", &with(&completion("Once upon a time", 4), &json!({"kv_policy": "h2o", "kv_budget": 100000})));
    assert_error(status, &resp, 400, Some("kv_budget"), "budget over the cache");
    let (status, _) = s.post("/v1/completions", &completion("Once upon a time", 4));
    assert_eq!(status, 200, "the server still serves");
}
