//! `kvault bench simulate`: the admission policies served against a cost model instead of a
//! model, at scales this machine cannot run (issue 6: Past-Future vs aggressive/conservative).
//!
//! Owns: the flags, running the grid with progress, and the outputs — a goodput table per
//! workload on stdout, and per workload `simulate-<hardware>-<workload>.{png,md,json}` in
//! `--output-dir` (plus every record in `--output-json`). Must not know how a run is simulated
//! (kvault_scheduler::sim) or how a policy decides.

mod plot;

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use kvault_scheduler::sim::{clients_table, markdown_table, simulate_one, Hardware, HardwareKind, SimConfig, SimRecord, Workload};
use kvault_scheduler::{PolicyKind, SlaConfig};

use plot::{goodput_png, PlotLabels};

#[derive(Args, Debug)]
pub struct SimulateArgs {
    /// Hardware profile: `local` (this machine serving SmolLM2-135M Q4_1, rates derived from its
    /// measured speeds), `a100` or `h100` (Llama-2-7B with 120k KV tokens, as in the paper).
    #[arg(long, default_value = "a100", value_parser = parse_hardware)]
    pub hardware: HardwareKind,
    /// Request-length workload(s), comma-separated: sharegpt (ShareGPT-like log-normal lengths),
    /// sharegpt-o1 (long outputs), uniform-1 (in 32–4096 / out 2048–4096), uniform-2
    /// (3000–5000 / 3000–5000), uniform-3 (2048–4096 / 32–4096).
    #[arg(long, default_value = "sharegpt", value_delimiter = ',', value_parser = parse_workload)]
    pub workload: Vec<Workload>,
    /// Closed-loop client counts, comma-separated: each client sends a request, waits for it,
    /// then sends the next; a request that misses the SLA is sent again.
    #[arg(long, default_value = "10,20,40,60,80,100", value_delimiter = ',', value_parser = parse_positive)]
    pub clients: Vec<usize>,
    /// Admission policies to compare, comma-separated.
    #[arg(long, default_value = "aggressive,conservative,past-future", value_delimiter = ',', value_parser = parse_policy)]
    pub policies: Vec<PolicyKind>,
    /// SLA on time to first token, ms [default: 10000 for a100/h100 (the paper's 7B SLA), 60000 for local].
    #[arg(long, allow_negative_numbers = true)]
    pub sla_ttft_ms: Option<f64>,
    /// SLA on each request's largest inter-token gap, ms [default: 1500 for a100/h100, 8000 for local].
    #[arg(long, allow_negative_numbers = true)]
    pub sla_max_itl_ms: Option<f64>,
    /// Distinct prompts per run; a run ends when every one has met the SLA once (the paper uses 500).
    #[arg(long, default_value_t = 500, value_parser = parse_positive)]
    pub num_requests: usize,
    /// Simulated seconds after which a run stops and is reported as timed out (marked `*`).
    #[arg(long, default_value_t = 6.0 * 3600.0, value_parser = parse_duration)]
    pub duration_s: f64,
    /// Seed for the prompt set and past-future's sampling; the same seed gives the same tables.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// KV capacity kept free by the policies, as a fraction (the paper's 5%).
    #[arg(long, default_value_t = 0.05, allow_negative_numbers = true)]
    pub reserve: f64,
    /// Override the profile's KV capacity, in tokens.
    #[arg(long, value_parser = parse_positive)]
    pub kv_capacity_tokens: Option<usize>,
    /// Clients omit max_tokens, so a request may run to the server's max model length (the
    /// conservative policy then reserves that much); by default they send the workload's maximum.
    #[arg(long)]
    pub server_max_tokens: bool,
    /// Every simulated request keeps at most this many KV tokens (a KV policy's budget): the
    /// footprint the engine gives a budgeted request.
    #[arg(long, value_parser = parse_positive)]
    pub kv_budget: Option<usize>,
    /// Where the per-workload PNG, Markdown and JSON files go (created if missing).
    #[arg(long, default_value = ".")]
    pub output_dir: PathBuf,
    /// Also write every record of the run as one JSON list here.
    #[arg(long)]
    pub output_json: Option<PathBuf>,
}

fn parse_hardware(s: &str) -> Result<HardwareKind, String> {
    s.parse().map_err(|e| format!("{e}"))
}
fn parse_workload(s: &str) -> Result<Workload, String> {
    s.trim().parse().map_err(|e| format!("{e}"))
}
fn parse_policy(s: &str) -> Result<PolicyKind, String> {
    s.trim().parse().map_err(|e| format!("{e}"))
}
fn parse_positive(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!("expected a positive integer, got '{s}'")),
    }
}
fn parse_duration(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(x) if x > 0.0 && x.is_finite() => Ok(x),
        _ => Err(format!("expected a positive number of seconds, got '{s}'")),
    }
}

/// Keeps the first occurrence of each item: `--clients 10,10` runs once.
fn dedup<T: PartialEq + Copy>(items: &[T]) -> Vec<T> {
    let mut out = Vec::with_capacity(items.len());
    for &x in items {
        if !out.contains(&x) {
            out.push(x);
        }
    }
    out
}

/// The grid the flags describe, checked before anything runs.
fn build_config(args: &SimulateArgs) -> Result<SimConfig> {
    let mut hw = Hardware::profile(args.hardware);
    if let Some(tokens) = args.kv_capacity_tokens {
        if tokens < hw.block_size {
            bail!("--kv-capacity-tokens {tokens} holds no {}-token block", hw.block_size);
        }
        hw.kv_capacity_tokens = tokens;
    }
    let default_sla = hw.default_sla();
    let sla = SlaConfig::new(
        args.sla_ttft_ms.unwrap_or(default_sla.ttft_ms),
        args.sla_max_itl_ms.unwrap_or(default_sla.max_itl_ms),
    )
    .context("--sla-ttft-ms / --sla-max-itl-ms")?;
    if !(0.0..1.0).contains(&args.reserve) {
        bail!("--reserve must be in [0, 1), got {}", args.reserve);
    }
    let workloads = dedup(&args.workload);
    for w in &workloads {
        let longest = w.max_input_len() + if args.server_max_tokens { 1 } else { w.max_tokens() };
        if longest > hw.max_model_len {
            bail!(
                "workload {w} has requests of up to {longest} tokens but the {} profile serves at most {} \
                 ({}); pick another workload or hardware",
                hw.kind, hw.max_model_len, hw.model.name
            );
        }
        if longest > hw.kv_capacity_tokens {
            bail!("workload {w} has requests of up to {longest} tokens, more than the {}-token KV cache", hw.kv_capacity_tokens);
        }
    }
    Ok(SimConfig {
        hardware: vec![hw],
        workloads,
        clients: dedup(&args.clients),
        policies: dedup(&args.policies),
        num_prompts: args.num_requests,
        seed: args.seed,
        sla,
        reserve: args.reserve,
        max_sim_time_s: args.duration_s,
        server_max_tokens: args.server_max_tokens,
        kv_budget: args.kv_budget,
        ..SimConfig::default()
    })
}

pub fn run(args: SimulateArgs) -> Result<()> {
    let cfg = build_config(&args)?;
    let hw = &cfg.hardware[0];
    std::fs::create_dir_all(&args.output_dir)
        .with_context(|| format!("creating --output-dir {}", args.output_dir.display()))?;
    let command = command_line();
    let runs = cfg.runs();
    let bar = ProgressBar::new(runs.len() as u64).with_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} runs  {msg}").unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut all: Vec<SimRecord> = Vec::with_capacity(runs.len());
    for &workload in &cfg.workloads {
        let mut records = Vec::new();
        for run in runs.iter().filter(|r| r.workload == workload) {
            bar.set_message(format!("{workload}, {} clients, {}", run.clients, run.policy.kind));
            let record = simulate_one(run)
                .with_context(|| format!("simulating {workload} with {} clients under {}", run.clients, run.policy.kind))?;
            records.push(record);
            bar.inc(1);
        }
        let report = WorkloadReport { cfg: &cfg, hw, workload, records: &records, command: &command };
        bar.suspend(|| print!("{}", report.stdout_section()));
        let written = report.write_files(&args.output_dir)?;
        bar.suspend(|| {
            for p in &written {
                eprintln!("wrote {}", p.display());
            }
        });
        all.extend(records);
    }
    bar.finish_and_clear();
    if let Some(path) = &args.output_json {
        write_json(path, &all)?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

/// The invocation as the user would retype it (program name shortened to `kvault`).
fn command_line() -> String {
    let mut parts = vec!["kvault".to_string()];
    parts.extend(std::env::args().skip(1).map(|a| if a.contains(' ') { format!("'{a}'") } else { a }));
    parts.join(" ")
}

fn write_json(path: &Path, records: &[SimRecord]) -> Result<()> {
    let text = serde_json::to_string_pretty(records).context("serializing simulation records")?;
    std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))
}

/// One workload's results and how they are presented.
struct WorkloadReport<'a> {
    cfg: &'a SimConfig,
    hw: &'a Hardware,
    workload: Workload,
    records: &'a [SimRecord],
    command: &'a str,
}

impl WorkloadReport<'_> {
    fn title(&self) -> String {
        format!("Simulated goodput: {} ({}), {}", self.hw.kind, self.hw.model.name, self.workload)
    }

    fn setting(&self) -> String {
        let sla = self.cfg.sla;
        format!(
            "SLA: TTFT ≤ {} s, max inter-token gap ≤ {} s · KV {} tokens · {} prompts per run, seed {}",
            sla.ttft_ms / 1e3, sla.max_itl_ms / 1e3, self.hw.kv_capacity_tokens, self.cfg.num_prompts, self.cfg.seed
        )
    }

    fn table(&self) -> String {
        clients_table(self.records, self.hw.kind.as_str(), self.workload.as_str())
    }

    fn stdout_section(&self) -> String {
        format!("## {}\n\n{}\n\nGoodput in requests/s meeting the SLA.\n\n{}\n", self.title(), self.setting(), self.table())
    }

    fn markdown(&self) -> String {
        format!(
            "# {}\n\n`{}`\n\n{}\n\nGoodput in requests/s meeting the SLA; `*` marks a run stopped by --duration-s.\n\n{}\n\
             ## Every run\n\n{}",
            self.title(), self.command, self.setting(), self.table(), markdown_table(self.records)
        )
    }

    /// Writes the PNG, Markdown and JSON files; returns their paths.
    fn write_files(&self, dir: &Path) -> Result<Vec<PathBuf>> {
        let stem = dir.join(format!("simulate-{}-{}", self.hw.kind, self.workload));
        let (png, md, json) = (stem.with_extension("png"), stem.with_extension("md"), stem.with_extension("json"));
        let subtitle = self.setting();
        goodput_png(&png, &PlotLabels { title: &self.title(), subtitle: &subtitle }, self.records)?;
        std::fs::write(&md, self.markdown()).with_context(|| format!("writing {}", md.display()))?;
        write_json(&json, self.records)?;
        Ok(vec![png, md, json])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: SimulateArgs,
    }

    fn parse(argv: &[&str]) -> Result<SimulateArgs, clap::Error> {
        Cli::try_parse_from(std::iter::once("simulate").chain(argv.iter().copied())).map(|c| c.args)
    }

    #[test]
    fn defaults_follow_the_issue_interface() {
        let a = parse(&[]).unwrap();
        assert_eq!(a.hardware, HardwareKind::A100);
        assert_eq!(a.clients, vec![10, 20, 40, 60, 80, 100]);
        assert_eq!(a.policies, PolicyKind::ALL.to_vec());
        let cfg = build_config(&a).unwrap();
        assert_eq!(cfg.sla, SlaConfig::PAPER_7B);
        assert_eq!((cfg.num_prompts, cfg.reserve), (500, 0.05));
    }

    #[test]
    fn lists_parse_with_the_issue_spellings_and_duplicates_run_once() {
        let a = parse(&["--workload", "uniform-1,uniform-3,uniform-1", "--clients", "20,10,20", "--policies", "past-future,aggressive"]).unwrap();
        let cfg = build_config(&a).unwrap();
        assert_eq!(cfg.workloads, vec![Workload::Uniform1, Workload::Uniform3]);
        assert_eq!(cfg.clients, vec![20, 10]);
        assert_eq!(cfg.policies, vec![PolicyKind::PastFuture, PolicyKind::Aggressive]);
        assert_eq!(cfg.runs().len(), 2 * 2 * 2);
    }

    #[test]
    fn local_profile_gets_its_own_sla_unless_one_is_given() {
        let cfg = build_config(&parse(&["--hardware", "local"]).unwrap()).unwrap();
        assert_eq!(cfg.sla, Hardware::profile(HardwareKind::Local).default_sla());
        assert_ne!(cfg.sla, SlaConfig::PAPER_7B);
        let cfg = build_config(&parse(&["--hardware", "local", "--sla-max-itl-ms", "900"]).unwrap()).unwrap();
        assert_eq!(cfg.sla.max_itl_ms, 900.0);
        assert_eq!(cfg.sla.ttft_ms, Hardware::profile(HardwareKind::Local).default_sla().ttft_ms);
    }

    #[test]
    fn bad_flags_are_errors_naming_the_problem() {
        for argv in [
            &["--hardware", "tpu"][..],
            &["--workload", "alpaca"],
            &["--clients", "10,0"],
            &["--policies", "fifo"],
            &["--duration-s", "-1"],
            &["--num-requests", "0"],
        ] {
            assert!(parse(argv).is_err(), "{argv:?} parsed");
        }
        let err = |argv: &[&str]| build_config(&parse(argv).unwrap()).unwrap_err().to_string();
        assert!(err(&["--sla-ttft-ms", "0"]).contains("sla"));
        assert!(err(&["--reserve", "1.5"]).contains("--reserve"));
        assert!(err(&["--reserve", "-0.1"]).contains("--reserve"));
        assert!(err(&["--sla-max-itl-ms", "-5"]).contains("sla"));
        assert!(err(&["--kv-capacity-tokens", "4"]).contains("--kv-capacity-tokens"));
        // SmolLM2 serves 8192 tokens; uniform-2 needs up to 10000.
        let e = err(&["--hardware", "local", "--workload", "uniform-2"]);
        assert!(e.contains("uniform-2") && e.contains("8192"), "{e}");
    }
}
