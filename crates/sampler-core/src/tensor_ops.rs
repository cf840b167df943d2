//! Small tensor building blocks shared by the processors and the draw.
//!
//! candle 0.11 has no top-k, no device sort for long rows and an O(V²) cumsum, so thresholds
//! are found by bisection over each row's own values: every probe is a comparison and a
//! reduction over `[rows, V]`, and after each probe the bounds snap to values present in the
//! row, so the search ends on an exact data value. Quantities that decide a cut (log-sum-exp,
//! masses, entropies) are computed in [`decision_dtype`].

use candle_core::{DType, Device, Tensor, D};

use crate::error::Result;

/// Probes of a value bisection. Each probe at least halves the gap between the bounds and snaps
/// them onto data values; 48 probes separate any two f32 logits whose distance is above
/// 2^-48 of the row's range, far below what any real row needs.
pub(crate) const VALUE_PROBES: usize = 48;

/// The dtype of the decisions of the plain path: f64 where the device has it (Metal has none).
pub(crate) fn decision_dtype(device: &Device) -> DType {
    match device {
        Device::Metal(_) => DType::F32,
        _ => DType::F64,
    }
}

pub(crate) fn full_like(x: &Tensor, v: f32) -> Result<Tensor> {
    Ok(Tensor::new(v, x.device())?
        .to_dtype(x.dtype())?
        .broadcast_as(x.shape())?)
}

/// Row-wise log-softmax over the last dimension (-inf stays -inf), in `x`'s dtype.
pub(crate) fn log_softmax(x: &Tensor) -> Result<Tensor> {
    let shifted = x.broadcast_sub(&x.max_keepdim(D::Minus1)?)?;
    Ok(shifted.broadcast_sub(&shifted.exp()?.sum_keepdim(D::Minus1)?.log()?)?)
}

/// Row-wise probabilities `exp(x - max) / sum`, in `x`'s dtype (the fused path's form).
pub(crate) fn softmax(x: &Tensor) -> Result<Tensor> {
    let e = x.broadcast_sub(&x.max_keepdim(D::Minus1)?)?.exp()?;
    Ok(e.broadcast_div(&e.sum_keepdim(D::Minus1)?)?)
}

/// `x` with the positions where `mask` is 1 replaced by `v`.
pub(crate) fn fill_where(x: &Tensor, mask: &Tensor, v: f32) -> Result<Tensor> {
    Ok(mask.where_cond(&full_like(x, v)?, x)?)
}

/// `x` with the positions where `keep` is 0 set to -inf.
pub(crate) fn keep_only(x: &Tensor, keep: &Tensor) -> Result<Tensor> {
    Ok(keep.where_cond(x, &full_like(x, f32::NEG_INFINITY)?)?)
}

/// 1 where `x` is finite (not -inf; +inf and NaN are rejected by validation).
pub(crate) fn finite(x: &Tensor) -> Result<Tensor> {
    Ok(x.ge(f32::MIN as f64)?)
}

/// Row-wise number of set entries, `[rows, 1]` f32.
pub(crate) fn count(mask: &Tensor) -> Result<Tensor> {
    Ok(mask.to_dtype(DType::F32)?.sum_keepdim(D::Minus1)?)
}

/// Row-wise number of set entries, `[rows, 1]` in `dtype`.
pub(crate) fn count_as(mask: &Tensor, dtype: DType) -> Result<Tensor> {
    Ok(mask.to_dtype(dtype)?.sum_keepdim(D::Minus1)?)
}

/// Row-wise minimum over the entries where `mask` is set (+inf where none).
pub(crate) fn masked_min(x: &Tensor, mask: &Tensor) -> Result<Tensor> {
    Ok(fill_where(x, &mask.eq(0u8)?, f32::INFINITY)?.min_keepdim(D::Minus1)?)
}

/// Row-wise maximum over the entries where `mask` is set (-inf where none).
pub(crate) fn masked_max(x: &Tensor, mask: &Tensor) -> Result<Tensor> {
    Ok(keep_only(x, mask)?.max_keepdim(D::Minus1)?)
}

/// Row-wise sum of `x` over the entries where `mask` is set.
pub(crate) fn masked_sum(x: &Tensor, mask: &Tensor) -> Result<Tensor> {
    Ok(mask
        .where_cond(x, &full_like(x, 0.0)?)?
        .sum_keepdim(D::Minus1)?)
}

fn midpoint(lo: &Tensor, hi: &Tensor) -> Result<Tensor> {
    // Halves first so that the sum cannot overflow for logits near f32::MAX.
    Ok(((lo * 0.5)? + (hi * 0.5)?)?)
}

/// The k-th largest finite value of each row (`k`: `[rows, 1]` f32, clamped to
/// `[1, finite count]`), counting ties: the largest value `v` with `count(x >= v) >= k`.
pub(crate) fn kth_largest(x: &Tensor, k: &Tensor) -> Result<Tensor> {
    let fin = finite(x)?;
    let k = k.minimum(&count(&fin)?)?.maximum(1f32)?;
    let mut lo = masked_min(x, &fin)?;
    let mut hi = x.max_keepdim(D::Minus1)?;
    for _ in 0..VALUE_PROBES {
        let mid = midpoint(&lo, &hi)?;
        let ge = x.broadcast_ge(&mid)?;
        let enough = count(&ge)?.ge(&k)?;
        // v >= mid: the smallest value >= mid is still <= v. Else v < mid: the largest value
        // below mid is still >= v.
        lo = enough.where_cond(&masked_min(x, &ge)?, &lo)?;
        hi = enough.where_cond(&hi, &masked_max(x, &ge.eq(0u8)?)?)?;
    }
    // lo and hi are adjacent data values (or equal): pick the one that satisfies the count.
    let hi_ok = count(&x.broadcast_ge(&hi)?)?.ge(&k)?;
    Ok(hi_ok.where_cond(&hi, &lo)?)
}

/// Keep-mask of top-p (docs/semantics.md#top-p): in logit-descending order, ties by lower id first, a token is
/// kept when the probability mass of the tokens before it is <= p. `probs` is the softmax of `x`.
pub(crate) fn top_p_keep(x: &Tensor, probs: &Tensor, p: &Tensor) -> Result<Tensor> {
    let fin = finite(x)?;
    let mass_above = |t: &Tensor| -> Result<Tensor> { masked_sum(probs, &x.broadcast_gt(t)?) };
    // v = the smallest data value with mass_above(v) <= p (the last kept value); the search
    // keeps lo <= v <= hi on data values.
    let mut lo = masked_min(x, &fin)?;
    let mut hi = x.max_keepdim(D::Minus1)?;
    for _ in 0..VALUE_PROBES {
        let mid = midpoint(&lo, &hi)?;
        let gt = x.broadcast_gt(&mid)?;
        let too_much = masked_sum(probs, &gt)?.gt(p)?;
        // Too much mass above mid: v > mid, so v >= the smallest value above mid.
        // Else v <= mid, so v <= the largest value at or below mid.
        lo = too_much.where_cond(&masked_min(x, &gt)?, &lo)?;
        hi = too_much.where_cond(&hi, &masked_max(x, &gt.eq(0u8)?)?)?;
    }
    let v = mass_above(&lo)?.gt(p)?.where_cond(&hi, &lo)?;
    let above = x.broadcast_gt(&v)?;
    let tie = x.broadcast_eq(&v)?;
    // Tied tokens share one probability q; the r-th of them (by id) has mass M + r q before it.
    let m = masked_sum(probs, &above)?;
    let q = masked_max(probs, &tie)?;
    let allowed = ((p - &m)? / &q)?.floor()?.affine(1.0, 1.0)?;
    // A NaN (no tie group) keeps nothing extra; counts fit f32 exactly.
    let allowed = allowed.to_dtype(DType::F32)?;
    let first_ties = first_set_by_id(&tie, &allowed)?;
    Ok((above + first_ties)?.gt(0u8)?)
}

/// Of each row's set entries, the first `n` by id (`n`: `[rows, 1]` f32, may exceed the count).
pub(crate) fn first_set_by_id(mask: &Tensor, n: &Tensor) -> Result<Tensor> {
    let (rows, v) = mask.dims2()?;
    let ids = Tensor::arange(0f32, v as f32, mask.device())?.unsqueeze(0)?;
    let n = n.minimum(&count(mask)?)?;
    // NaN (0 / 0 for an empty tie group) counts as none.
    let n = n.ne(&n)?.where_cond(&n.zeros_like()?, &n)?;
    // The smallest b with count(mask & id < b) >= n, by integer bisection over [0, v].
    let mut lo = Tensor::zeros((rows, 1), DType::F32, mask.device())?;
    let mut hi = Tensor::full(v as f32, (rows, 1), mask.device())?;
    let probes = usize::BITS - v.leading_zeros() + 1;
    for _ in 0..probes {
        let mid = ((&lo + &hi)? * 0.5)?.floor()?;
        let below = ids.broadcast_lt(&mid)?;
        let c = count(&(mask * &below)?)?;
        let ok = c.ge(&n)?;
        hi = ok.where_cond(&mid, &hi)?;
        lo = ok.where_cond(&lo, &mid.affine(1.0, 1.0)?)?;
    }
    Ok((mask * ids.broadcast_lt(&hi)?)?)
}

/// Row-wise index of the first maximum (ties go to the lowest id), `[rows]` u32.
pub(crate) fn argmax_lowest(x: &Tensor) -> Result<Tensor> {
    let v = x.dim(D::Minus1)?;
    let ids = Tensor::arange(0f32, v as f32, x.device())?.broadcast_as(x.shape())?;
    let at_max = x.broadcast_eq(&x.max_keepdim(D::Minus1)?)?;
    let first = fill_where(&ids, &at_max.eq(0u8)?, v as f32)?.min(D::Minus1)?;
    // A row of -inf or NaN has no maximum position: fall back to 0 rather than v.
    Ok(first.minimum((v - 1) as f32)?.to_dtype(DType::U32)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn t2(rows: &[&[f32]]) -> Tensor {
        let v = rows[0].len();
        let flat: Vec<f32> = rows.iter().flat_map(|r| r.iter().copied()).collect();
        Tensor::from_vec(flat, (rows.len(), v), &Device::Cpu).unwrap()
    }

    fn col(vals: &[f32]) -> Tensor {
        Tensor::from_vec(vals.to_vec(), (vals.len(), 1), &Device::Cpu).unwrap()
    }

    #[test]
    fn kth_largest_counts_ties_and_skips_neg_inf() -> Result<()> {
        let ninf = f32::NEG_INFINITY;
        let x = t2(&[&[1.0, 5.0, 3.0, 5.0, ninf], &[2.0, 2.0, 2.0, 1.0, 0.5]]);
        let k2 = kth_largest(&x, &col(&[2.0, 2.0]))?
            .flatten_all()?
            .to_vec1::<f32>()?;
        assert_eq!(k2, vec![5.0, 2.0]);
        let k3 = kth_largest(&x, &col(&[3.0, 4.0]))?
            .flatten_all()?
            .to_vec1::<f32>()?;
        assert_eq!(k3, vec![3.0, 1.0]);
        // k beyond the finite entries: the smallest finite value.
        let k9 = kth_largest(&x, &col(&[9.0, 9.0]))?
            .flatten_all()?
            .to_vec1::<f32>()?;
        assert_eq!(k9, vec![1.0, 0.5]);
        Ok(())
    }

    #[test]
    fn kth_largest_separates_adjacent_floats() -> Result<()> {
        let a = 1.0f32;
        let b = f32::from_bits(a.to_bits() + 1);
        let x = t2(&[&[-1e30, a, b, 1e30]]);
        let v = kth_largest(&x, &col(&[3.0]))?
            .flatten_all()?
            .to_vec1::<f32>()?;
        assert_eq!(v, vec![a]);
        let v = kth_largest(&x, &col(&[2.0]))?
            .flatten_all()?
            .to_vec1::<f32>()?;
        assert_eq!(v, vec![b]);
        Ok(())
    }

    #[test]
    fn first_set_by_id_takes_lowest_ids() -> Result<()> {
        let m = Tensor::new(&[[0u8, 1, 1, 0, 1, 1]], &Device::Cpu)?;
        let got = first_set_by_id(&m, &col(&[2.0]))?.to_vec2::<u8>()?;
        assert_eq!(got, vec![vec![0, 1, 1, 0, 0, 0]]);
        let all = first_set_by_id(&m, &col(&[10.0]))?.to_vec2::<u8>()?;
        assert_eq!(all, vec![vec![0, 1, 1, 0, 1, 1]]);
        Ok(())
    }

    #[test]
    fn argmax_prefers_lowest_id() -> Result<()> {
        let x = t2(&[&[1.0, 3.0, 3.0], &[f32::NEG_INFINITY, 0.0, -1.0]]);
        assert_eq!(argmax_lowest(&x)?.to_vec1::<u32>()?, vec![1, 1]);
        Ok(())
    }
}
#[cfg(test)]
mod top_p_search_tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn top_p_search_converges_between_close_values() -> Result<()> {
        // The cut falls between two values whose midpoint probes land on one side repeatedly.
        let l: Vec<f32> = [0.1f32, 0.4, 0.2, 0.3].iter().map(|p| p.ln()).collect();
        let x = Tensor::from_vec(l, (1, 4), &Device::Cpu)?;
        let probs = softmax(&x.to_dtype(DType::F64)?)?;
        let p = Tensor::new(&[[0.5f64]], &Device::Cpu)?;
        assert_eq!(
            top_p_keep(&x, &probs, &p)?.to_vec2::<u8>()?,
            vec![vec![0, 1, 0, 1]]
        );
        Ok(())
    }
}
