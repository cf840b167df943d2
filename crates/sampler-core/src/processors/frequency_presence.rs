//! Frequency and presence penalties (the OpenAI API parameters; llama.cpp `penalties`): with
//! `count` the number of occurrences of a token in the repetition window (the same window as the
//! repetition penalty: distances `D < window`, 0 = the whole history),
//! `logit -= count * frequency + (count > 0) * presence`.
//!
//! Parameters: `frequency_penalty`, `presence_penalty` (finite; negative values reward
//! repeats; both 0 is off), and the window `repetition_penalty_window`.

use candle_core::Tensor;
use sampler_kernels::spec::{row, StageOp};

use crate::context::SamplingContext;
use crate::error::Result;
use crate::param::{range, RowParam};
use crate::processor::LogitsProcessor;
use crate::processors::repetition::WindowedHistory;
use crate::stage::Stage;

/// Subtracts a penalty per occurrence and per distinct token of each row's recent history.
#[derive(Clone, Debug)]
pub struct FrequencyPresencePenalty {
    frequency: RowParam,
    presence: RowParam,
    window: RowParam,
}

impl FrequencyPresencePenalty {
    /// `frequency`, `presence` finite (negative values reward repeats); `window` >= 0.
    pub fn new(
        frequency: impl Into<RowParam>,
        presence: impl Into<RowParam>,
        window: impl Into<RowParam>,
    ) -> Result<Self> {
        let (frequency, presence, window) = (frequency.into(), presence.into(), window.into());
        frequency.check("frequency_penalty", "finite", range::finite)?;
        presence.check("presence_penalty", "finite", range::finite)?;
        window.check("repetition_penalty_window", "a count >= 0", range::count)?;
        Ok(Self {
            frequency,
            presence,
            window,
        })
    }

    /// Whether both penalties are off (0) for every row.
    pub fn is_off(frequency: &RowParam, presence: &RowParam) -> bool {
        frequency.is_scalar_and(|v| v == 0.0) && presence.is_scalar_and(|v| v == 0.0)
    }
}

impl LogitsProcessor for FrequencyPresencePenalty {
    fn name(&self) -> &'static str {
        "frequency_presence_penalty"
    }

    fn apply(&self, logits: &Tensor, ctx: &SamplingContext) -> Result<Tensor> {
        let Some(w) = WindowedHistory::of(logits, ctx, &self.window)? else {
            return Ok(logits.clone());
        };
        let (rows, vocab) = logits.dims2()?;
        let dev = logits.device();
        let counts = w.counts(vocab)?;
        let seen = counts.gt(0f32)?.to_dtype(candle_core::DType::F32)?;
        let penalty = (counts.broadcast_mul(&self.frequency.column(rows, dev)?)?
            + seen.broadcast_mul(&self.presence.column(rows, dev)?)?)?;
        Ok((logits - penalty)?)
    }

    fn stage(&self) -> Option<Stage> {
        Some(Stage::new(StageOp::FrequencyPresence(
            row::FrequencyPresence {
                frequency: self.frequency.clone(),
                presence: self.presence.clone(),
                window: self.window.clone(),
            },
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{assert_close, ctx, ctx_with_history, rows, t2};

    fn probs(y: &Tensor) -> Vec<f32> {
        rows(&crate::tensor_ops::softmax(y).unwrap())[0].clone()
    }

    #[test]
    fn subtracts_count_times_frequency_plus_presence() -> Result<()> {
        let x = t2(&[&[1.0, 1.0, 1.0, f32::NEG_INFINITY]]);
        let c = ctx_with_history(&[vec![0, 0, 1, 3]]);
        let y = FrequencyPresencePenalty::new(0.5, 2.0, 0.0)?.apply(&x, &c)?;
        assert_close(&rows(&y), &[vec![-2.0, -1.5, 1.0, f32::NEG_INFINITY]]);
        assert_close(
            &rows(&FrequencyPresencePenalty::new(0.5, 2.0, 0.0)?.apply(&x, &ctx())?),
            &rows(&x),
        );
        Ok(())
    }

    #[test]
    fn matches_llama_cpp_published_probabilities() -> Result<()> {
        // llama.cpp test-sampling, frequency 5 and presence 5 over five tokens of 0.2.
        let l = vec![0.2f32.ln(); 5];
        let x = t2(&[&l]);
        let cases: [(Vec<i64>, [f32; 5]); 3] = [
            (vec![0], [0.000011, 0.249997, 0.249997, 0.249997, 0.249997]),
            (
                vec![0, 1, 2],
                [0.000023, 0.000023, 0.000023, 0.499966, 0.499966],
            ),
            (
                vec![0, 1, 2, 0, 0],
                [0.000000, 0.000023, 0.000023, 0.499977, 0.499977],
            ),
        ];
        for (hist, want) in cases {
            let c = ctx_with_history(std::slice::from_ref(&hist));
            let p = probs(&FrequencyPresencePenalty::new(5.0, 5.0, 0.0)?.apply(&x, &c)?);
            for (g, w) in p.iter().zip(want) {
                assert!((g - w).abs() < 1e-5, "history {hist:?}: {p:?}");
            }
        }
        Ok(())
    }

    #[test]
    fn window_limits_the_count() -> Result<()> {
        // window 2: only the last token (distance 1) counts.
        let x = t2(&[&[0.0, 0.0]]);
        let c = ctx_with_history(&[vec![0, 0, 1]]);
        let y = FrequencyPresencePenalty::new(1.0, 0.0, 2.0)?.apply(&x, &c)?;
        assert_close(&rows(&y), &[vec![0.0, -1.0]]);
        Ok(())
    }
}
