//! The chain builder (the documented default order, SPEC §4) and `Sampler`, which runs the chain
//! and the draw with input validation.

use candle_core::{DType, Tensor, D};

use crate::config::{Mode, RepetitionPenaltyMode, SamplerConfig};
use crate::context::SamplingContext;
use crate::draw::{draw, DrawRule, Drawn};
use crate::error::{Result, SamplerError};
use crate::param::RowParam;
use crate::processor::{Chain, LogitsProcessor};
use crate::processors::fused::{fuse, BuilderParams, ExecPath, FilterParams, PenaltyParams};
use crate::processors::*;

/// Builds a chain in the default order (docs/samplers.md):
/// [CFG] -> [NAR: ban stop token] -> bans -> logit bias -> repetition penalty (divide or
/// sign-aware) -> frequency/presence penalty -> [AR: length penalty] -> min-p -> top-k -> top-p
/// -> typical-p -> XTC -> temperature (plain, sigmoid dynamic, or entropy dynamic) ->
/// top-n-sigma -> DRY -> [mirostat] -> [entropix] -> draw.
/// Every parameter takes a scalar or a `[rows]` tensor; a processor whose scalar value is its
/// "off" value is left out, so the defaults build the reference VALL-E chain unchanged.
#[derive(Clone, Debug)]
pub struct SamplerBuilder {
    mode: Mode,
    temperature: RowParam,
    min_temperature: RowParam,
    top_k: RowParam,
    top_p: RowParam,
    min_p: RowParam,
    min_p_min_tokens: RowParam,
    repetition_penalty: RowParam,
    repetition_penalty_decay: RowParam,
    repetition_penalty_window: RowParam,
    length_penalty: RowParam,
    stop_token: Option<u32>,
    top_no: RowParam,
    ban_tokens: Vec<u32>,
    logit_bias: Vec<(u32, f32)>,
    extra: Extras,
    path: ExecPath,
}

/// The builder's settings for the samplers beyond the reference pipeline (issue 3).
#[derive(Clone, Debug)]
struct Extras {
    repetition_penalty_mode: RepetitionPenaltyMode,
    frequency_penalty: RowParam,
    presence_penalty: RowParam,
    typical_p: RowParam,
    xtc_probability: RowParam,
    xtc_threshold: RowParam,
    dynatemp_range: RowParam,
    dynatemp_exponent: RowParam,
    dry_multiplier: RowParam,
    dry_base: RowParam,
    dry_allowed_length: RowParam,
    dry_penalty_last_n: RowParam,
    dry_sequence_breakers: Vec<u32>,
    mirostat: Option<MirostatVersion>,
    mirostat_tau: RowParam,
    mirostat_eta: RowParam,
    entropix: Option<EntropixConfig>,
    cfg_strength: RowParam,
    cfg_rescale: RowParam,
}

impl Extras {
    fn from_config(c: &SamplerConfig) -> Self {
        Self {
            repetition_penalty_mode: c.repetition_penalty_mode,
            frequency_penalty: c.frequency_penalty.into(),
            presence_penalty: c.presence_penalty.into(),
            typical_p: c.typical_p.into(),
            xtc_probability: c.xtc_probability.into(),
            xtc_threshold: c.xtc_threshold.into(),
            dynatemp_range: c.dynatemp_range.into(),
            dynatemp_exponent: c.dynatemp_exponent.into(),
            dry_multiplier: c.dry_multiplier.into(),
            dry_base: c.dry_base.into(),
            dry_allowed_length: (c.dry_allowed_length as f32).into(),
            dry_penalty_last_n: (c.dry_penalty_last_n as f32).into(),
            dry_sequence_breakers: c.dry_sequence_breakers.clone(),
            mirostat: match c.mirostat {
                1 => Some(MirostatVersion::V1),
                2 => Some(MirostatVersion::V2),
                _ => None,
            },
            mirostat_tau: c.mirostat_tau.into(),
            mirostat_eta: c.mirostat_eta.into(),
            entropix: c.entropix.then(EntropixConfig::default),
            cfg_strength: c.cfg_strength.into(),
            cfg_rescale: c.cfg_rescale.into(),
        }
    }
}

macro_rules! extra_setter {
    ($name:ident) => {
        pub fn $name(mut self, v: impl Into<RowParam>) -> Self {
            self.extra.$name = v.into();
            self
        }
    };
}

fn is_off(p: &RowParam, off: impl Fn(f32) -> bool) -> bool {
    p.scalar().is_some_and(off)
}

macro_rules! setter {
    ($name:ident) => {
        pub fn $name(mut self, v: impl Into<RowParam>) -> Self {
            self.$name = v.into();
            self
        }
    };
}

impl SamplerBuilder {
    /// All defaults of SPEC §8 (nothing but the NAR stop-token ban is active).
    pub fn new(mode: Mode) -> Self {
        Self::from_config(&SamplerConfig::default(), mode)
    }

    /// The builder for a (validated) config.
    pub fn from_config(c: &SamplerConfig, mode: Mode) -> Self {
        Self {
            mode,
            temperature: c.temperature.into(),
            min_temperature: c.min_temperature.into(),
            top_k: (c.top_k as f32).into(),
            top_p: c.top_p.into(),
            min_p: c.min_p.into(),
            min_p_min_tokens: (c.min_p_min_tokens as f32).into(),
            repetition_penalty: c.repetition_penalty.into(),
            repetition_penalty_decay: c.repetition_penalty_decay.into(),
            repetition_penalty_window: (c.repetition_penalty_window as f32).into(),
            length_penalty: c.length_penalty.into(),
            stop_token: c.stop_token,
            top_no: c.top_no.into(),
            ban_tokens: c.ban_tokens.clone(),
            logit_bias: c.logit_bias.iter().map(|(&id, &b)| (id, b)).collect(),
            extra: Extras::from_config(c),
            path: ExecPath::default(),
        }
    }

    setter!(temperature);
    setter!(min_temperature);
    setter!(top_k);
    setter!(top_p);
    setter!(min_p);
    setter!(min_p_min_tokens);
    setter!(repetition_penalty);
    setter!(repetition_penalty_decay);
    setter!(repetition_penalty_window);
    setter!(length_penalty);
    setter!(top_no);

    pub fn stop_token(mut self, s: Option<u32>) -> Self {
        self.stop_token = s;
        self
    }

    pub fn ban_tokens(mut self, ids: Vec<u32>) -> Self {
        self.ban_tokens = ids;
        self
    }

    pub fn logit_bias(mut self, bias: Vec<(u32, f32)>) -> Self {
        self.logit_bias = bias;
        self
    }

    extra_setter!(frequency_penalty);
    extra_setter!(presence_penalty);
    extra_setter!(typical_p);
    extra_setter!(xtc_probability);
    extra_setter!(xtc_threshold);
    extra_setter!(dynatemp_range);
    extra_setter!(dynatemp_exponent);
    extra_setter!(dry_multiplier);
    extra_setter!(dry_base);
    extra_setter!(dry_allowed_length);
    extra_setter!(dry_penalty_last_n);
    extra_setter!(mirostat_tau);
    extra_setter!(mirostat_eta);
    extra_setter!(cfg_strength);
    extra_setter!(cfg_rescale);

    pub fn repetition_penalty_mode(mut self, mode: RepetitionPenaltyMode) -> Self {
        self.extra.repetition_penalty_mode = mode;
        self
    }

    pub fn dry_sequence_breakers(mut self, ids: Vec<u32>) -> Self {
        self.extra.dry_sequence_breakers = ids;
        self
    }

    /// Mirostat v1 or v2 as the last filter; `None` is off.
    pub fn mirostat(mut self, version: Option<MirostatVersion>) -> Self {
        self.extra.mirostat = version;
        self
    }

    /// Entropix with these thresholds as the last step; `None` is off.
    pub fn entropix(mut self, config: Option<EntropixConfig>) -> Self {
        self.extra.entropix = config;
        self
    }

    /// Fused (the default) or plain execution of the segments the fused ops cover.
    pub fn path(mut self, path: ExecPath) -> Self {
        self.path = path;
        self
    }

    /// The parameters of the fusable segments, for [`fuse`].
    fn builder_params(&self) -> BuilderParams {
        BuilderParams {
            filter: FilterParams {
                min_p: self.min_p.clone(),
                min_tokens: self.min_p_min_tokens.clone(),
                top_k: self.top_k.clone(),
                top_p: self.top_p.clone(),
                temperature: self.temperature.clone(),
                min_temperature: self.min_temperature.clone(),
                top_n_sigma: self.top_no.clone(),
            },
            penalties: PenaltyParams {
                repetition: self.repetition_penalty.clone(),
                decay: self.repetition_penalty_decay.clone(),
                window: self.repetition_penalty_window.clone(),
                length: self.length_penalty.clone(),
                stop_token: self.stop_token,
                ban_stop_token: self.mode == Mode::Nar,
                ban_tokens: self.ban_tokens.clone(),
            },
        }
    }

    /// The processors in the default order.
    pub fn build_chain(&self) -> Result<Chain> {
        let x = &self.extra;
        let mut c = Chain::new();
        // Every processor is constructed (which validates its parameters) and kept only when
        // some row needs it.
        let cfg = ClassifierFreeGuidance::new(x.cfg_strength.clone(), x.cfg_rescale.clone())?;
        if !is_off(&x.cfg_strength, |v| v == 1.0) {
            c.push(cfg);
        }
        if self.mode == Mode::Nar {
            c.push(BanTokens::stop_token(self.stop_token));
        }
        if !self.ban_tokens.is_empty() {
            c.push(BanTokens::new(self.ban_tokens.clone()));
        }
        if !self.logit_bias.is_empty() {
            c.push(LogitBias::new(self.logit_bias.clone()));
        }
        let penalty = RepetitionPenalty::with_mode(
            x.repetition_penalty_mode,
            self.repetition_penalty.clone(),
            self.repetition_penalty_decay.clone(),
            self.repetition_penalty_window.clone(),
        )?;
        if !(is_off(&self.repetition_penalty, |v| v == 1.0)
            && is_off(&self.repetition_penalty_decay, |v| v == 0.0))
        {
            c.push(penalty);
        }
        let frequency = FrequencyPresencePenalty::new(
            x.frequency_penalty.clone(),
            x.presence_penalty.clone(),
            self.repetition_penalty_window.clone(),
        )?;
        if !(is_off(&x.frequency_penalty, |v| v == 0.0)
            && is_off(&x.presence_penalty, |v| v == 0.0))
        {
            c.push(frequency);
        }
        let length = LengthPenalty::new(self.length_penalty.clone(), self.stop_token)?;
        if self.mode == Mode::Ar && !is_off(&self.length_penalty, |v| v == 0.0) {
            c.push(length);
        }
        let min_p = MinP::new(self.min_p.clone(), self.min_p_min_tokens.clone())?;
        if !is_off(&self.min_p, |v| v == 0.0) {
            c.push(min_p);
        }
        let top_k = TopK::new(self.top_k.clone())?;
        if !is_off(&self.top_k, |v| v <= 0.0) {
            c.push(top_k);
        }
        let top_p = TopP::new(self.top_p.clone())?;
        if !is_off(&self.top_p, |v| v >= 1.0) {
            c.push(top_p);
        }
        let typical = TypicalP::new(x.typical_p.clone())?;
        if !is_off(&x.typical_p, |v| v >= 1.0) {
            c.push(typical);
        }
        let xtc = Xtc::new(x.xtc_probability.clone(), x.xtc_threshold.clone())?;
        if !is_off(&x.xtc_probability, |v| v <= 0.0) {
            c.push(xtc);
        }
        let dynamic =
            DynamicTemperature::new(self.temperature.clone(), self.min_temperature.clone())?;
        let entropy = EntropyTemperature::new(
            self.temperature.clone(),
            x.dynatemp_range.clone(),
            x.dynatemp_exponent.clone(),
        )?;
        // The entropy form (dynatemp_range > 0) replaces the temperature step.
        let entropy_form = !is_off(&x.dynatemp_range, |v| v <= 0.0);
        match (self.temperature.scalar(), self.min_temperature.scalar()) {
            _ if entropy_form => {
                c.push(entropy);
            }
            (Some(t), Some(tm)) if !DynamicTemperature::is_dynamic(t, tm) => {
                if t > 0.0 && t != 1.0 {
                    c.push(Temperature::new(t)?);
                }
            }
            _ => {
                c.push(dynamic);
            }
        }
        let sigma = TopNSigma::new(self.top_no.clone())?;
        if !is_off(&self.top_no, |v| v <= 0.0) {
            c.push(sigma);
        }
        let dry = Dry::new(
            x.dry_multiplier.clone(),
            x.dry_base.clone(),
            x.dry_allowed_length.clone(),
            x.dry_penalty_last_n.clone(),
            x.dry_sequence_breakers.clone(),
        )?;
        if !is_off(&x.dry_multiplier, |v| v == 0.0) {
            c.push(dry);
        }
        let version = x.mirostat.unwrap_or(MirostatVersion::V2);
        let mirostat = Mirostat::new(version, x.mirostat_tau.clone(), x.mirostat_eta.clone())?;
        if x.mirostat.is_some() {
            c.push(mirostat);
        }
        if let Some(cfg) = &x.entropix {
            c.push(Entropix::new(cfg.clone())?);
        }
        match self.path {
            ExecPath::Plain => Ok(c),
            ExecPath::Fused => fuse(c, &self.builder_params()),
        }
    }

    /// The chain and its draw rule.
    pub fn build(&self) -> Result<Sampler> {
        Ok(Sampler::new(
            self.build_chain()?,
            DrawRule::from_temperature(&self.temperature)?,
        ))
    }
}

/// A chain plus its draw, with input validation: the one-call API from logits to tokens.
#[derive(Clone, Debug)]
pub struct Sampler {
    chain: Chain,
    rule: DrawRule,
}

impl Sampler {
    pub fn new(chain: Chain, rule: DrawRule) -> Self {
        Self { chain, rule }
    }

    /// The sampler of a config for a mode (validates the config).
    pub fn from_config(cfg: &SamplerConfig, mode: Mode) -> Result<Self> {
        cfg.validate()?;
        SamplerBuilder::from_config(cfg, mode).build()
    }

    pub fn chain(&self) -> &Chain {
        &self.chain
    }

    /// The chain, to reach a stateful processor (e.g. `find_mut::<Mirostat>()`).
    pub fn chain_mut(&mut self) -> &mut Chain {
        &mut self.chain
    }

    pub fn rule(&self) -> &DrawRule {
        &self.rule
    }

    /// The processed logits `[rows, vocab]` f32 (the chain, before the draw).
    pub fn apply(&self, logits: &Tensor, ctx: &SamplingContext) -> Result<Tensor> {
        let x = prepare(logits, ctx)?;
        let y = self.chain.apply(&x, ctx)?;
        if ctx.validate() {
            check_output(&y)?;
        }
        Ok(y)
    }

    /// Runs the chain and draws one token per row; stateful processors see the draw.
    pub fn sample(&mut self, logits: &Tensor, ctx: &SamplingContext) -> Result<Drawn> {
        let d = match self.chain.steps().split_last() {
            // A tail that fuses itself with the draw (the fused filter) never masks a whole
            // row, so validating its input is validating the processed logits.
            Some((tail, head)) if tail.fuses_draw() => {
                let mut x = prepare(logits, ctx)?;
                for step in head {
                    x = step.apply(&x, ctx)?;
                }
                if ctx.validate() {
                    check_output(&x)?;
                }
                tail.apply_and_draw(&x, &self.rule, ctx)?
            }
            _ => draw(&self.apply(logits, ctx)?, &self.rule, ctx)?,
        };
        self.chain.accept(&d, ctx)?;
        Ok(d)
    }

    /// Forgets processor state.
    pub fn reset(&mut self) {
        self.chain.reset();
    }

    /// Forgets the processor state of the rows whose `[rows]` u8 `mask` entry is 1.
    pub fn reset_rows(&mut self, mask: &Tensor) -> Result<()> {
        self.chain.reset_rows(mask)
    }
}

/// Checks rank and rows, converts to f32 and, when the context asks for it, rejects NaN, +inf
/// and out-of-vocabulary history ids (SPEC §7).
pub fn prepare(logits: &Tensor, ctx: &SamplingContext) -> Result<Tensor> {
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
    let x = logits.to_dtype(DType::F32)?.contiguous()?;
    if ctx.validate() {
        check_input(&x)?;
        if let Some(h) = ctx.history() {
            if h.width() > 0 {
                let pos = Tensor::arange(0u32, h.width() as u32, x.device())?.unsqueeze(0)?;
                let valid = pos.broadcast_lt(&h.lens().unsqueeze(1)?)?;
                let tokens = h.tokens()?;
                let max = valid
                    .where_cond(&tokens, &tokens.zeros_like()?)?
                    .max_keepdim(1)?;
                let max = max.flatten_all()?.to_vec1::<u32>()?;
                if let Some(&id) = max.iter().find(|&&m| m as usize >= vocab) {
                    return Err(SamplerError::TokenOutOfRange {
                        what: "history",
                        id: id as i64,
                        vocab,
                    });
                }
            }
        }
    }
    Ok(x)
}

fn check_input(x: &Tensor) -> Result<()> {
    let nan = x.ne(x)?.to_dtype(DType::F32)?.sum_keepdim(D::Minus1)?;
    let pos_inf = x
        .eq(f32::INFINITY)?
        .to_dtype(DType::F32)?
        .sum_keepdim(D::Minus1)?;
    let stats = Tensor::cat(&[nan, pos_inf], 1)?.to_vec2::<f32>()?;
    for (row, s) in stats.iter().enumerate() {
        if s[0] > 0.0 {
            return Err(SamplerError::NanLogits { row });
        }
        if s[1] > 0.0 {
            return Err(SamplerError::Shape(format!(
                "logits contain +inf (row {row})"
            )));
        }
    }
    Ok(())
}

fn check_output(y: &Tensor) -> Result<()> {
    let max = y.max_keepdim(D::Minus1)?.flatten_all()?.to_vec1::<f32>()?;
    for (row, m) in max.iter().enumerate() {
        if m.is_nan() {
            return Err(SamplerError::NanLogits { row });
        }
        if *m == f32::NEG_INFINITY {
            return Err(SamplerError::AllMasked { row });
        }
    }
    Ok(())
}
