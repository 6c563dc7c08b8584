//! `kvault eval kv` as a user runs it: the full cache reproduces the reference perplexity of
//! ../shared/models/*/reference.json on its text, a budget that never evicts before attention has
//! KL exactly 0, the JSON/table/PNG are written, and bad input is a one-line error.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::Value;

mod serve_support;

fn shared() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared");
    assert!(dir.join("models").is_dir(), "shared test assets missing: expected {}", dir.display());
    dir
}

fn kvault(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kvault")).args(args).stdin(Stdio::null()).output().expect("the kvault binary runs")
}

fn ok(o: &Output) -> String {
    let (out, err) = (String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert!(o.status.success(), "kvault failed:\nstdout: {out}\nstderr: {err}");
    out.into_owned()
}

/// An `error:` line naming `needle` (clap's own value errors add a "try --help" line).
fn clean_error(o: &Output, needle: &str) {
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && !err.contains("panicked"), "{err}");
    let first = err.lines().next().unwrap_or_default();
    assert!(first.starts_with("error: ") && first.contains(needle), "{needle:?} in {err}");
    assert!(err.lines().filter(|l| !l.trim().is_empty()).count() <= 2, "{err}");
}

fn reference(model: &str) -> Value {
    let text = std::fs::read_to_string(shared().join(format!("models/{model}/reference.json"))).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// The reference perplexity's text: its file from `char_start` on.
fn reference_text(r: &Value, dir: &Path) -> PathBuf {
    let p = &r["perplexity"];
    let text = std::fs::read_to_string(shared().join("data/texts").join(p["file"].as_str().unwrap())).unwrap();
    // `char_start` counts characters (Python), not bytes.
    let start = p["char_start"].as_u64().unwrap() as usize;
    let byte = text.char_indices().nth(start).map_or(text.len(), |(b, _)| b);
    let path = dir.join("text.txt");
    std::fs::write(&path, &text[byte..]).unwrap();
    path
}

fn result<'a>(j: &'a Value, policy: &str, budget: Option<u64>) -> &'a Value {
    j["results"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["policy"] == policy && r["budget"].as_u64() == budget)
        .unwrap_or_else(|| panic!("no {policy} {budget:?} in {j}"))
}

#[test]
fn full_cache_matches_the_reference_perplexity_and_a_budget_past_the_last_chunk_has_zero_kl() {
    let r = reference("stories260K");
    let dir = tempfile::tempdir().unwrap();
    let text = reference_text(&r, dir.path());
    let json = dir.path().join("eval.json");
    let png = dir.path().join("eval.png");
    let n = r["perplexity"]["n_tokens"].as_u64().unwrap().to_string();
    let out = ok(&kvault(&[
        "eval", "kv", "--text", text.to_str().unwrap(), "--context-len", &n, "--max-windows", "1",
        "--budgets", "64,448", "--chunk", "64", "--output-json", json.to_str().unwrap(), "--plot", png.to_str().unwrap(),
    ]));
    assert!(out.contains("| policy | budget | mean KL"), "{out}");
    let j: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let full = result(&j, "full", None);
    let want = r["perplexity"]["ppl"].as_f64().unwrap();
    let ppl = full["ppl"].as_f64().unwrap();
    assert!((ppl - want).abs() <= 1e-4 * want, "full-cache perplexity {ppl} vs reference {want}");
    assert_eq!(full["kl"], 0.0);
    assert_eq!(full["positions"], 511);
    for policy in ["streaming", "h2o", "snapkv"] {
        // Budget 448 with chunks of 64: the last chunk attends everything before eviction.
        let never = result(&j, policy, Some(448));
        assert_eq!((never["kl"].as_f64(), never["top1_agreement"].as_f64()), (Some(0.0), Some(1.0)), "{never}");
        assert_eq!(never["positions"], 512 - 1 - 448);
        let small = result(&j, policy, Some(64));
        assert!(small["kl"].as_f64().unwrap() > 0.0 && small["positions"] == 447, "{small}");
    }
    let png = std::fs::read(&png).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    assert!(png.len() > 20_000, "a plot with lines and text");
}

#[test]
fn smollm2_full_cache_perplexity_matches_the_reference() {
    let r = reference("smollm2-135m-instruct");
    let dir = tempfile::tempdir().unwrap();
    let text = reference_text(&r, dir.path());
    let json = dir.path().join("eval.json");
    let gguf = shared().join("models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf");
    ok(&kvault(&[
        "eval", "kv", "--model", gguf.to_str().unwrap(), "--text", text.to_str().unwrap(), "--context-len", "2048",
        "--max-windows", "1", "--policies", "full", "--chunk", "256", "--output-json", json.to_str().unwrap(),
    ]));
    let j: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let (ppl, want) = (result(&j, "full", None)["ppl"].as_f64().unwrap(), r["perplexity"]["ppl"].as_f64().unwrap());
    assert!((ppl - want).abs() <= 1e-3 * want, "{ppl} vs {want}");
}

#[test]
fn a_running_server_scores_the_same_full_cache_perplexity_over_http() {
    let r = reference("stories260K");
    let dir = tempfile::tempdir().unwrap();
    let text = reference_text(&r, dir.path());
    let json = dir.path().join("remote.json");
    let server = serve_support::Server::start(&[]);
    let base = server.url("");
    let out = ok(&kvault(&[
        "eval", "kv", "--base-url", base.trim_end_matches('/'), "--text", text.to_str().unwrap(), "--context-len", "512",
        "--max-windows", "1", "--policies", "full,streaming", "--budgets", "64", "--output-json", json.to_str().unwrap(),
    ]));
    assert!(out.contains("the server's chunking") && out.contains("n/a"), "{out}");
    let j: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let (ppl, want) = (result(&j, "full", None)["ppl"].as_f64().unwrap(), r["perplexity"]["ppl"].as_f64().unwrap());
    assert!((ppl - want).abs() <= 1e-4 * want, "served full-cache perplexity {ppl} vs reference {want}");
    let streaming = result(&j, "streaming", Some(64));
    assert!(streaming["kl"].is_null(), "no KL over the OpenAI API: {streaming}");
    assert_eq!(streaming["positions"], 447);
    let agreement = streaming["top1_agreement"].as_f64().unwrap();
    assert!(agreement > 0.5 && agreement < 1.0, "the server evicted (some disagreement): {agreement}");
}

#[test]
fn bad_input_is_a_one_line_error() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("e.json");
    let j = json.to_str().unwrap();
    clean_error(&kvault(&["eval", "kv", "--text", "/no/such/file.txt", "--output-json", j]), "/no/such/file.txt");
    let short = dir.path().join("short.txt");
    std::fs::write(&short, "Once upon a time there was a cat.").unwrap();
    clean_error(&kvault(&["eval", "kv", "--text", short.to_str().unwrap(), "--context-len", "64", "--output-json", j]), "fewer than --context-len 64");
    let long = shared().join("data/texts/alice_in_wonderland.txt");
    let l = long.to_str().unwrap();
    // stories260K's context is 512 tokens.
    clean_error(&kvault(&["eval", "kv", "--text", l, "--context-len", "4096", "--output-json", j]), "--context-len 4096");
    clean_error(&kvault(&["eval", "kv", "--text", l, "--context-len", "256", "--budgets", "", "--output-json", j]), "--budgets");
    clean_error(&kvault(&["eval", "kv", "--text", l, "--context-len", "256", "--budgets", "0", "--output-json", j]), "--budgets 0");
    // A server measures its own cache: asking for a KV dtype there would be silently ignored.
    let remote = ["eval", "kv", "--text", l, "--base-url", "http://127.0.0.1:9", "--kv-cache-dtype", "int8", "--output-json", j];
    let o = kvault(&remote);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && !err.contains("panicked"), "{err}");
    let first = err.lines().next().unwrap_or_default();
    assert!(first.starts_with("error: ") && first.contains("--base-url") && first.contains("--kv-cache-dtype"), "{err}");
    assert!(!json.exists(), "no result file after an error");
}
