//! The library behind the `sampler` binary: input/output, golden-case judging, the bench suite
//! and the selftest, so that tests and benchmarks share them with the CLI.

pub mod device;
pub mod golden;
pub mod io;
pub mod selftest;
pub mod suite;
