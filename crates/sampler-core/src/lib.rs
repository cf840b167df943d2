//! # sampler-core
//!
//! A [`LogitsProcessor`] chain over batched `[rows, vocab]` candle tensors, ended by a
//! [`Selector`] that draws the tokens, with every sampler of the reference VALL-E pipeline and
//! the usual LLM samplers, a counter-based (Philox4x32-10) draw, and a serde [`SamplerConfig`]
//! with the VALL-E kwargs names.
//!
//! Each processor has a plain tensor implementation (the reference, any device) and declares
//! its fused stage; a [`Sampler`] runs every run of consecutive stages as one fused op of
//! `sampler-kernels` ([`ExecPath::Fused`], the default), so a whole default chain is one call
//! per step. Nothing is copied to the host inside a step except what the caller asks for.
//!
//! ```
//! use candle_core::{Device, Tensor};
//! use sampler_core::{Mode, Sampler, SamplerConfig, SamplingContext};
//! # fn main() -> Result<(), sampler_core::SamplerError> {
//! let logits = Tensor::randn(0f32, 1.0, (4, 1025), &Device::Cpu)?;
//! let cfg = SamplerConfig { top_k: 50, top_p: 0.9, temperature: 0.8, ..Default::default() };
//! let mut sampler = Sampler::from_config(&cfg, Mode::Ar)?;
//! let drawn = sampler.sample(&logits, &SamplingContext::new(42))?;
//! assert_eq!(drawn.tokens.dims(), &[4]);
//! # Ok(()) }
//! ```

#![deny(missing_docs)]

mod beam;
mod config;
mod context;
pub mod diagnostics;
mod draw;
mod error;
mod fusion;
mod param;
pub mod philox;
mod processor;
pub mod processors;
mod sampler;
mod sort_ops;
mod stage;
mod tensor_ops;
mod vocab_cache;

#[cfg(test)]
mod test_util;

pub use beam::{beam_candidates, BeamCandidates, MAX_BEAM_WIDTH};
pub use config::{Knob, MirostatVersion, Mode, RepetitionPenaltyMode, SamplerConfig};
pub use context::{History, SamplingContext};
pub use draw::{draw, uniforms, Draw, Drawn};
pub use error::{Result, SamplerError};
pub use fusion::ExecPath;
pub use param::RowParam;
pub use processor::{AsAny, Chain, LogitsProcessor, Selector};
pub use processors::entropix::EntropixConfig;
pub use sampler::{Sampler, SamplerBuilder, StopState};
pub use stage::Stage;
