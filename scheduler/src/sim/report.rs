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

/// Policies in first-seen order.
fn policy_order<'a>(records: impl IntoIterator<Item = &'a SimRecord>) -> Vec<&'a str> {
    let mut policies: Vec<&str> = Vec::new();
    for r in records {
        if !policies.contains(&r.policy.as_str()) {
            policies.push(&r.policy);
        }
    }
    policies
}

/// Past-future's goodput over the best other policy's, when both are there and positive.
fn pf_ratio<'a>(goodputs: impl IntoIterator<Item = (&'a str, f64)>) -> Option<f64> {
    let (mut pf, mut best) = (None, f64::NAN);
    for (p, g) in goodputs {
        if p == "past-future" {
            pf = Some(g);
        } else {
            best = best.max(g);
        }
    }
    pf.filter(|_| best > 0.0).map(|pf| pf / best)
}

/// Goodput pivoted by policy: one row per (hardware, workload, clients), one column per policy
/// (in first-seen order), plus past-future's ratio to the best other policy when present.
pub fn goodput_table(records: &[SimRecord]) -> String {
    let policies = policy_order(records);
    let mut rows: BTreeMap<(String, String, usize), BTreeMap<&str, f64>> = BTreeMap::new();
    for r in records {
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
            match pf_ratio(cells.iter().map(|(p, g)| (*p, *g))) {
                Some(x) => { let _ = write!(s, " {x:.2}× |"); }
                None => s.push_str(" – |"),
            }
        }
        s.push('\n');
    }
    s
}

/// One (hardware, workload) as the CLI reports it: a row per client count, goodput (req/s) per
/// policy, past-future's ratio to the best other policy, then preemptions per policy. A run that
/// hit the time limit is marked with `*`.
pub fn clients_table(records: &[SimRecord], hardware: &str, workload: &str) -> String {
    let mine: Vec<&SimRecord> =
        records.iter().filter(|r| r.hardware == hardware && r.workload == workload).collect();
    let policies = policy_order(mine.iter().copied());
    let has_pf = policies.contains(&"past-future") && policies.len() > 1;
    let mut rows: BTreeMap<usize, Vec<&SimRecord>> = BTreeMap::new();
    for r in &mine {
        rows.entry(r.clients).or_default().push(r);
    }
    let mut s = String::from("| clients |");
    for p in &policies {
        let _ = write!(s, " {p} |");
    }
    if has_pf {
        s.push_str(" PF / best other |");
    }
    for p in &policies {
        let _ = write!(s, " preemptions {p} |");
    }
    s.push_str("\n|---:|");
    s.push_str(&"---:|".repeat(2 * policies.len() + usize::from(has_pf)));
    s.push('\n');
    for (clients, runs) in &rows {
        let cell = |p: &str| runs.iter().find(|r| r.policy == p).copied();
        let _ = write!(s, "| {clients} |");
        for p in &policies {
            match cell(p) {
                Some(r) => {
                    let _ = write!(s, " {:.3}{} |", r.goodput_rps, if r.timed_out { "*" } else { "" });
                }
                None => s.push_str(" – |"),
            }
        }
        if has_pf {
            match pf_ratio(runs.iter().map(|r| (r.policy.as_str(), r.goodput_rps))) {
                Some(x) => { let _ = write!(s, " {x:.2}× |"); }
                None => s.push_str(" – |"),
            }
        }
        for p in &policies {
            match cell(p) {
                Some(r) => { let _ = write!(s, " {} |", r.preemptions); }
                None => s.push_str(" – |"),
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
            hardware: "a100".into(), workload: "uniform-1".into(), clients, policy: policy.into(),
            goodput_rps: goodput, throughput_tok_s: 1000.0, preemptions: 3, p99_ttft_ms: 12.0,
            p99_max_itl_ms: 34.0, good: 1, failed: 0, sim_time_s: 1.0, steps: 1, timed_out: false,
        }
    }

    #[test]
    fn markdown_table_has_one_row_per_record() {
        let t = markdown_table(&[rec("aggressive", 10, 0.5), rec("past-future", 10, 1.0)]);
        assert_eq!(t.lines().count(), 4);
        assert!(t.lines().nth(3).unwrap().starts_with("| a100 | uniform-1 | 10 | past-future | 1.000 |"));
    }

    #[test]
    fn goodput_table_pivots_policies_and_reports_the_ratio() {
        let t = goodput_table(&[
            rec("aggressive", 10, 0.5), rec("conservative", 10, 0.25), rec("past-future", 10, 1.0),
            rec("aggressive", 20, 0.8), rec("conservative", 20, 0.4), rec("past-future", 20, 0.8),
        ]);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines[0], "| hardware | workload | clients | aggressive | conservative | past-future | PF / best other |");
        assert_eq!(lines[2], "| a100 | uniform-1 | 10 | 0.500 | 0.250 | 1.000 | 2.00× |");
        assert_eq!(lines[3], "| a100 | uniform-1 | 20 | 0.800 | 0.400 | 0.800 | 1.00× |");
    }

    #[test]
    fn clients_table_has_a_row_per_client_count_with_goodput_ratio_and_preemptions() {
        let mut pf20 = rec("past-future", 20, 0.9);
        pf20.preemptions = 7;
        pf20.timed_out = true;
        let mut other = rec("aggressive", 10, 9.0);
        other.workload = "sharegpt".into();
        let t = clients_table(
            &[rec("aggressive", 20, 0.6), pf20, rec("aggressive", 10, 0.5), rec("past-future", 10, 1.0), other],
            "a100",
            "uniform-1",
        );
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 4, "{t}");
        assert_eq!(lines[0], "| clients | aggressive | past-future | PF / best other | preemptions aggressive | preemptions past-future |");
        assert_eq!(lines[2], "| 10 | 0.500 | 1.000 | 2.00× | 3 | 3 |");
        assert_eq!(lines[3], "| 20 | 0.600 | 0.900* | 1.50× | 3 | 7 |");
    }
}
