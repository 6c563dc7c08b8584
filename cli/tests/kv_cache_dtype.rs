//! `--kv-cache-dtype` driven as a user would: the real binary on the shared models. An f32 cache
//! is today's behaviour to the bit, every dtype serves, `eval kv` scores a dtype against the
//! full cache in the model's dtype, `/metrics` and `doctor` report it, and bad values are
//! one-line errors on every command that builds an engine.

mod serve_support;

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

use serde_json::Value;

fn kvault(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kvault")).args(args).stdin(Stdio::null()).output().expect("the kvault binary runs")
}

fn ok(o: &Output) -> String {
    assert!(o.status.success(), "kvault failed: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn smollm2() -> String {
    serve_support::smollm2()
}

fn text(name: &str) -> PathBuf {
    serve_support::shared().join("data/texts").join(name)
}

const GREEDY: [&str; 7] = ["--temperature", "0", "--max-tokens", "40", "--ignore-eos", "--seed", "1"];

#[test]
fn f32_is_auto_to_the_byte_and_every_dtype_generates_on_smollm2() {
    let model = smollm2();
    let run = |dtype: &str| {
        let mut args = vec!["generate", "--model", &model, "Once upon a time, in a small village,", "--kv-cache-dtype", dtype];
        args.extend_from_slice(&GREEDY);
        ok(&kvault(&args))
    };
    let auto = run("auto");
    assert_eq!(run("f32"), auto, "on CPU auto is the f32 cache");
    for dtype in ["f16", "bf16", "int8", "fp8"] {
        let out = run(dtype);
        // 40 greedy tokens: a near-lossless cache keeps the opening of the continuation.
        let common = out.chars().zip(auto.chars()).take_while(|(a, b)| a == b).count();
        assert!(common >= 20, "{dtype}: diverged after {common} characters:\n{out}\nvs\n{auto}");
    }
}

#[test]
fn eval_kv_scores_each_dtype_against_the_full_cache_in_the_models_dtype() {
    let dir = tempfile::tempdir().unwrap();
    let sherlock = text("sherlock_holmes.txt");
    let mut kl = Vec::new();
    for dtype in ["bf16", "int8", "fp8"] {
        let json = dir.path().join(format!("{dtype}.json"));
        let out = ok(&kvault(&[
            "eval", "kv", "--model", &smollm2(), "--text", sherlock.to_str().unwrap(), "--context-len", "256", "--max-windows", "1",
            "--policies", "full,streaming", "--budgets", "64", "--chunk", "64", "--kv-cache-dtype", dtype,
            "--output-json", json.to_str().unwrap(),
        ]));
        assert!(out.contains(&format!("KV cache {dtype} (reference: the full cache in f32)")), "{out}");
        let j: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
        assert_eq!((j["kv_cache_dtype"].as_str(), j["reference_kv_cache_dtype"].as_str()), (Some(dtype), Some("f32")));
        let results = j["results"].as_array().unwrap();
        let full = results.iter().find(|r| r["policy"] == "full").unwrap();
        let full_kl = full["kl"].as_f64().unwrap();
        assert!(full_kl > 0.0 && full_kl < 0.05, "{dtype}: the full cache in {dtype} is close to f32 but not equal: {full}");
        assert_eq!(full["positions"], 255);
        let streaming = results.iter().find(|r| r["policy"] == "streaming").unwrap();
        assert!(streaming["kl"].as_f64().unwrap() > full_kl, "{dtype}: eviction costs more than the dtype: {streaming}");
        kl.push(full_kl);
    }
    // bf16 keeps 8 significant bits, int8 ~7 with a per-row scale, fp8 4: fp8 must be worst.
    assert!(kl[2] > kl[1] && kl[2] > kl[0], "KL bf16/int8/fp8 = {kl:?}");

    // The model's own dtype: the reference row itself, KL exactly zero.
    let json = dir.path().join("f32.json");
    ok(&kvault(&[
        "eval", "kv", "--text", text("alice_in_wonderland.txt").to_str().unwrap(), "--context-len", "128", "--max-windows", "1",
        "--policies", "full", "--kv-cache-dtype", "f32", "--output-json", json.to_str().unwrap(),
    ]));
    let j: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!((j["kv_cache_dtype"].as_str(), j["results"][0]["kl"].as_f64()), (Some("f32"), Some(0.0)));
}

#[test]
fn metrics_and_doctor_report_the_dtype_and_bytes_per_token() {
    let s = serve_support::Server::start(&["--model", &smollm2(), "--kv-cache-dtype", "int8", "--kv-cache-memory", "64MiB"]);
    let (status, text) = s.get("/metrics");
    assert_eq!(status, 200);
    // 64 MiB / (16 tokens × 12,960 bytes) = 323 blocks.
    assert!(text.contains("kvault:cache_config_info{block_size=\"16\",kv_cache_dtype=\"int8\",num_blocks=\"323\"} 1"), "{text}");
    // SmolLM2: 30 layers × 3 KV heads × (K and V rows of 64 codes + 4-byte scale, + 8 bytes metadata).
    assert_eq!(s.metric("kvault:kv_cache_bytes_per_token"), Some((30 * 3 * (2 * 68 + 8)) as f64));

    let out = ok(&kvault(&["doctor", "--model", &smollm2(), "--kv-cache-dtype", "fp8"]));
    assert!(out.contains("dtype fp8 (auto = f32), 12.66 KiB per token"), "{out}");
    assert!(out.contains("f32 45.70 KiB") && out.contains("int8 12.66 KiB"), "{out}");
}

#[test]
fn an_unknown_kv_cache_dtype_is_one_error_line_on_every_engine_command() {
    let commands: [&[&str]; 8] = [
        &["generate", "hi"],
        &["chat"],
        &["serve", "--port", "0"],
        &["bench", "throughput"],
        &["bench", "latency"],
        &["eval", "kv", "--text", "x.txt", "--output-json", "x.json"],
        &["eval", "retrieval"],
        &["doctor"],
    ];
    for command in commands {
        let all: Vec<&str> = command.iter().copied().chain(["--kv-cache-dtype", "int4"]).collect();
        let o = kvault(&all);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && !err.contains("panicked"), "{all:?}: {err}");
        let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("error")).collect();
        assert_eq!(lines.len(), 1, "{all:?}: {err}");
        assert!(lines[0].contains("--kv-cache-dtype") && lines[0].contains("int4"), "{all:?}: {}", lines[0]);
        assert!(err.contains("int8") && err.contains("fp8"), "{all:?}: the accepted values are listed: {err}");
        assert!(!err.contains("listening on"), "{all:?}: checked before anything starts");
    }
}
