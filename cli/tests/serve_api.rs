//! `kvault serve` endpoints as OpenAI clients use them, against the real binary with the
//! embedded stories260K (no chat template) on a loopback port.

mod serve_support;

use std::process::{Command, Stdio};

use serde_json::{json, Value};
use serve_support::{text_of_chunks, Server};

const PROMPT: &str = "Once upon a time";

fn greedy(max_tokens: usize) -> Value {
    json!({"model": "stories260K", "prompt": PROMPT, "max_tokens": max_tokens, "temperature": 0, "ignore_eos": true})
}

#[test]
fn greedy_completion_over_http_equals_kvault_generate() {
    let s = Server::start(&[]);
    let (status, body) = s.post("/v1/completions", &greedy(48));
    assert_eq!(status, 200, "{body}");
    let out = Command::new(env!("CARGO_BIN_EXE_kvault"))
        .args(["generate", PROMPT, "--temperature", "0", "--max-tokens", "48", "--ignore-eos", "--quiet"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success());
    let cli_text = String::from_utf8(out.stdout).unwrap();
    assert!(!cli_text.is_empty());
    assert_eq!(body["choices"][0]["text"], cli_text);
    assert_eq!(body["object"], "text_completion");
    assert_eq!(body["model"], "stories260K");
    assert_eq!(body["choices"][0]["finish_reason"], "length");
    let usage = &body["usage"];
    assert_eq!(usage["completion_tokens"], 48);
    assert_eq!(usage["total_tokens"].as_u64(), Some(usage["prompt_tokens"].as_u64().unwrap() + 48));
    assert!(usage["prompt_tokens_details"]["cached_tokens"].is_u64());

    // Streaming produces the same text, chunk by chunk, ending with a finish reason and [DONE].
    let mut req = greedy(48);
    req["stream"] = json!(true);
    let frames = s.stream("/v1/completions", &req);
    assert_eq!(text_of_chunks(&frames, |c| c["text"].as_str().map(str::to_string)), cli_text);
    let last: Value = serde_json::from_str(&frames[frames.len() - 2]).unwrap();
    assert_eq!(last["choices"][0]["finish_reason"], "length");
    assert!(last.get("usage").is_none(), "no usage key unless include_usage: {last}");
}

#[test]
fn prompts_as_strings_token_ids_and_lists_give_one_choice_each_in_order() {
    let s = Server::start(&[]);
    let (_, tok) = s.post("/tokenize", &json!({"prompt": PROMPT}));
    let ids = tok["tokens"].clone();
    assert_eq!(tok["count"].as_u64().unwrap() as usize, ids.as_array().unwrap().len());
    assert_eq!(tok["max_model_len"], 512);
    let (_, alone) = s.post("/v1/completions", &greedy(12));
    let expected = alone["choices"][0]["text"].clone();
    for prompt in [json!(ids), json!([PROMPT, "Tom had a boat"]), json!([ids, ids])] {
        let mut req = greedy(12);
        req["prompt"] = prompt.clone();
        let (status, body) = s.post("/v1/completions", &req);
        assert_eq!(status, 200, "{prompt}: {body}");
        let choices = body["choices"].as_array().unwrap();
        assert_eq!(choices[0]["text"], expected, "{prompt}");
        for (i, c) in choices.iter().enumerate() {
            assert_eq!(c["index"], i);
        }
        let n_prompts = if prompt.as_array().unwrap()[0].is_number() { 1 } else { 2 };
        assert_eq!(choices.len(), n_prompts);
        assert_eq!(body["usage"]["completion_tokens"], 12 * n_prompts);
    }
    // Detokenize inverts tokenize (the BOS the tokenizer added shows as text).
    let (status, de) = s.post("/detokenize", &json!({"tokens": ids}));
    assert_eq!(status, 200);
    assert!(de["prompt"].as_str().unwrap().ends_with(PROMPT), "{de}");
}

#[test]
fn n_choices_with_a_seed_are_distinct_reproducible_and_counted_once_per_prompt() {
    let s = Server::start(&[]);
    let req = json!({"prompt": PROMPT, "max_tokens": 20, "temperature": 1.0, "seed": 11, "n": 3, "ignore_eos": true});
    let (status, a) = s.post("/v1/completions", &req);
    assert_eq!(status, 200, "{a}");
    let (_, b) = s.post("/v1/completions", &req);
    let texts = |v: &Value| v["choices"].as_array().unwrap().iter().map(|c| c["text"].as_str().unwrap().to_string()).collect::<Vec<_>>();
    assert_eq!(texts(&a), texts(&b), "same seed, same choices");
    let t = texts(&a);
    assert_eq!(t.len(), 3);
    assert!(t[0] != t[1] || t[1] != t[2], "choices must not all be identical: {t:?}");
    let (_, single) = s.post("/v1/completions", &json!({"prompt": PROMPT, "max_tokens": 1}));
    let prompt_tokens = single["usage"]["prompt_tokens"].clone();
    assert_eq!(a["usage"]["prompt_tokens"], prompt_tokens, "prompt counted once");
    assert_eq!(a["usage"]["completion_tokens"], 60);

    // Streamed: every choice index appears and each ends with its own finish reason.
    let mut sreq = req.clone();
    sreq["stream"] = json!(true);
    let frames = s.stream("/v1/completions", &sreq);
    for i in 0..3 {
        let text = text_of_chunks(&frames, |c| (c["index"] == i).then(|| c["text"].as_str().unwrap().to_string()));
        assert_eq!(text, t[i], "choice {i} streamed = non-streamed");
        let finishes = frames
            .iter()
            .filter(|f| *f != "[DONE]")
            .filter_map(|f| serde_json::from_str::<Value>(f).ok())
            .filter(|v| v["choices"][0]["index"] == i && v["choices"][0]["finish_reason"] == "length")
            .count();
        assert_eq!(finishes, 1, "choice {i}");
    }
}

#[test]
fn logprobs_and_echo_have_openai_shapes() {
    let s = Server::start(&[]);
    let mut req = greedy(6);
    req["logprobs"] = json!(3);
    let (status, body) = s.post("/v1/completions", &req);
    assert_eq!(status, 200, "{body}");
    let lp = &body["choices"][0]["logprobs"];
    let tokens = lp["tokens"].as_array().unwrap();
    assert_eq!(tokens.len(), 6);
    assert_eq!(lp["token_logprobs"].as_array().unwrap().len(), 6);
    assert_eq!(lp["text_offset"].as_array().unwrap().len(), 6);
    assert_eq!(lp["text_offset"][0], 0);
    for (i, top) in lp["top_logprobs"].as_array().unwrap().iter().enumerate() {
        let top = top.as_object().unwrap();
        assert!((1..=3).contains(&top.len()), "{top:?}");
        // Greedy: the chosen token is the most likely, so its logprob is the top value.
        let best = top.values().map(|v| v.as_f64().unwrap()).fold(f64::MIN, f64::max);
        let chosen = lp["token_logprobs"][i].as_f64().unwrap();
        assert!((best - chosen).abs() < 1e-4 && chosen <= 0.0, "token {i}: chosen {chosen}, best {best}");
    }

    let mut echo = greedy(6);
    echo["echo"] = json!(true);
    let (_, e) = s.post("/v1/completions", &echo);
    let (_, plain) = s.post("/v1/completions", &greedy(6));
    assert_eq!(e["choices"][0]["text"].as_str().unwrap(), format!("{PROMPT}{}", plain["choices"][0]["text"].as_str().unwrap()));
    echo["stream"] = json!(true);
    let frames = s.stream("/v1/completions", &echo);
    let first: Value = serde_json::from_str(&frames[0]).unwrap();
    assert_eq!(first["choices"][0]["text"], PROMPT, "the echo comes first when streaming");
}

#[test]
fn stop_strings_end_the_choice_and_are_not_returned() {
    let s = Server::start(&[]);
    let mut req = greedy(64);
    req["stop"] = json!(["Lily"]);
    let (_, body) = s.post("/v1/completions", &req);
    let c = &body["choices"][0];
    assert_eq!(c["text"], ", there was a little girl named ");
    assert_eq!(c["finish_reason"], "stop");
    assert_eq!(c["stop_reason"], "Lily");
    req["stream"] = json!(true);
    let frames = s.stream("/v1/completions", &req);
    assert_eq!(text_of_chunks(&frames, |c| c["text"].as_str().map(str::to_string)), ", there was a little girl named ");
}

#[test]
fn include_usage_adds_null_usage_to_chunks_and_a_final_usage_chunk() {
    let s = Server::start(&[]);
    let mut req = greedy(5);
    req["stream"] = json!(true);
    req["n"] = json!(2);
    req["stream_options"] = json!({"include_usage": true});
    let frames = s.stream("/v1/completions", &req);
    assert_eq!(frames.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> = frames[..frames.len() - 1].iter().map(|f| serde_json::from_str(f).unwrap()).collect();
    let (last, rest) = chunks.split_last().unwrap();
    assert_eq!(last["choices"], json!([]));
    assert_eq!(last["usage"]["completion_tokens"], 10);
    assert!(last["usage"]["prompt_tokens"].as_u64().unwrap() > 0);
    for c in rest {
        assert!(c["usage"].is_null() && c.get("usage").is_some(), "usage: null on ordinary chunks: {c}");
    }
}

#[test]
fn models_version_health_and_metrics_describe_the_server() {
    let s = Server::start(&["--served-model-name", "tiny"]);
    assert_eq!(s.get("/health").0, 200);
    let (_, models) = s.get("/v1/models");
    let models: Value = serde_json::from_str(&models).unwrap();
    assert_eq!(models["object"], "list");
    assert_eq!(models["data"][0]["id"], "tiny");
    assert_eq!(models["data"][0]["object"], "model");
    let (_, version) = s.get("/version");
    let version: Value = serde_json::from_str(&version).unwrap();
    assert!(version["version"].as_str().unwrap().starts_with(env!("CARGO_PKG_VERSION")));

    let (status, body) = s.post("/v1/completions", &json!({"model": "tiny", "prompt": PROMPT, "max_tokens": 8, "temperature": 0, "ignore_eos": true}));
    assert_eq!(status, 200, "{body}");
    // Same prompt again: its full blocks are prefix-cache hits.
    s.post("/v1/completions", &json!({"prompt": format!("{PROMPT} {PROMPT} {PROMPT} {PROMPT} {PROMPT}"), "max_tokens": 2}));
    let (_, again) = s.post("/v1/completions", &json!({"prompt": format!("{PROMPT} {PROMPT} {PROMPT} {PROMPT} {PROMPT}"), "max_tokens": 2}));
    assert!(again["usage"]["prompt_tokens_details"]["cached_tokens"].as_u64().unwrap() > 0, "{again}");
    let (status, text) = s.get("/metrics");
    assert_eq!(status, 200);
    for name in [
        "kvault:num_requests_running", "kvault:num_requests_waiting", "kvault:kv_cache_usage_perc",
        "kvault:prefix_cache_queries_total", "kvault:prefix_cache_hits_total", "kvault:num_preemptions_total",
        "kvault:prompt_tokens_total", "kvault:generation_tokens_total", "kvault:time_to_first_token_seconds_count",
        "kvault:inter_token_latency_seconds_count", "kvault:e2e_request_latency_seconds_count",
        "kvault:request_success_total{finished_reason=\"length\"}", "kvault:good_requests_total", "kvault:sla_checked_requests_total",
    ] {
        assert!(text.lines().any(|l| l.starts_with(name)), "{name} missing:\n{text}");
    }
    assert!(s.metric("kvault:generation_tokens_total").unwrap() >= 12.0);
    assert_eq!(s.metric("kvault:e2e_request_latency_seconds_count"), Some(3.0));
    assert_eq!(s.metric("kvault:sla_checked_requests_total"), Some(3.0));
    // The default SLA (10 s TTFT, 1.5 s gaps) is met by a tiny model.
    assert_eq!(s.metric("kvault:good_requests_total"), Some(3.0));
    assert!(s.metric("kvault:prefix_cache_hits_total").unwrap() > 0.0);
}

#[test]
fn an_impossible_sla_counts_no_good_requests() {
    let s = Server::start(&["--sla-ttft-ms", "0.000001", "--sla-max-itl-ms", "0.000001"]);
    s.post("/v1/completions", &greedy(4));
    assert_eq!(s.metric("kvault:sla_checked_requests_total"), Some(1.0));
    assert_eq!(s.metric("kvault:good_requests_total"), Some(0.0));
}
