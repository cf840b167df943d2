//! A per-vocabulary cache for the small constant tensors a processor derives from its host
//! parameters (ban masks, bias rows, one-hot columns), so they are uploaded once, not per step.

use std::sync::Mutex;

use candle_core::{Device, DeviceLocation, Tensor};

use crate::error::Result;

#[derive(Debug, Default)]
pub(crate) struct VocabCache(Mutex<Option<(usize, DeviceLocation, Tensor)>>);

impl Clone for VocabCache {
    fn clone(&self) -> Self {
        Self::default()
    }
}

impl VocabCache {
    pub(crate) fn get(
        &self,
        vocab: usize,
        device: &Device,
        make: impl FnOnce() -> Result<Tensor>,
    ) -> Result<Tensor> {
        let mut slot = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((v, loc, t)) = slot.as_ref() {
            if *v == vocab && *loc == device.location() {
                return Ok(t.clone());
            }
        }
        let t = make()?;
        *slot = Some((vocab, device.location(), t.clone()));
        Ok(t)
    }
}

/// A `[1, vocab]` u8 row with 1 at each id (ids are checked against the vocabulary).
pub(crate) fn one_hot_row(
    ids: &[u32],
    vocab: usize,
    what: &'static str,
    device: &Device,
) -> Result<Tensor> {
    let mut row = vec![0u8; vocab];
    for &id in ids {
        if id as usize >= vocab {
            return Err(crate::SamplerError::TokenOutOfRange {
                what,
                id: id as i64,
                vocab,
            });
        }
        row[id as usize] = 1;
    }
    Ok(Tensor::from_vec(row, (1, vocab), device)?)
}
