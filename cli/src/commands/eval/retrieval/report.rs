//! What a run found: every sample's verdict, the exact-match accuracy of every (policy,
//! context length, depth) cell, the table printed on stdout, the JSON file and the heat-map
//! panels.
//!
//! Must not know: how prompts were built or answered.

use kvault_engine::kv_policy::KvPolicy;
use serde_json::{json, Value};

use super::heatmap::Panel;
use super::tasks::Task;
use crate::kv;

/// One sample answered under one policy.
#[derive(Clone, Debug, PartialEq)]
pub struct SampleResult {
    pub context_len: usize,
    pub depth: f64,
    pub index: usize,
    pub policy: KvPolicy,
    pub prompt_tokens: usize,
    /// Tokens before the question (`--two-turn` compresses these first).
    pub context_tokens: usize,
    /// Where the asked needle starts, and its depth measured in the haystack's tokens.
    pub needle_token: usize,
    pub needle_depth: f64,
    pub expected: String,
    pub output: String,
    pub correct: bool,
    pub ruler_score: f64,
}

/// The run's settings, as reported.
pub struct RunInfo {
    pub task: Task,
    pub model: String,
    pub backend: String,
    pub haystack: String,
    pub two_turn: bool,
    pub seed: u64,
    pub samples: usize,
    pub context_lens: Vec<usize>,
    pub depths: Vec<f64>,
    pub policies: Vec<KvPolicy>,
    pub max_tokens: usize,
}

/// Right answers out of all in one group of samples.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Tally {
    pub correct: usize,
    pub total: usize,
    pub ruler_score_sum: f64,
}

impl Tally {
    fn add(&mut self, r: &SampleResult) {
        self.correct += r.correct as usize;
        self.total += 1;
        self.ruler_score_sum += r.ruler_score;
    }

    pub fn accuracy(&self) -> f64 {
        if self.total == 0 {
            0.0
        } else {
            self.correct as f64 / self.total as f64
        }
    }

    pub fn ruler_score(&self) -> f64 {
        if self.total == 0 {
            0.0
        } else {
            self.ruler_score_sum / self.total as f64
        }
    }
}

/// "full", "h2o 128": short enough for table rows and panel titles.
pub fn policy_label(p: &KvPolicy) -> String {
    match p.budget() {
        None => p.kind().as_str().to_string(),
        Some(b) => format!("{} {b}", p.kind()),
    }
}

pub struct Report {
    pub info: RunInfo,
    pub results: Vec<SampleResult>,
    pub elapsed_s: f64,
}

impl Report {
    /// Samples of one policy, context length and (optionally) depth.
    pub fn tally(&self, policy: &KvPolicy, context_len: usize, depth: Option<f64>) -> Tally {
        let mut t = Tally::default();
        for r in &self.results {
            if r.policy == *policy && r.context_len == context_len && depth.is_none_or(|d| r.depth == d) {
                t.add(r);
            }
        }
        t
    }

    fn protocol(&self) -> &'static str {
        if self.info.two_turn {
            "two-turn (context compressed before the question)"
        } else {
            "one-turn (question after the context)"
        }
    }

    /// A header line, then one row per (policy, context length): the accuracy at each depth
    /// and over all depths, in percent.
    pub fn table(&self) -> String {
        let i = &self.info;
        let mut out = format!(
            "Task {}, {}, haystack {}, {} samples per cell, seed {}, {}\nExact-match accuracy (%):\n",
            i.task,
            i.model,
            i.haystack,
            i.samples,
            i.seed,
            self.protocol()
        );
        let label_w = i.policies.iter().map(|p| policy_label(p).len()).max().unwrap_or(6).max(6);
        out.push_str(&format!("{:<label_w$} {:>7}", "policy", "context"));
        for d in &i.depths {
            out.push_str(&format!(" {:>6}", format!("d={d}")));
        }
        out.push_str(&format!(" {:>6}\n", "all"));
        for p in &i.policies {
            for &c in &i.context_lens {
                out.push_str(&format!("{:<label_w$} {c:>7}", policy_label(p)));
                for &d in &i.depths {
                    out.push_str(&format!(" {:>6.0}", self.tally(p, c, Some(d)).accuracy() * 100.0));
                }
                out.push_str(&format!(" {:>6.1}\n", self.tally(p, c, None).accuracy() * 100.0));
            }
        }
        out.push_str(&format!("{} answers in {:.1} s\n", self.results.len(), self.elapsed_s));
        out
    }

    pub fn json(&self) -> Value {
        let i = &self.info;
        let mut cells = Vec::new();
        let mut summary = Vec::new();
        for p in &i.policies {
            for &c in &i.context_lens {
                for &d in &i.depths {
                    let t = self.tally(p, c, Some(d));
                    cells.push(json!({
                        "policy": policy_label(p), "context_len": c, "depth": d,
                        "correct": t.correct, "total": t.total, "accuracy": t.accuracy(), "ruler_score": t.ruler_score(),
                    }));
                }
                let t = self.tally(p, c, None);
                summary.push(json!({
                    "policy": policy_label(p), "context_len": c,
                    "correct": t.correct, "total": t.total, "accuracy": t.accuracy(), "ruler_score": t.ruler_score(),
                }));
            }
        }
        let samples: Vec<Value> = self
            .results
            .iter()
            .map(|r| {
                json!({
                    "policy": policy_label(&r.policy), "context_len": r.context_len, "depth": r.depth, "index": r.index,
                    "prompt_tokens": r.prompt_tokens, "context_tokens": r.context_tokens,
                    "needle_token": r.needle_token, "needle_depth": r.needle_depth,
                    "expected": r.expected, "output": r.output, "correct": r.correct, "ruler_score": r.ruler_score,
                })
            })
            .collect();
        json!({
            "task": i.task.as_str(),
            "model": i.model,
            "backend": i.backend,
            "haystack": i.haystack,
            "two_turn": i.two_turn,
            "seed": i.seed,
            "samples_per_cell": i.samples,
            "context_lens": i.context_lens,
            "depths": i.depths,
            "max_tokens": i.max_tokens,
            "policies": i.policies.iter().map(|p| {
                let mut v = kv::policy_json(p);
                v["label"] = json!(policy_label(p));
                v
            }).collect::<Vec<_>>(),
            "accuracy": cells,
            "summary": summary,
            "samples": samples,
            "elapsed_s": self.elapsed_s,
        })
    }

    /// One heat-map panel per policy.
    pub fn panels(&self) -> Vec<Panel> {
        let i = &self.info;
        i.policies
            .iter()
            .map(|p| {
                let all: Vec<Tally> = i.context_lens.iter().map(|&c| self.tally(p, c, None)).collect();
                let (correct, total) = all.iter().fold((0, 0), |(a, b), t| (a + t.correct, b + t.total));
                Panel {
                    title: format!("{} — {:.0}%", policy_label(p), 100.0 * correct as f64 / total.max(1) as f64),
                    contexts: i.context_lens.clone(),
                    depths: i.depths.clone(),
                    accuracy: i.depths.iter().map(|&d| i.context_lens.iter().map(|&c| self.tally(p, c, Some(d)).accuracy()).collect()).collect(),
                }
            })
            .collect()
    }

    /// The chart's title and subtitle; paths shortened to file names to fit.
    pub fn plot_titles(&self) -> (String, String) {
        let i = &self.info;
        let short = |s: &str| std::path::Path::new(s).file_name().map_or(s.to_string(), |f| f.to_string_lossy().into_owned());
        (
            format!("{}: exact-match accuracy by needle depth and context length", i.task),
            format!("{} · {} · haystack {} · {} samples per cell · seed {}", short(&i.model), self.protocol(), short(&i.haystack), i.samples, i.seed),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(policy: KvPolicy, context_len: usize, depth: f64, correct: bool) -> SampleResult {
        SampleResult {
            context_len, depth, index: 0, policy, prompt_tokens: 10, context_tokens: 8, needle_token: 3, needle_depth: depth,
            expected: "1".into(), output: if correct { " 1." } else { " 2." }.into(), correct, ruler_score: correct as u8 as f64,
        }
    }

    fn report() -> Report {
        let h2o = KvPolicy::H2o { budget: 64, recent_window: 32 };
        let results = vec![
            result(KvPolicy::Full, 1024, 0.1, true),
            result(KvPolicy::Full, 1024, 0.1, true),
            result(KvPolicy::Full, 1024, 0.9, true),
            result(KvPolicy::Full, 1024, 0.9, false),
            result(h2o, 1024, 0.1, false),
            result(h2o, 1024, 0.1, false),
            result(h2o, 1024, 0.9, true),
            result(h2o, 1024, 0.9, false),
        ];
        Report {
            info: RunInfo {
                task: Task::Passkey, model: "m".into(), backend: "in-process".into(), haystack: "filler".into(), two_turn: false,
                seed: 0, samples: 2, context_lens: vec![1024], depths: vec![0.1, 0.9], policies: vec![KvPolicy::Full, h2o], max_tokens: 16,
            },
            results,
            elapsed_s: 2.0,
        }
    }

    #[test]
    fn cells_count_each_policy_context_and_depth_apart() {
        let r = report();
        assert_eq!(r.tally(&KvPolicy::Full, 1024, Some(0.1)).accuracy(), 1.0);
        assert_eq!(r.tally(&KvPolicy::Full, 1024, Some(0.9)).accuracy(), 0.5);
        assert_eq!(r.tally(&KvPolicy::Full, 1024, None).accuracy(), 0.75);
        assert_eq!(r.tally(&r.info.policies[1], 1024, None).accuracy(), 0.25);
        assert_eq!(r.tally(&KvPolicy::Full, 2048, None), Tally::default());
    }

    #[test]
    fn the_table_has_a_row_per_policy_and_context_with_depth_columns() {
        let table = report().table();
        let lines: Vec<&str> = table.lines().collect();
        assert!(lines[0].starts_with("Task passkey, m, haystack filler, 2 samples per cell, seed 0, one-turn"), "{table}");
        assert_eq!(lines[2].split_whitespace().collect::<Vec<_>>(), ["policy", "context", "d=0.1", "d=0.9", "all"]);
        assert_eq!(lines[3].split_whitespace().collect::<Vec<_>>(), ["full", "1024", "100", "50", "75.0"]);
        assert_eq!(lines[4].split_whitespace().collect::<Vec<_>>(), ["h2o", "64", "1024", "0", "50", "25.0"]);
    }

    #[test]
    fn json_and_panels_carry_the_same_cells() {
        let r = report();
        let j = r.json();
        assert_eq!(j["accuracy"].as_array().unwrap().len(), 4);
        assert_eq!(j["accuracy"][1]["accuracy"], 0.5);
        assert_eq!(j["summary"][1]["policy"], "h2o 64");
        assert_eq!(j["summary"][1]["accuracy"], 0.25);
        assert_eq!(j["policies"][1]["recent_window"], 32);
        assert_eq!(j["samples"].as_array().unwrap().len(), 8);
        let panels = r.panels();
        assert_eq!(panels[0].accuracy, vec![vec![1.0], vec![0.5]]);
        assert_eq!(panels[1].title, "h2o 64 — 25%");
    }
}
