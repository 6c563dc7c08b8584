//! `kvault bench simulate` driven as a user would: the real binary, small grids, bad flags.

use std::path::Path;
use std::process::{Command, Output, Stdio};

fn kvault(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kvault"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("the kvault binary runs")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}
fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The PNG's (width, height) from its IHDR chunk, after checking the signature.
fn png_size(path: &Path) -> (u32, u32) {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(bytes.len() > 1000, "{} is only {} bytes", path.display(), bytes.len());
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "{} is not a PNG", path.display());
    assert_eq!(&bytes[12..16], b"IHDR");
    let be = |i: usize| u32::from_be_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
    (be(16), be(20))
}

/// The data rows of the first markdown table in `text` (after header and separator).
fn table_rows(text: &str) -> Vec<Vec<String>> {
    text.lines()
        .skip_while(|l| !l.starts_with("| clients |"))
        .skip(2)
        .take_while(|l| l.starts_with('|'))
        .map(|l| l.trim_matches('|').split('|').map(|c| c.trim().to_string()).collect())
        .collect()
}

#[test]
fn simulate_prints_the_table_and_writes_png_markdown_and_json() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("results");
    let all = dir.path().join("all.json");
    let o = kvault(&[
        "bench", "simulate", "--hardware", "a100", "--workload", "uniform-3,sharegpt", "--clients", "4,12",
        "--num-requests", "16", "--seed", "7", "--output-dir", out.to_str().unwrap(), "--output-json",
        all.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "stderr: {}", stderr(&o));
    let text = stdout(&o);

    // One table per workload: a row per client count, goodput per policy, the ratio, preemptions.
    for w in ["uniform-3", "sharegpt"] {
        assert!(text.contains(&format!("## Simulated goodput: a100 (Llama-2-7B), {w}")), "{text}");
        let md = std::fs::read_to_string(out.join(format!("simulate-a100-{w}.md"))).unwrap();
        assert!(md.contains("--workload uniform-3,sharegpt"), "the report names its command: {md}");
        let rows = table_rows(&md);
        assert_eq!(rows.iter().map(|r| r[0].as_str()).collect::<Vec<_>>(), ["4", "12"], "{md}");
        for r in &rows {
            assert_eq!(r.len(), 1 + 3 + 1 + 3, "{r:?}");
            for g in &r[1..4] {
                let g: f64 = g.parse().unwrap_or_else(|_| panic!("goodput cell {g:?}"));
                assert!(g > 0.0, "{r:?}");
            }
            assert!(r[4].ends_with('×'), "{r:?}");
            assert_eq!(r[6], "0", "conservative never preempts: {r:?}");
        }
        assert_eq!(png_size(&out.join(format!("simulate-a100-{w}.png"))), (960, 600));
        let json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join(format!("simulate-a100-{w}.json"))).unwrap()).unwrap();
        assert_eq!(json.as_array().unwrap().len(), 2 * 3);
    }

    // --output-json: every run, with the fields the issue lists.
    let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&all).unwrap()).unwrap();
    let recs = json.as_array().unwrap();
    assert_eq!(recs.len(), 2 * 2 * 3);
    for r in recs {
        for key in ["hardware", "workload", "clients", "policy", "goodput_rps", "throughput_tok_s", "preemptions", "p99_ttft_ms", "p99_max_itl_ms"] {
            assert!(r.get(key).is_some(), "record lacks {key}: {r}");
        }
        assert_eq!(r["hardware"], "a100");
        assert_eq!(r["good"], 16, "closed loop: every prompt eventually meets the SLA: {r}");
    }
    let policies: Vec<&str> = recs.iter().take(3).map(|r| r["policy"].as_str().unwrap()).collect();
    assert_eq!(policies, ["aggressive", "conservative", "past-future"]);
}

#[test]
fn simulate_is_reproducible_for_a_seed() {
    let dir = tempfile::tempdir().unwrap();
    let run = |sub: &str| {
        let out = dir.path().join(sub);
        let o = kvault(&[
            "bench", "simulate", "--hardware", "local", "--workload", "sharegpt", "--clients", "6",
            "--num-requests", "12", "--policies", "past-future", "--output-dir", out.to_str().unwrap(),
        ]);
        assert!(o.status.success(), "stderr: {}", stderr(&o));
        std::fs::read_to_string(out.join("simulate-local-sharegpt.json")).unwrap()
    };
    let (a, b) = (run("a"), run("b"));
    assert_eq!(a, b);
    let recs: serde_json::Value = serde_json::from_str(&a).unwrap();
    assert_eq!(recs[0]["policy"], "past-future");
    assert_eq!(recs[0]["hardware"], "local");
}

#[test]
fn a_kv_budget_lets_more_requests_share_the_simulated_pool() {
    let dir = tempfile::tempdir().unwrap();
    let goodput = |budget: Option<&str>| -> f64 {
        let out = dir.path().join(budget.unwrap_or("full"));
        let mut argv = vec![
            "bench", "simulate", "--hardware", "a100", "--workload", "uniform-1", "--clients", "60",
            "--num-requests", "60", "--policies", "aggressive", "--output-dir", out.to_str().unwrap(),
        ];
        if let Some(b) = budget {
            argv.extend(["--kv-budget", b]);
        }
        let o = kvault(&argv);
        assert!(o.status.success(), "stderr: {}", stderr(&o));
        let recs: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("simulate-a100-uniform-1.json")).unwrap()).unwrap();
        recs[0]["goodput_rps"].as_f64().unwrap()
    };
    let (full, budgeted) = (goodput(None), goodput(Some("512")));
    assert!(budgeted > 2.0 * full, "budget 512: {budgeted} req/s vs full {full}");
    let o = kvault(&["bench", "simulate", "--kv-budget", "0", "--output-dir", dir.path().to_str().unwrap()]);
    assert!(!o.status.success() && stderr(&o).contains("--kv-budget"));
}

#[test]
fn bad_simulate_flags_fail_with_a_message_and_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("never");
    let cases: [(&[&str], &str); 5] = [
        (&["--hardware", "tpu"], "tpu"),
        (&["--workload", "alpaca"], "alpaca"),
        (&["--clients", "10,zero"], "zero"),
        (&["--sla-max-itl-ms", "-5"], "SLA"),
        (&["--hardware", "local", "--workload", "uniform-2"], "8192"),
    ];
    for (flags, needle) in cases {
        let mut argv = vec!["bench", "simulate", "--output-dir", out.to_str().unwrap()];
        argv.extend_from_slice(flags);
        let o = kvault(&argv);
        assert!(!o.status.success(), "{flags:?} succeeded");
        let err = stderr(&o);
        assert!(err.contains(needle), "{flags:?}: stderr lacks {needle:?}: {err}");
        assert!(!err.contains("panicked"), "{flags:?} panicked: {err}");
    }
    assert!(!out.exists(), "a rejected run created its output directory");
}
