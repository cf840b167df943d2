//! Top-p (nucleus, Holtzman et al. 2020): order the tokens by logit descending, ties by lower id
//! first, and keep a token when the probability mass of the tokens before it is <= p, so the
//! first token is always kept. p >= 1 is off.
//!
//! Found without a sort: the last kept value is located by bisection over the row's values, and
//! a tie group straddling the cut is split by id (see `tensor_ops::top_p_keep`).

use candle_core::Tensor;

use crate::context::SamplingContext;
use crate::error::Result;
use crate::param::RowParam;
use crate::processor::LogitsProcessor;
use crate::tensor_ops::{keep_only, top_p_keep};

#[derive(Clone, Debug)]
pub struct TopP {
    p: RowParam,
}

impl TopP {
    /// `p` in [0, 1]; 1 is off.
    pub fn new(p: impl Into<RowParam>) -> Result<Self> {
        let p = p.into();
        p.check("top_p", "in [0, 1]", |v| (0.0..=1.0).contains(&v))?;
        Ok(Self { p })
    }
}

impl LogitsProcessor for TopP {
    fn name(&self) -> &'static str {
        "top_p"
    }

    fn apply(&self, logits: &Tensor, _ctx: &SamplingContext) -> Result<Tensor> {
        let p = self.p.column(logits.dim(0)?, logits.device())?;
        let probs = candle_nn::ops::softmax_last_dim(logits)?;
        let keep = top_p_keep(logits, &probs, &p)?;
        let off = p.ge(1f32)?.broadcast_as(keep.shape())?;
        keep_only(logits, &(keep + off)?.gt(0u8)?)
    }

    fn clone_box(&self) -> Box<dyn LogitsProcessor> {
        Box::new(self.clone())
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
        assert_eq!(
            kept(&TopP::new(0.5)?.apply(&x, &ctx())?),
            [false, true, false, true]
        );
        assert_eq!(
            kept(&TopP::new(0.75)?.apply(&x, &ctx())?),
            [false, true, true, true]
        );
        assert_eq!(
            kept(&TopP::new(0.3)?.apply(&x, &ctx())?),
            [false, true, false, false]
        );
        assert_eq!(
            kept(&TopP::new(0.0)?.apply(&x, &ctx())?),
            [false, true, false, false]
        );
        assert_eq!(kept(&TopP::new(1.0)?.apply(&x, &ctx())?), [true; 4]);
        Ok(())
    }

    #[test]
    fn ties_are_split_by_lower_id_first() -> Result<()> {
        // five tied tokens of 0.2: preceding masses in id order are
        // 0, 0.2, 0.4, 0.6, 0.8 -> with p = 0.5, ids 0, 1 and 2 are kept.
        let x = logits_of(&[0.2, 0.2, 0.2, 0.2, 0.2]);
        let y = TopP::new(0.5)?.apply(&x, &ctx())?;
        assert_eq!(kept(&y), [true, true, true, false, false]);
        Ok(())
    }

    #[test]
    fn keeps_neg_inf_as_is() -> Result<()> {
        let x = t2(&[&[0.0, NINF, -0.1]]);
        let y = TopP::new(0.9)?.apply(&x, &ctx())?;
        assert_eq!(rows(&y)[0][1], NINF);
        Ok(())
    }

    #[test]
    fn rejects_out_of_range() {
        assert!(TopP::new(1.5).is_err());
        assert!(TopP::new(-0.1).is_err());
    }
}
