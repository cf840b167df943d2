//! One error type for the whole crate, so that every public function reports bad input as a
//! value instead of a panic (docs/semantics.md, "Bad input").

use sampler_kernels::KernelError;

/// What went wrong while building or running a sampler.
#[derive(Debug, thiserror::Error)]
pub enum SamplerError {
    /// A parameter is outside its documented range.
    #[error("invalid parameter {name}: {reason}")]
    InvalidParameter {
        /// The config key (or processor parameter).
        name: &'static str,
        /// What is wrong with the value.
        reason: String,
    },
    /// A tensor has the wrong rank, shape, dtype or device.
    #[error("shape error: {0}")]
    Shape(String),
    /// The logits (or another float input, named in `input`) contain a NaN.
    #[error("{input} contain NaN (row {row})")]
    NanLogits {
        /// "logits", "null logits", ...
        input: &'static str,
        /// The first row holding one.
        row: usize,
    },
    /// The logits (or another float input) contain +inf, which no distribution can hold.
    #[error("{input} contain +inf (row {row})")]
    PosInfLogits {
        /// "logits", "null logits", ...
        input: &'static str,
        /// The first row holding one.
        row: usize,
    },
    /// Every logit of a row is -inf: nothing can be sampled.
    #[error("row {row} has every logit equal to -inf")]
    AllMasked {
        /// The first such row.
        row: usize,
    },
    /// A token id is not below the vocabulary size.
    #[error("{what}: token id {id} is out of range for vocabulary size {vocab}")]
    TokenOutOfRange {
        /// Where the id came from ("history", "ban_tokens", ...).
        what: &'static str,
        /// The id.
        id: i64,
        /// The vocabulary size.
        vocab: usize,
    },
    /// The configuration could not be read.
    #[error("config: {0}")]
    Config(String),
    /// A processor needs an input the context does not have (null logits for guidance, ...).
    #[error("missing input: {0}")]
    MissingInput(String),
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

impl From<KernelError> for SamplerError {
    fn from(e: KernelError) -> Self {
        match e {
            KernelError::NanLogit { input, row, .. } => SamplerError::NanLogits { input, row },
            KernelError::PosInfLogit { input, row, .. } => {
                SamplerError::PosInfLogits { input, row }
            }
            KernelError::AllMasked { row } => SamplerError::AllMasked { row },
            KernelError::TokenOutOfRange { what, id, vocab } => SamplerError::TokenOutOfRange {
                what,
                id: id as i64,
                vocab,
            },
            KernelError::Invalid(m) => SamplerError::Shape(m),
            KernelError::Unsupported(m) => SamplerError::Shape(m),
            KernelError::Candle(e) => SamplerError::Candle(e),
        }
    }
}
