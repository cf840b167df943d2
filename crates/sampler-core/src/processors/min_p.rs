//! Min-p (Nguyen et al. 2024, as in the reference VALL-E pipeline): with probs = softmax(logits),
//! remove the tokens whose probability is below `p * max prob`, but always keep the `min_tokens`
//! highest logits (default 32).

use candle_core::{Tensor, D};

use crate::context::SamplingContext;
use crate::error::Result;
use crate::param::RowParam;
use crate::processor::LogitsProcessor;
use crate::tensor_ops::{keep_only, kth_largest};

#[derive(Clone, Debug)]
pub struct MinP {
    p: RowParam,
    min_tokens: RowParam,
}

impl MinP {
    /// `p` in [0, 1] (0 = off), `min_tokens` >= 0.
    pub fn new(p: impl Into<RowParam>, min_tokens: impl Into<RowParam>) -> Result<Self> {
        let (p, min_tokens) = (p.into(), min_tokens.into());
        p.check("min_p", "in [0, 1]", |v| (0.0..=1.0).contains(&v))?;
        min_tokens.check("min_p_min_tokens", "a count >= 0", |v| {
            v >= 0.0 && v.fract() == 0.0
        })?;
        Ok(Self { p, min_tokens })
    }
}

impl LogitsProcessor for MinP {
    fn name(&self) -> &'static str {
        "min_p"
    }

    fn apply(&self, logits: &Tensor, _ctx: &SamplingContext) -> Result<Tensor> {
        let rows = logits.dim(0)?;
        let dev = logits.device();
        let probs = candle_nn::ops::softmax_last_dim(logits)?;
        let floor = probs
            .max_keepdim(D::Minus1)?
            .broadcast_mul(&self.p.column(rows, dev)?)?;
        let above = probs.broadcast_ge(&floor)?;
        let protected =
            logits.broadcast_ge(&kth_largest(logits, &self.min_tokens.column(rows, dev)?)?)?;
        keep_only(logits, &(above + protected)?.gt(0u8)?)
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

    #[test]
    fn removes_below_fraction_of_max_prob() -> Result<()> {
        // probs proportional to e^x: relative to the max, e^-1 = 0.37, e^-3 = 0.05.
        let x = t2(&[&[0.0, -1.0, -3.0, -0.5]]);
        let y = MinP::new(0.1, 1.0)?.apply(&x, &ctx())?;
        assert_eq!(rows(&y), vec![vec![0.0, -1.0, NINF, -0.5]]);
        let y = MinP::new(0.5, 1.0)?.apply(&x, &ctx())?;
        assert_eq!(rows(&y), vec![vec![0.0, NINF, NINF, -0.5]]);
        Ok(())
    }

    #[test]
    fn keeps_min_tokens_highest() -> Result<()> {
        let x = t2(&[&[0.0, -5.0, -3.0, -9.0]]);
        let y = MinP::new(0.9, 3.0)?.apply(&x, &ctx())?;
        assert_eq!(rows(&y), vec![vec![0.0, -5.0, -3.0, NINF]]);
        Ok(())
    }

    #[test]
    fn rejects_out_of_range() {
        assert!(MinP::new(1.5, 1.0).is_err());
        assert!(MinP::new(-0.1, 1.0).is_err());
        assert!(MinP::new(0.1, -1.0).is_err());
    }
}
