//! The draw: greedy (argmax, ties to the lowest id) or multinomial by inverse CDF over the kept
//! tokens in id order, with one uniform per row from Philox4x32-10 keyed by (seed, row id,
//! step). [`Draw`] is the selector that ends a default chain.
//!
//! The plain implementation is a bisection over ids on masked f64 sums, not a cumsum (candle's
//! is O(V²)). The token is the smallest id j with `sum(probs[..=j]) > u * sum(probs)`; adding an
//! exact zero does not change a sum, so a token of probability 0 is never drawn.

use candle_core::{DType, Tensor};
use sampler_kernels::spec::{row, StageOp};

use crate::context::SamplingContext;
use crate::error::Result;
use crate::param::RowParam;
use crate::philox;
use crate::processor::Selector;
use crate::stage::Stage;
use crate::tensor_ops::{argmax_lowest, decision_dtype, log_softmax, masked_max, masked_sum};

/// The result of a draw, on the logits' device.
#[derive(Clone, Debug)]
pub struct Drawn {
    /// `[rows]` u32 token ids.
    pub tokens: Tensor,
    /// `[rows]` f32: the probability of each drawn token under the processed distribution.
    pub probs: Tensor,
    /// `[rows]` f32: its natural log, computed from the log-sum-exp (accurate for tiny
    /// probabilities).
    pub logprobs: Tensor,
}

impl Drawn {
    /// The draw of a batch without rows.
    pub(crate) fn empty(device: &candle_core::Device) -> Result<Self> {
        Ok(Self {
            tokens: Tensor::zeros(0, candle_core::DType::U32, device)?,
            probs: Tensor::zeros(0, candle_core::DType::F32, device)?,
            logprobs: Tensor::zeros(0, candle_core::DType::F32, device)?,
        })
    }
}

/// The selector of a plain draw: greedy or multinomial, per row.
#[derive(Clone, Debug)]
pub struct Draw {
    /// 1 = greedy, 0 = multinomial.
    greedy: RowParam,
}

impl Draw {
    /// Every row greedy.
    pub fn greedy() -> Self {
        Self { greedy: 1.0.into() }
    }

    /// Every row multinomial.
    pub fn multinomial() -> Self {
        Self { greedy: 0.0.into() }
    }

    /// Greedy where the temperature is <= 0.
    pub fn from_temperature(t: &RowParam) -> Result<Self> {
        Ok(Self {
            greedy: match t {
                RowParam::Scalar(v) => ((*v <= 0.0) as u8 as f32).into(),
                RowParam::PerRow(t) => t
                    .to_dtype(DType::F32)?
                    .le(0f32)?
                    .to_dtype(DType::F32)?
                    .into(),
            },
        })
    }

    /// Greedy where the `[rows]` mask (any dtype) is non-zero.
    pub fn per_row(mask: &Tensor) -> Result<Self> {
        Ok(Self {
            greedy: mask
                .to_dtype(DType::F32)?
                .ne(0f32)?
                .to_dtype(DType::F32)?
                .into(),
        })
    }

    /// The per-row greedy flag (1 = greedy).
    pub fn rule(&self) -> &RowParam {
        &self.greedy
    }
}

impl Selector for Draw {
    fn name(&self) -> &'static str {
        "draw"
    }

    fn select(&mut self, logits: &Tensor, ctx: &SamplingContext) -> Result<Drawn> {
        draw(logits, &self.greedy, ctx)
    }

    fn stage(&self) -> Option<Stage> {
        Some(Stage::new(StageOp::Draw(row::Draw {
            greedy: self.greedy.clone(),
        })))
    }
}

/// The `[rows, 1]` uniforms of this step, from (seed, row id, step) on the host (no device data
/// is read), uploaded as one small tensor.
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

/// Draws one token per row from processed logits `[rows, vocab]` (plain tensor ops); rows
/// whose `greedy` value is >= 0.5 take the argmax.
pub fn draw(logits: &Tensor, greedy: &RowParam, ctx: &SamplingContext) -> Result<Drawn> {
    let (rows, _) = logits.dims2()?;
    let dev = logits.device();
    if rows == 0 {
        return Drawn::empty(dev);
    }
    let dt = decision_dtype(dev);
    let logp = log_softmax(&logits.to_dtype(dt)?)?;
    let probs = logp.exp()?;
    let greedy_rows = greedy.column(rows, dev)?.ge(0.5f32)?.squeeze(1)?;
    let tokens = match greedy.scalar() {
        Some(g) if g >= 0.5 => argmax_lowest(logits)?,
        Some(_) => inverse_cdf(&probs, &uniforms(rows, ctx, dev)?.to_dtype(dt)?)?,
        None => {
            let sampled = inverse_cdf(&probs, &uniforms(rows, ctx, dev)?.to_dtype(dt)?)?;
            greedy_rows.where_cond(&argmax_lowest(logits)?, &sampled)?
        }
    };
    let at = tokens.unsqueeze(1)?;
    let logprobs = logp.gather(&at, 1)?.squeeze(1)?;
    Ok(Drawn {
        tokens,
        probs: logprobs.exp()?.to_dtype(DType::F32)?,
        logprobs: logprobs.to_dtype(DType::F32)?,
    })
}

/// For each row the smallest id j with `sum(probs[..=j]) > u * sum(probs)`, `[rows]` u32.
pub(crate) fn inverse_cdf(probs: &Tensor, u: &Tensor) -> Result<Tensor> {
    let (rows, vocab) = probs.dims2()?;
    let dev = probs.device();
    let dt = probs.dtype();
    let ids = Tensor::arange(0u32, vocab as u32, dev)?
        .to_dtype(dt)?
        .unsqueeze(0)?;
    let target = probs.sum_keepdim(1)?.mul(u)?;
    let last_kept = masked_max(
        &ids.broadcast_as(probs.shape())?.contiguous()?,
        &probs.gt(0f64)?,
    )?;
    let mut lo = Tensor::zeros((rows, 1), dt, dev)?;
    let mut hi = Tensor::full((vocab - 1) as f64, (rows, 1), dev)?.to_dtype(dt)?;
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
        let p = t2(&[row; 5]).to_dtype(DType::F64)?;
        let u = Tensor::new(
            &[[0f64], [0.2499], [0.25], [0.7501], [0.999_999_9]],
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
        let d = Draw::greedy().select(&x, &ctx)?;
        assert_eq!(d.tokens.to_vec1::<u32>()?, vec![1, 0]);
        let mut rule = Draw::per_row(&Tensor::new(&[1u8, 0], &Device::Cpu)?)?;
        let d = rule.select(&x, &ctx)?;
        assert_eq!(d.tokens.to_vec1::<u32>()?[0], 1);
        let p = d.probs.to_vec1::<f32>()?;
        let e3 = 3f32.exp();
        assert!((p[0] - e3 / (1.0 + 2.0 * e3)).abs() < 1e-6, "{p:?}");
        let lp = d.logprobs.to_vec1::<f32>()?;
        assert!((lp[0] - p[0].ln()).abs() < 1e-6);
        Ok(())
    }

    #[test]
    fn never_draws_a_filtered_token() -> Result<()> {
        let ninf = f32::NEG_INFINITY;
        let row: &[f32] = &[ninf, 0.0, ninf, ninf, -20.0, ninf];
        let x = t2(&[row; 64]);
        for step in 0..32 {
            let ctx = SamplingContext::new(9).with_step(step);
            let d = Draw::multinomial().select(&x, &ctx)?;
            for t in d.tokens.to_vec1::<u32>()? {
                assert!(t == 1 || t == 4, "drew filtered token {t}");
            }
        }
        Ok(())
    }
}
