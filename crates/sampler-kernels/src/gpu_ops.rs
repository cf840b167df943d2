//! The GPU kernels' own ops, in the fixed layout of `kernels/sampling_common.h`: the filter
//! segment (min-p -> top-k -> top-p -> temperature -> top-n-sigma, optionally with the draw) and
//! the penalty segment (repetition, frequency / presence, length, bias). The CUDA backend runs
//! a row program's stages through them (see `gpu::cuda_segment`); the CPU runs row programs
//! directly and never uses these.
#![cfg_attr(not(any(feature = "cuda", feature = "metal")), allow(dead_code))]

#[cfg(feature = "cuda")]
use crate::cuda;
#[cfg(feature = "metal")]
use crate::metal;
use candle_core::{bail, CpuStorage, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Tensor};

pub(crate) mod filter_param {
    /// Min-p fraction in [0, 1]; 0 = off.
    pub const MIN_P: usize = 0;
    /// Tokens min-p always keeps (the highest logits, ties included); >= 0.
    pub const MIN_TOKENS: usize = 1;
    /// Top-k; <= 0 = off.
    pub const TOP_K: usize = 2;
    /// Top-p in [0, 1]; >= 1 = off.
    pub const TOP_P: usize = 3;
    /// Temperature t: divides when > 0 (and the dynamic form is off).
    pub const TEMPERATURE: usize = 4;
    /// Dynamic temperature's lower end; the dynamic form applies when |t - t_min| >= 0.001 and
    /// t_min >= 0.
    pub const MIN_TEMPERATURE: usize = 5;
    /// The n of top-n-sigma; <= 0 = off.
    pub const TOP_N_SIGMA: usize = 6;
    /// 1 = greedy draw (argmax, lowest id on ties), 0 = multinomial. Read by `fused_sample` only.
    pub const GREEDY: usize = 7;
}
/// Number of columns of the filter parameter tensor.
pub(crate) const FILTER_PARAMS: usize = 8;

/// Columns of the `[rows, PENALTY_PARAMS]` f32 parameter tensor of the penalty segment.
pub(crate) mod penalty_param {
    /// Repetition penalty factor > 0; 1 (with decay 0) = off.
    pub const REPETITION: usize = 0;
    /// Distance decay of the "divide" form: the divisor is `REPETITION * D^DECAY`.
    pub const DECAY: usize = 1;
    /// Window: only history positions at distance D < WINDOW count; 0 = the whole history.
    /// The window applies to the repetition and to the frequency / presence penalties.
    pub const WINDOW: usize = 2;
    /// 1 = the sign-aware (HF / CTRL) form: once per distinct token, positive logits are
    /// divided by REPETITION and negative ones multiplied (DECAY unused). 0 = the "divide"
    /// form: once per occurrence, `logit /= REPETITION * D^DECAY` whatever the sign.
    pub const SIGN_AWARE: usize = 3;
    /// Frequency penalty: `logit -= count * FREQUENCY`.
    pub const FREQUENCY: usize = 4;
    /// Presence penalty: `logit -= PRESENCE` when the token occurs in the window.
    pub const PRESENCE: usize = 5;
    /// Length penalty exponent a: `logit[stop] /= (len + 1)^a`; 0 = off.
    pub const LENGTH: usize = 6;
    /// The stop token id as f32 (read when LENGTH != 0; must be below the vocabulary size).
    pub const STOP_TOKEN: usize = 7;
}
/// Number of columns of the penalty parameter tensor.
pub(crate) const PENALTY_PARAMS: usize = 8;

fn logits_dims(logits: &Tensor) -> Result<(usize, usize)> {
    if logits.dtype() != DType::F32 {
        bail!("fused ops take f32 logits, got {:?}", logits.dtype());
    }
    let (rows, vocab) = match logits.dims() {
        &[r, v] => (r, v),
        d => bail!("logits must be [rows, vocab], got shape {d:?}"),
    };
    if vocab == 0 {
        bail!("logits have an empty vocabulary");
    }
    Ok((rows, vocab))
}

fn check_input(
    t: &Tensor,
    logits: &Tensor,
    what: &str,
    dtype: DType,
    dims: &[usize],
) -> Result<()> {
    if t.dtype() != dtype {
        bail!("{what} must be {dtype:?}, got {:?}", t.dtype());
    }
    if t.dims() != dims {
        bail!("{what} must have shape {dims:?}, got {:?}", t.dims());
    }
    if !t.device().same_device(logits.device()) {
        bail!(
            "{what} must be on the logits' device ({:?}), got {:?}",
            logits.device(),
            t.device()
        );
    }
    Ok(())
}

/// The processed logits `[rows, vocab]` f32 after min-p -> top-k -> top-p -> temperature
/// (dynamic or plain) -> top-n-sigma. `params`: `[rows, FILTER_PARAMS]` f32 (see
/// [`filter_param`]). Filtered entries are -inf; -inf inputs stay -inf.
pub(crate) fn fused_filter(logits: &Tensor, params: &Tensor) -> Result<Tensor> {
    let (rows, vocab) = logits_dims(logits)?;
    check_input(
        params,
        logits,
        "filter params",
        DType::F32,
        &[rows, FILTER_PARAMS],
    )?;
    if rows == 0 {
        return Tensor::zeros((0, vocab), DType::F32, logits.device());
    }
    logits
        .contiguous()?
        .apply_op2_no_bwd(&params.contiguous()?, &FilterOp)
}

/// The filter segment plus the draw. Returns `[rows, 2]` f32: (token id as f32, probability of
/// that token under the processed distribution). Greedy rows (GREEDY = 1) take the argmax,
/// lowest id on ties; the others draw `u = philox_uniform(seed, row_ids[r], step)` and take the
/// smallest id j with `sum(probs[..=j]) > u * sum(probs)`, which is never a filtered token.
/// `row_ids`: `[rows]` u32. A row with no finite logit is an error on the CPU; the GPU kernels
/// write token 0 with probability 0 for it (callers that validate catch it earlier).
pub(crate) fn fused_sample(
    logits: &Tensor,
    params: &Tensor,
    row_ids: &Tensor,
    seed: u64,
    step: u64,
) -> Result<Tensor> {
    let (rows, _) = logits_dims(logits)?;
    check_input(
        params,
        logits,
        "filter params",
        DType::F32,
        &[rows, FILTER_PARAMS],
    )?;
    check_input(row_ids, logits, "row ids", DType::U32, &[rows])?;
    if rows == 0 {
        return Tensor::zeros((0, 2), DType::F32, logits.device());
    }
    logits.contiguous()?.apply_op3_no_bwd(
        &params.contiguous()?,
        &row_ids.contiguous()?,
        &SampleOp { seed, step },
    )
}

/// The penalty segment in one gather-scatter: repetition (divide or sign-aware), frequency /
/// presence, the length penalty on the stop token, then `vocab_bias` (`[vocab]` f32, added;
/// -inf entries are bans) if given. `tokens`: `[rows, W]` u32 histories whose first `lens[r]`
/// entries are valid; `lens`: `[rows]` u32; `params`: `[rows, PENALTY_PARAMS]` f32 (see
/// [`penalty_param`]). -inf stays -inf.
pub(crate) fn fused_penalties(
    logits: &Tensor,
    tokens: &Tensor,
    lens: &Tensor,
    params: &Tensor,
    vocab_bias: Option<&Tensor>,
) -> Result<Tensor> {
    let (rows, vocab) = logits_dims(logits)?;
    let width = match tokens.dims() {
        &[r, w] if r == rows => w,
        d => bail!("history tokens must be [{rows}, W], got shape {d:?}"),
    };
    check_input(tokens, logits, "history tokens", DType::U32, &[rows, width])?;
    check_input(lens, logits, "history lengths", DType::U32, &[rows])?;
    check_input(
        params,
        logits,
        "penalty params",
        DType::F32,
        &[rows, PENALTY_PARAMS],
    )?;
    if let Some(b) = vocab_bias {
        check_input(b, logits, "vocab bias", DType::F32, &[vocab])?;
    }
    if rows == 0 {
        return Tensor::zeros((0, vocab), DType::F32, logits.device());
    }
    let op = PenaltiesOp {
        params: params.contiguous()?,
        bias: vocab_bias.map(|b| b.contiguous()).transpose()?,
        width,
    };
    logits
        .contiguous()?
        .apply_op3_no_bwd(&tokens.contiguous()?, &lens.contiguous()?, &op)
}

/// `fused_filter` as a candle op: inputs (logits, params).
struct FilterOp;

impl CustomOp2 for FilterOp {
    fn name(&self) -> &'static str {
        "fused_filter"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        bail!(
            "{}: the CPU runs the row programs of `segment`",
            self.name()
        )
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let (rows, vocab) = l1.shape().dims2()?;
        let out = cuda::filter(s1, l1, s2, l2, rows, vocab)?;
        Ok((out, Shape::from((rows, vocab))))
    }

    #[cfg(feature = "metal")]
    fn metal_fwd(
        &self,
        s1: &candle_core::MetalStorage,
        l1: &Layout,
        s2: &candle_core::MetalStorage,
        l2: &Layout,
    ) -> Result<(candle_core::MetalStorage, Shape)> {
        let (rows, vocab) = l1.shape().dims2()?;
        let out = metal::filter(s1, l1, s2, l2, rows, vocab)?;
        Ok((out, Shape::from((rows, vocab))))
    }
}

/// `fused_sample` as a candle op: inputs (logits, params, row ids).
struct SampleOp {
    seed: u64,
    step: u64,
}

impl CustomOp3 for SampleOp {
    fn name(&self) -> &'static str {
        "fused_sample"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        bail!(
            "{}: the CPU runs the row programs of `segment`",
            self.name()
        )
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
        s3: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let (rows, vocab) = l1.shape().dims2()?;
        let out = cuda::sample(s1, l1, s2, l2, s3, l3, rows, vocab, self.seed, self.step)?;
        Ok((out, Shape::from((rows, 2))))
    }

    #[cfg(feature = "metal")]
    fn metal_fwd(
        &self,
        s1: &candle_core::MetalStorage,
        l1: &Layout,
        s2: &candle_core::MetalStorage,
        l2: &Layout,
        s3: &candle_core::MetalStorage,
        l3: &Layout,
    ) -> Result<(candle_core::MetalStorage, Shape)> {
        let (rows, vocab) = l1.shape().dims2()?;
        let out = metal::sample(s1, l1, s2, l2, s3, l3, rows, vocab, self.seed, self.step)?;
        Ok((out, Shape::from((rows, 2))))
    }
}

/// `fused_penalties` as a candle op: inputs (logits, tokens, lens); the parameters and the
/// optional bias ride in the op and are read from their storages in the forward pass.
struct PenaltiesOp {
    params: Tensor,
    bias: Option<Tensor>,
    width: usize,
}

impl CustomOp3 for PenaltiesOp {
    fn name(&self) -> &'static str {
        "fused_penalties"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        bail!(
            "{}: the CPU runs the row programs of `segment`",
            self.name()
        )
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
        s3: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let (rows, vocab) = l1.shape().dims2()?;
        let (pg, pl) = self.params.storage_and_layout();
        let Storage::Cuda(ps) = &*pg else {
            bail!("fused_penalties: params are not on the CUDA device")
        };
        let bias_guard = self.bias.as_ref().map(|b| b.storage_and_layout());
        let bias = match &bias_guard {
            None => None,
            Some((bg, bl)) => match &**bg {
                Storage::Cuda(bs) => Some((bs, *bl)),
                _ => bail!("fused_penalties: the vocab bias is not on the CUDA device"),
            },
        };
        let out = cuda::penalties(
            s1, l1, s2, l2, s3, l3, ps, pl, bias, rows, vocab, self.width,
        )?;
        Ok((out, Shape::from((rows, vocab))))
    }

    #[cfg(feature = "metal")]
    fn metal_fwd(
        &self,
        s1: &candle_core::MetalStorage,
        l1: &Layout,
        s2: &candle_core::MetalStorage,
        l2: &Layout,
        s3: &candle_core::MetalStorage,
        l3: &Layout,
    ) -> Result<(candle_core::MetalStorage, Shape)> {
        let (rows, vocab) = l1.shape().dims2()?;
        let (pg, pl) = self.params.storage_and_layout();
        let Storage::Metal(ps) = &*pg else {
            bail!("fused_penalties: params are not on the Metal device")
        };
        let bias_guard = self.bias.as_ref().map(|b| b.storage_and_layout());
        let bias = match &bias_guard {
            None => None,
            Some((bg, bl)) => match &**bg {
                Storage::Metal(bs) => Some((bs, *bl)),
                _ => bail!("fused_penalties: the vocab bias is not on the Metal device"),
            },
        };
        let out = metal::penalties(
            s1, l1, s2, l2, s3, l3, ps, pl, bias, rows, vocab, self.width,
        )?;
        Ok((out, Shape::from((rows, vocab))))
    }
}

/// One kernel launch of a CUDA segment: the stages (indices into the program) it runs.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct GpuPart {
    penalty: bool,
    /// Stage indices in the launch, in program order.
    stages: Vec<usize>,
    /// The kernel slot of the last non-commuting stage so far.
    last_slot: Option<usize>,
}

/// The slot of a stage in the penalty kernel (`None`: commutes with all of them, or is not a
/// penalty stage) and in the filter kernel.
fn penalty_slot(id: crate::spec::StageId) -> Option<Option<usize>> {
    use crate::spec::StageId as S;
    match id {
        S::Ban => Some(None),
        S::RepetitionDivide | S::RepetitionSignAware => Some(Some(0)),
        S::FrequencyPresence => Some(Some(1)),
        S::LengthPenalty => Some(Some(2)),
        S::LogitBias => Some(Some(3)),
        _ => None,
    }
}

fn filter_slot(id: crate::spec::StageId) -> Option<usize> {
    use crate::spec::StageId as S;
    match id {
        S::MinP => Some(0),
        S::TopK => Some(1),
        S::TopP => Some(2),
        S::Temperature | S::SigmoidTemperature => Some(3),
        S::TopNSigma => Some(4),
        S::Draw => Some(5),
        _ => None,
    }
}

/// How the CUDA kernels run `stages`: one launch per part, each part a run of stages in the
/// fixed order of its kernel. `None` when a stage has no CUDA form. The repetition and the
/// frequency / presence penalties share the kernel's window, so they get launches of their
/// own.
pub(crate) fn cuda_plan(stages: &[crate::spec::StageId]) -> Option<Vec<GpuPart>> {
    let mut parts: Vec<GpuPart> = Vec::new();
    for (i, &id) in stages.iter().enumerate() {
        let (penalty, slot) = match (penalty_slot(id), filter_slot(id)) {
            (Some(slot), _) => (true, slot),
            (None, Some(slot)) => (false, Some(slot)),
            (None, None) => return None,
        };
        let fits = parts.last().is_some_and(|p| {
            p.penalty == penalty
                && match (slot, p.last_slot) {
                    (None, _) | (_, None) => true,
                    (Some(s), Some(last)) => s > last && !(penalty && s == 1 && last == 0),
                }
        });
        if !fits {
            parts.push(GpuPart {
                penalty,
                ..Default::default()
            });
        }
        let p = parts.last_mut()?;
        p.stages.push(i);
        if slot.is_some() {
            p.last_slot = slot;
        }
    }
    Some(parts)
}

#[cfg(not(feature = "cuda"))]
pub(crate) fn cuda_segment(
    _: &crate::spec::Program,
    _: &crate::segment::SegmentInput<'_>,
    _: crate::segment::Emit,
    _: usize,
    _: usize,
) -> crate::error::Result<(crate::segment::SegmentOutput, u64)> {
    Err(crate::error::KernelError::Unsupported(
        "this build has no CUDA kernels (enable the `cuda` feature)".into(),
    ))
}

#[cfg(not(feature = "cuda"))]
pub(crate) fn cuda_segment_append(
    _: &crate::spec::Program,
    _: &crate::segment::SegmentInput<'_>,
    _: crate::segment::Append<'_>,
    _: usize,
    _: usize,
) -> crate::error::Result<(crate::segment::SegmentOutput, crate::segment::Appended, u64)> {
    Err(crate::error::KernelError::Unsupported(
        "this build has no CUDA kernels (enable the `cuda` feature)".into(),
    ))
}

#[cfg(feature = "cuda")]
pub(crate) use cuda_adapter::{cuda_segment, cuda_segment_append};

#[cfg(feature = "cuda")]
mod cuda_adapter {
    use super::*;
    use crate::error::{invalid, KernelError};
    use crate::segment::{Append, Appended, Emit, SegmentInput, SegmentOutput};
    use crate::spec::{Program, StageOp};

    type KResult<T> = crate::error::Result<T>;

    /// A `[rows, 1]` column: program column `c` of the parameters, or `default`.
    fn column(
        inp: &SegmentInput<'_>,
        c: Option<u32>,
        default: f32,
        rows: usize,
    ) -> KResult<Tensor> {
        let dev = inp.logits.device();
        Ok(match (c, inp.params) {
            (Some(c), Some(p)) => p.narrow(1, c as usize, 1)?,
            _ => Tensor::full(default, (rows, 1), dev)?,
        })
    }

    fn columns(cols: Vec<Tensor>) -> KResult<Tensor> {
        Ok(Tensor::cat(&cols, 1)?.contiguous()?)
    }

    fn run_part(
        program: &Program,
        part: &GpuPart,
        inp: &SegmentInput<'_>,
        x: &Tensor,
        draw: bool,
        rows: usize,
        vocab: usize,
    ) -> KResult<(Tensor, Option<Tensor>)> {
        let dev = inp.logits.device().clone();
        let ops: Vec<&StageOp<u32>> = part.stages.iter().map(|&i| &program.ops[i]).collect();
        if part.penalty {
            let (mut rep, mut decay, mut window, mut sign) = (None, None, None, 0f32);
            let (mut freq, mut pres, mut length) = (None, None, None);
            let mut stop = vocab as u32 - 1;
            let mut bias: Option<Vec<f32>> = None;
            let mut add_bias = |id: u32, b: f32| -> KResult<()> {
                if id as usize >= vocab {
                    return Err(KernelError::TokenOutOfRange {
                        what: "bias",
                        id: id as u64,
                        vocab,
                    });
                }
                let row = bias.get_or_insert_with(|| vec![0f32; vocab]);
                row[id as usize] += b;
                Ok(())
            };
            for op in ops {
                match op {
                    StageOp::Ban(ids) => ids
                        .iter()
                        .try_for_each(|&i| add_bias(i, f32::NEG_INFINITY))?,
                    StageOp::LogitBias(e) => e.iter().try_for_each(|&(i, b)| add_bias(i, b))?,
                    StageOp::RepetitionDivide(p) => {
                        (rep, decay, window) = (Some(p.penalty), Some(p.decay), Some(p.window))
                    }
                    StageOp::RepetitionSignAware(p) => {
                        (rep, window, sign) = (Some(p.penalty), Some(p.window), 1.0)
                    }
                    StageOp::FrequencyPresence(p) => {
                        (freq, pres, window) = (Some(p.frequency), Some(p.presence), Some(p.window))
                    }
                    StageOp::LengthPenalty(p, s) => {
                        length = Some(p.factor);
                        stop = s.unwrap_or(vocab as u32 - 1);
                    }
                    _ => return Err(invalid("not a penalty stage")),
                }
            }
            if stop as usize >= vocab {
                return Err(KernelError::TokenOutOfRange {
                    what: "stop_token",
                    id: stop as u64,
                    vocab,
                });
            }
            let (tokens, lens) = match &inp.history {
                Some(h) => {
                    let t = match h.row_map {
                        Some(m) => h.tokens.index_select(m, 0)?,
                        None => h.tokens.clone(),
                    };
                    (t, h.lens.clone())
                }
                None => {
                    length = None;
                    (
                        Tensor::zeros((rows, 1), DType::U32, &dev)?,
                        Tensor::zeros(rows, DType::U32, &dev)?,
                    )
                }
            };
            let params = columns(vec![
                column(inp, rep, 1.0, rows)?,
                column(inp, decay, 0.0, rows)?,
                column(inp, window, 0.0, rows)?,
                column(inp, None, sign, rows)?,
                column(inp, freq, 0.0, rows)?,
                column(inp, pres, 0.0, rows)?,
                column(inp, length, 0.0, rows)?,
                column(inp, None, stop as f32, rows)?,
            ])?;
            let bias = bias.map(|b| Tensor::from_vec(b, vocab, &dev)).transpose()?;
            let y = fused_penalties(x, &tokens, &lens, &params, bias.as_ref())?;
            return Ok((y, None));
        }
        let (mut min_p, mut min_tokens, mut top_k, mut top_p) = (None, None, None, None);
        let (mut t, mut t_min, mut sigma, mut greedy) = (None, None, None, None);
        for op in ops {
            match op {
                StageOp::MinP(p) => (min_p, min_tokens) = (Some(p.p), Some(p.min_tokens)),
                StageOp::TopK(p) => top_k = Some(p.k),
                StageOp::TopP(p) => top_p = Some(p.p),
                StageOp::Temperature(p) => t = Some(p.t),
                StageOp::SigmoidTemperature(p) => (t, t_min) = (Some(p.t), Some(p.t_min)),
                StageOp::TopNSigma(p) => sigma = Some(p.n),
                StageOp::Draw(p) => greedy = Some(p.greedy),
                _ => return Err(invalid("not a filter stage")),
            }
        }
        let params = columns(vec![
            column(inp, min_p, 0.0, rows)?,
            column(inp, min_tokens, 32.0, rows)?,
            column(inp, top_k, 0.0, rows)?,
            column(inp, top_p, 1.0, rows)?,
            column(inp, t, 1.0, rows)?,
            column(inp, t_min, -1.0, rows)?,
            column(inp, sigma, 0.0, rows)?,
            column(inp, greedy, 0.0, rows)?,
        ])?;
        if draw {
            let ids = match inp.row_ids {
                Some(ids) => ids.clone(),
                None => Tensor::arange(0u32, rows as u32, &dev)?,
            };
            let out = fused_sample(x, &params, &ids, inp.seed, inp.step)?;
            return Ok((x.clone(), Some(out)));
        }
        Ok((fused_filter(x, &params)?, None))
    }

    pub(crate) fn cuda_segment(
        program: &Program,
        inp: &SegmentInput<'_>,
        emit: Emit,
        rows: usize,
        vocab: usize,
    ) -> KResult<(SegmentOutput, u64)> {
        let ids: Vec<_> = program.ops.iter().map(|s| s.id()).collect();
        let parts = cuda_plan(&ids).ok_or_else(|| {
            KernelError::Unsupported("a stage of this segment has no CUDA kernel".into())
        })?;
        let mut x = inp.logits.clone();
        let mut out = SegmentOutput::default();
        let n = parts.len();
        for (i, part) in parts.iter().enumerate() {
            let draw = emit == Emit::Tokens && i + 1 == n && program.selects();
            let (y, drawn) = run_part(program, part, inp, &x, draw, rows, vocab)?;
            x = y;
            if let Some(d) = drawn {
                let probs = d.narrow(1, 1, 1)?.squeeze(1)?.contiguous()?;
                out.tokens = Some(d.narrow(1, 0, 1)?.squeeze(1)?.to_dtype(DType::U32)?);
                out.logprobs = Some(probs.log()?);
                out.probs = Some(probs);
            }
        }
        if emit == Emit::Logits {
            out.logits = Some(x);
        }
        Ok((out, n as u64))
    }

    pub(crate) fn cuda_segment_append(
        program: &Program,
        inp: &SegmentInput<'_>,
        append: Append<'_>,
        rows: usize,
        vocab: usize,
    ) -> KResult<(SegmentOutput, Appended, u64)> {
        let (out, n) = cuda_segment(program, inp, Emit::Tokens, rows, vocab)?;
        let hist = inp
            .history
            .ok_or_else(|| invalid("appending needs the history"))?;
        let tokens = out
            .tokens
            .clone()
            .ok_or_else(|| invalid("the segment drew nothing"))?;
        let dev = inp.logits.device();
        let running = match append.stopped {
            Some(s) => s.eq(0u8)?,
            None => Tensor::ones(rows, DType::U8, dev)?,
        };
        let grows = match append.stop_token {
            Some(stop) => (running * tokens.ne(stop)?)?,
            None => running,
        };
        hist.tokens.scatter_set(
            &hist.lens.unsqueeze(1)?,
            &tokens.unsqueeze(1)?.contiguous()?,
            1,
        )?;
        let lens = (hist.lens + grows.to_dtype(DType::U32)?)?;
        let stopped = match append.stopped {
            None => None,
            Some(s) => {
                let mut s = s.clone();
                if let Some(stop) = append.stop_token {
                    s = s.maximum(&tokens.eq(stop)?)?;
                }
                if let Some(m) = append.max_lens {
                    s = s.maximum(&lens.ge(m)?)?;
                }
                Some(s)
            }
        };
        Ok((out, Appended { lens, stopped }, n + 1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::StageId as S;

    #[test]
    fn cuda_plans_follow_the_kernels_fixed_order() {
        let plan =
            |s: &[S]| cuda_plan(s).map(|p| p.iter().map(|p| p.stages.clone()).collect::<Vec<_>>());
        // The reference AR chain: one penalty launch, one filter launch with the draw.
        assert_eq!(
            plan(&[
                S::RepetitionDivide,
                S::LengthPenalty,
                S::MinP,
                S::TopK,
                S::TopP,
                S::Draw
            ]),
            Some(vec![vec![0, 1], vec![2, 3, 4, 5]])
        );
        // Bans fold anywhere into a penalty launch; a bias must come last in it.
        assert_eq!(
            plan(&[S::Ban, S::LogitBias, S::RepetitionDivide, S::Draw]),
            Some(vec![vec![0, 1], vec![2], vec![3]])
        );
        // Repetition and frequency share the kernel's window: two launches.
        assert_eq!(
            plan(&[S::RepetitionSignAware, S::FrequencyPresence]),
            Some(vec![vec![0], vec![1]])
        );
        // Out of the kernel's order: a new launch.
        assert_eq!(
            plan(&[S::TopK, S::MinP, S::Draw]),
            Some(vec![vec![0], vec![1, 2]])
        );
        assert_eq!(plan(&[S::TopK, S::TypicalP]), None);
        assert_eq!(plan(&[S::MirostatV2]), None);
    }
}
