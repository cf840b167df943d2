//! Top-k: keep every logit >= the k-th largest value of its row (ties at the boundary are kept);
//! k <= 0 is off and k >= vocab keeps everything.

use candle_core::Tensor;

use crate::context::SamplingContext;
use crate::error::Result;
use crate::param::RowParam;
use crate::processor::LogitsProcessor;
use crate::tensor_ops::{full_like, keep_only, kth_largest};

#[derive(Clone, Debug)]
pub struct TopK {
    k: RowParam,
}

impl TopK {
    /// `k` an integer; <= 0 turns the filter off for that row.
    pub fn new(k: impl Into<RowParam>) -> Result<Self> {
        let k = k.into();
        k.check("top_k", "an integer", |v| v.is_finite() && v.fract() == 0.0)?;
        Ok(Self { k })
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
