//! `kvault eval`: what KV policies cost in quality, measured through the engine that serves (or
//! against a running server). One submodule per evaluation, each owning its flags, its run and
//! its report.

pub mod kv;
pub mod retrieval;

use anyhow::Result;
use clap::Subcommand;

#[derive(Subcommand, Debug)]
pub enum EvalCommand {
    /// Perplexity, KL to the full cache and top-1 agreement of KV policies on a text.
    Kv(kv::EvalKvArgs),
    /// RULER-style retrieval (passkey, multikey, vartrack): exact-match accuracy per context
    /// length, needle depth and KV policy, in-process or against a server.
    Retrieval(retrieval::RetrievalArgs),
}

pub fn run(command: EvalCommand) -> Result<()> {
    match command {
        EvalCommand::Kv(a) => kv::run(a),
        EvalCommand::Retrieval(a) => retrieval::run(a),
    }
}
