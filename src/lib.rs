//! # candle-sampler
//!
//! Batched, on-device token sampling for [candle](https://github.com/huggingface/candle): the
//! reference VALL-E sampler pipeline and the usual LLM samplers as a chain of tensor processors,
//! with fused kernels and an AR/NAR driver. This crate re-exports the workspace crates.

#![deny(missing_docs)]

pub use sampler_core as core;
pub use sampler_driver as driver;
pub use sampler_kernels as kernels;

pub use sampler_core::{
    Chain, Draw, Drawn, EntropixConfig, ExecPath, History, Knob, LogitsProcessor, MirostatVersion,
    Mode, RepetitionPenaltyMode, RowParam, Sampler, SamplerBuilder, SamplerConfig, SamplerError,
    SamplingContext, Selector, StopState,
};
pub use sampler_driver::{
    CodecLm, Conditioning, Driver, DriverConfig, DriverError, Generation, GuidanceSchedule, Level0,
    MaskedConfig, Progress, Rows, StageConfig,
};

/// The README's and the docs' Rust snippets, compiled and run as doc tests.
#[cfg(doctest)]
mod snippets {
    #[doc = include_str!("../README.md")]
    struct Readme;
    #[doc = include_str!("../docs/semantics.md")]
    struct Semantics;
    #[doc = include_str!("../docs/samplers.md")]
    struct Samplers;
    #[doc = include_str!("../docs/config.md")]
    struct Config;
    #[doc = include_str!("../docs/driver.md")]
    struct DriverDoc;
    #[doc = include_str!("../CONTRIBUTING.md")]
    struct Contributing;
}
