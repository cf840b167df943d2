//! Dynamic temperature, the early sigmoid form of the reference VALL-E pipeline: a peaked row
//! gets a temperature near `t_min`, a flat row one near `t`.
//!
//! Per row, with `p_max = 1 / sum(exp(l - max l))` (the largest probability, f64):
//! `T = t - (t - t_min) / (1 + exp(-10 (p_max - 0.5)))`, logits /= T. It applies to the rows
//! with `|t - t_min| >= 0.001` and `t_min >= 0`; the other rows get the plain temperature, so
//! one processor serves a batch that mixes both.
//!
//! Parameters: `temperature` and `min_temperature` (finite; a negative `min_temperature`, the
//! default -1, means "equal to temperature": off).

use candle_core::{Tensor, D};
use sampler_kernels::spec::{row, StageOp};

use crate::config::Knob;
use crate::context::SamplingContext;
use crate::error::Result;
use crate::param::{range, RowParam};
use crate::processor::LogitsProcessor;
use crate::processors::temperature::Temperature;
use crate::stage::Stage;
use crate::tensor_ops::decision_dtype;

/// The sigmoid form's parameters.
#[derive(Clone, Debug)]
pub struct DynamicTemperatureParams {
    /// The temperature of a flat row.
    pub t: RowParam,
    /// The temperature of a fully peaked row; negative = off.
    pub t_min: RowParam,
}

impl Default for DynamicTemperatureParams {
    fn default() -> Self {
        Self {
            t: Knob::Temperature.default_value().into(),
            t_min: Knob::MinTemperature.default_value().into(),
        }
    }
}

/// Divides each row by a temperature chosen from its largest probability.
#[derive(Clone, Debug)]
pub struct DynamicTemperature {
    params: DynamicTemperatureParams,
}

impl DynamicTemperature {
    /// Validates the parameters.
    pub fn new(params: DynamicTemperatureParams) -> Result<Self> {
        params.t.check("temperature", "finite", range::finite)?;
        params
            .t_min
            .check("min_temperature", "finite", range::finite)?;
        Ok(Self { params })
    }

    /// The sigmoid form from `t` to `t_min`.
    pub fn with(t: impl Into<RowParam>, t_min: impl Into<RowParam>) -> Result<Self> {
        Self::new(DynamicTemperatureParams {
            t: t.into(),
            t_min: t_min.into(),
        })
    }

    /// Whether a scalar pair turns the dynamic form on.
    pub fn is_dynamic(t: f32, t_min: f32) -> bool {
        sampler_kernels::sigmoid_is_dynamic(t, t_min)
    }

    /// Whether the dynamic form is off for every row (both scalars, not dynamic).
    pub fn is_off(t: &RowParam, t_min: &RowParam) -> bool {
        match (t.scalar(), t_min.scalar()) {
            (Some(t), Some(m)) => !Self::is_dynamic(t, m),
            // A negative minimum means "the temperature itself", whatever each row's is.
            (None, Some(m)) => m < 0.0,
            _ => false,
        }
    }
}

impl LogitsProcessor for DynamicTemperature {
    fn name(&self) -> &'static str {
        "dynamic_temperature"
    }

    fn apply(&self, logits: &Tensor, _ctx: &SamplingContext) -> Result<Tensor> {
        let rows = logits.dim(0)?;
        let dev = logits.device();
        let dt = decision_dtype(dev);
        let t32 = self.params.t.column(rows, dev)?;
        let tmin32 = self.params.t_min.column(rows, dev)?;
        let (t, t_min) = (t32.to_dtype(dt)?, tmin32.to_dtype(dt)?);
        let x = logits.to_dtype(dt)?;
        let max = x.max_keepdim(D::Minus1)?;
        let p_max = x
            .broadcast_sub(&max)?
            .exp()?
            .sum_keepdim(D::Minus1)?
            .recip()?;
        let sigmoid = (p_max.affine(-10.0, 5.0)?.exp()? + 1.0)?;
        let dynamic_t = (&t - ((&t - &t_min)? / sigmoid)?)?.to_dtype(t32.dtype())?;
        let dynamic = ((&t32 - &tmin32)?.abs()?.ge(0.001f32)? * tmin32.ge(0f32)?)?;
        let divisor = dynamic.where_cond(&dynamic_t, &Temperature::divisor(&t32)?)?;
        Ok(logits.broadcast_div(&divisor)?)
    }

    fn stage(&self) -> Option<Stage> {
        Some(Stage::new(StageOp::SigmoidTemperature(
            row::SigmoidTemperature {
                t: self.params.t.clone(),
                t_min: self.params.t_min.clone(),
            },
        )))
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
        let y = DynamicTemperature::with(1.0, 0.3)?.apply(&x, &ctx())?;
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
        let y = DynamicTemperature::with(0.5, t_min)?.apply(&x, &ctx())?;
        assert_close(&rows(&y), &[vec![4.0, 2.0], vec![4.0, 2.0]]);
        Ok(())
    }
}
