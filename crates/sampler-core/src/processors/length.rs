//! Length penalty on the stop token (AR): `logit[stop] /= L^factor` with L = history length + 1,
//! so that a positive factor makes stopping less likely as a sequence grows (reference VALL-E).
//! Without a history it does nothing.
//!
//! Parameters: `length_penalty` (finite; default 0, off), `stop_token` (default: the last id of
//! the vocabulary).

use candle_core::{DType, Tensor};
use sampler_kernels::spec::{row, StageOp};

use crate::context::SamplingContext;
use crate::error::Result;
use crate::param::{range, RowParam};
use crate::processor::LogitsProcessor;
use crate::stage::Stage;
use crate::vocab_cache::{one_hot_row, VocabCache};

/// Divides the stop token's logit by a power of the row's length.
#[derive(Clone, Debug)]
pub struct LengthPenalty {
    factor: RowParam,
    stop_token: Option<u32>,
    stop_mask: VocabCache,
}

impl LengthPenalty {
    /// `factor` finite (0 = off); `stop_token` None = the last id of the vocabulary.
    pub fn new(factor: impl Into<RowParam>, stop_token: Option<u32>) -> Result<Self> {
        let factor = factor.into();
        factor.check("length_penalty", "finite", range::finite)?;
        Ok(Self {
            factor,
            stop_token,
            stop_mask: VocabCache::default(),
        })
    }

    /// Whether the factor is off (0) for every row.
    pub fn is_off(factor: &RowParam) -> bool {
        factor.is_scalar_and(|v| v == 0.0)
    }
}

impl LogitsProcessor for LengthPenalty {
    fn name(&self) -> &'static str {
        "length_penalty"
    }

    fn apply(&self, logits: &Tensor, ctx: &SamplingContext) -> Result<Tensor> {
        let Some(hist) = ctx.history() else {
            return Ok(logits.clone());
        };
        let (rows, vocab) = logits.dims2()?;
        let dev = logits.device();
        let stop = self.stop_mask.get(vocab, dev, || {
            let s = self.stop_token.unwrap_or(vocab as u32 - 1);
            one_hot_row(&[s], vocab, "stop_token", dev)
        })?;
        let len = hist
            .lens()
            .to_dtype(DType::F32)?
            .reshape((rows, 1))?
            .affine(1.0, 1.0)?;
        let divisor = (len.log()? * self.factor.column(rows, dev)?)?.exp()?;
        let divided = logits.broadcast_div(&divisor)?;
        Ok(stop
            .broadcast_as(logits.shape())?
            .where_cond(&divided, logits)?)
    }

    fn stage(&self) -> Option<Stage> {
        Some(Stage::new(StageOp::LengthPenalty(
            row::LengthPenalty {
                factor: self.factor.clone(),
            },
            self.stop_token,
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{assert_close, ctx_with_history, rows, t2};

    #[test]
    fn divides_stop_token_by_length_power() -> Result<()> {
        let x = t2(&[&[1.0, 2.0, 8.0], &[1.0, 2.0, -8.0]]);
        // lengths 3 and 0: L = 4 and 1.
        let c = ctx_with_history(&[vec![0, 1, 0], vec![-1, -1, -1]]);
        let y = LengthPenalty::new(0.5, None)?.apply(&x, &c)?;
        assert_close(&rows(&y), &[vec![1.0, 2.0, 4.0], vec![1.0, 2.0, -8.0]]);
        let y = LengthPenalty::new(1.0, Some(0))?.apply(&x, &c)?;
        assert_close(&rows(&y), &[vec![0.25, 2.0, 8.0], vec![1.0, 2.0, -8.0]]);
        Ok(())
    }

    #[test]
    fn stop_token_out_of_vocab_is_an_error() {
        let x = t2(&[&[1.0, 2.0]]);
        let c = ctx_with_history(&[vec![0]]);
        assert!(LengthPenalty::new(0.5, Some(2))
            .unwrap()
            .apply(&x, &c)
            .is_err());
        assert!(LengthPenalty::new(f32::INFINITY, None).is_err());
    }
}
