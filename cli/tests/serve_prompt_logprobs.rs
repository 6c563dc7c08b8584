//! Prompt scoring over HTTP: `echo` + `logprobs` (+ `max_tokens: 0`) on /v1/completions returns
//! the prompt tokens' logprobs the way OpenAI and vLLM do, so lm-evaluation-harness's
//! `local-completions` loglikelihood works. The summed continuation logprobs equal the HF
//! reference NLL (SmolLM2 dequantized to f32); lm-eval's own request JSON is replayed verbatim
//! and parsed as its `parse_logprobs` does; vLLM's `prompt_logprobs` shape; streaming; refusals.

mod serve_support;

use serde_json::{json, Value};
use serve_support::{assert_error, shared, smollm2, Server};

fn reference(model: &str) -> Value {
    let text = std::fs::read_to_string(shared().join(format!("models/{model}/reference.json"))).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn ids(v: &Value) -> Vec<u64> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap()).collect()
}

fn f64s(v: &Value) -> Vec<Option<f64>> {
    v.as_array().unwrap().iter().map(Value::as_f64).collect()
}

/// lm-evaluation-harness 0.4.13, `LocalCompletionsAPI.parse_logprobs`, in Rust: for each choice
/// (sorted by index) with its context length, the sum of `token_logprobs[ctxlen:-1]` and whether
/// every one of those tokens was the most likely (`tok == max(top.values())`).
fn lm_eval_parse_logprobs(out: &Value, ctxlens: &[usize]) -> Vec<(f64, bool)> {
    let mut choices = out["choices"].as_array().unwrap().clone();
    choices.sort_by_key(|c| c["index"].as_u64().unwrap());
    choices
        .iter()
        .zip(ctxlens)
        .map(|(choice, &ctxlen)| {
            assert!(ctxlen > 0);
            let lp = &choice["logprobs"];
            let token_logprobs = lp["token_logprobs"].as_array().unwrap();
            let top_logprobs = lp["top_logprobs"].as_array().unwrap();
            let end = token_logprobs.len() - 1;
            let sum = token_logprobs[ctxlen..end].iter().map(|v| v.as_f64().unwrap()).sum();
            let greedy = token_logprobs[ctxlen..end].iter().zip(&top_logprobs[ctxlen..end]).all(|(tok, top)| {
                let best = top.as_object().unwrap().values().map(|v| v.as_f64().unwrap()).fold(f64::MIN, f64::max);
                tok.as_f64().unwrap() == best
            });
            (sum, greedy)
        })
        .collect()
}

fn relative(got: f64, want: f64) -> f64 {
    (got - want).abs() / want.abs()
}

#[test]
fn echoed_prompt_logprobs_sum_to_the_reference_nll_and_lm_evals_requests_work_verbatim() {
    let r = reference("smollm2-135m-instruct");
    let s = Server::start(&["--model", &smollm2(), "--dtype", "f32", "--served-model-name", "smollm2"]);
    let cases = r["nll"].as_array().unwrap();
    let mut prompts = Vec::new();
    let mut ctxlens = Vec::new();
    for case in cases {
        let prompt = ids(&case["prompt_ids"]);
        let continuation = ids(&case["continuation_ids"]);
        let whole: Vec<u64> = prompt.iter().chain(&continuation).copied().collect();
        let want = case["sum_logprob"].as_f64().unwrap();

        // Scoring only: echo, logprobs, max_tokens 0.
        let (status, body) = s.post(
            "/v1/completions",
            &json!({"model": "smollm2", "prompt": whole, "echo": true, "logprobs": 1, "max_tokens": 0, "temperature": 0}),
        );
        assert_eq!(status, 200, "{body}");
        let choice = &body["choices"][0];
        assert_eq!(choice["finish_reason"], "length");
        assert_eq!(body["usage"]["completion_tokens"], 0);
        assert_eq!(body["usage"]["prompt_tokens"].as_u64(), Some(whole.len() as u64));
        let lp = &choice["logprobs"];
        let token_logprobs = f64s(&lp["token_logprobs"]);
        assert_eq!(token_logprobs.len(), whole.len(), "one entry per prompt token");
        assert_eq!(token_logprobs[0], None, "the first token has no logprob");
        assert!(lp["top_logprobs"][0].is_null());
        assert_eq!(lp["tokens"].as_array().unwrap().len(), whole.len());
        assert_eq!(lp["text_offset"].as_array().unwrap().len(), whole.len());
        assert!(choice["text"].as_str().unwrap().ends_with(case["continuation"].as_str().unwrap().trim_end()));
        let sum: f64 = token_logprobs[prompt.len()..].iter().map(|x| x.unwrap()).sum();
        assert!(relative(sum, want) < 1e-3, "{}: summed logprob {sum} vs reference {want}", case["name"]);
        // Token by token too.
        for (j, (got, want)) in token_logprobs[prompt.len()..].iter().zip(f64s(&case["token_logprobs"])).enumerate() {
            assert!((got.unwrap() - want.unwrap()).abs() < 2e-3, "{} token {j}: {got:?} vs {want:?}", case["name"]);
        }
        prompts.push(json!(whole));
        ctxlens.push(prompt.len());
    }

    // lm-evaluation-harness's loglikelihood request, verbatim (`_create_payload(generate=False)`
    // with tokenized requests, batch_size 2): it generates one token and drops it with [:-1].
    let lm_eval_body = json!({
        "model": "smollm2",
        "prompt": prompts,
        "temperature": 0,
        "max_tokens": 1,
        "logprobs": 1,
        "seed": 1234,
        "echo": true,
    });
    let (status, out) = s.post("/v1/completions", &lm_eval_body);
    assert_eq!(status, 200, "{out}");
    let parsed = lm_eval_parse_logprobs(&out, &ctxlens);
    for ((sum, _), case) in parsed.iter().zip(cases) {
        let want = case["sum_logprob"].as_f64().unwrap();
        assert!(relative(*sum, want) < 1e-3, "lm-eval parse of {}: {sum} vs {want}", case["name"]);
    }

    // A greedy continuation is greedy to lm-eval (`is_greedy`): the reference's argmax path of
    // a prompt whose top-1/top-2 margins are clear.
    let p = r["prompts"].as_array().unwrap().iter().find(|p| p["greedy"]["min_margin"].as_f64().unwrap() > 0.05).expect("a robust prompt");
    let ctx = ids(&p["input_ids"]);
    let greedy: Vec<u64> = ids(&p["greedy"]["ids"])[..16].to_vec();
    let whole: Vec<u64> = ctx.iter().chain(&greedy).copied().collect();
    let mut body = lm_eval_body.clone();
    body["prompt"] = json!([whole]);
    let (_, out) = s.post("/v1/completions", &body);
    let (_, is_greedy) = lm_eval_parse_logprobs(&out, &[ctx.len()])[0];
    assert!(is_greedy, "the reference's greedy continuation is greedy: {out}");

    // The policy to score comes in the model name (all lm-eval lets a user set): a small
    // streaming budget evicts, so the same text scores differently, through the same path.
    let mut body = lm_eval_body.clone();
    body["model"] = json!("smollm2?kv_policy=streaming&kv_budget=64");
    let (status, out) = s.post("/v1/completions", &body);
    assert_eq!(status, 200, "{out}");
    let budgeted = lm_eval_parse_logprobs(&out, &ctxlens);
    for ((full, _), (small, _)) in parsed.iter().zip(&budgeted) {
        assert!(small.is_finite() && (small - full).abs() > 1e-3, "streaming 64 scored {small}, full {full}");
    }
    let mut body = lm_eval_body;
    body["model"] = json!("smollm2?kv_policy=lru");
    let (status, out) = s.post("/v1/completions", &body);
    assert_error(status, &out, 400, Some("model"), "a bad policy in the model name");
    s.wait_idle(std::time::Duration::from_secs(30));
}

#[test]
fn prompt_logprobs_have_vllms_shape_and_streaming_echoes_scores_first() {
    let s = Server::start(&[]);
    let prompt = "Once upon a time, there was a little girl";
    let (_, tok) = s.post("/tokenize", &json!({"prompt": prompt}));
    let n_prompt = tok["count"].as_u64().unwrap() as usize;

    // vLLM's prompt_logprobs: null, then {token_id: {logprob, rank, decoded_token}} with the
    // prompt token and the top-2.
    let (status, body) = s.post("/v1/completions", &json!({"prompt": prompt, "prompt_logprobs": 2, "max_tokens": 2, "temperature": 0}));
    assert_eq!(status, 200, "{body}");
    let pl = body["choices"][0]["prompt_logprobs"].as_array().unwrap();
    assert_eq!(pl.len(), n_prompt);
    assert!(pl[0].is_null());
    for (i, entry) in pl[1..].iter().enumerate() {
        let map = entry.as_object().unwrap();
        let own = tok["tokens"][i + 1].as_u64().unwrap().to_string();
        assert!(map.contains_key(&own), "position {}: the prompt token is in the map: {entry}", i + 1);
        assert!((2..=3).contains(&map.len()), "{entry}");
        assert!(map.values().any(|v| v["rank"] == 1));
        for v in map.values() {
            assert!(v["logprob"].as_f64().unwrap() <= 0.0 && v["decoded_token"].is_string());
        }
    }
    assert!(body["choices"][0]["logprobs"].is_null(), "prompt_logprobs alone adds no completion logprobs");

    // Echo + logprobs: the same prompt scores, in OpenAI's shape, before the generated tokens.
    let (_, echo) = s.post("/v1/completions", &json!({"prompt": prompt, "echo": true, "logprobs": 2, "max_tokens": 3, "temperature": 0}));
    let lp = &echo["choices"][0]["logprobs"];
    assert_eq!(lp["tokens"].as_array().unwrap().len(), n_prompt + 3);
    let scored = f64s(&lp["token_logprobs"]);
    for (i, entry) in pl[1..].iter().enumerate() {
        let own = tok["tokens"][i + 1].as_u64().unwrap().to_string();
        assert!((entry[&own]["logprob"].as_f64().unwrap() - scored[i + 1].unwrap()).abs() < 1e-6);
    }
    assert!(echo["choices"][0]["text"].as_str().unwrap().starts_with(prompt));

    // Streaming: the first chunk is the echo, carrying the prompt's logprobs.
    let frames = s.stream("/v1/completions", &json!({"prompt": prompt, "echo": true, "logprobs": 2, "max_tokens": 3, "temperature": 0, "stream": true}));
    let first: Value = serde_json::from_str(&frames[0]).unwrap();
    assert_eq!(first["choices"][0]["text"], prompt);
    assert_eq!(f64s(&first["choices"][0]["logprobs"]["token_logprobs"]), scored[..n_prompt].to_vec());
    let streamed: usize = frames[..frames.len() - 1]
        .iter()
        .map(|f| serde_json::from_str::<Value>(f).unwrap())
        .map(|v| v["choices"][0]["logprobs"]["tokens"].as_array().map_or(0, Vec::len))
        .sum();
    assert_eq!(streamed, n_prompt + 3);
    // max_tokens 0 streams the echo and the finish.
    let frames = s.stream("/v1/completions", &json!({"prompt": prompt, "echo": true, "max_tokens": 0, "stream": true}));
    let texts: String = frames[..frames.len() - 1].iter().map(|f| serde_json::from_str::<Value>(f).unwrap()["choices"][0]["text"].as_str().unwrap().to_string()).collect();
    assert_eq!(texts, prompt);

    // Refusals name their field.
    let cases = [
        (json!({"prompt": prompt, "max_tokens": 0}), "max_tokens"),
        (json!({"prompt": prompt, "max_tokens": 0, "logprobs": 1}), "max_tokens"),
        (json!({"prompt": prompt, "prompt_logprobs": 21}), "prompt_logprobs"),
        (json!({"prompt": prompt, "echo": true, "logprobs": 21}), "logprobs"),
        (json!({"prompt": prompt, "prompt_logprobs": 1, "stream": true}), "prompt_logprobs"),
        (json!({"prompt": prompt, "n": 2000}), "n"),
        (json!({"prompt": prompt, "max_tokens": u64::MAX}), "max_tokens"),
    ];
    for (body, param) in cases {
        let (status, out) = s.post("/v1/completions", &body);
        assert_error(status, &out, 400, Some(param), &body.to_string());
    }
    s.wait_idle(std::time::Duration::from_secs(30));
}

#[test]
fn chat_prompt_logprobs_score_the_rendered_template() {
    let s = Server::start(&["--model", &smollm2()]);
    let body = json!({"messages": [{"role": "user", "content": "What is 2+2?"}], "prompt_logprobs": 1, "max_tokens": 0});
    let (status, out) = s.post("/v1/chat/completions", &body);
    assert_eq!(status, 200, "{out}");
    let (_, tok) = s.post("/tokenize", &json!({"messages": body["messages"]}));
    let pl = out["prompt_logprobs"].as_array().unwrap();
    assert_eq!(pl.len(), tok["count"].as_u64().unwrap() as usize);
    assert!(pl[0].is_null() && pl[1].is_object());
    assert_eq!(out["choices"][0]["message"]["content"], "");
    assert_eq!(out["usage"]["completion_tokens"], 0);
    let (status, out) = s.post("/v1/chat/completions", &json!({"messages": body["messages"], "max_tokens": 0}));
    assert_error(status, &out, 400, Some("max_tokens"), "chat max_tokens 0 without scoring");
    s.wait_idle(std::time::Duration::from_secs(30));
}
