//! The truncation stages: min-p, top-k, top-p, typical-p, XTC and top-n-sigma.

use super::row::{Row, Scratch};
use super::select::{self, Cand};
use super::vector::{self, ALL_FINITE};
use crate::philox::{philox_uniform_lane, XTC_LANE};
use crate::spec::row;

/// The next f32 above `v` (finite `v`).
pub(crate) fn next_up(v: f32) -> f32 {
    if v == 0.0 {
        return f32::from_bits(1);
    }
    let b = v.to_bits();
    f32::from_bits(if v > 0.0 { b + 1 } else { b - 1 })
}

/// The next f32 below `v` (finite `v`).
pub(crate) fn next_down(v: f32) -> f32 {
    -next_up(-v)
}

/// The smallest f32 `a` with `pred(a)`, for a predicate that is monotone (false, then true)
/// and true near `guess`'s neighbourhood; `ALL_FINITE` when every finite value satisfies it.
pub(crate) fn exact_floor(guess: f64, pred: impl Fn(f32) -> bool) -> f32 {
    if pred(ALL_FINITE) {
        return ALL_FINITE;
    }
    let mut a = guess as f32;
    if !a.is_finite() {
        a = if guess > 0.0 { f32::MAX } else { ALL_FINITE };
    }
    while a > ALL_FINITE && pred(next_down(a)) {
        a = next_down(a);
    }
    while a < f32::MAX && !pred(a) {
        a = next_up(a);
    }
    a
}

/// Min-p's cut as a value floor: the smallest `v` with `v - max >= ln p` (in f64).
pub(crate) fn min_p_floor(max: f32, ln_p: f64) -> f32 {
    exact_floor(max as f64 + ln_p, |v| v as f64 - max as f64 >= ln_p)
}

impl Row<'_, '_> {
    /// Min-p: keep `v - max >= ln p` (f64), and always the `min_tokens` highest values.
    pub(crate) fn min_p(&mut self, p: &row::MinP<u32>) {
        let (min_p, min_tokens) = (self.p(p.p), self.p(p.min_tokens));
        if !(min_p > 0.0) {
            return;
        }
        let m = self.max();
        if m == f32::NEG_INFINITY {
            return;
        }
        let ln_p = (min_p as f64).ln();
        let count = self.count();
        let mm = (min_tokens.max(0.0) as usize).clamp(1, count);
        if self.is_cands() {
            let above = |c: &Cand| c.v as f64 - m as f64 >= ln_p;
            let kept = self.s.cands.iter().filter(|c| above(c)).count();
            if kept >= mm {
                self.retain(|c, _| above(c));
            } else {
                let Scratch { cands, keys, .. } = &mut *self.s;
                let vm = select::kth_largest_cands(cands, mm, keys);
                self.retain(|c, _| above(c) || c.v >= vm);
            }
        } else {
            let a = min_p_floor(m, ln_p).max(self.floor());
            if self.vals().len() <= select::SHORT_ROW && mm > 1 {
                // On a short row one gathering pass below the cut counts the tokens above it and
                // holds the min_tokens largest in the common case.
                let floor = self.floor();
                let t = ((a as f64 - (m as f64 - a as f64)) as f32).max(floor);
                let (x, tmp, gathered) = self.dense_tmp_cands();
                gathered.clear();
                vector::gather_at_least(x, t, gathered);
                let above = gathered.iter().filter(|c| c.v >= a).count();
                if above >= mm {
                    self.raise_floor(a, Some(above));
                    self.set_superset(t);
                    return;
                }
                if gathered.len() >= mm {
                    tmp.clear();
                    tmp.extend(gathered.iter().map(|c| select::key(c.v)));
                    let kth = select::kth_largest(tmp, mm);
                    let at_least = gathered.iter().filter(|c| c.v >= kth).count();
                    self.raise_floor(kth, Some(at_least));
                    self.set_superset(t);
                    return;
                }
            }
            let above = vector::count_at_least(self.vals(), a);
            if above >= mm {
                self.raise_floor(a, Some(above));
            } else {
                // Fewer than mm are above the cut: the mm-th largest lies below it.
                let floor = self.floor();
                let (x, tmp, gathered) = self.dense_tmp_cands();
                let kth = select::kth_largest_dense(x, floor, mm, count, m, Some(a), tmp, gathered);
                self.raise_floor(kth.value, Some(kth.at_least));
                self.set_superset(kth.gathered_from);
            }
        }
    }

    /// Top-k: keep every value `>=` the k-th largest (ties kept); k <= 0 off.
    pub(crate) fn top_k(&mut self, p: &row::TopK<u32>) {
        let k = self.p(p.k);
        if !(k > 0.0) {
            return;
        }
        let k = (k as usize).max(1);
        let count = self.count();
        if k >= count {
            return;
        }
        if self.is_cands() {
            let Scratch { cands, keys, .. } = &mut *self.s;
            let vk = select::kth_largest_cands(cands, k, keys);
            self.retain(|c, _| c.v >= vk);
        } else {
            let floor = self.floor();
            let m = self.max();
            let (x, tmp, gathered) = self.dense_tmp_cands();
            let kth = select::kth_largest_dense(x, floor, k, count, m, None, tmp, gathered);
            self.raise_floor(kth.value, Some(kth.at_least));
            self.set_superset(kth.gathered_from);
        }
    }

    /// Probabilities of the candidates into `s.f64b`: `exp(v - max) / S` in f64, the plain
    /// path's softmax.
    pub(crate) fn cand_probs(&mut self) -> f64 {
        let total = self.cand_exps();
        let Scratch { f64s, f64b, .. } = &mut *self.s;
        f64b.clear();
        f64b.extend(f64s.iter().map(|e| e / total));
        total
    }

    /// Top-p: in (value desc, id asc) order keep a token while the mass before it is `<= p`.
    pub(crate) fn top_p(&mut self, p: &row::TopP<u32>) {
        let top_p = self.p(p.p);
        if !(top_p < 1.0) {
            return;
        }
        self.make_cands();
        if self.s.cands.is_empty() {
            return;
        }
        self.retain_nucleus(top_p);
    }

    /// Keeps the candidates of the top-p nucleus (the candidate list must not be empty).
    pub(crate) fn retain_nucleus(&mut self, top_p: f32) {
        self.cand_probs();
        let Scratch {
            cands,
            f64b,
            top_p: top_p_scratch,
            ..
        } = &mut *self.s;
        let last = select::top_p_last(cands, f64b, top_p as f64, top_p_scratch);
        self.retain(|c, _| select::by_rank(c, &last) != std::cmp::Ordering::Greater);
    }

    /// Typical-p: keep the tokens whose surprise is closest to the entropy, up to mass p (ties
    /// at the cut kept).
    pub(crate) fn typical_p(&mut self, p: &row::TypicalP<u32>) {
        let typical = self.p(p.p);
        if !(typical < 1.0) {
            return;
        }
        self.make_cands();
        if self.s.cands.is_empty() {
            return;
        }
        let m = self.max();
        let total = self.cand_exps();
        let Scratch {
            cands,
            f64b,
            pairs,
            scores,
            ..
        } = &mut *self.s;
        // logp = (v - max) - ln S; q = exp(logp); H = -sum q logp; s = |-logp - H|.
        let ln_s = total.ln();
        let mut entropy = 0f64;
        let mut mass = 0f64;
        f64b.clear();
        scores.clear();
        for c in cands.iter() {
            let logp = (c.v as f64 - m as f64) - ln_s;
            let q = logp.exp();
            scores.push(logp);
            f64b.push(q);
            entropy -= q * logp;
            mass += q;
        }
        pairs.clear();
        for (logp, q) in scores.iter_mut().zip(f64b.iter()) {
            let s = (-*logp - entropy).abs();
            *logp = s;
            pairs.push((s, *q));
        }
        let target = (typical as f64).min(mass);
        let cut = select::lowest_key_reaching(pairs, target);
        let scores = std::mem::take(scores);
        self.retain(|_, i| scores[i] <= cut);
        self.s.scores = scores;
    }

    /// XTC: with probability `probability` (Philox lane 1), when at least two tokens have
    /// probability `>= threshold`, remove all of them but the least probable (the highest id
    /// among ties).
    pub(crate) fn xtc(&mut self, p: &row::Xtc<u32>) {
        let (probability, threshold) = (self.p(p.probability), self.p(p.threshold));
        let inp = self.inp;
        let u = philox_uniform_lane(inp.seed, inp.row_id, inp.step, XTC_LANE);
        if !(u < probability) {
            return;
        }
        self.make_cands();
        if self.s.cands.len() < 2 {
            return;
        }
        self.cand_probs();
        let thr = threshold as f64;
        let Scratch { cands, f64b, .. } = &*self.s;
        let mut top = 0usize;
        let mut survivor: Option<Cand> = None;
        for (c, &q) in cands.iter().zip(f64b.iter()) {
            if q >= thr {
                top += 1;
                let better = match survivor {
                    None => true,
                    Some(s) => c.v < s.v || (c.v == s.v && c.id > s.id),
                };
                if better {
                    survivor = Some(*c);
                }
            }
        }
        let (Some(keep), true) = (survivor, top >= 2) else {
            return;
        };
        let q = std::mem::take(&mut self.s.f64b);
        self.retain(|c, i| q[i] < thr || c.id == keep.id);
        self.s.f64b = q;
    }

    /// Top-n-sigma: keep `v >= max - n * std` (N - 1, f64) over the kept values.
    pub(crate) fn top_n_sigma(&mut self, p: &row::TopNSigma<u32>) {
        let n = self.p(p.n);
        if !(n > 0.0) {
            return;
        }
        self.make_cands();
        let cands = &self.s.cands;
        if cands.is_empty() {
            return;
        }
        let count = cands.len() as f64;
        let mean = cands.iter().map(|c| c.v as f64).sum::<f64>() / count;
        let var = cands
            .iter()
            .map(|c| (c.v as f64 - mean) * (c.v as f64 - mean))
            .sum::<f64>()
            / (count - 1.0).max(1.0);
        let m = self.max();
        let cut = m as f64 - var.sqrt() * n as f64;
        self.retain(|c, _| c.v as f64 >= cut);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_floor_is_the_first_value_that_passes() {
        for &(m, p) in &[(3.0f32, 0.1f64), (-20.5, 0.05), (0.0, 0.9), (1e-3, 1.0)] {
            let ln_p = p.ln();
            let a = min_p_floor(m, ln_p);
            assert!(a as f64 - m as f64 >= ln_p);
            assert!(!(next_down(a) as f64 - m as f64 >= ln_p));
        }
        assert_eq!(next_up(-0.0), f32::from_bits(1));
        assert_eq!(next_down(1.0), f32::from_bits(1.0f32.to_bits() - 1));
        assert_eq!(exact_floor(0.0, |_| true), ALL_FINITE);
    }
}
