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

/// The N - 1 standard deviation from a count and the sum and sum of squares of shifted
/// values, as [`mean_std`] computes it; NaN for no values.
fn sample_std(n: f64, sum: f64, sum2: f64) -> f64 {
    if n == 0.0 {
        return f64::NAN;
    }
    let dev2 = (sum2 - sum * sum / n).max(0.0);
    (dev2 / (n - 1.0).max(1.0)).sqrt()
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
        let guide = |pos: f32, nul: f32| vector::guide(pos, nul, strength);
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
            let r = if rescale != 0.0 {
                // Shift both sums by the first entry they hold, so that they stay free of
                // cancellation for logits of any offset.
                let first = pos
                    .iter()
                    .zip(null)
                    .find(|(&v, &q)| v > f32::NEG_INFINITY && q > f32::NEG_INFINITY);
                match first {
                    Some((&v, &q)) => {
                        let (sp, sg) = (v as f64, vector::guide(v, q, strength) as f64);
                        let [n, p1, p2, g1, g2] =
                            vector::guided_moments(pos, null, strength, sp, sg);
                        ratio(sample_std(n, p1, p2), sample_std(n, g1, g2))
                    }
                    None => ratio(f64::NAN, f64::NAN),
                }
            } else {
                1.0
            };
            vector::guide_row(pos, null, strength, r, rescale);
        }
        self.replaced();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_pass_deviations_equal_the_two_pass_ones_at_any_offset() {
        for offset in [0.0f32, -40.0, 1e4] {
            let pos: Vec<f32> = (0..5003)
                .map(|i| {
                    if i % 97 == 5 {
                        f32::NEG_INFINITY
                    } else {
                        offset + ((i * 7919) % 1000) as f32 * 0.003
                    }
                })
                .collect();
            let null: Vec<f32> = (0..5003)
                .map(|i| {
                    if i % 89 == 7 {
                        f32::NEG_INFINITY
                    } else {
                        (i % 13) as f32 * 0.1
                    }
                })
                .collect();
            let both: Vec<usize> = (0..pos.len())
                .filter(|&i| pos[i].is_finite() && null[i].is_finite())
                .collect();
            let f = both[0];
            let (sp, sg) = (pos[f] as f64, vector::guide(pos[f], null[f], 1.5) as f64);
            let [n, p1, p2, g1, g2] = vector::guided_moments(&pos, &null, 1.5, sp, sg);
            assert_eq!(n as usize, both.len());
            let want_p = mean_std(both.iter().map(|&i| pos[i] as f64));
            let want_g = mean_std(
                both.iter()
                    .map(|&i| vector::guide(pos[i], null[i], 1.5) as f64),
            );
            let (got_p, got_g) = (sample_std(n, p1, p2), sample_std(n, g1, g2));
            assert!(
                (got_p - want_p).abs() <= want_p * 1e-9,
                "{offset}: {got_p} vs {want_p}"
            );
            assert!(
                (got_g - want_g).abs() <= want_g * 1e-9,
                "{offset}: {got_g} vs {want_g}"
            );
        }
        assert!(sample_std(0.0, 0.0, 0.0).is_nan());
    }
}
