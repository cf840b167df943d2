//! Classifier-free guidance (Ho & Salimans 2022; for language models Sanchez et al. 2023, the
//! HF `UnbatchedClassifierFreeGuidanceLogitsProcessor`): with the conditional logits `pos` (the
//! chain's input) and the unconditional ones `null` of the same step
//! ([`SamplingContext::with_null_logits`]), `guided = null + (pos - null) * strength`.
//! Strength 1 gives `pos` back; strength > 1 pushes away from the unconditional prediction.
//!
//! Optional rescale (Lin et al. 2024, "Common diffusion noise schedules and sample steps are
//! flawed", the `guidance_rescale` of diffusers): `rescaled = guided * std(pos) / std(guided)`
//! per row (standard deviations over the finite entries), and the output is
//! `rescale * rescaled + (1 - rescale) * guided`; 0 is off.
//!
//! The formula is applied to the values as given (the caller may pass log-softmaxed logits for
//! the HF form; the two differ by a per-row constant). A token that is -inf in either input is
//! -inf in the output. The standard deviations are f64 (N - 1).
//!
//! Parameters: `cfg_strength` (finite; 1 is off), `cfg_rescale` in [0, 1] (0 is off).

use candle_core::{DType, Tensor};
use sampler_kernels::spec::{row, StageOp};

use crate::context::SamplingContext;
use crate::error::{Result, SamplerError};
use crate::param::{range, RowParam};
use crate::processor::LogitsProcessor;
use crate::stage::Stage;
use crate::tensor_ops::{count_as, decision_dtype, finite, full_like, masked_sum};

/// Pushes the logits away from the unconditional prediction.
#[derive(Clone, Debug)]
pub struct ClassifierFreeGuidance {
    strength: RowParam,
    rescale: RowParam,
}

impl ClassifierFreeGuidance {
    /// `strength` finite (1 = off), `rescale` in [0, 1] (0 = off).
    pub fn new(strength: impl Into<RowParam>, rescale: impl Into<RowParam>) -> Result<Self> {
        let (strength, rescale) = (strength.into(), rescale.into());
        strength.check("cfg_strength", "finite", range::finite)?;
        rescale.check("cfg_rescale", "in [0, 1]", range::unit)?;
        Ok(Self { strength, rescale })
    }

    /// Whether the strength is off (1) for every row.
    pub fn is_off(strength: &RowParam) -> bool {
        strength.is_scalar_and(|v| v == 1.0)
    }
}

/// Row-wise standard deviation (N - 1) over the entries where `mask` is set, `[rows, 1]`, in
/// the decision dtype.
fn masked_std(x: &Tensor, mask: &Tensor) -> Result<Tensor> {
    let dt = decision_dtype(x.device());
    let x = x.to_dtype(dt)?;
    let n = count_as(mask, dt)?;
    let mean = (masked_sum(&x, mask)? / &n)?;
    let dev2 = x.broadcast_sub(&mean)?.sqr()?;
    Ok((masked_sum(&dev2, mask)? / (n - 1.0)?.maximum(1f64)?)?.sqrt()?)
}

impl LogitsProcessor for ClassifierFreeGuidance {
    fn name(&self) -> &'static str {
        "cfg"
    }

    fn apply(&self, logits: &Tensor, ctx: &SamplingContext) -> Result<Tensor> {
        let null = ctx.null_logits().ok_or_else(|| {
            SamplerError::MissingInput("classifier-free guidance needs the null logits (SamplingContext::with_null_logits, CLI --null-logits)".into())
        })?;
        if null.dims() != logits.dims() {
            return Err(SamplerError::Shape(format!(
                "null logits have shape {:?}, the logits {:?}",
                null.dims(),
                logits.dims()
            )));
        }
        let null = null.to_device(logits.device())?.to_dtype(DType::F32)?;
        crate::sampler::check_finite(&null, "null logits")?;
        let rows = logits.dim(0)?;
        let dev = logits.device();
        let strength = self.strength.column(rows, dev)?;
        let both = (finite(logits)? * finite(&null)?)?;
        // Zero the -inf entries before the arithmetic (-inf - -inf would be NaN), mask after.
        let pos0 = both.where_cond(logits, &full_like(logits, 0.0)?)?;
        let null0 = both.where_cond(&null, &full_like(&null, 0.0)?)?;
        let guided = (&null0 + (&pos0 - &null0)?.broadcast_mul(&strength)?)?;
        let rescale = self.rescale.column(rows, dev)?;
        let ratio =
            (masked_std(&pos0, &both)? / masked_std(&guided, &both)?)?.to_dtype(DType::F32)?;
        // A constant row has std 0: keep its guided values.
        let ratio = finite_or_one(&ratio)?;
        let rescaled = guided.broadcast_mul(&ratio)?;
        let mixed = (rescaled.broadcast_mul(&rescale)?
            + guided.broadcast_mul(&rescale.affine(-1.0, 1.0)?)?)?;
        let mixed = rescale
            .ne(0f32)?
            .broadcast_as(mixed.shape())?
            .where_cond(&mixed, &guided)?;
        Ok(both.where_cond(&mixed, &full_like(logits, f32::NEG_INFINITY)?)?)
    }

    fn stage(&self) -> Option<Stage> {
        Some(Stage::new(StageOp::Cfg(row::Cfg {
            strength: self.strength.clone(),
            rescale: self.rescale.clone(),
        })))
    }
}

/// `x` with NaN and +-inf replaced by 1.
fn finite_or_one(x: &Tensor) -> Result<Tensor> {
    Ok(x.abs()?.le(f32::MAX)?.where_cond(x, &full_like(x, 1.0)?)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{assert_close, ctx, rows, t2};

    const NINF: f32 = f32::NEG_INFINITY;

    #[test]
    fn guides_away_from_the_null_logits() -> Result<()> {
        let pos = t2(&[&[1.0, 2.0, 3.0], &[0.0, 0.0, 1.0]]);
        let null = t2(&[&[1.0, 1.0, 1.0], &[2.0, 0.0, 0.0]]);
        let c = ctx().with_null_logits(null);
        let y = ClassifierFreeGuidance::new(3.0, 0.0)?.apply(&pos, &c)?;
        // null + 3 (pos - null)
        assert_close(&rows(&y), &[vec![1.0, 4.0, 7.0], vec![-4.0, 0.0, 3.0]]);
        let same = ClassifierFreeGuidance::new(1.0, 0.0)?.apply(&pos, &c)?;
        assert_close(&rows(&same), &rows(&pos));
        Ok(())
    }

    #[test]
    fn rescale_restores_the_conditional_spread() -> Result<()> {
        // pos 0, 2, 4 (std 2); null 0, 0, 0; strength 2 -> guided 0, 4, 8 (std 4);
        // full rescale halves it back to 0, 2, 4; rescale 0.5 gives the mean of both.
        let pos = t2(&[&[0.0, 2.0, 4.0]]);
        let c = ctx().with_null_logits(t2(&[&[0.0, 0.0, 0.0]]));
        let full = ClassifierFreeGuidance::new(2.0, 1.0)?.apply(&pos, &c)?;
        assert_close(&rows(&full), &[vec![0.0, 2.0, 4.0]]);
        let half = ClassifierFreeGuidance::new(2.0, 0.5)?.apply(&pos, &c)?;
        assert_close(&rows(&half), &[vec![0.0, 3.0, 6.0]]);
        Ok(())
    }

    #[test]
    fn neg_inf_in_either_input_stays_neg_inf() -> Result<()> {
        let pos = t2(&[&[NINF, 1.0, 2.0, 0.0]]);
        let c = ctx().with_null_logits(t2(&[&[0.0, NINF, 1.0, 0.0]]));
        let y = rows(&ClassifierFreeGuidance::new(2.0, 1.0)?.apply(&pos, &c)?);
        assert_eq!((y[0][0], y[0][1]), (NINF, NINF));
        assert!(y[0][2].is_finite() && y[0][3].is_finite());
        Ok(())
    }

    #[test]
    fn per_row_strength_and_errors() -> Result<()> {
        let pos = t2(&[&[1.0, 2.0], &[1.0, 2.0]]);
        let c = ctx().with_null_logits(t2(&[&[0.0, 0.0], &[0.0, 0.0]]));
        let s = Tensor::new(&[1f32, 2.0], &candle_core::Device::Cpu)?;
        let y = ClassifierFreeGuidance::new(s, 0.0)?.apply(&pos, &c)?;
        assert_close(&rows(&y), &[vec![1.0, 2.0], vec![2.0, 4.0]]);
        // No null logits, wrong shape, NaN, bad parameters.
        let cfg = ClassifierFreeGuidance::new(2.0, 0.0)?;
        assert!(cfg.apply(&pos, &ctx()).is_err());
        assert!(cfg
            .apply(&pos, &ctx().with_null_logits(t2(&[&[0.0, 0.0]])))
            .is_err());
        let nan = ctx().with_null_logits(t2(&[&[f32::NAN, 0.0], &[0.0, 0.0]]));
        assert!(cfg.apply(&pos, &nan).is_err());
        assert!(ClassifierFreeGuidance::new(f32::NAN, 0.0).is_err());
        assert!(ClassifierFreeGuidance::new(2.0, 1.5).is_err());
        Ok(())
    }
}
