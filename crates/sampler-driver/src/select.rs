//! Choosing the k lowest-scoring positions of each row on the device, without a sort.
//!
//! A value bisection finds each row's k-th smallest score v (the smallest score with at least
//! k scores at or below it); the positions below v are taken, then the first positions (by
//! index) that score exactly v until there are k. Every bound of the bisection is snapped to a
//! score that occurs in the row, so it ends on exact data values rather than an approximation.
//!
//! Probe count: while a row's bounds are positive and more than a factor 2 apart, the probe is
//! their geometric mean, which at least halves `log2(hi / lo)` (under 277 for positive f32:
//! 9 probes); after that the arithmetic midpoint halves `hi - lo`, and 25 probes bring it
//! below one ulp of `lo`, where only `lo` and `hi` are left. A lower bound of 0 (the start
//! scores of noised positions) costs up to `log2(1 / s)` more midpoint probes, s the smallest
//! positive score; scores are probabilities of a most likely token, so s >= 1 / vocab.

use candle_core::{DType, Tensor};

use crate::error::Result;

/// Probes of the value bisection (see the module docs): 34 for positive scores, and 14 more
/// for a 0 next to scores down to `2^-14`.
const VALUE_PROBES: usize = 48;

/// `[rows, 1]` f32: the set entries of each row of a u8 mask.
fn count(mask: &Tensor) -> Result<Tensor> {
    Ok(mask.to_dtype(DType::F32)?.sum_keepdim(1)?)
}

/// Row-wise minimum over the set entries of `mask` (+inf where none), `[rows, 1]`.
fn masked_min(x: &Tensor, mask: &Tensor) -> Result<Tensor> {
    let inf = Tensor::full(f32::INFINITY, x.shape(), x.device())?;
    Ok(mask.where_cond(x, &inf)?.min_keepdim(1)?)
}

/// Row-wise maximum over the set entries of `mask` (-inf where none), `[rows, 1]`.
fn masked_max(x: &Tensor, mask: &Tensor) -> Result<Tensor> {
    let ninf = Tensor::full(f32::NEG_INFINITY, x.shape(), x.device())?;
    Ok(mask.where_cond(x, &ninf)?.max_keepdim(1)?)
}

/// The probe between `lo` and `hi` (`[rows, 1]`): the geometric mean while both are positive
/// and `hi > 2 lo`, else the arithmetic midpoint.
fn probe(lo: &Tensor, hi: &Tensor) -> Result<Tensor> {
    let arithmetic = ((lo * 0.5)? + (hi * 0.5)?)?;
    // sqrt(lo) * sqrt(hi) cannot overflow where lo * hi would.
    let geometric = (lo.abs()?.sqrt()? * hi.abs()?.sqrt()?)?;
    let far = (lo.gt(0f32)? * hi.gt(&(lo * 2.0)?)?)?;
    Ok(far.where_cond(&geometric, &arithmetic)?)
}

/// `[rows, T]` u8 with exactly `min(k[r], valid count of row r)` ones per row: the valid
/// positions with the lowest `scores`, ties going to the lower position. `scores` is
/// `[rows, T]` f32 (finite where `valid`), `valid` `[rows, T]` u8, `k` `[rows, 1]` f32 of
/// non-negative integers.
pub(crate) fn lowest_k(scores: &Tensor, valid: &Tensor, k: &Tensor) -> Result<Tensor> {
    let k = k.minimum(&count(valid)?)?;
    // v = the smallest score with count(valid & score <= v) >= k, kept within [lo, hi].
    let mut lo = masked_min(scores, valid)?;
    let mut hi = masked_max(scores, valid)?;
    for _ in 0..VALUE_PROBES {
        let mid = probe(&lo, &hi)?;
        let at_or_below = (scores.broadcast_le(&mid)? * valid)?;
        let enough = count(&at_or_below)?.ge(&k)?;
        // Enough at or below mid: v is at most the largest score at or below mid. Else v is
        // at least the smallest score above mid.
        let above = (at_or_below.eq(0u8)? * valid)?;
        hi = enough.where_cond(&masked_max(scores, &at_or_below)?, &hi)?;
        lo = enough.where_cond(&lo, &masked_min(scores, &above)?)?;
    }
    let lo_enough = count(&(scores.broadcast_le(&lo)? * valid)?)?.ge(&k)?;
    let v = lo_enough.where_cond(&lo, &hi)?;
    let below = (scores.broadcast_lt(&v)? * valid)?;
    let ties = (scores.broadcast_eq(&v)? * valid)?;
    let wanted = (&k - count(&below)?)?.maximum(0f32)?;
    Ok((below + first_by_position(&ties, &wanted)?)?.gt(0u8)?)
}

/// Of each row's set entries of `mask` (`[rows, T]` u8), the first `n` (`[rows, 1]` f32, may
/// exceed the count) by position.
fn first_by_position(mask: &Tensor, n: &Tensor) -> Result<Tensor> {
    let (rows, t) = mask.dims2()?;
    let dev = mask.device();
    let pos = Tensor::arange(0f32, t as f32, dev)?.unsqueeze(0)?;
    let n = n.minimum(&count(mask)?)?;
    // The smallest b in [0, T] with count(mask & pos < b) >= n, by bisection on b.
    let mut lo = Tensor::zeros((rows, 1), DType::F32, dev)?;
    let mut hi = Tensor::full(t as f32, (rows, 1), dev)?;
    let probes = usize::BITS - t.leading_zeros() + 1;
    for _ in 0..probes {
        let mid = ((&lo + &hi)? * 0.5)?.floor()?;
        let ok = count(&(mask * pos.broadcast_lt(&mid)?)?)?.ge(&n)?;
        hi = ok.where_cond(&mid, &hi)?;
        lo = ok.where_cond(&lo, &(mid + 1.0)?)?;
    }
    Ok((mask * pos.broadcast_lt(&hi)?)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// The k lowest valid positions by (score, position), on the host.
    fn reference(scores: &[f32], valid: &[bool], k: usize) -> Vec<u8> {
        let mut idx: Vec<usize> = (0..scores.len()).filter(|&i| valid[i]).collect();
        idx.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]).then(a.cmp(&b)));
        let mut out = vec![0u8; scores.len()];
        for &i in idx.iter().take(k) {
            out[i] = 1;
        }
        out
    }

    fn run(rows: &[(Vec<f32>, Vec<bool>, usize)]) -> Result<Vec<Vec<u8>>> {
        let t = rows[0].0.len();
        let dev = Device::Cpu;
        let scores: Vec<f32> = rows.iter().flat_map(|r| r.0.clone()).collect();
        let valid: Vec<u8> = rows
            .iter()
            .flat_map(|r| r.1.iter().map(|&v| v as u8))
            .collect();
        let k: Vec<f32> = rows.iter().map(|r| r.2 as f32).collect();
        let n = rows.len();
        let got = lowest_k(
            &Tensor::from_vec(scores, (n, t), &dev)?,
            &Tensor::from_vec(valid, (n, t), &dev)?,
            &Tensor::from_vec(k, (n, 1), &dev)?,
        )?;
        Ok(got.to_vec2::<u8>()?)
    }

    #[test]
    fn ties_go_to_the_lower_position_and_exactly_k_are_chosen() -> Result<()> {
        let all = vec![true; 6];
        let rows = vec![
            (vec![1.0; 6], all.clone(), 4),
            (vec![0.5, 0.2, 0.5, 0.2, 0.9, 0.5], all.clone(), 3),
            (vec![0.3, 0.1, 0.3, 0.1, 0.3, 0.3], all.clone(), 0),
            (vec![0.3, 0.1, 0.3, 0.1, 0.3, 0.3], all, 6),
            (
                vec![0.0, 0.7, 0.0, 0.4, 1.0, 0.0],
                vec![true, true, true, true, false, false],
                9,
            ),
            (vec![0.2; 6], vec![false; 6], 2),
        ];
        let got = run(&rows)?;
        assert_eq!(got[0], vec![1, 1, 1, 1, 0, 0]);
        assert_eq!(got[1], vec![1, 1, 0, 1, 0, 0]);
        assert_eq!(got[2], vec![0; 6]);
        assert_eq!(got[3], vec![1; 6]);
        assert_eq!(got[4], vec![1, 1, 1, 1, 0, 0]);
        assert_eq!(got[5], vec![0; 6]);
        Ok(())
    }

    #[test]
    fn matches_a_sort_on_pseudo_random_probabilities() -> Result<()> {
        // Probabilities of a most likely token, with repeats and near-equal values, per-row
        // lengths and per-row k.
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let t = 37;
        let mut rows = Vec::new();
        for r in 0..24 {
            let len = (next() % (t as u64 + 1)) as usize;
            let scores: Vec<f32> = (0..t)
                .map(|_| match next() % 4 {
                    0 => 1.0,
                    1 => 0.5 + (next() % 3) as f32 * f32::EPSILON,
                    _ => 1.0 / 1025.0 + (next() % 1_000_000) as f32 * 1e-6,
                })
                .collect();
            let valid: Vec<bool> = (0..t).map(|i| i < len).collect();
            let k = if r % 5 == 0 {
                len
            } else {
                (next() % (len as u64 + 2)) as usize
            };
            rows.push((scores, valid, k));
        }
        let got = run(&rows)?;
        for (r, (scores, valid, k)) in rows.iter().enumerate() {
            assert_eq!(got[r], reference(scores, valid, *k), "row {r}");
        }
        Ok(())
    }

    #[test]
    fn values_spread_over_many_binades_are_exact() -> Result<()> {
        let scores: Vec<f32> = (0..40).map(|i| 2f32.powi(-(i * 3 % 120))).collect();
        let valid = vec![true; 40];
        let rows: Vec<_> = (0..=40)
            .step_by(7)
            .map(|k| (scores.clone(), valid.clone(), k))
            .collect();
        let got = run(&rows)?;
        for (r, (s, v, k)) in rows.iter().enumerate() {
            assert_eq!(got[r], reference(s, v, *k), "k = {k}");
        }
        Ok(())
    }
}
