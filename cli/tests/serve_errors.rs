//! Every refusal of `kvault serve` has its HTTP status and a well-formed OpenAI error object
//! naming the parameter, and none of them disturbs a request running at the same time.

mod serve_support;

use std::thread;

use serde_json::{json, Value};
use serve_support::{assert_error, text_of_chunks, Server};

#[test]
fn invalid_requests_get_openai_errors_without_disturbing_a_running_stream() {
    let s = Server::start(&[]);
    let long_req = json!({"prompt": "Once upon a time", "max_tokens": 400, "temperature": 0, "ignore_eos": true, "stream": true});
    let alone = text_of_chunks(&s.stream("/v1/completions", &long_req), |c| c["text"].as_str().map(str::to_string));

    let base = s.base.clone();
    let concurrent = thread::spawn(move || {
        let client = reqwest::blocking::Client::new();
        let text = client.post(format!("{base}/v1/completions")).json(&long_req).send().unwrap().text().unwrap();
        text
    });

    let long_prompt = "Once upon a time ".repeat(120);
    let cases: Vec<(&str, Value, u16, Option<&str>)> = vec![
        ("/v1/completions", json!({"prompt": "hi", "temperature": -1}), 400, Some("temperature")),
        ("/v1/completions", json!({"prompt": "hi", "top_p": 1.5}), 400, Some("top_p")),
        ("/v1/completions", json!({"prompt": "hi", "temperature": "hot"}), 400, Some("temperature")),
        ("/v1/completions", json!({"prompt": "hi", "max_tokens": 0}), 400, Some("max_tokens")),
        ("/v1/completions", json!({"prompt": "hi", "n": 0}), 400, Some("n")),
        ("/v1/completions", json!({"prompt": "hi", "logprobs": 21}), 400, Some("logprobs")),
        ("/v1/completions", json!({"prompt": "hi", "presence_penalty": 3}), 400, Some("presence_penalty")),
        ("/v1/completions", json!({"prompt": "hi", "logit_bias": {"999999": 1}}), 400, Some("logit_bias")),
        ("/v1/completions", json!({"prompt": "hi", "stop": 7}), 400, Some("stop")),
        ("/v1/completions", json!({"prompt": "hi", "suffix": "end"}), 400, Some("suffix")),
        ("/v1/completions", json!({"prompt": [1, 2, 99999]}), 400, Some("prompt")),
        ("/v1/completions", json!({"prompt": []}), 400, Some("prompt")),
        ("/v1/completions", json!({"prompt": {"text": "hi"}}), 400, Some("prompt")),
        ("/v1/completions", json!({"max_tokens": 3}), 400, Some("prompt")),
        ("/v1/completions", json!({"prompt": "hi", "stream_options": {"include_usage": true}}), 400, Some("stream_options")),
        ("/v1/completions", json!({"prompt": "hi", "model": "gpt-4"}), 404, Some("model")),
        ("/v1/completions", json!({"prompt": long_prompt, "max_tokens": 100}), 400, Some("max_tokens")),
        // stories260K has no chat template.
        ("/v1/chat/completions", json!({"messages": [{"role": "user", "content": "hi"}]}), 400, Some("messages")),
        ("/v1/chat/completions", json!({"messages": [{"role": "wizard", "content": "hi"}]}), 400, Some("messages[0].role")),
        ("/v1/chat/completions", json!({"messages": "hi"}), 400, Some("messages")),
        ("/v1/chat/completions", json!({"messages": [{"role": "user", "content": "x"}], "top_logprobs": 30, "logprobs": true}), 400, Some("top_logprobs")),
        ("/detokenize", json!({"tokens": [1, 99999]}), 400, Some("tokens")),
        ("/tokenize", json!({}), 400, Some("prompt")),
    ];
    for (path, body, status, param) in &cases {
        let (got, resp) = s.post(path, body);
        assert_error(got, &resp, *status, *param, &format!("{path} {body}"));
    }

    // Context overflow says both numbers.
    let (_, resp) = s.post("/v1/completions", &json!({"prompt": long_prompt, "max_tokens": 100}));
    let msg = resp["error"]["message"].as_str().unwrap();
    assert!(msg.contains("512") && msg.contains("100"), "{msg}");

    // Malformed JSON, an empty body and a wrong content type are 400s, not axum's 415/422.
    for (body, headers) in [("{\"prompt\": ", vec![("content-type", "application/json")]), ("", vec![]), ("not json", vec![("content-type", "text/plain")])] {
        let (got, resp) = s.post_raw("/v1/completions", body, &headers);
        assert_error(got, &resp, 400, None, &format!("body {body:?}"));
    }
    // Unknown routes and methods.
    let r = s.client().get(s.url("/v1/nothing")).send().unwrap();
    assert_eq!(r.status(), 404);
    assert_error(404, &r.json().unwrap(), 404, None, "unknown route");
    let r = s.client().get(s.url("/v1/completions")).send().unwrap();
    assert_eq!(r.status(), 405);
    // Unknown extra fields are ignored, as OpenAI and vLLM do.
    let (got, resp) = s.post("/v1/completions", &json!({"prompt": "hi", "max_tokens": 2, "frobnicate": true, "user": "u1"}));
    assert_eq!(got, 200, "{resp}");

    let during = concurrent.join().unwrap();
    let frames: Vec<String> = during.split("\n\n").filter(|f| !f.is_empty()).map(|f| f.trim_start_matches("data: ").to_string()).collect();
    assert_eq!(text_of_chunks(&frames, |c| c["text"].as_str().map(str::to_string)), alone, "the concurrent stream is unaffected");
    s.wait_idle(std::time::Duration::from_secs(30));
}

#[test]
fn api_key_is_required_on_v1_routes_only() {
    let s = Server::start(&["--api-key", "sekrit"]);
    let body = json!({"prompt": "hi", "max_tokens": 2});
    let (status, resp) = s.post("/v1/completions", &body);
    assert_error(status, &resp, 401, None, "no key");
    let r = s.client().post(s.url("/v1/completions")).bearer_auth("wrong").json(&body).send().unwrap();
    assert_eq!(r.status(), 401);
    let r = s.client().post(s.url("/v1/completions")).bearer_auth("sekrit").json(&body).send().unwrap();
    assert_eq!(r.status(), 200);
    let r = s.client().get(s.url("/v1/models")).send().unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(s.get("/health").0, 200, "health stays open for orchestrators");
    assert_eq!(s.get("/metrics").0, 200, "metrics stay open for scrapers");
}

#[test]
fn a_full_queue_is_refused_with_503_and_recovers() {
    let s = Server::start(&["--max-num-seqs", "1", "--max-queued-requests", "0"]);
    let req = json!({"prompt": "Once upon a time", "max_tokens": 480, "temperature": 0, "ignore_eos": true, "stream": true});
    let (sock, seen) = serve_support::open_stream(&s.host_port(), "/v1/completions", &req);
    let (status, resp) = s.post("/v1/completions", &json!({"prompt": "hi", "max_tokens": 2}));
    assert_error(status, &resp, 503, None, "queue full");
    assert_eq!(resp["error"]["code"], "queue_full");
    let full = serve_support::read_to_end(sock, seen);
    assert!(full.contains("[DONE]"));
    s.wait_idle(std::time::Duration::from_secs(30));
    let (status, _) = s.post("/v1/completions", &json!({"prompt": "hi", "max_tokens": 2}));
    assert_eq!(status, 200, "accepted again once the queue drained");
}
