//! Repetition penalty with distance decay and a window, in the reference VALL-E "divide" form,
//! and the HF/CTRL "sign-aware" form.
//!
//! Divide (the default): for a row with history `h[0..H)` and every position i at distance
//! `D = H - i` (1 = most recent) with `window == 0 || D < window`: `logit[h[i]] /= penalty *
//! D^decay`, once per occurrence and whatever the logit's sign. The default window of 75 is one
//! second of EnCodec audio. In NAR mode the history of row j is the previous level's codes
//! before j (see [`crate::History::nar_from_previous_level`]), so D = j - i.
//!
//! Sign-aware (Keskar et al. 2019, CTRL; the HF `RepetitionPenaltyLogitsProcessor` and llama.cpp
//! `penalties`): every distinct token of the same window, once however often it occurs, gets
//! `logit / penalty` when the logit is positive and `logit * penalty` when it is negative, so a
//! penalty > 1 always lowers its probability. It takes no decay.
//!
//! Parameters: `repetition_penalty` (> 0; 1 with decay 0 is off), `repetition_penalty_decay`
//! (finite; 0 in the sign-aware mode), `repetition_penalty_window` (a count; 0 = the whole
//! history; default 75), `repetition_penalty_mode` ("divide" or "sign_aware").
//!
//! Plain implementation: the divisors multiply, so their logarithms add: one scatter-add of
//! `ln(penalty) + decay * ln(D)` per history entry into a `[rows, vocab]` buffer, then one
//! division by its exponential. The sign-aware form scatter-adds ones (occurrence counts) and
//! tests them for > 0. All on the device.

use candle_core::{DType, Tensor};
use sampler_kernels::spec::{row, StageOp};

use crate::config::{Knob, RepetitionPenaltyMode};
use crate::context::SamplingContext;
use crate::error::Result;
use crate::param::{range, RowParam};
use crate::processor::LogitsProcessor;
use crate::stage::Stage;

/// The repetition penalty's parameters.
#[derive(Clone, Debug)]
pub struct RepetitionPenaltyParams {
    /// The factor, > 0.
    pub penalty: RowParam,
    /// The distance exponent of the divide form.
    pub decay: RowParam,
    /// Only distances below it count; 0 = the whole history.
    pub window: RowParam,
    /// Divide (per occurrence, any sign) or sign-aware (per distinct token).
    pub mode: RepetitionPenaltyMode,
}

impl Default for RepetitionPenaltyParams {
    fn default() -> Self {
        Self {
            penalty: Knob::RepetitionPenalty.default_value().into(),
            decay: Knob::RepetitionPenaltyDecay.default_value().into(),
            window: Knob::RepetitionPenaltyWindow.default_value().into(),
            mode: RepetitionPenaltyMode::Divide,
        }
    }
}

/// Lowers the logits of the tokens in each row's recent history.
#[derive(Clone, Debug)]
pub struct RepetitionPenalty {
    penalty: RowParam,
    decay: RowParam,
    window: RowParam,
    mode: RepetitionPenaltyMode,
}

/// The history positions a windowed penalty looks at.
pub(crate) struct WindowedHistory {
    /// `[rows, width]` u32 token ids, 0 where the position does not count.
    pub ids: Tensor,
    /// `[rows, width]` u8: 1 where the position counts (inside the row's length and window).
    pub valid: Tensor,
    /// `[rows, width]` f32 distance D = length - position.
    pub dist: Tensor,
}

impl WindowedHistory {
    /// The positions with `window == 0 || D < window` (`window`: a count per row), or `None`
    /// when there is no history.
    pub(crate) fn of(
        logits: &Tensor,
        ctx: &SamplingContext,
        window: &RowParam,
    ) -> Result<Option<Self>> {
        let Some(hist) = ctx.history() else {
            return Ok(None);
        };
        if hist.width() == 0 {
            return Ok(None);
        }
        let rows = logits.dim(0)?;
        let dev = logits.device();
        let tokens = hist.tokens()?;
        let width = hist.width();
        let lens = hist.lens().to_dtype(DType::F32)?.reshape((rows, 1))?;
        let pos = Tensor::arange(0f32, width as f32, dev)?.unsqueeze(0)?;
        let dist = lens.broadcast_sub(&pos)?;
        let window = window.column(rows, dev)?;
        let in_window = window
            .eq(0f32)?
            .broadcast_add(&dist.broadcast_lt(&window)?)?
            .gt(0u8)?;
        let valid = (dist.ge(1f32)? * in_window)?;
        // Entries past a row's length may hold anything; point them at id 0 (with weight 0).
        let ids = valid
            .where_cond(&tokens, &tokens.zeros_like()?)?
            .contiguous()?;
        Ok(Some(Self { ids, valid, dist }))
    }

    /// `[rows, vocab]` f32: how often each token occurs at the counted positions.
    pub(crate) fn counts(&self, vocab: usize) -> Result<Tensor> {
        let rows = self.ids.dim(0)?;
        let ones = self.valid.to_dtype(DType::F32)?.contiguous()?;
        let acc = Tensor::zeros((rows, vocab), DType::F32, self.ids.device())?;
        Ok(acc.scatter_add(&self.ids, &ones, 1)?)
    }
}

impl RepetitionPenalty {
    /// Validates the parameters; the sign-aware form takes no decay.
    pub fn new(params: RepetitionPenaltyParams) -> Result<Self> {
        let RepetitionPenaltyParams {
            penalty,
            decay,
            window,
            mode,
        } = params;
        penalty.check("repetition_penalty", "> 0 and finite", |v| {
            v > 0.0 && v.is_finite()
        })?;
        decay.check("repetition_penalty_decay", "finite", range::finite)?;
        window.check("repetition_penalty_window", "a count >= 0", range::count)?;
        if mode == RepetitionPenaltyMode::SignAware {
            decay.check(
                "repetition_penalty_decay",
                "0 (the sign_aware mode takes no decay)",
                |v| v == 0.0,
            )?;
        }
        Ok(Self {
            penalty,
            decay,
            window,
            mode,
        })
    }

    /// The divide form.
    pub fn divide(
        penalty: impl Into<RowParam>,
        decay: impl Into<RowParam>,
        window: impl Into<RowParam>,
    ) -> Result<Self> {
        Self::new(RepetitionPenaltyParams {
            penalty: penalty.into(),
            decay: decay.into(),
            window: window.into(),
            mode: RepetitionPenaltyMode::Divide,
        })
    }

    /// The sign-aware form: `penalty` > 0 (1 = off), `window` >= 0 (0 = the whole history).
    pub fn sign_aware(penalty: impl Into<RowParam>, window: impl Into<RowParam>) -> Result<Self> {
        Self::new(RepetitionPenaltyParams {
            penalty: penalty.into(),
            decay: 0.0.into(),
            window: window.into(),
            mode: RepetitionPenaltyMode::SignAware,
        })
    }

    /// Whether the penalty is off for every row: factor 1 and decay 0.
    pub fn is_off(penalty: &RowParam, decay: &RowParam) -> bool {
        penalty.is_scalar_and(|v| v == 1.0) && decay.is_scalar_and(|v| v == 0.0)
    }

    /// The mode.
    pub fn mode(&self) -> RepetitionPenaltyMode {
        self.mode
    }

    /// The `[rows, vocab]` log-divisor: the sum over the penalised occurrences of each token.
    pub(crate) fn log_divisor(
        &self,
        logits: &Tensor,
        ctx: &SamplingContext,
    ) -> Result<Option<Tensor>> {
        let Some(w) = WindowedHistory::of(logits, ctx, &self.window)? else {
            return Ok(None);
        };
        let (rows, vocab) = logits.dims2()?;
        let dev = logits.device();
        let log_pen = self.penalty.column(rows, dev)?.log()?;
        let decay = self.decay.column(rows, dev)?;
        let weight = w
            .dist
            .maximum(1f32)?
            .log()?
            .broadcast_mul(&decay)?
            .broadcast_add(&log_pen)?;
        let weight = w.valid.where_cond(&weight, &weight.zeros_like()?)?;
        let acc = Tensor::zeros((rows, vocab), DType::F32, dev)?;
        Ok(Some(acc.scatter_add(&w.ids, &weight.contiguous()?, 1)?))
    }

    fn apply_sign_aware(&self, logits: &Tensor, ctx: &SamplingContext) -> Result<Tensor> {
        let Some(w) = WindowedHistory::of(logits, ctx, &self.window)? else {
            return Ok(logits.clone());
        };
        let (rows, vocab) = logits.dims2()?;
        let seen = w.counts(vocab)?.gt(0f32)?;
        let pen = self.penalty.column(rows, logits.device())?;
        let lowered = logits
            .gt(0f32)?
            .where_cond(&logits.broadcast_div(&pen)?, &logits.broadcast_mul(&pen)?)?;
        Ok(seen.where_cond(&lowered, logits)?)
    }
}

impl LogitsProcessor for RepetitionPenalty {
    fn name(&self) -> &'static str {
        match self.mode {
            RepetitionPenaltyMode::Divide => "repetition_penalty",
            RepetitionPenaltyMode::SignAware => "repetition_penalty_sign_aware",
        }
    }

    fn apply(&self, logits: &Tensor, ctx: &SamplingContext) -> Result<Tensor> {
        if self.mode == RepetitionPenaltyMode::SignAware {
            return self.apply_sign_aware(logits, ctx);
        }
        match self.log_divisor(logits, ctx)? {
            None => Ok(logits.clone()),
            Some(ld) => Ok((logits / ld.exp()?)?),
        }
    }

    fn stage(&self) -> Option<Stage> {
        Some(Stage::new(match self.mode {
            RepetitionPenaltyMode::Divide => StageOp::RepetitionDivide(row::RepetitionDivide {
                penalty: self.penalty.clone(),
                decay: self.decay.clone(),
                window: self.window.clone(),
            }),
            RepetitionPenaltyMode::SignAware => {
                StageOp::RepetitionSignAware(row::RepetitionSignAware {
                    penalty: self.penalty.clone(),
                    window: self.window.clone(),
                })
            }
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{assert_close, ctx, ctx_with_history, rows, t2};

    #[test]
    fn divides_once_per_occurrence_whatever_the_sign() -> Result<()> {
        let x = t2(&[&[3.0, -2.0, 4.0, 1.0]]);
        // token 1 twice, token 0 once: 0 / 2, 1 / 4 (negative too).
        let c = ctx_with_history(&[vec![1, 0, 1]]);
        let y = RepetitionPenalty::divide(2.0, 0.0, 75.0)?.apply(&x, &c)?;
        assert_close(&rows(&y), &[vec![1.5, -0.5, 4.0, 1.0]]);
        Ok(())
    }

    #[test]
    fn decay_uses_distance_from_the_end() -> Result<()> {
        let x = t2(&[&[8.0, 8.0, 8.0]]);
        // history [0, 1, 2]: distances 3, 2, 1; divisor 2 * D^0.5.
        let c = ctx_with_history(&[vec![0, 1, 2]]);
        let y = RepetitionPenalty::divide(2.0, 0.5, 0.0)?.apply(&x, &c)?;
        let s = |d: f32| 8.0 / (2.0 * d.sqrt());
        assert_close(&rows(&y), &[vec![s(3.0), s(2.0), s(1.0)]]);
        Ok(())
    }

    #[test]
    fn window_excludes_distance_at_or_beyond_it() -> Result<()> {
        let x = t2(&[&[6.0, 6.0, 6.0]]);
        // window 2: only distance 1 (the last token) counts.
        let c = ctx_with_history(&[vec![0, 1, 2]]);
        let y = RepetitionPenalty::divide(3.0, 0.0, 2.0)?.apply(&x, &c)?;
        assert_close(&rows(&y), &[vec![6.0, 6.0, 2.0]]);
        Ok(())
    }

    #[test]
    fn padded_rows_and_empty_history() -> Result<()> {
        let x = t2(&[&[6.0, 6.0], &[6.0, 6.0]]);
        let c = ctx_with_history(&[vec![1, -1], vec![-1, -1]]);
        let y = RepetitionPenalty::divide(2.0, 0.0, 75.0)?.apply(&x, &c)?;
        assert_close(&rows(&y), &[vec![6.0, 3.0], vec![6.0, 6.0]]);
        let y = RepetitionPenalty::divide(2.0, 0.0, 75.0)?.apply(&x, &ctx())?;
        assert_close(&rows(&y), &rows(&x));
        Ok(())
    }

    #[test]
    fn per_row_penalty() -> Result<()> {
        let x = t2(&[&[6.0, 6.0], &[6.0, 6.0]]);
        let c = ctx_with_history(&[vec![0], vec![0]]);
        let pen = Tensor::new(&[2f32, 3.0], &candle_core::Device::Cpu)?;
        let y = RepetitionPenalty::divide(pen, 0.0, 75.0)?.apply(&x, &c)?;
        assert_close(&rows(&y), &[vec![3.0, 6.0], vec![2.0, 6.0]]);
        Ok(())
    }

    #[test]
    fn sign_aware_divides_positive_multiplies_negative_once_per_token() -> Result<()> {
        // The HF test case: uniform 0.1 scores, [0, 0] = -0.1, [1, 5] = 0.4, penalty 2.
        let mut a = vec![0.1f32; 10];
        a[0] = -0.1;
        let mut b = vec![0.1f32; 10];
        b[5] = 0.4;
        let x = t2(&[&a, &b]);
        let c = ctx_with_history(&[vec![0, 1], vec![5, 0]]);
        let y = rows(&RepetitionPenalty::sign_aware(2.0, 75.0)?.apply(&x, &c)?);
        assert!(
            (y[0][0] + 0.2).abs() < 1e-7 && (y[0][1] - 0.05).abs() < 1e-7,
            "{:?}",
            y[0]
        );
        assert!(
            (y[1][0] - 0.05).abs() < 1e-7 && (y[1][5] - 0.2).abs() < 1e-7,
            "{:?}",
            y[1]
        );
        assert_eq!(y[0][2], 0.1);
        // A token seen three times is still penalised once.
        let x = t2(&[&[4.0, -4.0, 1.0]]);
        let c = ctx_with_history(&[vec![0, 0, 0, 1, 1]]);
        let y = RepetitionPenalty::sign_aware(2.0, 0.0)?.apply(&x, &c)?;
        assert_close(&rows(&y), &[vec![2.0, -8.0, 1.0]]);
        Ok(())
    }

    #[test]
    fn sign_aware_matches_llama_cpp_published_probabilities() -> Result<()> {
        // llama.cpp test-sampling: five tokens of 0.2, penalty 50 over history {0, 1, 2, 0, 0}
        // leaves {0, 0, 0, 0.5, 0.5}.
        let l = vec![0.2f32.ln(); 5];
        let x = t2(&[&l]);
        let c = ctx_with_history(&[vec![0, 1, 2, 0, 0]]);
        let y = RepetitionPenalty::sign_aware(50.0, 0.0)?.apply(&x, &c)?;
        let p = rows(&crate::tensor_ops::softmax(&y)?)[0].clone();
        for (g, w) in p.iter().zip([0.0, 0.0, 0.0, 0.5, 0.5]) {
            assert!((g - w).abs() < 1e-5, "{p:?}");
        }
        Ok(())
    }

    #[test]
    fn sign_aware_takes_no_decay() {
        let p = |decay: f32| RepetitionPenaltyParams {
            penalty: 1.5.into(),
            decay: decay.into(),
            window: 75.0.into(),
            mode: RepetitionPenaltyMode::SignAware,
        };
        assert!(RepetitionPenalty::new(p(0.5)).is_err());
        assert!(RepetitionPenalty::new(p(0.0)).is_ok());
    }

    #[test]
    fn rejects_non_positive_penalty() {
        assert!(RepetitionPenalty::divide(0.0, 0.0, 75.0).is_err());
        assert!(RepetitionPenalty::divide(1.5, f32::NAN, 75.0).is_err());
        assert!(RepetitionPenalty::divide(1.5, 0.0, -1.0).is_err());
    }
}
