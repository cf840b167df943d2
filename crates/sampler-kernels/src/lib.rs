//! # sampler-kernels
//!
//! Fused sampling ops for candle, each one candle custom op with a CPU, a CUDA and a Metal
//! implementation. They compute exactly what sampler-core's plain tensor chain computes for the
//! same segment (SPEC §4-§6), in one pass over each row instead of dozens of tensor ops:
//!
//! - [`fused_filter`]: min-p -> top-k -> top-p -> temperature (dynamic or plain) -> top-n-sigma;
//! - [`fused_sample`]: the same segment plus the draw (greedy or Philox inverse CDF);
//! - [`fused_penalties`]: repetition (divide or sign-aware), frequency / presence, length
//!   penalty on the stop token, then an additive vocabulary bias (bans are -inf entries).
//!
//! Per-row parameters travel as one small `[rows, 8]` f32 tensor whose columns are named in
//! [`filter_param`] and [`penalty_param`]; a parameter at its "off" value (min-p 0, top-k <= 0,
//! top-p >= 1, top-n-sigma <= 0, repetition 1 with decay 0, ...) leaves the row unchanged.
//!
//! ## Inputs
//! Logits, parameters and biases are f32; token ids, lengths and row ids u32 (callers convert
//! first). The public functions make their inputs contiguous (a no-op for contiguous tensors;
//! a copy for views such as a narrowed history), so the custom ops only ever see contiguous
//! layouts, possibly with a start offset. They return an error on a wrong dtype or shape, on
//! NaN or +inf logits (CPU), on token ids >= vocab and on lengths above the history width.
//!
//! ## Plumbing
//! `fused_filter` is a `CustomOp2` (logits, params); `fused_sample` a `CustomOp3`
//! (logits, params, row ids) with seed and step in the op; `fused_penalties` a `CustomOp3`
//! (logits, tokens, lens) whose op struct also carries the parameter tensor and the optional
//! bias tensor: their storages are read with `Tensor::storage_and_layout` inside the forward
//! pass and handed to the backend functions (`crate::cuda::{filter, sample, penalties}`,
//! `crate::metal::...`) next to the three op inputs.
//!
//! ## The draw's output
//! `fused_sample` returns `[rows, 2]` f32: the token id as f32 (exact below 2^24) and the
//! probability of that token under the processed distribution (softmax of the processed row).

use candle_core::{
    bail, CpuStorage, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Storage, Tensor,
};

mod cpu;
#[cfg(feature = "cuda")]
mod cuda;
mod gpu;
#[cfg(feature = "metal")]
mod metal;
mod philox;

pub use philox::{philox4x32_10, philox_uniform};

/// Columns of the `[rows, FILTER_PARAMS]` f32 parameter tensor of the filter-and-draw segment.
pub mod filter_param {
    /// Min-p fraction in [0, 1]; 0 = off.
    pub const MIN_P: usize = 0;
    /// Tokens min-p always keeps (the highest logits, ties included); >= 0.
    pub const MIN_TOKENS: usize = 1;
    /// Top-k; <= 0 = off.
    pub const TOP_K: usize = 2;
    /// Top-p in [0, 1]; >= 1 = off.
    pub const TOP_P: usize = 3;
    /// Temperature t: divides when > 0 (and the dynamic form is off).
    pub const TEMPERATURE: usize = 4;
    /// Dynamic temperature's lower end; the dynamic form applies when |t - t_min| >= 0.001 and
    /// t_min >= 0.
    pub const MIN_TEMPERATURE: usize = 5;
    /// The n of top-n-sigma; <= 0 = off.
    pub const TOP_N_SIGMA: usize = 6;
    /// 1 = greedy draw (argmax, lowest id on ties), 0 = multinomial. Read by `fused_sample` only.
    pub const GREEDY: usize = 7;
}
/// Number of columns of the filter parameter tensor.
pub const FILTER_PARAMS: usize = 8;

/// Columns of the `[rows, PENALTY_PARAMS]` f32 parameter tensor of the penalty segment.
pub mod penalty_param {
    /// Repetition penalty factor > 0; 1 (with decay 0) = off.
    pub const REPETITION: usize = 0;
    /// Distance decay of the "divide" form: the divisor is `REPETITION * D^DECAY`.
    pub const DECAY: usize = 1;
    /// Window: only history positions at distance D < WINDOW count; 0 = the whole history.
    /// The window applies to the repetition and to the frequency / presence penalties.
    pub const WINDOW: usize = 2;
    /// 1 = the sign-aware (HF / CTRL) form: once per distinct token, positive logits are
    /// divided by REPETITION and negative ones multiplied (DECAY unused). 0 = the "divide"
    /// form: once per occurrence, `logit /= REPETITION * D^DECAY` whatever the sign.
    pub const SIGN_AWARE: usize = 3;
    /// Frequency penalty: `logit -= count * FREQUENCY`.
    pub const FREQUENCY: usize = 4;
    /// Presence penalty: `logit -= PRESENCE` when the token occurs in the window.
    pub const PRESENCE: usize = 5;
    /// Length penalty exponent a: `logit[stop] /= (len + 1)^a`; 0 = off.
    pub const LENGTH: usize = 6;
    /// The stop token id as f32 (read when LENGTH != 0; must be below the vocabulary size).
    pub const STOP_TOKEN: usize = 7;
}
/// Number of columns of the penalty parameter tensor.
pub const PENALTY_PARAMS: usize = 8;

fn logits_dims(logits: &Tensor) -> Result<(usize, usize)> {
    if logits.dtype() != DType::F32 {
        bail!("fused ops take f32 logits, got {:?}", logits.dtype());
    }
    let (rows, vocab) = match logits.dims() {
        &[r, v] => (r, v),
        d => bail!("logits must be [rows, vocab], got shape {d:?}"),
    };
    if vocab == 0 {
        bail!("logits have an empty vocabulary");
    }
    Ok((rows, vocab))
}

fn check_input(
    t: &Tensor,
    logits: &Tensor,
    what: &str,
    dtype: DType,
    dims: &[usize],
) -> Result<()> {
    if t.dtype() != dtype {
        bail!("{what} must be {dtype:?}, got {:?}", t.dtype());
    }
    if t.dims() != dims {
        bail!("{what} must have shape {dims:?}, got {:?}", t.dims());
    }
    if !t.device().same_device(logits.device()) {
        bail!(
            "{what} must be on the logits' device ({:?}), got {:?}",
            logits.device(),
            t.device()
        );
    }
    Ok(())
}

/// The processed logits `[rows, vocab]` f32 after min-p -> top-k -> top-p -> temperature
/// (dynamic or plain) -> top-n-sigma. `params`: `[rows, FILTER_PARAMS]` f32 (see
/// [`filter_param`]). Filtered entries are -inf; -inf inputs stay -inf.
pub fn fused_filter(logits: &Tensor, params: &Tensor) -> Result<Tensor> {
    let (rows, vocab) = logits_dims(logits)?;
    check_input(
        params,
        logits,
        "filter params",
        DType::F32,
        &[rows, FILTER_PARAMS],
    )?;
    if rows == 0 {
        return Tensor::zeros((0, vocab), DType::F32, logits.device());
    }
    logits
        .contiguous()?
        .apply_op2_no_bwd(&params.contiguous()?, &FilterOp)
}

/// The filter segment plus the draw. Returns `[rows, 2]` f32: (token id as f32, probability of
/// that token under the processed distribution). Greedy rows (GREEDY = 1) take the argmax,
/// lowest id on ties; the others draw `u = philox_uniform(seed, row_ids[r], step)` and take the
/// smallest id j with `sum(probs[..=j]) > u * sum(probs)`, which is never a filtered token.
/// `row_ids`: `[rows]` u32. A row with no finite logit is an error on the CPU; the GPU kernels
/// write token 0 with probability 0 for it (callers that validate catch it earlier).
pub fn fused_sample(
    logits: &Tensor,
    params: &Tensor,
    row_ids: &Tensor,
    seed: u64,
    step: u64,
) -> Result<Tensor> {
    let (rows, _) = logits_dims(logits)?;
    check_input(
        params,
        logits,
        "filter params",
        DType::F32,
        &[rows, FILTER_PARAMS],
    )?;
    check_input(row_ids, logits, "row ids", DType::U32, &[rows])?;
    if rows == 0 {
        return Tensor::zeros((0, 2), DType::F32, logits.device());
    }
    logits.contiguous()?.apply_op3_no_bwd(
        &params.contiguous()?,
        &row_ids.contiguous()?,
        &SampleOp { seed, step },
    )
}

/// The penalty segment in one gather-scatter: repetition (divide or sign-aware), frequency /
/// presence, the length penalty on the stop token, then `vocab_bias` (`[vocab]` f32, added;
/// -inf entries are bans) if given. `tokens`: `[rows, W]` u32 histories whose first `lens[r]`
/// entries are valid; `lens`: `[rows]` u32; `params`: `[rows, PENALTY_PARAMS]` f32 (see
/// [`penalty_param`]). -inf stays -inf.
pub fn fused_penalties(
    logits: &Tensor,
    tokens: &Tensor,
    lens: &Tensor,
    params: &Tensor,
    vocab_bias: Option<&Tensor>,
) -> Result<Tensor> {
    let (rows, vocab) = logits_dims(logits)?;
    let width = match tokens.dims() {
        &[r, w] if r == rows => w,
        d => bail!("history tokens must be [{rows}, W], got shape {d:?}"),
    };
    check_input(tokens, logits, "history tokens", DType::U32, &[rows, width])?;
    check_input(lens, logits, "history lengths", DType::U32, &[rows])?;
    check_input(
        params,
        logits,
        "penalty params",
        DType::F32,
        &[rows, PENALTY_PARAMS],
    )?;
    if let Some(b) = vocab_bias {
        check_input(b, logits, "vocab bias", DType::F32, &[vocab])?;
    }
    if rows == 0 {
        return Tensor::zeros((0, vocab), DType::F32, logits.device());
    }
    let op = PenaltiesOp {
        params: params.contiguous()?,
        bias: vocab_bias.map(|b| b.contiguous()).transpose()?,
        width,
    };
    logits
        .contiguous()?
        .apply_op3_no_bwd(&tokens.contiguous()?, &lens.contiguous()?, &op)
}

/// `fused_filter` as a candle op: inputs (logits, params).
struct FilterOp;

impl CustomOp2 for FilterOp {
    fn name(&self) -> &'static str {
        "fused_filter"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (rows, vocab) = l1.shape().dims2()?;
        let logits = cpu::f32_slice(s1, l1, "logits", rows * vocab)?;
        let params = cpu::f32_slice(s2, l2, "filter params", rows * FILTER_PARAMS)?;
        let out = cpu::filter(logits, params, rows, vocab)?;
        Ok((CpuStorage::F32(out), Shape::from((rows, vocab))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let (rows, vocab) = l1.shape().dims2()?;
        let out = cuda::filter(s1, l1, s2, l2, rows, vocab)?;
        Ok((out, Shape::from((rows, vocab))))
    }

    #[cfg(feature = "metal")]
    fn metal_fwd(
        &self,
        s1: &candle_core::MetalStorage,
        l1: &Layout,
        s2: &candle_core::MetalStorage,
        l2: &Layout,
    ) -> Result<(candle_core::MetalStorage, Shape)> {
        let (rows, vocab) = l1.shape().dims2()?;
        let out = metal::filter(s1, l1, s2, l2, rows, vocab)?;
        Ok((out, Shape::from((rows, vocab))))
    }
}

/// `fused_sample` as a candle op: inputs (logits, params, row ids).
struct SampleOp {
    seed: u64,
    step: u64,
}

impl CustomOp3 for SampleOp {
    fn name(&self) -> &'static str {
        "fused_sample"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (rows, vocab) = l1.shape().dims2()?;
        let logits = cpu::f32_slice(s1, l1, "logits", rows * vocab)?;
        let params = cpu::f32_slice(s2, l2, "filter params", rows * FILTER_PARAMS)?;
        let row_ids = cpu::u32_slice(s3, l3, "row ids", rows)?;
        let out = cpu::sample(logits, params, row_ids, rows, vocab, self.seed, self.step)?;
        Ok((CpuStorage::F32(out), Shape::from((rows, 2))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
        s3: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let (rows, vocab) = l1.shape().dims2()?;
        let out = cuda::sample(s1, l1, s2, l2, s3, l3, rows, vocab, self.seed, self.step)?;
        Ok((out, Shape::from((rows, 2))))
    }

    #[cfg(feature = "metal")]
    fn metal_fwd(
        &self,
        s1: &candle_core::MetalStorage,
        l1: &Layout,
        s2: &candle_core::MetalStorage,
        l2: &Layout,
        s3: &candle_core::MetalStorage,
        l3: &Layout,
    ) -> Result<(candle_core::MetalStorage, Shape)> {
        let (rows, vocab) = l1.shape().dims2()?;
        let out = metal::sample(s1, l1, s2, l2, s3, l3, rows, vocab, self.seed, self.step)?;
        Ok((out, Shape::from((rows, 2))))
    }
}

/// `fused_penalties` as a candle op: inputs (logits, tokens, lens); the parameters and the
/// optional bias ride in the op and are read from their storages in the forward pass.
struct PenaltiesOp {
    params: Tensor,
    bias: Option<Tensor>,
    width: usize,
}

impl CustomOp3 for PenaltiesOp {
    fn name(&self) -> &'static str {
        "fused_penalties"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (rows, vocab) = l1.shape().dims2()?;
        let logits = cpu::f32_slice(s1, l1, "logits", rows * vocab)?;
        let tokens = cpu::u32_slice(s2, l2, "history tokens", rows * self.width)?;
        let lens = cpu::u32_slice(s3, l3, "history lengths", rows)?;
        let (pg, pl) = self.params.storage_and_layout();
        let Storage::Cpu(ps) = &*pg else {
            bail!("fused_penalties: params are not on the CPU")
        };
        let params = cpu::f32_slice(ps, pl, "penalty params", rows * PENALTY_PARAMS)?;
        let bias_guard = self.bias.as_ref().map(|b| b.storage_and_layout());
        let bias = match &bias_guard {
            None => None,
            Some((bg, bl)) => match &**bg {
                Storage::Cpu(bs) => Some(cpu::f32_slice(bs, bl, "vocab bias", vocab)?),
                _ => bail!("fused_penalties: the vocab bias is not on the CPU"),
            },
        };
        let out = cpu::penalties(logits, tokens, lens, params, bias, rows, vocab, self.width)?;
        Ok((CpuStorage::F32(out), Shape::from((rows, vocab))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
        s3: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let (rows, vocab) = l1.shape().dims2()?;
        let (pg, pl) = self.params.storage_and_layout();
        let Storage::Cuda(ps) = &*pg else {
            bail!("fused_penalties: params are not on the CUDA device")
        };
        let bias_guard = self.bias.as_ref().map(|b| b.storage_and_layout());
        let bias = match &bias_guard {
            None => None,
            Some((bg, bl)) => match &**bg {
                Storage::Cuda(bs) => Some((bs, *bl)),
                _ => bail!("fused_penalties: the vocab bias is not on the CUDA device"),
            },
        };
        let out = cuda::penalties(
            s1, l1, s2, l2, s3, l3, ps, pl, bias, rows, vocab, self.width,
        )?;
        Ok((out, Shape::from((rows, vocab))))
    }

    #[cfg(feature = "metal")]
    fn metal_fwd(
        &self,
        s1: &candle_core::MetalStorage,
        l1: &Layout,
        s2: &candle_core::MetalStorage,
        l2: &Layout,
        s3: &candle_core::MetalStorage,
        l3: &Layout,
    ) -> Result<(candle_core::MetalStorage, Shape)> {
        let (rows, vocab) = l1.shape().dims2()?;
        let (pg, pl) = self.params.storage_and_layout();
        let Storage::Metal(ps) = &*pg else {
            bail!("fused_penalties: params are not on the Metal device")
        };
        let bias_guard = self.bias.as_ref().map(|b| b.storage_and_layout());
        let bias = match &bias_guard {
            None => None,
            Some((bg, bl)) => match &**bg {
                Storage::Metal(bs) => Some((bs, *bl)),
                _ => bail!("fused_penalties: the vocab bias is not on the Metal device"),
            },
        };
        let out = metal::penalties(
            s1, l1, s2, l2, s3, l3, ps, pl, bias, rows, vocab, self.width,
        )?;
        Ok((out, Shape::from((rows, vocab))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    const NINF: f32 = f32::NEG_INFINITY;

    fn filter_params(rows: usize, changes: &[(usize, f32)]) -> Tensor {
        let mut p = [0f32; FILTER_PARAMS];
        p[filter_param::MIN_TOKENS] = 1.0;
        p[filter_param::TOP_P] = 1.0;
        p[filter_param::TEMPERATURE] = 1.0;
        p[filter_param::MIN_TEMPERATURE] = -1.0;
        for &(c, v) in changes {
            p[c] = v;
        }
        Tensor::from_vec(p.repeat(rows), (rows, FILTER_PARAMS), &Device::Cpu).unwrap()
    }

    #[test]
    fn filter_through_the_tensor_api() -> Result<()> {
        let x = Tensor::new(
            &[[1f32, 4.0, 2.0, 4.0, 3.0], [1.0, 2.0, 2.0, 2.0, 0.0]],
            &Device::Cpu,
        )?;
        let p = filter_params(
            2,
            &[(filter_param::TOP_K, 2.0), (filter_param::TEMPERATURE, 0.5)],
        );
        let y = fused_filter(&x, &p)?.to_vec2::<f32>()?;
        assert_eq!(
            y,
            vec![
                vec![NINF, 8.0, NINF, 8.0, NINF],
                vec![NINF, 4.0, 4.0, 4.0, NINF]
            ]
        );
        Ok(())
    }

    #[test]
    fn views_are_made_contiguous() -> Result<()> {
        // A column-narrowed view (row stride 6) and a transposed tensor give the result of their
        // contiguous copies.
        let base = Tensor::arange(0f32, 12.0, &Device::Cpu)?.reshape((2, 6))?;
        let view = base.narrow(1, 1, 4)?;
        let p = filter_params(2, &[(filter_param::TOP_K, 2.0)]);
        let y = fused_filter(&view, &p)?.to_vec2::<f32>()?;
        assert_eq!(
            y,
            vec![vec![NINF, NINF, 3.0, 4.0], vec![NINF, NINF, 9.0, 10.0]]
        );
        let t = base.reshape((6, 2))?.t()?;
        let y = fused_filter(&t, &p)?.to_vec2::<f32>()?;
        assert_eq!(y, fused_filter(&t.contiguous()?, &p)?.to_vec2::<f32>()?);
        Ok(())
    }

    #[test]
    fn sample_returns_token_and_probability() -> Result<()> {
        let x = Tensor::new(
            &[[0f32, 3.0, 3.0, NINF], [5.0, NINF, NINF, NINF]],
            &Device::Cpu,
        )?;
        let p = filter_params(2, &[(filter_param::GREEDY, 1.0)]);
        let ids = Tensor::new(&[0u32, 1], &Device::Cpu)?;
        let out = fused_sample(&x, &p, &ids, 7, 0)?.to_vec2::<f32>()?;
        let e3 = 3f32.exp();
        assert_eq!((out[0][0], out[1][0]), (1.0, 0.0));
        assert!((out[0][1] - e3 / (1.0 + 2.0 * e3)).abs() < 1e-6);
        assert_eq!(out[1][1], 1.0);
        Ok(())
    }

    #[test]
    fn penalties_through_the_tensor_api_with_a_narrowed_history() -> Result<()> {
        // A history buffer of capacity 4 seen through its first 2 columns, as sampler-core's
        // History hands it out.
        let dev = Device::Cpu;
        let x = Tensor::new(&[[3f32, -2.0, 4.0], [3.0, -2.0, 4.0]], &dev)?;
        let buffer = Tensor::new(&[[1u32, 0, 9, 9], [2, 2, 9, 9]], &dev)?;
        let tokens = buffer.narrow(1, 0, 2)?;
        let lens = Tensor::new(&[2u32, 1], &dev)?;
        let mut p = [0f32; PENALTY_PARAMS];
        p[penalty_param::REPETITION] = 2.0;
        let params = Tensor::from_vec(p.repeat(2), (2, PENALTY_PARAMS), &dev)?;
        let bias = Tensor::new(&[0f32, 0.0, NINF], &dev)?;
        let y = fused_penalties(&x, &tokens, &lens, &params, Some(&bias))?.to_vec2::<f32>()?;
        assert_eq!(y, vec![vec![1.5, -1.0, NINF], vec![3.0, -2.0, NINF]]);
        Ok(())
    }

    #[test]
    fn wrong_dtypes_and_shapes_are_errors() -> Result<()> {
        let dev = Device::Cpu;
        let x = Tensor::zeros((2, 4), DType::F32, &dev)?;
        let p = filter_params(2, &[]);
        assert!(fused_filter(&x.to_dtype(DType::F16)?, &p).is_err());
        assert!(fused_filter(&x.reshape(8)?, &p).is_err());
        assert!(fused_filter(&x, &p.narrow(0, 0, 1)?).is_err());
        assert!(fused_filter(&Tensor::zeros((2, 0), DType::F32, &dev)?, &p).is_err());
        let ids = Tensor::new(&[0f32, 1.0], &dev)?;
        assert!(fused_sample(&x, &p, &ids, 0, 0).is_err());
        let tokens = Tensor::zeros((2, 3), DType::U32, &dev)?;
        let lens = Tensor::zeros(2, DType::U32, &dev)?;
        let pp = Tensor::zeros((2, PENALTY_PARAMS), DType::F32, &dev)?;
        assert!(fused_penalties(&x, &tokens, &lens, &pp, None).is_ok());
        assert!(fused_penalties(&x, &tokens.to_dtype(DType::I64)?, &lens, &pp, None).is_err());
        assert!(fused_penalties(
            &x,
            &tokens,
            &lens,
            &pp,
            Some(&Tensor::zeros(3, DType::F32, &dev)?)
        )
        .is_err());
        let empty = Tensor::zeros((0, 4), DType::F32, &dev)?;
        assert_eq!(
            fused_filter(&empty, &filter_params(0, &[]))?.dims(),
            &[0, 4]
        );
        Ok(())
    }
}
