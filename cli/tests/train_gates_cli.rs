//! `kvault train-gates` and `--kv-policy trimkv` driven as a user would: the real binary on
//! stories260K. A 20-step run lowers the loss and writes gates that `generate --kv-policy
//! trimkv --kv-gates` loads and evicts with; `--resume` continues from the checkpoint; bad input
//! (gates for another model, a corrupt file, `--budget 0`) is a one-line error.

mod cli_support;

use std::path::{Path, PathBuf};
use std::process::Output;

use cli_support::{alice, kvault};

fn one_line_error(out: &Output) -> String {
    cli_support::one_line_error(out, "train-gates:")
}

/// A small run on stories260K; `extra` (flag, value) pairs replace the defaults or add flags
/// (a value of "" adds a bare flag).
fn train(out: &Path, steps: &str, extra: &[(&str, &str)]) -> Output {
    let text = alice();
    let mut flags: Vec<(&str, &str)> = vec![
        ("--data", text.to_str().unwrap()), ("--budget", "16"), ("--seq-len", "96"), ("--steps", steps), ("--lr", "2e-2"),
        ("--hidden", "8"), ("--bias-init", "4"), ("--checkpoint-every", "10"), ("--seed", "3"), ("--out", out.to_str().unwrap()),
    ];
    for &(flag, value) in extra {
        match flags.iter_mut().find(|f| f.0 == flag) {
            Some(f) => f.1 = value,
            None => flags.push((flag, value)),
        }
    }
    let mut args = vec!["train-gates"];
    for (flag, value) in flags {
        args.push(flag);
        if !value.is_empty() {
            args.push(value);
        }
    }
    kvault(&args)
}

/// Per-step total losses from the log lines (stderr is not a terminal here).
fn losses(out: &Output) -> Vec<f32> {
    String::from_utf8_lossy(&out.stderr)
        .lines()
        .filter_map(|l| l.strip_prefix("step ").and_then(|l| l.split("loss ").nth(1)).and_then(|l| l.split(' ').next()).and_then(|v| v.parse().ok()))
        .collect()
}

#[test]
fn twenty_steps_lower_the_loss_and_write_gates_trimkv_loads() {
    let dir = tempfile::tempdir().unwrap();
    let gates = dir.path().join("g.safetensors");
    let out = train(&gates, "20", &[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let l = losses(&out);
    assert_eq!(l.len(), 20, "{}", String::from_utf8_lossy(&out.stderr));
    let first: f32 = l[..5].iter().sum::<f32>() / 5.0;
    let last: f32 = l[15..].iter().sum::<f32>() / 5.0;
    assert!(last < first, "loss did not go down: first five {first}, last five {last} ({l:?})");
    let provenance: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.path().join("g.json")).unwrap()).unwrap();
    assert_eq!(provenance["steps"], "20");
    assert!(provenance["command"].as_str().unwrap().contains("train-gates"));
    assert!(provenance["heldout_loss"].as_str().is_some());

    let run = kvault(&["generate", "Once upon a time", "--max-tokens", "60", "--temperature", "0", "--kv-policy", "trimkv", "--kv-budget", "16", "--kv-gates", gates.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{err}");
    assert!(err.contains("KV trimkv (budget 16)") && !err.contains(" 0 evicted"), "{err}");
}

#[test]
fn resume_continues_from_the_checkpoint_and_refuses_other_settings() {
    let dir = tempfile::tempdir().unwrap();
    let gates = dir.path().join("g.safetensors");
    let straight = train(&gates, "12", &[]);
    assert!(straight.status.success());
    let straight_losses = losses(&straight);
    let resumed_gates = dir.path().join("r.safetensors");
    assert!(train(&resumed_gates, "10", &[]).status.success());
    let resumed = train(&resumed_gates, "12", &[("--resume", "")]);
    assert!(resumed.status.success(), "{}", String::from_utf8_lossy(&resumed.stderr));
    // Steps 11 and 12 replay the same windows from the same state: the same losses.
    assert_eq!(losses(&resumed), straight_losses[10..].to_vec());
    let other = train(&resumed_gates, "14", &[("--resume", ""), ("--budget", "8")]);
    let err = one_line_error(&other);
    assert!(err.contains("budget"), "{err}");
}

#[test]
fn bad_gates_and_bad_budgets_are_one_line_errors() {
    let dir = tempfile::tempdir().unwrap();
    // Gates for another model: the stories gates with one layer missing.
    let shipped = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models/assets/stories260K/trimkv_gates.safetensors");
    let bytes = std::fs::read(&shipped).unwrap();
    let truncated = dir.path().join("corrupt.safetensors");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let gen = |gates: &Path| {
        kvault(&["generate", "Hi", "--max-tokens", "4", "--kv-policy", "trimkv", "--kv-budget", "8", "--kv-gates", gates.to_str().unwrap()])
    };
    let err = one_line_error(&gen(&truncated));
    assert!(err.contains("--kv-gates") && err.contains("not a valid safetensors file"), "{err}");

    let other = dir.path().join("other.safetensors");
    let out = train(&other, "1", &[("--hidden", "4")]);
    assert!(out.status.success());
    // SmolLM2's width: a gate file trained for stories260K does not fit it, and vice versa.
    let smollm = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf");
    let run = kvault(&["generate", "-m", smollm.to_str().unwrap(), "Hi", "--max-tokens", "4", "--kv-policy", "trimkv", "--kv-budget", "8", "--kv-gates", other.to_str().unwrap()]);
    let err = one_line_error(&run);
    assert!(err.contains("another model"), "{err}");

    let err = one_line_error(&kvault(&["generate", "Hi", "--kv-policy", "trimkv", "--kv-budget", "0"]));
    assert!(err.contains("--kv-budget"), "{err}");
    let err = one_line_error(&train(&dir.path().join("x.safetensors"), "1", &[("--budget", "0")]));
    assert!(err.contains("--budget"), "{err}");
    let missing = dir.path().join("missing.safetensors");
    let err = one_line_error(&gen(&missing));
    assert!(err.contains("cannot read the gate file"), "{err}");
}
