//! # candle-sampler
//!
//! Batched, on-device token sampling for [candle](https://github.com/huggingface/candle): the
//! reference VALL-E sampler pipeline and the usual LLM samplers as a chain of tensor processors,
//! with fused kernels and an AR/NAR driver. This crate re-exports the workspace crates.

pub use sampler_core as core;
pub use sampler_driver as driver;
pub use sampler_kernels as kernels;

pub use sampler_core::{
    Chain, Draw, Drawn, ExecPath, History, Knob, LogitsProcessor, Mode, RowParam, Sampler,
    SamplerBuilder, SamplerConfig, SamplerError, SamplingContext, Selector,
};
pub use sampler_driver::{
    CodecLm, Conditioning, Driver, DriverConfig, DriverError, Generation, GuidanceSchedule, Level0,
    MaskedConfig, Progress, Rows, StageConfig,
};
