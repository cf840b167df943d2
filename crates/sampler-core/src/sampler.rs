//! The chain builder (the documented default order, SPEC §4) and `Sampler`, which runs the chain
//! and the draw with input validation.

use candle_core::{DType, Tensor, D};

use crate::config::{Mode, SamplerConfig};
use crate::context::SamplingContext;
use crate::draw::{draw, DrawRule, Drawn};
use crate::error::{Result, SamplerError};
use crate::param::RowParam;
use crate::processor::{Chain, LogitsProcessor};
use crate::processors::*;

/// Builds a chain in the default order:
/// [NAR: ban stop token] -> bans / logit bias -> repetition penalty -> [AR: length penalty] ->
/// min-p -> top-k -> top-p -> dynamic temperature or temperature -> top-n-sigma -> draw.
/// Every parameter takes a scalar or a `[rows]` tensor; a processor whose scalar value is its
/// "off" value is left out.
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
            ban_tokens: Vec::new(),
            logit_bias: Vec::new(),
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

    /// The processors in the default order.
    pub fn build_chain(&self) -> Result<Chain> {
        let mut c = Chain::new();
        if self.mode == Mode::Nar {
            c.push(BanTokens::stop_token(self.stop_token));
        }
        if !self.ban_tokens.is_empty() {
            c.push(BanTokens::new(self.ban_tokens.clone()));
        }
        if !self.logit_bias.is_empty() {
            c.push(LogitBias::new(self.logit_bias.clone()));
        }
        // Every processor is constructed (which validates its parameters) and kept only when
        // some row needs it.
        let penalty = RepetitionPenalty::new(
            self.repetition_penalty.clone(),
            self.repetition_penalty_decay.clone(),
            self.repetition_penalty_window.clone(),
        )?;
        if !(is_off(&self.repetition_penalty, |v| v == 1.0)
            && is_off(&self.repetition_penalty_decay, |v| v == 0.0))
        {
            c.push(penalty);
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
        let dynamic =
            DynamicTemperature::new(self.temperature.clone(), self.min_temperature.clone())?;
        match (self.temperature.scalar(), self.min_temperature.scalar()) {
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
        Ok(c)
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
        let y = self.apply(logits, ctx)?;
        let d = draw(&y, &self.rule, ctx)?;
        self.chain.accept(&d, ctx)?;
        Ok(d)
    }

    /// Forgets processor state.
    pub fn reset(&mut self) {
        self.chain.reset();
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
