//! The fused op of one chain segment: a compiled [`Program`] run over every row of a batch in
//! one call, reading each row once. It returns the processed logits, or, for a program that
//! ends with a selecting stage, the drawn tokens with their probabilities, and the stages'
//! per-row outputs (mirostat's mu, entropix's metrics).
//!
//! [`run_segment_append`] also writes each drawn token into the rows' history buffer in place
//! and advances the lengths and stop flags of an autoregressive loop, so that a whole AR
//! sampling step is one call.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use candle_core::op::BackpropOp;
use candle_core::{CpuStorage, DType, Device, InplaceOp1, Layout, Storage, Tensor};

use crate::cpu::{self, Emit as CpuEmit, Strided};
use crate::error::{invalid, KernelError, Result};
use crate::spec::{Program, StageId, ATTENTION_METRICS, ENTROPIX_METRICS};

static LAUNCHES: AtomicU64 = AtomicU64::new(0);

/// The number of device calls the fused ops of this crate have issued since the process
/// started (one per CPU op; one per kernel launch on a GPU). Tests count the calls of a step by
/// the difference.
pub fn launches() -> u64 {
    LAUNCHES.load(Ordering::Relaxed)
}

fn launched(n: u64) {
    LAUNCHES.fetch_add(n, Ordering::Relaxed);
}

/// Whether a selecting program draws or writes the distribution it would draw from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Emit {
    /// The processed logits (a selecting stage writes its truncated distribution, and keeps
    /// its state).
    Logits,
    /// The drawn tokens (only for a program that ends with a selecting stage).
    Tokens,
}

/// The histories a program reads.
#[derive(Clone, Copy, Debug)]
pub struct HistoryInput<'a> {
    /// `[history_rows, capacity]` u32 token rows; row r reads its first `lens[r]` entries.
    pub tokens: &'a Tensor,
    /// `[rows]` u32.
    pub lens: &'a Tensor,
    /// `[rows]` u32: the token row that row r reads; `None` = row r.
    pub row_map: Option<&'a Tensor>,
}

/// The inputs of one segment call.
#[derive(Clone, Copy, Debug)]
pub struct SegmentInput<'a> {
    /// `[rows, vocab]` f32, last dimension contiguous.
    pub logits: &'a Tensor,
    /// `[rows, program.columns]` f32; `None` when the program has no per-row parameter.
    pub params: Option<&'a Tensor>,
    /// `[rows, vocab]` f32, the unconditional logits of guidance.
    pub null_logits: Option<&'a Tensor>,
    /// The histories (for the stages that read them).
    pub history: Option<HistoryInput<'a>>,
    /// `[rows]` u32 Philox row ids; `None` = 0..rows.
    pub row_ids: Option<&'a Tensor>,
    /// The Philox key.
    pub seed: u64,
    /// The Philox step (the counter's first two words).
    pub step: u64,
    /// `[rows]` f32 mirostat mu; `None` = every row at its initial 2 tau.
    pub state: Option<&'a Tensor>,
    /// `[1 or rows, 4]` f32 attention metrics for entropix ([`attention_metrics`]).
    pub attention: Option<&'a Tensor>,
}

/// What one segment call produced, on the logits' device.
#[derive(Clone, Debug, Default)]
pub struct SegmentOutput {
    /// `[rows, vocab]` f32 processed logits (`Emit::Logits`).
    pub logits: Option<Tensor>,
    /// `[rows]` u32 drawn tokens (`Emit::Tokens`).
    pub tokens: Option<Tensor>,
    /// `[rows]` f32 probability of each drawn token under the processed distribution.
    pub probs: Option<Tensor>,
    /// `[rows]` f32 natural log of that probability, computed in f64.
    pub logprobs: Option<Tensor>,
    /// `[rows]` f32 mirostat mu after the step (programs with state).
    pub state: Option<Tensor>,
    /// `[rows, ENTROPIX_METRICS]` f32 (programs with entropix).
    pub metrics: Option<Tensor>,
    /// The rows whose processed logits are all -inf (`Emit::Logits`).
    pub empty_rows: Vec<usize>,
}

/// The AR bookkeeping of [`run_segment_append`].
#[derive(Clone, Copy, Debug)]
pub struct Append<'a> {
    /// `[rows]` u8: 1 = the row has stopped (it keeps its length); `None` = every row runs.
    pub stopped: Option<&'a Tensor>,
    /// `[rows]` u32: a row stops once its length reaches this; `None` = no limit.
    pub max_lens: Option<&'a Tensor>,
    /// A row that draws this token stops without appending it.
    pub stop_token: Option<u32>,
}

/// The advanced AR state.
#[derive(Clone, Debug)]
pub struct Appended {
    /// `[rows]` u32 lengths after the step.
    pub lens: Tensor,
    /// `[rows]` u8 stop flags after the step (when `Append::stopped` was given).
    pub stopped: Option<Tensor>,
}

/// Whether `device` runs the fused form of every stage of `stages` in one segment.
pub fn supports(device: &Device, stages: &[StageId]) -> bool {
    match device {
        Device::Cpu => true,
        Device::Cuda(_) => crate::gpu::cuda_supports(stages),
        Device::Metal(_) => false,
    }
}

fn rows_vocab(logits: &Tensor) -> Result<(usize, usize)> {
    if logits.dtype() != DType::F32 {
        return Err(invalid(format!(
            "logits must be f32, got {:?}",
            logits.dtype()
        )));
    }
    match logits.dims() {
        &[r, v] if v > 0 => Ok((r, v)),
        d => Err(invalid(format!(
            "logits must be [rows, vocab] with vocab > 0, got shape {d:?}"
        ))),
    }
}

fn check_tensor(t: &Tensor, what: &str, dtype: DType, dims: &[usize], dev: &Device) -> Result<()> {
    if t.dtype() != dtype {
        return Err(invalid(format!(
            "{what} must be {dtype:?}, got {:?}",
            t.dtype()
        )));
    }
    if t.dims() != dims {
        return Err(invalid(format!(
            "{what} must have shape {dims:?}, got {:?}",
            t.dims()
        )));
    }
    if !t.device().same_device(dev) {
        return Err(invalid(format!(
            "{what} is on {:?}, the logits on {dev:?}",
            t.device()
        )));
    }
    Ok(())
}

/// Checks every input against the program and the logits.
fn check_inputs(program: &Program, inp: &SegmentInput<'_>, emit: Emit) -> Result<(usize, usize)> {
    let (rows, vocab) = rows_vocab(inp.logits)?;
    let dev = inp.logits.device();
    if emit == Emit::Tokens && !program.selects() {
        return Err(invalid("a program without a selecting stage cannot draw"));
    }
    if let Some(i) = program.ops.iter().position(|s| s.selects()) {
        if i + 1 != program.ops.len() {
            return Err(invalid("a selecting stage must end its program"));
        }
    }
    match (inp.params, program.columns) {
        (None, 0) => {}
        (None, n) => return Err(invalid(format!("the program reads {n} parameter columns"))),
        (Some(p), n) => check_tensor(p, "params", DType::F32, &[rows, n], dev)?,
    }
    if let Some(n) = inp.null_logits {
        check_tensor(n, "null logits", DType::F32, &[rows, vocab], dev)?;
    }
    if let Some(h) = &inp.history {
        let (hrows, _) = h.tokens.dims2().map_err(|_| {
            invalid(format!(
                "history tokens must be 2-D, got {:?}",
                h.tokens.dims()
            ))
        })?;
        check_tensor(h.tokens, "history tokens", DType::U32, h.tokens.dims(), dev)?;
        check_tensor(h.lens, "history lengths", DType::U32, &[rows], dev)?;
        match h.row_map {
            Some(m) => check_tensor(m, "history row map", DType::U32, &[rows], dev)?,
            None if hrows != rows => {
                return Err(invalid(format!(
                    "history has {hrows} rows, the logits {rows}"
                )))
            }
            None => {}
        }
    }
    if let Some(ids) = inp.row_ids {
        check_tensor(ids, "row ids", DType::U32, &[rows], dev)?;
    }
    if let Some(s) = inp.state {
        check_tensor(s, "state", DType::F32, &[rows], dev)?;
    }
    if let Some(a) = inp.attention {
        let r = a.dims().first().copied().unwrap_or(0);
        let r = if r == 1 { 1 } else { rows };
        check_tensor(
            a,
            "attention metrics",
            DType::F32,
            &[r, ATTENTION_METRICS],
            dev,
        )?;
    }
    Ok((rows, vocab))
}

fn f32_rows<'a>(
    s: &'a CpuStorage,
    l: &Layout,
    rows: usize,
    cols: usize,
    what: &str,
) -> Result<Strided<'a, f32>> {
    let CpuStorage::F32(data) = s else {
        return Err(invalid(format!("{what} must be f32")));
    };
    strided(data, l, rows, cols, what)
}

fn u32_rows<'a>(
    s: &'a CpuStorage,
    l: &Layout,
    rows: usize,
    cols: usize,
    what: &str,
) -> Result<Strided<'a, u32>> {
    let CpuStorage::U32(data) = s else {
        return Err(invalid(format!("{what} must be u32")));
    };
    strided(data, l, rows, cols, what)
}

fn strided<'a, T>(
    data: &'a [T],
    l: &Layout,
    rows: usize,
    cols: usize,
    what: &str,
) -> Result<Strided<'a, T>> {
    let (row_stride, cols) = match l.stride() {
        [s] if *s == 1 || rows <= 1 => (1, 1),
        [s0, s1] if *s1 == 1 || cols <= 1 => (*s0, cols),
        s => {
            return Err(invalid(format!(
                "{what}: the last dimension must be contiguous (strides {s:?})"
            )))
        }
    };
    let data = &data[l.start_offset().min(data.len())..];
    Strided {
        data,
        stride: row_stride,
        cols,
    }
    .check(rows, what)
}

fn cpu_storage<'a>(g: &'a Storage, what: &str) -> Result<&'a CpuStorage> {
    match g {
        Storage::Cpu(s) => Ok(s),
        _ => Err(invalid(format!("{what} is not on the CPU"))),
    }
}

/// Runs the program on the CPU with `history_tokens` standing for the history token storage
/// (the write target of the append op holds it itself).
fn run_cpu(
    program: &Program,
    inp: &SegmentInput<'_>,
    emit: Emit,
    rows: usize,
    vocab: usize,
    history_tokens: Option<(&CpuStorage, &Layout)>,
) -> Result<cpu::Output> {
    let (lg, ll) = inp.logits.storage_and_layout();
    let logits = f32_rows(cpu_storage(&lg, "logits")?, ll, rows, vocab, "logits")?;
    let params_g = inp.params.map(|p| p.storage_and_layout());
    let params = match &params_g {
        Some((g, l)) => Some(f32_rows(
            cpu_storage(g, "params")?,
            l,
            rows,
            program.columns,
            "params",
        )?),
        None => None,
    };
    let null_g = inp.null_logits.map(|p| p.storage_and_layout());
    let null = match &null_g {
        Some((g, l)) => Some(f32_rows(
            cpu_storage(g, "null logits")?,
            l,
            rows,
            vocab,
            "null logits",
        )?),
        None => None,
    };
    let ids_g = inp.row_ids.map(|p| p.storage_and_layout());
    let row_ids = match &ids_g {
        Some((g, l)) => Some(u32_rows(cpu_storage(g, "row ids")?, l, rows, 1, "row ids")?.data),
        None => None,
    };
    let state_g = inp.state.map(|p| p.storage_and_layout());
    let state = match &state_g {
        Some((g, l)) => Some(f32_rows(cpu_storage(g, "state")?, l, rows, 1, "state")?.data),
        None => None,
    };
    let attn_g = inp.attention.map(|p| p.storage_and_layout());
    let attention = match (&attn_g, inp.attention) {
        (Some((g, l)), Some(t)) => {
            let r = t.dim(0)?;
            let mut a = f32_rows(
                cpu_storage(g, "attention")?,
                l,
                r,
                ATTENTION_METRICS,
                "attention",
            )?;
            if r == 1 {
                a.stride = 0;
            }
            Some(a)
        }
        _ => None,
    };
    let hist_g = inp.history.map(|h| {
        (
            h.tokens.dims2().map(|d| d.1).unwrap_or(0),
            h.tokens.dim(0).unwrap_or(0),
            h.lens.storage_and_layout(),
            h.row_map.map(|m| m.storage_and_layout()),
            if history_tokens.is_none() {
                Some(h.tokens.storage_and_layout())
            } else {
                None
            },
        )
    });
    let history = match &hist_g {
        None => None,
        Some((cap, hrows, (lg, ll), map, tok)) => {
            let (ts, tl) = match (history_tokens, tok) {
                (Some(t), _) => t,
                (None, Some((g, l))) => (cpu_storage(g, "history tokens")?, *l),
                (None, None) => return Err(invalid("history tokens missing")),
            };
            let tokens = u32_rows(ts, tl, *hrows, *cap, "history tokens")?;
            let lens = u32_rows(
                cpu_storage(lg, "history lengths")?,
                ll,
                rows,
                1,
                "history lengths",
            )?
            .data;
            let row_map = match map {
                Some((g, l)) => Some(
                    u32_rows(
                        cpu_storage(g, "history row map")?,
                        l,
                        rows,
                        1,
                        "history row map",
                    )?
                    .data,
                ),
                None => None,
            };
            Some(cpu::History {
                tokens,
                lens: &lens[..rows],
                row_map: row_map.map(|m| &m[..rows]),
            })
        }
    };
    let seg = cpu::Segment {
        logits,
        null,
        params,
        history,
        row_ids: row_ids.map(|r| &r[..rows]),
        seed: inp.seed,
        step: inp.step,
        state: state.map(|s| &s[..rows]),
        attention,
    };
    let cpu_emit = match emit {
        Emit::Logits => CpuEmit::Logits,
        Emit::Tokens => CpuEmit::Tokens,
    };
    cpu::run(program, &seg, rows, cpu_emit, emit == Emit::Logits)
}

fn cpu_tensor(s: CpuStorage, shape: impl Into<candle_core::Shape>) -> Tensor {
    Tensor::from_storage(Storage::Cpu(s), shape, BackpropOp::none(), false)
}

/// The tensors of a CPU run.
fn cpu_outputs(
    program: &Program,
    out: cpu::Output,
    rows: usize,
    vocab: usize,
    emit: Emit,
) -> SegmentOutput {
    let r = &out.rows;
    let mut o = SegmentOutput {
        empty_rows: r
            .iter()
            .enumerate()
            .filter(|(_, x)| x.empty)
            .map(|(i, _)| i)
            .collect(),
        ..Default::default()
    };
    if let Some(l) = out.logits {
        o.logits = Some(cpu_tensor(CpuStorage::F32(l), (rows, vocab)));
    }
    if emit == Emit::Tokens {
        o.tokens = Some(cpu_tensor(
            CpuStorage::U32(r.iter().map(|x| x.token).collect()),
            rows,
        ));
        o.probs = Some(cpu_tensor(
            CpuStorage::F32(r.iter().map(|x| x.prob).collect()),
            rows,
        ));
        o.logprobs = Some(cpu_tensor(
            CpuStorage::F32(r.iter().map(|x| x.logprob).collect()),
            rows,
        ));
    }
    if program.has_state() {
        o.state = Some(cpu_tensor(
            CpuStorage::F32(r.iter().map(|x| x.mu).collect()),
            rows,
        ));
    }
    if program.has_entropix() {
        let m: Vec<f32> = r.iter().flat_map(|x| x.metrics).collect();
        o.metrics = Some(cpu_tensor(CpuStorage::F32(m), (rows, ENTROPIX_METRICS)));
    }
    o
}

/// Runs one segment over every row of the batch in one call.
pub fn run_segment(program: &Program, inp: &SegmentInput<'_>, emit: Emit) -> Result<SegmentOutput> {
    let (rows, vocab) = check_inputs(program, inp, emit)?;
    if rows == 0 {
        return empty_output(program, inp, vocab, emit);
    }
    match inp.logits.device() {
        Device::Cpu => {
            let out = run_cpu(program, inp, emit, rows, vocab, None)?;
            launched(1);
            Ok(cpu_outputs(program, out, rows, vocab, emit))
        }
        Device::Cuda(_) => {
            let (out, n) = crate::gpu::cuda_segment(program, inp, emit, rows, vocab)?;
            launched(n);
            Ok(out)
        }
        Device::Metal(_) => Err(KernelError::Unsupported(
            "the Metal kernels have not been verified on a Mac yet; run the plain path".into(),
        )),
    }
}

fn empty_output(
    program: &Program,
    inp: &SegmentInput<'_>,
    vocab: usize,
    emit: Emit,
) -> Result<SegmentOutput> {
    let dev = inp.logits.device();
    let mut o = SegmentOutput::default();
    match emit {
        Emit::Logits => o.logits = Some(Tensor::zeros((0, vocab), DType::F32, dev)?),
        Emit::Tokens => {
            o.tokens = Some(Tensor::zeros(0, DType::U32, dev)?);
            o.probs = Some(Tensor::zeros(0, DType::F32, dev)?);
            o.logprobs = Some(Tensor::zeros(0, DType::F32, dev)?);
        }
    }
    if program.has_state() {
        o.state = Some(Tensor::zeros(0, DType::F32, dev)?);
    }
    if program.has_entropix() {
        o.metrics = Some(Tensor::zeros((0, ENTROPIX_METRICS), DType::F32, dev)?);
    }
    Ok(o)
}

/// The in-place op behind [`run_segment_append`]: the history buffer is the written tensor;
/// everything else rides in the op and is read from its storage.
struct AppendOp<'a> {
    program: &'a Program,
    inp: SegmentInput<'a>,
    append: Append<'a>,
    rows: usize,
    vocab: usize,
    result: Mutex<Option<Result<AppendResult>>>,
}

/// What the append op leaves for the caller: the row outputs, the new lengths and, with stop
/// flags, the new flags.
type AppendResult = (cpu::Output, Vec<u32>, Option<Vec<u8>>);

impl InplaceOp1 for AppendOp<'_> {
    fn name(&self) -> &'static str {
        "sampler_segment_append"
    }

    fn cpu_fwd(&self, storage: &mut CpuStorage, layout: &Layout) -> candle_core::Result<()> {
        let r = self.cpu(storage, layout);
        let failed = r.is_err();
        *self.result.lock().unwrap_or_else(|e| e.into_inner()) = Some(r);
        if failed {
            candle_core::bail!("sampler_segment_append failed (see the op's error)")
        }
        Ok(())
    }
}

impl AppendOp<'_> {
    fn cpu(
        &self,
        storage: &mut CpuStorage,
        layout: &Layout,
    ) -> Result<(cpu::Output, Vec<u32>, Option<Vec<u8>>)> {
        let (rows, vocab) = (self.rows, self.vocab);
        let out = run_cpu(
            self.program,
            &self.inp,
            Emit::Tokens,
            rows,
            vocab,
            Some((storage, layout)),
        )?;
        let hist = self
            .inp
            .history
            .ok_or_else(|| invalid("append needs the history"))?;
        let lens = read_u32(hist.lens, rows)?;
        let stopped = match self.append.stopped {
            Some(s) => Some(read_u8(s, rows)?),
            None => None,
        };
        let max_lens = match self.append.max_lens {
            Some(m) => Some(read_u32(m, rows)?),
            None => None,
        };
        let cap = layout.dims().get(1).copied().unwrap_or(0);
        let row_stride = layout.stride().first().copied().unwrap_or(0);
        let CpuStorage::U32(buf) = storage else {
            return Err(invalid("history tokens must be u32"));
        };
        let start = layout.start_offset();
        let mut new_lens = lens.clone();
        let mut new_stopped = stopped.clone();
        for r in 0..rows {
            let token = out.rows[r].token;
            let running = match &stopped {
                Some(s) => s[r] == 0,
                None => true,
            };
            let is_stop = self.append.stop_token == Some(token);
            if running && !is_stop {
                let at = lens[r] as usize;
                if at >= cap {
                    return Err(invalid(format!(
                        "row {r}: the history buffer (capacity {cap}) is full"
                    )));
                }
                buf[start + r * row_stride + at] = token;
                new_lens[r] += 1;
            }
            if let Some(s) = new_stopped.as_mut() {
                let limit = max_lens.as_ref().is_some_and(|m| new_lens[r] >= m[r]);
                if is_stop || limit {
                    s[r] = 1;
                }
            }
        }
        Ok((out, new_lens, new_stopped))
    }
}

fn read_u32(t: &Tensor, rows: usize) -> Result<Vec<u32>> {
    let (g, l) = t.storage_and_layout();
    Ok(u32_rows(cpu_storage(&g, "lengths")?, l, rows, 1, "lengths")?.data[..rows].to_vec())
}

fn read_u8(t: &Tensor, rows: usize) -> Result<Vec<u8>> {
    let (g, l) = t.storage_and_layout();
    let CpuStorage::U8(data) = cpu_storage(&g, "stop flags")? else {
        return Err(invalid("stop flags must be u8"));
    };
    Ok(strided(data, l, rows, 1, "stop flags")?.data[..rows].to_vec())
}

/// Runs a selecting segment, then appends each running row's token to its history in place
/// (`inp.history.tokens` is written: a `[rows, capacity]` buffer without a row map), and
/// returns the new lengths and stop flags. A row stops when it draws `stop_token` (which is
/// not appended) or when its length reaches its `max_lens` entry; a stopped row keeps its
/// length and history.
pub fn run_segment_append(
    program: &Program,
    inp: &SegmentInput<'_>,
    append: Append<'_>,
) -> Result<(SegmentOutput, Appended)> {
    let (rows, vocab) = check_inputs(program, inp, Emit::Tokens)?;
    let dev = inp.logits.device();
    let hist = inp
        .history
        .ok_or_else(|| invalid("appending needs the history"))?;
    if hist.row_map.is_some() || hist.tokens.dim(0)? != rows {
        return Err(invalid("appending needs one history row per logits row"));
    }
    if let Some(s) = append.stopped {
        check_tensor(s, "stop flags", DType::U8, &[rows], dev)?;
    }
    if let Some(m) = append.max_lens {
        check_tensor(m, "max lengths", DType::U32, &[rows], dev)?;
    }
    if rows == 0 {
        let out = empty_output(program, inp, vocab, Emit::Tokens)?;
        return Ok((
            out,
            Appended {
                lens: hist.lens.clone(),
                stopped: append.stopped.cloned(),
            },
        ));
    }
    match dev {
        Device::Cpu => {
            let op = AppendOp {
                program,
                inp: *inp,
                append,
                rows,
                vocab,
                result: Mutex::new(None),
            };
            let run = hist.tokens.inplace_op1(&op);
            let result = op.result.into_inner().unwrap_or_else(|e| e.into_inner());
            let (out, lens, stopped) = match (run, result) {
                (_, Some(Err(e))) => return Err(e),
                (Err(e), _) => return Err(e.into()),
                (Ok(()), Some(Ok(r))) => r,
                (Ok(()), None) => return Err(invalid("the append op did not run")),
            };
            launched(1);
            let o = cpu_outputs(program, out, rows, vocab, Emit::Tokens);
            Ok((
                o,
                Appended {
                    lens: cpu_tensor(CpuStorage::U32(lens), rows),
                    stopped: stopped.map(|s| cpu_tensor(CpuStorage::U8(s), rows)),
                },
            ))
        }
        Device::Cuda(_) => {
            let (out, appended, n) =
                crate::gpu::cuda_segment_append(program, inp, append, rows, vocab)?;
            launched(n);
            Ok((out, appended))
        }
        Device::Metal(_) => Err(KernelError::Unsupported(
            "the Metal kernels have not been verified on a Mac yet; run the plain path".into(),
        )),
    }
}

/// Entropix's attention metrics: for scores `[layers, heads, q, k]` (shared by every row) or
/// `[rows, layers, heads, q, k]`, a `[1 or rows, 4]` f32 tensor of (attention entropy,
/// attention varentropy, agreement, interaction strength), in one call.
pub fn attention_metrics(scores: &Tensor) -> Result<Tensor> {
    let dims: [usize; 5] = match scores.dims() {
        &[l, h, q, k] => [1, l, h, q, k],
        &[r, l, h, q, k] => [r, l, h, q, k],
        d => {
            return Err(invalid(format!(
                "attention scores must be [layers, heads, q, k] or [rows, layers, heads, q, k], got {d:?}"
            )))
        }
    };
    let dev = scores.device().clone();
    let host = scores
        .to_dtype(DType::F32)?
        .to_device(&Device::Cpu)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    let m = cpu::entropix::attention_metrics(&host, dims).map_err(KernelError::Invalid)?;
    launched(1);
    let flat: Vec<f32> = m.into_iter().flatten().collect();
    Ok(Tensor::from_vec(flat, (dims[0], ATTENTION_METRICS), &dev)?)
}
