//! Mirostat (Basu et al. 2021, "Mirostat: a neural text decoding algorithm that directly
//! controls perplexity"; the update rules as llama.cpp implements them): a feedback loop that
//! truncates each row's distribution so that the surprise `-log2 p` of the drawn tokens stays
//! near a target `tau` (bits).
//!
//! Per row the state is `mu`, initialised to `2 tau`, kept on the device as a `[rows]` f32
//! tensor inside the processor. After each draw ([`LogitsProcessor::accept`]), with `p` the drawn
//! token's probability under the truncated distribution: `mu -= eta * (-log2 p - tau)`.
//!
//! - v2: keep the tokens whose surprise `-log2 p` is at most `mu` (the most probable token is
//!   always kept).
//! - v1: estimate the Zipf exponent `s` of the row from its `m = 100` most probable tokens
//!   (least squares through the origin: `s = sum t_i b_i / sum t_i^2`, `t_i = ln((i+2)/(i+1))`,
//!   `b_i = ln(p_i / p_{i+1})`, over `i < min(m - 1, n - 1)` with `n` the finite tokens, so a
//!   vocabulary smaller than m works), then keep the top
//!   `k = ((eps 2^mu) / (1 - N^-eps))^(1/s)` tokens, `eps = s - 1`, `N` the vocabulary size,
//!   k clamped to [1, N] (ties at the k-th value are kept, as top-k does). As `eps -> 0` the
//!   factor `eps / (1 - N^-eps)` tends to `1 / ln N`, which is used for `|eps| < 1e-4`.
//!
//! It is the last filter before the draw: the rows' distributions must be final when it
//! truncates them. Reset all rows with [`LogitsProcessor::reset`], some with
//! [`LogitsProcessor::reset_rows`].

use candle_core::{DType, Tensor, D};

use crate::context::SamplingContext;
use crate::draw::Drawn;
use crate::error::{invalid, Result, SamplerError};
use crate::param::RowParam;
use crate::processor::LogitsProcessor;
use crate::processors::typical_p::log_softmax;
use crate::sort_ops::{sorted_head, MAX_HEAD};
use crate::tensor_ops::{count, finite, keep_only, kth_largest};

/// The number of top tokens mirostat v1 fits its Zipf exponent on.
pub const MIROSTAT_M: usize = 100;

/// Which mirostat.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MirostatVersion {
    V1,
    V2,
}

#[derive(Clone, Debug)]
pub struct Mirostat {
    version: MirostatVersion,
    tau: RowParam,
    eta: RowParam,
    m: usize,
    /// `[rows]` f32; `None` until the first draw is accepted (every row then starts at 2 tau).
    mu: Option<Tensor>,
}

impl Mirostat {
    /// `tau` >= 0 (target surprise, bits), `eta` >= 0 (learning rate).
    pub fn new(
        version: MirostatVersion,
        tau: impl Into<RowParam>,
        eta: impl Into<RowParam>,
    ) -> Result<Self> {
        let (tau, eta) = (tau.into(), eta.into());
        tau.check("mirostat_tau", ">= 0 and finite", |v| {
            v >= 0.0 && v.is_finite()
        })?;
        eta.check("mirostat_eta", ">= 0 and finite", |v| {
            v >= 0.0 && v.is_finite()
        })?;
        Ok(Self {
            version,
            tau,
            eta,
            m: MIROSTAT_M,
            mu: None,
        })
    }

    pub fn v1(tau: impl Into<RowParam>, eta: impl Into<RowParam>) -> Result<Self> {
        Self::new(MirostatVersion::V1, tau, eta)
    }

    pub fn v2(tau: impl Into<RowParam>, eta: impl Into<RowParam>) -> Result<Self> {
        Self::new(MirostatVersion::V2, tau, eta)
    }

    /// v1's number of fitted tokens (2 ..= 256; default 100).
    pub fn with_m(mut self, m: usize) -> Result<Self> {
        if !(2..=MAX_HEAD).contains(&m) {
            return Err(invalid(
                "mirostat m",
                format!("{m} is not in [2, {MAX_HEAD}]"),
            ));
        }
        self.m = m;
        Ok(self)
    }

    pub fn version(&self) -> MirostatVersion {
        self.version
    }

    /// The `[rows]` f32 state on `device` (2 tau before the first accepted draw).
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
        self.mu = Some(mu.to_dtype(DType::F32)?);
        Ok(())
    }

    fn initial(&self, rows: usize, device: &candle_core::Device) -> Result<Tensor> {
        Ok((self.tau.column(rows, device)? * 2.0)?)
    }

    fn mu_column(&self, rows: usize, device: &candle_core::Device) -> Result<Tensor> {
        match &self.mu {
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
        let m = self.m.min(vocab);
        let head = sorted_head(logits, m, true)?;
        let n_terms = count(&finite(logits)?)?
            .affine(1.0, -1.0)?
            .minimum((self.m - 1) as f32)?;
        let i = Tensor::arange(0f32, (m - 1) as f32, dev)?.unsqueeze(0)?;
        let t = ((i.affine(1.0, 2.0)? / i.affine(1.0, 1.0)?)?).log()?;
        let b = (head.narrow(1, 0, m - 1)? - head.narrow(1, 1, m - 1)?)?;
        let used = i.broadcast_lt(&n_terms)?;
        let zero = b.zeros_like()?;
        let t = used.where_cond(&t.broadcast_as(b.shape())?, &zero)?;
        let b = used.where_cond(&b, &zero)?;
        let s_hat = ((&t * &b)?.sum_keepdim(D::Minus1)? / t.sqr()?.sum_keepdim(D::Minus1)?)?;
        // One finite token: nothing to fit, and nothing to truncate either.
        let s_hat = n_terms.ge(1f32)?.where_cond(&s_hat, &s_hat.ones_like()?)?;
        let eps = s_hat.affine(1.0, -1.0)?;
        let ln_n = (vocab as f64).ln();
        let ratio = (&eps / eps.affine(-ln_n, 0.0)?.exp()?.affine(-1.0, 1.0)?)?;
        let g = eps
            .abs()?
            .lt(1e-4f32)?
            .where_cond(&eps.ones_like()?.affine(1.0 / ln_n, 0.0)?, &ratio)?;
        let ln_k = ((g.log()? + (mu * std::f64::consts::LN_2)?)? / &s_hat)?;
        let k = ln_k.exp()?;
        // 0/0 and inf/inf (a flat row) leave NaN: keep the whole row then.
        let k = k
            .ne(&k)?
            .where_cond(&k.ones_like()?.affine(vocab as f64, 0.0)?, &k)?;
        Ok(k.clamp(1f32, vocab as f32)?.floor()?)
    }
}

impl LogitsProcessor for Mirostat {
    fn name(&self) -> &'static str {
        match self.version {
            MirostatVersion::V1 => "mirostat_v1",
            MirostatVersion::V2 => "mirostat_v2",
        }
    }

    fn apply(&self, logits: &Tensor, _ctx: &SamplingContext) -> Result<Tensor> {
        let (rows, vocab) = logits.dims2()?;
        let mu = self.mu_column(rows, logits.device())?;
        match self.version {
            MirostatVersion::V2 => {
                let surprise = (log_softmax(logits)? * (-1.0 / std::f64::consts::LN_2))?;
                let top = logits.broadcast_eq(&logits.max_keepdim(D::Minus1)?)?;
                let keep = (surprise.broadcast_le(&mu)? + top)?.gt(0u8)?;
                keep_only(logits, &keep)
            }
            MirostatVersion::V1 => {
                if vocab < 2 {
                    return Ok(logits.clone());
                }
                let k = self.v1_k(logits, &mu)?;
                keep_only(logits, &logits.broadcast_ge(&kth_largest(logits, &k)?)?)
            }
        }
    }

    fn accept(&mut self, drawn: &Drawn, _ctx: &SamplingContext) -> Result<()> {
        let rows = drawn.probs.dim(0)?;
        let dev = drawn.probs.device();
        let mu = self.mu_column(rows, dev)?;
        let surprise =
            (drawn.probs.to_dtype(DType::F32)?.log()? * (-1.0 / std::f64::consts::LN_2))?;
        let error = (surprise.reshape((rows, 1))? - self.tau.column(rows, dev)?)?;
        let mu = (mu - (error * self.eta.column(rows, dev)?)?)?;
        self.mu = Some(mu.squeeze(1)?);
        Ok(())
    }

    fn reset(&mut self) {
        self.mu = None;
    }

    fn reset_rows(&mut self, mask: &Tensor) -> Result<()> {
        let Some(mu) = &self.mu else { return Ok(()) };
        let rows = mu.dim(0)?;
        if mask.dims() != [rows] {
            return Err(SamplerError::Shape(format!(
                "reset mask must be [{rows}], got {:?}",
                mask.dims()
            )));
        }
        let initial = self.initial(rows, mu.device())?.squeeze(1)?;
        let mask = mask.to_device(mu.device())?.to_dtype(DType::U8)?;
        self.mu = Some(mask.where_cond(&initial, mu)?);
        Ok(())
    }

    fn as_any(&self) -> Option<&dyn std::any::Any> {
        Some(self)
    }

    fn as_any_mut(&mut self) -> Option<&mut dyn std::any::Any> {
        Some(self)
    }

    fn clone_box(&self) -> Box<dyn LogitsProcessor> {
        Box::new(self.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::draw::DrawRule;
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
        // Surprises 1, 2, 3, 3 bits. tau 1 -> mu 2 keeps two; tau 1.5 -> mu 3 keeps all;
        // tau 0.25 -> mu 0.5 keeps only the most probable.
        let l: Vec<f32> = [0.5f32, 0.25, 0.125, 0.125]
            .iter()
            .map(|p| p.ln())
            .collect();
        let x = t2(&[&l]);
        assert_eq!(kept(&Mirostat::v2(1.0, 0.1)?.apply(&x, &ctx())?), vec![2]);
        assert_eq!(kept(&Mirostat::v2(1.5, 0.1)?.apply(&x, &ctx())?), vec![4]);
        let y = Mirostat::v2(0.25, 0.1)?.apply(&x, &ctx())?;
        assert_eq!(rows(&y)[0][1..], [NINF, NINF, NINF]);
        Ok(())
    }

    #[test]
    fn accept_moves_mu_against_the_surprise_error() -> Result<()> {
        let mut m = Mirostat::v2(2.0, 0.5)?;
        let dev = Device::Cpu;
        // Drawn probabilities 1/16 (4 bits, above tau) and 1/2 (1 bit, below).
        let d = Drawn {
            tokens: Tensor::new(&[0u32, 1], &dev)?,
            probs: Tensor::new(&[0.0625f32, 0.5], &dev)?,
        };
        m.accept(&d, &ctx())?;
        // mu = 4 - 0.5 * (4 - 2) = 3 and 4 - 0.5 * (1 - 2) = 4.5.
        assert_eq!(m.mu(2, &dev)?.to_vec1::<f32>()?, vec![3.0, 4.5]);
        m.reset_rows(&Tensor::new(&[0u8, 1], &dev)?)?;
        assert_eq!(m.mu(2, &dev)?.to_vec1::<f32>()?, vec![3.0, 4.0]);
        m.reset();
        assert_eq!(m.mu(3, &dev)?.to_vec1::<f32>()?, vec![4.0; 3]);
        // State for 2 rows does not silently apply to 3.
        m.accept(&d, &ctx())?;
        let row: &[f32] = &[0.0, 1.0];
        assert!(m.apply(&t2(&[row; 3]), &ctx()).is_err());
        Ok(())
    }

    #[test]
    fn v1_fits_the_zipf_exponent_and_handles_small_vocabularies() -> Result<()> {
        // Exact Zipf rows (s = 1.2): the fit returns s, and with mu = 2 tau
        // k = ((0.2 * 2^mu) / (1 - N^-0.2))^(1 / 1.2):
        //   N = 1000, tau = 3: 10.65 -> 10 tokens; N = 20 (< m = 100), tau = 3: 16.26 -> 16;
        //   N = 20, tau = 2: 5.12 -> 5.
        let big = t2(&[&zipf(1000, 1.2)]);
        assert_eq!(
            kept(&Mirostat::v1(3.0, 0.1)?.apply(&big, &ctx())?),
            vec![10]
        );
        let small = t2(&[&zipf(20, 1.2), &zipf(20, 1.2)]);
        let tau = Tensor::new(&[3f32, 2.0], &Device::Cpu)?;
        assert_eq!(
            kept(&Mirostat::v1(tau, 0.1)?.apply(&small, &ctx())?),
            vec![16, 5]
        );
        // The kept tokens are the most probable ones.
        let y = rows(&Mirostat::v1(3.0, 0.1)?.apply(&big, &ctx())?);
        assert!(y[0][..10].iter().all(|v| v.is_finite()));
        Ok(())
    }

    #[test]
    fn v1_edge_rows_stay_valid() -> Result<()> {
        // One finite token, a flat row, and a vocabulary of 1.
        let x = t2(&[&[NINF, 2.0, NINF, NINF], &[1.0, 1.0, 1.0, 1.0]]);
        let y = Mirostat::v1(3.0, 0.1)?.apply(&x, &ctx())?;
        assert_eq!(kept(&y)[0], 1);
        assert!(kept(&y)[1] >= 1);
        let one = t2(&[&[0.5]]);
        assert_eq!(
            rows(&Mirostat::v1(3.0, 0.1)?.apply(&one, &ctx())?),
            vec![vec![0.5]]
        );
        Ok(())
    }

    /// The mean observed surprise of many draws from a fixed Zipf distribution settles at tau.
    fn converges(version: MirostatVersion, tau: f32) -> Result<()> {
        let rows_n = 8;
        let logits = t2(&vec![zipf(1000, 1.1).as_slice(); rows_n]);
        let chain = Chain::new().with(Mirostat::new(version, tau, 0.1)?);
        let mut sampler = Sampler::new(chain, DrawRule::Multinomial);
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
        // Tolerance 0.25 bits: the mean error over T steps is (mu_0 - mu_T) / (eta T).
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
