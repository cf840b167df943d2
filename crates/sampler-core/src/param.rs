//! Per-row parameters: every knob that takes a scalar also takes a `[rows]` tensor, so one
//! batch can mix requests with different settings.

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

impl From<&Tensor> for RowParam {
    fn from(t: &Tensor) -> Self {
        RowParam::PerRow(t.clone())
    }
}

impl RowParam {
    /// The parameter as a `[rows, 1]` tensor of `dtype` on `device`.
    pub fn column_as(&self, rows: usize, device: &Device, dtype: DType) -> Result<Tensor> {
        match self {
            RowParam::Scalar(v) => Ok(Tensor::full(*v, (rows, 1), device)?.to_dtype(dtype)?),
            RowParam::PerRow(t) => {
                if t.dims() != [rows] {
                    return Err(SamplerError::Shape(format!(
                        "per-row parameter has shape {:?}, expected [{rows}]",
                        t.dims()
                    )));
                }
                Ok(t.to_device(device)?.to_dtype(dtype)?.reshape((rows, 1))?)
            }
        }
    }

    /// The parameter as a `[rows, 1]` f32 tensor on `device`, ready to broadcast over a
    /// vocabulary.
    pub fn column(&self, rows: usize, device: &Device) -> Result<Tensor> {
        self.column_as(rows, device, DType::F32)
    }

    /// The host values, for one-time validation when the parameter is set (never in a step).
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

    /// Whether every row's value is known (a scalar) to satisfy `pred`: the test of an "off"
    /// value, for which a processor is left out of the chain.
    pub fn is_scalar_and(&self, pred: impl Fn(f32) -> bool) -> bool {
        self.scalar().is_some_and(pred)
    }

    /// The number of rows of a per-row parameter.
    pub fn rows(&self) -> Option<usize> {
        match self {
            RowParam::Scalar(_) => None,
            RowParam::PerRow(t) => t.dims().first().copied(),
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

/// Range checks shared by the processors' constructors.
pub(crate) mod range {
    /// A finite value.
    pub fn finite(v: f32) -> bool {
        v.is_finite()
    }
    /// A finite value >= 0.
    pub fn non_negative(v: f32) -> bool {
        v >= 0.0 && v.is_finite()
    }
    /// A value in [0, 1].
    pub fn unit(v: f32) -> bool {
        (0.0..=1.0).contains(&v)
    }
    /// A whole number >= 0.
    pub fn count(v: f32) -> bool {
        v >= 0.0 && v.is_finite() && v.fract() == 0.0
    }
    /// A whole number (any sign).
    pub fn integer(v: f32) -> bool {
        v.is_finite() && v.fract() == 0.0
    }
}
