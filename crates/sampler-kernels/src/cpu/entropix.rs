//! Entropix on a row: the entropy and varentropy (bits) of the kept distribution, the decision
//! among five states, and the distribution the state samples from. The attention metrics come
//! precomputed ([`attention_metrics`]).

use super::row::{Row, Scratch};
use super::select::{self, Cand};
use crate::error::{invalid, Result};
use crate::spec::{entropix_metric as em, entropix_state as st, EntropixParams};

const LN_2: f64 = std::f64::consts::LN_2;

/// The smallest temperature a sampling state divides by.
const MIN_T: f32 = 1e-6;

/// `x * mul + add` in f32 with the constants rounded to f32 first (a tensor affine).
fn aff(x: f32, mul: f64, add: f64) -> f32 {
    x * mul as f32 + add as f32
}

/// The state of a row from its entropy `h` and varentropy `v` (first match wins).
pub fn decide(c: &EntropixParams, h: f64, v: f64) -> u32 {
    let f = |x: f32| x as f64;
    if h < f(c.low_entropy) && v < f(c.low_varentropy) {
        st::ARGMAX
    } else if h > f(c.high_entropy) && v < f(c.low_varentropy) {
        st::CLARIFY
    } else if h < f(c.high_entropy) && v > f(c.high_varentropy) {
        st::EXPLORE
    } else if h > f(c.medium_entropy) && v > f(c.high_varentropy) {
        st::RESAMPLE
    } else {
        st::ADAPTIVE
    }
}

/// The (temperature, top-k, top-p, min-p) a state samples with; `metrics` as in the output row.
pub fn state_params(c: &EntropixParams, state: u32, metrics: &[f32], vocab: usize) -> [f32; 4] {
    let (h, v) = (metrics[em::ENTROPY], metrics[em::VARENTROPY]);
    let (ae, av) = (metrics[em::ATTN_ENTROPY], metrics[em::ATTN_VARENTROPY]);
    let (agree, inter) = (metrics[em::AGREEMENT], metrics[em::INTERACTION_STRENGTH]);
    let t = c.temperature as f64;
    let uncertainty = h + v;
    let attn_uncertainty = ae + av;
    let d = |x: f32| x as f64;
    let temp = match state {
        st::ARGMAX => 1.0,
        st::CLARIFY => aff(
            ae,
            t * d(c.helv_attn_ent_coef),
            t * d(c.helv_attn_ent_offset),
        )
        .min(c.helv_max_temperature),
        st::EXPLORE => aff(
            inter,
            t * d(c.lehv_interaction_strength_coef),
            t * d(c.lehv_interaction_strength_offset),
        )
        .min(c.lehv_max_temperature),
        st::RESAMPLE => aff(
            av,
            t * d(c.hehv_attn_vent_coef),
            t * d(c.hehv_attn_vent_offset),
        )
        .max(c.hehv_min_temperature),
        _ => aff(
            (aff(uncertainty, d(c.ada_temp_logits), 1.0)
                + aff(attn_uncertainty, d(c.ada_temp_attn), 0.0))
                - aff(agree, d(c.ada_temp_agree), 0.0),
            t,
            0.0,
        ),
    }
    .max(MIN_T);
    let base_k = d(c.top_k);
    let top_k = match state {
        st::ARGMAX => vocab as f32,
        st::EXPLORE => aff(
            agree,
            -(base_k * d(c.lehv_top_k_agreement_coef)),
            base_k * (1.0 + d(c.lehv_top_k_agreement_coef)),
        )
        .floor()
        .max(c.lehv_min_top_k),
        st::ADAPTIVE => (aff(inter, base_k * d(c.ada_top_k_int), base_k)
            - aff(agree, base_k * d(c.ada_top_k_agree), 0.0))
        .round()
        .clamp(1.0, c.ada_max_top_k),
        _ => c.top_k,
    };
    let top_p = match state {
        st::ARGMAX => 1.0,
        st::RESAMPLE => aff(ae, -d(c.hehv_attn_ent_coef), d(c.top_p)).max(c.hehv_min_top_p),
        st::ADAPTIVE => aff(av, d(c.top_p * c.ada_top_p), d(c.top_p)).clamp(c.ada_min_top_p, 1.0),
        _ => c.top_p,
    };
    let min_p = match state {
        st::ARGMAX => 0.0,
        st::ADAPTIVE => aff(uncertainty, -d(c.min_p * c.ada_min_p), d(c.min_p))
            .clamp(c.ada_min_min_p, c.ada_max_min_p),
        _ => c.min_p,
    };
    [temp, top_k, top_p, min_p]
}

/// `ln sum_{j<n} a^j b^(n-1-j)`, by repeated products (so `0^0 = 1`).
pub fn best_of_n_log_factor(a: f64, b: f64, n: usize) -> f64 {
    let mut sum = 0f64;
    let mut a_pow = 1f64;
    for j in 0..n {
        let mut b_pow = 1f64;
        for _ in 0..(n - 1 - j) {
            b_pow *= b;
        }
        sum += a_pow * b_pow;
        a_pow *= a;
    }
    sum.ln()
}

/// The best-of-n distribution of the candidates, as log-probabilities in place: a token of
/// probability q in the value group G (total mass q_G) with mass `a` at or below its value and
/// `b = a - q_G` strictly below gets `q * sum_{j<n} a^j b^(n-1-j)`.
fn best_of_n(c: &mut [Cand], n: usize, tmp: &mut Vec<f64>) {
    if c.is_empty() {
        return;
    }
    let m = c.iter().fold(f32::NEG_INFINITY, |a, x| a.max(x.v));
    tmp.clear();
    let mut total = 0f64;
    for x in c.iter() {
        let e = (x.v as f64 - m as f64).exp();
        tmp.push(e);
        total += e;
    }
    let ln_s = total.ln();
    let mut order: Vec<usize> = (0..c.len()).collect();
    order.sort_by(|&i, &j| select::desc(c[i].v, c[j].v));
    let q: Vec<f64> = tmp.iter().map(|e| e / total).collect();
    let mass_total: f64 = q.iter().sum();
    let mut above = 0f64;
    let mut i = 0;
    while i < order.len() {
        let v = c[order[i]].v;
        let mut j = i;
        let mut group = 0f64;
        while j < order.len() && c[order[j]].v == v {
            group += q[order[j]];
            j += 1;
        }
        let a = (mass_total - above).max(0.0);
        let b = (a - group).max(0.0);
        let factor = best_of_n_log_factor(a, b, n);
        for &k in &order[i..j] {
            let logq = (c[k].v as f64 - m as f64) - ln_s;
            c[k].v = (logq + factor) as f32;
        }
        above += group;
        i = j;
    }
}

impl Row<'_, '_> {
    pub(crate) fn entropix(&mut self, c: &EntropixParams) -> Result<()> {
        if !(c.n_adaptive_samples >= 1.0) {
            return Err(invalid("entropix n_adaptive_samples must be >= 1"));
        }
        self.make_cands();
        let attention = self.inp.attention;
        let mut metrics = [0f32; crate::spec::ENTROPIX_METRICS];
        metrics[em::ATTN_ENTROPY] = attention[0];
        metrics[em::ATTN_VARENTROPY] = attention[1];
        metrics[em::AGREEMENT] = attention[2];
        metrics[em::INTERACTION_STRENGTH] = attention[3];
        if self.s.cands.is_empty() {
            self.out.metrics = metrics;
            return Ok(());
        }
        let m = self.max();
        let total = self.cand_exps();
        let ln_s = total.ln();
        let (mut h, mut v) = (0f64, 0f64);
        for x in &self.s.cands {
            let logp = (x.v as f64 - m as f64) - ln_s;
            h -= logp.exp() * (logp / LN_2);
        }
        for x in &self.s.cands {
            let logp = (x.v as f64 - m as f64) - ln_s;
            let d = logp / LN_2 + h;
            v += logp.exp() * d * d;
        }
        let state = decide(c, h, v);
        metrics[em::ENTROPY] = h as f32;
        metrics[em::VARENTROPY] = v as f32;
        metrics[em::STATE] = state as f32;
        self.out.metrics = metrics;

        let vocab = self.vocab;
        // Argmax: the first maximum of the values entropix receives, unchanged.
        if state == st::ARGMAX {
            let keep = self
                .s
                .cands
                .iter()
                .filter(|x| x.v == m)
                .map(|x| x.id)
                .min()
                .unwrap_or(0);
            self.retain(|x, _| x.id == keep);
            return Ok(());
        }
        if state == st::CLARIFY {
            if let Some(tok) = c.clarifying() {
                if tok as usize >= vocab {
                    return Err(crate::error::KernelError::TokenOutOfRange {
                        what: "entropix clarifying_token",
                        id: tok as u64,
                        vocab,
                    });
                }
                let available = self.s.cands.iter().any(|x| x.id == tok);
                let just_asked = self
                    .inp
                    .hist
                    .and_then(|h| h.last())
                    .is_some_and(|&t| t == tok);
                if available && !just_asked {
                    self.retain(|x, _| x.id == tok);
                    return Ok(());
                }
            }
        }
        let [temp, top_k, top_p, min_p] = state_params(c, state, &metrics, vocab);
        for x in self.s.cands.iter_mut() {
            x.v /= temp;
        }
        self.changed();
        if min_p > 0.0 {
            let xm = self.max();
            let ln_p = (min_p as f64).ln();
            self.retain(|x, _| x.v as f64 - xm as f64 >= ln_p);
        }
        let count = self.s.cands.len();
        let k = (top_k.ceil().max(1.0) as usize).min(count);
        if k < count {
            let Scratch { cands, keys, .. } = &mut *self.s;
            let vk = select::kth_largest_cands(cands, k, keys);
            self.retain(|x, _| x.v >= vk);
        }
        if top_p < 1.0 && !self.s.cands.is_empty() {
            self.retain_nucleus(top_p);
        }
        if state == st::ADAPTIVE {
            let Scratch { cands, f64b, .. } = &mut *self.s;
            best_of_n(cands, c.n_adaptive_samples as usize, f64b);
            self.changed();
        }
        Ok(())
    }
}

/// The attention metrics of scores `a` laid out `[r, layers, heads, q, k]` (row-major), per
/// row r: the mean entropy (bits) of `softmax_k`, the variance over heads of that entropy
/// (population, averaged over layers and queries), the mean absolute deviation of the
/// probabilities from their mean over heads, and the mean `|a|` over finite scores.
pub fn attention_metrics(
    a: &[f32],
    dims: [usize; 5],
) -> std::result::Result<Vec<[f32; 4]>, String> {
    let [r, l, h, q, k] = dims;
    if a.len() != r * l * h * q * k || l * h * q * k == 0 {
        return Err(format!(
            "attention scores of shape {dims:?} are empty or mis-sized"
        ));
    }
    let mut out = Vec::with_capacity(r);
    let mut p = vec![0f64; l * h * q * k];
    for row in 0..r {
        let base = row * l * h * q * k;
        let scores = &a[base..base + l * h * q * k];
        let mut ent = vec![0f64; l * h * q];
        let (mut abs_sum, mut finite) = (0f64, 0usize);
        for (gi, g) in scores.chunks(k).enumerate() {
            if g.iter().any(|v| v.is_nan() || *v == f32::INFINITY) {
                return Err("attention scores contain NaN or +inf".into());
            }
            let m = g.iter().fold(f32::NEG_INFINITY, |x, &y| x.max(y));
            if m == f32::NEG_INFINITY {
                return Err("a query's attention scores are all -inf".into());
            }
            let s: f64 = g.iter().map(|&v| (v as f64 - m as f64).exp()).sum();
            let mut e = 0f64;
            for (j, &v) in g.iter().enumerate() {
                let pj = (v as f64 - m as f64).exp() / s;
                p[gi * k + j] = pj;
                e -= pj * (pj.clamp(1e-10, 1.0).ln() / LN_2);
                if v.is_finite() {
                    abs_sum += v.abs() as f64;
                    finite += 1;
                }
            }
            ent[gi] = e;
        }
        let attn_entropy = ent.iter().sum::<f64>() / ent.len() as f64;
        // Variance over heads, for each (layer, query), then the mean.
        let mut var_sum = 0f64;
        let mut agree_sum = 0f64;
        for li in 0..l {
            for qi in 0..q {
                let idx = |hi: usize| (li * h + hi) * q + qi;
                let mean = (0..h).map(|hi| ent[idx(hi)]).sum::<f64>() / h as f64;
                var_sum += (0..h).map(|hi| (ent[idx(hi)] - mean).powi(2)).sum::<f64>() / h as f64;
                for kj in 0..k {
                    let pm = (0..h).map(|hi| p[idx(hi) * k + kj]).sum::<f64>() / h as f64;
                    agree_sum += (0..h)
                        .map(|hi| (p[idx(hi) * k + kj] - pm).abs())
                        .sum::<f64>();
                }
            }
        }
        let attn_varentropy = var_sum / (l * q) as f64;
        let agreement = agree_sum / (l * h * q * k) as f64;
        let interaction = if finite > 0 {
            abs_sum / finite as f64
        } else {
            0.0
        };
        out.push([
            attn_entropy as f32,
            attn_varentropy as f32,
            agreement as f32,
            interaction as f32,
        ]);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attention_metrics_by_hand() {
        // One layer, two heads, one query, two keys: head 0 scores (0, 0) -> P = (1/2, 1/2),
        // 1 bit; head 1 scores (ln 3, 0) -> P = (3/4, 1/4), 0.811278 bits. Mean 0.905639,
        // variance over heads 0.008904; every |P - mean| = 1/8; mean |score| = ln 3 / 4.
        let a = [0.0, 0.0, 3f32.ln(), 0.0];
        let m = attention_metrics(&a, [1, 1, 2, 1, 2]).unwrap();
        let want = [0.905_639f32, 0.008_904, 0.125, 0.274_653];
        for (g, w) in m[0].iter().zip(want) {
            assert!((g - w).abs() < 1e-5, "{:?}", m[0]);
        }
        assert!(attention_metrics(&[f32::NAN, 0.0], [1, 1, 1, 1, 2]).is_err());
        assert!(attention_metrics(&[f32::NEG_INFINITY; 2], [1, 1, 1, 1, 2]).is_err());
    }

    #[test]
    fn best_of_n_by_hand() {
        // {0.2, 0.5, 0.3}, best of 2: 0.04, 0.75, 0.21.
        let mut c: Vec<Cand> = [0.2f32, 0.5, 0.3]
            .iter()
            .enumerate()
            .map(|(i, p)| Cand {
                v: p.ln(),
                id: i as u32,
            })
            .collect();
        best_of_n(&mut c, 2, &mut Vec::new());
        let p: Vec<f32> = c.iter().map(|x| x.v.exp()).collect();
        for (g, w) in p.iter().zip([0.04f32, 0.75, 0.21]) {
            assert!((g - w).abs() < 1e-6, "{p:?}");
        }
    }
}
