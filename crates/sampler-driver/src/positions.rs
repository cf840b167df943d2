//! The chain rows of a whole-sequence stage (NAR levels, masked level 0): one row per position
//! below each sequence's length, so padding costs nothing, with a Philox row id per (sequence,
//! position) that does not depend on the rest of the batch.

use candle_core::{DType, Device, Tensor};

use crate::error::Result;

/// Where the chain rows come from and go back to, built once per stage on the host from
/// host-known lengths and uploaded.
pub(crate) struct Positions {
    /// `[rows]` u32: the sequence of each chain row.
    pub(crate) seq_of: Tensor,
    /// `[rows]` u32: the position of each chain row within its sequence.
    pub(crate) pos_of: Tensor,
    /// `[rows]` u32: `b * T_max + j` of each chain row, to gather `[batch * T_max, ..]` rows.
    pub(crate) flat_of: Tensor,
    /// `[batch * T_max]` u32: for each (b, j) the chain row holding it, or `rows` past the
    /// length (the index of a padding value appended after the chain rows).
    pub(crate) scatter_back: Tensor,
    /// The Philox row id of each chain row: `id * stride + j`.
    pub(crate) row_ids: Vec<u32>,
}

impl Positions {
    /// The positions of sequences with these ids and lengths, padded to `t_max`. `stride`
    /// is the driver's `max_steps` (every length is below it).
    pub(crate) fn new(
        ids: &[u32],
        lens: &[usize],
        t_max: usize,
        stride: u32,
        device: &Device,
    ) -> Result<Self> {
        let (mut seq_of, mut pos_of, mut flat_of, mut row_ids) = (vec![], vec![], vec![], vec![]);
        for (b, (&id, &len)) in ids.iter().zip(lens).enumerate() {
            for j in 0..len as u32 {
                seq_of.push(b as u32);
                pos_of.push(j);
                flat_of.push((b * t_max) as u32 + j);
                row_ids.push(id * stride + j);
            }
        }
        let rows = seq_of.len();
        let mut scatter_back = vec![rows as u32; lens.len() * t_max];
        for (r, &f) in flat_of.iter().enumerate() {
            scatter_back[f as usize] = r as u32;
        }
        let n = scatter_back.len();
        Ok(Self {
            seq_of: Tensor::from_vec(seq_of, rows, device)?,
            pos_of: Tensor::from_vec(pos_of, rows, device)?,
            flat_of: Tensor::from_vec(flat_of, rows, device)?,
            scatter_back: Tensor::from_vec(scatter_back, n, device)?,
            row_ids,
        })
    }

    /// `[batch, T_max, ..]` -> the chain rows `[rows, ..]`.
    pub(crate) fn gather(&self, x: &Tensor) -> Result<Tensor> {
        let (b, t) = (x.dim(0)?, x.dim(1)?);
        let mut flat = vec![b * t];
        flat.extend_from_slice(&x.dims()[2..]);
        Ok(x.reshape(flat)?.index_select(&self.flat_of, 0)?)
    }

    /// Chain-row values `[rows]` back to `[batch, T_max]`, with `pad` past each length.
    pub(crate) fn scatter(&self, values: &Tensor, pad: &Tensor, batch: usize) -> Result<Tensor> {
        let t = self.scatter_back.dim(0)? / batch.max(1);
        Ok(Tensor::cat(&[values, pad], 0)?
            .index_select(&self.scatter_back, 0)?
            .reshape((batch, t))?)
    }
}

/// `[batch, t]` u8: 1 where the position is below the row's length (`lens`: `[batch]` u32).
pub(crate) fn valid_positions(lens: &Tensor, t: usize) -> Result<Tensor> {
    let pos = Tensor::arange(0u32, t as u32, lens.device())?.unsqueeze(0)?;
    Ok(pos.broadcast_lt(&lens.unsqueeze(1)?)?)
}

/// `[batch]` u32 lengths on `device`.
pub(crate) fn lens_tensor(lens: &[usize], device: &Device) -> Result<Tensor> {
    let host: Vec<u32> = lens.iter().map(|&n| n as u32).collect();
    Ok(Tensor::from_vec(host, lens.len(), device)?.to_dtype(DType::U32)?)
}
