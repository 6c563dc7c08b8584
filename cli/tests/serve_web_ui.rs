//! The web page in a real browser: headless Chromium (Debian's chromium + chromium-driver)
//! driven by selenium runs cli/tests/web_ui/test_web_ui.py against `kvault serve` with SmolLM2:
//! the dashboard updates at least twice a second, a chat message streams its reply into the
//! page, the dashboard shows the running requests' blocks (and the message's KV policy) while
//! they run and a free pool after. Screenshots land in target/tmp/web-ui/.

mod serve_support;

use std::process::Command;
use std::time::Duration;

use serve_support::{artifacts, smollm2, web_python, Server};

#[test]
fn the_page_streams_a_chat_reply_and_the_dashboard_follows_the_kv_blocks() {
    let python = web_python();
    let shots = artifacts("web-ui");
    let s = Server::start(&["--model", &smollm2(), "--served-model-name", "smollm2"]);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/web_ui/test_web_ui.py");
    let out = Command::new(&python).arg(script).arg(&s.base).arg(&shots).output().expect("python runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains(" passed, 0 failed"),
        "browser test failed (screenshots in {}):\n{stdout}\n{stderr}\nserver:\n{}",
        shots.display(),
        s.stderr()
    );
    for name in ["idle.png", "under-load.png", "after.png"] {
        let png = shots.join(name);
        let size = std::fs::metadata(&png).map(|m| m.len()).unwrap_or(0);
        assert!(size > 10_000, "{} missing or blank ({size} bytes)", png.display());
    }
    println!("{}screenshots: {}", stdout, shots.display());
    s.wait_idle(Duration::from_secs(30));
}
