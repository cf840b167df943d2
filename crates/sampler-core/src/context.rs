//! The sampling context: what a processor may know about the rows besides their logits.
//!
//! Histories live on the device as a `[rows, capacity]` u32 buffer plus a `[rows]` u32 length
//! tensor. Appending sampled tokens writes into that buffer in place (a scatter at each row's
//! length), so a decoding loop never re-uploads its history.

use candle_core::{DType, Device, Tensor};

use crate::error::{Result, SamplerError};

/// Per-row token histories on the device.
#[derive(Clone, Debug)]
pub struct History {
    /// `[token_rows, capacity]` u32; entries at or past a row's length are unspecified.
    tokens: Tensor,
    /// `[rows]` u32: the number of valid tokens of each row.
    lens: Tensor,
    /// A host-side upper bound of every row's length: processors look at `tokens[:, ..width]`.
    width: usize,
    /// `[rows]` u32: the token row each row reads (several rows may share one); `None` = row r
    /// reads token row r.
    row_map: Option<Tensor>,
}

impl History {
    /// A history from a `[rows, width]` u32/i64 token tensor and a `[rows]` length tensor.
    pub fn new(tokens: &Tensor, lens: &Tensor) -> Result<Self> {
        let (rows, width) = tokens.dims2().map_err(|_| {
            SamplerError::Shape(format!(
                "history must be [rows, H], got {:?}",
                tokens.dims()
            ))
        })?;
        if lens.dims() != [rows] {
            return Err(SamplerError::Shape(format!(
                "history lengths must be [{rows}], got {:?}",
                lens.dims()
            )));
        }
        Ok(Self {
            tokens: tokens.to_dtype(DType::U32)?.contiguous()?,
            lens: lens
                .to_dtype(DType::U32)?
                .to_device(tokens.device())?
                .contiguous()?,
            width,
            row_map: None,
        })
    }

    /// Histories that share token rows: row r reads the first `lens[r]` tokens of token row
    /// `row_map[r]` of `tokens` (`[token_rows, W]`). Nothing is copied per row.
    pub fn with_row_map(tokens: &Tensor, lens: &Tensor, row_map: &Tensor) -> Result<Self> {
        let (token_rows, width) = tokens.dims2().map_err(|_| {
            SamplerError::Shape(format!(
                "history tokens must be [rows, H], got {:?}",
                tokens.dims()
            ))
        })?;
        let rows = row_map.dims1().map_err(|_| {
            SamplerError::Shape(format!("row map must be [rows], got {:?}", row_map.dims()))
        })?;
        if lens.dims() != [rows] {
            return Err(SamplerError::Shape(format!(
                "history lengths must be [{rows}], got {:?}",
                lens.dims()
            )));
        }
        let dev = tokens.device();
        let map = row_map.to_dtype(DType::U32)?.to_device(dev)?.contiguous()?;
        if rows > 0 && token_rows == 0 {
            return Err(SamplerError::Shape("row map into an empty history".into()));
        }
        Ok(Self {
            tokens: tokens.to_dtype(DType::U32)?.contiguous()?,
            lens: lens.to_dtype(DType::U32)?.to_device(dev)?.contiguous()?,
            width,
            row_map: Some(map),
        })
    }

    /// An empty history with room for `capacity` tokens per row.
    pub fn empty(rows: usize, capacity: usize, device: &Device) -> Result<Self> {
        Ok(Self {
            tokens: Tensor::zeros((rows, capacity.max(1)), DType::U32, device)?,
            lens: Tensor::zeros(rows, DType::U32, device)?,
            width: 0,
            row_map: None,
        })
    }

    /// A history from host rows of token ids, each row right-padded with negative values (the
    /// CLI's `-1` padding). A non-negative id after padding is an error.
    pub fn from_padded_rows(rows: &[Vec<i64>], device: &Device) -> Result<Self> {
        let width = rows.iter().map(|r| r.len()).max().unwrap_or(0);
        let mut flat = Vec::with_capacity(rows.len() * width.max(1));
        let mut lens = Vec::with_capacity(rows.len());
        for (r, row) in rows.iter().enumerate() {
            let len = row.iter().take_while(|&&t| t >= 0).count();
            if let Some(bad) = row[len..].iter().find(|&&t| t >= 0) {
                return Err(SamplerError::Shape(format!(
                    "history row {r}: token {bad} follows padding (-1 may only pad on the right)"
                )));
            }
            if let Some(&bad) = row[..len].iter().find(|&&t| t > u32::MAX as i64) {
                return Err(SamplerError::TokenOutOfRange {
                    what: "history",
                    id: bad,
                    vocab: u32::MAX as usize,
                });
            }
            flat.extend(row[..len].iter().map(|&t| t as u32));
            flat.extend(std::iter::repeat_n(0u32, width.max(1) - len));
            lens.push(len as u32);
        }
        let n = rows.len();
        let tokens = Tensor::from_vec(flat, (n, width.max(1)), device)?;
        let lens = Tensor::from_vec(lens, n, device)?;
        let max_len = rows
            .iter()
            .map(|r| r.iter().take_while(|&&t| t >= 0).count())
            .max()
            .unwrap_or(0);
        Ok(Self {
            tokens,
            lens,
            width: max_len,
            row_map: None,
        })
    }

    /// The NAR history of one RVQ level: for codes `[batch, T]` of the previous level, row
    /// `b * T + j` sees `codes[b, 0..j)`, so its distance to position i is `j - i`. The rows
    /// share the codes (no `T x T` copy).
    pub fn nar_from_previous_level(codes: &Tensor) -> Result<Self> {
        let (b, t) = codes.dims2().map_err(|_| {
            SamplerError::Shape(format!(
                "NAR history must be [batch, T], got {:?}",
                codes.dims()
            ))
        })?;
        let dev = codes.device();
        let lens = Tensor::arange(0u32, t as u32, dev)?
            .unsqueeze(0)?
            .broadcast_as((b, t))?
            .reshape(b * t)?;
        let map = Tensor::arange(0u32, b as u32, dev)?
            .unsqueeze(1)?
            .broadcast_as((b, t))?
            .reshape(b * t)?;
        Self::with_row_map(codes, &lens, &map)
    }

    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.lens.dim(0).unwrap_or(0)
    }

    /// The `[rows, width]` u32 tokens that may be valid: a view of the buffer, or, for rows
    /// that share token rows, a gathered copy.
    pub fn tokens(&self) -> Result<Tensor> {
        let t = self.tokens.narrow(1, 0, self.width)?;
        match &self.row_map {
            None => Ok(t),
            Some(m) => Ok(t.contiguous()?.index_select(m, 0)?),
        }
    }

    /// The token buffer `[token_rows, capacity]` and the row map, as the fused ops read them.
    pub(crate) fn buffer(&self) -> (&Tensor, Option<&Tensor>) {
        (&self.tokens, self.row_map.as_ref())
    }

    /// After a fused step appended one token per running row in place: the new lengths.
    pub(crate) fn appended(&mut self, lens: Tensor) {
        self.lens = lens;
        self.width += 1;
    }

    /// Makes room for one more token per row (capacity doubles when full). Returns whether
    /// the rows own their token buffer (no row map), which appending needs.
    pub(crate) fn reserve_one(&mut self) -> Result<()> {
        if self.row_map.is_some() {
            return Err(SamplerError::Shape(
                "histories that share token rows cannot grow".into(),
            ));
        }
        let rows = self.rows();
        let capacity = self.tokens.dim(1)?;
        if self.width + 1 > capacity {
            let grown = Tensor::zeros(
                (rows, (capacity * 2).max(1)),
                DType::U32,
                self.tokens.device(),
            )?;
            grown.slice_set(&self.tokens, 1, 0)?;
            crate::diagnostics::count_ops(2);
            self.tokens = grown;
        }
        Ok(())
    }

    /// `[rows]` u32 lengths.
    pub fn lens(&self) -> &Tensor {
        &self.lens
    }

    /// Upper bound of the lengths, known on the host.
    pub fn width(&self) -> usize {
        self.width
    }

    /// Appends one token per row at each row's length. Rows whose `active` entry is 0 keep their
    /// length (the token is written past the end, where nothing reads it). Runs on the device.
    pub fn append(&mut self, tokens: &Tensor, active: Option<&Tensor>) -> Result<()> {
        let rows = self.rows();
        if tokens.dims() != [rows] {
            return Err(SamplerError::Shape(format!(
                "appended tokens must be [{rows}], got {:?}",
                tokens.dims()
            )));
        }
        self.reserve_one()?;
        let at = self.lens.unsqueeze(1)?;
        let src = tokens.to_dtype(DType::U32)?.unsqueeze(1)?.contiguous()?;
        self.tokens.scatter_set(&at, &src, 1)?;
        let step = match active {
            Some(a) => a.to_dtype(DType::U32)?,
            None => Tensor::ones(rows, DType::U32, self.tokens.device())?,
        };
        self.lens = (&self.lens + step)?;
        self.width += 1;
        Ok(())
    }
}

/// Everything a processor and the draw may read besides the logits.
#[derive(Clone, Debug)]
pub struct SamplingContext {
    seed: u64,
    step: u64,
    row_ids: Option<std::sync::Arc<[u32]>>,
    history: Option<History>,
    validate: bool,
    /// Classifier-free guidance: the unconditional logits of this step (`[rows, vocab]`).
    null_logits: Option<Tensor>,
    /// Entropix: attention scores `[layers, heads, q, k]` or `[rows, layers, heads, q, k]`.
    attentions: Option<Tensor>,
}

impl Default for SamplingContext {
    fn default() -> Self {
        Self::new(0)
    }
}

impl SamplingContext {
    /// A context with the given seed, step 0, row ids 0..rows, no history and validation on.
    pub fn new(seed: u64) -> Self {
        Self {
            seed,
            step: 0,
            row_ids: None,
            history: None,
            validate: true,
            null_logits: None,
            attentions: None,
        }
    }

    /// Sets the history.
    pub fn with_history(mut self, history: History) -> Self {
        self.history = Some(history);
        self
    }

    /// Sets explicit row ids (the Philox key of each row); by default row r has id r.
    pub fn with_row_ids(mut self, ids: Vec<u32>) -> Self {
        self.row_ids = Some(ids.into());
        self
    }

    /// Sets the step counter (part of the Philox counter).
    pub fn with_step(mut self, step: u64) -> Self {
        self.step = step;
        self
    }

    /// Turns input validation (NaN / +inf / all -inf rows, history ids) on or off. It is on by
    /// default; it reads a few scalars back to the host each step, so a hot loop that trusts
    /// its model may turn it off.
    pub fn with_validation(mut self, on: bool) -> Self {
        self.validate = on;
        self
    }

    /// Sets the unconditional ("null prompt") logits of this step, `[rows, vocab]`, for
    /// classifier-free guidance ([`crate::processors::ClassifierFreeGuidance`]).
    pub fn with_null_logits(mut self, null_logits: Tensor) -> Self {
        self.null_logits = Some(null_logits);
        self
    }

    /// Sets this step's attention scores (pre-softmax), `[layers, heads, q, k]` shared by every
    /// row or `[rows, layers, heads, q, k]`, for entropix ([`crate::processors::Entropix`]).
    pub fn with_attentions(mut self, attentions: Tensor) -> Self {
        self.attentions = Some(attentions);
        self
    }

    /// The unconditional logits of this step, if set.
    pub fn null_logits(&self) -> Option<&Tensor> {
        self.null_logits.as_ref()
    }

    /// The attention scores of this step, if set.
    pub fn attentions(&self) -> Option<&Tensor> {
        self.attentions.as_ref()
    }

    /// The Philox key.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// The step counter (part of the Philox counter).
    pub fn step(&self) -> u64 {
        self.step
    }

    /// Whether the checks that read the device from the host run.
    pub fn validate(&self) -> bool {
        self.validate
    }

    /// The histories, if any.
    pub fn history(&self) -> Option<&History> {
        self.history.as_ref()
    }

    /// The histories, mutable.
    pub fn history_mut(&mut self) -> Option<&mut History> {
        self.history.as_mut()
    }

    /// The Philox row id of every row.
    pub fn row_ids(&self, rows: usize) -> Result<Vec<u32>> {
        match &self.row_ids {
            None => Ok((0..rows as u32).collect()),
            Some(ids) if ids.len() == rows => Ok(ids.to_vec()),
            Some(ids) => Err(SamplerError::Shape(format!(
                "{} row ids for {rows} rows",
                ids.len()
            ))),
        }
    }

    /// The explicit row ids, shared (their device copy is cached by the sampler).
    pub(crate) fn row_ids_shared(&self) -> Option<&std::sync::Arc<[u32]>> {
        self.row_ids.as_ref()
    }

    /// Advances the step counter only (the history was appended to in place).
    pub(crate) fn advance_step(&mut self) {
        self.step += 1;
    }

    /// Appends the sampled tokens to the history (if any) and advances the step.
    pub fn advance(&mut self, tokens: &Tensor, active: Option<&Tensor>) -> Result<()> {
        if let Some(h) = self.history.as_mut() {
            h.append(tokens, active)?;
        }
        self.step += 1;
        Ok(())
    }

    /// Checks that the history, if any, has `rows` rows.
    pub(crate) fn check_rows(&self, rows: usize) -> Result<()> {
        if let Some(h) = &self.history {
            if h.rows() != rows {
                return Err(SamplerError::Shape(format!(
                    "history has {} rows but the logits have {rows}",
                    h.rows()
                )));
            }
        }
        self.row_ids(rows).map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn append_grows_each_row_at_its_length() -> Result<()> {
        let dev = Device::Cpu;
        let mut h = History::from_padded_rows(&[vec![5, 6, -1], vec![7, -1, -1]], &dev)?;
        assert_eq!(h.width(), 2);
        let active = Tensor::new(&[1u8, 0], &dev)?;
        h.append(&Tensor::new(&[1u32, 2], &dev)?, Some(&active))?;
        h.append(&Tensor::new(&[3u32, 4], &dev)?, None)?;
        assert_eq!(h.lens().to_vec1::<u32>()?, vec![4, 2]);
        let t = h.tokens()?.to_vec2::<u32>()?;
        assert_eq!(&t[0][..4], &[5, 6, 1, 3]);
        assert_eq!(&t[1][..2], &[7, 4]);
        Ok(())
    }

    #[test]
    fn padding_must_be_on_the_right() {
        let err = History::from_padded_rows(&[vec![1, -1, 2]], &Device::Cpu).unwrap_err();
        assert!(err.to_string().contains("follows padding"), "{err}");
    }

    #[test]
    fn nar_history_rows_see_earlier_positions() -> Result<()> {
        let codes = Tensor::new(&[[4u32, 5, 6]], &Device::Cpu)?;
        let h = History::nar_from_previous_level(&codes)?;
        assert_eq!(h.lens().to_vec1::<u32>()?, vec![0, 1, 2]);
        assert_eq!(h.tokens()?.to_vec2::<u32>()?[2], vec![4, 5, 6]);
        Ok(())
    }
}
