//! Classifier-free guidance on a row: `null + (pos - null) * strength` where both inputs are
//! finite (else -inf), then, with `rescale = r > 0`, `r * g * std(pos) / std(g) + (1 - r) * g`
//! with the standard deviations (N - 1, f64) over the tokens finite in both.

use super::row::{check_row, Row};
use super::vector;
use crate::error::{invalid, Result};
use crate::spec::row;

/// Mean and standard deviation (N - 1, at least 1 in the denominator) of `values`, two passes.
fn mean_std(values: impl Iterator<Item = f64> + Clone) -> f64 {
    let (mut n, mut sum) = (0usize, 0f64);
    for v in values.clone() {
        n += 1;
        sum += v;
    }
    if n == 0 {
        return f64::NAN;
    }
    let mean = sum / n as f64;
    let dev2: f64 = values.map(|v| (v - mean) * (v - mean)).sum();
    (dev2 / ((n as f64 - 1.0).max(1.0))).sqrt()
}

/// Count, shifted sum and shifted sum of squares of a stream, for its sample deviation in one
/// pass: the shift (the first value) keeps the f64 sums free of cancellation for logits of any
/// offset.
#[derive(Default)]
struct Moments {
    n: usize,
    shift: f64,
    sum: f64,
    sum2: f64,
}

impl Moments {
    fn add(&mut self, v: f64) {
        if self.n == 0 {
            self.shift = v;
        }
        let d = v - self.shift;
        self.n += 1;
        self.sum += d;
        self.sum2 += d * d;
    }

    /// The N - 1 standard deviation, as [`mean_std`] computes it; NaN for no values.
    fn std(&self) -> f64 {
        if self.n == 0 {
            return f64::NAN;
        }
        let n = self.n as f64;
        let dev2 = (self.sum2 - self.sum * self.sum / n).max(0.0);
        (dev2 / (n - 1.0).max(1.0)).sqrt()
    }
}

/// The rescale ratio `std(pos) / std(g)` as the plain path applies it (1 when not finite).
pub(crate) fn ratio(std_pos: f64, std_g: f64) -> f32 {
    let r = (std_pos / std_g) as f32;
    if r.abs() <= f32::MAX {
        r
    } else {
        1.0
    }
}

impl Row<'_, '_> {
    pub(crate) fn cfg(&mut self, p: &row::Cfg<u32>) -> Result<()> {
        let (strength, rescale) = (self.p(p.strength), self.p(p.rescale));
        let null = self.inp.null.ok_or_else(|| {
            invalid("classifier-free guidance needs the null logits (the unconditional run)")
        })?;
        check_row(null, "null logits", self.inp.row)?;
        let guide = |pos: f32, nul: f32| vector::saturate(nul + (pos - nul) * strength);
        self.editable();
        if self.is_cands() {
            self.retain(|c, _| null[c.id as usize] > f32::NEG_INFINITY);
            if rescale != 0.0 {
                let cands = &self.s.cands;
                let sp = mean_std(cands.iter().map(|c| c.v as f64));
                let sg = mean_std(cands.iter().map(|c| guide(c.v, null[c.id as usize]) as f64));
                let r = ratio(sp, sg);
                for c in self.s.cands.iter_mut() {
                    let g = guide(c.v, null[c.id as usize]);
                    c.v = g * r * rescale + g * (1.0 - rescale);
                }
            } else {
                for c in self.s.cands.iter_mut() {
                    c.v = guide(c.v, null[c.id as usize]);
                }
            }
        } else {
            let pos = &mut self.s.dense;
            let both = |i: usize, v: f32| v > f32::NEG_INFINITY && null[i] > f32::NEG_INFINITY;
            let r = if rescale != 0.0 {
                // Both deviations in one pass over the row (a long row is read once here, once
                // to write).
                let (mut sp, mut sg) = (Moments::default(), Moments::default());
                for (i, &v) in pos.iter().enumerate() {
                    if both(i, v) {
                        sp.add(v as f64);
                        sg.add(guide(v, null[i]) as f64);
                    }
                }
                Some(ratio(sp.std(), sg.std()))
            } else {
                None
            };
            for (i, v) in pos.iter_mut().enumerate() {
                *v = if both(i, *v) {
                    let g = guide(*v, null[i]);
                    match r {
                        Some(r) => g * r * rescale + g * (1.0 - rescale),
                        None => g,
                    }
                } else {
                    f32::NEG_INFINITY
                };
            }
        }
        self.replaced();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_pass_deviation_equals_the_two_pass_one_at_any_offset() {
        for offset in [0.0f64, -40.0, 1e4] {
            let values: Vec<f64> = (0..5000)
                .map(|i| offset + ((i * 7919) % 1000) as f64 * 0.003)
                .collect();
            let mut m = Moments::default();
            values.iter().for_each(|&v| m.add(v));
            let want = mean_std(values.iter().copied());
            assert!(
                (m.std() - want).abs() <= want * 1e-9,
                "{offset}: {} vs {want}",
                m.std()
            );
        }
        assert!(Moments::default().std().is_nan());
    }
}
