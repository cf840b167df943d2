//! The library behind the `sampler` binary: device selection, input/output and the selftest,
//! so that tests share them with the CLI. The golden cases and the benchmark suite live in
//! `sampler-testkit`.

pub mod device;
pub mod io;
pub mod selftest;
