//! Prints the simulated goodput grid: `cargo run --release -p kvault-scheduler --example sim_grid
//! -- [hardware] [num_prompts] [workloads,comma,separated] [server-max]` (defaults: a100, 500,
//! the three uniform workloads, the workload's max_tokens; clients 10..100 as in the paper).
//! A quick way to explore the simulator without building the binary; users run
//! `kvault bench simulate`, which adds per-workload tables, PNG plots and JSON records.

use kvault_scheduler::sim::{goodput_table, markdown_table, simulate, Hardware, HardwareKind, SimConfig, Workload};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let hw: HardwareKind = args.first().map_or(Ok(HardwareKind::A100), |s| s.parse())?;
    let prompts: usize = args.get(1).map_or(Ok(500), |s| s.parse())?;
    let workloads: Vec<Workload> = match args.get(2) {
        Some(list) => list.split(',').map(str::parse).collect::<Result<_, _>>()?,
        None => Workload::UNIFORM.to_vec(),
    };
    let cfg = SimConfig { hardware: vec![Hardware::profile(hw)], workloads, num_prompts: prompts,
        server_max_tokens: args.get(3).is_some_and(|s| s == "server-max"), ..SimConfig::default() };
    let start = std::time::Instant::now();
    let records = simulate(&cfg)?;
    println!("{}", goodput_table(&records));
    println!("{}", markdown_table(&records));
    eprintln!("simulated {} runs in {:.1?}", records.len(), start.elapsed());
    Ok(())
}
