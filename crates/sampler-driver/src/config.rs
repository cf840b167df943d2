//! The driver's configuration: one sampler configuration per stage, optional per-sequence
//! values for any numeric key ([`Knob`], e.g. a different temperature per row), and the loop's
//! limits.

use candle_core::{Device, Tensor};
use sampler_core::{Knob, Mode, Sampler, SamplerBuilder, SamplerConfig};

use crate::error::{invalid, Result};

/// The sampling of one stage (AR or NAR): a [`SamplerConfig`] for every sequence, and
/// per-sequence overrides. An override holds one value per sequence of the batch; the NAR stage
/// gives a sequence's value to every position of that sequence.
#[derive(Clone, Debug, Default)]
pub struct StageConfig {
    pub sampler: SamplerConfig,
    pub per_sequence: Vec<(Knob, Vec<f32>)>,
}

impl StageConfig {
    pub fn new(sampler: SamplerConfig) -> Self {
        Self {
            sampler,
            per_sequence: Vec::new(),
        }
    }

    /// Gives `knob` one value per sequence (in the order of the batch's sequence ids).
    pub fn per_sequence(mut self, knob: Knob, values: Vec<f32>) -> Self {
        self.per_sequence.push((knob, values));
        self
    }

    /// Checks the config and the override lengths against the batch size.
    pub(crate) fn validate(&self, stage: &str, batch: usize) -> Result<()> {
        self.sampler.validate()?;
        for (knob, values) in &self.per_sequence {
            if values.len() != batch {
                return Err(invalid(format!(
                    "{stage} per-sequence {knob:?} has {} values for {batch} sequences",
                    values.len()
                )));
            }
        }
        Ok(())
    }

    /// The sampler for rows that belong to the sequences in order, `repeats[b]` rows for
    /// sequence b (AR: 1 each; NAR: one per position), with the per-sequence values expanded
    /// and uploaded to `device` once.
    pub(crate) fn sampler(
        &self,
        mode: Mode,
        stop_token: u32,
        repeats: &[usize],
        device: &Device,
    ) -> Result<Sampler> {
        let mut b = SamplerBuilder::from_config(&self.sampler, mode).stop_token(Some(stop_token));
        let rows: usize = repeats.iter().sum();
        for (knob, values) in &self.per_sequence {
            let per_row: Vec<f32> = values
                .iter()
                .zip(repeats)
                .flat_map(|(&v, &n)| std::iter::repeat_n(v, n))
                .collect();
            b = b.set(*knob, Tensor::from_vec(per_row, rows, device)?);
        }
        Ok(b.build()?)
    }
}

/// Everything the driver needs besides the model and the batch.
#[derive(Clone, Debug)]
pub struct DriverConfig {
    /// Sampling of the AR stage (the first RVQ level, one code per step).
    pub ar: StageConfig,
    /// Sampling of each NAR level (every position at once, stop token banned).
    pub nar: StageConfig,
    /// The most codes a row may get; also the default of every row's own limit. 1500 = 20 s
    /// of EnCodec audio at 75 codes per second.
    pub max_steps: usize,
    /// The host reads the "all rows stopped" flag every this many AR steps; the steps in
    /// between never wait for the device. At most this many - 1 steps are wasted at the end.
    pub stop_check_interval: usize,
    /// The stop token; `None` = the last id of the vocabulary.
    pub stop_token: Option<u32>,
}

impl DriverConfig {
    /// A driver config with the given stage configs, 1500 max steps and a stop check every 16
    /// steps.
    pub fn new(ar: StageConfig, nar: StageConfig) -> Self {
        Self {
            ar,
            nar,
            max_steps: 1500,
            stop_check_interval: 16,
            stop_token: None,
        }
    }

    /// The VALL-E defaults: [`SamplerConfig::vall_e_ar`] and [`SamplerConfig::vall_e_nar`].
    pub fn vall_e() -> Self {
        Self::new(
            StageConfig::new(SamplerConfig::vall_e_ar()),
            StageConfig::new(SamplerConfig::vall_e_nar()),
        )
    }

    pub fn with_max_steps(mut self, n: usize) -> Self {
        self.max_steps = n;
        self
    }

    pub fn with_stop_check_interval(mut self, n: usize) -> Self {
        self.stop_check_interval = n;
        self
    }

    pub fn with_stop_token(mut self, s: Option<u32>) -> Self {
        self.stop_token = s;
        self
    }
}
