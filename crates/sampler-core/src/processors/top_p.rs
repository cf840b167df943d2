//! Top-p (nucleus, Holtzman et al. 2020): order the tokens by logit descending, ties by lower
//! id first, and keep a token when the probability mass of the tokens before it is <= p, so the
//! first token is always kept. Masses are f64.
//!
//! Parameter: `top_p` in [0, 1] (default 1). Off when >= 1.
//!
//! The plain form finds the cut without a sort: the last kept value by bisection over the
//! row's values, a tie group straddling the cut split by id (`tensor_ops::top_p_keep`).

use candle_core::Tensor;
use sampler_kernels::spec::{row, StageOp};

use crate::context::SamplingContext;
use crate::error::Result;
use crate::param::{range, RowParam};
use crate::processor::LogitsProcessor;
use crate::stage::Stage;
use crate::tensor_ops::{decision_dtype, keep_only, softmax, top_p_keep};

/// Keeps the smallest head of the ranked row whose mass reaches p.
#[derive(Clone, Debug)]
pub struct TopP {
    p: RowParam,
}

impl TopP {
    /// `p` in [0, 1]; 1 is off.
    pub fn new(p: impl Into<RowParam>) -> Result<Self> {
        let p = p.into();
        p.check("top_p", "in [0, 1]", range::unit)?;
        Ok(Self { p })
    }

    /// Whether `p` is off (>= 1) for every row.
    pub fn is_off(p: &RowParam) -> bool {
        p.is_scalar_and(|v| v >= 1.0)
    }
}

impl LogitsProcessor for TopP {
    fn name(&self) -> &'static str {
        "top_p"
    }

    fn apply(&self, logits: &Tensor, _ctx: &SamplingContext) -> Result<Tensor> {
        let dev = logits.device();
        let dt = decision_dtype(dev);
        let p = self.p.column_as(logits.dim(0)?, dev, dt)?;
        let probs = softmax(&logits.to_dtype(dt)?)?;
        let keep = top_p_keep(logits, &probs, &p)?;
        let off = p.ge(1f64)?.broadcast_as(keep.shape())?;
        keep_only(logits, &(keep + off)?.gt(0u8)?)
    }

    fn stage(&self) -> Option<Stage> {
        Some(Stage::new(StageOp::TopP(row::TopP { p: self.p.clone() })))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{ctx, rows, t2};

    const NINF: f32 = f32::NEG_INFINITY;

    fn logits_of(probs: &[f32]) -> Tensor {
        let l: Vec<f32> = probs.iter().map(|p| p.ln()).collect();
        t2(&[&l])
    }

    fn kept(y: &Tensor) -> Vec<bool> {
        rows(y)[0].iter().map(|v| v.is_finite()).collect()
    }

    #[test]
    fn keeps_while_preceding_mass_at_most_p() -> Result<()> {
        // sorted: 0.4 (before 0), 0.3 (0.4), 0.2 (0.7), 0.1 (0.9)
        let x = logits_of(&[0.1, 0.4, 0.2, 0.3]);
        let k = |p: f32| kept(&TopP::new(p).unwrap().apply(&x, &ctx()).unwrap());
        assert_eq!(k(0.5), [false, true, false, true]);
        assert_eq!(k(0.75), [false, true, true, true]);
        assert_eq!(k(0.3), [false, true, false, false]);
        assert_eq!(k(0.0), [false, true, false, false]);
        assert_eq!(k(1.0), [true; 4]);
        Ok(())
    }

    #[test]
    fn ties_are_split_by_lower_id_first() -> Result<()> {
        // Five tied tokens of 0.2: masses before them in id order 0, 0.2, 0.4, 0.6, 0.8.
        let x = logits_of(&[0.2, 0.2, 0.2, 0.2, 0.2]);
        let y = TopP::new(0.5)?.apply(&x, &ctx())?;
        assert_eq!(kept(&y), [true, true, true, false, false]);
        Ok(())
    }

    #[test]
    fn keeps_neg_inf_as_is_and_rejects_out_of_range() -> Result<()> {
        let x = t2(&[&[0.0, NINF, -0.1]]);
        let y = TopP::new(0.9)?.apply(&x, &ctx())?;
        assert_eq!(rows(&y)[0][1], NINF);
        assert!(TopP::new(1.5).is_err() && TopP::new(-0.1).is_err());
        Ok(())
    }
}
