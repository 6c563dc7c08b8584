//! `kvault eval retrieval` driven as a user would: the real binary, in-process on the embedded
//! stories260K (fast: wiring, policies, two-turn, bad input) and on SmolLM2 (accuracy), and with
//! `--base-url` against a real `kvault serve`.

mod serve_support;

use std::process::{Command, Output, Stdio};
use std::time::Instant;

use serde_json::Value;
use serve_support::{shared, Server};

fn kvault(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kvault")).args(args).stdin(Stdio::null()).output().expect("the kvault binary runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Runs `eval retrieval ARGS --output-json <tmp>` and returns stdout and the JSON.
fn eval(args: &[&str]) -> (String, Value) {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("r.json");
    let mut all = vec!["eval", "retrieval"];
    all.extend_from_slice(args);
    all.extend(["--output-json", json.to_str().unwrap()]);
    let o = kvault(&all);
    assert!(o.status.success(), "kvault {all:?} failed:\nstdout: {}\nstderr: {}", text(&o.stdout), text(&o.stderr));
    let j = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).expect("the result file is JSON");
    (text(&o.stdout), j)
}

/// Every sample's output under the policy labelled `policy`, in grid order.
fn outputs(j: &Value, policy: &str) -> Vec<String> {
    j["samples"].as_array().unwrap().iter().filter(|s| s["policy"] == policy).map(|s| s["output"].as_str().unwrap().to_string()).collect()
}

fn differing(a: &[String], b: &[String]) -> usize {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).filter(|(x, y)| x != y).count()
}

/// A one-line `error: …` naming every needle, a non-zero exit, no panic and no result file.
fn assert_clean_error(args: &[&str], needles: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("r.json");
    let mut all = vec!["eval", "retrieval"];
    all.extend_from_slice(args);
    all.extend(["--output-json", json.to_str().unwrap()]);
    let o = kvault(&all);
    let err = text(&o.stderr);
    assert!(!o.status.success(), "{args:?}: expected failure; stderr: {err}");
    assert!(!err.contains("panicked"), "{args:?}: panic instead of an error: {err}");
    let line = err.lines().find(|l| l.starts_with("error")).unwrap_or_else(|| panic!("{args:?}: no error line in: {err}"));
    for n in needles {
        assert!(line.contains(n), "{args:?}: error line {line:?} should mention {n:?}");
    }
    assert!(!json.exists(), "{args:?}: a result file was written");
}

fn plus<'a>(base: &[&'a str], extra: &[&'a str]) -> Vec<&'a str> {
    [base, extra].concat()
}

fn smollm2_gguf() -> String {
    shared().join("models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf").to_string_lossy().into_owned()
}

#[test]
fn bad_input_is_a_one_line_error() {
    let base = ["--task", "passkey", "--context-lens", "512", "--samples", "1"];
    assert_clean_error(&plus(&base, &["--haystack", "/definitely/not/here.txt"]), &["--haystack /definitely/not/here.txt", "cannot read"]);
    // stories260K's context is 512 tokens.
    assert_clean_error(&["--task", "passkey", "--context-lens", "512,1024"], &["--context-lens 1024", "longer than the model's context (512 tokens)"]);
    assert_clean_error(&plus(&base, &["--policies", "h2o", "--budgets", ""]), &["--budgets", "the list is empty"]);
    assert_clean_error(&plus(&base, &["--policies", "h2o"]), &["--budgets", "h2o needs at least one budget"]);
    assert_clean_error(&["--task", "needle"], &["--task", "unknown task `needle` (expected passkey, multikey or vartrack)"]);
    assert_clean_error(&["--task", "passkey", "--context-lens", "64"], &["--context-lens 64", "too short for passkey"]);
    assert_clean_error(&plus(&base, &["--two-turn", "--base-url", "http://127.0.0.1:9"]), &["--two-turn", "--base-url"]);
    assert_clean_error(&plus(&base, &["--policies", "streaming", "--budgets", "100000000"]), &["--budgets 100000000", "KV blocks"]);
    let dir = tempfile::tempdir().unwrap();
    let not_text = dir.path().join("bin.txt");
    std::fs::write(&not_text, [0xffu8, 0xfe, 0x00]).unwrap();
    assert_clean_error(&plus(&base, &["--haystack", not_text.to_str().unwrap()]), &["--haystack", "not UTF-8"]);
}

#[test]
fn the_same_seed_gives_the_same_run_and_every_cell_is_reported() {
    let args = ["--task", "multikey", "--context-lens", "448,512", "--depths", "0.2,0.8", "--samples", "2", "--seed", "4"];
    let (table, a) = eval(&args);
    let (_, b) = eval(&args);
    assert_eq!(a["samples"], b["samples"]);
    let samples = a["samples"].as_array().unwrap();
    assert_eq!(samples.len(), 2 * 2 * 2);
    for s in samples {
        let (prompt, len) = (s["prompt_tokens"].as_u64().unwrap(), s["context_len"].as_u64().unwrap());
        assert!(prompt + 16 <= len && prompt + 16 + 40 > len, "{s}");
        assert!(s["context_tokens"].as_u64().unwrap() < prompt);
        let expected = s["expected"].as_str().unwrap();
        assert!(expected.len() == 7 && expected.parse::<u32>().is_ok(), "{s}");
    }
    assert_eq!(a["accuracy"].as_array().unwrap().len(), 2 * 2);
    assert_eq!(a["summary"].as_array().unwrap().len(), 2);
    assert_eq!((a["task"].as_str(), a["backend"].as_str(), a["haystack"].as_str()), (Some("multikey"), Some("in-process"), Some("filler")));
    assert!(table.lines().any(|l| l.split_whitespace().collect::<Vec<_>>()[..2] == ["full", "512"]), "{table}");
    let (_, other_seed) = eval(&["--task", "multikey", "--context-lens", "448,512", "--depths", "0.2,0.8", "--samples", "2", "--seed", "5"]);
    assert_ne!(a["samples"][0]["expected"], other_seed["samples"][0]["expected"]);
}

/// Budgets change answers, the full cache is untouched by the context break, and the break
/// changes what a budgeted policy keeps (stories260K's answers are noise, but deterministic).
#[test]
fn kv_policies_and_the_two_turn_break_reach_the_engine() {
    let args = ["--task", "passkey", "--context-lens", "512", "--depths", "0.1,0.5,0.9", "--samples", "4", "--policies", "full,snapkv,h2o", "--budgets", "256"];
    let (_, one) = eval(&args);
    let (_, two) = eval(&[&args[..], &["--two-turn"]].concat());
    assert_eq!(two["two_turn"], true);
    let labels: Vec<&str> = one["policies"].as_array().unwrap().iter().map(|p| p["label"].as_str().unwrap()).collect();
    assert_eq!(labels, ["full", "snapkv 256", "h2o 256"]);
    assert_eq!(one["policies"][1]["snapkv_window"], 32);
    let full = outputs(&one, "full");
    assert_eq!(full, outputs(&two, "full"), "the full cache answers the same whether or not the context is computed first");
    for policy in ["snapkv 256", "h2o 256"] {
        assert!(differing(&full, &outputs(&one, policy)) > 0, "{policy} answered exactly as the full cache");
    }
    assert!(differing(&outputs(&one, "snapkv 256"), &outputs(&two, "snapkv 256")) > 0, "--two-turn changed nothing under snapkv");
}

#[test]
fn plot_writes_a_heat_map_png() {
    let dir = tempfile::tempdir().unwrap();
    let png = dir.path().join("heat.png");
    eval(&["--task", "passkey", "--context-lens", "512", "--depths", "0.5", "--samples", "1", "--plot", png.to_str().unwrap()]);
    let bytes = std::fs::read(&png).unwrap();
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
}

/// The CI bar: SmolLM2 finds a passkey in 1K tokens with the full cache (100% today).
#[test]
fn full_cache_smollm2_passkey_accuracy_at_1k_is_at_least_90_percent() {
    let started = Instant::now();
    let (table, j) = eval(&["--model", &smollm2_gguf(), "--task", "passkey", "--context-lens", "1024", "--samples", "2"]);
    let summary = &j["summary"][0];
    assert_eq!((summary["context_len"].as_u64(), summary["total"].as_u64()), (Some(1024), Some(10)));
    let accuracy = summary["accuracy"].as_f64().unwrap();
    assert!(accuracy >= 0.9, "full-cache passkey accuracy {accuracy} at 1K:\n{table}");
    for s in j["samples"].as_array().unwrap() {
        let depth = s["depth"].as_f64().unwrap();
        assert!((s["needle_depth"].as_f64().unwrap() - depth).abs() < 0.02, "{s}");
        assert_eq!(s["correct"], s["output"].as_str().unwrap().trim_start().starts_with(s["expected"].as_str().unwrap()), "{s}");
    }
    eprintln!("SmolLM2 passkey at 1K: {:.0}% in {:.1} s", accuracy * 100.0, started.elapsed().as_secs_f64());
}

#[test]
fn a_running_server_answers_as_the_engine_does() {
    let server = Server::start(&[]);
    let grid = ["--task", "passkey", "--context-lens", "384,512", "--depths", "0.2,0.8", "--samples", "2", "--policies", "full,streaming", "--budgets", "64"];
    let (_, local) = eval(&grid);
    let (table, remote) = eval(&[&grid[..], &["--base-url", &server.base, "--max-concurrency", "4"]].concat());
    assert_eq!(remote["backend"].as_str(), Some(server.base.as_str()));
    assert_eq!(remote["model"], "stories260K");
    assert!(table.contains("streaming 64"), "{table}");
    // The full cache is exact whatever the batch: the same prompts give the same answers.
    assert_eq!(outputs(&remote, "full"), outputs(&local, "full"));
    let field = |j: &Value, key: &str| j["samples"].as_array().unwrap().iter().map(|s| s[key].clone()).collect::<Vec<_>>();
    assert_eq!(field(&remote, "prompt_tokens"), field(&local, "prompt_tokens"));
    // Each policy's requests reached the server under that policy.
    assert_eq!(server.metric("kvault:kv_policy_requests_total{policy=\"streaming\"}"), Some(8.0));
    assert_eq!(server.metric("kvault:kv_policy_requests_total{policy=\"full\"}"), Some(8.0));

    let base = ["--task", "passkey", "--context-lens", "512", "--samples", "1", "--depths", "0.5", "--base-url", server.base.as_str()];
    assert_clean_error(&plus(&base, &["--policies", "streaming", "--budgets", "100000000"]), &["HTTP 400", "kv_budget"]);
    let smol_tokenizer = serve_support::smollm2();
    assert_clean_error(&plus(&base, &["--tokenizer", smol_tokenizer.as_str()]), &["--tokenizer", "tokenizes differently"]);
    let too_long = ["--task", "passkey", "--context-lens", "600", "--base-url", server.base.as_str()];
    assert_clean_error(&too_long, &["--context-lens 600", "max_model_len (512 tokens)"]);
    assert_clean_error(&plus(&base, &["--model", "org/not-served"]), &["--tokenizer", "`org/not-served` is not a local path"]);
}

#[test]
fn an_unreachable_server_is_a_one_line_error() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let url = format!("http://127.0.0.1:{port}");
    assert_clean_error(&["--task", "passkey", "--base-url", &url], &[&url, "is the server running?"]);
}
