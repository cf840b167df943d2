//! Top-n-sigma (Tang et al. 2024): over the finite logits of a row, with M the maximum and sigma
//! the unbiased (N - 1) standard deviation, keep `l >= M - n * sigma`. n <= 0 is off.

use candle_core::{Tensor, D};

use crate::context::SamplingContext;
use crate::error::Result;
use crate::param::RowParam;
use crate::processor::LogitsProcessor;
use crate::tensor_ops::{count, finite, keep_only, masked_sum};

#[derive(Clone, Debug)]
pub struct TopNSigma {
    n: RowParam,
}

impl TopNSigma {
    /// `n` finite; <= 0 is off.
    pub fn new(n: impl Into<RowParam>) -> Result<Self> {
        let n = n.into();
        n.check("top_no", "finite", f32::is_finite)?;
        Ok(Self { n })
    }
}

impl LogitsProcessor for TopNSigma {
    fn name(&self) -> &'static str {
        "top_n_sigma"
    }

    fn apply(&self, logits: &Tensor, _ctx: &SamplingContext) -> Result<Tensor> {
        let n = self.n.column(logits.dim(0)?, logits.device())?;
        let fin = finite(logits)?;
        let cnt = count(&fin)?;
        let mean = (masked_sum(logits, &fin)? / &cnt)?;
        let dev2 = logits.broadcast_sub(&mean)?.sqr()?;
        let var = (masked_sum(&dev2, &fin)? / (cnt - 1.0)?.maximum(1f32)?)?;
        let cut = (logits.max_keepdim(D::Minus1)? - (var.sqrt()? * &n)?)?;
        let keep = logits.broadcast_ge(&cut)?;
        let off = n.le(0f32)?.broadcast_as(keep.shape())?;
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

    #[test]
    fn keeps_within_n_sigma_of_max() -> Result<()> {
        // finite values 0, 1, 2, 3: mean 1.5, unbiased var 5/3, sigma 1.291; n = 1 -> cut 1.709.
        let x = t2(&[&[0.0, 1.0, NINF, 2.0, 3.0]]);
        let y = TopNSigma::new(1.0)?.apply(&x, &ctx())?;
        assert_eq!(rows(&y), vec![vec![NINF, NINF, NINF, 2.0, 3.0]]);
        // n = 2 -> cut 0.418: 1, 2, 3 survive.
        let y = TopNSigma::new(2.0)?.apply(&x, &ctx())?;
        assert_eq!(rows(&y), vec![vec![NINF, 1.0, NINF, 2.0, 3.0]]);
        Ok(())
    }

    #[test]
    fn non_positive_n_is_off() -> Result<()> {
        let x = t2(&[&[0.0, 5.0]]);
        assert_eq!(rows(&TopNSigma::new(0.0)?.apply(&x, &ctx())?), rows(&x));
        Ok(())
    }
}
