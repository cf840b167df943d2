//! The chain builder (the documented default order) and `Sampler`, which runs a chain and its
//! selector on the fused or the plain path, with input checks.

use std::sync::Mutex;

use candle_core::{DType, Device, Tensor, D};
use sampler_kernels::{Append, Emit};

use crate::config::{Knob, MirostatVersion, Mode, RepetitionPenaltyMode, SamplerConfig};
use crate::context::SamplingContext;
use crate::diagnostics;
use crate::draw::{Draw, Drawn};
use crate::error::{invalid, Result, SamplerError};
use crate::fusion::{self, ExecPath, Part, Plan, PlanKey};
use crate::param::RowParam;
use crate::processor::{Chain, LogitsProcessor, Selector};
use crate::processors::entropix::EntropixConfig;
use crate::processors::*;

/// Builds a sampler in the default order (docs/samplers.md; steps in parentheses only where
/// they apply):
///
/// ```text
/// (CFG) -> (NAR: ban stop token) -> bans -> logit bias -> repetition penalty (divide or
/// sign-aware) -> frequency/presence -> (AR: length penalty) -> min-p -> top-k -> top-p ->
/// typical-p -> XTC -> temperature (plain, sigmoid dynamic, or entropy dynamic) ->
/// top-n-sigma -> DRY -> (entropix) -> the selector (mirostat, or the draw)
/// ```
///
/// Every numeric key ([`Knob`]) takes a scalar or a `[rows]` tensor; a processor whose scalar
/// value is its "off" value is left out, so the defaults build the reference VALL-E chain.
#[derive(Clone, Debug)]
pub struct SamplerBuilder {
    mode: Mode,
    knobs: Vec<RowParam>,
    repetition_penalty_mode: RepetitionPenaltyMode,
    stop_token: Option<u32>,
    ban_tokens: Vec<u32>,
    logit_bias: Vec<(u32, f32)>,
    dry_sequence_breakers: Vec<u32>,
    mirostat: MirostatVersion,
    entropix: Option<EntropixConfig>,
    path: ExecPath,
}

impl SamplerBuilder {
    /// Every key at its default (nothing but the NAR stop-token ban is active).
    pub fn new(mode: Mode) -> Self {
        Self::from_config(&SamplerConfig::default(), mode)
    }

    /// The builder of a config (its values are checked by [`SamplerBuilder::build`]).
    pub fn from_config(c: &SamplerConfig, mode: Mode) -> Self {
        Self {
            mode,
            knobs: Knob::ALL.iter().map(|k| k.get(c).into()).collect(),
            repetition_penalty_mode: c.repetition_penalty_mode,
            stop_token: c.stop_token,
            ban_tokens: c.ban_tokens.clone(),
            logit_bias: c.logit_bias.iter().map(|(&id, &b)| (id, b)).collect(),
            dry_sequence_breakers: c.dry_sequence_breakers.clone(),
            mirostat: c.mirostat,
            entropix: c.entropix.then(EntropixConfig::default),
            path: ExecPath::default(),
        }
    }

    /// Sets a numeric key to a scalar or a `[rows]` tensor.
    pub fn set(mut self, knob: Knob, v: impl Into<RowParam>) -> Self {
        self.knobs[knob as usize] = v.into();
        self
    }

    /// A numeric key's value.
    pub fn get(&self, knob: Knob) -> &RowParam {
        &self.knobs[knob as usize]
    }

    /// The stop token (`None` = the last id of the vocabulary).
    pub fn stop_token(mut self, s: Option<u32>) -> Self {
        self.stop_token = s;
        self
    }

    /// Token ids set to -inf.
    pub fn ban_tokens(mut self, ids: Vec<u32>) -> Self {
        self.ban_tokens = ids;
        self
    }

    /// `(id, bias)` entries added to the logits.
    pub fn logit_bias(mut self, bias: Vec<(u32, f32)>) -> Self {
        self.logit_bias = bias;
        self
    }

    /// The repetition penalty's form.
    pub fn repetition_penalty_mode(mut self, mode: RepetitionPenaltyMode) -> Self {
        self.repetition_penalty_mode = mode;
        self
    }

    /// DRY's sequence breakers.
    pub fn dry_sequence_breakers(mut self, ids: Vec<u32>) -> Self {
        self.dry_sequence_breakers = ids;
        self
    }

    /// Mirostat v1 or v2 as the selector; `Off` draws plainly.
    pub fn mirostat(mut self, version: MirostatVersion) -> Self {
        self.mirostat = version;
        self
    }

    /// Entropix with these thresholds as the last processor; `None` is off.
    pub fn entropix(mut self, config: Option<EntropixConfig>) -> Self {
        self.entropix = config;
        self
    }

    /// The fused path (the default) or the plain tensor path.
    pub fn path(mut self, path: ExecPath) -> Self {
        self.path = path;
        self
    }

    /// The processors in the default order. Every processor is constructed (which validates
    /// its parameters) and kept only when some row needs it.
    pub fn build_chain(&self) -> Result<Chain> {
        let k = |knob: Knob| self.get(knob).clone();
        let mut c = Chain::new();
        let cfg = ClassifierFreeGuidance::new(k(Knob::CfgStrength), k(Knob::CfgRescale))?;
        if !ClassifierFreeGuidance::is_off(self.get(Knob::CfgStrength)) {
            c.push(cfg);
        }
        if self.mode == Mode::Nar {
            c.push(BanTokens::stop_token(self.stop_token));
        }
        if !self.ban_tokens.is_empty() {
            c.push(BanTokens::new(self.ban_tokens.clone()));
        }
        let bias = LogitBias::new(self.logit_bias.clone())?;
        if !self.logit_bias.is_empty() {
            c.push(bias);
        }
        let penalty = RepetitionPenalty::new(RepetitionPenaltyParams {
            penalty: k(Knob::RepetitionPenalty),
            decay: k(Knob::RepetitionPenaltyDecay),
            window: k(Knob::RepetitionPenaltyWindow),
            mode: self.repetition_penalty_mode,
        })?;
        if !RepetitionPenalty::is_off(
            self.get(Knob::RepetitionPenalty),
            self.get(Knob::RepetitionPenaltyDecay),
        ) {
            c.push(penalty);
        }
        let frequency = FrequencyPresencePenalty::new(
            k(Knob::FrequencyPenalty),
            k(Knob::PresencePenalty),
            k(Knob::RepetitionPenaltyWindow),
        )?;
        if !FrequencyPresencePenalty::is_off(
            self.get(Knob::FrequencyPenalty),
            self.get(Knob::PresencePenalty),
        ) {
            c.push(frequency);
        }
        let length = LengthPenalty::new(k(Knob::LengthPenalty), self.stop_token)?;
        if self.mode == Mode::Ar && !LengthPenalty::is_off(self.get(Knob::LengthPenalty)) {
            c.push(length);
        }
        let min_p = MinP::new(MinPParams {
            p: k(Knob::MinP),
            min_tokens: k(Knob::MinPMinTokens),
        })?;
        if !MinP::is_off(self.get(Knob::MinP)) {
            c.push(min_p);
        }
        let top_k = TopK::new(k(Knob::TopK))?;
        if !TopK::is_off(self.get(Knob::TopK)) {
            c.push(top_k);
        }
        let top_p = TopP::new(k(Knob::TopP))?;
        if !TopP::is_off(self.get(Knob::TopP)) {
            c.push(top_p);
        }
        let typical = TypicalP::new(k(Knob::TypicalP))?;
        if !TypicalP::is_off(self.get(Knob::TypicalP)) {
            c.push(typical);
        }
        let xtc = Xtc::new(k(Knob::XtcProbability), k(Knob::XtcThreshold))?;
        if !Xtc::is_off(self.get(Knob::XtcProbability)) {
            c.push(xtc);
        }
        let (t, t_min) = (self.get(Knob::Temperature), self.get(Knob::MinTemperature));
        let plain_t = Temperature::new(k(Knob::Temperature))?;
        let sigmoid = DynamicTemperature::new(DynamicTemperatureParams {
            t: k(Knob::Temperature),
            t_min: k(Knob::MinTemperature),
        })?;
        let entropy = EntropyTemperature::new(EntropyTemperatureParams {
            t: k(Knob::Temperature),
            range: k(Knob::DynatempRange),
            exponent: k(Knob::DynatempExponent),
        })?;
        if !EntropyTemperature::is_off(self.get(Knob::DynatempRange)) {
            if !DynamicTemperature::is_off(t, t_min) {
                return Err(invalid(
                    "dynatemp_range",
                    "the entropy form (dynatemp_range > 0) and the sigmoid form (min_temperature) exclude each other",
                ));
            }
            c.push(entropy);
        } else if !DynamicTemperature::is_off(t, t_min) {
            c.push(sigmoid);
        } else if !Temperature::is_off(t) {
            c.push(plain_t);
        }
        let sigma = TopNSigma::new(k(Knob::TopNo))?;
        if !TopNSigma::is_off(self.get(Knob::TopNo)) {
            c.push(sigma);
        }
        let dry = Dry::new(DryParams {
            multiplier: k(Knob::DryMultiplier),
            base: k(Knob::DryBase),
            allowed_length: k(Knob::DryAllowedLength),
            window: k(Knob::DryPenaltyLastN),
            breakers: self.dry_sequence_breakers.clone(),
            max_match: DEFAULT_MAX_MATCH,
        })?;
        if !Dry::is_off(self.get(Knob::DryMultiplier)) {
            c.push(dry);
        }
        if let Some(cfg) = &self.entropix {
            if self.mirostat != MirostatVersion::Off {
                return Err(invalid(
                    "entropix",
                    "entropix and mirostat both choose the final distribution; pick one",
                ));
            }
            c.push(Entropix::new(cfg.clone())?);
        }
        Ok(c)
    }

    /// The selector: mirostat when on, else the draw (greedy where the temperature is <= 0).
    pub fn build_selector(&self) -> Result<Box<dyn Selector>> {
        let draw = Draw::from_temperature(self.get(Knob::Temperature))?;
        let mirostat = Mirostat::new(MirostatParams {
            version: match self.mirostat {
                MirostatVersion::Off => MirostatVersion::V2,
                v => v,
            },
            tau: self.get(Knob::MirostatTau).clone(),
            eta: self.get(Knob::MirostatEta).clone(),
            m: MIROSTAT_M,
            greedy: draw.rule().clone(),
        })?;
        Ok(match self.mirostat {
            MirostatVersion::Off => Box::new(draw),
            _ => Box::new(mirostat),
        })
    }

    /// The sampler.
    pub fn build(&self) -> Result<Sampler> {
        Ok(Sampler::new(self.build_chain()?, self.build_selector()?).with_path(self.path))
    }
}

/// An AR loop's stop bookkeeping, on the device: which rows have stopped, their limits and the
/// stop token ([`Sampler::step`]).
#[derive(Clone, Debug)]
pub struct StopState {
    /// `[rows]` u8: 1 = the row has stopped (it keeps its length and codes).
    pub stopped: Tensor,
    /// `[rows]` u32: a row stops when its length reaches this.
    pub max_lens: Option<Tensor>,
    /// A row that draws it stops, without appending it.
    pub stop_token: Option<u32>,
}

/// A chain and its selector, with input checks: the one-call API from logits to tokens.
#[derive(Debug)]
pub struct Sampler {
    chain: Chain,
    selector: Box<dyn Selector>,
    path: ExecPath,
    plan: Mutex<Option<Plan>>,
}

impl Clone for Sampler {
    fn clone(&self) -> Self {
        Self::new(self.chain.clone(), self.selector.clone()).with_path(self.path)
    }
}

impl Sampler {
    /// A sampler of `chain` ending with `selector`, on the fused path.
    pub fn new(chain: Chain, selector: Box<dyn Selector>) -> Self {
        Self {
            chain,
            selector,
            path: ExecPath::Fused,
            plan: Mutex::new(None),
        }
    }

    /// Chooses the fused or the plain path.
    pub fn with_path(mut self, path: ExecPath) -> Self {
        self.path = path;
        *self.plan.get_mut().unwrap_or_else(|e| e.into_inner()) = None;
        self
    }

    /// The sampler of a config for a mode.
    pub fn from_config(cfg: &SamplerConfig, mode: Mode) -> Result<Self> {
        cfg.validate()?;
        SamplerBuilder::from_config(cfg, mode).build()
    }

    /// The processors.
    pub fn chain(&self) -> &Chain {
        &self.chain
    }

    /// The processors, to change one (the next step rebuilds the fused plan).
    pub fn chain_mut(&mut self) -> &mut Chain {
        *self.plan.get_mut().unwrap_or_else(|e| e.into_inner()) = None;
        &mut self.chain
    }

    /// The selector.
    pub fn selector(&self) -> &dyn Selector {
        &*self.selector
    }

    /// The selector, to change it (the next step rebuilds the fused plan).
    pub fn selector_mut(&mut self) -> &mut dyn Selector {
        *self.plan.get_mut().unwrap_or_else(|e| e.into_inner()) = None;
        &mut *self.selector
    }

    /// The path.
    pub fn path(&self) -> ExecPath {
        self.path
    }

    /// The first processor (or the selector) of type `T`.
    pub fn find<T: 'static>(&self) -> Option<&T> {
        self.chain
            .find::<T>()
            .or_else(|| (*self.selector).as_any().downcast_ref::<T>())
    }

    /// Mutable [`Sampler::find`] (the next step rebuilds the fused plan).
    pub fn find_mut<T: 'static>(&mut self) -> Option<&mut T> {
        *self.plan.get_mut().unwrap_or_else(|e| e.into_inner()) = None;
        if self.chain.find::<T>().is_some() {
            return self.chain.find_mut::<T>();
        }
        (*self.selector).as_any_mut().downcast_mut::<T>()
    }

    /// The names of the steps and of the fused segments the next step on `device` runs, e.g.
    /// `["fused(repetition_penalty, length_penalty, min_p, top_k, top_p, draw)"]`.
    pub fn describe(&self, rows: usize, vocab: usize, device: &Device) -> Result<Vec<String>> {
        let key = PlanKey {
            rows,
            vocab,
            device: device.location(),
            draws: true,
        };
        let plan = Plan::build(&self.chain, &*self.selector, self.path, key, device)?;
        let name = |i: usize| {
            if i < self.chain.len() {
                self.chain.steps()[i].name()
            } else {
                self.selector.name()
            }
        };
        Ok(plan
            .parts
            .iter()
            .map(|p| match p {
                Part::Plain(i) => name(*i).to_string(),
                Part::PlainSelector => self.selector.name().to_string(),
                Part::Fused(s) => format!(
                    "fused({})",
                    s.steps.clone().map(name).collect::<Vec<_>>().join(", ")
                ),
            })
            .collect())
    }

    /// Runs `f` with the plan for `key`, building it if needed.
    fn with_plan<R>(
        &self,
        key: PlanKey,
        device: &Device,
        f: impl FnOnce(&mut Plan) -> Result<R>,
    ) -> Result<R> {
        let mut slot = self.plan.lock().unwrap_or_else(|e| e.into_inner());
        if slot.as_ref().map(|p| &p.key) != Some(&key) {
            *slot = Some(Plan::build(
                &self.chain,
                &*self.selector,
                self.path,
                key,
                device,
            )?);
        }
        match slot.as_mut() {
            Some(plan) => f(plan),
            None => Err(SamplerError::Shape("no plan".into())),
        }
    }

    fn key(&self, x: &Tensor, draws: bool) -> Result<PlanKey> {
        let (rows, vocab) = x.dims2()?;
        Ok(PlanKey {
            rows,
            vocab,
            device: x.device().location(),
            draws,
        })
    }

    /// The processed logits `[rows, vocab]` f32: the chain and the selector's distribution.
    pub fn apply(&self, logits: &Tensor, ctx: &SamplingContext) -> Result<Tensor> {
        let x = prepare(logits, ctx, self.path)?;
        if x.dim(0)? == 0 {
            return Ok(x);
        }
        let key = self.key(&x, false)?;
        let device = x.device().clone();
        let y = self.with_plan(key, &device, |plan| {
            let row_ids = plan.row_ids(ctx, &device)?;
            let mut x = x;
            for part in &plan.parts {
                x = match part {
                    Part::Plain(i) => saturate(&self.chain.steps()[*i].apply(&x, ctx)?)?,
                    Part::PlainSelector => self.selector.distribution(&x, ctx)?,
                    Part::Fused(seg) => {
                        let out = seg.run(&x, ctx, row_ids.as_ref(), Emit::Logits)?;
                        // The CPU reports empty rows as part of the row pass.
                        if let Some(&row) = out.empty_rows.first() {
                            return Err(SamplerError::AllMasked { row });
                        }
                        out.logits.ok_or_else(|| {
                            SamplerError::Shape("the fused segment returned no logits".into())
                        })?
                    }
                };
            }
            Ok(x)
        })?;
        if checks_on_host(&y, ctx, self.path) {
            check_output(&y)?;
        }
        Ok(y)
    }

    /// Runs the chain and draws one token per row; stateful steps see the draw.
    pub fn sample(&mut self, logits: &Tensor, ctx: &SamplingContext) -> Result<Drawn> {
        let x = prepare(logits, ctx, self.path)?;
        let (rows, _) = x.dims2()?;
        if rows == 0 {
            return Drawn::empty(x.device());
        }
        let key = self.key(&x, true)?;
        let device = x.device().clone();
        let chain_len = self.chain.len();
        let mut plan_slot = self.plan.lock().unwrap_or_else(|e| e.into_inner());
        if plan_slot.as_ref().map(|p| &p.key) != Some(&key) {
            *plan_slot = Some(Plan::build(
                &self.chain,
                &*self.selector,
                self.path,
                key,
                &device,
            )?);
        }
        let plan = plan_slot
            .as_mut()
            .ok_or_else(|| SamplerError::Shape("no plan".into()))?;
        let row_ids = plan.row_ids(ctx, &device)?;
        let mut x = x;
        let mut drawn = None;
        for part in &plan.parts {
            match part {
                Part::Plain(i) => x = saturate(&self.chain.steps()[*i].apply(&x, ctx)?)?,
                Part::PlainSelector => {
                    if checks_on_host(&x, ctx, self.path) {
                        check_output(&x)?;
                    }
                    drawn = Some(self.selector.select(&x, ctx)?);
                }
                Part::Fused(seg) => {
                    if seg.has_selector(chain_len) {
                        let out = seg.run(&x, ctx, row_ids.as_ref(), Emit::Tokens)?;
                        drawn = Some(fusion::drawn(&out)?);
                    } else {
                        let out = seg.run(&x, ctx, row_ids.as_ref(), Emit::Logits)?;
                        x = out.logits.ok_or_else(|| {
                            SamplerError::Shape("the fused segment returned no logits".into())
                        })?;
                    }
                }
            }
        }
        drop(plan_slot);
        let d = drawn.ok_or_else(|| SamplerError::Shape("the chain has no selector".into()))?;
        if d.tokens.dims() != [rows] {
            return Err(SamplerError::Shape(format!(
                "the selector drew {:?} tokens for {rows} rows",
                d.tokens.dims()
            )));
        }
        self.chain.accept(&d, ctx)?;
        Ok(d)
    }

    /// One autoregressive step: samples, appends each running row's token to the context's
    /// history (on the device), advances the step and, with `stop`, the stop flags: a row that
    /// draws the stop token or reaches its limit stops and keeps its length. When the whole
    /// chain is one fused segment this is one call to the fused op.
    pub fn step(
        &mut self,
        logits: &Tensor,
        ctx: &mut SamplingContext,
        stop: Option<&mut StopState>,
    ) -> Result<Drawn> {
        let x = prepare(logits, ctx, self.path)?;
        let (rows, _) = x.dims2()?;
        let device = x.device().clone();
        let history = ctx
            .history_mut()
            .ok_or_else(|| SamplerError::MissingInput("an AR step needs a history".into()))?;
        history.reserve_one()?;
        let key = self.key(&x, true)?;
        let fused = self.with_plan(key, &device, |plan| {
            let row_ids = plan.row_ids(ctx, &device)?;
            let Some(seg) = plan.single_segment() else {
                return Ok(None);
            };
            if !seg.program.selects() || device.is_metal() {
                return Ok(None);
            }
            let c = seg.context(&x, ctx)?;
            let mut inp = seg.input(&x, &c, ctx, row_ids.as_ref());
            let h = ctx
                .history()
                .ok_or_else(|| SamplerError::MissingInput("an AR step needs a history".into()))?;
            let (tokens, row_map) = h.buffer();
            if row_map.is_some() {
                return Ok(None);
            }
            inp.history = Some(sampler_kernels::HistoryInput {
                tokens,
                lens: h.lens(),
                row_map: None,
            });
            let append = Append {
                stopped: stop.as_ref().map(|s| &s.stopped),
                max_lens: stop.as_ref().and_then(|s| s.max_lens.as_ref()),
                stop_token: stop.as_ref().and_then(|s| s.stop_token),
            };
            let (out, appended) = sampler_kernels::run_segment_append(&seg.program, &inp, append)?;
            seg.deliver(&out)?;
            Ok(Some((fusion::drawn(&out)?, appended)))
        })?;
        let d = match fused {
            Some((d, appended)) => {
                if let Some(h) = ctx.history_mut() {
                    h.appended(appended.lens);
                }
                ctx.advance_step();
                if let (Some(s), Some(st)) = (stop, appended.stopped) {
                    s.stopped = st;
                }
                d
            }
            None => {
                let d = self.sample(&x, ctx)?;
                diagnostics::count_ops(6);
                let grows = match &stop {
                    Some(s) => {
                        let running = s.stopped.eq(0u8)?;
                        match s.stop_token {
                            Some(t) => (running * d.tokens.ne(t)?)?,
                            None => running,
                        }
                    }
                    None => fusion::ones_u8(rows, &device)?,
                };
                ctx.advance(&d.tokens, Some(&grows))?;
                if let Some(s) = stop {
                    let mut st = s.stopped.clone();
                    if let Some(t) = s.stop_token {
                        st = st.maximum(&d.tokens.eq(t)?)?;
                    }
                    if let (Some(m), Some(h)) = (&s.max_lens, ctx.history()) {
                        st = st.maximum(&h.lens().ge(m)?)?;
                    }
                    s.stopped = st;
                }
                d
            }
        };
        self.chain.accept(&d, ctx)?;
        Ok(d)
    }

    /// Forgets processor and selector state.
    pub fn reset(&mut self) {
        self.chain.reset();
        self.selector.reset();
    }

    /// Forgets the state of the rows whose `[rows]` u8 `mask` entry is 1.
    pub fn reset_rows(&mut self, mask: &Tensor) -> Result<()> {
        self.chain.reset_rows(mask)?;
        self.selector.reset_rows(mask)
    }
}

/// Whether the checks of this call read the device from the host: on the plain path always (it
/// is the reference), on a GPU when validation is on. The CPU's fused ops check their input as
/// part of the row pass, for free.
fn checks_on_host(x: &Tensor, ctx: &SamplingContext, path: ExecPath) -> bool {
    path == ExecPath::Plain || (!x.device().is_cpu() && ctx.validate())
}

/// `t` as f32 on `device`, converted only when it is not already (each conversion counted).
pub(crate) fn as_f32_on(t: &Tensor, device: &Device) -> Result<Tensor> {
    let mut t = t.clone();
    if !t.device().same_device(device) {
        diagnostics::count_ops(1);
        t = t.to_device(device)?;
    }
    if t.dtype() != DType::F32 {
        diagnostics::count_ops(1);
        t = t.to_dtype(DType::F32)?;
    }
    if !t.is_contiguous() {
        diagnostics::count_ops(1);
        t = t.contiguous()?;
    }
    Ok(t)
}

/// Checks rank and rows, converts to f32 where needed and, where checks run on the host,
/// rejects NaN, +inf and out-of-vocabulary history ids.
pub(crate) fn prepare(logits: &Tensor, ctx: &SamplingContext, path: ExecPath) -> Result<Tensor> {
    if logits.rank() != 2 {
        return Err(SamplerError::Shape(format!(
            "logits must be [rows, vocab], got shape {:?}",
            logits.dims()
        )));
    }
    let (rows, vocab) = logits.dims2()?;
    if vocab == 0 {
        return Err(SamplerError::Shape(
            "logits have an empty vocabulary".into(),
        ));
    }
    ctx.check_rows(rows)?;
    if let Some(h) = ctx.history() {
        if !h.lens().device().same_device(logits.device()) {
            return Err(SamplerError::Shape(format!(
                "the history is on {:?}, the logits on {:?}",
                h.lens().device(),
                logits.device()
            )));
        }
    }
    let x = as_f32_on(logits, logits.device())?;
    if checks_on_host(&x, ctx, path) && rows > 0 {
        check_finite(&x, "logits")?;
        check_history(ctx, vocab, &x)?;
    }
    Ok(x)
}

/// Rejects NaN and +inf values of a `[rows, vocab]` float input (a host read).
pub(crate) fn check_finite(x: &Tensor, input: &'static str) -> Result<()> {
    let x = x.to_dtype(DType::F32)?;
    let nan = x.ne(&x)?.to_dtype(DType::F32)?.sum_keepdim(D::Minus1)?;
    let pos_inf = x
        .eq(f32::INFINITY)?
        .to_dtype(DType::F32)?
        .sum_keepdim(D::Minus1)?;
    let stats = Tensor::cat(&[nan, pos_inf], 1)?.to_vec2::<f32>()?;
    for (row, s) in stats.iter().enumerate() {
        if s[0] > 0.0 {
            return Err(SamplerError::NanLogits { input, row });
        }
        if s[1] > 0.0 {
            return Err(SamplerError::PosInfLogits { input, row });
        }
    }
    Ok(())
}

fn check_history(ctx: &SamplingContext, vocab: usize, x: &Tensor) -> Result<()> {
    let Some(h) = ctx.history() else {
        return Ok(());
    };
    if h.width() == 0 {
        return Ok(());
    }
    let pos = Tensor::arange(0u32, h.width() as u32, x.device())?.unsqueeze(0)?;
    let valid = pos.broadcast_lt(&h.lens().unsqueeze(1)?)?;
    let tokens = h.tokens()?;
    let max = valid
        .where_cond(&tokens, &tokens.zeros_like()?)?
        .max_keepdim(1)?
        .flatten_all()?
        .to_vec1::<u32>()?;
    if let Some(&id) = max.iter().find(|&&m| m as usize >= vocab) {
        return Err(SamplerError::TokenOutOfRange {
            what: "history",
            id: id as i64,
            vocab,
        });
    }
    Ok(())
}

/// Values a step pushed past f32's range upward become the largest finite value, as on the
/// fused path: a +inf logit leaves the distribution undefined, the saturated row keeps its
/// limit (all mass on its largest logits).
fn saturate(x: &Tensor) -> Result<Tensor> {
    // Not `minimum`: NaN must stay NaN to be reported.
    let over = x.gt(f32::MAX)?;
    Ok(over.where_cond(&Tensor::full(f32::MAX, x.shape(), x.device())?, x)?)
}

/// Rejects rows whose every processed logit is -inf (a host read).
fn check_output(y: &Tensor) -> Result<()> {
    if y.dim(0)? == 0 {
        return Ok(());
    }
    let max = y.max_keepdim(D::Minus1)?.flatten_all()?.to_vec1::<f32>()?;
    for (row, m) in max.iter().enumerate() {
        if m.is_nan() {
            // A step that measures the row (an entropy, a mean) turns a row with nothing left
            // into NaN: the row was masked before it got there.
            let values = y.get(row)?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
            if !values.iter().any(|v| v.is_finite()) {
                return Err(SamplerError::AllMasked { row });
            }
            return Err(SamplerError::NanLogits {
                input: "processed logits",
                row,
            });
        }
        if *m == f32::NEG_INFINITY {
            return Err(SamplerError::AllMasked { row });
        }
    }
    Ok(())
}
