//! Beam candidates: the top `width` (row, token) pairs across all rows of a batch, ranked by
//! `score = log_softmax(logits)[row, token] + running[row]` (the running score of each beam,
//! optional), highest first, ties by lower flat index (row-major: lower row, then lower token).
//! Not a processor: it reads the processed logits (after the chain) and returns pairs, on the
//! logits' device.
//!
//! Without a device top-k, exactly: the `width`-th largest score `v` comes from chunked sorts
//! of the values ([`crate::sort_ops`]); every flat position gets a u32 key (its index if its score is
//! above `v`, `n +` its index if equal to `v`, `u32::MAX` otherwise) and the `width` smallest
//! keys, found the same way, are all the scores above `v` and then the
//! lowest-index ties at `v`. A last `width x width` ranking orders them by score.

use candle_core::{DType, Tensor, D};

use crate::error::{invalid, Result, SamplerError};
use crate::sort_ops::{sorted_head, MAX_HEAD};
use crate::tensor_ops::log_softmax;
use crate::tensor_ops::{count, finite};

/// The largest beam width.
pub const MAX_BEAM_WIDTH: usize = MAX_HEAD;

/// The chosen pairs, best first, each a `[width]` tensor on the logits' device.
#[derive(Clone, Debug)]
pub struct BeamCandidates {
    /// u32 row index.
    pub rows: Tensor,
    /// u32 token id.
    pub tokens: Tensor,
    /// f32 score.
    pub scores: Tensor,
}

impl BeamCandidates {
    /// `[width, 2]` i64 (row, token), the CLI's output.
    pub fn pairs(&self) -> Result<Tensor> {
        Ok(Tensor::stack(&[&self.rows, &self.tokens], 1)?.to_dtype(DType::I64)?)
    }
}

/// The top `width` (row, token) pairs of `logits` (`[rows, vocab]`, processed), scored by
/// log-softmax plus the optional `[rows]` `running` score. An error when fewer than `width`
/// pairs have a finite score.
pub fn beam_candidates(
    logits: &Tensor,
    running: Option<&Tensor>,
    width: usize,
) -> Result<BeamCandidates> {
    let (rows, vocab) = logits.dims2().map_err(|_| {
        SamplerError::Shape(format!(
            "beam logits must be [rows, vocab], got {:?}",
            logits.dims()
        ))
    })?;
    if !(1..=MAX_BEAM_WIDTH).contains(&width) {
        return Err(invalid(
            "beam_width",
            format!("{width} is not in [1, {MAX_BEAM_WIDTH}]"),
        ));
    }
    let n = rows * vocab;
    if n >= (u32::MAX / 2) as usize {
        return Err(SamplerError::Shape(format!(
            "beam search over {n} pairs: at most 2^31 - 1"
        )));
    }
    let dev = logits.device();
    let mut scores = log_softmax(&logits.to_dtype(DType::F32)?)?;
    if let Some(r) = running {
        if r.dims() != [rows] {
            return Err(SamplerError::Shape(format!(
                "running scores must be [{rows}], got {:?}",
                r.dims()
            )));
        }
        let r = r.to_device(dev)?.to_dtype(DType::F32)?.reshape((rows, 1))?;
        scores = scores.broadcast_add(&r)?;
    }
    let flat = scores.reshape((1, n))?.contiguous()?;
    let fin = finite(&flat)?;
    let available = count(&fin)?.to_vec2::<f32>()?[0][0] as usize;
    if available < width {
        return Err(invalid(
            "beam_width",
            format!("{width} candidates asked for, but only {available} (row, token) pairs have a finite score"),
        ));
    }
    // The width-th largest score (a value; how the sort orders ties does not matter).
    let v = sorted_head(&flat, width, true)?.narrow(1, width - 1, 1)?;
    let index = Tensor::arange(0u32, n as u32, dev)?.unsqueeze(0)?;
    let tied_index = Tensor::arange(n as u32, 2 * n as u32, dev)?.unsqueeze(0)?;
    let none = Tensor::full(u32::MAX, (1, n), dev)?;
    let keys = flat.broadcast_gt(&v)?.where_cond(
        &index,
        &flat.broadcast_eq(&v)?.where_cond(&tied_index, &none)?,
    )?;
    let head = sorted_head(&keys, width, false)?.squeeze(0)?;
    // Undo the tie offset without a u32 underflow: subtract n only where the key is >= n.
    let offset = (head.ge(n as u32)?.to_dtype(DType::U32)?
        * Tensor::new(n as u32, dev)?.broadcast_as(width)?)?;
    let idx = (head - offset)?;
    let picked = flat.squeeze(0)?.index_select(&idx, 0)?;
    // Order by score (descending), equal scores by index: the keys are already in index order.
    let s_i = picked.unsqueeze(1)?;
    let s_j = picked.unsqueeze(0)?;
    let pos = Tensor::arange(0f32, width as f32, dev)?;
    let earlier = pos.unsqueeze(0)?.broadcast_lt(&pos.unsqueeze(1)?)?;
    let ahead = (s_j.broadcast_gt(&s_i)? + (s_j.broadcast_eq(&s_i)? * earlier)?)?;
    let rank = ahead.to_dtype(DType::F32)?.sum(D::Minus1)?;
    // Output slot r takes the candidate whose rank is r.
    let one_hot = rank
        .unsqueeze(0)?
        .broadcast_eq(&pos.unsqueeze(1)?)?
        .to_dtype(DType::F32)?;
    let source = one_hot
        .broadcast_mul(&pos.unsqueeze(0)?)?
        .sum(D::Minus1)?
        .to_dtype(DType::U32)?;
    let idx = idx.index_select(&source, 0)?;
    let scores = picked.index_select(&source, 0)?;
    let vocab_t = Tensor::new(vocab as u32, dev)?.broadcast_as(width)?;
    let rows_t = idx.div(&vocab_t)?;
    let tokens = (&idx - (&rows_t * &vocab_t)?)?;
    Ok(BeamCandidates {
        rows: rows_t,
        tokens,
        scores,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::t2;
    use candle_core::Device;

    const NINF: f32 = f32::NEG_INFINITY;

    fn lp(x: &[f32]) -> Vec<f32> {
        let m = x.iter().cloned().fold(NINF, f32::max);
        let z: f32 = x.iter().map(|v| (v - m).exp()).sum();
        x.iter().map(|v| v - m - z.ln()).collect()
    }

    #[test]
    fn picks_the_best_pairs_across_rows() -> Result<()> {
        // Row 0 log-probs ln{0.6, 0.3, 0.1}, row 1 ln{0.5, 0.45, 0.05}.
        let x = t2(&[
            &[0.6f32.ln(), 0.3f32.ln(), 0.1f32.ln()],
            &[0.5f32.ln(), 0.45f32.ln(), 0.05f32.ln()],
        ]);
        let b = beam_candidates(&x, None, 3)?;
        assert_eq!(
            b.pairs()?.to_vec2::<i64>()?,
            vec![vec![0, 0], vec![1, 0], vec![1, 1]]
        );
        let s = b.scores.to_vec1::<f32>()?;
        for (g, w) in s.iter().zip([0.6f32.ln(), 0.5f32.ln(), 0.45f32.ln()]) {
            assert!((g - w).abs() < 1e-6, "{s:?}");
        }
        // Running scores move row 1 ahead: row 0 pays -1.
        let run = Tensor::new(&[-1f32, 0.0], &Device::Cpu)?;
        let b = beam_candidates(&x, Some(&run), 2)?;
        assert_eq!(b.pairs()?.to_vec2::<i64>()?, vec![vec![1, 0], vec![1, 1]]);
        Ok(())
    }

    #[test]
    fn ties_go_to_the_lower_flat_index() -> Result<()> {
        // Every score equal: the first four flat positions, in order.
        let x = t2(&[&[0.0; 5], &[0.0; 5]]);
        let b = beam_candidates(&x, None, 4)?;
        assert_eq!(
            b.pairs()?.to_vec2::<i64>()?,
            vec![vec![0, 0], vec![0, 1], vec![0, 2], vec![0, 3]]
        );
        // Ties straddling the cut, one better token in row 1.
        let x = t2(&[&[1.0, 1.0, 1.0], &[1.0, 3.0, 1.0]]);
        let b = beam_candidates(&x, None, 3)?;
        let want = lp(&[1.0, 3.0, 1.0])[1];
        assert!((b.scores.to_vec1::<f32>()?[0] - want).abs() < 1e-6);
        assert_eq!(
            b.pairs()?.to_vec2::<i64>()?,
            vec![vec![1, 1], vec![0, 0], vec![0, 1]]
        );
        Ok(())
    }

    #[test]
    fn long_rows_and_errors() -> Result<()> {
        // 3 rows of 3000 with distinct values: compare with a host ranking.
        let vals: Vec<f32> = (0..9000u32)
            .map(|i| ((i * 7919) % 9001) as f32 * 1e-3)
            .collect();
        let x = Tensor::from_vec(vals.clone(), (3, 3000), &Device::Cpu)?;
        let b = beam_candidates(&x, None, 8)?;
        let mut scored: Vec<(f32, usize)> = Vec::new();
        for r in 0..3 {
            let l = lp(&vals[r * 3000..(r + 1) * 3000]);
            scored.extend(l.iter().enumerate().map(|(t, &s)| (s, r * 3000 + t)));
        }
        scored.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        let want: Vec<Vec<i64>> = scored[..8]
            .iter()
            .map(|&(_, i)| vec![(i / 3000) as i64, (i % 3000) as i64])
            .collect();
        assert_eq!(b.pairs()?.to_vec2::<i64>()?, want);
        // Too few finite candidates, zero width, bad running shape.
        let x = t2(&[&[0.0, NINF, NINF]]);
        assert!(beam_candidates(&x, None, 2).is_err());
        assert!(beam_candidates(&x, None, 0).is_err());
        assert!(beam_candidates(&x, Some(&Tensor::new(&[0f32, 0.0], &Device::Cpu)?), 1).is_err());
        Ok(())
    }
}
