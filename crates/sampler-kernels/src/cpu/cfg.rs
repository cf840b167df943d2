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
                let items = || pos.iter().enumerate().filter(move |&(i, &v)| both(i, v));
                let sp = mean_std(items().map(|(_, &v)| v as f64));
                let sg = mean_std(items().map(|(i, &v)| guide(v, null[i]) as f64));
                Some(ratio(sp, sg))
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
