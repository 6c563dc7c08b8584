//! `kvault bench throughput | latency | serve` driven as a user would: the real binary on the
//! embedded stories260K, and `bench serve` against a real `kvault serve` child process.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::Value;

fn kvault(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kvault"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("the kvault binary runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn assert_ok(o: &Output) -> String {
    assert!(o.status.success(), "kvault failed:\nstdout: {}\nstderr: {}", text(&o.stdout), text(&o.stderr));
    text(&o.stdout)
}

/// A one-line `error: ...` naming every needle, a non-zero exit, and no panic.
fn assert_clean_error(o: &Output, needles: &[&str]) {
    let err = text(&o.stderr);
    assert!(!o.status.success(), "expected failure, got success; stderr: {err}");
    assert!(!err.contains("panicked"), "panic instead of an error: {err}");
    let all = format!("{err}{}", text(&o.stdout));
    for n in needles {
        assert!(all.contains(n), "error output should mention {n:?}: {all}");
    }
}

fn read_json(path: &Path) -> Value {
    let s = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&s).expect("result file is JSON")
}

/// The number after `label` on its line of `out`.
fn number_after(out: &str, label: &str) -> f64 {
    let line = out.lines().find(|l| l.starts_with(label)).unwrap_or_else(|| panic!("no line {label:?} in:\n{out}"));
    line[label.len()..].split_whitespace().next().and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("no number in {line:?}"))
}

#[test]
fn throughput_reports_vllm_lines_with_exact_token_totals() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("tp.json");
    let o = kvault(&[
        "bench", "throughput", "--input-len", "64", "--output-len", "16", "--num-prompts", "8",
        "--output-json", json.to_str().unwrap(),
    ]);
    let out = assert_ok(&o);
    let line = out.lines().find(|l| l.starts_with("Throughput: ")).unwrap_or_else(|| panic!("{out}"));
    let nums: Vec<f64> = line
        .trim_start_matches("Throughput: ")
        .split(", ")
        .map(|part| part.split_whitespace().next().unwrap().parse().unwrap())
        .collect();
    assert!(line.contains(" requests/s, ") && line.contains(" total tokens/s, ") && line.ends_with(" output tokens/s"));
    assert!(nums.len() == 3 && nums.iter().all(|&x| x > 0.0), "{line}");
    // The server-side count includes BOS: the random dataset sizes prompts to exactly 64.
    assert_eq!(number_after(&out, "Total num prompt tokens:"), 8.0 * 64.0);
    assert_eq!(number_after(&out, "Total num output tokens:"), 8.0 * 16.0);
    // Submitted at once into a pool that holds them all (the engine may step before the
    // last submission arrives, so only the bounds are certain).
    let peak = number_after(&out, "Peak running requests:");
    assert!((1.0..=8.0).contains(&peak), "{out}");
    let j = read_json(&json);
    assert_eq!(j["num_requests"], 8);
    assert_eq!(j["peak_running_requests"].as_f64(), Some(peak));
    assert_eq!(j["total_num_tokens"], 8 * 64 + 8 * 16);
    let elapsed = j["elapsed_time"].as_f64().unwrap();
    assert!(elapsed > 0.0);
    assert!((j["requests_per_second"].as_f64().unwrap() - 8.0 / elapsed).abs() < 1e-6);
    assert!((nums[2] - 128.0 / elapsed).abs() < 0.01 + 1e-3 * nums[2], "printed {} vs json {}", nums[2], 128.0 / elapsed);
}

#[test]
fn throughput_with_a_sharegpt_file_uses_its_conversations() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("sharegpt.json");
    std::fs::write(
        &data,
        r#"[{"conversations":[{"from":"human","value":"Tell me a story about a cat and a dog"},
                              {"from":"gpt","value":"Once upon a time there was a cat who met a dog"}]},
            {"conversations":[{"from":"human","value":"Where did the little girl go to play?"},
                              {"from":"gpt","value":"She went to the park to play with her ball"}]}]"#,
    )
    .unwrap();
    let o = kvault(&["bench", "throughput", "--dataset-path", data.to_str().unwrap(), "--num-prompts", "4", "--output-len", "5"]);
    let out = assert_ok(&o);
    assert_eq!(number_after(&out, "Total num output tokens:"), 20.0);
    assert!(number_after(&out, "Total num prompt tokens:") > 4.0 * 4.0);
}

#[test]
fn latency_reports_pp_and_tg_rates() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("lat.json");
    let o = kvault(&[
        "bench", "latency", "--input-len", "32", "--output-len", "8", "--num-iters", "2", "--num-iters-warmup", "1",
        "--output-json", json.to_str().unwrap(),
    ]);
    let out = assert_ok(&o);
    for test in ["pp32", "tg8"] {
        let cells = |l: &str| l.split('|').map(|c| c.trim().to_string()).collect::<Vec<_>>();
        let row = out.lines().find(|l| cells(l).iter().any(|c| c == test)).unwrap_or_else(|| panic!("no {test} row:\n{out}"));
        let cells = cells(row);
        let cell = &cells[cells.len() - 2];
        let (mean, stdev) = cell.split_once(" ± ").unwrap_or_else(|| panic!("{cell:?}"));
        assert!(mean.parse::<f64>().unwrap() > 0.0 && stdev.parse::<f64>().unwrap() >= 0.0, "{row}");
    }
    let j = read_json(&json);
    assert_eq!(j["prefill_tokens_per_s"]["samples"].as_array().unwrap().len(), 2);
    assert!(j["decode_tokens_per_s"]["mean"].as_f64().unwrap() > 0.0);
}

#[test]
fn bad_benchmark_flags_are_clean_errors() {
    assert_clean_error(&kvault(&["bench", "throughput", "--range-ratio", "1.5"]), &["--range-ratio", "[0, 1)"]);
    assert_clean_error(&kvault(&["bench", "latency", "--output-len", "1"]), &["--output-len", "at least 2"]);
    assert_clean_error(&kvault(&["bench", "serve", "--goodput", "ttft=3"]), &["KEY:MILLISECONDS"]);
    // A prompt longer than the model's context is refused up front, naming the limit.
    assert_clean_error(&kvault(&["bench", "throughput", "--input-len", "600", "--num-prompts", "1"]), &["512"]);
    assert_clean_error(
        &kvault(&["bench", "throughput", "--dataset-path", "/definitely/not/here.json", "--num-prompts", "1"]),
        &["/definitely/not/here.json"],
    );
}

#[test]
fn serve_benchmark_against_an_unreachable_server_fails_cleanly() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let url = format!("http://127.0.0.1:{port}");
    let o = kvault(&["bench", "serve", "--base-url", &url, "--num-prompts", "2", "--input-len", "16", "--ready-check-timeout-sec", "0"]);
    assert_clean_error(&o, &[&format!("127.0.0.1:{port}"), "--model"]);
}

/// A `kvault serve` child on a free port, killed when dropped.
struct Server {
    child: Child,
    url: String,
}

impl Server {
    fn start() -> Server {
        Server::start_with(&[])
    }

    fn start_with(extra: &[&str]) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_kvault"))
            .args(["serve", "--port", "0"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("kvault serve starts");
        let stderr = child.stderr.take().expect("piped stderr");
        let (tx, rx) = mpsc::channel();
        // Keeps draining stderr after the address is found, so the server never blocks on it.
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(i) = line.find("listening on http://") {
                    let _ = tx.send(line[i + "listening on ".len()..].trim().to_string());
                }
            }
        });
        let url = rx.recv_timeout(Duration::from_secs(120)).unwrap_or_else(|_| {
            let _ = child.kill();
            panic!("kvault serve did not print `listening on http://...` within 120 s")
        });
        Server { child, url }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn serve_benchmark_runs_end_to_end_against_kvault_serve() {
    let server = Server::start();
    let dir = tempfile::tempdir().unwrap();
    let result = dir.path().join("serve.json");
    let (prompts, input_len, output_len) = (8usize, 32usize, 16usize);
    let o = kvault(&[
        "bench", "serve", "--base-url", &server.url, "--num-prompts", &prompts.to_string(),
        "--input-len", &input_len.to_string(), "--output-len", &output_len.to_string(),
        "--goodput", "ttft:60000", "tpot:60000", "max_itl:60000",
        "--result-file", result.to_str().unwrap(),
    ]);
    let out = assert_ok(&o);

    assert!(out.starts_with("============ Serving Benchmark Result ============\n"), "{out}");
    assert_eq!(number_after(&out, "Successful requests:"), prompts as f64);
    assert_eq!(number_after(&out, "Failed requests:"), 0.0);
    assert_eq!(number_after(&out, "Total input tokens:"), (prompts * input_len) as f64);
    assert_eq!(number_after(&out, "Total generated tokens:"), (prompts * output_len) as f64);
    for label in [
        "Benchmark duration (s):",
        "Request throughput (req/s):",
        "Request goodput (req/s):",
        "Output token throughput (tok/s):",
        "Peak output token throughput (tok/s):",
        "Total token throughput (tok/s):",
        "Mean TTFT (ms):",
        "Median TTFT (ms):",
        "P99 TTFT (ms):",
        "Mean TPOT (ms):",
        "P90 ITL (ms):",
        "Mean E2EL (ms):",
        "Mean Max ITL (ms):",
    ] {
        assert!(number_after(&out, label) > 0.0, "{label} should be positive:\n{out}");
    }

    let j = read_json(&result);
    assert_eq!(j["completed"], prompts);
    assert_eq!(j["failed"], 0);
    assert_eq!(j["total_output_tokens"], prompts * output_len);
    // Every bound is generous: all requests are good.
    assert!((j["request_goodput"].as_f64().unwrap() - j["request_throughput"].as_f64().unwrap()).abs() < 1e-9);
    let requests = j["requests"].as_array().unwrap();
    assert_eq!(requests.len(), prompts);
    for r in requests {
        assert_eq!(r["success"], true, "{r}");
        assert_eq!(r["output_tokens"], output_len);
        assert_eq!(r["prompt_tokens"], input_len);
        assert_eq!(r["itls"].as_array().unwrap().len(), output_len - 1, "{r}");
        let (ttft, e2el) = (r["ttft"].as_f64().unwrap(), r["e2el"].as_f64().unwrap());
        assert!(0.0 < ttft && ttft <= e2el, "{r}");
        let itl_sum: f64 = r["itls"].as_array().unwrap().iter().map(|g| g.as_f64().unwrap()).sum();
        assert!(itl_sum <= e2el - ttft + 1e-9, "{r}");
    }
}

#[test]
fn serve_benchmark_load_controls_bound_concurrency() {
    let server = Server::start();
    let dir = tempfile::tempdir().unwrap();
    let runs: [(&str, &[&str]); 2] = [
        ("closed.json", &["--closed-loop-clients", "2"]),
        ("capped.json", &["--request-rate", "200", "--burstiness", "0.5", "--max-concurrency", "3"]),
    ];
    for (name, extra) in runs {
        let result = dir.path().join(name);
        let mut args = vec![
            "bench", "serve", "--base-url", &server.url, "--num-prompts", "10", "--input-len", "24", "--output-len", "8",
            "--result-file", result.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        let out = assert_ok(&kvault(&args));
        let j = read_json(&result);
        assert_eq!((j["completed"].as_u64(), j["total_output_tokens"].as_u64()), (Some(10), Some(80)), "{name}");
        let limit = if name == "closed.json" { 2 } else { 3 };
        let peak = j["max_concurrent_requests"].as_u64().unwrap();
        assert!(peak >= 1 && peak <= limit, "{name}: peak concurrency {peak} over {limit}");
        if name == "closed.json" {
            assert_eq!(number_after(&out, "Closed-loop clients:"), 2.0);
        } else {
            assert_eq!(number_after(&out, "Maximum request concurrency:"), 3.0);
            assert_eq!(number_after(&out, "Request rate configured (RPS):"), 200.0);
        }
    }
}

#[test]
fn serve_benchmark_follows_the_served_models_tokenizer_when_it_is_a_local_path() {
    let smol = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/models/smollm2-135m-instruct"));
    assert!(smol.is_dir(), "shared test model missing: expected {}", smol.display());
    let server = Server::start_with(&["--model", smol.to_str().unwrap()]);
    let dir = tempfile::tempdir().unwrap();
    let result = dir.path().join("smol.json");
    let o = kvault(&[
        "bench", "serve", "--base-url", &server.url, "--num-prompts", "2", "--input-len", "24", "--output-len", "3",
        "--result-file", result.to_str().unwrap(),
    ]);
    let out = assert_ok(&o);
    assert!(text(&o.stderr).contains("Tokenizer: "), "{}", text(&o.stderr));
    // SmolLM adds no BOS: only its own tokenizer makes the server count exactly 24 per prompt.
    assert_eq!(number_after(&out, "Total input tokens:"), 48.0, "{out}");
    assert_eq!(read_json(&result)["total_output_tokens"], 6);
}

#[test]
fn throughput_and_latency_name_the_kv_policy_in_their_header_and_json() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("tp.json");
    let o = kvault(&[
        "bench", "throughput", "--input-len", "32", "--output-len", "4", "--num-prompts", "2",
        "--kv-policy", "streaming", "--kv-budget", "48", "--kv-sink-tokens", "2", "--output-json", json.to_str().unwrap(),
    ]);
    let out = assert_ok(&o);
    assert_eq!(out.lines().next(), Some("KV policy: streaming (budget 48, sinks 2)"), "{out}");
    assert_eq!(number_after(&out, "Total num output tokens:"), 8.0);
    let kv = &read_json(&json)["kv_policy"];
    assert_eq!((kv["policy"].as_str(), kv["budget"].as_u64(), kv["sink_tokens"].as_u64()), (Some("streaming"), Some(48), Some(2)), "{kv}");
    let o = kvault(&["bench", "throughput", "--input-len", "16", "--output-len", "2", "--num-prompts", "1"]);
    assert_eq!(assert_ok(&o).lines().next(), Some("KV policy: full"));

    let json = dir.path().join("lat.json");
    let o = kvault(&[
        "bench", "latency", "--input-len", "16", "--output-len", "4", "--num-iters", "1", "--num-iters-warmup", "0",
        "--kv-policy", "h2o", "--kv-budget", "64", "--output-json", json.to_str().unwrap(),
    ]);
    let out = assert_ok(&o);
    let cells = |l: &str| l.split('|').map(|c| c.trim().to_string()).collect::<Vec<_>>();
    let header = cells(out.lines().next().unwrap());
    let column = header.iter().position(|c| c == "kv policy").unwrap_or_else(|| panic!("no kv policy column:\n{out}"));
    for row in out.lines().skip(2) {
        assert_eq!(cells(row)[column], "h2o (budget 64, recent 32)", "{out}");
    }
    let kv = &read_json(&json)["kv_policy"];
    assert_eq!((kv["policy"].as_str(), kv["budget"].as_u64(), kv["recent_window"].as_u64()), (Some("h2o"), Some(64), Some(32)), "{kv}");

    // lychee (the embedded model's own head roles) decodes past its budget in both benches.
    let json = dir.path().join("lychee.json");
    let o = kvault(&[
        "bench", "throughput", "--input-len", "120", "--output-len", "16", "--num-prompts", "2",
        "--kv-policy", "lychee", "--kv-budget", "32", "--output-json", json.to_str().unwrap(),
    ]);
    let out = assert_ok(&o);
    assert_eq!(out.lines().next(), Some("KV policy: lychee (budget 32, sinks 4, recent 8)"), "{out}");
    let kv = &read_json(&json)["kv_policy"];
    assert_eq!((kv["policy"].as_str(), kv["budget"].as_u64(), kv["sink_tokens"].as_u64()), (Some("lychee"), Some(32), Some(4)), "{kv}");
    let o = kvault(&[
        "bench", "latency", "--input-len", "120", "--output-len", "8", "--num-iters", "1", "--num-iters-warmup", "0",
        "--kv-policy", "lychee", "--kv-budget", "32",
    ]);
    assert!(assert_ok(&o).contains("lychee (budget 32, sinks 4, recent 8)"));
}
