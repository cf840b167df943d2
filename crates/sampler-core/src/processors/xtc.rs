//! XTC, "exclude top choices" (p-e-w, text-generation-webui; llama.cpp `xtc`): with chance
//! `probability` per row and step, when at least two tokens have probability >= `threshold`,
//! remove all of them except the least probable one, so the row continues with a plausible but
//! less obvious token. A threshold above 0.5 can never be met by two tokens: the row is left
//! alone. Among tokens tied at the least probability the one with the highest id stays (it is the
//! last in the chain's order: logit descending, ties by lower id first).
//!
//! The coin: a Philox4x32-10 uniform keyed like the draw's (seed, row id, step) on counter lane 1
//! ([`crate::philox::uniform_lane`]), so the draw's own stream (lane 0) is unchanged; XTC acts
//! when `u < probability`. Probabilities are f64.
//!
//! Parameters: `xtc_probability` in [0, 1] (default 0, off), `xtc_threshold` in [0, 1]
//! (default 0.1).

use candle_core::Tensor;
use sampler_kernels::spec::{row, StageOp};
pub use sampler_kernels::XTC_LANE;

use crate::context::SamplingContext;
use crate::error::Result;
use crate::param::{range, RowParam};
use crate::philox;
use crate::processor::LogitsProcessor;
use crate::stage::Stage;
use crate::tensor_ops::{count, decision_dtype, keep_only, masked_max, masked_min, softmax};

/// Removes the most probable tokens, now and then.
#[derive(Clone, Debug)]
pub struct Xtc {
    probability: RowParam,
    threshold: RowParam,
}

impl Xtc {
    /// `probability` and `threshold` in [0, 1].
    pub fn new(probability: impl Into<RowParam>, threshold: impl Into<RowParam>) -> Result<Self> {
        let (probability, threshold) = (probability.into(), threshold.into());
        probability.check("xtc_probability", "in [0, 1]", range::unit)?;
        threshold.check("xtc_threshold", "in [0, 1]", range::unit)?;
        Ok(Self {
            probability,
            threshold,
        })
    }

    /// Whether the probability is off (0) for every row.
    pub fn is_off(probability: &RowParam) -> bool {
        probability.is_scalar_and(|v| v <= 0.0)
    }

    /// The `[rows, 1]` coins of this step (computed on the host from the keys, uploaded once).
    fn coins(rows: usize, ctx: &SamplingContext, device: &candle_core::Device) -> Result<Tensor> {
        let ids = ctx.row_ids(rows)?;
        let u: Vec<f32> = ids
            .iter()
            .map(|&r| philox::uniform_lane(ctx.seed(), r, ctx.step(), XTC_LANE))
            .collect();
        Ok(Tensor::from_vec(u, (rows, 1), device)?)
    }
}

impl LogitsProcessor for Xtc {
    fn name(&self) -> &'static str {
        "xtc"
    }

    fn apply(&self, logits: &Tensor, ctx: &SamplingContext) -> Result<Tensor> {
        let (rows, vocab) = logits.dims2()?;
        let dev = logits.device();
        let dt = decision_dtype(dev);
        let threshold = self.threshold.column_as(rows, dev, dt)?;
        let acts = Self::coins(rows, ctx, dev)?.lt(&self.probability.column(rows, dev)?)?;
        let probs = softmax(&logits.to_dtype(dt)?)?;
        let top = probs.broadcast_ge(&threshold)?;
        let acts = (acts * count(&top)?.ge(2f32)?)?;
        // The survivor: the least probable of the top tokens, the highest id among ties.
        let least = masked_min(logits, &top)?;
        let at_least = (logits.broadcast_eq(&least)? * &top)?;
        let ids = Tensor::arange(0f32, vocab as f32, dev)?
            .unsqueeze(0)?
            .broadcast_as((rows, vocab))?;
        let survivor = ids.broadcast_eq(&masked_max(&ids.contiguous()?, &at_least)?)?;
        let removed = (top * survivor.eq(0u8)?)?.broadcast_mul(&acts)?;
        keep_only(logits, &removed.eq(0u8)?)
    }

    fn stage(&self) -> Option<Stage> {
        Some(Stage::new(StageOp::Xtc(row::Xtc {
            probability: self.probability.clone(),
            threshold: self.threshold.clone(),
        })))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{ctx, rows, t2};

    fn logits_of(p: &[f32]) -> Tensor {
        let l: Vec<f32> = p.iter().map(|v| v.ln()).collect();
        t2(&[&l])
    }

    fn probs(y: &Tensor) -> Vec<f32> {
        rows(&crate::tensor_ops::softmax(y).unwrap())[0].clone()
    }

    fn assert_probs(y: &Tensor, want: &[f32]) {
        let p = probs(y);
        for (g, w) in p.iter().zip(want) {
            assert!((g - w).abs() < 1e-5, "got {p:?}, want {want:?}");
        }
    }

    #[test]
    fn published_llama_cpp_cases() -> Result<()> {
        // {0.4, 0.3, 0.2, 0.1}: threshold 0.09 leaves {0.1}, 0.19 leaves {0.2, 0.1} renormalised,
        // 0.29 leaves {0.3, 0.2, 0.1}, and 0.39 (only one token above) changes nothing.
        let x = logits_of(&[0.4, 0.3, 0.2, 0.1]);
        let run = |t: f32| Xtc::new(1.0, t).unwrap().apply(&x, &ctx()).unwrap();
        assert_probs(&run(0.09), &[0.0, 0.0, 0.0, 1.0]);
        assert_probs(&run(0.19), &[0.0, 0.0, 2.0 / 3.0, 1.0 / 3.0]);
        assert_probs(&run(0.29), &[0.0, 0.5, 1.0 / 3.0, 1.0 / 6.0]);
        assert_eq!(rows(&run(0.39)), rows(&x));
        // A threshold above 0.5 never acts.
        assert_eq!(rows(&Xtc::new(1.0, 0.6)?.apply(&x, &ctx())?), rows(&x));
        Ok(())
    }

    #[test]
    fn ties_at_the_least_probability_keep_the_highest_id() -> Result<()> {
        let x = logits_of(&[0.3, 0.3, 0.3, 0.1]);
        let y = Xtc::new(1.0, 0.2)?.apply(&x, &ctx())?;
        let k: Vec<bool> = rows(&y)[0].iter().map(|v| v.is_finite()).collect();
        assert_eq!(k, vec![false, false, true, true]);
        Ok(())
    }

    #[test]
    fn coin_uses_its_own_lane_and_probability() -> Result<()> {
        let row: &[f32] = &[0.4f32.ln(), 0.3f32.ln(), 0.2f32.ln(), 0.1f32.ln()];
        let x = t2(&[row; 256]);
        let xtc = Xtc::new(0.5, 0.09)?;
        let c = SamplingContext::new(77).with_step(3);
        let y = rows(&xtc.apply(&x, &c)?);
        let mut acted = 0;
        for (r, yr) in y.iter().enumerate() {
            let u = philox::uniform_lane(77, r as u32, 3, XTC_LANE);
            let did = yr[0] == f32::NEG_INFINITY;
            assert_eq!(did, u < 0.5, "row {r}");
            acted += did as usize;
        }
        // 256 fair coins: 128 expected, 4.5 sigma is about 36.
        assert!((92..=164).contains(&acted), "{acted} of 256 rows");
        assert_eq!(rows(&Xtc::new(0.0, 0.09)?.apply(&x, &c)?), rows(&x));
        Ok(())
    }
}
