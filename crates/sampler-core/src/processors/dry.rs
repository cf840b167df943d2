//! DRY, "don't repeat yourself" (p-e-w; the canonical algorithm of text-generation-webui and
//! llama.cpp).
//!
//! Within the last `window` tokens of a row's history (0 = all of it), for every earlier
//! position where a suffix of the history occurred before, the token that followed that
//! occurrence would extend the repeat. With `len` the length of the longest such match for a
//! token (over all its occurrences, at most `max_match`), the token gets
//! `logit -= multiplier * base^(len - allowed_length)` when `len >= max(allowed_length, 1)`.
//! A sequence breaker stops a match: the match may not reach back over the most recent breaker
//! of the history, and a breaker token is never penalised itself. The exponent is clamped to
//! `88.72 / ln(base)` (llama.cpp), so `base^exponent` stays finite; the product with the
//! multiplier is clamped to `f32::MAX`. Breakers are single token ids (default: none).
//!
//! Implementation, on the device and batched: the history is reversed per row (`s[0]` = the
//! last token) and the match lengths are the Z-array of `s` (`z[k]` = the length of the
//! common prefix of `s` and `s[k..]`), built by `max_match` rounds of one vectorised comparison
//! each: `O(max_match * H)` work per row, linear in the history (never the `O(H^2)` of
//! comparing every pair of positions). The longest match per token is then gathered by
//! `max_match` scatter rounds in increasing length order: round `L` writes the penalty of
//! length `L` at every token whose match is at least `L`; duplicate writes in one round carry
//! the same value, so the result does not depend on the backend's write order. The default
//! `max_match` is 50, text-generation-webui's cap (llama.cpp has none, so the two differ only
//! for repeats longer than 50 tokens).
//!
//! Parameters: `dry_multiplier` (>= 0; 0 is off), `dry_base` (>= 1), `dry_allowed_length` and
//! `dry_penalty_last_n` (counts), `dry_sequence_breakers` (ids).

use std::sync::Arc;

use candle_core::{DType, Tensor};
use sampler_kernels::spec::{row, DryTables, StageOp};

use crate::config::Knob;
use crate::context::SamplingContext;
use crate::error::{invalid, Result};
use crate::param::{range, RowParam};
use crate::processor::LogitsProcessor;
use crate::stage::Stage;
use crate::tensor_ops::masked_min;
use crate::vocab_cache::{one_hot_row, VocabCache};

/// DRY's parameters.
#[derive(Clone, Debug)]
pub struct DryParams {
    /// The strength, >= 0; 0 = off.
    pub multiplier: RowParam,
    /// The base of the exponential, >= 1.
    pub base: RowParam,
    /// Repeats shorter than this are free.
    pub allowed_length: RowParam,
    /// The window in tokens; 0 = the whole history.
    pub window: RowParam,
    /// Token ids that stop a match.
    pub breakers: Vec<u32>,
    /// The longest match counted (>= 1).
    pub max_match: usize,
}

impl Default for DryParams {
    fn default() -> Self {
        Self {
            multiplier: Knob::DryMultiplier.default_value().into(),
            base: Knob::DryBase.default_value().into(),
            allowed_length: Knob::DryAllowedLength.default_value().into(),
            window: Knob::DryPenaltyLastN.default_value().into(),
            breakers: Vec::new(),
            max_match: DEFAULT_MAX_MATCH,
        }
    }
}

/// The default cap on a match length.
pub const DEFAULT_MAX_MATCH: usize = 50;

/// `ln(f32::MAX)`: the exponent clamp is this over `ln(base)`.
const FLOAT_MAX_LOG: f32 = 88.722_84;

/// Penalises the tokens that would extend a repeat of the history.
#[derive(Clone, Debug)]
pub struct Dry {
    multiplier: RowParam,
    base: RowParam,
    allowed_length: RowParam,
    window: RowParam,
    breakers: Vec<u32>,
    max_match: usize,
    breaker_row: VocabCache,
}

impl Dry {
    /// Validates the parameters.
    pub fn new(params: DryParams) -> Result<Self> {
        let DryParams {
            multiplier,
            base,
            allowed_length,
            window,
            breakers,
            max_match,
        } = params;
        multiplier.check("dry_multiplier", ">= 0 and finite", range::non_negative)?;
        base.check("dry_base", ">= 1 and finite", |v| v >= 1.0 && v.is_finite())?;
        allowed_length.check("dry_allowed_length", "a count >= 0", range::count)?;
        window.check("dry_penalty_last_n", "a count >= 0", range::count)?;
        if max_match == 0 || max_match > u32::MAX as usize {
            return Err(invalid("dry max_match", "must be in [1, 2^32)"));
        }
        Ok(Self {
            multiplier,
            base,
            allowed_length,
            window,
            breakers,
            max_match,
            breaker_row: VocabCache::default(),
        })
    }

    /// DRY with a multiplier and everything else at its default.
    pub fn with_multiplier(multiplier: impl Into<RowParam>) -> Result<Self> {
        Self::new(DryParams {
            multiplier: multiplier.into(),
            ..Default::default()
        })
    }

    /// Whether the multiplier is off (0) for every row.
    pub fn is_off(multiplier: &RowParam) -> bool {
        multiplier.is_scalar_and(|v| v == 0.0)
    }

    /// `[rows, vocab]` f32 penalties (0 where none), or `None` without a usable history.
    pub fn penalties(&self, logits: &Tensor, ctx: &SamplingContext) -> Result<Option<Tensor>> {
        let Some(hist) = ctx.history() else {
            return Ok(None);
        };
        let width = hist.width();
        if width < 2 {
            return Ok(None);
        }
        let (rows, vocab) = logits.dims2()?;
        let dev = logits.device();
        let breaker_row = if self.breakers.is_empty() {
            None
        } else {
            Some(self.breaker_row.get(vocab, dev, || {
                one_hot_row(&self.breakers, vocab, "dry_sequence_breakers", dev)
            })?)
        };

        // s[k] = the k-th token from the end, inside the row's window; -1 elsewhere.
        let lens = hist.lens().to_dtype(DType::F32)?.reshape((rows, 1))?;
        let window = self.window.column(rows, dev)?;
        let n = window
            .eq(0f32)?
            .where_cond(&lens, &lens.minimum(&window)?)?;
        let k = Tensor::arange(0f32, width as f32, dev)?.unsqueeze(0)?;
        let valid = k.broadcast_lt(&n)?;
        let src = lens.broadcast_sub(&k)?.affine(1.0, -1.0)?;
        let src = valid
            .where_cond(&src, &src.zeros_like()?)?
            .to_dtype(DType::U32)?;
        let s_ids = hist.tokens()?.contiguous()?.gather(&src, 1)?;
        let s_ids = valid.where_cond(&s_ids, &s_ids.zeros_like()?)?;
        let s = valid.where_cond(
            &s_ids.to_dtype(DType::F32)?,
            &valid.to_dtype(DType::F32)?.affine(0.0, -1.0)?,
        )?;

        // A match may not reach the most recent breaker: rep_limit = its index in s.
        let rep_limit = match &breaker_row {
            None => Tensor::full(width as f32, (rows, 1), dev)?,
            Some(row) => {
                // An f32 lookup table: index_select of f32 exists on every backend.
                let row = row.to_dtype(DType::F32)?.squeeze(0)?;
                let is_b = row
                    .index_select(&s_ids.flatten_all()?, 0)?
                    .reshape((rows, width))?
                    .gt(0f32)?;
                let is_b = (is_b * &valid)?;
                masked_min(&k.broadcast_as((rows, width))?.contiguous()?, &is_b)?
                    .minimum(width as f32)?
            }
        };

        // z[k'] (k = k' + 1): the match length ending at position k from the end.
        let m = width - 1;
        let rounds = self.max_match.min(m);
        let pad = Tensor::full(-1f32, (rows, rounds + 1), dev)?;
        let sp = Tensor::cat(&[&s, &pad], 1)?;
        let mut alive = Tensor::ones((rows, m), DType::F32, dev)?;
        let mut z = Tensor::zeros((rows, m), DType::F32, dev)?;
        for l in 0..rounds {
            let head = s.narrow(1, l, 1)?;
            let body = sp.narrow(1, l + 1, m)?;
            let open = (head.ge(0f32)? * rep_limit.gt(l as f32)?)?;
            let ok = body.broadcast_eq(&head)?.broadcast_mul(&open)?;
            alive = (alive * ok.to_dtype(DType::F32)?)?;
            z = (z + &alive)?;
        }
        // The token that followed the occurrence ending at k is s[k - 1] = s[k'].
        let next = s_ids.narrow(1, 0, m)?.contiguous()?;

        let multiplier = self.multiplier.column(rows, dev)?;
        let base = self.base.column(rows, dev)?;
        let allowed = self.allowed_length.column(rows, dev)?;
        let ln_base = base.log()?;
        let max_exp = base.gt(1.000_001f32)?.where_cond(
            &(ln_base.recip()? * FLOAT_MAX_LOG as f64)?.floor()?,
            &base.affine(0.0, f32::MAX as f64)?,
        )?;
        let acc = Tensor::zeros((rows, vocab + 1), DType::F32, dev)?;
        let dummy = Tensor::full(vocab as u32, (rows, m), dev)?;
        for len in 1..=rounds {
            let len_f = len as f32;
            let qualifies = (z.ge(len_f)? * allowed.le(len_f)?.broadcast_as((rows, m))?)?;
            let ids = qualifies.where_cond(&next, &dummy)?;
            let exponent = allowed.affine(-1.0, len_f as f64)?.minimum(&max_exp)?;
            let pen = (multiplier.clone() * (exponent * &ln_base)?.exp()?)?.minimum(f32::MAX)?;
            acc.scatter_set(&ids, &pen.broadcast_as((rows, m))?.contiguous()?, 1)?;
        }
        let mut penalty = acc.narrow(1, 0, vocab)?;
        if let Some(row) = breaker_row {
            let free = row.eq(0u8)?.to_dtype(DType::F32)?;
            penalty = penalty.broadcast_mul(&free)?;
        }
        Ok(Some(penalty))
    }
}

impl LogitsProcessor for Dry {
    fn name(&self) -> &'static str {
        "dry"
    }

    fn apply(&self, logits: &Tensor, ctx: &SamplingContext) -> Result<Tensor> {
        match self.penalties(logits, ctx)? {
            None => Ok(logits.clone()),
            Some(p) => Ok((logits - p)?),
        }
    }

    fn stage(&self) -> Option<Stage> {
        Some(Stage::new(StageOp::Dry(
            row::Dry {
                multiplier: self.multiplier.clone(),
                base: self.base.clone(),
                allowed_length: self.allowed_length.clone(),
                window: self.window.clone(),
            },
            DryTables {
                breakers: Arc::from(self.breakers.clone()),
                max_match: self.max_match as u32,
            },
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{ctx_with_history, rows, t2};

    fn dry5(m: f32, base: f32, allowed: f32, window: f32, breakers: Vec<u32>) -> Result<Dry> {
        Dry::new(DryParams {
            multiplier: m.into(),
            base: base.into(),
            allowed_length: allowed.into(),
            window: window.into(),
            breakers,
            max_match: DEFAULT_MAX_MATCH,
        })
    }

    fn probs(y: &Tensor) -> Vec<Vec<f32>> {
        rows(&crate::tensor_ops::softmax(y).unwrap())
    }

    fn uniform(v: usize) -> Vec<f32> {
        vec![(1.0 / v as f32).ln(); v]
    }

    /// DRY's parameters in a test case.
    #[derive(Clone, Debug)]
    struct Params {
        mult: f32,
        base: f32,
        allowed: usize,
        window: usize,
        breakers: Vec<u32>,
    }

    fn params(mult: f32, base: f32, allowed: usize, window: usize, breakers: &[u32]) -> Params {
        Params {
            mult,
            base,
            allowed,
            window,
            breakers: breakers.to_vec(),
        }
    }

    impl Params {
        fn params(&self) -> DryParams {
            let p = self.clone();
            DryParams {
                multiplier: p.mult.into(),
                base: p.base.into(),
                allowed_length: (p.allowed as f32).into(),
                window: (p.window as f32).into(),
                breakers: p.breakers,
                max_match: DEFAULT_MAX_MATCH,
            }
        }

        fn dry(&self) -> Dry {
            let p = self.clone();
            Dry::new(DryParams {
                multiplier: p.mult.into(),
                base: p.base.into(),
                allowed_length: (p.allowed as f32).into(),
                window: (p.window as f32).into(),
                breakers: p.breakers,
                max_match: DEFAULT_MAX_MATCH,
            })
            .unwrap()
        }
    }

    /// One llama.cpp test-sampling case: uniform probabilities, a history, the expected
    /// probabilities after DRY.
    fn published(v: usize, hist: &[i64], want: &[f32], p: Params) {
        let x = t2(&[&uniform(v)]);
        let c = ctx_with_history(&[hist.to_vec()]);
        let y = p.dry().apply(&x, &c).unwrap();
        let got = probs(&y)[0].clone();
        for (g, w) in got.iter().zip(want) {
            assert!(
                (g - w).abs() < 1e-5,
                "history {hist:?}: got {got:?}, want {want:?}"
            );
        }
    }

    #[test]
    fn published_llama_cpp_cases() {
        published(4, &[0, 1], &[0.25; 4], params(1.0, 1.1, 2, 4, &[]));
        let want = [0.296923, 0.296923, 0.109232, 0.296923];
        published(4, &[0, 1, 2, 0, 1], &want, params(1.0, 1.1, 2, 5, &[]));
        published(
            5,
            &[0, 1, 3, 4, 0, 1],
            &[0.2; 5],
            params(1.0, 1.1, 2, 6, &[3]),
        );
        let want = [0.241818, 0.241818, 0.032727, 0.241818, 0.241818];
        published(5, &[0, 1, 2, 0, 1], &want, params(2.0, 1.1, 2, 5, &[]));
        published(
            5,
            &[0, 1, 2, 3, 4, 0, 1],
            &[0.2; 5],
            params(1.0, 1.1, 4, 7, &[]),
        );
    }

    /// The canonical algorithm written the slow, obvious way: every earlier position, its match
    /// length extended backwards one token at a time.
    fn reference(hist: &[u32], vocab: usize, p: &Params, cap: usize) -> Vec<f32> {
        let Params {
            mult,
            base,
            allowed,
            window,
            ref breakers,
        } = *p;
        let h = if window == 0 || window >= hist.len() {
            hist
        } else {
            &hist[hist.len() - window..]
        };
        let n = h.len();
        let rep_limit = (0..n)
            .find(|&i| breakers.contains(&h[n - 1 - i]))
            .unwrap_or(n);
        let mut best = vec![0usize; vocab];
        for j in 0..n.saturating_sub(1) {
            let mut len = 0;
            while len < cap && len < rep_limit && len <= j && h[j - len] == h[n - 1 - len] {
                len += 1;
            }
            let next = h[j + 1] as usize;
            if len >= allowed.max(1) {
                best[next] = best[next].max(len);
            }
        }
        let max_exp = if base > 1.000_001 {
            (88.722_84 / base.ln()).floor()
        } else {
            f32::MAX
        };
        (0..vocab)
            .map(|t| {
                if best[t] == 0 || breakers.contains(&(t as u32)) {
                    0.0
                } else {
                    mult * base.powf(((best[t] - allowed) as f32).min(max_exp))
                }
            })
            .collect()
    }

    #[test]
    fn batched_device_rounds_match_the_reference_algorithm() -> Result<()> {
        // Random histories over a 4-token vocabulary (so repeats are frequent), random lengths,
        // windows, allowed lengths and breakers; a small cap so it binds too.
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut rnd = |m: u64| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state % m
        };
        let vocab = 4;
        let mut penalised = 0;
        for case in 0..60 {
            let rows = 5;
            let width = 1 + rnd(40) as usize;
            let mut hists = Vec::new();
            for _ in 0..rows {
                let len = rnd(width as u64 + 1) as usize;
                let mut h: Vec<i64> = (0..len).map(|_| rnd(vocab as u64) as i64).collect();
                h.resize(width, -1);
                hists.push(h);
            }
            let allowed = rnd(4) as usize;
            let window = rnd(30) as usize;
            let cap = 1 + rnd(12) as usize;
            let breakers: Vec<u32> = if rnd(2) == 0 {
                vec![]
            } else {
                vec![rnd(vocab as u64) as u32]
            };
            let p = params(
                0.5 + rnd(3) as f32,
                1.0 + rnd(5) as f32 * 0.25,
                allowed,
                window,
                &breakers,
            );
            let dry = Dry::new(DryParams {
                max_match: cap,
                ..p.params()
            })?;
            let x = Tensor::zeros((rows, vocab), DType::F32, &candle_core::Device::Cpu)?;
            let got = rows_of(dry.penalties(&x, &ctx_with_history(&hists))?, rows, vocab);
            for (r, h) in hists.iter().enumerate() {
                let h: Vec<u32> = h
                    .iter()
                    .take_while(|&&t| t >= 0)
                    .map(|&t| t as u32)
                    .collect();
                let want = reference(&h, vocab, &p, cap);
                penalised += want.iter().filter(|&&w| w > 0.0).count();
                for (g, w) in got[r].iter().zip(&want) {
                    let ok = (g - w).abs() <= 1e-5 * w.abs().max(1.0);
                    assert!(ok, "case {case} row {r} history {h:?} {p:?} cap {cap}: got {:?}, want {want:?}", got[r]);
                }
            }
        }
        // The cases exercise the penalty, not only its absence.
        assert!(penalised > 100, "only {penalised} penalised tokens");
        Ok(())
    }

    fn rows_of(p: Option<Tensor>, rows: usize, vocab: usize) -> Vec<Vec<f32>> {
        match p {
            Some(p) => p.to_vec2::<f32>().unwrap(),
            None => vec![vec![0.0; vocab]; rows],
        }
    }

    #[test]
    fn longest_match_wins_and_the_exponent_stays_finite() -> Result<()> {
        // History 1 2 3 9 | 2 3 5 | 1 2 3: the suffix "1 2 3" occurred before 9 (length 3) and
        // "2 3" before 5 (length 2).
        let x = Tensor::zeros((1, 10), DType::F32, &candle_core::Device::Cpu)?;
        let c = ctx_with_history(&[vec![1, 2, 3, 9, 2, 3, 5, 1, 2, 3]]);
        let p = dry5(1.0, 2.0, 2.0, 0.0, vec![])?
            .penalties(&x, &c)?
            .unwrap()
            .to_vec2::<f32>()?;
        assert_eq!(p[0][9], 2.0); // 2^(3 - 2)
        assert_eq!(p[0][5], 1.0); // 2^(2 - 2)
        assert_eq!(p[0].iter().filter(|&&v| v != 0.0).count(), 2);
        // base 1e30, allowed 0: the clamp floor(88.72 / ln 1e30) = 1 caps both exponents (3 and
        // 2) at 1, so the penalty is 1e30, not the 1e90 = inf of the raw power.
        let p = dry5(1.0, 1e30, 0.0, 0.0, vec![])?
            .penalties(&x, &c)?
            .unwrap()
            .to_vec2::<f32>()?;
        for t in [9, 5] {
            assert!((p[0][t] / 1e30 - 1.0).abs() < 1e-4, "{}", p[0][t]);
        }
        // A huge multiplier saturates at f32::MAX instead of inf.
        let p = dry5(1e30, 1e30, 0.0, 0.0, vec![])?
            .penalties(&x, &c)?
            .unwrap()
            .to_vec2::<f32>()?;
        assert_eq!(p[0][9], f32::MAX);
        Ok(())
    }

    #[test]
    fn rejects_bad_parameters_and_breaker_ids() {
        assert!(dry5(-1.0, 1.75, 2.0, 0.0, vec![]).is_err());
        assert!(dry5(1.0, 0.5, 2.0, 0.0, vec![]).is_err());
        assert!(dry5(1.0, 1.75, -1.0, 0.0, vec![]).is_err());
        assert!(dry5(1.0, 1.75, 2.0, 1.5, vec![]).is_err());
        let x = t2(&[&[0.0, 0.0]]);
        let c = ctx_with_history(&[vec![0, 1, 0]]);
        assert!(dry5(1.0, 1.75, 2.0, 0.0, vec![5])
            .unwrap()
            .apply(&x, &c)
            .is_err());
    }
}
