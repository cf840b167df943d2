//! Helpers for the unit tests of the processors.

use candle_core::{Device, Tensor};

use crate::context::{History, SamplingContext};

pub(crate) fn t2(rows: &[&[f32]]) -> Tensor {
    let v = rows[0].len();
    let flat: Vec<f32> = rows.iter().flat_map(|r| r.iter().copied()).collect();
    Tensor::from_vec(flat, (rows.len(), v), &Device::Cpu).unwrap()
}

pub(crate) fn rows(t: &Tensor) -> Vec<Vec<f32>> {
    t.to_vec2::<f32>().unwrap()
}

pub(crate) fn ctx() -> SamplingContext {
    SamplingContext::new(0)
}

pub(crate) fn ctx_with_history(h: &[Vec<i64>]) -> SamplingContext {
    SamplingContext::new(0).with_history(History::from_padded_rows(h, &Device::Cpu).unwrap())
}

pub(crate) fn assert_close(got: &[Vec<f32>], want: &[Vec<f32>]) {
    assert_eq!(got.len(), want.len());
    for (g, w) in got.iter().zip(want) {
        assert_eq!(g.len(), w.len());
        for (a, b) in g.iter().zip(w) {
            if b.is_infinite() {
                assert_eq!(a, b, "got {g:?}, want {w:?}");
            } else {
                assert!(
                    (a - b).abs() <= 1e-5 * b.abs().max(1.0),
                    "got {g:?}, want {w:?}"
                );
            }
        }
    }
}
