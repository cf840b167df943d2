//! Dynamic temperature, the entropy form (llama.cpp `temp_ext`, after kalomaze's DynaTemp): a
//! confident row (low entropy) is sampled cooler, an uncertain one warmer.
//!
//! Per row with temperature `t > 0`, range `r > 0` and exponent `e`: with `n` the number of
//! finite logits, `H` the entropy (nats, f64) of the softmax and `H_max = ln n`,
//! `T = t_lo + (t_hi - t_lo) * (H / H_max)^e`, `t_lo = max(0, t - r)`, `t_hi = t + r`, and
//! logits /= T. A row with one finite logit is left alone (as in llama.cpp). `T` is at least
//! [`MIN_DYNAMIC_T`], so a fully confident row with `t_lo = 0` stays finite. Rows with
//! `r <= 0` get the plain temperature; rows with `t <= 0` (greedy) are left alone. It replaces
//! the temperature step of the chain when `dynatemp_range > 0`.
//!
//! Parameters: `temperature` (finite), `dynatemp_range` and `dynatemp_exponent` (>= 0).

use candle_core::Tensor;
use sampler_kernels::spec::{row, StageOp};
pub use sampler_kernels::MIN_DYNAMIC_T;

use crate::config::Knob;
use crate::context::SamplingContext;
use crate::error::Result;
use crate::param::{range, RowParam};
use crate::processor::LogitsProcessor;
use crate::processors::temperature::Temperature;
use crate::stage::Stage;
use crate::tensor_ops::{count_as, decision_dtype, finite, full_like, log_softmax, masked_sum};

/// The entropy form's parameters.
#[derive(Clone, Debug)]
pub struct EntropyTemperatureParams {
    /// The base temperature.
    pub t: RowParam,
    /// The range around it; 0 = plain temperature.
    pub range: RowParam,
    /// The exponent of the normalised entropy.
    pub exponent: RowParam,
}

impl Default for EntropyTemperatureParams {
    fn default() -> Self {
        Self {
            t: Knob::Temperature.default_value().into(),
            range: Knob::DynatempRange.default_value().into(),
            exponent: Knob::DynatempExponent.default_value().into(),
        }
    }
}

/// Divides each row by a temperature chosen from its normalised entropy.
#[derive(Clone, Debug)]
pub struct EntropyTemperature {
    params: EntropyTemperatureParams,
}

impl EntropyTemperature {
    /// Validates the parameters.
    pub fn new(params: EntropyTemperatureParams) -> Result<Self> {
        params.t.check("temperature", "finite", range::finite)?;
        params
            .range
            .check("dynatemp_range", ">= 0 and finite", range::non_negative)?;
        params
            .exponent
            .check("dynatemp_exponent", ">= 0 and finite", range::non_negative)?;
        Ok(Self { params })
    }

    /// The entropy form with the three parameters.
    pub fn with(
        t: impl Into<RowParam>,
        range: impl Into<RowParam>,
        exponent: impl Into<RowParam>,
    ) -> Result<Self> {
        Self::new(EntropyTemperatureParams {
            t: t.into(),
            range: range.into(),
            exponent: exponent.into(),
        })
    }

    /// Whether the range is off (<= 0) for every row.
    pub fn is_off(range: &RowParam) -> bool {
        range.is_scalar_and(|v| v <= 0.0)
    }
}

impl LogitsProcessor for EntropyTemperature {
    fn name(&self) -> &'static str {
        "entropy_temperature"
    }

    fn apply(&self, logits: &Tensor, _ctx: &SamplingContext) -> Result<Tensor> {
        let rows = logits.dim(0)?;
        let dev = logits.device();
        let dt = decision_dtype(dev);
        let p = &self.params;
        let t32 = p.t.column(rows, dev)?;
        let (t, r, e) = (
            p.t.column_as(rows, dev, dt)?,
            p.range.column_as(rows, dev, dt)?,
            p.exponent.column_as(rows, dev, dt)?,
        );
        let fin = finite(logits)?;
        let n = count_as(&fin, dt)?;
        let logp = log_softmax(&logits.to_dtype(dt)?)?;
        let plogp = fin.where_cond(&(logp.exp()? * &logp)?, &logp.zeros_like()?)?;
        let entropy = masked_sum(&plogp, &fin)?.neg()?;
        let h_max = n.maximum(2f64)?.log()?;
        let norm = (entropy / h_max)?.maximum(0f64)?;
        let t_lo = (&t - &r)?.maximum(0f64)?;
        let t_hi = (&t + &r)?;
        // norm^e with 0^0 = 1 and 0^e = 0, as powf.
        let zero = norm.eq(0f64)?;
        let safe = zero.where_cond(&norm.ones_like()?, &norm)?;
        let pow = (safe.log()? * &e)?.exp()?;
        let pow = zero.where_cond(&e.eq(0f64)?.to_dtype(pow.dtype())?, &pow)?;
        let dynamic_t = (&t_lo + ((&t_hi - &t_lo)? * pow)?)?
            .to_dtype(t32.dtype())?
            .maximum(MIN_DYNAMIC_T)?;
        let dynamic = (t.gt(0f64)? * r.gt(0f64)?)?;
        let divisor = dynamic.where_cond(&dynamic_t, &Temperature::divisor(&t32)?)?;
        let single = (n.le(1f64)? * dynamic)?;
        let divisor = single.where_cond(&full_like(&divisor, 1.0)?, &divisor)?;
        Ok(logits.broadcast_div(&divisor)?)
    }

    fn stage(&self) -> Option<Stage> {
        Some(Stage::new(StageOp::EntropyTemperature(
            row::EntropyTemperature {
                t: self.params.t.clone(),
                range: self.params.range.clone(),
                exponent: self.params.exponent.clone(),
            },
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{assert_close, ctx, rows, t2};

    #[test]
    fn flat_row_gets_the_top_of_the_range() -> Result<()> {
        // Uniform over 4: H = H_max, T = t + r = 1.5 whatever the exponent.
        let x = t2(&[&[3.0, 3.0, 3.0, 3.0]]);
        let y = EntropyTemperature::with(1.0, 0.5, 2.0)?.apply(&x, &ctx())?;
        assert_close(&rows(&y), &[vec![2.0; 4]]);
        Ok(())
    }

    #[test]
    fn peaked_row_follows_the_normalised_entropy() -> Result<()> {
        // logits ln{0.7, 0.1, 0.1, 0.1}: H = 0.940448 nats, H / ln 4 = 0.678390; t = 0.8,
        // r = 0.5, e = 2: T = 0.3 + 1.0 * 0.678390^2 = 0.760213.
        let l: Vec<f32> = [0.7f32, 0.1, 0.1, 0.1].iter().map(|p| p.ln()).collect();
        let y = EntropyTemperature::with(0.8, 0.5, 2.0)?.apply(&t2(&[&l]), &ctx())?;
        let want: Vec<f32> = l.iter().map(|v| v / 0.760_213).collect();
        assert_close(&rows(&y), &[want]);
        // t = 0.3, r = 0.5: t_lo clamps to 0, t_hi = 0.8, e = 1: T = 0.8 * 0.678390.
        let y = EntropyTemperature::with(0.3, 0.5, 1.0)?.apply(&t2(&[&l]), &ctx())?;
        let want: Vec<f32> = l.iter().map(|v| v / 0.542_712).collect();
        assert_close(&rows(&y), &[want]);
        Ok(())
    }

    #[test]
    fn plain_rows_single_logit_rows_and_confident_rows() -> Result<()> {
        let ninf = f32::NEG_INFINITY;
        let x = t2(&[&[2.0, 1.0, 0.0], &[2.0, ninf, ninf]]);
        let r = Tensor::new(&[0f32, 0.5], &candle_core::Device::Cpu)?;
        let y = EntropyTemperature::with(0.5, r, 1.0)?.apply(&x, &ctx())?;
        assert_close(&rows(&y), &[vec![4.0, 2.0, 0.0], vec![2.0, ninf, ninf]]);
        // One token holds all the mass in f64: H ~ 0, T = max(0, t - r) = 0 -> MIN_DYNAMIC_T.
        let x = t2(&[&[0.0, -800.0, -800.0]]);
        let y = rows(&EntropyTemperature::with(0.5, 0.5, 1.0)?.apply(&x, &ctx())?);
        assert!(y[0].iter().all(|v| v.is_finite() || *v == ninf), "{y:?}");
        assert_eq!(y[0][0], 0.0);
        assert!(EntropyTemperature::with(1.0, -0.1, 1.0).is_err());
        assert!(EntropyTemperature::with(1.0, 0.1, -1.0).is_err());
        Ok(())
    }
}
