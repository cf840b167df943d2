//! Top-n-sigma (Tang et al. 2024): over the finite logits of a row, with M the maximum and
//! sigma the unbiased (N - 1) standard deviation (f64), keep `l >= M - n * sigma`.
//!
//! Parameter: `top_no` (the n; finite, >= 0; default 0). Off when <= 0.

use candle_core::{Tensor, D};
use sampler_kernels::spec::{row, StageOp};

use crate::context::SamplingContext;
use crate::error::Result;
use crate::param::{range, RowParam};
use crate::processor::LogitsProcessor;
use crate::stage::Stage;
use crate::tensor_ops::{count_as, decision_dtype, finite, keep_only, masked_sum};

/// Keeps the logits within n standard deviations of the row's maximum.
#[derive(Clone, Debug)]
pub struct TopNSigma {
    n: RowParam,
}

impl TopNSigma {
    /// `n` finite and >= 0; 0 is off.
    pub fn new(n: impl Into<RowParam>) -> Result<Self> {
        let n = n.into();
        n.check("top_no", ">= 0 and finite", range::non_negative)?;
        Ok(Self { n })
    }

    /// Whether `n` is off (<= 0) for every row.
    pub fn is_off(n: &RowParam) -> bool {
        n.is_scalar_and(|v| v <= 0.0)
    }
}

impl LogitsProcessor for TopNSigma {
    fn name(&self) -> &'static str {
        "top_n_sigma"
    }

    fn apply(&self, logits: &Tensor, _ctx: &SamplingContext) -> Result<Tensor> {
        let dev = logits.device();
        let dt = decision_dtype(dev);
        let n = self.n.column_as(logits.dim(0)?, dev, dt)?;
        let fin = finite(logits)?;
        let x = logits.to_dtype(dt)?;
        let x0 = fin.where_cond(&x, &x.zeros_like()?)?;
        let cnt = count_as(&fin, dt)?;
        let mean = (masked_sum(&x0, &fin)? / &cnt)?;
        let dev2 = fin.where_cond(&x0.broadcast_sub(&mean)?.sqr()?, &x.zeros_like()?)?;
        let var = (masked_sum(&dev2, &fin)? / (cnt - 1.0)?.maximum(1f64)?)?;
        let cut = (x.max_keepdim(D::Minus1)? - (var.sqrt()? * &n)?)?;
        let keep = x.broadcast_ge(&cut)?;
        let off = n.le(0f64)?.broadcast_as(keep.shape())?;
        keep_only(logits, &(keep + off)?.gt(0u8)?)
    }

    fn stage(&self) -> Option<Stage> {
        Some(Stage::new(StageOp::TopNSigma(row::TopNSigma {
            n: self.n.clone(),
        })))
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
    fn zero_is_off_and_negative_is_rejected() -> Result<()> {
        let x = t2(&[&[0.0, 5.0]]);
        assert_eq!(rows(&TopNSigma::new(0.0)?.apply(&x, &ctx())?), rows(&x));
        assert!(TopNSigma::new(-1.0).is_err());
        Ok(())
    }
}
