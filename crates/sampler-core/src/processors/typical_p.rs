//! Locally typical sampling (Meister et al. 2022; the HF `TypicalLogitsWarper`): with `H` the
//! entropy (nats) of the row and `s = |-ln p - H|` the distance of each token's surprise from
//! it, order the tokens by `s` ascending and keep the shortest prefix whose mass reaches `p`
//! (ties in `s` at the cut kept). The most typical token is always kept. Entropy, scores and
//! masses are f64, so two scores that differ by far less than f32's rounding still order
//! correctly.
//!
//! Parameter: `typical_p` in [0, 1] (default 1). Off when >= 1.
//!
//! The plain form finds the cut (the smallest `s` with `mass(s' <= s) >= p`) by bisection over
//! the row's own scores.

use candle_core::Tensor;
use sampler_kernels::spec::{row, StageOp};

use crate::context::SamplingContext;
use crate::error::Result;
use crate::param::{range, RowParam};
use crate::processor::LogitsProcessor;
use crate::stage::Stage;
use crate::tensor_ops::{
    decision_dtype, finite, keep_only, log_softmax, masked_max, masked_min, masked_sum,
    VALUE_PROBES,
};

/// Keeps the tokens whose surprise is closest to the row's entropy.
#[derive(Clone, Debug)]
pub struct TypicalP {
    p: RowParam,
}

impl TypicalP {
    /// `p` in [0, 1]; 1 is off.
    pub fn new(p: impl Into<RowParam>) -> Result<Self> {
        let p = p.into();
        p.check("typical_p", "in [0, 1]", range::unit)?;
        Ok(Self { p })
    }

    /// Whether `p` is off (>= 1) for every row.
    pub fn is_off(p: &RowParam) -> bool {
        p.is_scalar_and(|v| v >= 1.0)
    }
}

impl LogitsProcessor for TypicalP {
    fn name(&self) -> &'static str {
        "typical_p"
    }

    fn apply(&self, logits: &Tensor, _ctx: &SamplingContext) -> Result<Tensor> {
        let dev = logits.device();
        let dt = decision_dtype(dev);
        let p = self.p.column_as(logits.dim(0)?, dev, dt)?;
        let fin = finite(logits)?;
        let logp = log_softmax(&logits.to_dtype(dt)?)?;
        let probs = logp.exp()?;
        let zero = logp.zeros_like()?;
        let entropy = masked_sum(&fin.where_cond(&(&probs * &logp)?, &zero)?, &fin)?.neg()?;
        let s = fin.where_cond(&logp.neg()?.broadcast_sub(&entropy)?.abs()?, &zero)?;
        // Rounding may leave the total a hair below p: never ask for more than there is.
        let p_eff = p.minimum(&masked_sum(&probs, &fin)?)?;
        let mut lo = masked_min(&s, &fin)?;
        let mut hi = masked_max(&s, &fin)?;
        for _ in 0..VALUE_PROBES + 16 {
            let mid = ((&lo * 0.5)? + (&hi * 0.5)?)?;
            let le = (s.broadcast_le(&mid)? * &fin)?;
            let enough = masked_sum(&probs, &le)?.ge(&p_eff)?;
            // Enough mass at or below mid: v <= mid, so v <= the largest score at or below mid.
            // Else v > mid, so v >= the smallest score above mid.
            hi = enough.where_cond(&masked_max(&s, &le)?, &hi)?;
            lo = enough.where_cond(&lo, &masked_min(&s, &(le.eq(0u8)? * &fin)?)?)?;
        }
        let lo_ok = masked_sum(&probs, &(s.broadcast_le(&lo)? * &fin)?)?.ge(&p_eff)?;
        let v = lo_ok.where_cond(&lo, &hi)?;
        let keep = (s.broadcast_le(&v)? * &fin)?;
        let off = p.ge(1f64)?.broadcast_as(keep.shape())?;
        keep_only(logits, &(keep + off)?.gt(0u8)?)
    }

    fn stage(&self) -> Option<Stage> {
        Some(Stage::new(StageOp::TypicalP(row::TypicalP {
            p: self.p.clone(),
        })))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{ctx, rows, t2};

    fn logits_of(rows_p: &[&[f32]]) -> Tensor {
        let l: Vec<Vec<f32>> = rows_p
            .iter()
            .map(|r| r.iter().map(|p| p.ln()).collect())
            .collect();
        let refs: Vec<&[f32]> = l.iter().map(|r| r.as_slice()).collect();
        t2(&refs)
    }

    fn kept(y: &Tensor) -> Vec<Vec<bool>> {
        rows(y)
            .iter()
            .map(|r| r.iter().map(|v| v.is_finite()).collect())
            .collect()
    }

    #[test]
    fn published_cases_of_hf_and_llama_cpp() -> Result<()> {
        // p = 0.5 keeps {0.97} of {0.97, 0.01 x3} and the three 0.2s of {0.4, 0.2 x3}.
        let x = logits_of(&[&[0.97, 0.01, 0.01, 0.01], &[0.4, 0.2, 0.2, 0.2]]);
        let y = TypicalP::new(0.5)?.apply(&x, &ctx())?;
        assert_eq!(
            kept(&y),
            vec![
                vec![true, false, false, false],
                vec![false, true, true, true]
            ]
        );
        assert_eq!(rows(&y)[1][1], 0.2f32.ln());
        Ok(())
    }

    #[test]
    fn ramp_keeps_the_two_most_typical() -> Result<()> {
        // HF's ramp case (logits -5..4, mass 0.7): the two highest tokens reach 0.86 >= 0.7.
        let ramp: Vec<f32> = (0..10).map(|i| i as f32 - 5.0).collect();
        let y = TypicalP::new(0.7)?.apply(&t2(&[&ramp]), &ctx())?;
        assert_eq!(kept(&y)[0], [vec![false; 8], vec![true; 2]].concat());
        Ok(())
    }

    #[test]
    fn off_at_one_and_neg_inf_stays() -> Result<()> {
        let x = t2(&[&[0.0, f32::NEG_INFINITY, -1.0, -2.0]]);
        assert_eq!(rows(&TypicalP::new(1.0)?.apply(&x, &ctx())?), rows(&x));
        let y = TypicalP::new(0.0)?.apply(&x, &ctx())?;
        assert_eq!(kept(&y)[0].iter().filter(|k| **k).count(), 1);
        assert_eq!(rows(&y)[0][1], f32::NEG_INFINITY);
        assert!(TypicalP::new(1.5).is_err());
        Ok(())
    }
}
