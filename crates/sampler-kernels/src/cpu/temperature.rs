//! The three temperatures: plain (`t > 0` divides), the sigmoid dynamic form (from the largest
//! probability) and the entropy form (from the normalised entropy).

use super::row::Row;
use super::vector;
use crate::spec::row;

/// The smallest temperature the entropy form divides by.
pub const MIN_DYNAMIC_T: f32 = 1e-6;

/// Whether a (t, t_min) pair turns the sigmoid dynamic form on.
pub fn sigmoid_is_dynamic(t: f32, t_min: f32) -> bool {
    (t - t_min).abs() >= 0.001 && t_min >= 0.0
}

/// The sigmoid form's temperature for the largest probability `p_max`.
pub fn sigmoid_temperature(t: f32, t_min: f32, p_max: f64) -> f32 {
    let sigmoid = (p_max * -10.0 + 5.0).exp() + 1.0;
    (t as f64 - (t as f64 - t_min as f64) / sigmoid) as f32
}

/// The entropy form's temperature for entropy `h` (nats) over `n` finite tokens.
pub fn entropy_temperature(t: f32, range: f32, exponent: f32, h: f64, n: usize) -> f32 {
    let t_lo = (t as f64 - range as f64).max(0.0);
    let t_hi = t as f64 + range as f64;
    let norm = h / (n.max(2) as f64).ln();
    let norm = norm.max(0.0);
    let e = exponent as f64;
    // norm^e as the plain path computes it: exp(e ln norm), with 0^0 = 1 and 0^e = 0.
    let pow = if norm == 0.0 {
        if e == 0.0 {
            1.0
        } else {
            0.0
        }
    } else {
        (norm.ln() * e).exp()
    };
    let tt = t_lo + (t_hi - t_lo) * pow;
    (tt as f32).max(MIN_DYNAMIC_T)
}

impl Row<'_, '_> {
    /// Divides every kept value by `d` (> 0).
    pub(crate) fn divide(&mut self, d: f32) {
        if d == 1.0 {
            return;
        }
        self.editable();
        if self.is_cands() {
            for c in self.s.cands.iter_mut() {
                c.v = vector::saturate(c.v / d);
            }
            self.changed();
        } else {
            vector::divide(&mut self.s.dense, d);
            // A tiny divisor can overflow a value to -inf.
            self.replaced();
        }
    }

    pub(crate) fn temperature(&mut self, p: &row::Temperature<u32>) {
        let t = self.p(p.t);
        if t > 0.0 {
            self.divide(t);
        }
    }

    pub(crate) fn sigmoid_temperature(&mut self, p: &row::SigmoidTemperature<u32>) {
        let (t, t_min) = (self.p(p.t), self.p(p.t_min));
        if !sigmoid_is_dynamic(t, t_min) {
            if t > 0.0 {
                self.divide(t);
            }
            return;
        }
        self.make_cands();
        if self.s.cands.is_empty() {
            return;
        }
        let total = self.cand_exps();
        self.divide(sigmoid_temperature(t, t_min, 1.0 / total));
    }

    pub(crate) fn entropy_temperature(&mut self, p: &row::EntropyTemperature<u32>) {
        let (t, range, exponent) = (self.p(p.t), self.p(p.range), self.p(p.exponent));
        if !(t > 0.0 && range > 0.0) {
            if t > 0.0 {
                self.divide(t);
            }
            return;
        }
        self.make_cands();
        let n = self.s.cands.len();
        if n <= 1 {
            return;
        }
        let m = self.max();
        let total = self.cand_exps();
        let ln_s = total.ln();
        let mut h = 0f64;
        for c in &self.s.cands {
            let logp = (c.v as f64 - m as f64) - ln_s;
            h -= logp.exp() * logp;
        }
        self.divide(entropy_temperature(t, range, exponent, h, n));
    }
}
