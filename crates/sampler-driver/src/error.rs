//! The driver's error type: bad input, a failing model, or an error from the sampler.

use sampler_core::SamplerError;

/// What went wrong while generating.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    /// The request or the configuration is not usable (checked once, before the first step).
    #[error("invalid input: {0}")]
    Invalid(String),
    /// The model returned an error (kept as the source).
    #[error("model failed at {context}: {source}")]
    Model {
        /// Where in the loop ("AR step 3", "NAR level 2").
        context: String,
        /// The model's own error.
        #[source]
        source: candle_core::Error,
    },
    /// The model returned logits of the wrong shape.
    #[error("model: {0}")]
    ModelOutput(String),
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
    pub(crate) fn model(context: impl Into<String>, source: candle_core::Error) -> Self {
        DriverError::Model {
            context: context.into(),
            source,
        }
    }
}

pub(crate) fn invalid(reason: impl Into<String>) -> DriverError {
    DriverError::Invalid(reason.into())
}
