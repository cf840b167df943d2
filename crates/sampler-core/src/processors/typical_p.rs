//! Locally typical sampling (Meister et al. 2022, "Locally typical sampling"; the HF
//! `TypicalLogitsWarper`): with `H` the entropy (nats) of the row and `s = |-ln p - H|` the
//! distance of each token's surprise from it, order the tokens by `s` ascending and keep the
//! shortest prefix whose mass reaches `p` (ties in `s` at the cut are kept). p >= 1 is off; the
//! most typical token is always kept.
//!
//! Without a sort: the cut value `v` (the smallest `s` with `mass(s <= v) >= p`) is found by a
//! bisection over the row's own `s` values, as top-p does (see `tensor_ops`).

use candle_core::{Tensor, D};

use crate::context::SamplingContext;
use crate::error::Result;
use crate::param::RowParam;
use crate::processor::LogitsProcessor;
use crate::tensor_ops::{finite, keep_only, masked_max, masked_min, masked_sum, VALUE_PROBES};

#[derive(Clone, Debug)]
pub struct TypicalP {
    p: RowParam,
}

impl TypicalP {
    /// `p` in [0, 1]; 1 is off.
    pub fn new(p: impl Into<RowParam>) -> Result<Self> {
        let p = p.into();
        p.check("typical_p", "in [0, 1]", |v| (0.0..=1.0).contains(&v))?;
        Ok(Self { p })
    }
}

/// Row-wise log-softmax (-inf stays -inf).
pub(crate) fn log_softmax(x: &Tensor) -> Result<Tensor> {
    let shifted = x.broadcast_sub(&x.max_keepdim(D::Minus1)?)?;
    Ok(shifted.broadcast_sub(&shifted.exp()?.sum_keepdim(D::Minus1)?.log()?)?)
}

impl LogitsProcessor for TypicalP {
    fn name(&self) -> &'static str {
        "typical_p"
    }

    fn apply(&self, logits: &Tensor, _ctx: &SamplingContext) -> Result<Tensor> {
        let p = self.p.column(logits.dim(0)?, logits.device())?;
        let fin = finite(logits)?;
        let logp = log_softmax(logits)?;
        let probs = logp.exp()?;
        let entropy = masked_sum(&(&probs * &logp)?, &fin)?.neg()?;
        let s = logp.neg()?.broadcast_sub(&entropy)?.abs()?;
        // Rounding may leave the total a hair below p: never ask for more than there is.
        let p_eff = p.minimum(&masked_sum(&probs, &fin)?)?;
        let mut lo = masked_min(&s, &fin)?;
        let mut hi = masked_max(&s, &fin)?;
        for _ in 0..VALUE_PROBES {
            let mid = ((&lo * 0.5)? + (&hi * 0.5)?)?;
            let le = s.broadcast_le(&mid)?;
            let enough = masked_sum(&probs, &le)?.ge(&p_eff)?;
            // Enough mass at or below mid: v <= mid, so v <= the largest value at or below mid.
            // Else v > mid, so v >= the smallest finite value above mid.
            hi = enough.where_cond(&masked_max(&s, &le)?, &hi)?;
            lo = enough.where_cond(&lo, &masked_min(&s, &(le.eq(0u8)? * &fin)?)?)?;
        }
        let lo_ok = masked_sum(&probs, &s.broadcast_le(&lo)?)?.ge(&p_eff)?;
        let v = lo_ok.where_cond(&lo, &hi)?;
        let keep = (s.broadcast_le(&v)? * &fin)?;
        let off = p.ge(1f32)?.broadcast_as(keep.shape())?;
        keep_only(logits, &(keep + off)?.gt(0u8)?)
    }

    fn clone_box(&self) -> Box<dyn LogitsProcessor> {
        Box::new(self.clone())
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
        // Both suites: p = 0.5 keeps {0.97} of {0.97, 0.01 x3} and the three 0.2s of
        // {0.4, 0.2 x3} (their surprise is closer to the entropy than the 0.4's).
        let x = logits_of(&[&[0.97, 0.01, 0.01, 0.01], &[0.4, 0.2, 0.2, 0.2]]);
        let y = TypicalP::new(0.5)?.apply(&x, &ctx())?;
        assert_eq!(
            kept(&y),
            vec![
                vec![true, false, false, false],
                vec![false, true, true, true]
            ]
        );
        // Kept values are unchanged.
        assert_eq!(rows(&y)[1][1], 0.2f32.ln());
        Ok(())
    }

    #[test]
    fn ramp_keeps_the_two_most_typical() -> Result<()> {
        // HF's ramp case (logits -5..4, mass 0.7): the two highest tokens (surprises 1.46 and
        // 0.46 nats around an entropy of 1.04, s = 0.42 and 0.58) reach 0.86 >= 0.7.
        let ramp: Vec<f32> = (0..10).map(|i| i as f32 - 5.0).collect();
        let y = TypicalP::new(0.7)?.apply(&t2(&[&ramp]), &ctx())?;
        let k = kept(&y)[0].clone();
        assert_eq!(k, [vec![false; 8], vec![true; 2]].concat());
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
