//! `kvault eval`: how well a model still answers under a KV budget. One submodule per
//! evaluation, each owning its flags, its run and its report.

pub mod retrieval;

use anyhow::Result;
use clap::Subcommand;

#[derive(Subcommand, Debug)]
pub enum EvalCommand {
    /// RULER-style retrieval (passkey, multikey, vartrack): exact-match accuracy per context
    /// length, needle depth and KV policy, in-process or against a server.
    Retrieval(retrieval::RetrievalArgs),
}

pub fn run(command: EvalCommand) -> Result<()> {
    match command {
        EvalCommand::Retrieval(a) => retrieval::run(a),
    }
}
