//! The stages that edit a few logits: bans, logit bias, the repetition penalties (divide and
//! sign-aware), frequency / presence, the length penalty and DRY. Each touches only the tokens
//! of its list or of the row's history window, in place on the dense row or on the candidates.

use super::row::{Row, Scratch};
use super::vector;
use crate::error::{KernelError, Result};
use crate::spec::{row, DryTables, StopToken};

fn check_ids(ids: impl Iterator<Item = u32>, what: &'static str, vocab: usize) -> Result<()> {
    for id in ids {
        if id as usize >= vocab {
            return Err(KernelError::TokenOutOfRange {
                what,
                id: id as u64,
                vocab,
            });
        }
    }
    Ok(())
}

/// The history positions of a penalty window: distance `D = len - i` counts when `window` is 0
/// or `D < window`.
fn window(hist: &[u32], window: f32) -> &[u32] {
    let len = hist.len();
    let w = window.max(0.0) as usize;
    let start = if w == 0 {
        0
    } else {
        (len + 1).saturating_sub(w)
    };
    &hist[start..]
}

/// Fills `s.effects` with (token, summed log-divisor, count) for each distinct token of the
/// window, in order of first occurrence. The divide form's log-divisor of an occurrence at
/// distance D is `ln(max(D, 1)) * decay + ln(penalty)`, summed in history order.
fn effects(s: &mut Scratch, hist: &[u32], recent: &[u32], divide: Option<(f32, f32)>) {
    let len = hist.len();
    let start = len - recent.len();
    let Scratch {
        log_div,
        counts,
        effects,
        repeated,
        ..
    } = s;
    effects.clear();
    let uniform = match divide {
        // ln(D) * 0 + ln(penalty) is ln(penalty) exactly: a token's sum depends on its count
        // only, and is the same f32 sum of that many terms, taken from `repeated`.
        Some((log_rep, 0.0)) => Some(log_rep),
        Some((log_rep, decay)) => {
            for (j, &t) in recent.iter().enumerate() {
                let d = (len - start - j) as f32;
                log_div[t as usize] += d.max(1.0).ln() * decay + log_rep;
            }
            None
        }
        None => None,
    };
    for &t in recent {
        counts[t as usize] += 1;
    }
    repeated.clear();
    repeated.push(0.0);
    for &t in recent {
        let t = t as usize;
        let c = std::mem::take(&mut counts[t]);
        if c > 0 {
            let l = match uniform {
                Some(log_rep) => {
                    while repeated.len() <= c as usize {
                        let last = repeated[repeated.len() - 1];
                        repeated.push(last + log_rep);
                    }
                    repeated[c as usize]
                }
                None => std::mem::take(&mut log_div[t]),
            };
            effects.push((t as u32, l, c));
        }
    }
}

impl Row<'_, '_> {
    pub(crate) fn ban(&mut self, ids: &[u32]) -> Result<()> {
        check_ids(ids.iter().copied(), "ban_tokens", self.vocab)?;
        self.remove(ids);
        Ok(())
    }

    pub(crate) fn logit_bias(&mut self, entries: &[(u32, f32)]) -> Result<()> {
        check_ids(entries.iter().map(|e| e.0), "logit_bias", self.vocab)?;
        self.editable();
        self.edit(entries.iter().map(|e| e.0), |k, v| {
            *v = vector::saturate(*v + entries[k].1)
        });
        Ok(())
    }

    /// Applies the effects in `s.effects` (one per distinct token) with
    /// `f(value, log_div, count)`.
    fn apply_effects(&mut self, mut f: impl FnMut(f32, f32, u32) -> f32) {
        let effects = std::mem::take(&mut self.s.effects);
        if !effects.is_empty() {
            self.editable();
            self.edit_distinct(effects.iter().map(|e| e.0), |k, v| {
                *v = f(*v, effects[k].1, effects[k].2)
            });
        }
        self.s.effects = effects;
    }

    pub(crate) fn repetition_divide(&mut self, p: &row::RepetitionDivide<u32>) {
        let (penalty, decay, w) = (self.p(p.penalty), self.p(p.decay), self.p(p.window));
        let Some(hist) = self.inp.hist else { return };
        if penalty == 1.0 && decay == 0.0 {
            return;
        }
        effects(self.s, hist, window(hist, w), Some((penalty.ln(), decay)));
        // Without decay a token's log-divisor depends on its count only: one exponential per
        // count (the same f32 sums, so the same divisors).
        let mut memo: [(u32, f32); 8] = [(0, 1.0); 8];
        self.apply_effects(|v, log_div, count| {
            if log_div == 0.0 {
                return v;
            }
            if decay == 0.0 && (count as usize) < memo.len() {
                let slot = &mut memo[count as usize];
                if slot.0 != count {
                    *slot = (count, log_div.exp());
                }
                return vector::saturate(v / slot.1);
            }
            vector::saturate(v / log_div.exp())
        });
    }

    pub(crate) fn repetition_sign_aware(&mut self, p: &row::RepetitionSignAware<u32>) {
        let (penalty, w) = (self.p(p.penalty), self.p(p.window));
        let Some(hist) = self.inp.hist else { return };
        if penalty == 1.0 {
            return;
        }
        effects(self.s, hist, window(hist, w), None);
        self.apply_effects(|v, _, _| {
            vector::saturate(if v > 0.0 { v / penalty } else { v * penalty })
        });
    }

    pub(crate) fn frequency_presence(&mut self, p: &row::FrequencyPresence<u32>) {
        let (frequency, presence, w) = (self.p(p.frequency), self.p(p.presence), self.p(p.window));
        let Some(hist) = self.inp.hist else { return };
        if frequency == 0.0 && presence == 0.0 {
            return;
        }
        effects(self.s, hist, window(hist, w), None);
        self.apply_effects(|v, _, count| v - (count as f32 * frequency + presence));
    }

    pub(crate) fn length_penalty(
        &mut self,
        p: &row::LengthPenalty<u32>,
        stop: StopToken,
    ) -> Result<()> {
        let factor = self.p(p.factor);
        let Some(hist) = self.inp.hist else {
            return Ok(());
        };
        let stop = stop.unwrap_or(self.vocab as u32 - 1);
        check_ids(std::iter::once(stop), "stop_token", self.vocab)?;
        if factor == 0.0 {
            return Ok(());
        }
        let divisor = ((hist.len() as f32 + 1.0).ln() * factor).exp();
        self.editable();
        self.edit(std::iter::once(stop), |_, v| *v /= divisor);
        Ok(())
    }

    /// DRY: the longest earlier match of a suffix of the window decides the penalty of the
    /// token that followed it.
    pub(crate) fn dry(&mut self, p: &row::Dry<u32>, tables: &DryTables) -> Result<()> {
        let multiplier = self.p(p.multiplier);
        let base = self.p(p.base);
        let allowed = self.p(p.allowed_length);
        let w = self.p(p.window);
        check_ids(
            tables.breakers.iter().copied(),
            "dry_sequence_breakers",
            self.vocab,
        )?;
        let Some(hist) = self.inp.hist else {
            return Ok(());
        };
        if multiplier == 0.0 {
            return Ok(());
        }
        let len = hist.len();
        let wn = w.max(0.0) as usize;
        let n = if wn == 0 { len } else { len.min(wn) };
        if n < 2 {
            return Ok(());
        }
        // s[k] = the k-th token from the end of the window.
        let s = |k: usize| hist[len - 1 - k];
        let is_breaker = |t: u32| tables.breakers.contains(&t);
        let rep_limit = (0..n).find(|&k| is_breaker(s(k))).unwrap_or(usize::MAX);
        let cap = tables.max_match.max(1) as usize;
        let limit = cap.min(rep_limit);
        let min_len = (allowed.max(0.0) as usize).max(1);
        let ln_base = base.ln();
        let max_exp = if base > 1.000_001 {
            (ln_base.recip() * 88.722_84f32).floor()
        } else {
            f32::MAX
        };
        let Scratch { best, effects, .. } = &mut *self.s;
        effects.clear();
        for k in 1..n {
            let mut l = 0;
            while l < limit && k + l < n && s(l) == s(k + l) {
                l += 1;
            }
            let next = s(k - 1);
            if l >= min_len && !is_breaker(next) {
                let b = &mut best[next as usize];
                if *b == 0 {
                    effects.push((next, 0.0, 0));
                }
                *b = (*b).max(l as u32);
            }
        }
        for e in effects.iter_mut() {
            e.2 = std::mem::take(&mut best[e.0 as usize]);
            let exponent = (e.2 as f32 - allowed).min(max_exp);
            e.1 = (multiplier * (exponent * ln_base).exp()).min(f32::MAX);
        }
        self.apply_effects(|v, pen, _| v - pen);
        Ok(())
    }
}
