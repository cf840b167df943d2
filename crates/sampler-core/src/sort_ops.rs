//! The head of each row in sorted order (the `m` largest or smallest values), for the samplers
//! that need a short sorted list: mirostat v1 (the 100 most probable tokens), entropix's
//! best-of-n and the beam candidates.
//!
//! candle's device sort holds a whole row in one block (CUDA: at most 8192 columns; Metal: wrong
//! above 1024), so a long row is cut into chunks of [`CHUNK`]
//! columns, each chunk is sorted and only its first `m` values are kept, and the survivors are
//! sorted again until one chunk is left. Only values come back, so how a backend orders ties
//! does not matter.

use candle_core::{DType, Tensor};

use crate::error::{Result, SamplerError};

/// Columns per device sort; every backend sorts a row of this length correctly.
pub(crate) const CHUNK: usize = 1024;

/// The largest head length: each level must shrink the row (`m` <= CHUNK / 4 shrinks it at
/// least fourfold), so the number of levels stays logarithmic.
pub(crate) const MAX_HEAD: usize = CHUNK / 4;

fn pad_value(dtype: DType, descending: bool) -> Result<f64> {
    match (dtype, descending) {
        (DType::F32, true) => Ok(f64::NEG_INFINITY),
        (DType::F32, false) => Ok(f64::INFINITY),
        (DType::U32, true) => Ok(0.0),
        (DType::U32, false) => Ok(u32::MAX as f64),
        (other, _) => Err(SamplerError::Shape(format!(
            "sorted_head: unsupported dtype {other:?}"
        ))),
    }
}

fn pad_cols(x: &Tensor, extra: usize, descending: bool) -> Result<Tensor> {
    if extra == 0 {
        return Ok(x.clone());
    }
    let rows = x.dim(0)?;
    let v = pad_value(x.dtype(), descending)?;
    let pad = match x.dtype() {
        DType::U32 => Tensor::full(v as u32, (rows, extra), x.device())?,
        _ => Tensor::full(v as f32, (rows, extra), x.device())?,
    };
    Ok(Tensor::cat(&[x, &pad], 1)?)
}

/// The first `min(m, n)` values of each row of `x` (`[rows, n]`, f32 or u32) in sorted order:
/// descending (the largest first) or ascending. `m` must be in `1..=MAX_HEAD`.
pub(crate) fn sorted_head(x: &Tensor, m: usize, descending: bool) -> Result<Tensor> {
    let (rows, mut n) = x.dims2()?;
    if m == 0 || m > MAX_HEAD {
        return Err(SamplerError::Shape(format!(
            "sorted_head: head length {m} not in 1..={MAX_HEAD}"
        )));
    }
    pad_value(x.dtype(), descending)?;
    let m = m.min(n);
    let mut cur = x.contiguous()?;
    while n > CHUNK {
        let chunks = n.div_ceil(CHUNK);
        let padded = pad_cols(&cur, chunks * CHUNK - n, descending)?;
        let (sorted, _) = padded
            .reshape((rows * chunks, CHUNK))?
            .sort_last_dim(!descending)?;
        cur = sorted
            .narrow(1, 0, m)?
            .contiguous()?
            .reshape((rows, chunks * m))?;
        n = chunks * m;
    }
    let (sorted, _) = cur.sort_last_dim(!descending)?;
    Ok(sorted.narrow(1, 0, m)?.contiguous()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// A deterministic pseudo-random permutation-ish row (a multiplicative hash of the index).
    fn scrambled(n: usize, salt: u64) -> Vec<f32> {
        (0..n as u64)
            .map(|i| ((i * 2_654_435_761 + salt) % 100_003) as f32 * 0.01)
            .collect()
    }

    #[test]
    fn head_of_long_rows_matches_a_host_sort() -> Result<()> {
        let n = 5000; // several chunks and two levels
        let rows: Vec<Vec<f32>> = (0..3).map(|r| scrambled(n, r)).collect();
        let flat: Vec<f32> = rows.iter().flatten().copied().collect();
        let x = Tensor::from_vec(flat, (3, n), &Device::Cpu)?;
        let got = sorted_head(&x, 100, true)?.to_vec2::<f32>()?;
        let asc = sorted_head(&x, 7, false)?.to_vec2::<f32>()?;
        for (r, row) in rows.iter().enumerate() {
            let mut s = row.clone();
            s.sort_by(|a, b| b.total_cmp(a));
            assert_eq!(got[r], s[..100].to_vec(), "row {r}");
            s.reverse();
            assert_eq!(asc[r], s[..7].to_vec(), "row {r}");
        }
        Ok(())
    }

    #[test]
    fn short_rows_and_neg_inf() -> Result<()> {
        let ninf = f32::NEG_INFINITY;
        let x = Tensor::new(&[[1f32, ninf, 3.0], [2.0, 2.0, ninf]], &Device::Cpu)?;
        let got = sorted_head(&x, 100, true)?.to_vec2::<f32>()?;
        assert_eq!(got, vec![vec![3.0, 1.0, ninf], vec![2.0, 2.0, ninf]]);
        Ok(())
    }

    #[test]
    fn u32_keys_ascending() -> Result<()> {
        let keys: Vec<u32> = (0..3000u32).map(|i| (i * 7919) % 3001).collect();
        let x = Tensor::from_vec(keys, (1, 3000), &Device::Cpu)?;
        let got = sorted_head(&x, 5, false)?.to_vec2::<u32>()?;
        assert_eq!(got, vec![vec![0, 1, 2, 3, 4]]);
        Ok(())
    }

    #[test]
    fn rejects_oversized_heads() {
        let x = Tensor::zeros((1, 4), DType::F32, &Device::Cpu).unwrap();
        assert!(sorted_head(&x, 0, true).is_err());
        assert!(sorted_head(&x, MAX_HEAD + 1, true).is_err());
    }
}
