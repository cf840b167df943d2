//! The per-row algorithms of `kernels/sampling_common.h` -- the code the CUDA and Metal kernels
//! run -- compiled for the host, as C and as C++, with a thread block emulated by OS threads
//! (tests/host/harness.c), and checked against hand-computed rows, a sort-based reference of the
//! plain path, a sequential inverse-CDF draw and the golden cases.
//!
//! Needs a C and a C++ compiler (`$CC` / `$CXX`, default `cc` / `c++`) with POSIX threads.
//! Golden cases: `$SAMPLER_GOLDEN_DIR`, or the repository's tests/golden.

mod common;
mod draw;
mod filters;
mod filters_random;
mod golden;
mod penalties;
mod philox;

/// What every test module sees: the harness driver and the helpers other modules define.
mod prelude {
    pub(crate) use crate::common::*;
    pub(crate) use crate::filters::each_config;
    pub(crate) use crate::filters_random::{param_mix, random_rows};
    pub(crate) use candle_core::{DType, Tensor};
    pub(crate) use serde_json::Value;
    pub(crate) use std::path::Path;
}
