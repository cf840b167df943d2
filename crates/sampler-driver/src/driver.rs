//! The generation loop: the first level by the AR stage (a batch of rows with histories,
//! lengths and stop flags on the device) or by the masked stage ([`crate::masked`]), then one
//! batched chain call per NAR level.
//!
//! Random numbers: every draw is keyed by (seed, row id, step) (sampler-core's Philox), with
//! - AR step s of sequence `id`: row id = `id`, step = s;
//! - masked demasking step s, position j of sequence `id`: row id = `id * max_steps + j`,
//!   step = [`MASKED_STEP_BASE`] + 1 + s (its start noise: step [`MASKED_STEP_BASE`]);
//! - NAR level l, position j of sequence `id`: row id = `id * max_steps + j`,
//!   step = [`NAR_STEP_BASE`] + l.
//!
//! None of these depend on the other rows of the batch, so a sequence gives the same codes alone
//! and inside any batch (for the same seed, `max_steps` and model).

use std::time::{Duration, Instant};

use candle_core::{DType, Device, IndexOp, Tensor};
use sampler_core::{History, Mode, SamplingContext, StopState};

use crate::config::{DriverConfig, Level0};
use crate::error::{invalid, DriverError, Result};
use crate::masked;
use crate::model::CodecLm;
use crate::positions::{lens_tensor, valid_positions, Positions};

pub use crate::masked::MASKED_STEP_BASE;

/// The Philox step of NAR level l is `NAR_STEP_BASE + l`, far from every AR and masked step.
pub const NAR_STEP_BASE: u64 = 1 << 63;

/// The sequences of one batch.
#[derive(Clone, Debug)]
pub struct Rows {
    /// A stable id per sequence (the key of its random numbers), e.g. the request id.
    pub ids: Vec<u32>,
    /// Each sequence's own limit on codes (at most `DriverConfig::max_steps`); `None` = that
    /// limit for every row.
    pub max_steps: Option<Vec<usize>>,
    /// The masked stage only: first-level codes to start from, one list per sequence; their
    /// lengths are the sequences' durations (the duration hook is not called). Needed when
    /// `denoise_start > 0`.
    pub start_codes: Option<Vec<Vec<u32>>>,
}

impl Rows {
    /// Sequences with the given ids.
    pub fn new(ids: Vec<u32>) -> Self {
        Self {
            ids,
            max_steps: None,
            start_codes: None,
        }
    }

    /// Sequences 0..n.
    pub fn first(n: usize) -> Self {
        Self::new((0..n as u32).collect())
    }

    /// Gives each sequence its own limit on codes.
    pub fn with_max_steps(mut self, per_row: Vec<usize>) -> Self {
        self.max_steps = Some(per_row);
        self
    }

    /// Gives the masked stage first-level codes to start from ([`Rows::start_codes`]).
    pub fn with_start_codes(mut self, codes: Vec<Vec<u32>>) -> Self {
        self.start_codes = Some(codes);
        self
    }

    /// Number of sequences.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Whether there is no sequence.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
}

/// What the driver reports while it runs (for a progress bar or a log).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Progress {
    /// AR step `step` (0-based) was issued; at most `limit` steps will run.
    #[allow(missing_docs)]
    ArStep { step: usize, limit: usize },
    /// The host read the stop flags after `steps` steps: `running` rows have not stopped.
    #[allow(missing_docs)]
    ArRunning { steps: usize, running: usize },
    /// The AR stage is over after `steps` steps; the longest row has `max_len` codes.
    #[allow(missing_docs)]
    ArDone { steps: usize, max_len: usize },
    /// Masked demasking step `step` (0-based) of `steps` was issued.
    #[allow(missing_docs)]
    MaskedStep { step: usize, steps: usize },
    /// The masked stage is over after `steps` steps; the longest row has `max_len` codes.
    #[allow(missing_docs)]
    MaskedDone { steps: usize, max_len: usize },
    /// NAR level `level` (1-based up to `levels - 1`) is done.
    #[allow(missing_docs)]
    NarLevel { level: usize, levels: usize },
}

/// The generated codes.
#[derive(Clone, Debug)]
pub struct Generation {
    /// `[batch, T_max, levels]` u32 on the model's device, `T_max` = the longest row. Entries at
    /// or past a row's length hold the stop token.
    pub codes: Tensor,
    /// Codes per row (the stop token is not counted).
    pub lens: Vec<usize>,
    /// The stop token used.
    pub stop_token: u32,
    /// AR steps run (a multiple of the stop check interval, or the step limit); 0 when the
    /// masked stage made the first level.
    pub ar_steps: usize,
    /// Demasking steps run; 0 when the AR stage made the first level.
    pub masked_steps: usize,
    /// Wall time of the AR stage (zero with the masked stage); the device is synchronised at
    /// the end of each stage.
    pub ar_time: Duration,
    /// The part of `ar_time` spent in the sampler's steps (on a GPU: issuing them, as the
    /// device runs them asynchronously).
    pub ar_sampling_time: Duration,
    /// Wall time of the masked stage, the duration call included (zero with the AR stage).
    pub masked_time: Duration,
    /// Wall time of all NAR levels.
    pub nar_time: Duration,
}

impl Generation {
    /// The codes as i64 with `pad` at and past each row's length (e.g. -1 for `.npy` output).
    pub fn padded_i64(&self, pad: i64) -> Result<Tensor> {
        let (b, t, l) = self.codes.dims3()?;
        let dev = self.codes.device();
        let lens: Vec<u32> = self.lens.iter().map(|&n| n as u32).collect();
        let valid = valid_positions(&Tensor::from_vec(lens, b, dev)?, t)?
            .unsqueeze(2)?
            .broadcast_as((b, t, l))?;
        let codes = self.codes.to_dtype(DType::I64)?;
        Ok(valid.where_cond(&codes, &Tensor::full(pad, (b, t, l), dev)?)?)
    }

    /// Codes generated per second of wall time (all levels of all rows).
    pub fn codes_per_second(&self) -> f64 {
        let levels = self.codes.dim(2).unwrap_or(0);
        let total: usize = self.lens.iter().sum::<usize>() * levels;
        let time = self.ar_time + self.masked_time + self.nar_time;
        total as f64 / time.as_secs_f64().max(1e-9)
    }
}

/// Runs AR + NAR generation for batches with one [`DriverConfig`].
#[derive(Clone, Debug)]
pub struct Driver {
    config: DriverConfig,
}

impl Driver {
    /// A driver with this configuration.
    pub fn new(config: DriverConfig) -> Self {
        Self { config }
    }

    /// The configuration.
    pub fn config(&self) -> &DriverConfig {
        &self.config
    }

    /// Generates codes `[batch, T_max, levels]` for `rows`.
    pub fn generate<M: CodecLm>(
        &self,
        model: &mut M,
        rows: &Rows,
        seed: u64,
    ) -> Result<Generation> {
        self.generate_with(model, rows, seed, |_| {})
    }

    /// [`Driver::generate`], reporting [`Progress`] to `observer`.
    pub fn generate_with<M: CodecLm>(
        &self,
        model: &mut M,
        rows: &Rows,
        seed: u64,
        mut observer: impl FnMut(Progress),
    ) -> Result<Generation> {
        let plan = self.check(model, rows)?;
        let device = model.device().clone();

        let start = Instant::now();
        let (level0, lens, ar_steps, masked_steps, ar_sampling_time) = match &self.config.level0 {
            Level0::Ar => {
                let (codes, lens, steps, sampling) =
                    self.run_ar(model, rows, &plan, seed, &device, &mut observer)?;
                (codes, lens, steps, 0, sampling)
            }
            Level0::Masked(cfg) => {
                let out = masked::run(model, rows, cfg, &plan, seed, &device, &mut observer)?;
                device.synchronize()?;
                (out.codes, out.lens, 0, out.steps, Duration::ZERO)
            }
        };
        let (ar_time, masked_time) = match self.config.level0 {
            Level0::Ar => (start.elapsed(), Duration::ZERO),
            Level0::Masked(_) => (Duration::ZERO, start.elapsed()),
        };

        let start = Instant::now();
        let codes = self.run_nar(model, rows, &plan, seed, level0, &lens, &mut observer)?;
        device.synchronize()?;
        let nar_time = start.elapsed();

        Ok(Generation {
            codes,
            lens,
            stop_token: plan.stop_token,
            ar_steps,
            masked_steps,
            ar_time,
            ar_sampling_time,
            masked_time,
            nar_time,
        })
    }

    /// Checks the request once, before any step (the loop itself runs without validation).
    fn check<M: CodecLm>(&self, model: &M, rows: &Rows) -> Result<Plan> {
        let c = &self.config;
        let batch = rows.len();
        if batch == 0 {
            return Err(invalid("the batch has no rows"));
        }
        if c.max_steps == 0 {
            return Err(invalid("max_steps must be at least 1"));
        }
        if c.stop_check_interval == 0 {
            return Err(invalid("stop_check_interval must be at least 1"));
        }
        let vocab = model.vocab_size();
        if vocab < 2 {
            return Err(invalid(format!(
                "vocab size {vocab} leaves no room for codes and a stop token"
            )));
        }
        if model.levels() == 0 {
            return Err(invalid("the model has no RVQ level"));
        }
        let stop_token = c
            .stop_token
            .or(c.ar.sampler.stop_token)
            .unwrap_or(vocab as u32 - 1);
        if stop_token as usize >= vocab {
            return Err(invalid(format!(
                "stop token {stop_token} is not below vocab size {vocab}"
            )));
        }
        let mut seen = std::collections::HashSet::new();
        if let Some(dup) = rows.ids.iter().find(|id| !seen.insert(**id)) {
            return Err(invalid(format!(
                "sequence id {dup} appears twice in the batch"
            )));
        }
        let max_id = *rows.ids.iter().max().unwrap_or(&0) as u64;
        if (max_id + 1) * c.max_steps as u64 > 1 << 32 {
            return Err(invalid(format!(
                "sequence id {max_id} with max_steps {} overflows the u32 NAR row id (id * max_steps + position)",
                c.max_steps
            )));
        }
        let max_lens = match &rows.max_steps {
            None => vec![c.max_steps; batch],
            Some(m) if m.len() != batch => {
                return Err(invalid(format!(
                    "{} per-row max steps for {batch} rows",
                    m.len()
                )))
            }
            Some(m) => {
                if let Some(bad) = m.iter().find(|&&n| n > c.max_steps) {
                    return Err(invalid(format!(
                        "a row's max steps {bad} exceeds the driver's max_steps {}",
                        c.max_steps
                    )));
                }
                m.clone()
            }
        };
        c.ar.validate("AR", batch)?;
        c.nar.validate("NAR", batch)?;
        match &c.level0 {
            Level0::Ar if rows.start_codes.is_some() => {
                return Err(invalid(
                    "start codes are for the masked level-0 stage; the AR stage takes none",
                ))
            }
            Level0::Ar => {}
            Level0::Masked(m) => {
                m.validate(batch)?;
                masked::check_start(m, rows, &max_lens, vocab, stop_token)?;
            }
        }
        Ok(Plan {
            vocab,
            stop_token,
            levels: model.levels(),
            max_lens,
            stride: c.max_steps as u32,
        })
    }

    /// The AR loop. Returns the first level `[batch, T_max]` (stop token past each length), the
    /// lengths and the number of steps run.
    fn run_ar<M: CodecLm>(
        &self,
        model: &mut M,
        rows: &Rows,
        plan: &Plan,
        seed: u64,
        device: &Device,
        observer: &mut impl FnMut(Progress),
    ) -> Result<(Tensor, Vec<usize>, usize, Duration)> {
        let batch = rows.len();
        let limit = *plan.max_lens.iter().max().unwrap_or(&0);
        let one_row_each = vec![1; batch];
        let ar = &self.config.ar;
        let mut sampler = ar.sampler(Mode::Ar, plan.stop_token, &one_row_each, device)?;
        let max_lens: Vec<u32> = plan.max_lens.iter().map(|&n| n as u32).collect();
        let max_lens = Tensor::from_vec(max_lens, batch, device)?;
        // 1 = the row is finished: it drew the stop token or reached its own limit.
        let mut stop = StopState {
            stopped: max_lens.eq(0u32)?,
            max_lens: Some(max_lens),
            stop_token: Some(plan.stop_token),
        };
        // The first step validates the logits (NaN, +inf, empty rows); later steps trust them.
        let mut ctx = SamplingContext::new(seed)
            .with_row_ids(rows.ids.clone())
            .with_history(History::empty(batch, limit, device)?);
        let mut steps = 0;
        let mut sampling = Duration::ZERO;
        while steps < limit {
            observer(Progress::ArStep { step: steps, limit });
            let history = ctx
                .history()
                .ok_or_else(|| invalid("the AR context lost its history"))?;
            let logits = model
                .ar_step(&history.tokens()?, history.lens())
                .map_err(|e| DriverError::model(format!("AR step {steps}"), e))?;
            check_logits(&logits, &[batch, plan.vocab], "AR step")?;
            let t0 = Instant::now();
            sampler.step(&logits, &mut ctx, Some(&mut stop))?;
            sampling += t0.elapsed();
            if steps == 0 {
                ctx = ctx.with_validation(false);
            }
            steps += 1;
            if steps % self.config.stop_check_interval == 0 && steps < limit {
                let done = stop
                    .stopped
                    .to_dtype(DType::U32)?
                    .sum_all()?
                    .to_scalar::<u32>()? as usize;
                observer(Progress::ArRunning {
                    steps,
                    running: batch - done,
                });
                if done == batch {
                    break;
                }
            }
        }
        let history = ctx
            .history()
            .ok_or_else(|| invalid("the AR context lost its history"))?;
        let lens: Vec<usize> = history
            .lens()
            .to_vec1::<u32>()?
            .into_iter()
            .map(|n| n as usize)
            .collect();
        let t_max = lens.iter().copied().max().unwrap_or(0);
        observer(Progress::ArDone {
            steps,
            max_len: t_max,
        });
        let codes = history.tokens()?.narrow(1, 0, t_max)?;
        let valid = valid_positions(history.lens(), t_max)?;
        let codes = valid.where_cond(
            &codes,
            &Tensor::full(plan.stop_token, (batch, t_max), device)?,
        )?;
        Ok((codes, lens, steps, sampling))
    }

    /// The NAR levels, each one chain call over every position of every row.
    #[allow(clippy::too_many_arguments)]
    fn run_nar<M: CodecLm>(
        &self,
        model: &mut M,
        rows: &Rows,
        plan: &Plan,
        seed: u64,
        level0: Tensor,
        lens: &[usize],
        observer: &mut impl FnMut(Progress),
    ) -> Result<Tensor> {
        let (batch, t_max) = level0.dims2()?;
        let device = level0.device().clone();
        if t_max == 0 {
            return Ok(Tensor::zeros((batch, 0, plan.levels), DType::U32, &device)?);
        }
        let mut codes = level0.unsqueeze(2)?;
        let lens_t = lens_tensor(lens, &device)?;
        let at = Positions::new(&rows.ids, lens, t_max, plan.stride, &device)?;
        let stop = Tensor::new(&[plan.stop_token], &device)?;
        let mut sampler = self
            .config
            .nar
            .sampler(Mode::Nar, plan.stop_token, lens, &device)?;
        for level in 1..plan.levels {
            let logits = model
                .nar_level(&codes, &lens_t, level)
                .map_err(|e| DriverError::model(format!("NAR level {level}"), e))?;
            check_logits(&logits, &[batch, t_max, plan.vocab], "NAR level")?;
            let logits = at.gather(&logits)?;
            // Position j sees the previous level before j (docs/semantics.md#histories): its history is the
            // previous level of its sequence with length j.
            // Every position of a sequence reads the sequence's previous level: shared rows.
            let previous = codes.i((.., .., level - 1))?.contiguous()?;
            let ctx = SamplingContext::new(seed)
                .with_step(NAR_STEP_BASE + level as u64)
                .with_row_ids(at.row_ids.clone())
                .with_history(History::with_row_map(&previous, &at.pos_of, &at.seq_of)?)
                .with_validation(level == 1);
            sampler.reset();
            let drawn = sampler.sample(&logits, &ctx)?;
            let next = at.scatter(&drawn.tokens, &stop, batch)?;
            codes = Tensor::cat(&[&codes, &next.unsqueeze(2)?], 2)?;
            observer(Progress::NarLevel {
                level,
                levels: plan.levels,
            });
        }
        Ok(codes)
    }
}

/// What [`Driver::check`] derived from the request.
pub(crate) struct Plan {
    pub(crate) vocab: usize,
    pub(crate) stop_token: u32,
    pub(crate) levels: usize,
    /// Each sequence's own limit on codes.
    pub(crate) max_lens: Vec<usize>,
    /// The driver's `max_steps`: the row-id stride of the whole-sequence stages.
    pub(crate) stride: u32,
}

pub(crate) fn check_logits(logits: &Tensor, want: &[usize], what: &str) -> Result<()> {
    if logits.dims() != want {
        return Err(DriverError::Model(format!(
            "{what} returned logits of shape {:?}, expected {want:?}",
            logits.dims()
        )));
    }
    Ok(())
}
