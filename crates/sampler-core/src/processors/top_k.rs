//! Top-k: keep every logit >= the k-th largest value of its row (ties at the boundary are
//! kept); k >= the number of finite logits keeps everything.
//!
//! Parameter: `top_k` (an integer; default 0). Off when <= 0.

use candle_core::Tensor;
use sampler_kernels::spec::{row, StageOp};

use crate::context::SamplingContext;
use crate::error::Result;
use crate::param::{range, RowParam};
use crate::processor::LogitsProcessor;
use crate::stage::Stage;
use crate::tensor_ops::{full_like, keep_only, kth_largest};

/// Keeps the k largest logits of each row, ties included.
#[derive(Clone, Debug)]
pub struct TopK {
    k: RowParam,
}

impl TopK {
    /// `k` an integer; <= 0 turns the filter off for that row.
    pub fn new(k: impl Into<RowParam>) -> Result<Self> {
        let k = k.into();
        k.check("top_k", "an integer", range::integer)?;
        Ok(Self { k })
    }

    /// Whether `k` is off for every row.
    pub fn is_off(k: &RowParam) -> bool {
        k.is_scalar_and(|v| v <= 0.0)
    }
}

impl LogitsProcessor for TopK {
    fn name(&self) -> &'static str {
        "top_k"
    }

    fn apply(&self, logits: &Tensor, _ctx: &SamplingContext) -> Result<Tensor> {
        let (rows, vocab) = logits.dims2()?;
        let k = self.k.column(rows, logits.device())?;
        let k = k.le(0f32)?.where_cond(&full_like(&k, vocab as f32)?, &k)?;
        let threshold = kth_largest(logits, &k)?;
        keep_only(logits, &logits.broadcast_ge(&threshold)?)
    }

    fn stage(&self) -> Option<Stage> {
        Some(Stage::new(StageOp::TopK(row::TopK { k: self.k.clone() })))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{ctx, rows, t2};

    const NINF: f32 = f32::NEG_INFINITY;

    #[test]
    fn keeps_k_largest_with_ties() -> Result<()> {
        let x = t2(&[&[1.0, 4.0, 2.0, 4.0, 3.0], &[1.0, 2.0, 2.0, 2.0, 0.0]]);
        let y = TopK::new(2.0)?.apply(&x, &ctx())?;
        assert_eq!(
            rows(&y),
            vec![
                vec![NINF, 4.0, NINF, 4.0, NINF],
                vec![NINF, 2.0, 2.0, 2.0, NINF]
            ]
        );
        Ok(())
    }

    #[test]
    fn off_and_oversized_k_keep_everything() -> Result<()> {
        let x = t2(&[&[1.0, NINF, 2.0]]);
        assert_eq!(rows(&TopK::new(0.0)?.apply(&x, &ctx())?), rows(&x));
        assert_eq!(rows(&TopK::new(10.0)?.apply(&x, &ctx())?), rows(&x));
        assert!(TopK::new(2.5).is_err());
        Ok(())
    }

    #[test]
    fn per_row_k() -> Result<()> {
        let x = t2(&[&[1.0, 2.0, 3.0], &[1.0, 2.0, 3.0]]);
        let k = Tensor::new(&[1f32, 0.0], &candle_core::Device::Cpu)?;
        let y = TopK::new(k)?.apply(&x, &ctx())?;
        assert_eq!(rows(&y), vec![vec![NINF, NINF, 3.0], vec![1.0, 2.0, 3.0]]);
        Ok(())
    }
}
