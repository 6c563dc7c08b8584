//! What `kvault train-gates` differentiates: the frozen model's forward written in plain candle
//! ops (dense f32 or f64 weights), with TRIM-KV's training-time attention — the additive
//! retention bias `(t − i)·log β_i` on every causal logit — and the loss in the official code's
//! form (ALGORITHMS.md §1.3–1.4).
//!
//! Owns: [`TrainingModel`] (weights loaded once, no KV cache: one whole sequence per call),
//! the loss ([`loss`]), and the few ops written from differentiable primitives because their
//! fused kernels have no backward ([`ops`]).
//!
//! Must not know: optimizers, data files, checkpoints or progress bars (the CLI command owns
//! those), nor the paged engine (inference never applies the bias; it only ranks by β).
//!
//! [`lychee`] holds the same frozen model for `kvault calibrate-heads` (LycheeDecode head roles).

mod forward;
mod frozen;
pub mod loss;
pub mod lychee;
pub mod ops;

pub use forward::{Forward, TrainingModel};
pub use loss::{trimkv_loss, LossTerms};
