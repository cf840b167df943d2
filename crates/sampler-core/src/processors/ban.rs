//! Token bans and logit bias.
//!
//! `BanTokens` sets the listed ids to -inf (the NAR stage bans the stop token this way, SPEC §4);
//! `LogitBias` adds a fixed bias per token (OpenAI / HF `logit_bias`). Ids must be below the
//! vocabulary size.

use candle_core::Tensor;

use crate::context::SamplingContext;
use crate::error::Result;
use crate::processor::LogitsProcessor;
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

    fn clone_box(&self) -> Box<dyn LogitsProcessor> {
        Box::new(self.clone())
    }
}

/// Adds a bias to the logits of the listed token ids (-inf stays -inf).
#[derive(Clone, Debug, Default)]
pub struct LogitBias {
    bias: Vec<(u32, f32)>,
    row: VocabCache,
}

impl LogitBias {
    pub fn new(bias: Vec<(u32, f32)>) -> Self {
        Self {
            bias,
            row: VocabCache::default(),
        }
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
            for &(id, b) in &self.bias {
                if id as usize >= vocab {
                    return Err(crate::SamplerError::TokenOutOfRange {
                        what: "logit_bias",
                        id: id as i64,
                        vocab,
                    });
                }
                row[id as usize] += b;
            }
            Ok(Tensor::from_vec(row, (1, vocab), logits.device())?)
        })?;
        Ok(logits.broadcast_add(&row)?)
    }

    fn clone_box(&self) -> Box<dyn LogitsProcessor> {
        Box::new(self.clone())
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
    fn out_of_vocab_ids_are_errors() {
        let x = t2(&[&[1.0, 2.0]]);
        let err = BanTokens::new(vec![2]).apply(&x, &ctx()).unwrap_err();
        assert!(err.to_string().contains("out of range"), "{err}");
        assert!(LogitBias::new(vec![(5, 1.0)]).apply(&x, &ctx()).is_err());
    }

    #[test]
    fn bias_adds_and_keeps_neg_inf() -> Result<()> {
        let x = t2(&[&[1.0, f32::NEG_INFINITY, 0.5]]);
        let y = LogitBias::new(vec![(0, -2.0), (1, 3.0), (2, 0.25)]).apply(&x, &ctx())?;
        assert_eq!(rows(&y), vec![vec![-1.0, f32::NEG_INFINITY, 0.75]]);
        Ok(())
    }
}
