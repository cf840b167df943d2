//! # candle-sampler
//!
//! Batched, on-device token sampling for candle: the VALL-E sampler pipeline and the usual LLM
//! samplers as a chain of tensor ops ([`core`]), fused kernels for its hot segments
//! ([`kernels`]), and an AR/NAR generation driver for codec language models ([`driver`]).
//!
//! The most used items are re-exported at the top level.

pub use sampler_core as core;
pub use sampler_driver as driver;
pub use sampler_kernels as kernels;

pub use sampler_core::{
    Chain, DrawRule, Drawn, History, LogitsProcessor, Mode, RowParam, Sampler, SamplerBuilder,
    SamplerConfig, SamplerError, SamplingContext,
};
pub use sampler_driver::{
    CodecLm, Driver, DriverConfig, DriverError, Generation, Knob, Progress, Rows, StageConfig,
};
