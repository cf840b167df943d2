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
    /// The chain and draw settings of every sequence.
    pub sampler: SamplerConfig,
    /// Knobs with one value per sequence, overriding `sampler`'s value.
    pub per_sequence: Vec<(Knob, Vec<f32>)>,
}

impl StageConfig {
    /// A stage with this config and no per-sequence values.
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
        self.sampler_with(mode, stop_token, repeats, device, 1.0, |b| b)
    }

    /// [`StageConfig::sampler`] with every temperature (the config's and the per-sequence
    /// ones) multiplied by `temperature_scale`, and `extra` applied to the builder last. A scale
    /// of 0 gives the scalar temperature 0 (a greedy draw) whatever the per-sequence values.
    pub(crate) fn sampler_with(
        &self,
        mode: Mode,
        stop_token: u32,
        repeats: &[usize],
        device: &Device,
        temperature_scale: f32,
        extra: impl FnOnce(SamplerBuilder) -> SamplerBuilder,
    ) -> Result<Sampler> {
        let mut b = SamplerBuilder::from_config(&self.sampler, mode)
            .stop_token(Some(stop_token))
            .temperature(self.sampler.temperature * temperature_scale);
        let rows: usize = repeats.iter().sum();
        for (knob, values) in &self.per_sequence {
            let scale = match knob {
                Knob::Temperature if temperature_scale == 0.0 => continue,
                Knob::Temperature => temperature_scale,
                _ => 1.0,
            };
            let per_row: Vec<f32> = values
                .iter()
                .zip(repeats)
                .flat_map(|(&v, &n)| std::iter::repeat_n(v * scale, n))
                .collect();
            b = b.set(*knob, Tensor::from_vec(per_row, rows, device)?);
        }
        Ok(extra(b).build()?)
    }

    /// Whether [`StageConfig::sampler_with`] at this temperature scale draws every row
    /// greedily with a scalar temperature (so its chain is the one of temperature 0).
    pub(crate) fn is_scalar_greedy(&self, temperature_scale: f32) -> bool {
        let per_row = self
            .per_sequence
            .iter()
            .any(|(k, _)| *k == Knob::Temperature);
        temperature_scale == 0.0
            || (!per_row && self.sampler.temperature * temperature_scale <= 0.0)
    }
}

/// How the masked stage's guidance strength changes over the demasking steps.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum GuidanceSchedule {
    /// The same strength at every step. This is what the reference implementation ends up
    /// doing: it computes an annealed strength but hands the constant one to its CFG step.
    #[default]
    Constant,
    /// The strength times the step's timestep t, so guidance grows from `strength * start`
    /// to `strength * end` (the annealed value the reference computes and then leaves unused).
    Annealed,
}

/// The masked ("NAR-len") level-0 stage: a duration per sequence, then every position of
/// level 0 filled by iterative demasking. The defaults are the reference implementation's.
#[derive(Clone, Debug)]
pub struct MaskedConfig {
    /// The chain of every demasking step, one row per position. Default: greedy
    /// (temperature 0), guidance strength 2.5 with rescale 0.75 (the `cfg_strength` /
    /// `cfg_rescale` keys), nothing else. The stop token is banned (the stage runs the chain
    /// in NAR mode) and so is the mask token. There is no history, so repetition-style
    /// penalties have nothing to act on.
    pub stage: StageConfig,
    /// The schedule's step budget over the full [0, 1] range; the stage runs
    /// `floor(max_steps * (denoise_end - denoise_start))` steps. Default 25.
    pub max_steps: usize,
    /// Where the schedule starts, in [0, 1). Above 0 the stage refines given codes
    /// ([`crate::Rows::with_start_codes`]) instead of starting from all masks. Default 0.
    pub denoise_start: f32,
    /// Where the schedule ends, in (`denoise_start`, 1]. Default 1.
    pub denoise_end: f32,
    /// The shortest duration the duration hook may give, in codes. Default 1.
    pub min_duration: usize,
    /// The longest duration the duration hook may give, in codes. Default 500. A sequence's
    /// own limit and the driver's `max_steps` cap it further.
    pub max_duration: usize,
    /// Scale the temperature by `1 - t` at timestep t. Default on.
    pub annealed_sampling: bool,
    /// Mask `1 / (2 * steps)` of each sequence more at every step (`sampling_scores_remask`).
    /// Default off.
    pub sampling_scores_remask: bool,
    /// Only the positions masked at a step get new scores; the others score 1
    /// (`sampling_scores_masked_only`). Default off.
    pub sampling_scores_masked_only: bool,
    /// The guidance strength is at least this (the reference's floor of 2.5). With both this
    /// and `stage.sampler.cfg_strength` at 1 the stage runs without guidance and without the
    /// null-conditioning model call.
    pub min_cfg_strength: f32,
    /// Constant (default, the reference's behaviour) or annealed guidance strength.
    pub guidance: GuidanceSchedule,
    /// The token that marks a masked position in the codes the model gets; `None` = the stop
    /// token.
    pub mask_token: Option<u32>,
}

impl Default for MaskedConfig {
    fn default() -> Self {
        Self {
            stage: StageConfig::new(SamplerConfig {
                temperature: 0.0,
                cfg_strength: 2.5,
                cfg_rescale: 0.75,
                ..SamplerConfig::default()
            }),
            max_steps: 25,
            denoise_start: 0.0,
            denoise_end: 1.0,
            min_duration: 1,
            max_duration: 500,
            annealed_sampling: true,
            sampling_scores_remask: false,
            sampling_scores_masked_only: false,
            min_cfg_strength: 2.5,
            guidance: GuidanceSchedule::Constant,
            mask_token: None,
        }
    }
}

impl MaskedConfig {
    /// The reference defaults with this chain for the demasking steps.
    pub fn new(stage: StageConfig) -> Self {
        Self {
            stage,
            ..Self::default()
        }
    }

    /// Turns guidance off (strength 1, no null-conditioning model call).
    pub fn without_guidance(mut self) -> Self {
        self.stage.sampler.cfg_strength = 1.0;
        self.min_cfg_strength = 1.0;
        self
    }

    /// Sets the schedule's step budget ([`MaskedConfig::max_steps`]).
    pub fn with_max_steps(mut self, n: usize) -> Self {
        self.max_steps = n;
        self
    }

    /// Sets the schedule's range ([`MaskedConfig::denoise_start`], [`MaskedConfig::denoise_end`]).
    pub fn with_denoise(mut self, start: f32, end: f32) -> Self {
        self.denoise_start = start;
        self.denoise_end = end;
        self
    }

    /// Sets the duration bounds in codes.
    pub fn with_durations(mut self, min: usize, max: usize) -> Self {
        self.min_duration = min;
        self.max_duration = max;
        self
    }

    /// Turns temperature annealing on or off.
    pub fn with_annealed_sampling(mut self, on: bool) -> Self {
        self.annealed_sampling = on;
        self
    }

    /// Turns the extra remasking on or off.
    pub fn with_scores_remask(mut self, on: bool) -> Self {
        self.sampling_scores_remask = on;
        self
    }

    /// Turns masked-only scoring on or off.
    pub fn with_scores_masked_only(mut self, on: bool) -> Self {
        self.sampling_scores_masked_only = on;
        self
    }

    /// Sets the guidance schedule.
    pub fn with_guidance(mut self, schedule: GuidanceSchedule) -> Self {
        self.guidance = schedule;
        self
    }

    /// Sets the mask token.
    pub fn with_mask_token(mut self, token: Option<u32>) -> Self {
        self.mask_token = token;
        self
    }

    /// The number of demasking steps: `floor(max_steps * (denoise_end - denoise_start))`.
    pub fn steps(&self) -> usize {
        let span = self.denoise_end as f64 - self.denoise_start as f64;
        (self.max_steps as f64 * span).floor().max(0.0) as usize
    }

    /// The timestep of every demasking step: `steps()` values evenly spaced from
    /// `denoise_start` to `denoise_end`, both included (one step: `denoise_start`).
    pub fn timesteps(&self) -> Vec<f64> {
        let n = self.steps();
        let (a, b) = (self.denoise_start as f64, self.denoise_end as f64);
        (0..n)
            .map(|s| match n {
                1 => a,
                _ => a + (b - a) * s as f64 / (n - 1) as f64,
            })
            .collect()
    }

    /// The share of positions that is noise at timestep t: `cos(t * pi / 2)`.
    pub fn noise_p(t: f64) -> f64 {
        (t * std::f64::consts::FRAC_PI_2).cos()
    }

    /// How many positions of a sequence of `len` codes demasking step `step` masks:
    /// `floor((noise_p(t) + remask_p) * len)` clamped to at least 1 and at most
    /// `len - step`, where the lower bound wins when the two cross (a sequence shorter than
    /// the step count keeps refining one position per step); never more than `len`.
    pub fn masked_count(&self, len: usize, step: usize) -> usize {
        let Some(&t) = self.timesteps().get(step) else {
            return 0;
        };
        self.masked_count_at(len, step, t)
    }

    pub(crate) fn masked_count_at(&self, len: usize, step: usize, t: f64) -> usize {
        let remask = if self.sampling_scores_remask {
            1.0 / (2.0 * self.steps() as f64)
        } else {
            0.0
        };
        let n = ((Self::noise_p(t) + remask) * len as f64).floor().max(0.0) as usize;
        n.min(len.saturating_sub(step)).max(1).min(len)
    }

    /// The guidance strength at timestep t.
    pub fn cfg_strength_at(&self, t: f64) -> f32 {
        let s = self.stage.sampler.cfg_strength.max(self.min_cfg_strength);
        match self.guidance {
            GuidanceSchedule::Constant => s,
            GuidanceSchedule::Annealed => (s as f64 * t) as f32,
        }
    }

    /// The temperature factor at timestep t: `1 - t` when annealing, else 1.
    pub fn temperature_scale_at(&self, t: f64) -> f32 {
        if self.annealed_sampling {
            (1.0 - t) as f32
        } else {
            1.0
        }
    }

    /// Checks the knobs and the chain (once, before any step).
    pub(crate) fn validate(&self, batch: usize) -> Result<()> {
        self.stage.validate("masked", batch)?;
        let (a, b) = (self.denoise_start, self.denoise_end);
        if !(0.0..1.0).contains(&a) {
            return Err(invalid(format!("denoise_start {a} is not in [0, 1)")));
        }
        if !(b > a && b <= 1.0) {
            return Err(invalid(format!(
                "denoise_end {b} is not in (denoise_start = {a}, 1]"
            )));
        }
        if self.steps() == 0 {
            return Err(invalid(format!(
                "max_steps {} over [{a}, {b}] leaves no demasking step",
                self.max_steps
            )));
        }
        if self.min_duration == 0 || self.max_duration < self.min_duration {
            return Err(invalid(format!(
                "durations [{}, {}] must satisfy 1 <= min <= max",
                self.min_duration, self.max_duration
            )));
        }
        if !self.min_cfg_strength.is_finite() {
            return Err(invalid(format!(
                "min_cfg_strength {} is not finite",
                self.min_cfg_strength
            )));
        }
        Ok(())
    }
}

/// How the driver produces the first RVQ level.
// One value per driver, moved rarely: boxing the masked config would only cost every caller
// a `Box::new`.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, Default)]
pub enum Level0 {
    /// The autoregressive loop, one code per step until the stop token (the default).
    #[default]
    Ar,
    /// A duration per sequence, then iterative demasking of every position.
    Masked(MaskedConfig),
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
    /// AR (default) or masked generation of the first level.
    pub level0: Level0,
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
            level0: Level0::Ar,
        }
    }

    /// The VALL-E defaults: [`SamplerConfig::vall_e_ar`] and [`SamplerConfig::vall_e_nar`].
    pub fn vall_e() -> Self {
        Self::new(
            StageConfig::new(SamplerConfig::vall_e_ar()),
            StageConfig::new(SamplerConfig::vall_e_nar()),
        )
    }

    /// Sets [`DriverConfig::max_steps`].
    pub fn with_max_steps(mut self, n: usize) -> Self {
        self.max_steps = n;
        self
    }

    /// Sets [`DriverConfig::stop_check_interval`].
    pub fn with_stop_check_interval(mut self, n: usize) -> Self {
        self.stop_check_interval = n;
        self
    }

    /// Sets [`DriverConfig::stop_token`].
    pub fn with_stop_token(mut self, s: Option<u32>) -> Self {
        self.stop_token = s;
        self
    }

    /// Chooses how the first level is generated.
    pub fn with_level0(mut self, level0: Level0) -> Self {
        self.level0 = level0;
        self
    }
}
