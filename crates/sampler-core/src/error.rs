//! One error type for the whole crate, so that every public function reports bad input
//! as a value instead of a panic (SPEC §7).

/// What went wrong while building or running a sampler.
#[derive(Debug, thiserror::Error)]
pub enum SamplerError {
    /// A parameter is outside its documented range.
    #[error("invalid parameter {name}: {reason}")]
    InvalidParameter { name: &'static str, reason: String },
    /// A tensor has the wrong rank, shape or dtype.
    #[error("shape error: {0}")]
    Shape(String),
    /// The logits contain a NaN.
    #[error("logits contain NaN (row {row})")]
    NanLogits { row: usize },
    /// Every logit of a row is -inf: nothing can be sampled.
    #[error("row {row} has every logit equal to -inf")]
    AllMasked { row: usize },
    /// A token id is not below the vocabulary size.
    #[error("{what}: token id {id} is out of range for vocabulary size {vocab}")]
    TokenOutOfRange {
        what: &'static str,
        id: i64,
        vocab: usize,
    },
    /// The configuration could not be read.
    #[error("config: {0}")]
    Config(String),
    /// An error from candle itself.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// The crate's result type.
pub type Result<T> = std::result::Result<T, SamplerError>;

pub(crate) fn invalid(name: &'static str, reason: impl Into<String>) -> SamplerError {
    SamplerError::InvalidParameter {
        name,
        reason: reason.into(),
    }
}
