//! Shared by the end-to-end tests that run one `kvault` command and read its exit status and
//! output (training and calibration commands): the runner, the shared text, and the one-line
//! error check.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

pub fn kvault(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kvault")).args(args).stdin(Stdio::null()).output().expect("the kvault binary runs")
}

/// `../shared/data/texts/alice_in_wonderland.txt`, failing loudly when the shared assets are missing.
pub fn alice() -> PathBuf {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/texts/alice_in_wonderland.txt");
    assert!(p.is_file(), "shared test assets missing: expected {}", p.display());
    p
}

/// The error of a failed command: the last line of stderr, starting with `error: `, and its only
/// line besides the command's progress notes (lines starting with `progress`, e.g. `train-gates:`).
pub fn one_line_error(out: &Output, progress: &str) -> String {
    assert!(!out.status.success(), "expected a failure");
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
    let last = stderr.lines().last().unwrap_or_default().to_string();
    assert!(last.starts_with("error: "), "not a one-line error: {stderr}");
    assert_eq!(stderr.lines().filter(|l| !l.starts_with(progress)).count(), 1, "not one line: {stderr}");
    last
}
