//! The fused path (SPEC §2): two chain segments as single sampler-kernels custom ops, with the
//! same meaning as the plain processors they replace.
//!
//! - [`FusedPenalties`]: stop-token / listed bans, repetition penalty (divide form) and length
//!   penalty in one gather-scatter (`sampler_kernels::fused_penalties`). Bans become -inf
//!   entries of the op's vocabulary bias, applied last; that equals banning first, because the
//!   penalties keep -inf at -inf.
//! - [`FusedFilter`]: min-p -> top-k -> top-p -> temperature (dynamic or plain) -> top-n-sigma
//!   in one op (`sampler_kernels::fused_filter`), and, at the tail of a chain, together with the
//!   draw (`sampler_kernels::fused_sample`, see [`LogitsProcessor::apply_and_draw`]).
//!
//! Each fused processor carries the equivalent plain processors and runs them on a device
//! without fused kernels: the CPU always has them, CUDA when built with the `cuda` feature.
//! Metal runs the plain path until the Metal kernels have been run on a Mac.
//!
//! [`SamplerBuilder`](crate::SamplerBuilder) with [`ExecPath::Fused`] (the default) builds the
//! plain chain, then replaces the segments it recognises by name (see [`fuse`]); processors it
//! does not know stay as they are.

use std::sync::Mutex;

use candle_core::{DType, Device, DeviceLocation, Tensor};
use sampler_kernels::{filter_param as fp, penalty_param as pp, FILTER_PARAMS, PENALTY_PARAMS};

use crate::context::SamplingContext;
use crate::draw::{draw, DrawRule, Drawn};
use crate::error::{Result, SamplerError};
use crate::param::RowParam;
use crate::processor::{Chain, LogitsProcessor};
use crate::processors::{
    BanTokens, DynamicTemperature, LengthPenalty, MinP, RepetitionPenalty, Temperature, TopK,
    TopNSigma, TopP,
};
use crate::vocab_cache::VocabCache;

/// Which implementation runs the chain's fusable segments.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ExecPath {
    /// One custom op per recognised segment, the filter segment fused with the draw, wherever
    /// the device has the fused kernels (CPU; CUDA with the `cuda` feature). Metal and other
    /// devices run the plain processors (the Metal kernels are not yet verified on a Mac).
    #[default]
    Fused,
    /// Every processor as its own candle tensor ops.
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

/// Whether the fused kernels run on `device`.
pub fn fused_on(device: &Device) -> bool {
    match device {
        Device::Cpu => true,
        Device::Cuda(_) => cfg!(feature = "cuda"),
        Device::Metal(_) => false,
    }
}

/// The `[rows, n]` f32 parameter tensor of a fused op. All-scalar parameters (the common case)
/// are uploaded once and reused while rows, device and values stay the same.
#[derive(Debug, Default)]
struct PackedParams(Mutex<Option<Packed>>);

/// Rows, device and values of a packed parameter tensor, and the tensor.
type Packed = (usize, DeviceLocation, Vec<f32>, Tensor);

impl Clone for PackedParams {
    fn clone(&self) -> Self {
        Self::default()
    }
}

impl PackedParams {
    fn get(&self, cols: &[RowParam], rows: usize, device: &Device) -> Result<Tensor> {
        let Some(values) = cols
            .iter()
            .map(RowParam::scalar)
            .collect::<Option<Vec<f32>>>()
        else {
            let columns = cols
                .iter()
                .map(|c| c.column(rows, device))
                .collect::<Result<Vec<_>>>()?;
            return Ok(Tensor::cat(&columns, 1)?);
        };
        let mut slot = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((r, loc, v, t)) = slot.as_ref() {
            if *r == rows && *loc == device.location() && *v == values {
                return Ok(t.clone());
            }
        }
        let t = Tensor::from_vec(values.repeat(rows), (rows, cols.len()), device)?;
        *slot = Some((rows, device.location(), values, t.clone()));
        Ok(t)
    }
}

/// The `[rows]` u32 Philox row ids of a context, uploaded once while they stay the same.
#[derive(Debug, Default)]
struct RowIds(Mutex<Option<(Vec<u32>, DeviceLocation, Tensor)>>);

impl Clone for RowIds {
    fn clone(&self) -> Self {
        Self::default()
    }
}

impl RowIds {
    fn get(&self, ctx: &SamplingContext, rows: usize, device: &Device) -> Result<Tensor> {
        let ids = ctx.row_ids(rows)?;
        let mut slot = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((v, loc, t)) = slot.as_ref() {
            if *v == ids && *loc == device.location() {
                return Ok(t.clone());
            }
        }
        let t = Tensor::from_vec(ids.clone(), rows, device)?;
        *slot = Some((ids, device.location(), t.clone()));
        Ok(t)
    }
}

/// The parameters of the filter segment; each takes a scalar or a `[rows]` tensor. The
/// defaults are every stage's "off" value.
#[derive(Clone, Debug)]
pub struct FilterParams {
    /// Min-p in [0, 1]; 0 = off.
    pub min_p: RowParam,
    /// Tokens min-p always keeps.
    pub min_tokens: RowParam,
    /// Top-k; <= 0 = off.
    pub top_k: RowParam,
    /// Top-p in [0, 1]; 1 = off.
    pub top_p: RowParam,
    /// Temperature; <= 0 leaves the logits alone (and means a greedy draw in a config).
    pub temperature: RowParam,
    /// Dynamic temperature's lower end; negative = off.
    pub min_temperature: RowParam,
    /// The n of top-n-sigma; <= 0 = off.
    pub top_n_sigma: RowParam,
}

impl Default for FilterParams {
    fn default() -> Self {
        Self {
            min_p: 0.0.into(),
            min_tokens: 32.0.into(),
            top_k: 0.0.into(),
            top_p: 1.0.into(),
            temperature: 1.0.into(),
            min_temperature: (-1.0).into(),
            top_n_sigma: 0.0.into(),
        }
    }
}

fn is_scalar(p: &RowParam, v: impl Fn(f32) -> bool) -> bool {
    p.scalar().is_some_and(v)
}

/// min-p -> top-k -> top-p -> temperature (dynamic or plain) -> top-n-sigma as one op, and with
/// the draw as one op when it ends a chain.
#[derive(Clone, Debug)]
pub struct FusedFilter {
    params: FilterParams,
    /// The same segment as plain processors, for devices without the fused kernels.
    plain: Chain,
    packed: PackedParams,
    row_ids: RowIds,
}

impl FusedFilter {
    /// Validates the parameters with the plain processors' rules (off values included).
    pub fn new(params: FilterParams) -> Result<Self> {
        let p = &params;
        let mut plain = Chain::new();
        let min_p = MinP::new(p.min_p.clone(), p.min_tokens.clone())?;
        if !is_scalar(&p.min_p, |v| v == 0.0) {
            plain.push(min_p);
        }
        let top_k = TopK::new(p.top_k.clone())?;
        if !is_scalar(&p.top_k, |v| v <= 0.0) {
            plain.push(top_k);
        }
        let top_p = TopP::new(p.top_p.clone())?;
        if !is_scalar(&p.top_p, |v| v >= 1.0) {
            plain.push(top_p);
        }
        let dynamic = DynamicTemperature::new(p.temperature.clone(), p.min_temperature.clone())?;
        match (p.temperature.scalar(), p.min_temperature.scalar()) {
            (Some(t), Some(tm)) if !DynamicTemperature::is_dynamic(t, tm) => {
                if t > 0.0 && t != 1.0 {
                    plain.push(Temperature::new(t)?);
                }
            }
            _ => {
                plain.push(dynamic);
            }
        }
        let top_n_sigma = TopNSigma::new(p.top_n_sigma.clone())?;
        if !is_scalar(&p.top_n_sigma, |v| v <= 0.0) {
            plain.push(top_n_sigma);
        }
        Ok(Self {
            params,
            plain,
            packed: PackedParams::default(),
            row_ids: RowIds::default(),
        })
    }

    pub fn params(&self) -> &FilterParams {
        &self.params
    }

    /// The `[rows, FILTER_PARAMS]` tensor; `greedy` fills the GREEDY column.
    fn packed(&self, greedy: RowParam, rows: usize, device: &Device) -> Result<Tensor> {
        let p = &self.params;
        let mut cols: [RowParam; FILTER_PARAMS] = std::array::from_fn(|_| RowParam::Scalar(0.0));
        cols[fp::MIN_P] = p.min_p.clone();
        cols[fp::MIN_TOKENS] = p.min_tokens.clone();
        cols[fp::TOP_K] = p.top_k.clone();
        cols[fp::TOP_P] = p.top_p.clone();
        cols[fp::TEMPERATURE] = p.temperature.clone();
        cols[fp::MIN_TEMPERATURE] = p.min_temperature.clone();
        cols[fp::TOP_N_SIGMA] = p.top_n_sigma.clone();
        cols[fp::GREEDY] = greedy;
        self.packed.get(&cols, rows, device)
    }
}

impl LogitsProcessor for FusedFilter {
    fn name(&self) -> &'static str {
        "fused_filter"
    }

    fn apply(&self, logits: &Tensor, ctx: &SamplingContext) -> Result<Tensor> {
        if !fused_on(logits.device()) {
            return self.plain.apply(logits, ctx);
        }
        let params = self.packed(0.0.into(), logits.dim(0)?, logits.device())?;
        Ok(sampler_kernels::fused_filter(logits, &params)?)
    }

    fn fuses_draw(&self) -> bool {
        true
    }

    fn apply_and_draw(
        &self,
        logits: &Tensor,
        rule: &DrawRule,
        ctx: &SamplingContext,
    ) -> Result<Drawn> {
        let dev = logits.device();
        if !fused_on(dev) {
            return draw(&self.plain.apply(logits, ctx)?, rule, ctx);
        }
        let rows = logits.dim(0)?;
        let greedy = match rule {
            DrawRule::Greedy => RowParam::Scalar(1.0),
            DrawRule::Multinomial => RowParam::Scalar(0.0),
            DrawRule::PerRow(mask) => RowParam::PerRow(mask.clone()),
        };
        let params = self.packed(greedy, rows, dev)?;
        let row_ids = self.row_ids.get(ctx, rows, dev)?;
        let out = sampler_kernels::fused_sample(logits, &params, &row_ids, ctx.seed(), ctx.step())?;
        Ok(Drawn {
            tokens: out.narrow(1, 0, 1)?.squeeze(1)?.to_dtype(DType::U32)?,
            probs: out.narrow(1, 1, 1)?.squeeze(1)?.contiguous()?,
        })
    }

    fn clone_box(&self) -> Box<dyn LogitsProcessor> {
        Box::new(self.clone())
    }
}

/// The parameters of the penalty segment. The defaults are every penalty's "off" value.
#[derive(Clone, Debug)]
pub struct PenaltyParams {
    /// Repetition penalty (divide form) > 0; 1 with decay 0 = off.
    pub repetition: RowParam,
    pub decay: RowParam,
    /// 0 = the whole history.
    pub window: RowParam,
    /// Length penalty exponent on the stop token; 0 = off.
    pub length: RowParam,
    /// None = the last id of the vocabulary.
    pub stop_token: Option<u32>,
    /// Ban the stop token (the NAR stage).
    pub ban_stop_token: bool,
    /// Further banned ids.
    pub ban_tokens: Vec<u32>,
}

impl Default for PenaltyParams {
    fn default() -> Self {
        Self {
            repetition: 1.0.into(),
            decay: 0.0.into(),
            window: 75.0.into(),
            length: 0.0.into(),
            stop_token: None,
            ban_stop_token: false,
            ban_tokens: Vec::new(),
        }
    }
}

/// Bans, repetition penalty and length penalty as one op.
#[derive(Clone, Debug)]
pub struct FusedPenalties {
    params: PenaltyParams,
    /// The same segment as plain processors, for devices without the fused kernels.
    plain: Chain,
    packed: PackedParams,
    bias: VocabCache,
}

impl FusedPenalties {
    /// Validates the parameters with the plain processors' rules.
    pub fn new(params: PenaltyParams) -> Result<Self> {
        let p = &params;
        let mut plain = Chain::new();
        if p.ban_stop_token {
            plain.push(BanTokens::stop_token(p.stop_token));
        }
        if !p.ban_tokens.is_empty() {
            plain.push(BanTokens::new(p.ban_tokens.clone()));
        }
        let rep = RepetitionPenalty::new(p.repetition.clone(), p.decay.clone(), p.window.clone())?;
        if !(is_scalar(&p.repetition, |v| v == 1.0) && is_scalar(&p.decay, |v| v == 0.0)) {
            plain.push(rep);
        }
        let length = LengthPenalty::new(p.length.clone(), p.stop_token)?;
        if !is_scalar(&p.length, |v| v == 0.0) {
            plain.push(length);
        }
        Ok(Self {
            params,
            plain,
            packed: PackedParams::default(),
            bias: VocabCache::default(),
        })
    }

    pub fn params(&self) -> &PenaltyParams {
        &self.params
    }

    /// The `[vocab]` bias row: -inf at the banned ids, 0 elsewhere; None without bans.
    fn bias(&self, vocab: usize, device: &Device) -> Result<Option<Tensor>> {
        let p = &self.params;
        if !p.ban_stop_token && p.ban_tokens.is_empty() {
            return Ok(None);
        }
        let row = self.bias.get(vocab, device, || {
            let mut row = vec![0f32; vocab];
            let stop = p
                .ban_stop_token
                .then(|| p.stop_token.unwrap_or(vocab as u32 - 1));
            for &id in p.ban_tokens.iter().chain(stop.iter()) {
                if id as usize >= vocab {
                    return Err(SamplerError::TokenOutOfRange {
                        what: "ban_tokens",
                        id: id as i64,
                        vocab,
                    });
                }
                row[id as usize] = f32::NEG_INFINITY;
            }
            Ok(Tensor::from_vec(row, vocab, device)?)
        })?;
        Ok(Some(row))
    }
}

impl LogitsProcessor for FusedPenalties {
    fn name(&self) -> &'static str {
        "fused_penalties"
    }

    fn apply(&self, logits: &Tensor, ctx: &SamplingContext) -> Result<Tensor> {
        let dev = logits.device();
        if !fused_on(dev) {
            return self.plain.apply(logits, ctx);
        }
        let (rows, vocab) = logits.dims2()?;
        let p = &self.params;
        let bias = self.bias(vocab, dev)?;
        // Without a history the plain penalties do nothing (the length penalty included).
        let (tokens, lens, length) = match ctx.history() {
            Some(h) => {
                let tokens = match h.width() {
                    0 => Tensor::zeros((rows, 1), DType::U32, dev)?,
                    _ => h.tokens()?,
                };
                (tokens, h.lens().clone(), p.length.clone())
            }
            None => {
                let zeros = Tensor::zeros((rows, 1), DType::U32, dev)?;
                (zeros.clone(), zeros.squeeze(1)?, RowParam::Scalar(0.0))
            }
        };
        let stop = p.stop_token.unwrap_or(vocab as u32 - 1);
        if !is_scalar(&length, |v| v == 0.0) && stop as usize >= vocab {
            return Err(SamplerError::TokenOutOfRange {
                what: "stop_token",
                id: stop as i64,
                vocab,
            });
        }
        let mut cols: [RowParam; PENALTY_PARAMS] = std::array::from_fn(|_| RowParam::Scalar(0.0));
        cols[pp::REPETITION] = p.repetition.clone();
        cols[pp::DECAY] = p.decay.clone();
        cols[pp::WINDOW] = p.window.clone();
        // SIGN_AWARE, FREQUENCY and PRESENCE stay 0: sampler-core has no plain processor for
        // them yet, so the fused path must not apply them either.
        cols[pp::LENGTH] = length;
        cols[pp::STOP_TOKEN] = (stop as f32).into();
        let params = self.packed.get(&cols, rows, dev)?;
        Ok(sampler_kernels::fused_penalties(
            logits,
            &tokens,
            &lens,
            &params,
            bias.as_ref(),
        )?)
    }

    fn clone_box(&self) -> Box<dyn LogitsProcessor> {
        Box::new(self.clone())
    }
}

/// What the builder used to build its chain, for [`fuse`].
#[derive(Clone, Debug)]
pub(crate) struct BuilderParams {
    pub filter: FilterParams,
    pub penalties: PenaltyParams,
}

const PENALTY_NAMES: [&str; 4] = [
    "ban_tokens",
    "logit_bias",
    "repetition_penalty",
    "length_penalty",
];
const FILTER_NAMES: [&str; 6] = [
    "min_p",
    "top_k",
    "top_p",
    "temperature",
    "dynamic_temperature",
    "top_n_sigma",
];

/// Replaces the segments of a builder-made chain that the fused ops cover:
///
/// - the leading run of bans / logit bias / repetition / length penalty, when it holds a
///   repetition or length penalty, by [`FusedPenalties`] (a logit bias stays a plain step in
///   front of it: a bias does not commute with the divisions);
/// - the run of min-p .. top-n-sigma by [`FusedFilter`]; a chain without any of them gets an
///   identity `FusedFilter` at its end, so that the draw is fused all the same.
///
/// Each stage's parameters are taken from `b` when its processor is in the run and are "off"
/// otherwise. A segment whose processors are not one contiguous run of distinct names (someone
/// else placed one of them elsewhere) is left plain.
pub(crate) fn fuse(chain: Chain, b: &BuilderParams) -> Result<Chain> {
    let steps = chain.steps();
    let names = chain.names();
    let mut out = Chain::new();
    let mut next = 0;

    let run = names
        .iter()
        .take_while(|n| PENALTY_NAMES.contains(n))
        .count();
    let in_run = |n: &str| names[..run].iter().filter(|m| **m == n).count();
    let alone = !names[run..].iter().any(|n| PENALTY_NAMES.contains(n));
    let (reps, lengths) = (in_run("repetition_penalty"), in_run("length_penalty"));
    if alone && reps + lengths > 0 && reps <= 1 && lengths <= 1 {
        let pb = &b.penalties;
        // The ban steps are folded only when they are exactly the builder's.
        let expected_bans = pb.ban_stop_token as usize + !pb.ban_tokens.is_empty() as usize;
        let fold_bans = in_run("ban_tokens") == expected_bans;
        for (step, name) in steps[..run].iter().zip(&names) {
            if *name == "logit_bias" || (*name == "ban_tokens" && !fold_bans) {
                out.push_boxed(step.clone());
            }
        }
        let off = PenaltyParams::default();
        out.push(FusedPenalties::new(PenaltyParams {
            repetition: if reps > 0 {
                pb.repetition.clone()
            } else {
                off.repetition
            },
            decay: if reps > 0 {
                pb.decay.clone()
            } else {
                off.decay
            },
            window: if reps > 0 {
                pb.window.clone()
            } else {
                off.window
            },
            length: if lengths > 0 {
                pb.length.clone()
            } else {
                off.length
            },
            stop_token: pb.stop_token,
            ban_stop_token: fold_bans && pb.ban_stop_token,
            ban_tokens: if fold_bans {
                pb.ban_tokens.clone()
            } else {
                Vec::new()
            },
        })?);
        next = run;
    }

    let rest = &names[next..];
    let Some(start) = rest
        .iter()
        .position(|n| FILTER_NAMES.contains(n))
        .map(|s| next + s)
    else {
        steps[next..].iter().for_each(|s| {
            out.push_boxed(s.clone());
        });
        out.push(FusedFilter::new(FilterParams::default())?);
        return Ok(out);
    };
    let len = names[start..]
        .iter()
        .take_while(|n| FILTER_NAMES.contains(n))
        .count();
    let run_names = &names[start..start + len];
    let distinct = run_names
        .iter()
        .enumerate()
        .all(|(i, n)| !run_names[..i].contains(n));
    let alone = !names[start + len..]
        .iter()
        .any(|n| FILTER_NAMES.contains(n));
    if !(distinct && alone) {
        steps[next..].iter().for_each(|s| {
            out.push_boxed(s.clone());
        });
        return Ok(out);
    }
    let has = |n: &str| run_names.contains(&n);
    let (fb, off) = (&b.filter, FilterParams::default());
    let temperature = has("temperature") || has("dynamic_temperature");
    let filter = FusedFilter::new(FilterParams {
        min_p: if has("min_p") {
            fb.min_p.clone()
        } else {
            off.min_p
        },
        min_tokens: if has("min_p") {
            fb.min_tokens.clone()
        } else {
            off.min_tokens
        },
        top_k: if has("top_k") {
            fb.top_k.clone()
        } else {
            off.top_k
        },
        top_p: if has("top_p") {
            fb.top_p.clone()
        } else {
            off.top_p
        },
        temperature: if temperature {
            fb.temperature.clone()
        } else {
            off.temperature
        },
        min_temperature: if temperature {
            fb.min_temperature.clone()
        } else {
            off.min_temperature
        },
        top_n_sigma: if has("top_n_sigma") {
            fb.top_n_sigma.clone()
        } else {
            off.top_n_sigma
        },
    })?;
    steps[next..start].iter().for_each(|s| {
        out.push_boxed(s.clone());
    });
    out.push(filter);
    steps[start + len..].iter().for_each(|s| {
        out.push_boxed(s.clone());
    });
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{assert_close, ctx, ctx_with_history, rows, t2};

    const NINF: f32 = f32::NEG_INFINITY;

    #[test]
    fn exec_path_parses() {
        assert_eq!("fused".parse::<ExecPath>().unwrap(), ExecPath::Fused);
        assert_eq!("plain".parse::<ExecPath>().unwrap(), ExecPath::Plain);
        assert!("fast".parse::<ExecPath>().is_err());
        assert_eq!(ExecPath::default(), ExecPath::Fused);
    }

    #[test]
    fn fused_filter_runs_the_whole_segment() -> Result<()> {
        // top-k 3 keeps 2, 1, 0; top-p 0.7 keeps 2 and 1 (masses before: 0, 0.665, 0.910);
        // temperature 2 halves them.
        let f = FusedFilter::new(FilterParams {
            top_k: 3.0.into(),
            top_p: 0.7.into(),
            temperature: 2.0.into(),
            ..Default::default()
        })?;
        let x = t2(&[&[2.0, 1.0, 0.0, -1.0, NINF]]);
        assert_eq!(
            rows(&f.apply(&x, &ctx())?),
            vec![vec![1.0, 0.5, NINF, NINF, NINF]]
        );
        Ok(())
    }

    #[test]
    fn fused_filter_takes_per_row_parameters() -> Result<()> {
        let k = Tensor::new(&[1f32, 0.0], &Device::Cpu)?;
        let f = FusedFilter::new(FilterParams {
            top_k: k.into(),
            ..Default::default()
        })?;
        let x = t2(&[&[1.0, 2.0, 3.0], &[1.0, 2.0, 3.0]]);
        assert_eq!(
            rows(&f.apply(&x, &ctx())?),
            vec![vec![NINF, NINF, 3.0], vec![1.0, 2.0, 3.0]]
        );
        Ok(())
    }

    #[test]
    fn fused_filter_rejects_what_the_processors_reject() {
        assert!(FusedFilter::new(FilterParams {
            top_p: 1.5.into(),
            ..Default::default()
        })
        .is_err());
        assert!(FusedFilter::new(FilterParams {
            min_p: (-0.1).into(),
            ..Default::default()
        })
        .is_err());
        assert!(FusedFilter::new(FilterParams {
            temperature: f32::NAN.into(),
            ..Default::default()
        })
        .is_err());
        assert!(FusedFilter::new(FilterParams {
            top_k: 2.5.into(),
            ..Default::default()
        })
        .is_err());
    }

    #[test]
    fn fused_draw_per_row_rule() -> Result<()> {
        let f = FusedFilter::new(FilterParams::default())?;
        let x = t2(&[&[0.0, 3.0, 3.0, NINF], &[NINF, NINF, 0.0, NINF]]);
        let rule = DrawRule::PerRow(Tensor::new(&[1u8, 0], &Device::Cpu)?);
        let d = f.apply_and_draw(&x, &rule, &SamplingContext::new(3))?;
        assert_eq!(d.tokens.to_vec1::<u32>()?, vec![1, 2]);
        let p = d.probs.to_vec1::<f32>()?;
        let e3 = 3f32.exp();
        assert!(
            (p[0] - e3 / (1.0 + 2.0 * e3)).abs() < 1e-6 && p[1] == 1.0,
            "{p:?}"
        );
        Ok(())
    }

    #[test]
    fn fused_penalties_ban_penalise_and_length() -> Result<()> {
        // Row 0: history [1, 0, 1]; token 1 divided twice by 2, token 0 once; the stop token 3
        // is divided by (3 + 1)^0.5 = 2; token 2 is banned.
        let f = FusedPenalties::new(PenaltyParams {
            repetition: 2.0.into(),
            length: 0.5.into(),
            ban_tokens: vec![2],
            ..Default::default()
        })?;
        let x = t2(&[&[3.0, -2.0, 4.0, 8.0], &[3.0, -2.0, 4.0, 8.0]]);
        let c = ctx_with_history(&[vec![1, 0, 1], vec![-1, -1, -1]]);
        let y = f.apply(&x, &c)?;
        assert_close(
            &rows(&y),
            &[vec![1.5, -0.5, NINF, 4.0], vec![3.0, -2.0, NINF, 8.0]],
        );
        // Without a history only the ban applies.
        assert_close(
            &rows(&f.apply(&x, &ctx())?),
            &vec![vec![3.0, -2.0, NINF, 8.0]; 2],
        );
        Ok(())
    }

    #[test]
    fn fused_penalties_errors_like_the_plain_ones() {
        let x = t2(&[&[1.0, 2.0]]);
        let f = FusedPenalties::new(PenaltyParams {
            ban_tokens: vec![2],
            ..Default::default()
        })
        .unwrap();
        assert!(matches!(
            f.apply(&x, &ctx()),
            Err(SamplerError::TokenOutOfRange { .. })
        ));
        let f = FusedPenalties::new(PenaltyParams {
            length: 1.0.into(),
            stop_token: Some(2),
            ..Default::default()
        })
        .unwrap();
        let c = ctx_with_history(&[vec![0]]);
        assert!(matches!(
            f.apply(&x, &c),
            Err(SamplerError::TokenOutOfRange { .. })
        ));
        assert!(FusedPenalties::new(PenaltyParams {
            repetition: 0.0.into(),
            ..Default::default()
        })
        .is_err());
    }

    fn builder_params() -> BuilderParams {
        BuilderParams {
            filter: FilterParams {
                top_k: 5.0.into(),
                temperature: 0.5.into(),
                ..Default::default()
            },
            penalties: PenaltyParams {
                repetition: 1.5.into(),
                ban_stop_token: true,
                ..Default::default()
            },
        }
    }

    #[test]
    fn fuse_replaces_the_recognised_runs() -> Result<()> {
        let chain = Chain::new()
            .with(BanTokens::stop_token(None))
            .with(crate::processors::LogitBias::new(vec![(0, 1.0)]))
            .with(RepetitionPenalty::new(1.5, 0.0, 75.0)?)
            .with(TopK::new(5.0)?)
            .with(Temperature::new(0.5)?);
        let fused = fuse(chain, &builder_params())?;
        assert_eq!(
            fused.names(),
            vec!["logit_bias", "fused_penalties", "fused_filter"]
        );
        Ok(())
    }

    #[test]
    fn fuse_appends_an_identity_filter_and_leaves_odd_chains_plain() -> Result<()> {
        let fused = fuse(
            Chain::new().with(BanTokens::new(vec![1])),
            &builder_params(),
        )?;
        assert_eq!(fused.names(), vec!["ban_tokens", "fused_filter"]);
        // A top-k on both sides of another processor: the filter run is not recognised.
        let odd = Chain::new()
            .with(TopK::new(5.0)?)
            .with(BanTokens::new(vec![1]))
            .with(TopK::new(2.0)?);
        assert_eq!(
            fuse(odd, &builder_params())?.names(),
            vec!["top_k", "ban_tokens", "top_k"]
        );
        Ok(())
    }
}
