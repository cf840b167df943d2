//! Entropix (xjdr and doomslide, the `entropix` project's `sampler.py`): choose, per row, how to
//! sample from how uncertain the model is, measured by the entropy and varentropy of the logits
//! and, when given, statistics of the attention scores.
//!
//! # Metrics (per row, returned to the caller as [`EntropixMetrics`])
//! - `entropy`: `H = -sum p log2 p` (bits) of the softmax of the logits this step receives;
//!   `varentropy`: `sum p (log2 p + H)^2` (bits²), the variance of the surprise.
//! - With attention scores `A` (pre-softmax, `[layers, heads, q, k]` for every row or
//!   `[rows, layers, heads, q, k]`, [`SamplingContext::with_attentions`]) and `P = softmax_k(A)`:
//!   `attn_entropy`: the mean over layers, heads and queries of `-sum_k P log2 clamp(P, 1e-10)`;
//!   `attn_varentropy`: the variance over heads (population) of that entropy, averaged over
//!   layers and queries; `agreement`: the mean over layers, heads, queries and keys of
//!   `|P - mean_heads P|`; `interaction_strength`: the mean of `|A|` over its finite entries.
//!   Without attention scores these four are 0.
//!
//! # The decision (first match wins; thresholds in [`EntropixConfig`])
//! | state | condition | what the row gets |
//! |---|---|---|
//! | 0 `Argmax` ("flowing") | H < low_entropy and V < low_varentropy | only its argmax (lowest id on ties) |
//! | 1 `Clarify` ("treading carefully") | H > high_entropy and V < low_varentropy | with `clarifying_token` set and not the row's last history token: that token only; else T = min(1.5, t (1.3 + 0.2 attn_entropy)), base top-k, top-p, min-p |
//! | 2 `Explore` ("forks in the path") | H < high_entropy and V > high_varentropy | T = min(1.5, t (1.2 + 0.3 interaction)), top-k = max(5, floor(k (1 + 0.5 (1 - agreement)))) |
//! | 3 `Resample` ("in the mist") | H > medium_entropy and V > high_varentropy | T = max(2, t (2 + 0.5 attn_varentropy)), top-p = max(0.5, p - 0.2 attn_entropy) |
//! | 4 `Adaptive` (the rest) | | T = t (1 + 0.3 (H + V) + 0.2 (attn_entropy + attn_varentropy) - 0.2 agreement), top-p = clip(p (1 + 0.1 attn_varentropy), 0.1, 1), top-k = clip(round(k (1 + 0.3 interaction - 0.2 agreement)), 1, 100), min-p = clip(mp (1 - 0.5 (H + V)), 0.01, 0.5), then best of n = 5 |
//!
//! `t, k, p, mp` are the base temperature 0.666, top-k 27, top-p 0.9 and min-p 0.03. Where a
//! state samples, the row is divided by T, then min-p (`l - max >= ln mp`, f64, no protected
//! tokens), top-k and top-p filter it in that order, each with this crate's semantics. The
//! reference's `_sample` computes a min-p mask it never applies and cuts top-p over the
//! ascending order; we apply both as documented instead. Entropy, varentropy and the masses of
//! the filters are f64.
//!
//! Best of n: the reference draws n tokens and keeps the one with the highest log-probability
//! (its confidence bonus is the same for all n candidates, so it never changes the choice). That
//! is itself a distribution, which this processor returns instead of drawing: a token of
//! probability q whose value group G (the tokens of equal logit, total mass q_G) has mass `a`
//! at or below it and `b = a - q_G` strictly below gets `q * (a^n - b^n) / q_G`, computed as
//! `q * sum_{j<n} a^j b^(n-1-j)` (no cancellation). The draw then samples it exactly, with the
//! crate's one uniform per row. It needs the row's kept tokens among its 100 largest values,
//! which the adaptive top-k (at most 100) guarantees.
//!
//! Entropix is the last step before the draw (it sets its own temperature and filters: leave
//! the chain's at their defaults); the draw is multinomial (an `Argmax` row has one token left).
//!
//! Parameters: `entropix` (a switch; the thresholds are an [`EntropixConfig`], the reference's
//! by default).

use candle_core::{DType, Tensor, D};
use sampler_kernels::spec::{entropix_metric as em, StageOp, ENTROPIX_BEST_OF_SUPPORT};

/// Every threshold and coefficient of the decision; the defaults are the reference's. The
/// clarifying token is a float id, -1 for none (then the Clarify state samples).
pub use sampler_kernels::spec::EntropixParams as EntropixConfig;

use crate::context::SamplingContext;
use crate::error::{invalid, Result, SamplerError};
use crate::param::RowParam;
use crate::processor::LogitsProcessor;
use crate::sort_ops::sorted_head;
use crate::stage::{Sink, Slot, Stage};
use crate::tensor_ops::{
    argmax_lowest, count, decision_dtype, finite, full_like, keep_only, kth_largest, log_softmax,
    masked_sum, softmax, top_p_keep,
};

const LN_2: f64 = std::f64::consts::LN_2;

/// The smallest temperature a sampling state divides by.
const MIN_T: f32 = 1e-6;

/// The best-of-n support: the adaptive state's top-k is clipped to this.
const BEST_OF_SUPPORT: usize = ENTROPIX_BEST_OF_SUPPORT;

fn validate_config(c: &EntropixConfig) -> Result<()> {
    let bad = |what: &str| Err(invalid("entropix", what.to_string()));
    if c.words().iter().any(|v| !v.is_finite()) {
        return bad("every threshold and coefficient must be finite");
    }
    if c.temperature <= 0.0 || !(0.0..=1.0).contains(&c.top_p) || c.top_k < 1.0 {
        return bad("base temperature must be > 0, top_p in [0, 1], top_k >= 1");
    }
    if c.n_adaptive_samples < 1.0 || c.n_adaptive_samples.fract() != 0.0 {
        return bad("n_adaptive_samples must be an integer >= 1");
    }
    if c.ada_max_top_k > BEST_OF_SUPPORT as f32 {
        return bad("ada_max_top_k must be <= 100 (the best-of-n support)");
    }
    if c.clarifying_token < -1.0 || c.clarifying_token.fract() != 0.0 {
        return bad("clarifying_token must be a token id, or -1 for none");
    }
    Ok(())
}

/// The decision of a row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum EntropixState {
    /// Low entropy and varentropy: the argmax.
    Argmax = 0,
    /// High entropy, low varentropy: clarify, or sample warmer.
    Clarify = 1,
    /// Low entropy, high varentropy: explore with a wider top-k.
    Explore = 2,
    /// High entropy and varentropy: resample hot.
    Resample = 3,
    /// The rest: adaptive sampling with best-of-n.
    Adaptive = 4,
}

impl EntropixState {
    /// The state of a code of the metrics' `state` tensor.
    pub fn from_u8(v: u8) -> Option<Self> {
        [
            Self::Argmax,
            Self::Clarify,
            Self::Explore,
            Self::Resample,
            Self::Adaptive,
        ]
        .get(v as usize)
        .copied()
    }
}

/// Per-row metrics and decision, each a `[rows]` tensor on the logits' device.
#[derive(Clone, Debug)]
pub struct EntropixMetrics {
    /// f32 bits.
    pub entropy: Tensor,
    /// f32 bits².
    pub varentropy: Tensor,
    /// f32 mean attention entropy (bits).
    pub attn_entropy: Tensor,
    /// f32 variance over heads of the attention entropy.
    pub attn_varentropy: Tensor,
    /// f32 mean deviation of the heads' attention from their mean.
    pub agreement: Tensor,
    /// f32 mean absolute attention score.
    pub interaction_strength: Tensor,
    /// u8 [`EntropixState`] codes.
    pub state: Tensor,
}

impl EntropixMetrics {
    /// The metrics of a fused step's `[rows, 7]` output (columns of
    /// `sampler_kernels::spec::entropix_metric`).
    pub(crate) fn from_columns(m: &Tensor) -> Result<Self> {
        let col = |c: usize| -> Result<Tensor> { Ok(m.narrow(1, c, 1)?.squeeze(1)?.contiguous()?) };
        Ok(Self {
            entropy: col(em::ENTROPY)?,
            varentropy: col(em::VARENTROPY)?,
            attn_entropy: col(em::ATTN_ENTROPY)?,
            attn_varentropy: col(em::ATTN_VARENTROPY)?,
            agreement: col(em::AGREEMENT)?,
            interaction_strength: col(em::INTERACTION_STRENGTH)?,
            state: col(em::STATE)?.to_dtype(DType::U8)?,
        })
    }
}

/// The entropix decision and its distributions.
#[derive(Clone, Debug)]
pub struct Entropix {
    config: EntropixConfig,
    last: Slot<EntropixMetrics>,
}

/// Entropy (bits) and varentropy (bits²) of each row's softmax, `[rows, 1]` each, in f64 where
/// the device has it (f32 on Metal).
pub fn entropy_varentropy(logits: &Tensor) -> Result<(Tensor, Tensor)> {
    let fin = finite(logits)?;
    let logp = log_softmax(&logits.to_dtype(decision_dtype(logits.device()))?)?;
    let p = logp.exp()?;
    let log2p = (logp * (1.0 / LN_2))?;
    let entropy = masked_sum(&(&p * &log2p)?, &fin)?.neg()?;
    let dev2 = log2p.broadcast_add(&entropy)?.sqr()?;
    let varentropy = masked_sum(&(&p * dev2)?, &fin)?;
    Ok((entropy, varentropy))
}

/// The four attention metrics of the context's scores as a `[1 or rows, 4]` tensor.
fn attention_metrics(a: &Tensor, rows: usize) -> Result<Tensor> {
    let m = sampler_kernels::attention_metrics(a)?;
    let r = m.dim(0)?;
    if r != 1 && r != rows {
        return Err(SamplerError::Shape(format!(
            "attentions have {r} rows, the logits {rows}"
        )));
    }
    Ok(m)
}

/// `cond ? a : b` for `[rows, 1]` columns.
fn pick(cond: &Tensor, a: &Tensor, b: &Tensor) -> Result<Tensor> {
    Ok(cond.where_cond(a, b)?)
}

impl Entropix {
    /// Validates the thresholds.
    pub fn new(config: EntropixConfig) -> Result<Self> {
        validate_config(&config)?;
        Ok(Self {
            config,
            last: Slot::default(),
        })
    }

    /// The thresholds.
    pub fn config(&self) -> &EntropixConfig {
        &self.config
    }

    /// The metrics and decision of the most recent [`LogitsProcessor::apply`].
    pub fn last_metrics(&self) -> Option<EntropixMetrics> {
        self.last.get()
    }

    /// Computes the metrics and the decision for `logits` (`[rows, vocab]` f32) and the
    /// context's attention scores, if any.
    pub fn metrics(&self, logits: &Tensor, ctx: &SamplingContext) -> Result<EntropixMetrics> {
        let rows = logits.dim(0)?;
        let dev = logits.device();
        let (entropy, varentropy) = entropy_varentropy(logits)?;
        let [attn_entropy, attn_varentropy, agreement, interaction_strength] =
            match ctx.attentions() {
                None => {
                    let z = Tensor::zeros(rows, DType::F32, dev)?;
                    [z.clone(), z.clone(), z.clone(), z]
                }
                Some(a) => {
                    let m = attention_metrics(a, rows)?.to_device(dev)?;
                    let per_row = |c: usize| -> Result<Tensor> {
                        Ok(m.narrow(1, c, 1)?
                            .squeeze(1)?
                            .broadcast_as(rows)?
                            .contiguous()?)
                    };
                    [per_row(0)?, per_row(1)?, per_row(2)?, per_row(3)?]
                }
            };
        let c = &self.config;
        let (h, v) = (&entropy, &varentropy);
        let th = |x: f32| x as f64;
        let lelv = (h.lt(th(c.low_entropy))? * v.lt(th(c.low_varentropy))?)?;
        let helv = (h.gt(th(c.high_entropy))? * v.lt(th(c.low_varentropy))?)?;
        let lehv = (h.lt(th(c.high_entropy))? * v.gt(th(c.high_varentropy))?)?;
        let hehv = (h.gt(th(c.medium_entropy))? * v.gt(th(c.high_varentropy))?)?;
        let code = |x: f32| full_like(&h.to_dtype(DType::F32)?, x);
        let state = pick(&hehv, &code(3.0)?, &code(4.0)?)?;
        let state = pick(&lehv, &code(2.0)?, &state)?;
        let state = pick(&helv, &code(1.0)?, &state)?;
        let state = pick(&lelv, &code(0.0)?, &state)?;
        Ok(EntropixMetrics {
            entropy: entropy.squeeze(1)?.to_dtype(DType::F32)?,
            varentropy: varentropy.squeeze(1)?.to_dtype(DType::F32)?,
            attn_entropy,
            attn_varentropy,
            agreement,
            interaction_strength,
            state: state.squeeze(1)?.to_dtype(DType::U8)?,
        })
    }

    /// The logits of the row's decided distribution.
    fn decide(
        &self,
        logits: &Tensor,
        m: &EntropixMetrics,
        ctx: &SamplingContext,
    ) -> Result<Tensor> {
        let (rows, vocab) = logits.dims2()?;
        let c = &self.config;
        let col = |t: &Tensor| -> Result<Tensor> { Ok(t.reshape((rows, 1))?) };
        let (h, v) = (col(&m.entropy)?, col(&m.varentropy)?);
        let (ae, av) = (col(&m.attn_entropy)?, col(&m.attn_varentropy)?);
        let (agree, inter) = (col(&m.agreement)?, col(&m.interaction_strength)?);
        let state = col(&m.state)?;
        let is = |s: EntropixState| state.eq(s as u8);
        let k0 = |x: f32| full_like(&h, x);
        let t = c.temperature as f64;

        // Temperature, top-k, top-p and min-p of each state (Argmax: no filtering).
        let t1 = ae
            .affine(
                t * c.helv_attn_ent_coef as f64,
                t * c.helv_attn_ent_offset as f64,
            )?
            .minimum(c.helv_max_temperature)?;
        let t2 = inter
            .affine(
                t * c.lehv_interaction_strength_coef as f64,
                t * c.lehv_interaction_strength_offset as f64,
            )?
            .minimum(c.lehv_max_temperature)?;
        let t3 = av
            .affine(
                t * c.hehv_attn_vent_coef as f64,
                t * c.hehv_attn_vent_offset as f64,
            )?
            .maximum(c.hehv_min_temperature)?;
        let uncertainty = (&h + &v)?;
        let attn_uncertainty = (&ae + &av)?;
        let t4 = ((uncertainty.affine(c.ada_temp_logits as f64, 1.0)?
            + attn_uncertainty.affine(c.ada_temp_attn as f64, 0.0)?)?
            - agree.affine(c.ada_temp_agree as f64, 0.0)?)?
        .affine(t, 0.0)?;
        let temp = pick(
            &is(EntropixState::Clarify)?,
            &t1,
            &pick(
                &is(EntropixState::Explore)?,
                &t2,
                &pick(&is(EntropixState::Resample)?, &t3, &t4)?,
            )?,
        )?;
        let temp = pick(&is(EntropixState::Argmax)?, &k0(1.0)?, &temp)?.maximum(MIN_T)?;

        let base_k = c.top_k as f64;
        let k2 = agree
            .affine(
                -(base_k * c.lehv_top_k_agreement_coef as f64),
                base_k * (1.0 + c.lehv_top_k_agreement_coef as f64),
            )?
            .floor()?
            .maximum(c.lehv_min_top_k)?;
        let k4 = (inter.affine(base_k * c.ada_top_k_int as f64, base_k)?
            - agree.affine(base_k * c.ada_top_k_agree as f64, 0.0)?)?
        .round()?
        .clamp(1f32, c.ada_max_top_k)?;
        let top_k = pick(
            &is(EntropixState::Explore)?,
            &k2,
            &pick(&is(EntropixState::Adaptive)?, &k4, &k0(c.top_k)?)?,
        )?;
        let top_k = pick(&is(EntropixState::Argmax)?, &k0(vocab as f32)?, &top_k)?;

        let p3 = ae
            .affine(-(c.hehv_attn_ent_coef as f64), c.top_p as f64)?
            .maximum(c.hehv_min_top_p)?;
        let p4 = av
            .affine((c.top_p * c.ada_top_p) as f64, c.top_p as f64)?
            .clamp(c.ada_min_top_p, 1f32)?;
        let top_p = pick(
            &is(EntropixState::Resample)?,
            &p3,
            &pick(&is(EntropixState::Adaptive)?, &p4, &k0(c.top_p)?)?,
        )?;
        let top_p = pick(&is(EntropixState::Argmax)?, &k0(1.0)?, &top_p)?;

        let mp4 = uncertainty
            .affine(-((c.min_p * c.ada_min_p) as f64), c.min_p as f64)?
            .clamp(c.ada_min_min_p, c.ada_max_min_p)?;
        let min_p = pick(&is(EntropixState::Adaptive)?, &mp4, &k0(c.min_p)?)?;
        let min_p = pick(&is(EntropixState::Argmax)?, &k0(0.0)?, &min_p)?;

        // Sample: temperature, then min-p, top-k, top-p, each on what the previous one left.
        let dt = decision_dtype(logits.device());
        let x = logits.broadcast_div(&temp)?;
        let x64 = x.to_dtype(dt)?;
        let ln_mp = min_p.to_dtype(dt)?.log()?;
        let above = x64
            .broadcast_sub(&x64.max_keepdim(D::Minus1)?)?
            .broadcast_ge(&ln_mp)?;
        let x = keep_only(&x, &above)?;
        let x = keep_only(&x, &x.broadcast_ge(&kth_largest(&x, &top_k.ceil()?)?)?)?;
        let probs = softmax(&x.to_dtype(dt)?)?;
        let top_p64 = top_p.to_dtype(dt)?;
        let keep = (top_p_keep(&x, &probs, &top_p64)?
            + top_p.ge(1f32)?.broadcast_as((rows, vocab))?)?
        .gt(0u8)?;
        let sampled = keep_only(&x, &keep)?;
        let adaptive = is(EntropixState::Adaptive)?;
        let best = best_of_n(&sampled, c.n_adaptive_samples as usize)?;
        let out = pick(&adaptive.broadcast_as((rows, vocab))?, &best, &sampled)?;

        // Argmax rows keep their argmax only.
        let ids = Tensor::arange(0u32, vocab as u32, logits.device())?.unsqueeze(0)?;
        let argmax = ids.broadcast_eq(&argmax_lowest(logits)?.unsqueeze(1)?)?;
        let argmax_only = keep_only(logits, &argmax)?;
        let out = pick(
            &is(EntropixState::Argmax)?.broadcast_as((rows, vocab))?,
            &argmax_only,
            &out,
        )?;

        // Clarify rows insert the clarifying token unless they just did (or it is banned).
        match c.clarifying() {
            None => Ok(out),
            Some(tok) => {
                if tok as usize >= vocab {
                    return Err(SamplerError::TokenOutOfRange {
                        what: "entropix clarifying_token",
                        id: tok as i64,
                        vocab,
                    });
                }
                let is_tok = ids.eq(tok)?;
                let available = masked_sum(
                    &finite(logits)?.to_dtype(DType::F32)?,
                    &is_tok.broadcast_as((rows, vocab))?,
                )?
                .gt(0f32)?;
                let just_asked = last_token_is(ctx, rows, tok, logits.device())?;
                let force = ((is(EntropixState::Clarify)? * available)? * just_asked.eq(0u8)?)?;
                let forced = keep_only(logits, &is_tok.broadcast_as((rows, vocab))?.contiguous()?)?;
                Ok(pick(&force.broadcast_as((rows, vocab))?, &forced, &out)?)
            }
        }
    }
}

/// `[rows, 1]` u8: whether the row's last history token is `tok`.
fn last_token_is(
    ctx: &SamplingContext,
    rows: usize,
    tok: u32,
    dev: &candle_core::Device,
) -> Result<Tensor> {
    let Some(h) = ctx.history() else {
        return Ok(Tensor::zeros((rows, 1), DType::U8, dev)?);
    };
    if h.width() == 0 {
        return Ok(Tensor::zeros((rows, 1), DType::U8, dev)?);
    }
    let lens = h.lens().to_dtype(DType::F32)?.reshape((rows, 1))?;
    let at = lens
        .affine(1.0, -1.0)?
        .maximum(0f32)?
        .to_dtype(DType::U32)?;
    let last = h.tokens()?.contiguous()?.gather(&at, 1)?;
    Ok((last.eq(tok)? * lens.ge(1f32)?)?)
}

/// The best-of-`n` distribution of each row (as log-probabilities, -inf where the input is):
/// n tokens drawn from `softmax(x)`, the most probable kept (the first drawn among equals).
/// Exact when the row's finite values are all among its 100 largest.
pub fn best_of_n(x: &Tensor, n: usize) -> Result<Tensor> {
    let (rows, vocab) = x.dims2()?;
    let dev = x.device();
    let dt = decision_dtype(dev);
    let fin = finite(x)?;
    let x64 = x.to_dtype(dt)?;
    let logq = log_softmax(&x64)?;
    let q = logq.exp()?;
    let m = BEST_OF_SUPPORT.min(vocab);
    let vals = sorted_head(x, m, true)?;
    let lse = x64.max_keepdim(D::Minus1)?;
    let lse = (&lse
        + x64
            .broadcast_sub(&lse)?
            .exp()?
            .sum_keepdim(D::Minus1)?
            .log()?)?;
    let qv = vals.to_dtype(dt)?.broadcast_sub(&lse)?.exp()?;
    // Mass strictly above each list position: the exclusive prefix sum (m <= 100, so candle's
    // quadratic cumsum is cheap here).
    let above = (qv.cumsum(1)? - &qv)?.contiguous()?;
    let pos_gt = count_above(&vals, x, true)?;
    let pos_ge = count_above(&vals, x, false)?;
    let at = pos_gt
        .minimum((m - 1) as f32)?
        .to_dtype(DType::U32)?
        .contiguous()?;
    let mass_above = above.gather(&at, 1)?;
    // The tie group's size: from the list, or counted over the row when it runs past the list.
    let last = vals.narrow(1, m - 1, 1)?;
    let tail_count = count(&x.broadcast_eq(&last)?)?;
    let group = pos_ge.eq(m as f32)?.where_cond(
        &tail_count.broadcast_as((rows, vocab))?,
        &(&pos_ge - &pos_gt)?,
    )?;
    let group_mass = (group.to_dtype(dt)? * &q)?;
    let total = masked_sum(&q, &fin)?;
    let a = total.broadcast_sub(&mass_above)?.maximum(0f64)?;
    let b = (&a - &group_mass)?.maximum(0f64)?;
    // sum_{j<n} a^j b^(n-1-j), by repeated products (so 0^0 = 1).
    let mut sum = Tensor::zeros((rows, vocab), dt, dev)?;
    let mut a_pow = Tensor::ones((rows, vocab), dt, dev)?;
    for j in 0..n {
        let mut b_pow = Tensor::ones((rows, vocab), dt, dev)?;
        for _ in 0..(n - 1 - j) {
            b_pow = (b_pow * &b)?;
        }
        sum = (sum + (&a_pow * b_pow)?)?;
        a_pow = (a_pow * &a)?;
    }
    let out = (logq + sum.log()?)?.to_dtype(DType::F32)?;
    keep_only(&out, &fin)
}

/// For each entry of `x` (`[rows, V]`), how many values of the descending list `vals`
/// (`[rows, m]`) are greater than it (`strict`) or at least it; `[rows, V]` f32.
fn count_above(vals: &Tensor, x: &Tensor, strict: bool) -> Result<Tensor> {
    let m = vals.dim(1)?;
    let mut lo = x.zeros_like()?;
    let mut hi = full_like(x, m as f32)?;
    let probes = usize::BITS - m.leading_zeros() + 1;
    for _ in 0..probes {
        let open = lo.lt(&hi)?;
        let mid = ((&lo + &hi)? * 0.5)?.floor()?;
        let idx = mid
            .minimum((m - 1) as f32)?
            .to_dtype(DType::U32)?
            .contiguous()?;
        let v = vals.gather(&idx, 1)?;
        let right = if strict { v.gt(x)? } else { v.ge(x)? };
        let go_right = (right * &open)?;
        let go_left = (go_right.eq(0u8)? * &open)?;
        lo = go_right.where_cond(&mid.affine(1.0, 1.0)?, &lo)?;
        hi = go_left.where_cond(&mid, &hi)?;
    }
    Ok(lo)
}

impl LogitsProcessor for Entropix {
    fn name(&self) -> &'static str {
        "entropix"
    }

    fn apply(&self, logits: &Tensor, ctx: &SamplingContext) -> Result<Tensor> {
        let m = self.metrics(logits, ctx)?;
        let out = self.decide(logits, &m, ctx)?;
        self.last.set(Some(m));
        Ok(out)
    }

    fn stage(&self) -> Option<Stage> {
        Some(Stage::with_sink(
            StageOp::<RowParam>::Entropix(std::sync::Arc::new(self.config.clone())),
            Sink::Metrics(self.last.share()),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{ctx, ctx_with_history, rows, t2};
    use candle_core::Device;

    const NINF: f32 = f32::NEG_INFINITY;
    const V: usize = 1024;

    fn row(prefix: &[f32], rest: f32) -> Vec<f32> {
        let mut r = prefix.to_vec();
        r.resize(V, rest);
        r
    }

    /// One row per state: peaked (Argmax), {0.5, 0.25, 0.25} (Adaptive), uniform over 64
    /// (Clarify), 0.8 + a tail of 1023 (Explore), 0.5 + a tail of 1023 (Resample).
    fn five_states() -> Tensor {
        let tail = |p0: f32| {
            let mut r = vec![(p0).ln()];
            r.resize(V, ((1.0 - p0) / 1023.0).ln());
            r
        };
        let rows: Vec<Vec<f32>> = vec![
            row(&[20.0], 0.0),
            row(&[0.5f32.ln(), 0.25f32.ln(), 0.25f32.ln()], NINF),
            row(&[1.0; 64], NINF),
            tail(0.8),
            tail(0.5),
        ];
        let refs: Vec<&[f32]> = rows.iter().map(|r| r.as_slice()).collect();
        t2(&refs)
    }

    fn kept(r: &[f32]) -> usize {
        r.iter().filter(|v| v.is_finite()).count()
    }

    #[test]
    fn entropy_and_varentropy_in_bits() -> Result<()> {
        // Uniform over 4: 2 bits, no variance. {0.5, 0.25, 0.25} (and a -inf): surprises 1, 2, 2
        // bits, H = 1.5, V = 0.5 * 0.25 + 0.5 * 0.25 = 0.25.
        let x = t2(&[
            &[0.0, 0.0, 0.0, 0.0],
            &[0.5f32.ln(), 0.25f32.ln(), 0.25f32.ln(), NINF],
        ]);
        let (h, v) = entropy_varentropy(&x)?;
        let (h, v) = (
            h.flatten_all()?.to_vec1::<f64>()?,
            v.flatten_all()?.to_vec1::<f64>()?,
        );
        assert!(
            (h[0] - 2.0).abs() < 1e-6 && v[0].abs() < 1e-6,
            "{h:?} {v:?}"
        );
        assert!(
            (h[1] - 1.5).abs() < 1e-6 && (v[1] - 0.25).abs() < 1e-6,
            "{h:?} {v:?}"
        );
        Ok(())
    }

    #[test]
    fn attention_metrics_by_hand() -> Result<()> {
        // One layer, two heads, one query, two keys: head 0 scores (0, 0) -> P = (1/2, 1/2),
        // 1 bit; head 1 scores (ln 3, 0) -> P = (3/4, 1/4), 0.811278 bits. Mean 0.905639,
        // population variance over heads 0.008904; mean P = (5/8, 3/8), every |P - mean| =
        // 1/8; mean |score| = ln 3 / 4 = 0.274653.
        let a = Tensor::new(&[[[[0f32, 0.0]], [[3f32.ln(), 0.0]]]], &Device::Cpu)?;
        let x = t2(&[&[0.0, 1.0], &[1.0, 0.0]]);
        let m = Entropix::new(EntropixConfig::default())?.metrics(&x, &ctx().with_attentions(a))?;
        let get = |t: &Tensor| t.to_vec1::<f32>().unwrap();
        for (got, want) in [
            (get(&m.attn_entropy), 0.905_639),
            (get(&m.attn_varentropy), 0.008_904),
            (get(&m.agreement), 0.125),
            (get(&m.interaction_strength), 0.274_653),
        ] {
            assert_eq!(got.len(), 2, "shared scores apply to every row");
            assert!(
                got.iter().all(|g| (g - want).abs() < 1e-5),
                "{got:?} vs {want}"
            );
        }
        // Per-row scores of the wrong row count, a wrong rank, NaN: errors.
        let e = Entropix::new(EntropixConfig::default())?;
        let bad_rows = Tensor::zeros((3, 1, 2, 1, 2), DType::F32, &Device::Cpu)?;
        assert!(e.metrics(&x, &ctx().with_attentions(bad_rows)).is_err());
        assert!(e
            .metrics(
                &x,
                &ctx().with_attentions(Tensor::zeros((2, 2), DType::F32, &Device::Cpu)?)
            )
            .is_err());
        let nan = Tensor::new(&[[[[f32::NAN, 0.0]]]], &Device::Cpu)?;
        assert!(e.metrics(&x, &ctx().with_attentions(nan)).is_err());
        Ok(())
    }

    #[test]
    fn each_row_gets_its_state() -> Result<()> {
        let e = Entropix::new(EntropixConfig::default())?;
        let x = five_states();
        let y = rows(&e.apply(&x, &ctx())?);
        let m = e.last_metrics().expect("metrics are kept");
        assert_eq!(m.state.to_vec1::<u8>()?, vec![0, 4, 1, 2, 3]);
        let h = m.entropy.to_vec1::<f32>()?;
        assert!(
            (h[1] - 1.5).abs() < 1e-5 && (h[2] - 6.0).abs() < 1e-4,
            "{h:?}"
        );

        // Argmax: the peak only, unchanged.
        assert_eq!((kept(&y[0]), y[0][0]), (1, 20.0));
        // Adaptive: T = 0.666 (1 + 0.3 * 1.75) = 1.01565 gives q0 = 0.497330 for the 0.5 token;
        // nothing is filtered (min-p 0.01, top-k 27, top-p 0.9 over masses 0, 0.497, 0.749);
        // best of 5: 1 - (1 - q0)^5 = 0.967907 and (1 - q0)^5 / 2 = 0.016047 for each tie.
        let p = rows(&softmax(&t2(&[&y[1]]))?)[0].clone();
        for (g, w) in p[..3].iter().zip([0.967_907f32, 0.016_047, 0.016_047]) {
            assert!((g - w).abs() < 2e-5, "{:?}", &p[..3]);
        }
        assert_eq!(kept(&y[1]), 3);
        // Clarify (no clarifying token set): T = 0.666 * 1.3 = 0.8658, top-k 27 keeps all 64
        // ties, top-p 0.9 keeps ids 0..=57 (floor(0.9 * 64) + 1 = 58 tokens).
        assert_eq!(kept(&y[2]), 58);
        assert!(
            y[2][..58].iter().all(|v| (v - 1.155_001).abs() < 1e-5),
            "{:?}",
            &y[2][..3]
        );
        // Explore: min-p 0.03 at T = 0.7992 removes the whole tail.
        assert_eq!(kept(&y[3]), 1);
        assert!((y[3][0] - 0.8f32.ln() / 0.7992).abs() < 1e-5);
        // Resample: T = 2, the tail survives min-p (0.0313 >= 0.03) and top-k (ties); top-p 0.9
        // keeps the head (0.0303) and floor((0.9 - 0.0303) / 0.000948) + 1 = 918 tail tokens.
        assert_eq!(kept(&y[4]), 919);
        Ok(())
    }

    #[test]
    fn clarifying_token_is_inserted_once() -> Result<()> {
        let cfg = EntropixConfig {
            clarifying_token: 70.0,
            ..Default::default()
        };
        let e = Entropix::new(cfg)?;
        let uniform = row(&[1.0; 64], NINF);
        let mut with_token = uniform.clone();
        with_token[70] = 1.0; // the token must be available: a banned one is never forced
        let x = t2(&[&with_token, &uniform]);
        let y = rows(&e.apply(&x, &ctx())?);
        assert_eq!((kept(&y[0]), y[0][70]), (1, 1.0));
        assert!(
            kept(&y[1]) > 1,
            "a banned clarifying token falls back to sampling"
        );
        // Just asked: sample instead.
        let c = ctx_with_history(&[vec![3, 70], vec![70, 3]]);
        let x = t2(&[&with_token, &with_token]);
        let y = rows(&e.apply(&x, &c)?);
        assert!(kept(&y[0]) > 1);
        assert_eq!(kept(&y[1]), 1);
        Ok(())
    }

    #[test]
    fn best_of_n_distributions() -> Result<()> {
        let probs = |x: &Tensor| rows(&best_of_n(x, 2).unwrap().exp().unwrap());
        let close = |g: &[f32], w: &[f32]| {
            assert!(
                g.iter().zip(w).all(|(a, b)| (a - b).abs() < 1e-6),
                "got {g:?}, want {w:?}"
            );
        };
        // {0.2, 0.5, 0.3}, best of 2: 1 - 0.5^2 = 0.75 for the best; (0.5^2 - 0.2^2) = 0.21;
        // 0.2^2 = 0.04.
        let x = t2(&[&[0.2f32.ln(), 0.5f32.ln(), 0.3f32.ln(), NINF]]);
        close(&probs(&x)[0], &[0.04, 0.75, 0.21, 0.0]);
        // Ties share: {0.4, 0.3, 0.3}: 1 - 0.6^2 = 0.64, then 0.36 split in two.
        let x = t2(&[&[0.4f32.ln(), 0.3f32.ln(), 0.3f32.ln()]]);
        close(&probs(&x)[0], &[0.64, 0.18, 0.18]);
        // n = 1 is the distribution itself.
        let x = t2(&[&[0.2f32.ln(), 0.5f32.ln(), 0.3f32.ln()]]);
        close(&rows(&best_of_n(&x, 1)?.exp()?)[0], &[0.2, 0.5, 0.3]);
        // A tie group running past the 100-value list: 0.25 + 150 tokens of 0.005:
        // 1 - 0.75^2 = 0.4375 and 0.5625 / 150 = 0.00375 each.
        let mut r = vec![0.25f32.ln()];
        r.resize(151, 0.005f32.ln());
        r.resize(200, NINF);
        let p = probs(&t2(&[&r]))[0].clone();
        assert!(
            (p[0] - 0.4375).abs() < 1e-6 && (p[150] - 0.00375).abs() < 1e-6,
            "{} {}",
            p[0],
            p[150]
        );
        assert_eq!(p[199], 0.0);
        Ok(())
    }

    #[test]
    fn metrics_reach_the_caller_through_the_sampler() -> Result<()> {
        let cfg = crate::SamplerConfig {
            entropix: true,
            ..Default::default()
        };
        let mut s = crate::Sampler::from_config(&cfg, crate::Mode::Ar)?;
        assert!(s.chain().names().contains(&"entropix"));
        let d = s.sample(&five_states(), &SamplingContext::new(3))?;
        // The argmax row draws its argmax; the states are readable after the step.
        assert_eq!(d.tokens.to_vec1::<u32>()?[0], 0);
        let m = s
            .chain()
            .find::<Entropix>()
            .and_then(|e| e.last_metrics())
            .expect("metrics");
        assert_eq!(m.state.to_vec1::<u8>()?, vec![0, 4, 1, 2, 3]);
        Ok(())
    }
}
