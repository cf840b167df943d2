//! # sampler-core
//!
//! A [`LogitsProcessor`] chain over batched `[rows, vocab]` candle tensors, with every sampler of
//! the reference VALL-E pipeline, a counter-based (Philox4x32-10) draw, and a serde
//! [`SamplerConfig`] with the VALL-E kwargs names. Everything runs as candle tensor ops on the
//! logits' device (CPU, CUDA, Metal); nothing is copied to the host inside a step except the
//! few scalars input validation reads (turn it off with
//! [`SamplingContext::with_validation`]).
//!
//! ```no_run
//! use candle_core::{Device, Tensor};
//! use sampler_core::{Mode, Sampler, SamplerConfig, SamplingContext};
//! # fn main() -> Result<(), sampler_core::SamplerError> {
//! let logits = Tensor::randn(0f32, 1.0, (4, 1025), &Device::Cpu)?;
//! let cfg = SamplerConfig { top_k: 50, top_p: 0.9, temperature: 0.8, ..Default::default() };
//! let mut sampler = Sampler::from_config(&cfg, Mode::Ar)?;
//! let drawn = sampler.sample(&logits, &SamplingContext::new(42))?;
//! println!("{:?}", drawn.tokens.to_vec1::<u32>()?);
//! # Ok(()) }
//! ```

pub mod beam;
pub mod config;
pub mod context;
pub mod draw;
pub mod error;
pub mod param;
pub mod philox;
pub mod processor;
pub mod processors;
pub mod sampler;
pub(crate) mod sort_ops;
pub(crate) mod tensor_ops;
pub(crate) mod vocab_cache;

#[cfg(test)]
pub(crate) mod test_util;

pub use beam::{beam_candidates, BeamCandidates};
pub use config::{Mode, RepetitionPenaltyMode, SamplerConfig};
pub use context::{History, SamplingContext};
pub use draw::{draw, DrawRule, Drawn};
pub use error::{Result, SamplerError};
pub use param::RowParam;
pub use processor::{Chain, LogitsProcessor};
pub use processors::fused::ExecPath;
pub use sampler::{prepare, Sampler, SamplerBuilder};
