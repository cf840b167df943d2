//! The fusion pass: a chain and its selector become a plan of parts, each either one plain
//! processor or one fused segment, a maximal run of consecutive processors that declare a stage
//! (and that the device runs fused). A segment is one `sampler_kernels` call per step that
//! reads each row once and writes logits, or draws when the segment ends the chain.
//!
//! A plan is built for one (rows, vocabulary, device, output) and kept while they stay the
//! same: the parameter tensor of each segment is uploaded once.

use std::ops::Range;
use std::sync::Arc;

use candle_core::{DType, Device, DeviceLocation, Tensor};
use sampler_kernels::spec::{Program, StageId, StageOp};
use sampler_kernels::{Emit, HistoryInput, SegmentInput, SegmentOutput};

use crate::context::SamplingContext;
use crate::diagnostics;
use crate::draw::Drawn;
use crate::error::{Result, SamplerError};
use crate::param::RowParam;
use crate::processor::{Chain, Selector};
use crate::processors::EntropixMetrics;
use crate::stage::{Sink, Stage, LAST_ID};

/// Which implementation runs the chain.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ExecPath {
    /// Every run of processors with a fused stage as one fused op per segment, where the device
    /// has the fused kernels (every stage on the CPU; the stages of the GPU kernels on CUDA);
    /// the other processors, and every processor on Metal, as their plain tensor ops.
    #[default]
    Fused,
    /// Every processor as its own candle tensor ops (the reference).
    Plain,
}

impl std::str::FromStr for ExecPath {
    type Err = SamplerError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "fused" => Ok(ExecPath::Fused),
            "plain" => Ok(ExecPath::Plain),
            other => Err(SamplerError::Config(format!(
                "path must be fused or plain, got {other:?}"
            ))),
        }
    }
}

/// What a plan is built for.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct PlanKey {
    pub rows: usize,
    pub vocab: usize,
    pub device: DeviceLocation,
    /// Whether the plan draws (the selector's stage draws) or writes logits.
    pub draws: bool,
}

/// One fused segment of a plan.
#[derive(Debug)]
pub(crate) struct Segment {
    /// Indices of the chain's steps; `chain.len()` stands for the selector.
    pub steps: Range<usize>,
    pub program: Program,
    pub params: Option<Tensor>,
    pub sinks: Vec<Sink>,
    /// The plan's first fused segment.
    pub first: bool,
}

impl Segment {
    /// Whether the segment ends with the selector.
    pub fn has_selector(&self, chain_len: usize) -> bool {
        self.steps.end > chain_len
    }
}

/// A part of a plan.
#[derive(Debug)]
pub(crate) enum Part {
    /// Chain step i as its plain `apply`.
    Plain(usize),
    /// The selector as its plain `distribution` / `select`.
    PlainSelector,
    Fused(Segment),
}

/// The parts of a chain for one key, and the device copy of the row ids.
#[derive(Debug)]
pub(crate) struct Plan {
    pub key: PlanKey,
    pub parts: Vec<Part>,
    row_ids: Option<(Arc<[u32]>, Tensor)>,
}

/// The stage ids of a run.
fn ids(stages: &[Stage]) -> Vec<StageId> {
    stages.iter().map(|s| s.id()).collect()
}

/// The `[rows, columns]` parameter tensor of a segment.
fn pack(columns: &[RowParam], rows: usize, device: &Device) -> Result<Option<Tensor>> {
    if columns.is_empty() {
        return Ok(None);
    }
    diagnostics::count_setup(1);
    if let Some(values) = columns
        .iter()
        .map(RowParam::scalar)
        .collect::<Option<Vec<f32>>>()
    {
        let data = values.repeat(rows);
        return Ok(Some(Tensor::from_vec(data, (rows, columns.len()), device)?));
    }
    let cols = columns
        .iter()
        .map(|c| c.column(rows, device))
        .collect::<Result<Vec<_>>>()?;
    Ok(Some(Tensor::cat(&cols, 1)?.contiguous()?))
}

/// The stage with the vocabulary-dependent ids resolved.
fn resolve(op: StageOp<RowParam>, vocab: usize) -> StageOp<RowParam> {
    match op {
        StageOp::Ban(ids) if ids.contains(&LAST_ID) => StageOp::Ban(
            ids.iter()
                .map(|&i| if i == LAST_ID { vocab as u32 - 1 } else { i })
                .collect::<Vec<_>>()
                .into(),
        ),
        other => other,
    }
}

impl Plan {
    /// Builds the plan of `chain` + `selector` for `key` on `device`.
    pub fn build(
        chain: &Chain,
        selector: &dyn Selector,
        path: ExecPath,
        key: PlanKey,
        device: &Device,
    ) -> Result<Self> {
        let n = chain.len();
        let stages: Vec<Option<Stage>> = chain
            .steps()
            .iter()
            .map(|s| s.stage())
            .chain(std::iter::once(selector.stage()))
            .map(|s| if path == ExecPath::Fused { s } else { None })
            .collect();
        let mut parts = Vec::new();
        let mut i = 0;
        while i <= n {
            let Some(first) = &stages[i] else {
                parts.push(if i == n {
                    Part::PlainSelector
                } else {
                    Part::Plain(i)
                });
                i += 1;
                continue;
            };
            // The longest run from i the device fuses.
            let mut run = vec![first.clone()];
            if !sampler_kernels::supports(device, &ids(&run)) {
                parts.push(if i == n {
                    Part::PlainSelector
                } else {
                    Part::Plain(i)
                });
                i += 1;
                continue;
            }
            let mut j = i + 1;
            while j <= n {
                let Some(next) = &stages[j] else { break };
                run.push(next.clone());
                if !sampler_kernels::supports(device, &ids(&run)) {
                    run.pop();
                    break;
                }
                j += 1;
            }
            let sinks = run.iter().map(|s| s.sink.clone()).collect();
            let ops: Vec<StageOp<RowParam>> =
                run.into_iter().map(|s| resolve(s.op, key.vocab)).collect();
            let (program, columns) = Program::compile(ops);
            let params = pack(&columns, key.rows, device)?;
            let first = !parts.iter().any(|p| matches!(p, Part::Fused(_)));
            parts.push(Part::Fused(Segment {
                steps: i..j,
                program,
                params,
                sinks,
                first,
            }));
            i = j;
        }
        Ok(Self {
            key,
            parts,
            row_ids: None,
        })
    }

    /// The device copy of the context's row ids (uploaded when they change).
    pub fn row_ids(&mut self, ctx: &SamplingContext, device: &Device) -> Result<Option<Tensor>> {
        let Some(ids) = ctx.row_ids_shared() else {
            return Ok(None);
        };
        if ids.len() != self.key.rows {
            return Err(SamplerError::Shape(format!(
                "{} row ids for {} rows",
                ids.len(),
                self.key.rows
            )));
        }
        if let Some((cached, t)) = &self.row_ids {
            if Arc::ptr_eq(cached, ids) || **cached == **ids {
                return Ok(Some(t.clone()));
            }
        }
        diagnostics::count_setup(1);
        let t = Tensor::from_vec(ids.to_vec(), ids.len(), device)?;
        self.row_ids = Some((Arc::clone(ids), t.clone()));
        Ok(Some(t))
    }

    /// Whether the whole chain and its selector are one fused segment.
    pub fn single_segment(&self) -> Option<&Segment> {
        match self.parts.as_slice() {
            [Part::Fused(s)] => Some(s),
            _ => None,
        }
    }
}

/// The inputs of a segment call that come from the context.
pub(crate) struct SegmentContext {
    pub null: Option<Tensor>,
    pub attention: Option<Tensor>,
    pub state: Option<Tensor>,
}

impl Segment {
    /// Gathers what the segment reads from the context and its sinks.
    pub fn context(&self, x: &Tensor, ctx: &SamplingContext) -> Result<SegmentContext> {
        let null = if self.program.reads_null_logits() {
            let n = ctx.null_logits().ok_or_else(|| {
                SamplerError::MissingInput(
                    "classifier-free guidance needs the null logits (SamplingContext::with_null_logits, CLI --null-logits)"
                        .into(),
                )
            })?;
            if n.dims() != x.dims() {
                return Err(SamplerError::Shape(format!(
                    "null logits have shape {:?}, the logits {:?}",
                    n.dims(),
                    x.dims()
                )));
            }
            Some(crate::sampler::as_f32_on(n, x.device())?)
        } else {
            None
        };
        let attention = match (self.program.has_entropix(), ctx.attentions()) {
            (true, Some(a)) => {
                diagnostics::count_ops(1);
                let m = sampler_kernels::attention_metrics(a)?;
                let r = m.dim(0)?;
                if r != 1 && r != x.dim(0)? {
                    return Err(SamplerError::Shape(format!(
                        "attentions have {r} rows, the logits {}",
                        x.dim(0)?
                    )));
                }
                Some(m.to_device(x.device())?)
            }
            _ => None,
        };
        let state = self.sinks.iter().find_map(|s| match s {
            Sink::State(slot) => slot.get(),
            _ => None,
        });
        Ok(SegmentContext {
            null,
            attention,
            state,
        })
    }

    /// The segment's input record over `x` and `c`. The first segment of a plan gets the
    /// history even when it reads none of it, so that its ids are checked.
    pub fn input<'a>(
        &'a self,
        x: &'a Tensor,
        c: &'a SegmentContext,
        ctx: &'a SamplingContext,
        row_ids: Option<&'a Tensor>,
    ) -> SegmentInput<'a> {
        let history = if self.program.reads_history() || self.first {
            ctx.history().map(|h| {
                let (tokens, row_map) = h.buffer();
                HistoryInput {
                    tokens,
                    lens: h.lens(),
                    row_map,
                }
            })
        } else {
            None
        };
        SegmentInput {
            logits: x,
            params: self.params.as_ref(),
            null_logits: c.null.as_ref(),
            history,
            row_ids,
            seed: ctx.seed(),
            step: ctx.step(),
            state: c.state.as_ref(),
            attention: c.attention.as_ref(),
        }
    }

    /// Hands the segment's per-row outputs to the processors' slots.
    pub fn deliver(&self, out: &SegmentOutput) -> Result<()> {
        for sink in &self.sinks {
            match sink {
                Sink::None => {}
                Sink::State(slot) => {
                    if let Some(s) = &out.state {
                        slot.set(Some(s.clone()));
                    }
                }
                Sink::Metrics(slot) => {
                    if let Some(m) = &out.metrics {
                        diagnostics::count_ops(1);
                        slot.set(Some(EntropixMetrics::from_columns(m)?));
                    }
                }
            }
        }
        Ok(())
    }

    /// Runs the segment: its logits, or its draw.
    pub fn run(
        &self,
        x: &Tensor,
        ctx: &SamplingContext,
        row_ids: Option<&Tensor>,
        emit: Emit,
    ) -> Result<SegmentOutput> {
        let c = self.context(x, ctx)?;
        let inp = self.input(x, &c, ctx, row_ids);
        let out = sampler_kernels::run_segment(&self.program, &inp, emit)?;
        // Under `Emit::Logits` a selector's state comes back unchanged.
        self.deliver(&out)?;
        Ok(out)
    }
}

/// The drawn tokens of a segment's output.
pub(crate) fn drawn(out: &SegmentOutput) -> Result<Drawn> {
    match (&out.tokens, &out.probs, &out.logprobs) {
        (Some(t), Some(p), Some(l)) => Ok(Drawn {
            tokens: t.clone(),
            probs: p.clone(),
            logprobs: l.clone(),
        }),
        _ => Err(SamplerError::Shape(
            "the fused draw returned no tokens".into(),
        )),
    }
}

/// A `[rows]` u8 tensor of ones (all rows running).
pub(crate) fn ones_u8(rows: usize, device: &Device) -> Result<Tensor> {
    Ok(Tensor::ones(rows, DType::U8, device)?)
}
