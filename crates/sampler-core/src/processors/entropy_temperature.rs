//! Dynamic temperature, the entropy form (llama.cpp `temp_ext`, after the DynaTemp proposal of
//! kalomaze): a confident row (low entropy) is sampled cooler, an uncertain one warmer.
//!
//! Per row with temperature `t > 0`, range `r > 0` and exponent `e`: with `n` the number of
//! finite logits, `H` the entropy (nats) of the softmax and `H_max = ln n`,
//! `T = t_lo + (t_hi - t_lo) * (H / H_max)^e`, `t_lo = max(0, t - r)`, `t_hi = t + r`, and
//! logits /= T. A row with one finite logit is left alone (as in llama.cpp). `T` is kept at
//! least [`MIN_DYNAMIC_T`] so a fully confident row with `t_lo = 0` divides by a tiny number
//! instead of zero. Rows with `r <= 0` get the plain temperature; rows with `t <= 0` (greedy)
//! are left alone. It replaces the temperature step of the chain when `dynatemp_range > 0`.

use candle_core::Tensor;

use crate::context::SamplingContext;
use crate::error::Result;
use crate::param::RowParam;
use crate::processor::LogitsProcessor;
use crate::processors::temperature::Temperature;
use crate::processors::typical_p::log_softmax;
use crate::tensor_ops::{count, finite, full_like, masked_sum};

/// The smallest dynamic temperature (instead of 0).
pub const MIN_DYNAMIC_T: f32 = 1e-6;

#[derive(Clone, Debug)]
pub struct EntropyTemperature {
    t: RowParam,
    range: RowParam,
    exponent: RowParam,
}

impl EntropyTemperature {
    /// `t` finite, `range` >= 0, `exponent` >= 0.
    pub fn new(
        t: impl Into<RowParam>,
        range: impl Into<RowParam>,
        exponent: impl Into<RowParam>,
    ) -> Result<Self> {
        let (t, range, exponent) = (t.into(), range.into(), exponent.into());
        t.check("temperature", "finite", f32::is_finite)?;
        range.check("dynatemp_range", ">= 0 and finite", |v| {
            v >= 0.0 && v.is_finite()
        })?;
        exponent.check("dynatemp_exponent", ">= 0 and finite", |v| {
            v >= 0.0 && v.is_finite()
        })?;
        Ok(Self { t, range, exponent })
    }
}

impl LogitsProcessor for EntropyTemperature {
    fn name(&self) -> &'static str {
        "entropy_temperature"
    }

    fn apply(&self, logits: &Tensor, _ctx: &SamplingContext) -> Result<Tensor> {
        let rows = logits.dim(0)?;
        let dev = logits.device();
        let t = self.t.column(rows, dev)?;
        let r = self.range.column(rows, dev)?;
        let e = self.exponent.column(rows, dev)?;
        let fin = finite(logits)?;
        let n = count(&fin)?;
        let logp = log_softmax(logits)?;
        let entropy = masked_sum(&(logp.exp()? * &logp)?, &fin)?.neg()?;
        let h_max = n.maximum(2f32)?.log()?;
        // 0^0 = 1 as in C's powf: a tiny floor keeps ln finite without changing other powers.
        let norm = (entropy / h_max)?.maximum(1e-30f32)?;
        let t_lo = (&t - &r)?.maximum(0f32)?;
        let t_hi = (&t + &r)?;
        let dynamic_t =
            (&t_lo + ((&t_hi - &t_lo)? * (norm.log()? * &e)?.exp()?)?)?.maximum(MIN_DYNAMIC_T)?;
        let dynamic = (t.gt(0f32)? * r.gt(0f32)?)?;
        let divisor = dynamic.where_cond(&dynamic_t, &Temperature::divisor(&t)?)?;
        let single = (n.le(1f32)? * dynamic)?;
        let divisor = single.where_cond(&full_like(&divisor, 1.0)?, &divisor)?;
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
    fn flat_row_gets_the_top_of_the_range() -> Result<()> {
        // Uniform over 4: H = H_max, T = t + r = 1.5 whatever the exponent.
        let x = t2(&[&[3.0, 3.0, 3.0, 3.0]]);
        let y = EntropyTemperature::new(1.0, 0.5, 2.0)?.apply(&x, &ctx())?;
        assert_close(&rows(&y), &[vec![2.0; 4]]);
        Ok(())
    }

    #[test]
    fn peaked_row_follows_the_normalised_entropy() -> Result<()> {
        // logits ln{0.7, 0.1, 0.1, 0.1}: H = -(0.7 ln 0.7 + 0.3 ln 0.1) = 0.940448 nats,
        // H / ln 4 = 0.678390; t = 0.8, r = 0.5, e = 2: T = 0.3 + 1.0 * 0.678390^2 = 0.760213.
        let l: Vec<f32> = [0.7f32, 0.1, 0.1, 0.1].iter().map(|p| p.ln()).collect();
        let y = EntropyTemperature::new(0.8, 0.5, 2.0)?.apply(&t2(&[&l]), &ctx())?;
        let want: Vec<f32> = l.iter().map(|v| v / 0.760_213).collect();
        assert_close(&rows(&y), &[want]);
        // t = 0.3, r = 0.5: t_lo clamps to 0, t_hi = 0.8, e = 1: T = 0.8 * 0.678390 = 0.542712.
        let y = EntropyTemperature::new(0.3, 0.5, 1.0)?.apply(&t2(&[&l]), &ctx())?;
        let want: Vec<f32> = l.iter().map(|v| v / 0.542_712).collect();
        assert_close(&rows(&y), &[want]);
        Ok(())
    }

    #[test]
    fn published_llama_cpp_cases_and_plain_rows() -> Result<()> {
        // llama.cpp: temp_ext(t = 1, delta = 0) leaves {0.1, 0.2, 0.3, 0.4} as they are; t = 0
        // is greedy (the logits are left for the greedy draw).
        let l: Vec<f32> = [0.1f32, 0.2, 0.3, 0.4].iter().map(|p| p.ln()).collect();
        let x = t2(&[&l, &l]);
        let t = Tensor::new(&[1f32, 0.0], &candle_core::Device::Cpu)?;
        let y = EntropyTemperature::new(t, 0.0, 1.0)?.apply(&x, &ctx())?;
        assert_close(&rows(&y), &rows(&x));
        // A row without range gets the plain temperature; a row with one finite logit is left.
        let ninf = f32::NEG_INFINITY;
        let x = t2(&[&[2.0, 1.0, 0.0], &[2.0, ninf, ninf]]);
        let r = Tensor::new(&[0f32, 0.5], &candle_core::Device::Cpu)?;
        let y = EntropyTemperature::new(0.5, r, 1.0)?.apply(&x, &ctx())?;
        assert_close(&rows(&y), &[vec![4.0, 2.0, 0.0], vec![2.0, ninf, ninf]]);
        Ok(())
    }

    #[test]
    fn confident_row_with_zero_floor_stays_finite() -> Result<()> {
        // One token holds all the mass in f32: H = 0, T = max(0, t - r) = 0 -> MIN_DYNAMIC_T.
        let x = t2(&[&[0.0, -200.0, -200.0]]);
        let y = rows(&EntropyTemperature::new(0.5, 0.5, 1.0)?.apply(&x, &ctx())?);
        assert!(y[0].iter().all(|v| v.is_finite()), "{y:?}");
        assert_eq!(y[0][0], 0.0);
        assert!(EntropyTemperature::new(1.0, -0.1, 1.0).is_err());
        assert!(EntropyTemperature::new(1.0, 0.1, -1.0).is_err());
        Ok(())
    }
}
