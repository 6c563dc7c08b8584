//! The official `openai` Python SDK drives `kvault serve` (cli/tests/openai_sdk/): completions
//! and chat, streaming and not, n, logprobs, stop, seeds, include_usage, the `kv_*` policy
//! fields through `extra_body` (and their 400s), 32 async streams.
//! The SDK lives in a virtualenv made by scripts/install-openai-venv.sh; scripts/test.sh runs it
//! and exports KVAULT_TEST_PYTHON.

mod serve_support;

use std::path::PathBuf;
use std::process::Command;

use serve_support::{smollm2, Server};

fn python() -> PathBuf {
    let path = match std::env::var_os("KVAULT_TEST_PYTHON") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(std::env::var_os("HOME").expect("HOME is set")).join(".cache/kvault/openai-venv/bin/python"),
    };
    assert!(
        path.is_file(),
        "no Python with the openai SDK at {} (set KVAULT_TEST_PYTHON); create it with scripts/install-openai-venv.sh",
        path.display()
    );
    path
}

#[test]
fn official_openai_python_sdk_works_unchanged() {
    let python = python();
    let s = Server::start(&["--model", &smollm2(), "--served-model-name", "smollm2"]);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/openai_sdk/test_openai_sdk.py");
    let out = Command::new(&python)
        .arg(script)
        .env("KVAULT_BASE_URL", s.url("/v1"))
        .env("KVAULT_MODEL", "smollm2")
        .output()
        .expect("python runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "SDK tests failed:\n{stdout}\n{stderr}\nserver:\n{}", s.stderr());
    assert!(stdout.contains(" passed, 0 failed"), "{stdout}");
    s.wait_idle(std::time::Duration::from_secs(30));
}
