//! What the driver needs from a codec language model (VALL-E shaped: an autoregressive stage
//! for the first RVQ level, a non-autoregressive stage for the others).

use candle_core::{Device, Tensor};

use crate::error::{DriverError, Result};

/// Which prompt a masked-level call is conditioned on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Conditioning {
    /// The batch's own conditioning (phonemes, acoustic prompt, ...).
    Conditional,
    /// The null conditioning of classifier-free guidance (e.g. an empty text and prompt).
    Null,
}

/// A codec LM seen by the driver. Conditioning (phonemes, acoustic prompts, speaker) is the
/// model's business: set it on the model for the batch before calling the driver, which only
/// passes codes. Every tensor the driver passes lives on [`CodecLm::device`].
///
/// A row's logits must depend only on that row's inputs (no mixing across the batch), which is
/// what lets a row give the same codes alone and inside any batch.
pub trait CodecLm {
    /// The device the model runs on; the driver keeps its histories and flags there.
    fn device(&self) -> &Device;

    /// Logits per position: the codes plus the stop token (VALL-E: 1024 + 1).
    fn vocab_size(&self) -> usize;

    /// RVQ levels in total, the AR level included (VALL-E: 8).
    fn levels(&self) -> usize;

    /// One AR step. `codes` is `[batch, t]` u32: the first-level codes generated so far, where
    /// `t` is the number of steps already taken (0 at the first call, then 1, 2, ... in order:
    /// a model with a KV cache only needs the last column). `lens` is `[batch]` u32, each row's
    /// number of valid codes; entries at or past a row's length are unspecified (a row that
    /// has stopped keeps being passed, and its logits are ignored). The tensor is a view of the
    /// driver's buffer and is valid for this call only. Returns logits `[batch, vocab]`.
    fn ar_step(&mut self, codes: &Tensor, lens: &Tensor) -> candle_core::Result<Tensor>;

    /// One NAR level. `codes` is `[batch, T, level]` u32: levels `0..level` of every position,
    /// where positions at or past `lens[b]` hold the stop token (padding). Returns the logits of
    /// level `level` for every position, `[batch, T, vocab]`.
    fn nar_level(
        &mut self,
        codes: &Tensor,
        lens: &Tensor,
        level: usize,
    ) -> candle_core::Result<Tensor>;

    /// The duration of every sequence in codes, `[batch]` (any integer or float dtype; floats
    /// are rounded to the nearest integer). Needed by the masked level-0 stage only; the
    /// driver clamps the values to the stage's duration bounds and reads them once.
    ///
    /// A candle error returned with `?` reaches the caller as [`DriverError::ModelFailed`].
    /// The default returns [`DriverError::Unsupported`].
    fn durations(&mut self) -> Result<Tensor> {
        Err(DriverError::Unsupported { hook: "durations" })
    }

    /// One demasking step of the first level. `codes` is `[batch, T]` u32: the current codes,
    /// with the mask token at every masked position and the stop token at or past `lens[b]`
    /// (padding); `mask` is `[batch, T]` u8, 1 at the masked positions; `lens` is `[batch]`
    /// u32; `timestep` is the schedule's t in [0, 1] (noise share `cos(t * pi / 2)`);
    /// `conditioning` says whether to use the batch's prompt or the null prompt (classifier-free
    /// guidance calls both at every step). Returns logits `[batch, T, vocab]` for every
    /// position; the driver only reads those below each length.
    ///
    /// A candle error returned with `?` reaches the caller as [`DriverError::ModelFailed`].
    /// The default returns [`DriverError::Unsupported`].
    fn masked_level(
        &mut self,
        codes: &Tensor,
        mask: &Tensor,
        lens: &Tensor,
        timestep: f32,
        conditioning: Conditioning,
    ) -> Result<Tensor> {
        let _ = (codes, mask, lens, timestep, conditioning);
        Err(DriverError::Unsupported {
            hook: "masked_level",
        })
    }
}
