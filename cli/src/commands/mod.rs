//! One module per `kvault` subcommand.

pub mod chat;
pub mod doctor;
pub mod eval;
pub mod generate;
pub mod generate_batch;
pub mod bench;
pub mod calibrate_heads;
pub mod serve;
pub mod train_gates;
