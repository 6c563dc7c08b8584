//! Scheduling decisions for kvault: which requests run this step, how many tokens each gets,
//! which are admitted and which are preempted.
//!
//! Owns: the scheduling policies (aggressive, conservative, past-future), the output-length
//! history they learn from, SLA accounting, and the discrete-event serving simulator that drives
//! the same policies with a cost model.
//!
//! Must not know: tensors, models, tokenizers or the block pool's internals. The engine hands it a
//! read-only view (request lengths, blocks held, free blocks, budgets) and gets a decision back.

pub mod aggressive;
pub mod choice;
pub mod conservative;
pub mod error;
pub mod footprint;
pub mod history;
pub mod past_future;
pub mod peak;
pub mod policy;
pub mod sim;
pub mod sla;
pub mod step;
pub mod view;

pub use error::{Result, SchedulerError};
pub use history::{OutputHistory, TailDistribution};
pub use past_future::PastFutureConfig;
pub use peak::{peak_tokens, Demand};
pub use choice::{PolicyConfig, PolicyKind};
pub use policy::{AdmissionRound, Capacity, Occupant, Policy};
pub use sla::{percentile, LatencyTracker, SlaAccumulator, SlaConfig, SlaSummary};
pub use step::Scheduler;
pub use view::{
    Budgets, FinishKind, PoolView, RequestView, ScheduledChunk, StepDecision, StepInput,
};
