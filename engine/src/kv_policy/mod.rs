//! Per-request KV budgets: which tokens a request keeps once it holds more than `kv_budget`
//! per KV head per layer, and how the engine frees what it drops.
//!
//! Owns: the request-facing settings ([`spec`]). Must not know HTTP, flags or the block pool.

pub mod spec;

pub use spec::{KvParamError, KvPolicy, KvPolicyConfig, KvPolicyKind, Pooling};
