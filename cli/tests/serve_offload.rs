//! The offload tier through the real `kvault serve`: a prefix cache that survives a restart
//! (SmolLM2, ≥ 90% cached, identical greedy output and logprobs), damaged or foreign files that
//! are misses with identical output, two servers on one directory, and bad flags.

mod serve_support;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use serve_support::*;

/// About 600 SmolLM2 tokens of a public-domain text.
fn long_prompt() -> String {
    let text = std::fs::read_to_string(shared().join("data/texts/pride_and_prejudice.txt")).unwrap();
    text[20_000..22_600].to_string()
}

/// A prompt stories260K (512-token context, byte-level vocabulary) takes whole.
fn short_prompt() -> String {
    long_prompt()[..500].to_string()
}

fn tier_args(dir: &Path) -> Vec<String> {
    vec!["--served-model-name".into(), "m".into(), "--model".into(), smollm2(), "--kv-offload-dir".into(), dir.display().to_string(), "--kv-offload-disk".into(), "2GiB".into()]
}

fn start(args: &[String]) -> Server {
    Server::start(&args.iter().map(String::as_str).collect::<Vec<_>>())
}

/// Greedy completion with logprobs: (text, token logprobs, cached tokens, prompt tokens).
fn complete(server: &Server, prompt: &str) -> (String, Value, u64, u64) {
    let (status, body) = server.post(
        "/v1/completions",
        &json!({"model": "m", "prompt": prompt, "max_tokens": 12, "temperature": 0, "logprobs": 2}),
    );
    assert_eq!(status, 200, "{body}");
    let usage = &body["usage"];
    (
        body["choices"][0]["text"].as_str().unwrap().to_string(),
        body["choices"][0]["logprobs"].clone(),
        usage["prompt_tokens_details"]["cached_tokens"].as_u64().unwrap_or(0),
        usage["prompt_tokens"].as_u64().unwrap(),
    )
}

/// Waits until the disk tier has published at least `blocks` blocks.
fn wait_written(server: &Server, blocks: f64) {
    let t = Instant::now();
    while server.metric("kvault:kv_offload_blocks{tier=\"disk\"}").unwrap_or(0.0) < blocks {
        assert!(t.elapsed() < Duration::from_secs(120), "the disk tier never held {blocks} blocks; stderr:\n{}", server.stderr());
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn extents(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for sub in std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).filter(|p| p.is_dir()) {
        for f in std::fs::read_dir(&sub).unwrap().map(|e| e.unwrap().path()) {
            if f.extension().is_some_and(|x| x == "kvx") {
                out.push(f);
            }
        }
    }
    out.sort();
    out
}

fn copy_dir(from: &Path, to: &Path) {
    for sub in std::fs::read_dir(from).unwrap().map(|e| e.unwrap().path()).filter(|p| p.is_dir()) {
        let dst = to.join(sub.file_name().unwrap());
        std::fs::create_dir_all(&dst).unwrap();
        for f in std::fs::read_dir(&sub).unwrap().map(|e| e.unwrap().path()) {
            std::fs::copy(&f, dst.join(f.file_name().unwrap())).unwrap();
        }
    }
}

#[test]
fn a_restarted_server_serves_the_prompt_from_disk_with_identical_output_and_damage_is_a_miss() {
    let dir = tempfile::tempdir().unwrap();
    let prompt = long_prompt();
    let (text, logprobs, cached, prompt_tokens) = {
        let server = start(&tier_args(dir.path()));
        let first = complete(&server, &prompt);
        assert_eq!(first.2, 0, "a cold start has nothing cached");
        wait_written(&server, (first.3 / 16) as f64 - 1.0);
        first
        // Dropping the server kills it (SIGKILL): only what was published survives.
    };
    assert_eq!(cached, 0);
    let pristine = tempfile::tempdir().unwrap();
    copy_dir(dir.path(), pristine.path());

    // Restart on the same directory.
    {
        let server = start(&tier_args(dir.path()));
        assert!(server.stderr().contains("KV offload tier:") && server.stderr().contains("holds"), "start-up line:\n{}", server.stderr());
        let again = complete(&server, &prompt);
        assert!(again.2 * 10 >= prompt_tokens * 9, "{} of {prompt_tokens} prompt tokens cached", again.2);
        assert_eq!((&again.0, &again.1), (&text, &logprobs), "output after a disk hit differs");
        assert!(server.metric("kvault:kv_offload_hits_total{tier=\"disk\"}").unwrap() > 0.0);
    }

    // Each kind of damage, on a fresh copy: a miss (or a shorter hit), identical output, counted.
    type Damage = fn(&Path);
    let cases: Vec<(&str, Damage, bool)> = vec![
        ("flipped byte in the first block", |d| flip_first_block(&extents(d)[0]), true),
        ("flipped byte in a header", |d| flip(&extents(d)[0], 30), true),
        ("truncated file", |d| truncate(&extents(d)[0]), true),
        ("half-written temporary", |d| {
            let e = &extents(d)[0];
            let bytes = std::fs::read(e).unwrap();
            std::fs::write(e.with_extension("kvx.tmp"), &bytes[..bytes.len() / 2]).unwrap();
            std::fs::remove_file(e).unwrap();
        }, true),
    ];
    for (what, damage, counted) in cases {
        let case = tempfile::tempdir().unwrap();
        copy_dir(pristine.path(), case.path());
        damage(case.path());
        let server = start(&tier_args(case.path()));
        let got = complete(&server, &prompt);
        assert_eq!((&got.0, &got.1), (&text, &logprobs), "{what}: output differs");
        assert!(got.2 * 10 < prompt_tokens * 9, "{what}: {} tokens still came from the damaged file", got.2);
        let discarded = server.metric("kvault:kv_offload_discarded_total{tier=\"disk\"}").unwrap();
        assert_eq!(discarded > 0.0, counted, "{what}: discarded {discarded}; stderr:\n{}", server.stderr());
        assert_eq!(server.get("/health").0, 200, "{what}: the server survives");
    }
}

fn flip(path: &Path, at: usize) {
    let mut bytes = std::fs::read(path).unwrap();
    bytes[at] ^= 0x5a;
    std::fs::write(path, bytes).unwrap();
}

/// A byte inside the first block's data: past the header (56 fixed bytes, 36 per block, a
/// 4-byte checksum), so only the block's own checksum can catch it.
fn flip_first_block(path: &Path) {
    let bytes = std::fs::read(path).unwrap();
    let n = u32::from_le_bytes(bytes[12..16].try_into().unwrap()) as usize;
    flip(path, 56 + 36 * n + 4 + 100);
}

fn truncate(path: &Path) {
    let len = std::fs::metadata(path).unwrap().len();
    std::fs::OpenOptions::new().write(true).open(path).unwrap().set_len(len - 4096).unwrap();
}

#[test]
fn a_file_from_another_model_is_refused_and_a_kill_mid_write_leaves_nothing_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let prompt = long_prompt();
    // stories260K writes its blocks first (another model, other blocks): moved into SmolLM2's
    // place, they must be refused by their header's fingerprint.
    {
        let stories = start(&["--served-model-name".into(), "m".into(), "--kv-offload-dir".into(), dir.path().display().to_string(), "--kv-offload-disk".into(), "1GiB".into()]);
        let (status, body) = stories.post("/v1/completions", &json!({"model": "m", "prompt": short_prompt(), "max_tokens": 2}));
        assert_eq!(status, 200, "{body}");
        wait_written(&stories, 1.0);
    }
    let foreign = extents(dir.path());
    assert!(!foreign.is_empty());
    // SmolLM2 once, killed right after its answer, while its blocks are likely being written.
    let (text, logprobs) = {
        let server = start(&tier_args(dir.path()));
        let got = complete(&server, &prompt);
        (got.0, got.1)
    };
    let smol_dir = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.is_dir() && !foreign.iter().any(|f| f.starts_with(p)))
        .expect("SmolLM2's subdirectory");
    for f in &foreign {
        std::fs::copy(f, smol_dir.join(format!("foreign-{}", f.file_name().unwrap().to_string_lossy()))).unwrap();
    }
    let server = start(&tier_args(dir.path()));
    let got = complete(&server, &prompt);
    assert_eq!((&got.0, &got.1), (&text, &logprobs), "output differs after a foreign file and a kill mid-write");
    assert!(server.metric("kvault:kv_offload_discarded_total{tier=\"disk\"}").unwrap() >= foreign.len() as f64);
    assert!(std::fs::read_dir(&smol_dir).unwrap().all(|e| !e.unwrap().file_name().to_string_lossy().starts_with("foreign-")), "foreign files are deleted");
}

#[test]
fn two_servers_on_one_directory_share_it_safely() {
    let dir = tempfile::tempdir().unwrap();
    let args = ["--served-model-name".to_string(), "m".into(), "--kv-offload-dir".to_string(), dir.path().display().to_string(), "--kv-offload-disk".into(), "1GiB".into()];
    let body = json!({"model": "m", "prompt": short_prompt(), "max_tokens": 8, "temperature": 0});
    let (a, b) = (start(&args), start(&args));
    assert!(b.stderr().contains("read-only") || a.stderr().contains("read-only"), "one of them is read-only:\n{}\n{}", a.stderr(), b.stderr());
    let (sa, ra) = a.post("/v1/completions", &body);
    let (sb, rb) = b.post("/v1/completions", &body);
    assert_eq!((sa, sb), (200, 200));
    assert_eq!(ra["choices"][0]["text"], rb["choices"][0]["text"]);
    wait_written(&a, 1.0);
    drop((a, b));
    let c = start(&args);
    let (_, rc) = c.post("/v1/completions", &body);
    assert_eq!(rc["choices"][0]["text"], ra["choices"][0]["text"]);
    assert!(rc["usage"]["prompt_tokens_details"]["cached_tokens"].as_u64().unwrap() > 0, "{rc}");
    assert_eq!(c.metric("kvault:kv_offload_discarded_total{tier=\"disk\"}"), Some(0.0));
}

fn serve_fails(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_kvault")).args(["serve", "--port", "0"]).args(args).output().unwrap();
    assert!(!out.status.success(), "{args:?} should not start");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn bad_offload_flags_are_start_up_errors_naming_the_problem() {
    let err = serve_fails(&["--kv-offload-dir", "/nonexistent/kv", "--kv-offload-disk", "1GiB"]);
    assert!(err.contains("/nonexistent/kv") && err.contains("no such directory"), "{err}");
    let err = serve_fails(&["--kv-offload-ram", "1KiB"]);
    assert!(err.contains("--kv-offload-ram") && err.contains("smaller than one KV block"), "{err}");
    let dir = tempfile::tempdir().unwrap();
    let err = serve_fails(&["--kv-offload-dir", &dir.path().display().to_string(), "--kv-offload-disk", "1KiB"]);
    assert!(err.contains("--kv-offload-disk") && err.contains("smaller than one KV block"), "{err}");
    let err = serve_fails(&["--preemption", "swap"]);
    assert!(err.contains("--kv-offload-ram"), "{err}");
    let err = serve_fails(&["--kv-offload-dir", &dir.path().display().to_string()]);
    assert!(err.contains("--kv-offload-disk"), "{err}");
    // A directory this user cannot write (skipped as root, who can write anywhere).
    let ro = tempfile::tempdir().unwrap();
    let mut perms = std::fs::metadata(ro.path()).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o555);
    std::fs::set_permissions(ro.path(), perms).unwrap();
    if std::fs::write(ro.path().join("probe"), b"x").is_err() {
        let err = serve_fails(&["--kv-offload-dir", &ro.path().display().to_string(), "--kv-offload-disk", "1GiB"]);
        assert!(err.contains(&ro.path().display().to_string()), "{err}");
    }
}

#[test]
fn doctor_shows_the_tier_configuration() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_kvault"))
        .args(["doctor", "--kv-offload-ram", "2GiB", "--kv-offload-dir", &dir.path().display().to_string(), "--kv-offload-disk", "10GiB", "--preemption", "auto"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("kv offload: RAM 2.00 GiB, disk 10.00 GiB in") && text.contains("preemption auto"), "{text}");
}
