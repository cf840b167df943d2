//! # sampler-testkit
//!
//! What the tests, the benchmarks and the `sampler` CLI share: the golden cases of
//! `tests/golden` with their judge ([`golden`]), and the benchmark workloads, inputs and timing
//! ([`suite`]), including the candle-transformers baseline (feature `baseline`).

#![deny(missing_docs)]

pub mod golden;
pub mod suite;
