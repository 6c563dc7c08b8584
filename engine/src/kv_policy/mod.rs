//! Per-request KV budgets: which tokens a request keeps once it holds more than `kv_budget`
//! per KV head per layer, and how the engine frees what it drops.
//!
//! - [`spec`]: the request-facing settings and their validation;
//! - [`rule`]: the interface each policy implements, one file each: [`streaming`], [`h2o`],
//!   [`snapkv`], [`trimkv`] (learned retention; its `log β` comes from [`retention`]);
//! - [`lychee`]: LycheeDecode, which evicts nothing and only narrows what sparse heads read at
//!   decode (its blocks per request; the selection itself is the kernels' business);
//! - [`slots`]: which token each slot holds per (layer, head), and the compaction that keeps a
//!   request in slots `[0, budget)`;
//! - [`evictor`]: the per-layer hook that scores, chooses and moves inside the forward.
//!
//! How memory is really freed: a budgeted request keeps its tokens in slots `[0, held)` of
//! its own blocks; each layer trims every head back to the budget right after attending a
//! chunk, and the block manager then returns the blocks past the budget to the pool
//! (`scheduler::footprint` is the arithmetic everyone shares).
//!
//! Must not know: HTTP, flags, scheduling.

pub mod evictor;
#[cfg(test)]
mod evictor_tests;
pub mod h2o;
pub mod lychee;
pub mod request;
pub mod rule;
pub mod slots;
pub mod snapkv;
pub mod spec;
pub mod streaming;
pub mod retention;
pub mod trimkv;

pub use request::RequestBudget;
pub use rule::{rule_for, Chunk, EvictionRule};
pub use slots::RequestSlots;
pub use spec::{KvParamError, KvPolicy, KvPolicyConfig, KvPolicyKind, Pooling};
