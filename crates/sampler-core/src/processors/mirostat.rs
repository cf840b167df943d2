//! Mirostat (Basu et al. 2021, "Mirostat: a neural text decoding algorithm that directly
//! controls perplexity"; the update rules as llama.cpp implements them): a selector that
//! truncates each row's distribution so that the surprise `-log2 p` of the drawn tokens stays
//! near a target `tau` (bits), then draws.
//!
//! Per row the state is `mu`, initialised to `2 tau`, kept on the device as a `[rows]` f32
//! tensor. After each draw, with `p` the drawn token's probability under the truncated
//! distribution: `mu -= eta * (-log2 p - tau)`. On the fused path the update happens in the
//! same call as the draw.
//!
//! - v2: keep the tokens whose surprise `-log2 p` is at most `mu` (the most probable token is
//!   always kept).
//! - v1: estimate the Zipf exponent `s` of the row from its `m = 100` most probable tokens
//!   (least squares through the origin: `s = sum t_i b_i / sum t_i^2`, `t_i = ln((i+2)/(i+1))`,
//!   `b_i = ln(p_i / p_{i+1})`, over `i < min(m - 1, n - 1)` with `n` the finite tokens, so a
//!   vocabulary smaller than m works), then keep the top
//!   `k = ((eps 2^mu) / (1 - N^-eps))^(1/s)` tokens, `eps = s - 1`, `N` the vocabulary size,
//!   k clamped to [1, N] (ties at the k-th value kept, as top-k does). As `eps -> 0` the factor
//!   `eps / (1 - N^-eps)` tends to `1 / ln N`, which is used for `|eps| < 1e-4`.
//!
//! Surprises, the fit and k are f64. Greedy rows (temperature <= 0) take the argmax of the
//! truncated row and still update mu.
//!
//! Parameters: `mirostat` (1 or 2), `mirostat_tau` (>= 0; default 5), `mirostat_eta` (>= 0;
//! default 0.1).

use candle_core::{DType, Tensor, D};
use sampler_kernels::spec::{row, StageOp};

use crate::config::{Knob, MirostatVersion};
use crate::context::SamplingContext;
use crate::draw::{draw, Drawn};
use crate::error::{invalid, Result, SamplerError};
use crate::param::{range, RowParam};
use crate::processor::Selector;
use crate::sort_ops::{sorted_head, MAX_HEAD};
use crate::stage::{Sink, Slot, Stage};
use crate::tensor_ops::{count, decision_dtype, finite, keep_only, kth_largest, log_softmax};

/// The number of top tokens mirostat v1 fits its Zipf exponent on.
pub const MIROSTAT_M: usize = 100;

const LN_2: f64 = std::f64::consts::LN_2;

/// Mirostat's parameters.
#[derive(Clone, Debug)]
pub struct MirostatParams {
    /// v1 or v2 (`Off` is not a selector).
    pub version: MirostatVersion,
    /// Target surprise in bits, >= 0.
    pub tau: RowParam,
    /// Learning rate, >= 0.
    pub eta: RowParam,
    /// v1's number of fitted tokens (2..=256).
    pub m: usize,
    /// 1 = greedy rows.
    pub greedy: RowParam,
}

impl Default for MirostatParams {
    fn default() -> Self {
        Self {
            version: MirostatVersion::V2,
            tau: Knob::MirostatTau.default_value().into(),
            eta: Knob::MirostatEta.default_value().into(),
            m: MIROSTAT_M,
            greedy: 0.0.into(),
        }
    }
}

/// The mirostat selector.
#[derive(Clone, Debug)]
pub struct Mirostat {
    params: MirostatParams,
    /// `[rows]` f32; empty until the first draw (every row then starts at 2 tau).
    mu: Slot<Tensor>,
}

impl Mirostat {
    /// Validates the parameters.
    pub fn new(params: MirostatParams) -> Result<Self> {
        if params.version == MirostatVersion::Off {
            return Err(invalid("mirostat", "the selector needs version 1 or 2"));
        }
        params
            .tau
            .check("mirostat_tau", ">= 0 and finite", range::non_negative)?;
        params
            .eta
            .check("mirostat_eta", ">= 0 and finite", range::non_negative)?;
        if !(2..=MAX_HEAD).contains(&params.m) {
            return Err(invalid(
                "mirostat m",
                format!("{} is not in [2, {MAX_HEAD}]", params.m),
            ));
        }
        Ok(Self {
            params,
            mu: Slot::default(),
        })
    }

    /// Mirostat v1 with `tau` and `eta`.
    pub fn v1(tau: impl Into<RowParam>, eta: impl Into<RowParam>) -> Result<Self> {
        Self::new(MirostatParams {
            version: MirostatVersion::V1,
            tau: tau.into(),
            eta: eta.into(),
            ..Default::default()
        })
    }

    /// Mirostat v2 with `tau` and `eta`.
    pub fn v2(tau: impl Into<RowParam>, eta: impl Into<RowParam>) -> Result<Self> {
        Self::new(MirostatParams {
            version: MirostatVersion::V2,
            tau: tau.into(),
            eta: eta.into(),
            ..Default::default()
        })
    }

    /// The version.
    pub fn version(&self) -> MirostatVersion {
        self.params.version
    }

    /// The `[rows]` f32 state on `device` (2 tau before the first draw).
    pub fn mu(&self, rows: usize, device: &candle_core::Device) -> Result<Tensor> {
        Ok(self.mu_column(rows, device)?.squeeze(1)?)
    }

    /// Replaces the state (`[rows]`, any float dtype).
    pub fn set_mu(&mut self, mu: &Tensor) -> Result<()> {
        if mu.rank() != 1 {
            return Err(SamplerError::Shape(format!(
                "mirostat mu must be [rows], got {:?}",
                mu.dims()
            )));
        }
        self.mu.set(Some(mu.to_dtype(DType::F32)?.contiguous()?));
        Ok(())
    }

    fn initial(&self, rows: usize, device: &candle_core::Device) -> Result<Tensor> {
        Ok((self.params.tau.column(rows, device)? * 2.0)?)
    }

    fn mu_column(&self, rows: usize, device: &candle_core::Device) -> Result<Tensor> {
        match self.mu.get() {
            None => self.initial(rows, device),
            Some(mu) if mu.dims() == [rows] => Ok(mu.to_device(device)?.reshape((rows, 1))?),
            Some(mu) => Err(SamplerError::Shape(format!(
                "mirostat holds state for {} rows but the logits have {rows}; reset it first",
                mu.dim(0)?
            ))),
        }
    }

    /// The per-row k of v1, `[rows, 1]` f32 in [1, vocab].
    fn v1_k(&self, logits: &Tensor, mu: &Tensor) -> Result<Tensor> {
        let vocab = logits.dim(1)?;
        let dev = logits.device();
        let dt = decision_dtype(dev);
        let fit = self.params.m;
        let m = fit.min(vocab);
        let head = sorted_head(logits, m, true)?.to_dtype(dt)?;
        let n_terms = count(&finite(logits)?)?
            .affine(1.0, -1.0)?
            .minimum((fit - 1) as f32)?
            .to_dtype(dt)?;
        let i = Tensor::arange(0u32, (m - 1) as u32, dev)?
            .to_dtype(dt)?
            .unsqueeze(0)?;
        let t = ((i.affine(1.0, 2.0)? / i.affine(1.0, 1.0)?)?).log()?;
        let b = (head.narrow(1, 0, m - 1)? - head.narrow(1, 1, m - 1)?)?;
        let used = i.broadcast_lt(&n_terms)?;
        let zero = b.zeros_like()?;
        let t = used.where_cond(&t.broadcast_as(b.shape())?, &zero)?;
        let b = used.where_cond(&b, &zero)?;
        let s_hat = ((&t * &b)?.sum_keepdim(D::Minus1)? / t.sqr()?.sum_keepdim(D::Minus1)?)?;
        // One finite token: nothing to fit, and nothing to truncate either.
        let s_hat = n_terms.ge(1f64)?.where_cond(&s_hat, &s_hat.ones_like()?)?;
        let eps = s_hat.affine(1.0, -1.0)?;
        let ln_n = (vocab as f64).ln();
        let ratio = (&eps / eps.affine(-ln_n, 0.0)?.exp()?.affine(-1.0, 1.0)?)?;
        let g = eps
            .abs()?
            .lt(1e-4f64)?
            .where_cond(&eps.ones_like()?.affine(1.0 / ln_n, 0.0)?, &ratio)?;
        let ln_k = ((g.log()? + (mu.to_dtype(dt)? * LN_2)?)? / &s_hat)?;
        let k = ln_k.exp()?;
        // 0/0 and inf/inf (a flat row) leave NaN: keep the whole row then.
        let k = k
            .ne(&k)?
            .where_cond(&k.ones_like()?.affine(vocab as f64, 0.0)?, &k)?;
        Ok(k.clamp(1f64, vocab as f64)?.floor()?.to_dtype(DType::F32)?)
    }
}

impl Selector for Mirostat {
    fn name(&self) -> &'static str {
        match self.params.version {
            MirostatVersion::V1 => "mirostat_v1",
            _ => "mirostat_v2",
        }
    }

    fn distribution(&self, logits: &Tensor, _ctx: &SamplingContext) -> Result<Tensor> {
        let (rows, vocab) = logits.dims2()?;
        let mu = self.mu_column(rows, logits.device())?;
        match self.params.version {
            MirostatVersion::V1 => {
                if vocab < 2 {
                    return Ok(logits.clone());
                }
                let k = self.v1_k(logits, &mu)?;
                keep_only(logits, &logits.broadcast_ge(&kth_largest(logits, &k)?)?)
            }
            _ => {
                let dt = decision_dtype(logits.device());
                let surprise = (log_softmax(&logits.to_dtype(dt)?)? * (-1.0 / LN_2))?;
                let top = logits.broadcast_eq(&logits.max_keepdim(D::Minus1)?)?;
                let keep = (surprise.broadcast_le(&mu.to_dtype(dt)?)? + top)?.gt(0u8)?;
                keep_only(logits, &keep)
            }
        }
    }

    fn select(&mut self, logits: &Tensor, ctx: &SamplingContext) -> Result<Drawn> {
        let truncated = self.distribution(logits, ctx)?;
        let d = draw(&truncated, &self.params.greedy, ctx)?;
        let rows = d.probs.dim(0)?;
        let dev = d.probs.device();
        let mu = self.mu_column(rows, dev)?.squeeze(1)?;
        let surprise = (d.logprobs.to_dtype(DType::F64)? * (-1.0 / LN_2))?;
        let tau = self
            .params
            .tau
            .column_as(rows, dev, DType::F64)?
            .squeeze(1)?;
        let eta = self
            .params
            .eta
            .column_as(rows, dev, DType::F64)?
            .squeeze(1)?;
        let mu = (mu.to_dtype(DType::F64)? - ((surprise - tau)? * eta)?)?;
        self.mu.set(Some(mu.to_dtype(DType::F32)?));
        Ok(d)
    }

    fn stage(&self) -> Option<Stage> {
        let (tau, eta, greedy) = (
            self.params.tau.clone(),
            self.params.eta.clone(),
            self.params.greedy.clone(),
        );
        let op = match self.params.version {
            MirostatVersion::V1 => {
                StageOp::MirostatV1(row::MirostatV1 { tau, eta, greedy }, self.params.m as u32)
            }
            _ => StageOp::MirostatV2(row::MirostatV2 { tau, eta, greedy }),
        };
        Some(Stage::with_sink(op, Sink::State(self.mu.share())))
    }

    fn reset(&mut self) {
        self.mu.set(None);
    }

    fn reset_rows(&mut self, mask: &Tensor) -> Result<()> {
        let Some(mu) = self.mu.get() else {
            return Ok(());
        };
        let rows = mu.dim(0)?;
        if mask.dims() != [rows] {
            return Err(SamplerError::Shape(format!(
                "reset mask must be [{rows}], got {:?}",
                mask.dims()
            )));
        }
        let initial = self.initial(rows, mu.device())?.squeeze(1)?;
        let mask = mask.to_device(mu.device())?.to_dtype(DType::U8)?;
        self.mu.set(Some(mask.where_cond(&initial, &mu)?));
        Ok(())
    }
}

impl Mirostat {
    /// Sets the per-row greedy rule (1 = the argmax of the truncated row).
    pub fn with_greedy(mut self, greedy: RowParam) -> Self {
        self.params.greedy = greedy;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::processor::Chain;
    use crate::sampler::Sampler;
    use crate::test_util::{ctx, rows, t2};
    use candle_core::Device;

    const NINF: f32 = f32::NEG_INFINITY;

    fn zipf(v: usize, s: f32) -> Vec<f32> {
        (0..v).map(|i| -s * ((i + 1) as f32).ln()).collect()
    }

    fn kept(y: &Tensor) -> Vec<usize> {
        rows(y)
            .iter()
            .map(|r| r.iter().filter(|v| v.is_finite()).count())
            .collect()
    }

    #[test]
    fn v2_keeps_tokens_within_mu_bits() -> Result<()> {
        // Surprises 1, 2, 3, 3 bits. tau 1.1 -> mu 2.2 keeps two; tau 1.6 -> mu 3.2 keeps all;
        // tau 0.25 -> mu 0.5 keeps only the most probable.
        let l: Vec<f32> = [0.5f32, 0.25, 0.125, 0.125]
            .iter()
            .map(|p| p.ln())
            .collect();
        let x = t2(&[&l]);
        let k = |tau: f32| {
            kept(
                &Mirostat::v2(tau, 0.1)
                    .unwrap()
                    .distribution(&x, &ctx())
                    .unwrap(),
            )
        };
        assert_eq!(k(1.1), vec![2]);
        assert_eq!(k(1.6), vec![4]);
        let y = Mirostat::v2(0.25, 0.1)?.distribution(&x, &ctx())?;
        assert_eq!(rows(&y)[0][1..], [NINF, NINF, NINF]);
        Ok(())
    }

    #[test]
    fn select_moves_mu_against_the_surprise_error() -> Result<()> {
        let dev = Device::Cpu;
        // Two rows whose only finite tokens have probability 1 (0 bits, below tau = 2).
        let x = t2(&[&[0.0, NINF], &[NINF, 0.0]]);
        let mut m = Mirostat::v2(2.0, 0.5)?;
        m.select(&x, &ctx())?;
        // mu = 4 - 0.5 * (0 - 2) = 5.
        assert_eq!(m.mu(2, &dev)?.to_vec1::<f32>()?, vec![5.0, 5.0]);
        m.reset_rows(&Tensor::new(&[0u8, 1], &dev)?)?;
        assert_eq!(m.mu(2, &dev)?.to_vec1::<f32>()?, vec![5.0, 4.0]);
        m.reset();
        assert_eq!(m.mu(3, &dev)?.to_vec1::<f32>()?, vec![4.0; 3]);
        // State for 2 rows does not silently apply to 3.
        m.select(&x, &ctx())?;
        let row: &[f32] = &[0.0, 1.0];
        assert!(m.distribution(&t2(&[row; 3]), &ctx()).is_err());
        Ok(())
    }

    #[test]
    fn v1_fits_the_zipf_exponent_and_handles_small_vocabularies() -> Result<()> {
        // Exact Zipf rows (s = 1.2): with mu = 2 tau, k = ((0.2 * 2^mu) / (1 - N^-0.2))^(1/1.2):
        // N = 1000, tau = 3: 10.65 -> 10; N = 20 (< m), tau = 3: 16.26 -> 16; tau = 2: 5.12 -> 5.
        let big = t2(&[&zipf(1000, 1.2)]);
        assert_eq!(
            kept(&Mirostat::v1(3.0, 0.1)?.distribution(&big, &ctx())?),
            vec![10]
        );
        let small = t2(&[&zipf(20, 1.2), &zipf(20, 1.2)]);
        let tau = Tensor::new(&[3f32, 2.0], &Device::Cpu)?;
        assert_eq!(
            kept(&Mirostat::v1(tau, 0.1)?.distribution(&small, &ctx())?),
            vec![16, 5]
        );
        let y = rows(&Mirostat::v1(3.0, 0.1)?.distribution(&big, &ctx())?);
        assert!(y[0][..10].iter().all(|v| v.is_finite()));
        Ok(())
    }

    #[test]
    fn v1_edge_rows_stay_valid() -> Result<()> {
        let x = t2(&[&[NINF, 2.0, NINF, NINF], &[1.0, 1.0, 1.0, 1.0]]);
        let y = Mirostat::v1(3.0, 0.1)?.distribution(&x, &ctx())?;
        assert_eq!(kept(&y)[0], 1);
        assert!(kept(&y)[1] >= 1);
        let one = t2(&[&[0.5]]);
        assert_eq!(
            rows(&Mirostat::v1(3.0, 0.1)?.distribution(&one, &ctx())?),
            vec![vec![0.5]]
        );
        Ok(())
    }

    /// The mean observed surprise of many draws from a fixed Zipf distribution settles at tau.
    fn converges(version: MirostatVersion, tau: f32) -> Result<()> {
        let rows_n = 8;
        let logits = t2(&vec![zipf(1000, 1.1).as_slice(); rows_n]);
        let selector = Mirostat::new(MirostatParams {
            version,
            tau: tau.into(),
            ..Default::default()
        })?;
        let mut sampler = Sampler::new(Chain::new(), Box::new(selector));
        let (steps, burn_in) = (400, 100);
        let mut total = 0.0;
        for step in 0..steps {
            let c = SamplingContext::new(1234).with_step(step);
            let d = sampler.sample(&logits, &c)?;
            if step >= burn_in {
                let p = d.probs.to_vec1::<f32>()?;
                total += p.iter().map(|p| -p.log2() as f64).sum::<f64>();
            }
        }
        let mean = total / ((steps - burn_in) as f64 * rows_n as f64);
        assert!(
            (mean - tau as f64).abs() < 0.25,
            "{version:?}: mean surprise {mean}, tau {tau}"
        );
        Ok(())
    }

    #[test]
    fn v2_mean_surprise_converges_to_tau() -> Result<()> {
        converges(MirostatVersion::V2, 3.0)
    }

    #[test]
    fn v1_mean_surprise_converges_to_tau() -> Result<()> {
        converges(MirostatVersion::V1, 3.0)
    }
}
