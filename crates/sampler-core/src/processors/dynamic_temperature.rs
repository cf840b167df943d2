//! Dynamic temperature, the early sigmoid form of the reference VALL-E pipeline: a row whose
//! distribution is peaked gets a temperature near `t_min`, a flat row one near `t`.
//!
//! Per row, with `p_max = 1 / sum(exp(l - max l))` (the largest probability):
//! `T = t - (t - t_min) / (1 + exp(-k (p_max - center)))`, logits /= T; k = 10, center = 0.5.
//! It applies to the rows with `|t - t_min| >= 0.001` and `t_min >= 0`; the other rows get the
//! plain temperature, so one processor serves a batch that mixes both.

use candle_core::{Tensor, D};

use crate::context::SamplingContext;
use crate::error::Result;
use crate::param::RowParam;
use crate::processor::LogitsProcessor;
use crate::processors::temperature::Temperature;

#[derive(Clone, Debug)]
pub struct DynamicTemperature {
    t: RowParam,
    t_min: RowParam,
    k: f32,
    center: f32,
}

impl DynamicTemperature {
    /// `t` and `t_min` finite; a negative `t_min` (the config's -1 default) means "equal to t".
    pub fn new(t: impl Into<RowParam>, t_min: impl Into<RowParam>) -> Result<Self> {
        let (t, t_min) = (t.into(), t_min.into());
        t.check("temperature", "finite", f32::is_finite)?;
        t_min.check("min_temperature", "finite", f32::is_finite)?;
        Ok(Self {
            t,
            t_min,
            k: 10.0,
            center: 0.5,
        })
    }

    /// Whether a scalar pair turns the dynamic form on.
    pub fn is_dynamic(t: f32, t_min: f32) -> bool {
        (t - t_min).abs() >= 0.001 && t_min >= 0.0
    }
}

impl LogitsProcessor for DynamicTemperature {
    fn name(&self) -> &'static str {
        "dynamic_temperature"
    }

    fn apply(&self, logits: &Tensor, _ctx: &SamplingContext) -> Result<Tensor> {
        let rows = logits.dim(0)?;
        let dev = logits.device();
        let t = self.t.column(rows, dev)?;
        let t_min = self.t_min.column(rows, dev)?;
        let max = logits.max_keepdim(D::Minus1)?;
        let p_max = logits
            .broadcast_sub(&max)?
            .exp()?
            .sum_keepdim(D::Minus1)?
            .recip()?;
        let sigmoid = (p_max
            .affine(-(self.k as f64), (self.k * self.center) as f64)?
            .exp()?
            + 1.0)?;
        let dynamic_t = (&t - ((&t - &t_min)? / sigmoid)?)?;
        let dynamic = ((&t - &t_min)?.abs()?.ge(0.001f32)? * t_min.ge(0f32)?)?;
        let divisor = dynamic.where_cond(&dynamic_t, &Temperature::divisor(&t)?)?;
        Ok(logits.broadcast_div(&divisor)?)
    }

    fn clone_box(&self) -> Box<dyn LogitsProcessor> {
        Box::new(self.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{assert_close, ctx, rows, t2};

    #[test]
    fn peaked_row_gets_low_temperature_flat_row_high() -> Result<()> {
        // Flat row of 4: p_max = 0.25. Peaked row: p_max = 1 / (1 + 3 e^-10).
        let x = t2(&[&[1.0, 1.0, 1.0, 1.0], &[10.0, 0.0, 0.0, 0.0]]);
        let y = DynamicTemperature::new(1.0, 0.3)?.apply(&x, &ctx())?;
        let temp = |p: f32| 1.0 - 0.7 / (1.0 + (-10.0 * (p - 0.5)).exp());
        let p_peak = 1.0 / (1.0 + 3.0 * (-10f32).exp());
        let (tf, tp) = (temp(0.25), temp(p_peak));
        assert_close(
            &rows(&y),
            &[vec![1.0 / tf; 4], vec![10.0 / tp, 0.0, 0.0, 0.0]],
        );
        assert!(tf > 0.9 && tp < 0.31);
        Ok(())
    }

    #[test]
    fn rows_without_dynamic_range_use_plain_temperature() -> Result<()> {
        let x = t2(&[&[2.0, 1.0], &[2.0, 1.0]]);
        let t_min = Tensor::new(&[-1f32, 0.5], &candle_core::Device::Cpu)?;
        let y = DynamicTemperature::new(0.5, t_min)?.apply(&x, &ctx())?;
        assert_close(&rows(&y), &[vec![4.0, 2.0], vec![4.0, 2.0]]);
        Ok(())
    }
}
