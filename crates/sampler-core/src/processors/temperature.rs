//! Temperature: `t > 0` divides the logits by t; `t <= 0` leaves them alone and means a greedy
//! draw (the draw's rule comes from the same parameter, see [`crate::Draw::from_temperature`]).
//!
//! Parameter: `temperature` (finite; default 1). Off when it is 1 or <= 0 for every row.

use candle_core::Tensor;
use sampler_kernels::spec::{row, StageOp};

use crate::context::SamplingContext;
use crate::error::Result;
use crate::param::{range, RowParam};
use crate::processor::LogitsProcessor;
use crate::stage::Stage;
use crate::tensor_ops::full_like;

/// Divides each row by its temperature where it is > 0.
#[derive(Clone, Debug)]
pub struct Temperature {
    t: RowParam,
}

impl Temperature {
    /// `t` finite; <= 0 leaves the row alone (greedy).
    pub fn new(t: impl Into<RowParam>) -> Result<Self> {
        let t = t.into();
        t.check("temperature", "finite", range::finite)?;
        Ok(Self { t })
    }

    /// Whether a temperature changes nothing: 1, or <= 0 (greedy).
    pub fn is_off(t: &RowParam) -> bool {
        t.is_scalar_and(|v| v == 1.0 || v <= 0.0)
    }

    /// The per-row divisor: t where t > 0, else 1.
    pub(crate) fn divisor(t: &Tensor) -> Result<Tensor> {
        Ok(t.gt(0f32)?.where_cond(t, &full_like(t, 1.0)?)?)
    }
}

impl LogitsProcessor for Temperature {
    fn name(&self) -> &'static str {
        "temperature"
    }

    fn apply(&self, logits: &Tensor, _ctx: &SamplingContext) -> Result<Tensor> {
        let t = self.t.column(logits.dim(0)?, logits.device())?;
        Ok(logits.broadcast_div(&Self::divisor(&t)?)?)
    }

    fn stage(&self) -> Option<Stage> {
        Some(Stage::new(StageOp::Temperature(row::Temperature {
            t: self.t.clone(),
        })))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{assert_close, ctx, rows, t2};

    #[test]
    fn divides_when_positive_only() -> Result<()> {
        let x = t2(&[&[1.0, -2.0, f32::NEG_INFINITY], &[1.0, -2.0, 4.0]]);
        let t = Tensor::new(&[0.5f32, 0.0], &candle_core::Device::Cpu)?;
        let y = Temperature::new(t)?.apply(&x, &ctx())?;
        assert_close(
            &rows(&y),
            &[vec![2.0, -4.0, f32::NEG_INFINITY], vec![1.0, -2.0, 4.0]],
        );
        Ok(())
    }

    #[test]
    fn rejects_nan_and_knows_when_it_is_off() {
        assert!(Temperature::new(f32::NAN).is_err());
        assert!(Temperature::is_off(&1.0.into()) && Temperature::is_off(&0.0.into()));
        assert!(!Temperature::is_off(&0.7.into()));
    }
}
