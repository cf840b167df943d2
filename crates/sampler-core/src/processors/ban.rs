//! Token bans and logit bias.
//!
//! `BanTokens` sets the listed ids to -inf (the NAR stage bans the stop token this way);
//! `LogitBias` adds a fixed bias per token (the OpenAI / HF `logit_bias`; -inf stays -inf).
//! Ids must be below the vocabulary size, which is checked when the logits arrive.
//!
//! Parameters: `ban_tokens` (ids), `logit_bias` (`{"id": finite bias}`). Off when empty.

use std::sync::Arc;

use candle_core::Tensor;
use sampler_kernels::spec::StageOp;

use crate::context::SamplingContext;
use crate::error::{invalid, Result};
use crate::param::RowParam;
use crate::processor::LogitsProcessor;
use crate::stage::{Stage, LAST_ID};
use crate::tensor_ops::fill_where;
use crate::vocab_cache::{one_hot_row, VocabCache};

/// Sets the logits of the listed token ids to -inf.
#[derive(Clone, Debug, Default)]
pub struct BanTokens {
    ids: Vec<u32>,
    /// Also ban the last id of the vocabulary (the default stop token when none is named).
    last: bool,
    mask: VocabCache,
}

impl BanTokens {
    /// Bans the given ids.
    pub fn new(ids: Vec<u32>) -> Self {
        Self {
            ids,
            last: false,
            mask: VocabCache::default(),
        }
    }

    /// Bans the stop token: the given id, or the last id of the vocabulary when `None`.
    pub fn stop_token(stop: Option<u32>) -> Self {
        match stop {
            Some(s) => Self::new(vec![s]),
            None => Self {
                ids: Vec::new(),
                last: true,
                mask: VocabCache::default(),
            },
        }
    }
}

impl LogitsProcessor for BanTokens {
    fn name(&self) -> &'static str {
        "ban_tokens"
    }

    fn apply(&self, logits: &Tensor, _ctx: &SamplingContext) -> Result<Tensor> {
        let vocab = logits.dim(1)?;
        let mask = self.mask.get(vocab, logits.device(), || {
            let mut ids = self.ids.clone();
            if self.last {
                ids.push(vocab as u32 - 1);
            }
            one_hot_row(&ids, vocab, "ban_tokens", logits.device())
        })?;
        fill_where(
            logits,
            &mask.broadcast_as(logits.shape())?,
            f32::NEG_INFINITY,
        )
    }

    fn stage(&self) -> Option<Stage> {
        let mut ids = self.ids.clone();
        if self.last {
            ids.push(LAST_ID);
        }
        Some(Stage::new(StageOp::<RowParam>::Ban(Arc::from(ids))))
    }
}

/// Adds a bias to the logits of the listed token ids (-inf stays -inf).
#[derive(Clone, Debug, Default)]
pub struct LogitBias {
    bias: Vec<(u32, f32)>,
    row: VocabCache,
}

impl LogitBias {
    /// `(id, bias)` entries, each bias finite; an id listed twice gets the sum (in order).
    pub fn new(bias: Vec<(u32, f32)>) -> Result<Self> {
        if let Some((id, b)) = bias.iter().find(|(_, b)| !b.is_finite()) {
            return Err(invalid(
                "logit_bias",
                format!("bias {b} of token {id} is not finite"),
            ));
        }
        Ok(Self {
            bias,
            row: VocabCache::default(),
        })
    }

    /// The entries with each id once, the biases of repeated ids summed in order.
    fn summed(&self) -> Vec<(u32, f32)> {
        let mut out: Vec<(u32, f32)> = Vec::new();
        for &(id, b) in &self.bias {
            match out.iter_mut().find(|e| e.0 == id) {
                Some(e) => e.1 += b,
                None => out.push((id, 0.0 + b)),
            }
        }
        out
    }
}

impl LogitsProcessor for LogitBias {
    fn name(&self) -> &'static str {
        "logit_bias"
    }

    fn apply(&self, logits: &Tensor, _ctx: &SamplingContext) -> Result<Tensor> {
        let vocab = logits.dim(1)?;
        let row = self.row.get(vocab, logits.device(), || {
            let mut row = vec![0f32; vocab];
            for &(id, b) in &self.summed() {
                if id as usize >= vocab {
                    return Err(crate::SamplerError::TokenOutOfRange {
                        what: "logit_bias",
                        id: id as i64,
                        vocab,
                    });
                }
                row[id as usize] = b;
            }
            Ok(Tensor::from_vec(row, (1, vocab), logits.device())?)
        })?;
        Ok(logits.broadcast_add(&row)?)
    }

    fn stage(&self) -> Option<Stage> {
        Some(Stage::new(StageOp::<RowParam>::LogitBias(Arc::from(
            self.summed(),
        ))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{ctx, rows, t2};

    #[test]
    fn bans_listed_ids_and_default_stop_token() -> Result<()> {
        let x = t2(&[&[1.0, 2.0, 3.0, 4.0]]);
        let y = BanTokens::new(vec![1]).apply(&x, &ctx())?;
        assert_eq!(rows(&y), vec![vec![1.0, f32::NEG_INFINITY, 3.0, 4.0]]);
        let y = BanTokens::stop_token(None).apply(&x, &ctx())?;
        assert_eq!(rows(&y), vec![vec![1.0, 2.0, 3.0, f32::NEG_INFINITY]]);
        Ok(())
    }

    #[test]
    fn out_of_vocab_ids_and_non_finite_biases_are_errors() {
        let x = t2(&[&[1.0, 2.0]]);
        let err = BanTokens::new(vec![2]).apply(&x, &ctx()).unwrap_err();
        assert!(err.to_string().contains("out of range"), "{err}");
        assert!(LogitBias::new(vec![(5, 1.0)])
            .unwrap()
            .apply(&x, &ctx())
            .is_err());
        assert!(LogitBias::new(vec![(0, f32::NAN)]).is_err());
    }

    #[test]
    fn bias_adds_sums_repeats_and_keeps_neg_inf() -> Result<()> {
        let x = t2(&[&[1.0, f32::NEG_INFINITY, 0.5]]);
        let b = LogitBias::new(vec![(0, -2.0), (1, 3.0), (2, 0.25), (0, 0.5)])?;
        let y = b.apply(&x, &ctx())?;
        assert_eq!(rows(&y), vec![vec![-0.5, f32::NEG_INFINITY, 0.75]]);
        Ok(())
    }
}
