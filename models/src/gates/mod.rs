//! TRIM-KV retention gates (Bui et al., "Cache What Lasts", ICLR 2026): one small MLP per layer
//! that gives every new token, for each KV head, a retention `β ∈ (0, 1)` fixed at write time.
//!
//! Owns: [`RetentionGates`] (the per-layer parameters and `log β = logsigmoid(W2·silu(W1·x + b1) + b)`
//! in ordinary, differentiable tensor ops, so the same code runs at inference on any device and in
//! `kvault train-gates` under autograd), and the gate file format ([`file`]).
//!
//! Must not know: eviction (the engine's `trimkv` rule ranks by `log β · (t − pos)`), requests or
//! the KV cache.

pub mod file;
mod gate;

pub use file::{gates_beside_model, load_gates, read_gates, save_gates, GateFile, GATES_FILE_NAME};
pub use gate::{log_sigmoid, LayerGate, RetentionGates};
