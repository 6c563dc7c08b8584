//! The scheduler crate's error type.
//!
//! Owns: every way a caller can hand the scheduler or the simulator inconsistent input. Must not
//! know: how the engine or CLI reports errors to users.

use thiserror::Error;

#[derive(Debug, Error, Clone, PartialEq)]
pub enum SchedulerError {
    /// A step view contradicts itself (e.g. more free blocks than blocks, computed > tokens).
    #[error("inconsistent scheduler view: {0}")]
    InvalidView(String),
    /// A configuration value is out of range or unknown.
    #[error("invalid scheduler configuration: {0}")]
    InvalidConfig(String),
    /// A decision could not be executed as the contract promises (found by the simulator).
    #[error("scheduler decision violates its contract: {0}")]
    ContractViolation(String),
    /// The simulation cannot make progress (e.g. a request larger than the whole pool).
    #[error("simulation stalled: {0}")]
    Stalled(String),
}

pub type Result<T, E = SchedulerError> = std::result::Result<T, E>;
