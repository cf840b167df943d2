//! Metal implementation of the fused sampling ops: `kernels/sampling.metal` (entry points) over
//! `kernels/sampling_common.h` (the per-row algorithms, shared with CUDA and the host test
//! harness), compiled at run time with `newLibraryWithSource` (fast math off, so that -inf and
//! rounding behave as on the other backends) and cached per Metal device.
//!
//! One threadgroup per row, of a multiple of 32 threads (Apple GPUs run SIMD groups of 32).
//!
//! UNTESTED: no machine of this project can build or run Metal (macOS only). This file was
//! written against the sources of candle-core / candle-metal-kernels 0.11.1 and objc2-metal
//! 0.3.2; the algorithm it runs is the one the host harness and the CUDA build test.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use candle_core::backend::BackendStorage;
use candle_core::{DType, Layout, MetalError, MetalStorage, Result};
use candle_metal_kernels::metal::{Buffer, ComputeCommandEncoder, ComputePipeline};
use objc2_metal::{MTLCompileOptions, MTLSize};

use crate::gpu::{self, Rows, PARAM_COLS};

/// The three pipelines, built once per Metal device.
struct Pipelines {
    filter: ComputePipeline,
    sample: ComputePipeline,
    penalties: ComputePipeline,
}

// Mirrors of the argument structs of kernels/sampling.metal (all u32, no padding).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
struct FilterArgs {
    vocab: u32,
    logits_stride: u32,
    params_stride: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug)]
struct SampleArgs {
    vocab: u32,
    logits_stride: u32,
    params_stride: u32,
    row_ids_stride: u32,
    seed_lo: u32,
    seed_hi: u32,
    step_lo: u32,
    step_hi: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug)]
struct PenaltiesArgs {
    vocab: u32,
    width: u32,
    logits_stride: u32,
    tokens_stride: u32,
    lens_stride: u32,
    params_stride: u32,
    bias_stride: u32,
    has_bias: u32,
}

fn pipelines(device: &candle_core::MetalDevice) -> Result<Arc<Pipelines>> {
    static BUILT: OnceLock<Mutex<HashMap<u64, Arc<Pipelines>>>> = OnceLock::new();
    let mtl = device.metal_device();
    let key = mtl.registry_id();
    let mut built = BUILT
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    if let Some(p) = built.get(&key) {
        return Ok(p.clone());
    }
    let options = MTLCompileOptions::new();
    // Fast math would let the compiler assume no infinities: -inf marks filtered tokens.
    #[allow(deprecated)]
    options.setFastMathEnabled(false);
    let library = mtl
        .new_library_with_source(&gpu::program(gpu::METAL_SRC), Some(&*options))
        .map_err(|e| {
            candle_core::Error::Msg(format!("compiling the Metal sampling kernels: {e}"))
        })?;
    let pipeline = |name: &str| -> Result<ComputePipeline> {
        let f = library.get_function(name, None).map_err(MetalError::from)?;
        Ok(mtl
            .new_compute_pipeline_state_with_function(&f)
            .map_err(MetalError::from)?)
    };
    let p = Arc::new(Pipelines {
        filter: pipeline("sk_filter_f32")?,
        sample: pipeline("sk_sample_f32")?,
        penalties: pipeline("sk_penalties_f32")?,
    });
    built.insert(key, p.clone());
    Ok(p)
}

fn f32_len(s: &MetalStorage) -> usize {
    s.buffer().length() / 4
}

fn size(width: usize) -> MTLSize {
    MTLSize {
        width,
        height: 1,
        depth: 1,
    }
}

fn dispatch(enc: &ComputeCommandEncoder, p: &ComputePipeline, rows: usize, work: usize) {
    let threads = gpu::block_threads(work, p.max_total_threads_per_threadgroup());
    enc.dispatch_thread_groups(size(rows), size(threads));
}

fn check_dtype(what: &str, s: &MetalStorage, dtype: DType) -> Result<()> {
    if s.dtype() != dtype {
        candle_core::bail!("{what}: dtype {:?}, expected {dtype:?}", s.dtype());
    }
    Ok(())
}

/// The processed logits `[rows, vocab]` (contiguous f32); see `crate::cuda::filter`.
pub(crate) fn filter(
    logits: &MetalStorage,
    l: &Layout,
    params: &MetalStorage,
    lp: &Layout,
    rows: usize,
    vocab: usize,
) -> Result<MetalStorage> {
    gpu::check_sizes(rows, vocab)?;
    check_dtype("logits", logits, DType::F32)?;
    check_dtype("params", params, DType::F32)?;
    let x = gpu::rows2("logits", l, rows, vocab, f32_len(logits))?;
    let p = gpu::rows2("params", lp, rows, PARAM_COLS, f32_len(params))?;
    let args = FilterArgs {
        vocab: vocab as u32,
        logits_stride: gpu::as_u32("logits row stride", x.stride)?,
        params_stride: gpu::as_u32("params row stride", p.stride)?,
    };
    let device = logits.device();
    let pipes = pipelines(device)?;
    let out = device.new_buffer(rows * vocab, DType::F32, "sk_filter")?;
    {
        let guard = device.command_encoder()?;
        let enc: &ComputeCommandEncoder = guard.as_ref();
        enc.set_compute_pipeline_state(&pipes.filter);
        enc.set_input_buffer(0, Some(logits.buffer()), x.offset * 4);
        enc.set_input_buffer(1, Some(params.buffer()), p.offset * 4);
        enc.set_output_buffer(2, Some(&*out), 0);
        enc.set_bytes(3, &args);
        dispatch(enc, &pipes.filter, rows, vocab);
    }
    Ok(MetalStorage::new(
        out,
        device.clone(),
        rows * vocab,
        DType::F32,
    ))
}

/// Filters, then draws one token per row: `[rows, 2]` f32 (token id, probability); see
/// `crate::cuda::sample`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn sample(
    logits: &MetalStorage,
    l: &Layout,
    params: &MetalStorage,
    lp: &Layout,
    row_ids: &MetalStorage,
    lr: &Layout,
    rows: usize,
    vocab: usize,
    seed: u64,
    step: u64,
) -> Result<MetalStorage> {
    gpu::check_sizes(rows, vocab)?;
    check_dtype("logits", logits, DType::F32)?;
    check_dtype("params", params, DType::F32)?;
    check_dtype("row_ids", row_ids, DType::U32)?;
    let x = gpu::rows2("logits", l, rows, vocab, f32_len(logits))?;
    let p = gpu::rows2("params", lp, rows, PARAM_COLS, f32_len(params))?;
    let r = gpu::rows1("row_ids", lr, rows, row_ids.buffer().length() / 4)?;
    let args = SampleArgs {
        vocab: vocab as u32,
        logits_stride: gpu::as_u32("logits row stride", x.stride)?,
        params_stride: gpu::as_u32("params row stride", p.stride)?,
        row_ids_stride: gpu::as_u32("row_ids stride", r.stride)?,
        seed_lo: seed as u32,
        seed_hi: (seed >> 32) as u32,
        step_lo: step as u32,
        step_hi: (step >> 32) as u32,
    };
    let device = logits.device();
    let pipes = pipelines(device)?;
    let out = device.new_buffer(rows * 2, DType::F32, "sk_sample")?;
    {
        let guard = device.command_encoder()?;
        let enc: &ComputeCommandEncoder = guard.as_ref();
        enc.set_compute_pipeline_state(&pipes.sample);
        enc.set_input_buffer(0, Some(logits.buffer()), x.offset * 4);
        enc.set_input_buffer(1, Some(params.buffer()), p.offset * 4);
        enc.set_input_buffer(2, Some(row_ids.buffer()), r.offset * 4);
        enc.set_output_buffer(3, Some(&*out), 0);
        enc.set_bytes(4, &args);
        dispatch(enc, &pipes.sample, rows, vocab);
    }
    Ok(MetalStorage::new(out, device.clone(), rows * 2, DType::F32))
}

/// The logits after the penalties and the optional bias; see `crate::cuda::penalties`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn penalties(
    logits: &MetalStorage,
    l: &Layout,
    tokens: &MetalStorage,
    lt: &Layout,
    lens: &MetalStorage,
    ll: &Layout,
    params: &MetalStorage,
    lp: &Layout,
    bias: Option<(&MetalStorage, &Layout)>,
    rows: usize,
    vocab: usize,
    width: usize,
) -> Result<MetalStorage> {
    gpu::check_sizes(rows, vocab)?;
    check_dtype("logits", logits, DType::F32)?;
    check_dtype("tokens", tokens, DType::U32)?;
    check_dtype("lens", lens, DType::U32)?;
    check_dtype("params", params, DType::F32)?;
    let x = gpu::rows2("logits", l, rows, vocab, f32_len(logits))?;
    let t = if width == 0 {
        Rows {
            offset: 0,
            stride: 0,
        }
    } else {
        gpu::rows2("tokens", lt, rows, width, tokens.buffer().length() / 4)?
    };
    let n = gpu::rows1("lens", ll, rows, lens.buffer().length() / 4)?;
    let p = gpu::rows2("params", lp, rows, PARAM_COLS, f32_len(params))?;
    let (bias_buf, b): (&Buffer, Rows) = match bias {
        Some((s, lb)) => {
            check_dtype("bias", s, DType::F32)?;
            (s.buffer(), gpu::bias_rows(lb, rows, vocab, f32_len(s))?)
        }
        // Not read by the kernel (has_bias = 0); Metal still wants a buffer bound.
        None => (
            logits.buffer(),
            Rows {
                offset: x.offset,
                stride: 0,
            },
        ),
    };
    let args = PenaltiesArgs {
        vocab: vocab as u32,
        width: gpu::as_u32("history width", width)?,
        logits_stride: gpu::as_u32("logits row stride", x.stride)?,
        tokens_stride: gpu::as_u32("tokens row stride", t.stride)?,
        lens_stride: gpu::as_u32("lens stride", n.stride)?,
        params_stride: gpu::as_u32("params row stride", p.stride)?,
        bias_stride: gpu::as_u32("bias row stride", b.stride)?,
        has_bias: bias.is_some() as u32,
    };
    let device = logits.device();
    let pipes = pipelines(device)?;
    let out = device.new_buffer(rows * vocab, DType::F32, "sk_penalties")?;
    {
        let guard = device.command_encoder()?;
        let enc: &ComputeCommandEncoder = guard.as_ref();
        enc.set_compute_pipeline_state(&pipes.penalties);
        enc.set_input_buffer(0, Some(logits.buffer()), x.offset * 4);
        enc.set_input_buffer(1, Some(tokens.buffer()), t.offset * 4);
        enc.set_input_buffer(2, Some(lens.buffer()), n.offset * 4);
        enc.set_input_buffer(3, Some(params.buffer()), p.offset * 4);
        enc.set_input_buffer(4, Some(bias_buf), b.offset * 4);
        enc.set_output_buffer(5, Some(&*out), 0);
        enc.set_bytes(6, &args);
        dispatch(enc, &pipes.penalties, rows, vocab.max(width * 8));
    }
    Ok(MetalStorage::new(
        out,
        device.clone(),
        rows * vocab,
        DType::F32,
    ))
}
