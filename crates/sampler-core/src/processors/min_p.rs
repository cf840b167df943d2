//! Min-p (Nguyen et al. 2024, as in the reference VALL-E pipeline): remove the tokens whose
//! probability is below `p` times the largest probability, but always keep the `min_tokens`
//! highest logits (ties at the boundary kept).
//!
//! The test `prob >= p * max prob` is evaluated as `logit - max logit >= ln p` in f64: the same
//! comparison without the row's sum, so both paths decide it identically.
//!
//! Parameters: `min_p` in [0, 1] (default 0, off), `min_p_min_tokens` a count (default 32).

use candle_core::{Tensor, D};
use sampler_kernels::spec::{row, StageOp};

use crate::config::Knob;
use crate::context::SamplingContext;
use crate::error::Result;
use crate::param::{range, RowParam};
use crate::processor::LogitsProcessor;
use crate::stage::Stage;
use crate::tensor_ops::{decision_dtype, keep_only, kth_largest};

/// Min-p's parameters.
#[derive(Clone, Debug)]
pub struct MinPParams {
    /// The fraction of the largest probability, in [0, 1]; 0 = off.
    pub p: RowParam,
    /// Tokens always kept (the highest logits).
    pub min_tokens: RowParam,
}

impl Default for MinPParams {
    fn default() -> Self {
        Self {
            p: Knob::MinP.default_value().into(),
            min_tokens: Knob::MinPMinTokens.default_value().into(),
        }
    }
}

/// Removes the tokens far less probable than the most probable one.
#[derive(Clone, Debug)]
pub struct MinP {
    params: MinPParams,
}

impl MinP {
    /// Validates the parameters.
    pub fn new(params: MinPParams) -> Result<Self> {
        params.p.check("min_p", "in [0, 1]", range::unit)?;
        params
            .min_tokens
            .check("min_p_min_tokens", "a count >= 0", range::count)?;
        Ok(Self { params })
    }

    /// Min-p with `p` and the given protected count.
    pub fn with(p: impl Into<RowParam>, min_tokens: impl Into<RowParam>) -> Result<Self> {
        Self::new(MinPParams {
            p: p.into(),
            min_tokens: min_tokens.into(),
        })
    }

    /// Whether `p` is off (0) for every row.
    pub fn is_off(p: &RowParam) -> bool {
        p.is_scalar_and(|v| v == 0.0)
    }
}

impl LogitsProcessor for MinP {
    fn name(&self) -> &'static str {
        "min_p"
    }

    fn apply(&self, logits: &Tensor, _ctx: &SamplingContext) -> Result<Tensor> {
        let rows = logits.dim(0)?;
        let dev = logits.device();
        let dt = decision_dtype(dev);
        let x = logits.to_dtype(dt)?;
        let ln_p = self.params.p.column_as(rows, dev, dt)?.log()?;
        let above = x
            .broadcast_sub(&x.max_keepdim(D::Minus1)?)?
            .broadcast_ge(&ln_p)?;
        let m = self.params.min_tokens.column(rows, dev)?;
        let protected = logits.broadcast_ge(&kth_largest(logits, &m)?)?;
        keep_only(logits, &(above + protected)?.gt(0u8)?)
    }

    fn stage(&self) -> Option<Stage> {
        Some(Stage::new(StageOp::MinP(row::MinP {
            p: self.params.p.clone(),
            min_tokens: self.params.min_tokens.clone(),
        })))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{ctx, rows, t2};

    const NINF: f32 = f32::NEG_INFINITY;

    #[test]
    fn removes_below_fraction_of_max_prob() -> Result<()> {
        // Relative to the max: e^-1 = 0.37, e^-3 = 0.05, e^-0.5 = 0.61.
        let x = t2(&[&[0.0, -1.0, -3.0, -0.5]]);
        let y = MinP::with(0.1, 1.0)?.apply(&x, &ctx())?;
        assert_eq!(rows(&y), vec![vec![0.0, -1.0, NINF, -0.5]]);
        let y = MinP::with(0.5, 1.0)?.apply(&x, &ctx())?;
        assert_eq!(rows(&y), vec![vec![0.0, NINF, NINF, -0.5]]);
        Ok(())
    }

    #[test]
    fn keeps_min_tokens_highest_with_ties() -> Result<()> {
        let x = t2(&[&[0.0, -5.0, -3.0, -9.0, -5.0]]);
        let y = MinP::with(0.9, 3.0)?.apply(&x, &ctx())?;
        assert_eq!(rows(&y), vec![vec![0.0, -5.0, -3.0, NINF, -5.0]]);
        Ok(())
    }

    #[test]
    fn the_cut_is_exact_at_ln_p() -> Result<()> {
        // ln 0.25 = -1.386294...: a logit exactly at max + ln p (in f64) stays.
        let at = (0.25f64.ln()) as f32;
        let cut = if (at as f64) < 0.25f64.ln() {
            f32::from_bits(at.to_bits() - 1)
        } else {
            at
        };
        let below = f32::from_bits(cut.to_bits() + 1); // more negative
        let x = t2(&[&[0.0, cut, below]]);
        let y = rows(&MinP::with(0.25, 1.0)?.apply(&x, &ctx())?);
        assert!(y[0][1].is_finite() && y[0][2] == NINF, "{y:?}");
        Ok(())
    }

    #[test]
    fn rejects_out_of_range() {
        assert!(MinP::with(1.5, 1.0).is_err());
        assert!(MinP::with(-0.1, 1.0).is_err());
        assert!(MinP::with(0.1, -1.0).is_err());
        assert!(MinP::with(0.1, 2.5).is_err());
    }
}
