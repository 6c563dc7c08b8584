//! `/openapi.json` against the live server: schemathesis (PyPI) generates requests for every
//! documented operation from the document itself (examples, boundary values, random and
//! invalid bodies; a bounded number per operation, fixed seed) and checks that no response is a
//! 5xx and that every status, content type and body (streamed events included) conforms to the
//! document. stories260K serves, with SmolLM2's chat template so chat requests get past the
//! template; its vocabulary and context are small, so every generated request is quick.

mod serve_support;

use std::process::Command;
use std::time::Duration;

use serve_support::{artifacts, shared, web_python, Server};

/// Examples per operation in the fuzzing phase (the coverage phase adds its boundary cases).
const MAX_EXAMPLES: &str = "40";

#[test]
fn schemathesis_finds_no_server_error_and_no_schema_violation() {
    let python = web_python();
    let schemathesis = python.with_file_name("schemathesis");
    assert!(schemathesis.is_file(), "no schemathesis beside {}; run scripts/install-web-test-deps.sh", python.display());
    let template = shared().join("models/smollm2-135m-instruct/chat_template.jinja");
    let s = Server::start(&["--chat-template", template.to_str().unwrap()]);
    let reports = artifacts("schemathesis");
    let out = Command::new(&schemathesis)
        .args(["run", &s.url("/openapi.json")])
        .args(["--checks", "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance"])
        .args(["--max-examples", MAX_EXAMPLES, "--seed", "20251206", "--workers", "1", "--request-timeout", "60"])
        .args(["--report", "junit", "--report-dir"])
        .arg(&reports)
        .env("NO_COLOR", "1")
        // Its cache (.schemathesis/) goes beside the reports, not into the source tree.
        .current_dir(&reports)
        .output()
        .expect("schemathesis runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let summary = stdout.find("SUMMARY").map_or(stdout.as_ref(), |i| &stdout[i..]);
    assert!(out.status.success(), "schemathesis found problems:\n{stdout}\n{stderr}\nserver:\n{}", s.stderr());
    assert!(stdout.contains("Tested: 12") && summary.contains(" passed"), "{stdout}");
    assert!(!summary.contains("failure") && !summary.contains("error"), "{summary}");
    println!("{summary}");
    s.wait_idle(Duration::from_secs(30));
}
