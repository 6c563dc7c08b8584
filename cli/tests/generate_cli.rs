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
