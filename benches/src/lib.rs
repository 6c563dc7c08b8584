//! Benchmarks for kvault: criterion micro-benchmarks (under `benches/`) and the scripts that
//! compare kvault with peer servers on the same model and workload.
//!
//! Owns: measurement only. Must not hold engine logic: everything measured here is imported from
//! the crates that own it.
