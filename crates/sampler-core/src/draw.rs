//! The draw (SPEC §5): greedy (argmax, ties to the lowest id) or multinomial by inverse CDF over
//! the kept tokens in id order, with one uniform per row from Philox4x32-10 keyed by
//! (seed, row id, step).
//!
//! The inverse CDF is a bisection over ids on masked sums, not a cumsum (candle's is O(V²)).
//! The token is the smallest id j with `sum(probs[..=j]) > u * sum(probs)`. Adding an exact zero
//! at one more position does not change a sum, so a token of probability 0 can never be the
//! smallest such j: a filtered token is never drawn.

use candle_core::{DType, Tensor, D};

use crate::context::SamplingContext;
use crate::error::{Result, SamplerError};
use crate::param::RowParam;
use crate::philox;
use crate::tensor_ops::{argmax_lowest, masked_max, masked_sum};

/// The result of a draw, on the logits' device.
#[derive(Clone, Debug)]
pub struct Drawn {
    /// `[rows]` u32 token ids.
    pub tokens: Tensor,
    /// `[rows]` f32: the probability of each drawn token under the processed distribution.
    pub probs: Tensor,
}

impl Drawn {
    /// `[rows]` f32 natural-log probabilities of the drawn tokens.
    pub fn logprobs(&self) -> Result<Tensor> {
        Ok(self.probs.log()?)
    }
}

/// Which rows are drawn greedily.
#[derive(Clone, Debug)]
pub enum DrawRule {
    Greedy,
    Multinomial,
    /// `[rows]` u8: 1 = greedy.
    PerRow(Tensor),
}

impl DrawRule {
    /// Greedy where the temperature is <= 0 (SPEC §4).
    pub fn from_temperature(t: &RowParam) -> Result<Self> {
        Ok(match t {
            RowParam::Scalar(v) if *v <= 0.0 => DrawRule::Greedy,
            RowParam::Scalar(_) => DrawRule::Multinomial,
            RowParam::PerRow(t) => DrawRule::PerRow(t.to_dtype(DType::F32)?.le(0f32)?),
        })
    }
}

/// The `[rows, 1]` uniforms of this step. They are computed on the host from (seed, row id,
/// step) — no device data is read — and uploaded as one small tensor.
pub fn uniforms(
    rows: usize,
    ctx: &SamplingContext,
    device: &candle_core::Device,
) -> Result<Tensor> {
    let ids = ctx.row_ids(rows)?;
    let u: Vec<f32> = ids
        .iter()
        .map(|&r| philox::uniform(ctx.seed(), r, ctx.step()))
        .collect();
    Ok(Tensor::from_vec(u, (rows, 1), device)?)
}

/// Draws one token per row from processed logits `[rows, vocab]`.
pub fn draw(logits: &Tensor, rule: &DrawRule, ctx: &SamplingContext) -> Result<Drawn> {
    let rows = logits.dim(0)?;
    let probs = candle_nn::ops::softmax_last_dim(logits)?;
    let tokens = match rule {
        DrawRule::Greedy => argmax_lowest(logits)?,
        DrawRule::Multinomial => inverse_cdf(&probs, &uniforms(rows, ctx, logits.device())?)?,
        DrawRule::PerRow(greedy) => {
            if greedy.dims() != [rows] {
                return Err(SamplerError::Shape(format!(
                    "per-row draw rule has shape {:?}, expected [{rows}]",
                    greedy.dims()
                )));
            }
            let sampled = inverse_cdf(&probs, &uniforms(rows, ctx, logits.device())?)?;
            greedy.where_cond(&argmax_lowest(logits)?, &sampled)?
        }
    };
    let p = probs.gather(&tokens.unsqueeze(1)?, 1)?.squeeze(1)?;
    Ok(Drawn { tokens, probs: p })
}

/// For each row the smallest id j with `sum(probs[..=j]) > u * sum(probs)`, `[rows]` u32.
pub(crate) fn inverse_cdf(probs: &Tensor, u: &Tensor) -> Result<Tensor> {
    let (rows, vocab) = probs.dims2()?;
    let dev = probs.device();
    let ids = Tensor::arange(0f32, vocab as f32, dev)?.unsqueeze(0)?;
    let target = (probs.sum_keepdim(D::Minus1)? * u)?;
    let last_kept = masked_max(&ids.broadcast_as(probs.shape())?, &probs.gt(0f32)?)?;
    let mut lo = Tensor::zeros((rows, 1), DType::F32, dev)?;
    let mut hi = Tensor::full((vocab - 1) as f32, (rows, 1), dev)?;
    let probes = usize::BITS - vocab.leading_zeros();
    for _ in 0..probes {
        let mid = ((&lo + &hi)? * 0.5)?.floor()?;
        let upto = ids.broadcast_le(&mid)?;
        let over = masked_sum(probs, &upto)?.gt(&target)?;
        hi = over.where_cond(&mid, &hi)?;
        lo = over.where_cond(&lo, &mid.affine(1.0, 1.0)?)?;
    }
    // u * total may round up to the total itself: then the last kept token is the answer.
    Ok(lo.minimum(&last_kept)?.squeeze(1)?.to_dtype(DType::U32)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::t2;
    use candle_core::Device;

    #[test]
    fn inverse_cdf_walks_ids_in_order_and_skips_zeros() -> Result<()> {
        let row: &[f32] = &[0.25, 0.0, 0.5, 0.25];
        let p = t2(&[row; 5]);
        let u = Tensor::new(
            &[[0f32], [0.2499], [0.25], [0.7501], [0.999_999_9]],
            &Device::Cpu,
        )?;
        let got = inverse_cdf(&p, &u)?.to_vec1::<u32>()?;
        assert_eq!(got, vec![0, 0, 2, 3, 3]);
        Ok(())
    }

    #[test]
    fn greedy_and_per_row_rules() -> Result<()> {
        let x = t2(&[&[0.0, 3.0, 3.0, f32::NEG_INFINITY], &[5.0, 0.0, 0.0, 0.0]]);
        let ctx = SamplingContext::new(1);
        let d = draw(&x, &DrawRule::Greedy, &ctx)?;
        assert_eq!(d.tokens.to_vec1::<u32>()?, vec![1, 0]);
        let rule = DrawRule::PerRow(Tensor::new(&[1u8, 0], &Device::Cpu)?);
        let d = draw(&x, &rule, &ctx)?;
        assert_eq!(d.tokens.to_vec1::<u32>()?[0], 1);
        let p = d.probs.to_vec1::<f32>()?;
        let e3 = 3f32.exp();
        assert!((p[0] - e3 / (1.0 + 2.0 * e3)).abs() < 1e-6, "{p:?}");
        Ok(())
    }

    #[test]
    fn never_draws_a_filtered_token() -> Result<()> {
        let ninf = f32::NEG_INFINITY;
        let row: &[f32] = &[ninf, 0.0, ninf, ninf, -20.0, ninf];
        let x = t2(&[row; 64]);
        for step in 0..32 {
            let ctx = SamplingContext::new(9).with_step(step);
            let d = draw(&x, &DrawRule::Multinomial, &ctx)?;
            for t in d.tokens.to_vec1::<u32>()? {
                assert!(t == 1 || t == 4, "drew filtered token {t}");
            }
        }
        Ok(())
    }
}
