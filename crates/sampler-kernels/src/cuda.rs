//! CUDA implementation of the fused sampling ops: `kernels/sampling.cu` (entry points) over
//! `kernels/sampling_common.h` (the per-row algorithms), compiled at run time by NVRTC, so
//! building the crate needs no CUDA compiler.
//!
//! One thread block per row. The compiled image is cached per compute capability and the loaded
//! module per device ordinal (for the context that loaded it).
//!
//! PTX or cubin: PTX is JIT-compiled by the driver, which refuses PTX from an NVRTC newer than
//! itself (`CUDA_ERROR_UNSUPPORTED_PTX_VERSION`). So when the driver's CUDA version is older
//! than NVRTC's, NVRTC compiles straight to a cubin for the device's compute capability, which
//! the driver loads without a JIT; a failed load names both versions.

use std::collections::HashMap;
use std::ffi::{c_char, CString};
use std::sync::{Arc, Mutex, OnceLock};

use candle_core::cuda_backend::cudarc;
use candle_core::cuda_backend::WrapErr;
use candle_core::{CudaDevice, CudaStorage, Layout, Result};
use cudarc::driver::{CudaFunction, LaunchConfig, PushKernelArg};

use crate::gpu::{self, Rows, PARAM_COLS};

/// A CUDA version as (major, minor).
type Version = (i32, i32);

/// What NVRTC produced for one compute capability.
#[derive(Clone, Debug)]
pub(crate) enum Image {
    /// PTX text, JIT-compiled by the driver when loaded.
    Ptx(String),
    /// A cubin for exactly one compute capability.
    Cubin(Vec<u8>),
}

impl Image {
    fn kind(&self) -> &'static str {
        match self {
            Image::Ptx(_) => "PTX",
            Image::Cubin(_) => "cubin",
        }
    }
}

/// The three entry points, loaded in one context.
struct Kernels {
    context: usize,
    filter: CudaFunction,
    sample: CudaFunction,
    penalties: CudaFunction,
}

fn msg(s: String) -> candle_core::Error {
    candle_core::Error::Msg(s)
}

/// NVRTC's CUDA version (of the libnvrtc loaded at run time).
pub(crate) fn nvrtc_version() -> Result<Version> {
    let (mut major, mut minor) = (0, 0);
    unsafe { cudarc::nvrtc::sys::nvrtcVersion(&mut major, &mut minor) }
        .result()
        .map_err(|e| msg(format!("nvrtcVersion failed: {e:?}")))?;
    Ok((major, minor))
}

/// The CUDA version the installed driver supports.
pub(crate) fn driver_version() -> Result<Version> {
    let mut v = 0;
    unsafe { cudarc::driver::sys::cuDriverGetVersion(&mut v) }
        .result()
        .w()?;
    Ok((v / 1000, (v % 1000) / 10))
}

/// Compiles the kernels with NVRTC for compute capability `cc`: a cubin (`sm_XY`) when `cubin`,
/// else PTX (`compute_XY`). Needs no GPU.
pub(crate) fn compile(cc: Version, cubin: bool) -> Result<Image> {
    use cudarc::nvrtc::{result, sys};
    let src = CString::new(gpu::program(gpu::CUDA_SRC))
        .map_err(|_| msg("kernel source contains a NUL byte".into()))?;
    let arch = format!(
        "--gpu-architecture={}_{}{}",
        if cubin { "sm" } else { "compute" },
        cc.0,
        cc.1
    );
    // No FMA contraction: the plain CPU path rounds every product and sum separately.
    let options = [arch.as_str(), "--fmad=false"];
    let prog = result::create_program(&src, None)
        .map_err(|e| msg(format!("nvrtcCreateProgram failed: {e:?}")))?;
    let out = (|| -> Result<Image> {
        if let Err(e) = unsafe { result::compile_program(prog, &options) } {
            let log = unsafe { result::get_program_log(prog) }.unwrap_or_default();
            let log: Vec<u8> = log
                .iter()
                .take_while(|&&c| c != 0)
                .map(|&c| c as u8)
                .collect();
            return Err(msg(format!(
                "NVRTC could not compile the sampling kernels ({e:?}, options {options:?}):\n{}",
                String::from_utf8_lossy(&log)
            )));
        }
        if cubin {
            let mut size = 0usize;
            unsafe { sys::nvrtcGetCUBINSize(prog, &mut size) }
                .result()
                .map_err(|e| msg(format!("nvrtcGetCUBINSize failed: {e:?}")))?;
            let mut bin = vec![0u8; size];
            unsafe { sys::nvrtcGetCUBIN(prog, bin.as_mut_ptr() as *mut c_char) }
                .result()
                .map_err(|e| msg(format!("nvrtcGetCUBIN failed: {e:?}")))?;
            Ok(Image::Cubin(bin))
        } else {
            let ptx = unsafe { result::get_ptx(prog) }
                .map_err(|e| msg(format!("nvrtcGetPTX failed: {e:?}")))?;
            let ptx: Vec<u8> = ptx
                .iter()
                .take_while(|&&c| c != 0)
                .map(|&c| c as u8)
                .collect();
            let ptx =
                String::from_utf8(ptx).map_err(|_| msg("NVRTC returned non-UTF-8 PTX".into()))?;
            Ok(Image::Ptx(ptx))
        }
    })();
    // A failed destroy only leaks the program; the compile result stands.
    let _ = unsafe { result::destroy_program(prog) };
    out
}

/// Compiled images by (compute capability, cubin).
type ImageCache = Mutex<HashMap<(Version, bool), Arc<Image>>>;

/// The compiled image for `cc`, compiled once per process.
fn image_for(cc: Version, cubin: bool) -> Result<Arc<Image>> {
    static IMAGES: OnceLock<ImageCache> = OnceLock::new();
    let mut images = IMAGES
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    if let Some(img) = images.get(&(cc, cubin)) {
        return Ok(img.clone());
    }
    let img = Arc::new(compile(cc, cubin)?);
    images.insert((cc, cubin), img.clone());
    Ok(img)
}

/// Whether the driver would refuse PTX from this NVRTC: then NVRTC makes a cubin instead.
pub(crate) fn needs_cubin(driver: Version, nvrtc: Version) -> bool {
    driver < nvrtc
}

fn kernels(dev: &CudaDevice) -> Result<Arc<Kernels>> {
    static LOADED: OnceLock<Mutex<HashMap<usize, Arc<Kernels>>>> = OnceLock::new();
    let stream = dev.cuda_stream();
    let ctx = stream.context();
    let (ordinal, context) = (ctx.ordinal(), ctx.cu_ctx() as usize);
    let mut loaded = LOADED
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    if let Some(k) = loaded.get(&ordinal) {
        if k.context == context {
            return Ok(k.clone());
        }
    }
    let cc = ctx.compute_capability().w()?;
    let driver = driver_version()?;
    let nvrtc = nvrtc_version()?;
    let img = image_for(cc, needs_cubin(driver, nvrtc))?;
    let image = match img.as_ref() {
        Image::Ptx(s) => cudarc::nvrtc::Ptx::from_src(s.clone()),
        Image::Cubin(b) => cudarc::nvrtc::Ptx::from_binary(b.clone()),
    };
    let module = ctx.load_module(image).map_err(|e| {
        msg(format!(
            "loading the sampling kernels ({} for compute capability {}.{}) failed: {e:?}; \
             the driver supports CUDA {}.{}, NVRTC is CUDA {}.{} (PTX from an NVRTC newer than \
             the driver is refused: use a libnvrtc no newer than the driver)",
            img.kind(),
            cc.0,
            cc.1,
            driver.0,
            driver.1,
            nvrtc.0,
            nvrtc.1
        ))
    })?;
    let func = |name: &str| {
        module.load_function(name).map_err(|e| {
            msg(format!(
                "sampling kernel {name} not found in the module: {e:?}"
            ))
        })
    };
    let k = Arc::new(Kernels {
        context,
        filter: func("sk_filter_f32")?,
        sample: func("sk_sample_f32")?,
        penalties: func("sk_penalties_f32")?,
    });
    loaded.insert(ordinal, k.clone());
    Ok(k)
}

fn launch_config(rows: usize, threads: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (rows as u32, 1, 1),
        block_dim: (threads as u32, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// The processed logits `[rows, vocab]` (contiguous f32) after min-p, top-k, top-p,
/// temperature and top-n-sigma, with the per-row `params` `[rows, 8]` (columns: see the
/// crate's `filter` op); filtered entries are -inf.
pub(crate) fn filter(
    logits: &CudaStorage,
    l: &Layout,
    params: &CudaStorage,
    lp: &Layout,
    rows: usize,
    vocab: usize,
) -> Result<CudaStorage> {
    gpu::check_sizes(rows, vocab)?;
    let dev = logits.device.clone();
    let x = logits.as_cuda_slice::<f32>()?;
    let p = params.as_cuda_slice::<f32>()?;
    let Rows {
        offset: xo,
        stride: xs,
    } = gpu::rows2("logits", l, rows, vocab, x.len())?;
    let Rows {
        offset: po,
        stride: ps,
    } = gpu::rows2("params", lp, rows, PARAM_COLS, p.len())?;
    let k = kernels(&dev)?;
    let out = unsafe { dev.alloc::<f32>(rows * vocab)? };
    let (xv, pv) = (x.slice(xo..), p.slice(po..));
    let (xs, ps, v) = (xs as u64, ps as u64, vocab as u32);
    let stream = dev.cuda_stream();
    let mut b = stream.launch_builder(&k.filter);
    b.arg(&xv).arg(&xs).arg(&pv).arg(&ps).arg(&out).arg(&v);
    let cfg = launch_config(rows, gpu::block_threads(vocab, gpu::MAX_THREADS));
    unsafe { b.launch(cfg) }.w()?;
    Ok(CudaStorage::wrap_cuda_slice(out, dev))
}

/// Filters like [`filter`], then draws one token per row: `[rows, 2]` f32 of (token id, its
/// probability). Greedy where the GREEDY column is non-zero, else the Philox inverse CDF with
/// u = uniform(seed, row_ids[row], step).
#[allow(clippy::too_many_arguments)]
pub(crate) fn sample(
    logits: &CudaStorage,
    l: &Layout,
    params: &CudaStorage,
    lp: &Layout,
    row_ids: &CudaStorage,
    lr: &Layout,
    rows: usize,
    vocab: usize,
    seed: u64,
    step: u64,
) -> Result<CudaStorage> {
    gpu::check_sizes(rows, vocab)?;
    let dev = logits.device.clone();
    let x = logits.as_cuda_slice::<f32>()?;
    let p = params.as_cuda_slice::<f32>()?;
    let r = row_ids.as_cuda_slice::<u32>()?;
    let Rows {
        offset: xo,
        stride: xs,
    } = gpu::rows2("logits", l, rows, vocab, x.len())?;
    let Rows {
        offset: po,
        stride: ps,
    } = gpu::rows2("params", lp, rows, PARAM_COLS, p.len())?;
    let Rows {
        offset: ro,
        stride: rs,
    } = gpu::rows1("row_ids", lr, rows, r.len())?;
    let k = kernels(&dev)?;
    let out = unsafe { dev.alloc::<f32>(rows * 2)? };
    let (xv, pv, rv) = (x.slice(xo..), p.slice(po..), r.slice(ro..));
    let (xs, ps, rs, v) = (xs as u64, ps as u64, rs as u64, vocab as u32);
    let (seed_lo, seed_hi) = (seed as u32, (seed >> 32) as u32);
    let (step_lo, step_hi) = (step as u32, (step >> 32) as u32);
    let stream = dev.cuda_stream();
    let mut b = stream.launch_builder(&k.sample);
    b.arg(&xv)
        .arg(&xs)
        .arg(&pv)
        .arg(&ps)
        .arg(&rv)
        .arg(&rs)
        .arg(&out)
        .arg(&v);
    b.arg(&seed_lo).arg(&seed_hi).arg(&step_lo).arg(&step_hi);
    let cfg = launch_config(rows, gpu::block_threads(vocab, gpu::MAX_THREADS));
    unsafe { b.launch(cfg) }.w()?;
    Ok(CudaStorage::wrap_cuda_slice(out, dev))
}

/// The logits `[rows, vocab]` (contiguous f32) after the repetition, frequency/presence and
/// length penalties and the optional bias (`[vocab]` or `[rows, vocab]`), from the history
/// `tokens` `[rows, width]` u32 of which the first `lens[row]` are used.
#[allow(clippy::too_many_arguments)]
pub(crate) fn penalties(
    logits: &CudaStorage,
    l: &Layout,
    tokens: &CudaStorage,
    lt: &Layout,
    lens: &CudaStorage,
    ll: &Layout,
    params: &CudaStorage,
    lp: &Layout,
    bias: Option<(&CudaStorage, &Layout)>,
    rows: usize,
    vocab: usize,
    width: usize,
) -> Result<CudaStorage> {
    gpu::check_sizes(rows, vocab)?;
    let dev = logits.device.clone();
    let x = logits.as_cuda_slice::<f32>()?;
    let t = tokens.as_cuda_slice::<u32>()?;
    let n = lens.as_cuda_slice::<u32>()?;
    let p = params.as_cuda_slice::<f32>()?;
    let Rows {
        offset: xo,
        stride: xs,
    } = gpu::rows2("logits", l, rows, vocab, x.len())?;
    // A history of width 0 has no rows to address: any offset into the token storage will do.
    let Rows {
        offset: to,
        stride: ts,
    } = if width == 0 {
        Rows {
            offset: 0,
            stride: 0,
        }
    } else {
        gpu::rows2("tokens", lt, rows, width, t.len())?
    };
    let Rows {
        offset: no,
        stride: ns,
    } = gpu::rows1("lens", ll, rows, n.len())?;
    let Rows {
        offset: po,
        stride: ps,
    } = gpu::rows2("params", lp, rows, PARAM_COLS, p.len())?;
    let (
        bias_slice,
        Rows {
            offset: bo,
            stride: bs,
        },
    ) = match bias {
        Some((b, lb)) => {
            let s = b.as_cuda_slice::<f32>()?;
            (s, gpu::bias_rows(lb, rows, vocab, s.len())?)
        }
        // Not read by the kernel (has_bias = 0); it still needs a valid pointer.
        None => (
            x,
            Rows {
                offset: xo,
                stride: 0,
            },
        ),
    };
    let width32 = gpu::as_u32("history width", width)?;
    let k = kernels(&dev)?;
    let out = unsafe { dev.alloc::<f32>(rows * vocab)? };
    let (xv, tv, nv, pv, bv) = (
        x.slice(xo..),
        t.slice(to..),
        n.slice(no..),
        p.slice(po..),
        bias_slice.slice(bo..),
    );
    let (xs, ts, ns, ps, bs) = (xs as u64, ts as u64, ns as u64, ps as u64, bs as u64);
    let has_bias = bias.is_some() as i32;
    let v = vocab as u32;
    let stream = dev.cuda_stream();
    let mut b = stream.launch_builder(&k.penalties);
    b.arg(&xv)
        .arg(&xs)
        .arg(&tv)
        .arg(&ts)
        .arg(&nv)
        .arg(&ns)
        .arg(&pv)
        .arg(&ps);
    b.arg(&bv)
        .arg(&bs)
        .arg(&has_bias)
        .arg(&out)
        .arg(&v)
        .arg(&width32);
    let cfg = launch_config(
        rows,
        gpu::block_threads(vocab.max(width * 8), gpu::MAX_THREADS),
    );
    unsafe { b.launch(cfg) }.w()?;
    Ok(CudaStorage::wrap_cuda_slice(out, dev))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// NVRTC compiles the kernels for an H100/H200 (compute capability 9.0) without any GPU:
    /// run with `LD_LIBRARY_PATH="$CUDA_TOOLCHAIN_NODRIVER_LIBS"` where no driver is installed.
    #[test]
    fn nvrtc_compiles_ptx_and_cubin_for_sm_90() -> Result<()> {
        let (major, _) = nvrtc_version()?;
        assert!(major >= 11, "NVRTC {major}.x");
        let Image::Ptx(ptx) = compile((9, 0), false)? else {
            panic!("asked for PTX")
        };
        assert!(
            ptx.contains(".target sm_90"),
            "PTX target:\n{}",
            &ptx[..ptx.len().min(600)]
        );
        for name in ["sk_filter_f32", "sk_sample_f32", "sk_penalties_f32"] {
            assert!(ptx.contains(&format!(".entry {name}(")), "no entry {name}");
        }
        let Image::Cubin(bin) = compile((9, 0), true)? else {
            panic!("asked for a cubin")
        };
        assert_eq!(&bin[..4], b"\x7fELF", "a cubin is an ELF image");
        Ok(())
    }

    #[test]
    fn cubin_only_when_the_driver_is_older_than_nvrtc() {
        assert!(!needs_cubin((13, 0), (13, 0)));
        assert!(!needs_cubin((13, 1), (13, 0)));
        assert!(needs_cubin((12, 9), (13, 0)));
        assert!(needs_cubin((13, 0), (13, 1)));
    }
}

/// Runs on a CUDA device when there is one; each test returns early, saying so, when
/// `Device::new_cuda(0)` fails (no GPU or no driver).
#[cfg(test)]
mod device_tests {
    use super::*;
    use candle_core::{Device, Storage, Tensor};

    const NINF: f32 = f32::NEG_INFINITY;

    fn device() -> Option<Device> {
        match Device::new_cuda(0) {
            Ok(d) => Some(d),
            Err(e) => {
                eprintln!("no CUDA device, skipping: {e}");
                None
            }
        }
    }

    fn with_cuda<R>(t: &Tensor, f: impl FnOnce(&CudaStorage, &Layout) -> Result<R>) -> Result<R> {
        let (s, l) = t.storage_and_layout();
        match &*s {
            Storage::Cuda(c) => f(c, l),
            _ => candle_core::bail!("not a CUDA tensor"),
        }
    }

    fn to_rows(s: CudaStorage, rows: usize, cols: usize) -> Result<Vec<Vec<f32>>> {
        let none = candle_core::op::BackpropOp::none();
        Tensor::from_storage(Storage::Cuda(s), (rows, cols), none, false).to_vec2::<f32>()
    }

    /// Parameter row: min_p, min_tokens, top_k, top_p, temperature, min_temperature, n, greedy.
    fn prm(v: [f32; 8], rows: usize, dev: &Device) -> Result<Tensor> {
        Tensor::from_vec(v.repeat(rows), (rows, 8), dev)
    }

    const OFF: [f32; 8] = [0.0, 32.0, 0.0, 1.0, 1.0, -1.0, 0.0, 0.0];

    #[test]
    fn filter_matches_hand_computed_rows() -> Result<()> {
        let Some(dev) = device() else { return Ok(()) };
        let x = Tensor::new(
            &[[1f32, 4.0, 2.0, 4.0, 3.0], [1.0, 2.0, 2.0, 2.0, 0.0]],
            &dev,
        )?;
        let mut top_k = OFF;
        top_k[2] = 2.0;
        let p = prm(top_k, 2, &dev)?;
        let out = with_cuda(&x, |xs, xl| {
            with_cuda(&p, |ps, pl| filter(xs, xl, ps, pl, 2, 5))
        })?;
        assert_eq!(
            to_rows(out, 2, 5)?,
            vec![
                vec![NINF, 4.0, NINF, 4.0, NINF],
                vec![NINF, 2.0, 2.0, 2.0, NINF]
            ]
        );
        // top-p 0.5 over probabilities 0.1 0.4 0.2 0.3 keeps ids 1 and 3
        let l: Vec<f32> = [0.1f32, 0.4, 0.2, 0.3].iter().map(|p| p.ln()).collect();
        let x = Tensor::from_vec(l.clone(), (1, 4), &dev)?;
        let mut top_p = OFF;
        top_p[3] = 0.5;
        let p = prm(top_p, 1, &dev)?;
        let out = with_cuda(&x, |xs, xl| {
            with_cuda(&p, |ps, pl| filter(xs, xl, ps, pl, 1, 4))
        })?;
        assert_eq!(to_rows(out, 1, 4)?, vec![vec![NINF, l[1], NINF, l[3]]]);
        Ok(())
    }

    #[test]
    fn sample_is_greedy_on_ties_and_never_draws_filtered_tokens() -> Result<()> {
        let Some(dev) = device() else { return Ok(()) };
        let x = Tensor::new(&[[0f32, 3.0, 3.0, NINF]], &dev)?;
        let mut greedy = OFF;
        greedy[7] = 1.0;
        let p = prm(greedy, 1, &dev)?;
        let ids = Tensor::new(&[0u32], &dev)?;
        let out = with_cuda(&x, |xs, xl| {
            with_cuda(&p, |ps, pl| {
                with_cuda(&ids, |is, il| sample(xs, xl, ps, pl, is, il, 1, 4, 1, 0))
            })
        })?;
        let r = to_rows(out, 1, 2)?;
        assert_eq!(r[0][0], 1.0);
        let e3 = 3f32.exp();
        assert!((r[0][1] - e3 / (1.0 + 2.0 * e3)).abs() < 1e-6, "{r:?}");

        let row = [NINF, 0.0, NINF, NINF, -20.0, NINF];
        let x = Tensor::from_vec(row.repeat(64), (64, 6), &dev)?;
        let p = prm(OFF, 64, &dev)?;
        let ids = Tensor::arange(0u32, 64, &dev)?;
        for step in 0..8 {
            let out = with_cuda(&x, |xs, xl| {
                with_cuda(&p, |ps, pl| {
                    with_cuda(&ids, |is, il| {
                        sample(xs, xl, ps, pl, is, il, 64, 6, 9, step)
                    })
                })
            })?;
            for r in to_rows(out, 64, 2)? {
                assert!(r[0] == 1.0 || r[0] == 4.0, "drew filtered token {}", r[0]);
            }
        }
        Ok(())
    }

    #[test]
    fn penalties_divide_per_occurrence_and_add_bias() -> Result<()> {
        let Some(dev) = device() else { return Ok(()) };
        let x = Tensor::new(&[[3f32, -2.0, 4.0, 1.0]], &dev)?;
        let tokens = Tensor::new(&[[1u32, 0, 1]], &dev)?;
        let lens = Tensor::new(&[3u32], &dev)?;
        // repetition 2, no decay, window 75, divide mode, no freq/presence/length
        let p = Tensor::new(&[[2f32, 0.0, 75.0, 0.0, 0.0, 0.0, 0.0, 3.0]], &dev)?;
        let bias = Tensor::new(&[0f32, 0.0, NINF, 0.5], &dev)?;
        let out = with_cuda(&x, |xs, xl| {
            with_cuda(&tokens, |ts, tl| {
                with_cuda(&lens, |ns, nl| {
                    with_cuda(&p, |ps, pl| {
                        with_cuda(&bias, |bs, bl| {
                            penalties(xs, xl, ts, tl, ns, nl, ps, pl, Some((bs, bl)), 1, 4, 3)
                        })
                    })
                })
            })
        })?;
        assert_eq!(to_rows(out, 1, 4)?, vec![vec![1.5, -0.5, NINF, 1.5]]);
        Ok(())
    }
}
