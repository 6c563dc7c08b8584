//! `kvault generate` driven as a user would: the real binary, real models, bad input.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

fn kvault(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kvault"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("the kvault binary runs")
}

fn shared() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared");
    assert!(dir.join("models").is_dir(), "shared test assets missing: expected {}", dir.display());
    dir
}

fn stories_dir() -> PathBuf {
    shared().join("models/stories260K")
}

fn reference_greedy_text(model: &str, prompt_name: &str) -> String {
    let text = std::fs::read_to_string(shared().join("models").join(model).join("reference.json")).unwrap();
    let r: serde_json::Value = serde_json::from_str(&text).unwrap();
    let p = r["prompts"].as_array().unwrap().iter().find(|p| p["name"] == prompt_name).unwrap();
    p["greedy"]["text"].as_str().unwrap().to_string()
}

/// A copy of stories260K in a temp folder, for corrupting.
fn stories_copy() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(stories_dir()).unwrap() {
        let p = entry.unwrap().path();
        std::fs::copy(&p, dir.path().join(p.file_name().unwrap())).unwrap();
    }
    dir
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A one-line `error: ...` message, non-zero exit, and no panic.
fn assert_clean_error(o: &Output, needles: &[&str]) {
    let err = stderr(o);
    assert!(!o.status.success(), "expected failure, got success; stderr: {err}");
    assert!(!err.contains("panicked"), "panic instead of an error: {err}");
    let line = err.lines().find(|l| l.starts_with("error")).unwrap_or_else(|| panic!("no error line in: {err}"));
    for n in needles {
        assert!(line.contains(n), "error line {line:?} should mention {n:?}");
    }
}

#[test]
fn no_arguments_generates_with_the_embedded_model() {
    let o = kvault(&["generate", "--max-tokens", "16"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!o.stdout.is_empty());
    assert!(stderr(&o).contains("tok/s decode"), "stats go to stderr: {}", stderr(&o));
}

#[test]
fn greedy_stdout_is_exactly_the_reference_continuation() {
    let o = kvault(&["generate", "Once upon a time", "--temperature", "0", "--max-tokens", "64", "--ignore-eos"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(String::from_utf8(o.stdout).unwrap(), reference_greedy_text("stories260K", "once_upon_a_time"));
}

#[test]
fn greedy_smollm2_gguf_dequantized_matches_reference_text() {
    let model = shared().join("models/smollm2-135m-instruct");
    let o = kvault(&[
        "generate", "The capital of France is", "--model", model.to_str().unwrap(), "--dtype", "f32",
        "--temperature", "0", "--max-tokens", "64", "--ignore-eos", "--quiet",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    // The reference decodes with special tokens shown; kvault (like vLLM) skips them.
    let expected = reference_greedy_text("smollm2-135m-instruct", "capital_of_france")
        .replace("<|im_end|>", "")
        .replace("<|im_start|>", "");
    assert_eq!(String::from_utf8(o.stdout).unwrap(), expected);
}

#[test]
fn same_seed_same_text_and_stop_strings_are_not_printed() {
    let args = ["generate", "Once upon a time", "--temperature", "1", "--seed", "7", "--max-tokens", "40"];
    let a = kvault(&args);
    let b = kvault(&args);
    assert!(a.status.success());
    assert_eq!(a.stdout, b.stdout);
    let o = kvault(&["generate", "Once upon a time", "--temperature", "0", "--max-tokens", "64", "--stop", "Lily"]);
    let text = String::from_utf8(o.stdout).unwrap();
    assert_eq!(text, ", there was a little girl named ");
}

#[test]
fn prompt_from_stdin() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_kvault"))
        .args(["generate", "--temperature", "0", "--max-tokens", "64", "--ignore-eos", "--quiet"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(b"Once upon a time").unwrap();
    let o = child.wait_with_output().unwrap();
    assert_eq!(String::from_utf8(o.stdout).unwrap(), reference_greedy_text("stories260K", "once_upon_a_time"));
}

#[test]
fn batch_file_keeps_input_order_and_reports_errors_per_line() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    let output = dir.path().join("out.jsonl");
    let long = "Once upon a time ".repeat(200);
    std::fs::write(
        &input,
        format!(
            "{}\n{}\n{}\n",
            r#"{"prompt": "Once upon a time", "max_tokens": 64, "temperature": 0, "ignore_eos": true}"#,
            serde_json::json!({"prompt": long, "max_tokens": 10}),
            r#"{"prompt": "Tom had a boat", "max_tokens": 5, "temperature": 0, "id": "third"}"#
        ),
    )
    .unwrap();
    let o = kvault(&["generate", "--input-file", input.to_str().unwrap(), "--output-file", output.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let lines: Vec<serde_json::Value> =
        std::fs::read_to_string(&output).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[0]["index"], 0);
    assert_eq!(lines[0]["text"], reference_greedy_text("stories260K", "once_upon_a_time"));
    assert_eq!(lines[0]["finish_reason"], "length");
    assert_eq!(lines[0]["usage"]["completion_tokens"], 64);
    assert_eq!(lines[0]["token_ids"].as_array().unwrap().len(), 64);
    assert!(lines[1]["error"].as_str().unwrap().contains("maximum context length"), "{}", lines[1]);
    assert_eq!(lines[2]["id"], "third");
    assert_eq!(lines[2]["usage"]["completion_tokens"], 5);
}

#[test]
fn malformed_batch_line_fails_before_generating() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    std::fs::write(&input, "{\"prompt\": \"hi\"}\n{\"promt\": \"typo\"}\n").unwrap();
    let out = dir.path().join("out.jsonl");
    let o = kvault(&["generate", "--input-file", input.to_str().unwrap(), "--output-file", out.to_str().unwrap()]);
    assert_clean_error(&o, &["in.jsonl:2"]);
    assert!(!out.exists());
}

#[test]
fn missing_model_path_is_a_clear_error() {
    assert_clean_error(&kvault(&["generate", "hi", "--model", "/no/such/model"]), &["/no/such/model"]);
}

#[test]
fn truncated_safetensors_is_a_clear_error() {
    let dir = stories_copy();
    let f = dir.path().join("model.safetensors");
    let bytes = std::fs::read(&f).unwrap();
    std::fs::write(&f, &bytes[..bytes.len() / 2]).unwrap();
    assert_clean_error(&kvault(&["generate", "hi", "--model", dir.path().to_str().unwrap()]), &["model.safetensors"]);
}

#[test]
fn corrupt_gguf_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("broken.gguf");
    std::fs::write(&f, b"GGUF\x03\x00\x00\x00garbage that is not a header").unwrap();
    assert_clean_error(&kvault(&["generate", "hi", "--model", f.to_str().unwrap()]), &["broken.gguf"]);
}

#[test]
fn truncated_gguf_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let src = shared().join("models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf");
    let f = dir.path().join("cut.gguf");
    let bytes = std::fs::read(src).unwrap();
    std::fs::write(&f, &bytes[..bytes.len() / 3]).unwrap();
    assert_clean_error(&kvault(&["generate", "hi", "--model", f.to_str().unwrap()]), &["cut.gguf", "truncated"]);
}

#[test]
fn unknown_model_type_is_a_clear_error() {
    let dir = stories_copy();
    edit_config(dir.path(), |c| c["model_type"] = "gpt_neox".into());
    assert_clean_error(&kvault(&["generate", "hi", "--model", dir.path().to_str().unwrap()]), &["config.json", "gpt_neox"]);
}

#[test]
fn an_unknown_matmul_precision_is_a_clear_error() {
    assert_clean_error(&kvault(&["generate", "hi", "--matmul-precision", "int4"]), &["int4", "--matmul-precision"]);
}

#[test]
fn tensor_shape_mismatch_is_a_clear_error() {
    let dir = stories_copy();
    edit_config(dir.path(), |c| c["intermediate_size"] = 200.into());
    assert_clean_error(
        &kvault(&["generate", "hi", "--model", dir.path().to_str().unwrap()]),
        &["model.safetensors", "mlp", "shape"],
    );
}

#[test]
fn missing_tokenizer_is_a_clear_error() {
    let dir = stories_copy();
    std::fs::remove_file(dir.path().join("tokenizer.json")).unwrap();
    assert_clean_error(&kvault(&["generate", "hi", "--model", dir.path().to_str().unwrap()]), &["tokenizer.json"]);
}

#[test]
fn unrenderable_chat_template_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let t = dir.path().join("bad.jinja");
    std::fs::write(&t, "{% for m in messages %}{{ m.content }").unwrap();
    assert_clean_error(&kvault(&["generate", "hi", "--chat", "--chat-template", t.to_str().unwrap()]), &["bad.jinja"]);
    std::fs::write(&t, "{{ raise_exception('roles must alternate') }}").unwrap();
    assert_clean_error(&kvault(&["generate", "hi", "--chat", "--chat-template", t.to_str().unwrap()]), &["roles must alternate"]);
}

#[test]
fn model_without_chat_template_asked_to_chat_is_a_clear_error() {
    assert_clean_error(&kvault(&["generate", "hi", "--chat"]), &["chat template"]);
}

#[test]
fn invalid_flag_values_name_the_flag() {
    for (flag, value) in [("--top-p", "1.5"), ("--temperature", "-1"), ("--min-p", "2"), ("--max-tokens", "0"),
                          ("--block-size", "12"), ("--presence-penalty", "3"), ("--kv-cache-memory", "lots")] {
        let o = kvault(&["generate", "hi", flag, value]);
        assert!(!o.status.success());
        let err = stderr(&o);
        assert!(err.contains(flag) && !err.contains("panicked"), "{flag} {value}: {err}");
    }
}

#[test]
fn max_model_len_that_cannot_fit_says_what_would() {
    let o = kvault(&["generate", "hi", "--num-blocks", "4", "--max-model-len", "500"]);
    assert_clean_error(&o, &["--max-model-len 500", "at most 64 tokens"]);
}

fn edit_config(dir: &Path, f: impl FnOnce(&mut serde_json::Value)) {
    let path = dir.join("config.json");
    let mut c: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    f(&mut c);
    std::fs::write(path, serde_json::to_string(&c).unwrap()).unwrap();
}

#[test]
fn a_cuda_device_without_cuda_support_is_a_clear_error() {
    let o = kvault(&["generate", "--device", "cuda:0", "--max-tokens", "4"]);
    assert_clean_error(&o, &["--device cuda:0", "scripts/build-cuda.sh"]);
    let o = kvault(&["generate", "--device", "tpu", "--max-tokens", "4"]);
    assert_clean_error(&o, &["--device tpu", "cuda:N"]);
}

/// Bad `--kv-*` values and combinations, each with the flag its error must name.
const BAD_KV_FLAGS: &[(&[&str], &str)] = &[
    (&["--kv-policy", "lru"], "--kv-policy"),
    (&["--kv-policy", "h2o"], "--kv-budget"),
    (&["--kv-policy", "h2o", "--kv-budget", "0"], "--kv-budget"),
    (&["--kv-policy", "h2o", "--kv-budget", "-8"], "--kv-budget"),
    (&["--kv-policy", "h2o", "--kv-budget", "many"], "--kv-budget"),
    (&["--kv-budget", "64"], "--kv-budget"),
    (&["--kv-policy", "full", "--kv-budget", "64"], "--kv-budget"),
    (&["--kv-policy", "streaming", "--kv-budget", "4", "--kv-sink-tokens", "4"], "--kv-budget"),
    (&["--kv-policy", "h2o", "--kv-budget", "16", "--kv-recent-window", "32"], "--kv-budget"),
    (&["--kv-policy", "snapkv", "--kv-budget", "16", "--kv-snapkv-window", "32"], "--kv-budget"),
    (&["--kv-policy", "snapkv", "--kv-budget", "64", "--kv-snapkv-window", "0"], "--kv-snapkv-window"),
    (&["--kv-policy", "snapkv", "--kv-budget", "64", "--kv-snapkv-kernel", "4"], "--kv-snapkv-kernel"),
    (&["--kv-policy", "snapkv", "--kv-budget", "64", "--kv-snapkv-pooling", "median"], "--kv-snapkv-pooling"),
    (&["--kv-policy", "streaming", "--kv-budget", "64", "--kv-sink-tokens", "-1"], "--kv-sink-tokens"),
    (&["--kv-policy", "h2o", "--kv-budget", "64", "--kv-sink-tokens", "4"], "--kv-sink-tokens"),
    (&["--kv-policy", "streaming", "--kv-budget", "64", "--kv-recent-window", "8"], "--kv-recent-window"),
    (&["--kv-policy", "h2o", "--kv-budget", "64", "--kv-snapkv-window", "8"], "--kv-snapkv-window"),
    (&["--kv-policy", "streaming", "--kv-budget", "64", "--kv-snapkv-kernel", "3"], "--kv-snapkv-kernel"),
    (&["--kv-policy", "h2o", "--kv-budget", "64", "--kv-snapkv-pooling", "max"], "--kv-snapkv-pooling"),
];

/// Exactly one `error` line, naming `flag` in its flag spelling (never the request field's).
fn assert_kv_flag_error(o: &Output, flag: &str, context: &str) {
    let err = stderr(o);
    assert!(!o.status.success() && !err.contains("panicked"), "{context}: expected a clean failure: {err}");
    let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("error")).collect();
    assert_eq!(lines.len(), 1, "{context}: one error line: {err}");
    assert!(lines[0].contains(flag) && !lines[0].contains("kv_"), "{context}: {:?} should name {flag}", lines[0]);
}

#[test]
fn bad_kv_flags_are_one_line_errors_naming_the_flag_on_every_command() {
    for (args, flag) in BAD_KV_FLAGS {
        let mut all = vec!["generate", "hi"];
        all.extend_from_slice(args);
        assert_kv_flag_error(&kvault(&all), flag, &format!("{all:?}"));
    }
    let commands: [&[&str]; 5] = [&["generate", "hi"], &["chat"], &["serve", "--port", "0"], &["bench", "throughput"], &["bench", "latency"]];
    for command in commands {
        for (args, flag) in [BAD_KV_FLAGS[0], BAD_KV_FLAGS[2], BAD_KV_FLAGS[7], BAD_KV_FLAGS[14]] {
            let all: Vec<&str> = command.iter().chain(args.iter()).copied().collect();
            let o = kvault(&all);
            assert_kv_flag_error(&o, flag, &format!("{all:?}"));
            assert!(!stderr(&o).contains("listening on"), "{all:?}: checked before anything starts");
        }
    }
}

/// The `KV …` part of generate's stats line.
fn kv_stats(o: &Output) -> String {
    let err = stderr(o);
    let line = err.lines().find(|l| l.starts_with("[prompt ")).unwrap_or_else(|| panic!("no stats line: {err}"));
    let at = line.find("; KV ").unwrap_or_else(|| panic!("no KV part in {line:?}"));
    line[at + 2..].trim_end_matches(']').to_string()
}

/// "peak N tokens held, M evicted" → (N, M).
fn peak_and_evicted(stats: &str) -> (usize, usize) {
    let rest = stats.split(": peak ").nth(1).unwrap_or_else(|| panic!("no peak in {stats:?}"));
    let (peak, rest) = rest.split_once(" tokens held, ").unwrap_or_else(|| panic!("{stats:?}"));
    let evicted = rest.strip_suffix(" evicted").unwrap_or_else(|| panic!("{stats:?}"));
    (peak.parse().unwrap(), evicted.parse().unwrap())
}

#[test]
fn the_kv_policy_reaches_the_engine_and_the_stats_line() {
    let greedy = ["generate", "Once upon a time", "--temperature", "0", "--max-tokens", "24", "--ignore-eos"];
    let full = kvault(&greedy);
    assert!(full.status.success(), "{}", stderr(&full));
    assert_eq!(kv_stats(&full), "KV full");
    let runs: [(&[&str], &str); 4] = [
        (&["--kv-policy", "full"], "KV full"),
        (&["--kv-policy", "streaming", "--kv-budget", "64", "--kv-sink-tokens", "2"], "KV streaming (budget 64, sinks 2): peak "),
        (&["--kv-policy", "h2o", "--kv-budget", "64"], "KV h2o (budget 64, recent 32): peak "),
        (
            &["--kv-policy", "snapkv", "--kv-budget", "48", "--kv-snapkv-window", "8", "--kv-snapkv-kernel", "3", "--kv-snapkv-pooling", "max"],
            "KV snapkv (budget 48, window 8, max-pool 3): peak ",
        ),
    ];
    for (kv, expected) in runs {
        let args: Vec<&str> = greedy.iter().chain(kv.iter()).copied().collect();
        let o = kvault(&args);
        assert!(o.status.success(), "{kv:?}: {}", stderr(&o));
        assert!(kv_stats(&o).starts_with(expected), "{kv:?}: {:?}", kv_stats(&o));
        if kv.len() > 2 {
            // 5 prompt + 24 generated tokens stay under every budget: nothing to evict, same text.
            assert_eq!(peak_and_evicted(&kv_stats(&o)).1, 0, "{kv:?}");
        }
        assert_eq!(o.stdout, full.stdout, "{kv:?}: a budget never reached changes nothing");
    }
}

/// Needs the engine's eviction: a budget of 32 under a ~100-token prompt drops tokens.
#[test]
fn a_budget_smaller_than_the_sequence_evicts_and_says_so() {
    let prompt = "Once upon a time, there was a little girl named Lily. She loved to play outside. ".repeat(4);
    for kv in [
        &["--kv-policy", "streaming", "--kv-budget", "32"][..],
        &["--kv-policy", "h2o", "--kv-budget", "32"],
        &["--kv-policy", "snapkv", "--kv-budget", "32", "--kv-snapkv-window", "8"],
    ] {
        let mut args = vec!["generate", prompt.as_str(), "--temperature", "0", "--max-tokens", "48", "--ignore-eos"];
        args.extend_from_slice(kv);
        let o = kvault(&args);
        assert!(o.status.success(), "{kv:?}: {}", stderr(&o));
        let err = stderr(&o);
        let n_prompt: usize = err.split("[prompt ").nth(1).and_then(|r| r.split(' ').next()).and_then(|n| n.parse().ok()).unwrap();
        assert!(n_prompt > 32, "the prompt alone exceeds the budget: {err}");
        let (peak, evicted) = peak_and_evicted(&kv_stats(&o));
        assert!(evicted > 0, "{kv:?}: nothing evicted: {err}");
        assert!(peak < n_prompt + 48, "{kv:?}: peak {peak} should stay under the {} tokens of the sequence", n_prompt + 48);
    }
}

/// Needs the engine's check: a budget the KV cache could never hold is refused, naming the flag.
#[test]
fn a_budget_larger_than_the_cache_is_an_error_naming_the_flag() {
    let o = kvault(&["generate", "hi", "--max-tokens", "4", "--num-blocks", "16", "--kv-policy", "h2o", "--kv-budget", "100000"]);
    assert_kv_flag_error(&o, "--kv-budget", "budget over a 256-token cache");
}

fn run_batch(lines: &[serde_json::Value], flags: &[&str]) -> (Output, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    let body: String = lines.iter().map(|l| format!("{l}\n")).collect();
    std::fs::write(&input, body).unwrap();
    let output = dir.path().join("out.jsonl");
    let mut args = vec!["generate", "--input-file", input.to_str().unwrap(), "--output-file", output.to_str().unwrap()];
    args.extend_from_slice(flags);
    let o = kvault(&args);
    (o, dir)
}

#[test]
fn batch_lines_overlay_their_kv_fields_on_the_flags() {
    use serde_json::json;
    let line = |kv: serde_json::Value| {
        let mut l = json!({"prompt": "Once upon a time", "max_tokens": 20, "temperature": 0, "ignore_eos": true});
        l.as_object_mut().unwrap().extend(kv.as_object().unwrap().clone());
        l
    };
    let lines = [
        line(json!({})),
        line(json!({"kv_budget": 48, "kv_recent_window": 8})),
        line(json!({"kv_policy": "streaming", "kv_sink_tokens": 2})),
        line(json!({"kv_policy": "snapkv", "kv_snapkv_window": 16, "kv_snapkv_pooling": "max"})),
        line(json!({"kv_policy": "full"})),
    ];
    let (o, dir) = run_batch(&lines, &["--kv-policy", "h2o", "--kv-budget", "64"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out: Vec<serde_json::Value> = std::fs::read_to_string(dir.path().join("out.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let expected = [
        json!({"policy": "h2o", "budget": 64, "recent_window": 32}),
        json!({"policy": "h2o", "budget": 48, "recent_window": 8}),
        json!({"policy": "streaming", "budget": 64, "sink_tokens": 2}),
        json!({"policy": "snapkv", "budget": 64, "snapkv_window": 16, "snapkv_kernel": 5, "snapkv_pooling": "max"}),
        json!({"policy": "full"}),
    ];
    assert_eq!(out.len(), expected.len());
    for (i, (got, want)) in out.iter().zip(&expected).enumerate() {
        for (k, v) in want.as_object().unwrap() {
            assert_eq!(&got["kv"][k], v, "line {i} kv.{k}: {got}");
        }
        assert!(got["kv"]["description"].is_string() && got["kv"]["tokens_evicted"].is_u64(), "line {i}: {got}");
        // 5 + 20 tokens never reach a budget: every policy gives the full-cache text.
        assert_eq!(got["text"], out[4]["text"], "line {i}");
        assert_eq!(got["usage"]["completion_tokens"], 20, "usage unchanged: {got}");
    }
}

#[test]
fn a_batch_line_with_bad_kv_fields_fails_before_generating_naming_line_and_field() {
    use serde_json::json;
    let good = json!({"prompt": "hi", "max_tokens": 2});
    let cases = [
        (json!({"prompt": "hi", "kv_policy": "lru"}), "kv_policy"),
        (json!({"prompt": "hi", "kv_policy": "h2o"}), "kv_budget"),
        (json!({"prompt": "hi", "kv_policy": "h2o", "kv_budget": 0}), "kv_budget"),
        (json!({"prompt": "hi", "kv_budget": "64"}), "kv_budget"),
        (json!({"prompt": "hi", "kv_budget": -1}), "kv_budget"),
        (json!({"prompt": "hi", "kv_policy": "h2o", "kv_budget": 64, "kv_sink_tokens": 4}), "kv_sink_tokens"),
        (json!({"prompt": "hi", "kv_policy": "snapkv", "kv_budget": 64, "kv_snapkv_pooling": "median"}), "kv_snapkv_pooling"),
        (json!({"prompt": "hi", "kv_policy": "snapkv", "kv_budget": 64, "kv_snapkv_kernel": 2}), "kv_snapkv_kernel"),
    ];
    for (bad, field) in cases {
        let (o, dir) = run_batch(&[good.clone(), bad.clone()], &[]);
        assert_clean_error(&o, &["in.jsonl:2", field]);
        assert!(!dir.path().join("out.jsonl").exists(), "{bad}: nothing is generated");
    }
    // A line's own field overrides the flag it overlays.
    let (o, _dir) = run_batch(&[json!({"prompt": "hi", "max_tokens": 2, "kv_budget": 16})], &["--kv-policy", "h2o", "--kv-budget", "64"]);
    assert!(o.status.success(), "{}", stderr(&o));
}
