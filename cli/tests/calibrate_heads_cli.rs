//! `kvault calibrate-heads` driven as a user would: the real binary on stories260K. A few
//! HardKuma steps move the expected density toward the target and write a roles file the
//! models crate loads; the heuristic marks exactly round(density × heads) heads plus layer 0;
//! `--resume` replays the same steps; bad input is a one-line error.

mod cli_support;

use std::path::{Path, PathBuf};
use std::process::Output;

use cli_support::{alice, kvault};

use kvault_models::head_roles::load_head_roles;

fn one_line_error(out: &Output) -> String {
    cli_support::one_line_error(out, "calibrate-heads:")
}

/// A small stories260K run; `extra` (flag, value) pairs replace the defaults or add flags (a
/// value of "" adds a bare flag).
fn calibrate(out: &Path, extra: &[(&str, &str)]) -> Output {
    let mut flags: Vec<(&str, &str)> = vec![
        ("--density", "0.25"), ("--context-len", "512"), ("--steps", "6"), ("--lr", "0.05"), ("--eval-samples", "1"),
        ("--checkpoint-every", "2"), ("--seed", "5"), ("--out", out.to_str().unwrap()),
    ];
    for &(flag, value) in extra {
        match flags.iter_mut().find(|f| f.0 == flag) {
            Some(f) => f.1 = value,
            None => flags.push((flag, value)),
        }
    }
    let mut args = vec!["calibrate-heads"];
    for (flag, value) in flags {
        args.push(flag);
        if !value.is_empty() {
            args.push(value);
        }
    }
    kvault(&args)
}

/// The step log lines (stderr is not a terminal here).
fn step_lines(out: &Output) -> Vec<String> {
    String::from_utf8_lossy(&out.stderr).lines().filter(|l| l.starts_with("step ")).map(str::to_string).collect()
}

/// ρ of each step.
fn densities(out: &Output) -> Vec<f64> {
    step_lines(out).iter().filter_map(|l| l.split("ρ ").nth(1).and_then(|r| r.split(' ').next()).and_then(|v| v.parse().ok())).collect()
}

fn provenance(out: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(out.with_extension("json")).unwrap()).unwrap()
}

#[test]
fn a_few_hardkuma_steps_move_the_density_toward_the_target_and_write_a_loadable_file() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("roles.safetensors");
    let run = calibrate(&out, &[("--data", alice().to_str().unwrap())]);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let rho = densities(&run);
    assert_eq!(rho.len(), 6, "{}", String::from_utf8_lossy(&run.stderr));
    assert!(rho[5] < rho[0] && rho[0] > 0.25, "ρ should fall toward 0.25: {rho:?}");
    let f = load_head_roles(&out).unwrap();
    f.check_fits(5, 4).unwrap();
    assert!(f.layer(0).iter().all(|&r| r));
    assert_eq!(f.num_retrieval() - 4, 4, "round(0.25 × 16) heads outside layer 0");
    assert!(f.kuma.is_some() && f.score.is_none());
    assert_eq!(f.metadata["method"], "hardkuma");
    assert_eq!(f.metadata["steps"], "6");
    let p = provenance(&out);
    assert!(p["command"].as_str().unwrap().contains("calibrate-heads"));
    assert_eq!(p["density"], "0.2500");
    let sets = p["comparison"]["role_sets"].as_array().unwrap();
    let names: Vec<&str> = sets.iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert!(names.contains(&"heuristic") && names.iter().any(|n| n.starts_with("hardkuma")), "{names:?}");
    assert!(sets.iter().all(|s| s["distill_mse"].as_f64().unwrap() >= 0.0));
}

#[test]
fn the_heuristic_marks_exactly_round_density_heads_and_all_of_layer_0() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("h.safetensors");
    // round(0.3 × 16) = 5.
    let run = calibrate(&out, &[("--method", "heuristic"), ("--density", "0.3"), ("--steps", "2")]);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let f = load_head_roles(&out).unwrap();
    assert!(f.layer(0).iter().all(|&r| r));
    assert_eq!(f.num_retrieval() - 4, 5);
    assert_eq!(f.metadata["method"], "heuristic");
    // The chosen heads are the best-scored ones outside layer 0.
    let score: Vec<f32> = f.score.clone().unwrap().flatten_all().unwrap().to_vec1().unwrap();
    let lowest_chosen = (4..20).filter(|&i| f.retrieval[i]).map(|i| score[i]).fold(f32::INFINITY, f32::min);
    let highest_left = (4..20).filter(|&i| !f.retrieval[i]).map(|i| score[i]).fold(f32::NEG_INFINITY, f32::max);
    assert!(lowest_chosen >= highest_left, "{score:?}");
    assert_eq!(provenance(&out)["comparison"]["role_sets"][0]["name"], "heuristic");
}

/// A step line without its throughput (which differs between runs).
fn without_speed(line: &str) -> String {
    line.rsplit_once(" lr ").map_or(line, |(head, _)| head).to_string()
}

#[test]
fn resume_replays_the_same_steps_and_refuses_other_settings() {
    let dir = tempfile::tempdir().unwrap();
    let straight_out = dir.path().join("s.safetensors");
    let straight = calibrate(&straight_out, &[("--eval-samples", "0")]);
    assert!(straight.status.success(), "{}", String::from_utf8_lossy(&straight.stderr));
    // The same run in two slices: stopped after step 3 (between checkpoints), then resumed.
    let sliced_out = dir.path().join("r.safetensors");
    let first = calibrate(&sliced_out, &[("--eval-samples", "0"), ("--stop-at", "3")]);
    assert!(first.status.success(), "{}", String::from_utf8_lossy(&first.stderr));
    assert!(!sliced_out.exists() && sliced_out.with_extension("ckpt.safetensors").is_file());
    let resumed = calibrate(&sliced_out, &[("--eval-samples", "0"), ("--resume", "")]);
    assert!(resumed.status.success(), "{}", String::from_utf8_lossy(&resumed.stderr));
    assert!(String::from_utf8_lossy(&resumed.stderr).contains("resumed at step 3"));
    let tail: Vec<String> = step_lines(&resumed).iter().map(|l| without_speed(l)).collect();
    let want: Vec<String> = step_lines(&straight)[3..].iter().map(|l| without_speed(l)).collect();
    assert_eq!(tail, want);
    let (s, r) = (load_head_roles(&straight_out).unwrap(), load_head_roles(&sliced_out).unwrap());
    assert_eq!(r.retrieval, s.retrieval);
    let flat = |t: &candle_core::Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert_eq!(flat(&r.kuma.as_ref().unwrap().0), flat(&s.kuma.as_ref().unwrap().0));
    let other = calibrate(&sliced_out, &[("--eval-samples", "0"), ("--resume", ""), ("--density", "0.5")]);
    let err = one_line_error(&other);
    assert!(err.contains("target_density"), "{err}");
}

#[test]
fn bad_input_is_a_one_line_error_naming_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("x.safetensors");
    for d in ["0", "1", "1.5", "-0.1"] {
        let err = one_line_error(&calibrate(&out, &[("--density", d)]));
        assert!(err.contains("--density"), "{err}");
    }
    let err = one_line_error(&calibrate(&out, &[("--steps", "0")]));
    assert!(err.contains("--steps"), "{err}");
    let missing = dir.path().join("nothing-here.txt");
    let err = one_line_error(&calibrate(&out, &[("--data", missing.to_str().unwrap())]));
    assert!(err.contains("--data") && err.contains("no such file"), "{err}");
    let err = one_line_error(&calibrate(&out, &[("--context-len", "4096")]));
    assert!(err.contains("--context-len 4096") && err.contains("512"), "{err}");
    let err = one_line_error(&calibrate(&out, &[("--context-len", "300")]));
    assert!(err.contains("--context-len 300") && err.contains("too short"), "{err}");
    let err = one_line_error(&calibrate(&out, &[("--method", "heuristic"), ("--budget", "8")]));
    assert!(err.contains("--budget"), "{err}");
    assert!(!out.exists());
}

#[test]
fn the_shipped_roles_load_fit_their_models_and_say_how_they_were_made() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let smollm = root.join("gates/smollm2-135m-instruct");
    for (file, method) in [("lychee_heads.safetensors", "hardkuma"), ("lychee_heads.heuristic.safetensors", "heuristic")] {
        let f = load_head_roles(&smollm.join(file)).unwrap();
        f.check_fits(30, 3).unwrap();
        // ~10% of the 87 heads outside layer 0.
        assert_eq!(f.num_retrieval() - 3, 9, "{file}");
        assert_eq!(f.metadata["method"], method);
        let p = provenance(&smollm.join(file));
        assert_eq!(p["density"], format!("{:.4}", f.density()));
        assert!(p["command"].as_str().unwrap().contains("calibrate-heads"));
    }
    // The hardkuma run's JSON holds the comparison that made it the shipped file.
    let p = provenance(&smollm.join("lychee_heads.safetensors"));
    let sets = p["comparison"]["role_sets"].as_array().unwrap();
    let mse = |name: &str| sets.iter().find(|s| s["name"].as_str().unwrap().starts_with(name)).unwrap()["distill_mse"].as_f64().unwrap();
    assert!(mse("hardkuma (top") < mse("heuristic"));
    let stories = load_head_roles(&root.join("models/assets/stories260K/lychee_heads.safetensors")).unwrap();
    stories.check_fits(5, 4).unwrap();
}
