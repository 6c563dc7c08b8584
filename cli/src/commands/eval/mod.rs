//! `kvault eval`: what KV policies cost in quality, measured through the engine that serves.
//! One submodule per evaluation.

pub mod kv;

use anyhow::Result;
use clap::Subcommand;

#[derive(Subcommand, Debug)]
pub enum EvalCommand {
    /// Perplexity, KL to the full cache and top-1 agreement of KV policies on a text.
    Kv(kv::EvalKvArgs),
}

pub fn run(command: EvalCommand) -> Result<()> {
    match command {
        EvalCommand::Kv(a) => kv::run(a),
    }
}
