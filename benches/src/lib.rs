//! Benchmarks for kvault: criterion micro-benchmarks (under `benches/`) and the scripts that
//! compare kvault with peer servers on the same model and workload.
//!
//! Owns: measurement only — the inputs the benches feed the real ops (paged batches over a
//! cache spread beyond the last-level cache, [`paged_batch`]), the machine's memory bandwidth
//! reference ([`bandwidth`]) and the per-sample timings a bench keeps to print its own summary
//! ([`timings`]). Must not hold engine logic: everything measured here is imported from the
//! crates that own it.
//!
//! Run every bench: `cargo bench -p kvault-benches`; one file: `cargo bench -p kvault-benches
//! --bench paged_attention -- --warm-up-time 1 --measurement-time 3`.

pub mod bandwidth;
pub mod paged_batch;
pub mod timings;
