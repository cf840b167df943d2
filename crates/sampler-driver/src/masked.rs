//! The masked ("NAR-len") level-0 stage: each sequence's duration from the model's duration
//! hook, then every position of level 0 filled by iterative demasking (MaskGIT style).
//!
//! Every position starts as the mask token with score 1. Demasking step s at timestep t masks
//! the [`MaskedConfig::masked_count`] lowest-scoring positions of each sequence (ties to the
//! lower position), asks the model for the logits of every position (and, with guidance, the
//! same call on the null conditioning, combined by the chain's CFG step), draws every position
//! with the stage's chain at the step's temperature, and gives the masked positions the drawn
//! codes. A position's new score is the probability of its most likely code under the same
//! chain at temperature 0; with masked-only scoring the unmasked positions score 1 instead.
//!
//! Everything inside the loop runs on the device: the lowest-k selection (a value bisection),
//! the mask scatter and the score update are tensor ops, and the per-step counts are uploaded
//! once before the loop (they only depend on the lengths, read once from the duration hook).
//! Like the AR stage, the first step validates the logits (a few scalars read back); later
//! steps do not.
//!
//! Random numbers: position j of sequence `id` draws with row id `id * max_steps + j` (the
//! driver's `max_steps`, as in the NAR levels) and step [`MASKED_STEP_BASE`] + 1 + s; the start
//! noise of `denoise_start > 0` uses step [`MASKED_STEP_BASE`]. Nothing depends on the rest
//! of the batch.

use candle_core::{DType, Device, IndexOp, Tensor};
use sampler_core::{philox, Mode, Sampler, SamplingContext};

use crate::config::MaskedConfig;
use crate::driver::{check_logits, Plan, Progress, Rows};
use crate::error::{invalid, DriverError, Result};
use crate::model::{CodecLm, Conditioning};
use crate::positions::{lens_tensor, valid_positions, Positions};
use crate::select::lowest_k;

/// The Philox step of masked demasking step s is `MASKED_STEP_BASE + 1 + s` (the start noise
/// uses `MASKED_STEP_BASE` itself): far from every AR step and below every NAR step.
pub const MASKED_STEP_BASE: u64 = 1 << 62;

/// The first level made by the masked stage.
pub(crate) struct MaskedLevel0 {
    /// `[batch, T_max]` u32, the stop token past each length.
    pub(crate) codes: Tensor,
    pub(crate) lens: Vec<usize>,
    /// Demasking steps run.
    pub(crate) steps: usize,
}

/// Checks the start codes against the batch (once, before any model call).
pub(crate) fn check_start(
    cfg: &MaskedConfig,
    rows: &Rows,
    max_lens: &[usize],
    vocab: usize,
    stop_token: u32,
) -> Result<()> {
    let Some(start) = &rows.start_codes else {
        if cfg.denoise_start > 0.0 {
            return Err(invalid(format!(
                "denoise_start {} refines given codes: pass them with Rows::with_start_codes",
                cfg.denoise_start
            )));
        }
        return Ok(());
    };
    if start.len() != rows.len() {
        return Err(invalid(format!(
            "{} start code lists for {} sequences",
            start.len(),
            rows.len()
        )));
    }
    for (b, (codes, &limit)) in start.iter().zip(max_lens).enumerate() {
        if codes.len() > limit {
            return Err(invalid(format!(
                "sequence {b} starts from {} codes, more than its limit of {limit}",
                codes.len()
            )));
        }
        if let Some(&bad) = codes
            .iter()
            .find(|&&c| c as usize >= vocab || c == stop_token)
        {
            return Err(invalid(format!(
                "sequence {b}: start code {bad} is not a code (vocab {vocab}, stop token {stop_token})"
            )));
        }
    }
    Ok(())
}

/// Turns a candle error of a hook into [`DriverError::ModelFailed`], keeping it as the source.
fn from_hook<T>(r: Result<T>, call: impl FnOnce() -> String) -> Result<T> {
    r.map_err(|e| match e {
        DriverError::Candle(source) => DriverError::ModelFailed {
            call: call(),
            source,
        },
        other => other,
    })
}

/// Each sequence's length: the start codes' lengths, or the duration hook's values (read once)
/// clamped to the stage's bounds; never above the sequence's own limit.
fn lengths<M: CodecLm>(
    model: &mut M,
    rows: &Rows,
    cfg: &MaskedConfig,
    plan: &Plan,
) -> Result<Vec<usize>> {
    if let Some(start) = &rows.start_codes {
        return Ok(start.iter().map(Vec::len).collect());
    }
    let batch = rows.len();
    let durations = from_hook(model.durations(), || "duration hook".into())?;
    if durations.dims() != [batch] {
        return Err(DriverError::Model(format!(
            "the duration hook returned shape {:?}, expected [{batch}]",
            durations.dims()
        )));
    }
    let host = durations.to_dtype(DType::F64)?.to_vec1::<f64>()?;
    host.iter()
        .zip(&plan.max_lens)
        .enumerate()
        .map(|(b, (&d, &limit))| {
            if !d.is_finite() {
                return Err(DriverError::Model(format!(
                    "the duration hook returned {d} for sequence {b}"
                )));
            }
            let d = d.round().clamp(0.0, cfg.max_duration as f64) as usize;
            Ok(d.clamp(cfg.min_duration, cfg.max_duration).min(limit))
        })
        .collect()
}

/// The chains of one demasking step: the draw at the step's temperature and, unless that one
/// is already greedy, the same chain at temperature 0 for the scores.
struct StepSamplers {
    draw: Sampler,
    score: Option<Sampler>,
    /// Whether the chain has a CFG step (then the null-conditioning call runs).
    guided: bool,
}

fn step_samplers(
    cfg: &MaskedConfig,
    plan: &Plan,
    mask_token: u32,
    timesteps: &[f64],
    lens: &[usize],
    device: &Device,
) -> Result<Vec<StepSamplers>> {
    let mut bans = cfg.stage.sampler.ban_tokens.clone();
    if mask_token != plan.stop_token && (mask_token as usize) < plan.vocab {
        bans.push(mask_token);
    }
    timesteps
        .iter()
        .map(|&t| {
            let strength = cfg.cfg_strength_at(t);
            let scale = cfg.temperature_scale_at(t);
            let extra =
                |b: sampler_core::SamplerBuilder| b.cfg_strength(strength).ban_tokens(bans.clone());
            let build = |scale: f32| {
                cfg.stage
                    .sampler_with(Mode::Nar, plan.stop_token, lens, device, scale, extra)
            };
            let score = if cfg.stage.is_scalar_greedy(scale) {
                None
            } else {
                Some(build(0.0)?)
            };
            Ok(StepSamplers {
                draw: build(scale)?,
                score,
                guided: strength != 1.0,
            })
        })
        .collect()
}

/// The starting codes `[batch, T]` (mask token below each length, or the start codes) and
/// scores `[batch, T]` (1, or 0 at the positions the start noise picks so that the first step
/// masks them first).
fn start_state(
    cfg: &MaskedConfig,
    rows: &Rows,
    lens: &[usize],
    plan: &Plan,
    seed: u64,
    device: &Device,
) -> Result<(Tensor, Tensor)> {
    let t_max = lens.iter().copied().max().unwrap_or(0);
    let mask_token = cfg.mask_token.unwrap_or(plan.stop_token);
    let batch = rows.len();
    let mut codes = vec![plan.stop_token; batch * t_max];
    let mut scores = vec![1f32; batch * t_max];
    let noise_p = MaskedConfig::noise_p(cfg.denoise_start as f64);
    for (b, &len) in lens.iter().enumerate() {
        let row = &mut codes[b * t_max..b * t_max + len];
        match &rows.start_codes {
            None => row.fill(mask_token),
            Some(start) => {
                for (dst, &code) in row.iter_mut().zip(start.get(b).into_iter().flatten()) {
                    *dst = code;
                }
                for j in 0..len {
                    let id = rows.ids[b] * plan.stride + j as u32;
                    if (philox::uniform(seed, id, MASKED_STEP_BASE) as f64) < noise_p {
                        scores[b * t_max + j] = 0.0;
                    }
                }
            }
        }
    }
    Ok((
        Tensor::from_vec(codes, (batch, t_max), device)?,
        Tensor::from_vec(scores, (batch, t_max), device)?,
    ))
}

/// Runs the masked stage for `rows`.
pub(crate) fn run<M: CodecLm>(
    model: &mut M,
    rows: &Rows,
    cfg: &MaskedConfig,
    plan: &Plan,
    seed: u64,
    device: &Device,
    observer: &mut impl FnMut(Progress),
) -> Result<MaskedLevel0> {
    let batch = rows.len();
    let lens = lengths(model, rows, cfg, plan)?;
    let t_max = lens.iter().copied().max().unwrap_or(0);
    let steps = cfg.steps();
    if t_max == 0 {
        observer(Progress::MaskedDone {
            steps: 0,
            max_len: 0,
        });
        return Ok(MaskedLevel0 {
            codes: Tensor::zeros((batch, 0), DType::U32, device)?,
            lens,
            steps: 0,
        });
    }
    let mask_token = cfg.mask_token.unwrap_or(plan.stop_token);
    let timesteps = cfg.timesteps();
    // The schedule depends on host-known lengths only: every step's counts, uploaded once.
    let counts: Vec<f32> = timesteps
        .iter()
        .enumerate()
        .flat_map(|(s, &t)| {
            lens.iter()
                .map(move |&len| cfg.masked_count_at(len, s, t) as f32)
        })
        .collect();
    let counts = Tensor::from_vec(counts, (steps, batch), device)?;
    let mut samplers = step_samplers(cfg, plan, mask_token, &timesteps, &lens, device)?;

    let lens_t = lens_tensor(&lens, device)?;
    let valid = valid_positions(&lens_t, t_max)?;
    let at = Positions::new(&rows.ids, &lens, t_max, plan.stride, device)?;
    let (mut codes, mut scores) = start_state(cfg, rows, &lens, plan, seed, device)?;
    let masks = Tensor::full(mask_token, (batch, t_max), device)?;
    let ones = Tensor::ones((batch, t_max), DType::F32, device)?;
    let stop = Tensor::new(&[plan.stop_token], device)?;
    let one = Tensor::new(&[1f32], device)?;
    let want = [batch, t_max, plan.vocab];

    for (s, (&t, chains)) in timesteps.iter().zip(samplers.iter_mut()).enumerate() {
        observer(Progress::MaskedStep { step: s, steps });
        let k = counts.i(s)?.unsqueeze(1)?;
        let mask = lowest_k(&scores, &valid, &k)?;
        let input = mask.where_cond(&masks, &codes)?;
        let mut call = |conditioning: Conditioning| -> Result<Tensor> {
            let logits = from_hook(
                model.masked_level(&input, &mask, &lens_t, t as f32, conditioning),
                || format!("masked step {s} ({conditioning:?})"),
            )?;
            check_logits(&logits, &want, "masked step")?;
            at.gather(&logits)
        };
        let logits = call(Conditioning::Conditional)?;
        let mut ctx = SamplingContext::new(seed)
            .with_step(MASKED_STEP_BASE + 1 + s as u64)
            .with_row_ids(at.row_ids.clone())
            .with_validation(s == 0);
        if chains.guided {
            ctx = ctx.with_null_logits(call(Conditioning::Null)?);
        }
        let drawn = chains.draw.sample(&logits, &ctx)?;
        let best = match &mut chains.score {
            Some(greedy) => greedy.sample(&logits, &ctx)?.probs,
            None => drawn.probs,
        };
        let drawn = at.scatter(&drawn.tokens, &stop, batch)?;
        let new_scores = at.scatter(&best, &one, batch)?;
        codes = mask.where_cond(&drawn, &codes)?;
        scores = if cfg.sampling_scores_masked_only {
            mask.where_cond(&new_scores, &ones)?
        } else {
            new_scores
        };
    }
    observer(Progress::MaskedDone {
        steps,
        max_len: t_max,
    });
    Ok(MaskedLevel0 { codes, lens, steps })
}
