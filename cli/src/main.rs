//! The `kvault` binary: command-line parsing and dispatch. Errors print as one line on stderr
//! and exit non-zero; nothing here panics on user input.

mod args;
mod commands;
mod font;
mod kv;
mod offload;
mod prompt;

use clap::{Parser, Subcommand};

pub(crate) const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (", env!("KVAULT_GIT_COMMIT"), ", ", env!("KVAULT_FEATURES"), ")");

#[derive(Parser, Debug)]
#[command(name = "kvault", version = VERSION, about = "LLM serving engine with KV-cache memory management")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Generate text from a prompt (streamed), or run a JSONL file of prompts.
    Generate(commands::generate::GenerateArgs),
    /// Interactive multi-turn chat using the model's chat template.
    Chat(commands::chat::ChatArgs),
    /// Serve the model over an OpenAI-compatible HTTP API.
    Serve(commands::serve::ServeArgs),
    /// Measure throughput and latency: offline, against a server, batch-1, or simulated.
    #[command(subcommand)]
    Bench(commands::bench::BenchCommand),
    /// What KV policies cost in quality: perplexity and KL to the full cache, retrieval accuracy.
    #[command(subcommand)]
    Eval(commands::eval::EvalCommand),
    /// Fit TRIM-KV retention gates for a model on the CPU (for `--kv-policy trimkv`).
    TrainGates(commands::train_gates::TrainGatesArgs),
    /// Find LycheeDecode head roles (retrieval or sparse per layer and KV head) on the CPU.
    CalibrateHeads(commands::calibrate_heads::CalibrateHeadsArgs),
    /// Report what this build supports and what it finds on this machine (CPU, CUDA), the KV
    /// cache bytes per token of a model in each KV cache dtype, and the offload tier.
    Doctor(commands::doctor::DoctorArgs),
}

fn main() {
    init_tracing();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Generate(a) => commands::generate::run(a),
        Command::Chat(a) => commands::chat::run(a),
        Command::Serve(a) => commands::serve::run(a),
        Command::Bench(c) => commands::bench::run(c),
        Command::Eval(c) => commands::eval::run(c),
        Command::TrainGates(a) => commands::train_gates::run(a),
        Command::CalibrateHeads(a) => commands::calibrate_heads::run(a),
        Command::Doctor(a) => commands::doctor::run(a),
    };
    if let Err(e) = result {
        // `{:#}` joins the context chain on one line: "file: what failed: why".
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("KVAULT_LOG").unwrap_or_else(|_| "warn".into());
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_target(false).init();
}
