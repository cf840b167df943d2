//! The selecting stages: the draw (greedy, or the inverse CDF of one Philox uniform over the
//! kept tokens in id order) and mirostat v1 / v2, which truncate, draw and update mu.

use super::row::{Emit, Row, Scratch};
use super::select;
use super::vector::{self, EXP_CHUNK};
use crate::error::{KernelError, Result};
use crate::philox::philox_uniform;
use crate::spec::row;

const LN_2: f64 = std::f64::consts::LN_2;

/// A drawn token: its id, probability and log-probability under the kept distribution.
#[derive(Clone, Copy, Debug)]
struct Drawn {
    token: u32,
    prob: f64,
    logprob: f64,
}

impl Row<'_, '_> {
    fn uniform(&self) -> f32 {
        philox_uniform(self.inp.seed, self.inp.row_id, self.inp.step)
    }

    fn all_masked(&self) -> KernelError {
        KernelError::AllMasked { row: self.inp.row }
    }

    /// Draws from the kept set and records the token in the row's output.
    pub(crate) fn draw(&mut self, greedy: u32) -> Result<()> {
        let greedy = self.p(greedy) >= 0.5;
        let d = self.draw_kept(greedy)?;
        self.out.token = d.token;
        self.out.prob = d.prob as f32;
        self.out.logprob = d.logprob as f32;
        Ok(())
    }

    fn draw_kept(&mut self, greedy: bool) -> Result<Drawn> {
        let m = self.max();
        if m == f32::NEG_INFINITY {
            return Err(self.all_masked());
        }
        if self.is_cands() {
            self.draw_cands(greedy, m)
        } else {
            Ok(self.draw_dense(greedy, m))
        }
    }

    /// The dense draw: one pass for the chunk sums of the weights, then a walk over the chunk
    /// sums and a scan inside the chunk that holds the target.
    fn draw_dense(&mut self, greedy: bool, m: f32) -> Drawn {
        let floor = self.floor();
        let u = self.uniform();
        let (x, chunk_sums) = self.dense_and_sums();
        let total = vector::exp_chunk_sums(x, m, floor, chunk_sums);
        let ln_total = total.ln();
        let token = if greedy {
            vector::position_of(x, m).min(x.len() - 1)
        } else {
            let target = u as f64 * total;
            let mut cum = 0f64;
            let mut chunk = 0;
            while chunk + 1 < chunk_sums.len() && cum + chunk_sums[chunk] <= target {
                cum += chunk_sums[chunk];
                chunk += 1;
            }
            // The smallest id whose running sum passes the target; zero weights never pass.
            // If rounding leaves the target unreached, the last positive weight is it.
            let mut last = None;
            let mut found = None;
            for (i, &v) in x.iter().enumerate().skip(chunk * EXP_CHUNK) {
                let w = vector::weight(v, m, floor);
                if w > 0.0 {
                    cum += w;
                    last = Some(i);
                    if cum > target {
                        found = Some(i);
                        break;
                    }
                }
            }
            match (found, last) {
                (Some(i), _) | (None, Some(i)) => i,
                (None, None) => x
                    .iter()
                    .rposition(|&v| vector::weight(v, m, floor) > 0.0)
                    .unwrap_or(0),
            }
        };
        let v = x[token];
        Drawn {
            token: token as u32,
            prob: vector::weight(v, m, floor) / total,
            logprob: (v as f64 - m as f64) - ln_total,
        }
    }

    /// The draw over candidates, with exact f64 weights.
    fn draw_cands(&mut self, greedy: bool, m: f32) -> Result<Drawn> {
        let u = self.uniform();
        let vocab = self.vocab;
        let total = self.cand_exps();
        let ln_total = total.ln();
        let Scratch {
            cands, f64s, f64b, ..
        } = &mut *self.s;
        let pick = if greedy {
            cands
                .iter()
                .enumerate()
                .filter(|(_, c)| c.v == m)
                .min_by_key(|(_, c)| c.id)
                .map(|(i, _)| i)
                .ok_or(KernelError::AllMasked { row: self.inp.row })?
        } else {
            let target = u as f64 * total;
            let mut cum = 0f64;
            let mut last = None;
            let mut found = None;
            let mut step = |i: usize, w: f64| -> bool {
                if w > 0.0 {
                    cum += w;
                    last = Some(i);
                }
                w > 0.0 && cum > target
            };
            if cands.len().saturating_mul(16) <= vocab {
                // Few candidates: visit them in id order through an index sort.
                let mut order: Vec<u32> = (0..cands.len() as u32).collect();
                order.sort_unstable_by_key(|&i| cands[i as usize].id);
                for &i in &order {
                    if step(i as usize, f64s[i as usize]) {
                        found = Some(i as usize);
                        break;
                    }
                }
            } else {
                // Many: lay the weights out over the vocabulary and walk it.
                f64b.clear();
                f64b.resize(vocab, -1.0);
                for (i, c) in cands.iter().enumerate() {
                    f64b[c.id as usize] = i as f64;
                }
                for &at in f64b.iter() {
                    if at >= 0.0 {
                        let i = at as usize;
                        if step(i, f64s[i]) {
                            found = Some(i);
                            break;
                        }
                    }
                }
            }
            found
                .or(last)
                .ok_or(KernelError::AllMasked { row: self.inp.row })?
        };
        let c = cands[pick];
        Ok(Drawn {
            token: c.id,
            prob: f64s[pick] / total,
            logprob: (c.v as f64 - m as f64) - ln_total,
        })
    }

    /// Records the draw and mirostat's update `mu -= eta * (-log2 p - tau)`.
    fn mirostat_draw(&mut self, mu: f32, tau: f32, eta: f32, greedy: bool) -> Result<()> {
        let d = self.draw_kept(greedy)?;
        self.out.token = d.token;
        self.out.prob = d.prob as f32;
        self.out.logprob = d.logprob as f32;
        let surprise = -d.logprob / LN_2;
        self.out.mu = (mu as f64 - eta as f64 * (surprise - tau as f64)) as f32;
        Ok(())
    }

    fn mu(&self, tau: f32) -> f32 {
        self.inp.mu.unwrap_or(2.0 * tau)
    }

    /// Mirostat v2: keep the tokens of surprise `-log2 p <= mu` (and the most probable).
    pub(crate) fn mirostat_v2(&mut self, p: &row::MirostatV2<u32>, emit: Emit) -> Result<()> {
        let (tau, eta, greedy) = (self.p(p.tau), self.p(p.eta), self.p(p.greedy) >= 0.5);
        let mu = self.mu(tau);
        self.out.mu = mu;
        self.make_cands();
        if !self.s.cands.is_empty() {
            let m = self.max();
            let ln_s = self.cand_exps().ln();
            let bound = mu as f64;
            self.retain(|c, _| c.v == m || -((c.v as f64 - m as f64) - ln_s) / LN_2 <= bound);
        }
        if emit == Emit::Tokens {
            self.mirostat_draw(mu, tau, eta, greedy)?;
        }
        Ok(())
    }

    /// Mirostat v1: estimate the Zipf exponent from the `fit` most probable tokens and keep the
    /// top k that the target surprise implies.
    pub(crate) fn mirostat_v1(
        &mut self,
        p: &row::MirostatV1<u32>,
        fit: u32,
        emit: Emit,
    ) -> Result<()> {
        let (tau, eta, greedy) = (self.p(p.tau), self.p(p.eta), self.p(p.greedy) >= 0.5);
        let mu = self.mu(tau);
        self.out.mu = mu;
        let vocab = self.vocab;
        self.make_cands();
        let n = self.s.cands.len();
        if n > 0 && vocab >= 2 {
            let k = mirostat_v1_k(&self.s.cands, &mut self.s.f32s, fit as usize, mu, vocab);
            if k < n {
                let Scratch { cands, keys, .. } = &mut *self.s;
                let vk = select::kth_largest_cands(cands, k, keys);
                self.retain(|c, _| c.v >= vk);
            }
        }
        if emit == Emit::Tokens {
            self.mirostat_draw(mu, tau, eta, greedy)?;
        }
        Ok(())
    }
}

/// Mirostat v1's k for the kept values `c`: the Zipf exponent `s` fitted by least squares on the
/// `fit` largest values (`s = sum t_i b_i / sum t_i^2`, `t_i = ln((i+2)/(i+1))`,
/// `b_i = v_i - v_{i+1}`), then `k = ((eps 2^mu) / (1 - N^-eps))^(1/s)`, `eps = s - 1`, in
/// `[1, N]`; `1 / ln N` stands for the factor when `|eps| < 1e-4`.
pub(crate) fn mirostat_v1_k(
    c: &[select::Cand],
    tmp: &mut Vec<f32>,
    fit: usize,
    mu: f32,
    vocab: usize,
) -> usize {
    let n = c.len();
    let m = fit.min(vocab).min(n);
    tmp.clear();
    tmp.extend(c.iter().map(|x| x.v));
    if m < n {
        tmp.select_nth_unstable_by(m - 1, |a, b| select::desc(*a, *b));
        tmp.truncate(m);
    }
    tmp.sort_unstable_by(|a, b| select::desc(*a, *b));
    let terms = (n - 1).min(fit - 1);
    let s_hat = if terms >= 1 {
        let (mut num, mut den) = (0f64, 0f64);
        for i in 0..terms {
            let t = ((i + 2) as f64 / (i + 1) as f64).ln();
            let b = tmp[i] as f64 - tmp[i + 1] as f64;
            num += t * b;
            den += t * t;
        }
        num / den
    } else {
        1.0
    };
    let eps = s_hat - 1.0;
    let ln_n = (vocab as f64).ln();
    let g = if eps.abs() < 1e-4 {
        1.0 / ln_n
    } else {
        eps / (1.0 - (-eps * ln_n).exp())
    };
    let k = ((g.ln() + mu as f64 * LN_2) / s_hat).exp();
    let k = if k.is_nan() { vocab as f64 } else { k };
    k.clamp(1.0, vocab as f64).floor() as usize
}
