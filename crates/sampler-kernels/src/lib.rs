//! # sampler-kernels
//!
//! Fused sampling ops for candle: one call runs a whole chain segment over every row of a
//! batch, reading each row once.
//!
//! - [`spec`]: the stage spec, the one definition of every stage and of its per-row parameter
//!   layout, from which the GPU kernels' C header is generated;
//! - [`run_segment`]: a compiled [`Program`] over a batch: processed logits, or the drawn
//!   tokens with their probabilities when the program ends with a selecting stage;
//! - [`run_segment_append`]: the same, then the tokens appended to the rows' histories in place,
//!   with lengths and stop flags advanced (one call per autoregressive step);
//! - [`attention_metrics`]: entropix's attention statistics;
//! - [`philox_uniform`]: the counter-based draw uniforms (Philox4x32-10).
//!
//! On the CPU every stage runs here (rows in parallel on rayon's pool). CUDA runs the stages of
//! `kernels/sampling_common.h` ([`supports`] tells which); Metal runs none yet.
//!
//! The CPU checks its inputs as part of the row pass, so bad input is always a typed
//! [`KernelError`]: NaN or +inf logits, a row to draw from whose every logit is -inf, token ids
//! at or above the vocabulary.

#![deny(missing_docs)]

mod cpu;
#[cfg(feature = "cuda")]
mod cuda;
mod error;
mod gpu;
mod gpu_ops;
#[cfg(feature = "metal")]
mod metal;
mod philox;
mod segment;
pub mod spec;

pub use cpu::{entropy_temperature, sigmoid_is_dynamic, sigmoid_temperature, MIN_DYNAMIC_T};
pub use error::{KernelError, Result};
pub use philox::{philox4x32_10, philox_uniform, philox_uniform_lane, XTC_LANE};
pub use segment::{
    attention_metrics, launches, run_segment, run_segment_append, supports, Append, Appended, Emit,
    HistoryInput, SegmentInput, SegmentOutput,
};
pub use spec::{Program, StageId, StageOp};
