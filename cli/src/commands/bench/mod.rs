//! `kvault bench`: one submodule per benchmark mode. Each owns its flags, its measurement and
//! its report; shared metric definitions live beside them.

pub mod latency;
pub mod serve;
pub mod simulate;
pub mod throughput;

use anyhow::Result;
use clap::Subcommand;

#[derive(Subcommand, Debug)]
pub enum BenchCommand {
    /// Offline throughput: every prompt through the engine at once (vLLM's `bench throughput`).
    Throughput(throughput::ThroughputArgs),
    /// Load-test any OpenAI-compatible server (vLLM's `bench serve` metrics and labels).
    Serve(serve::ServeBenchArgs),
    /// Batch-1 prefill and decode speed (llama-bench's pp/tg).
    Latency(latency::LatencyArgs),
    /// Discrete-event serving simulation of the admission policies against a cost model.
    Simulate(simulate::SimulateArgs),
}

pub fn run(command: BenchCommand) -> Result<()> {
    match command {
        BenchCommand::Throughput(a) => throughput::run(a),
        BenchCommand::Serve(a) => serve::run(a),
        BenchCommand::Latency(a) => latency::run(a),
        BenchCommand::Simulate(a) => simulate::run(a),
    }
}
