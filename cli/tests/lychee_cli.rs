//! `--kv-policy lychee` driven as a user would, through the real binary: `generate` on the
//! embedded model (its own head roles, no flag), `serve` with the shipped SmolLM2 roles taking
//! `"kv_policy": "lychee"` per request, and every refusal as one line or a 400 naming the field:
//! no roles loaded, a budget under two blocks, roles of another model, a corrupt roles file,
//! `eval kv` asked to score lychee in prefill chunks or through a server.

mod serve_support;

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

use serde_json::json;
use serve_support::{assert_error, shared, smollm2, Server};

fn kvault(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kvault")).args(args).stdin(Stdio::null()).output().expect("the kvault binary runs")
}

fn shipped_smollm2_roles() -> String {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../gates/smollm2-135m-instruct/lychee_heads.safetensors");
    assert!(p.is_file(), "shipped roles missing: {}", p.display());
    p.to_string_lossy().into_owned()
}

fn one_line_error(out: &Output) -> String {
    assert!(!out.status.success(), "expected a failure");
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
    assert_eq!(stderr.lines().count(), 1, "not one line: {stderr}");
    assert!(stderr.starts_with("error: "), "{stderr}");
    stderr
}

/// A prompt of several hundred tokens, so a 32-token budget leaves most blocks unread.
fn long_prompt() -> String {
    let text = std::fs::read_to_string(shared().join("data/texts/alice_in_wonderland.txt")).unwrap();
    text[3000..5000].to_string()
}

#[test]
fn generate_on_the_embedded_model_needs_no_roles_flag_and_evicts_nothing() {
    let prompt = long_prompt();
    let out = kvault(&["generate", &prompt[..800], "--max-tokens", "40", "--temperature", "0", "--kv-policy", "lychee", "--kv-budget", "32"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("KV lychee (budget 32, sinks 4, recent 8)") && err.contains(" 0 evicted"), "{err}");
    assert!(!String::from_utf8_lossy(&out.stdout).trim().is_empty());
}

#[test]
fn bad_roles_and_budgets_are_one_line_errors() {
    let dir = tempfile::tempdir().unwrap();
    let corrupt = dir.path().join("lychee_heads.safetensors");
    std::fs::write(&corrupt, b"not a safetensors file").unwrap();
    let err = one_line_error(&kvault(&["generate", "Hi", "--max-tokens", "4", "--kv-policy", "lychee", "--kv-budget", "32", "--head-roles", corrupt.to_str().unwrap()]));
    assert!(err.contains("--head-roles"), "{err}");
    // SmolLM2's roles (30 layers × 3 KV heads) on stories260K (5 × 4).
    let err = one_line_error(&kvault(&["generate", "Hi", "--max-tokens", "4", "--head-roles", &shipped_smollm2_roles()]));
    assert!(err.contains("another model"), "{err}");
    let err = one_line_error(&kvault(&["generate", "Hi", "--max-tokens", "4", "--kv-policy", "lychee", "--kv-budget", "16"]));
    assert!(err.contains("kv_budget") || err.contains("--kv-budget"), "{err}");
    assert!(err.contains("2 blocks"), "{err}");
}

#[test]
fn eval_kv_refuses_to_score_lychee_where_it_changes_nothing() {
    let text = shared().join("data/texts/alice_in_wonderland.txt");
    let text = text.to_str().unwrap();
    let out = tempfile::tempdir().unwrap();
    let json = out.path().join("e.json");
    let err = one_line_error(&kvault(&["eval", "kv", "--text", text, "--policies", "lychee", "--budgets", "32", "--chunk", "16", "--output-json", json.to_str().unwrap()]));
    assert!(err.contains("--chunk 1"), "{err}");
    let err = one_line_error(&kvault(&[
        "eval", "kv", "--text", text, "--policies", "lychee", "--budgets", "32", "--base-url", "http://127.0.0.1:9", "--tokenizer", "x",
        "--output-json", json.to_str().unwrap(),
    ]));
    assert!(err.contains("locally"), "{err}");
    assert!(!json.exists(), "nothing written on refusal");
}

#[test]
fn serve_takes_lychee_per_request_and_refuses_it_without_roles() {
    let prompt = long_prompt();
    let body = |kv: serde_json::Value| {
        let mut b = json!({"prompt": prompt, "max_tokens": 12, "temperature": 0, "ignore_eos": true});
        for (k, v) in kv.as_object().unwrap() {
            b[k] = v.clone();
        }
        b
    };
    let s = Server::start(&["--model", &smollm2(), "--head-roles", &shipped_smollm2_roles()]);
    let (status, resp) = s.post("/v1/completions", &body(json!({"kv_policy": "lychee", "kv_budget": 64})));
    assert_eq!(status, 200, "{resp}");
    assert_eq!(resp["usage"]["completion_tokens"], 12, "{resp}");
    let (status, resp) = s.post("/v1/completions", &body(json!({"kv_policy": "lychee", "kv_budget": 16})));
    assert_error(status, &resp, 400, Some("kv_budget"), "under two blocks");
    let (status, resp) = s.post("/v1/completions", &body(json!({"kv_policy": "lychee", "kv_budget": 64, "kv_snapkv_window": 8})));
    assert_error(status, &resp, 400, Some("kv_snapkv_window"), "a field of another policy");
    drop(s);

    let s = Server::start(&["--model", &smollm2()]);
    let (status, resp) = s.post("/v1/completions", &body(json!({"kv_policy": "lychee", "kv_budget": 64})));
    assert_error(status, &resp, 400, Some("kv_policy"), "no roles");
    assert!(resp["error"]["message"].as_str().unwrap().contains("calibrate-heads"), "{resp}");
    drop(s);

    let out = kvault(&["serve", "--port", "0", "--model", &smollm2(), "--kv-policy", "lychee", "--kv-budget", "64"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("no head roles") && err.contains("calibrate-heads"), "{err}");
}
