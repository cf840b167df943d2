//! Per-row parameters: every knob that takes a scalar also takes a `[rows]` tensor, so one
//! batch can mix requests with different settings (SPEC §3).

use candle_core::{DType, Device, Tensor};

use crate::error::{invalid, Result, SamplerError};

/// A parameter that is either one value for every row or one value per row.
#[derive(Clone, Debug)]
pub enum RowParam {
    /// The same value for every row.
    Scalar(f32),
    /// One value per row, a `[rows]` tensor (any float or integer dtype, any device).
    PerRow(Tensor),
}

impl From<f32> for RowParam {
    fn from(v: f32) -> Self {
        RowParam::Scalar(v)
    }
}

impl From<Tensor> for RowParam {
    fn from(t: Tensor) -> Self {
        RowParam::PerRow(t)
    }
}

impl RowParam {
    /// The parameter as a `[rows, 1]` f32 tensor on `device`, ready to broadcast over a vocabulary.
    pub fn column(&self, rows: usize, device: &Device) -> Result<Tensor> {
        match self {
            RowParam::Scalar(v) => Ok(Tensor::full(*v, (rows, 1), device)?),
            RowParam::PerRow(t) => {
                if t.dims() != [rows] {
                    return Err(SamplerError::Shape(format!(
                        "per-row parameter has shape {:?}, expected [{rows}]",
                        t.dims()
                    )));
                }
                Ok(t.to_device(device)?
                    .to_dtype(DType::F32)?
                    .reshape((rows, 1))?)
            }
        }
    }

    /// The host values, for one-time validation when the parameter is set (never inside a step).
    pub fn host_values(&self) -> Result<Vec<f32>> {
        match self {
            RowParam::Scalar(v) => Ok(vec![*v]),
            RowParam::PerRow(t) => {
                if t.rank() != 1 {
                    return Err(SamplerError::Shape(format!(
                        "per-row parameter must have rank 1, got shape {:?}",
                        t.dims()
                    )));
                }
                Ok(t.to_dtype(DType::F32)?.to_vec1::<f32>()?)
            }
        }
    }

    /// The scalar value, if this is a scalar.
    pub fn scalar(&self) -> Option<f32> {
        match self {
            RowParam::Scalar(v) => Some(*v),
            RowParam::PerRow(_) => None,
        }
    }

    /// Checks every value with `ok`; `what` describes the allowed range in the error.
    pub(crate) fn check(
        &self,
        name: &'static str,
        what: &str,
        ok: impl Fn(f32) -> bool,
    ) -> Result<()> {
        for v in self.host_values()? {
            if !ok(v) {
                return Err(invalid(name, format!("{v} is not {what}")));
            }
        }
        Ok(())
    }
}
