//! `/v1/chat/completions` on a model with a chat template (SmolLM2-135M-Instruct, ChatML):
//! the prompt is the template's, streaming follows OpenAI's chunk protocol, logprobs have
//! the chat shape. Token counts stay small: a decode step is ~30 ms here.

mod serve_support;

use serde_json::{json, Value};
use serve_support::{smollm2, text_of_chunks, Server};

fn chat(messages: Value, extra: Value) -> Value {
    let mut req = json!({"messages": messages, "max_tokens": 8, "temperature": 0});
    for (k, v) in extra.as_object().unwrap() {
        req[k] = v.clone();
    }
    req
}

fn user(text: &str) -> Value {
    json!([{"role": "system", "content": "You are brief."}, {"role": "user", "content": text}])
}

#[test]
fn chat_uses_the_template_streams_like_openai_and_reports_chat_logprobs() {
    let model = smollm2();
    let s = Server::start(&["--model", &model, "--served-model-name", "smol"]);

    // The prompt is exactly the rendered ChatML conversation.
    let (_, tok) = s.post("/tokenize", &json!({"messages": user("What is 2+2?")}));
    let ids = tok["tokens"].as_array().unwrap().clone();
    let (_, de) = s.post("/detokenize", &json!({"tokens": ids}));
    let rendered = de["prompt"].as_str().unwrap();
    assert!(
        rendered.starts_with("<|im_start|>system\nYou are brief.<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n"),
        "{rendered:?}"
    );

    let (status, body) = s.post("/v1/chat/completions", &chat(user("What is 2+2?"), json!({"model": "smol"})));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["object"], "chat.completion");
    let choice = &body["choices"][0];
    assert_eq!(choice["message"]["role"], "assistant");
    let text = choice["message"]["content"].as_str().unwrap().to_string();
    assert!(!text.is_empty());
    assert_eq!(body["usage"]["prompt_tokens"].as_u64().unwrap() as usize, ids.len());

    // Same prompt through /v1/completions with the token ids: same greedy text.
    let (_, comp) = s.post("/v1/completions", &json!({"prompt": ids, "max_tokens": 8, "temperature": 0}));
    assert_eq!(comp["choices"][0]["text"], text.as_str());

    // Streaming: a role delta first, then content, then a finish chunk, then [DONE].
    let frames = s.stream("/v1/chat/completions", &chat(user("What is 2+2?"), json!({"stream": true})));
    let chunks: Vec<Value> = frames[..frames.len() - 1].iter().map(|f| serde_json::from_str(f).unwrap()).collect();
    assert_eq!(chunks[0]["object"], "chat.completion.chunk");
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    assert!(chunks[1..].iter().all(|c| c["choices"][0]["delta"].get("role").is_none()), "role only in the first delta");
    assert!(chunks.last().unwrap()["choices"][0]["finish_reason"].is_string());
    assert!(chunks[..chunks.len() - 1].iter().all(|c| c["choices"][0]["finish_reason"].is_null()));
    assert_eq!(text_of_chunks(&frames, |c| c["delta"]["content"].as_str().map(str::to_string)), text);

    // Chat logprobs: content entries with token, logprob, bytes and top_logprobs.
    let (_, lp) = s.post("/v1/chat/completions", &chat(user("What is 2+2?"), json!({"logprobs": true, "top_logprobs": 2, "max_tokens": 3})));
    let content = lp["choices"][0]["logprobs"]["content"].as_array().unwrap();
    assert_eq!(content.len(), 3);
    for entry in content {
        let token = entry["token"].as_str().unwrap();
        let bytes: Vec<u8> = entry["bytes"].as_array().unwrap().iter().map(|b| b.as_u64().unwrap() as u8).collect();
        assert_eq!(bytes, token.as_bytes());
        assert!(entry["logprob"].as_f64().unwrap() <= 0.0);
        assert_eq!(entry["top_logprobs"].as_array().unwrap().len(), 2);
    }
    let (_, no_lp) = s.post("/v1/chat/completions", &chat(user("What is 2+2?"), json!({"max_tokens": 1})));
    assert!(no_lp["choices"][0]["logprobs"].is_null());
}

#[test]
fn chat_accepts_openai_message_forms_and_rejects_unsupported_parts() {
    let s = Server::start(&["--model", &smollm2()]);
    let messages = json!([
        {"role": "system", "content": [{"type": "text", "text": "You are brief."}]},
        {"role": "user", "content": "Call the tool."},
        {"role": "assistant", "content": null, "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
        {"role": "tool", "content": "42", "tool_call_id": "c1"},
        {"role": "user", "content": [{"type": "text", "text": "And"}, {"type": "text", "text": "now?"}]}
    ]);
    let (status, body) = s.post("/v1/chat/completions", &chat(messages, json!({"max_tokens": 2})));
    assert_eq!(status, 200, "{body}");
    let (status, body) = s.post("/v1/chat/completions", &chat(json!([{"role": "assistant"}, {"role": "user", "content": "hi"}]), json!({"max_tokens": 1})));
    assert_eq!(status, 200, "an assistant message without content is valid: {body}");

    let image = json!([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://x/y.png"}}]}]);
    let (status, body) = s.post("/v1/chat/completions", &chat(image, json!({})));
    assert_eq!(status, 400);
    assert_eq!(body["error"]["param"], "messages[0].content[0]");
    let (status, body) = s.post("/v1/chat/completions", &chat(user("hi"), json!({"top_logprobs": 2})));
    assert_eq!(status, 400, "top_logprobs without logprobs");
    assert_eq!(body["error"]["param"], "top_logprobs");

    // n = 2 streamed: both choices get a role delta and a finish reason; usage counts the prompt once.
    let req = chat(user("Say hi."), json!({"n": 2, "temperature": 1, "seed": 3, "stream": true, "stream_options": {"include_usage": true}, "max_tokens": 3}));
    let frames = s.stream("/v1/chat/completions", &req);
    let chunks: Vec<Value> = frames[..frames.len() - 1].iter().map(|f| serde_json::from_str(f).unwrap()).collect();
    for i in 0..2 {
        let mine: Vec<&Value> = chunks.iter().filter(|c| c["choices"].as_array().is_some_and(|a| !a.is_empty()) && c["choices"][0]["index"] == i).collect();
        assert_eq!(mine[0]["choices"][0]["delta"]["role"], "assistant", "choice {i}");
        assert!(mine.last().unwrap()["choices"][0]["finish_reason"].is_string(), "choice {i}");
    }
    let usage = &chunks.last().unwrap()["usage"];
    let (_, tok) = s.post("/tokenize", &json!({"messages": user("Say hi.")}));
    assert_eq!(usage["prompt_tokens"], tok["count"]);
    assert_eq!(usage["completion_tokens"], 6);
}

#[test]
fn chat_template_flag_gives_a_model_without_one_a_chat_endpoint() {
    // stories260K has no template; SmolLM2's ChatML file renders its conversations.
    let template = serve_support::shared().join("models/smollm2-135m-instruct/chat_template.jinja");
    let s = Server::start(&["--chat-template", template.to_str().unwrap()]);
    let (status, body) = s.post("/v1/chat/completions", &chat(user("Tell me a story"), json!({})));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["usage"]["completion_tokens"], 8);
    let (_, tok) = s.post("/tokenize", &json!({"messages": user("hi")}));
    let (_, de) = s.post("/detokenize", &json!({"tokens": tok["tokens"]}));
    assert!(de["prompt"].as_str().unwrap().contains("<|im_start|>user\nhi<|im_end|>"), "{de}");

    // An unreadable or broken template stops the server before it listens, naming the flag.
    let bad = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(bad.path(), "{% for %}").unwrap();
    for path in [bad.path().to_str().unwrap(), "/nonexistent/template.jinja"] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_kvault"))
            .args(["serve", "--port", "0", "--chat-template", path])
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && stderr.contains("--chat-template") && !stderr.contains("listening"), "{stderr}");
    }
}
