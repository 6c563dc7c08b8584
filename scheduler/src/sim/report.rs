//! Markdown rendering of simulation records (the CLI prints these; plotting is the CLI's).
//!
//! Owns: table layout. Must not know how records were produced.

use std::collections::BTreeMap;
use std::fmt::Write;

use super::SimRecord;

/// One row per record with every headline metric.
pub fn markdown_table(records: &[SimRecord]) -> String {
    let mut s = String::from(
        "| hardware | workload | clients | policy | goodput (req/s) | throughput (tok/s) | preemptions | p99 TTFT (ms) | p99 max ITL (ms) |\n\
         |---|---|---:|---|---:|---:|---:|---:|---:|\n",
    );
    for r in records {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {:.3}{} | {:.0} | {} | {:.0} | {:.0} |",
            r.hardware, r.workload, r.clients, r.policy, r.goodput_rps,
            if r.timed_out { " (timed out)" } else { "" },
            r.throughput_tok_s, r.preemptions, r.p99_ttft_ms, r.p99_max_itl_ms
        );
    }
    s
}

/// Goodput pivoted by policy: one row per (hardware, workload, clients), one column per policy
/// (in first-seen order), plus past-future's ratio to the best other policy when present.
pub fn goodput_table(records: &[SimRecord]) -> String {
    let mut policies: Vec<&str> = Vec::new();
    let mut rows: BTreeMap<(String, String, usize), BTreeMap<&str, f64>> = BTreeMap::new();
    for r in records {
        if !policies.contains(&r.policy.as_str()) {
            policies.push(&r.policy);
        }
        rows.entry((r.hardware.clone(), r.workload.clone(), r.clients))
            .or_default()
            .insert(&r.policy, r.goodput_rps);
    }
    let has_pf = policies.contains(&"past-future") && policies.len() > 1;
    let mut s = String::from("| hardware | workload | clients |");
    for p in &policies {
        let _ = write!(s, " {p} |");
    }
    if has_pf {
        s.push_str(" PF / best other |");
    }
    s.push_str("\n|---|---|---:|");
    s.push_str(&"---:|".repeat(policies.len() + usize::from(has_pf)));
    s.push('\n');
    for ((hw, wl, clients), cells) in &rows {
        let _ = write!(s, "| {hw} | {wl} | {clients} |");
        for p in &policies {
            match cells.get(p) {
                Some(g) => { let _ = write!(s, " {g:.3} |"); }
                None => s.push_str(" – |"),
            }
        }
        if has_pf {
            let pf = cells.get("past-future").copied();
            let best = cells.iter().filter(|(p, _)| **p != "past-future").map(|(_, g)| *g).fold(f64::NAN, f64::max);
            match pf {
                Some(pf) if best > 0.0 => { let _ = write!(s, " {:.2}× |", pf / best); }
                _ => s.push_str(" – |"),
            }
        }
        s.push('\n');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(policy: &str, clients: usize, goodput: f64) -> SimRecord {
        SimRecord {
            hardware: "a100".into(), workload: "uniform1".into(), clients, policy: policy.into(),
            goodput_rps: goodput, throughput_tok_s: 1000.0, preemptions: 3, p99_ttft_ms: 12.0,
            p99_max_itl_ms: 34.0, good: 1, failed: 0, sim_time_s: 1.0, steps: 1, timed_out: false,
        }
    }

    #[test]
    fn markdown_table_has_one_row_per_record() {
        let t = markdown_table(&[rec("aggressive", 10, 0.5), rec("past-future", 10, 1.0)]);
        assert_eq!(t.lines().count(), 4);
        assert!(t.lines().nth(3).unwrap().starts_with("| a100 | uniform1 | 10 | past-future | 1.000 |"));
    }

    #[test]
    fn goodput_table_pivots_policies_and_reports_the_ratio() {
        let t = goodput_table(&[
            rec("aggressive", 10, 0.5), rec("conservative", 10, 0.25), rec("past-future", 10, 1.0),
            rec("aggressive", 20, 0.8), rec("conservative", 20, 0.4), rec("past-future", 20, 0.8),
        ]);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines[0], "| hardware | workload | clients | aggressive | conservative | past-future | PF / best other |");
        assert_eq!(lines[2], "| a100 | uniform1 | 10 | 0.500 | 0.250 | 1.000 | 2.00× |");
        assert_eq!(lines[3], "| a100 | uniform1 | 20 | 0.800 | 0.400 | 0.800 | 1.00× |");
    }
}
