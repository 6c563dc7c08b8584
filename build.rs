//! Build-time work of the `kvault` binary: stamps the version string with the git commit and the
//! enabled features, so `kvault --version`, `/version` and `kvault doctor` say exactly what runs.
//! (CUDA kernel compilation lives in kernels/build.rs, next to the sources it compiles.)

use std::process::Command;

fn main() {
    let commit = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".to_string());
    println!("cargo:rustc-env=KVAULT_GIT_COMMIT={commit}");
    let cuda = std::env::var_os("CARGO_FEATURE_CUDA").is_some();
    println!("cargo:rustc-env=KVAULT_FEATURES={}", if cuda { "cuda" } else { "cpu" });
    // Re-stamp when HEAD moves; paths are relative to cli/ (this script's package).
    println!("cargo:rerun-if-changed=../.git/HEAD");
    println!("cargo:rerun-if-changed=../.git/refs/heads");
    println!("cargo:rerun-if-changed=../build.rs");
}
