//! The driver's error type: bad input, a failing model, or an error from the sampler.

use sampler_core::SamplerError;

/// What went wrong while generating.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    /// The request or the configuration is not usable (checked once, before the first step).
    #[error("invalid input: {0}")]
    Invalid(String),
    /// The model returned output of the wrong shape or with unusable values.
    #[error("model: {0}")]
    Model(String),
    /// A model call failed; `source` is the model's own error.
    #[error("model: {call} failed")]
    ModelFailed {
        /// Which call: the stage and its step or level.
        call: String,
        /// The model's error.
        #[source]
        source: candle_core::Error,
    },
    /// The configuration needs a [`crate::CodecLm`] hook that this model does not implement.
    #[error(
        "{hook} is not supported by this model (the masked level-0 stage needs CodecLm::{hook})"
    )]
    Unsupported {
        /// The hook's name.
        hook: &'static str,
    },
    /// The chain or the draw failed.
    #[error(transparent)]
    Sampler(#[from] SamplerError),
    /// A tensor operation of the driver itself failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// The crate's result type.
pub type Result<T> = std::result::Result<T, DriverError>;

impl DriverError {
    pub(crate) fn model(call: impl Into<String>, source: candle_core::Error) -> Self {
        DriverError::ModelFailed {
            call: call.into(),
            source,
        }
    }
}

pub(crate) fn invalid(reason: impl Into<String>) -> DriverError {
    DriverError::Invalid(reason.into())
}
