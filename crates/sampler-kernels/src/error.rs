//! What a fused op reports: bad input by kind and row (so that callers can turn it into their
//! own typed errors), or a failure of candle or of a GPU backend.

/// An error of a fused op.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    /// A value of `input` (the logits, or the null logits of guidance) is NaN.
    #[error("{input}: row {row} holds NaN at id {id}")]
    NanLogit {
        /// Which input ("logits", "null logits").
        input: &'static str,
        /// The row.
        row: usize,
        /// The first such id of the row.
        id: usize,
    },
    /// A value of `input` is +inf.
    #[error("{input}: row {row} holds +inf at id {id}")]
    PosInfLogit {
        /// Which input.
        input: &'static str,
        /// The row.
        row: usize,
        /// The first such id of the row.
        id: usize,
    },
    /// Every logit of a row that must be drawn from is -inf.
    #[error("row {row} has every logit equal to -inf")]
    AllMasked {
        /// The first such row.
        row: usize,
    },
    /// A token id (history, ban list, bias, breakers, stop token) is not below the vocabulary.
    #[error("{what}: token id {id} is out of range for vocabulary size {vocab}")]
    TokenOutOfRange {
        /// Where the id came from.
        what: &'static str,
        /// The id.
        id: u64,
        /// The vocabulary size.
        vocab: usize,
    },
    /// An input has the wrong dtype, shape or device, or the program is malformed.
    #[error("fused op: {0}")]
    Invalid(String),
    /// The device has no fused implementation of this program.
    #[error("fused op: {0}")]
    Unsupported(String),
    /// candle (or a GPU backend through it) failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// The result type of the fused ops.
pub type Result<T> = std::result::Result<T, KernelError>;

pub(crate) fn invalid(msg: impl Into<String>) -> KernelError {
    KernelError::Invalid(msg.into())
}
