//! Reading the CLI's inputs (npy in, docs/semantics.md#cli-contract) and writing its outputs atomically, so that a
//! failed run leaves no output file behind.

use std::path::Path;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use sampler_core::{History, Mode, SamplerConfig};

/// The logits as `[rows, vocab]` f32 on `device`, plus the shape of the batch they came from.
pub struct Batch {
    pub logits: Tensor,
    /// `[rows]` (ar) or `[batch, T]` (nar): the shape of the token output.
    pub token_shape: Vec<usize>,
    pub history: Option<History>,
    /// `--null-logits`: the unconditional logits for classifier-free guidance, `[rows, vocab]`.
    pub null_logits: Option<Tensor>,
    /// `--attentions`: attention scores for entropix, `[layers, heads, q, k]` or
    /// `[rows, layers, heads, q, k]` (nar: rows = batch * T).
    pub attentions: Option<Tensor>,
}

pub fn read_config(path: &Path) -> Result<SamplerConfig> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading config {}", path.display()))?;
    Ok(SamplerConfig::from_json(&text)?)
}

fn read_npy(path: &Path, what: &str) -> Result<Tensor> {
    Tensor::read_npy(path).with_context(|| format!("reading {what} {}", path.display()))
}

/// Reads logits and optional history for a mode, checking shapes, dtypes and id ranges.
pub fn read_batch(
    logits: &Path,
    history: Option<&Path>,
    mode: Mode,
    device: &Device,
) -> Result<Batch> {
    let raw = read_npy(logits, "logits")?;
    match raw.dtype() {
        DType::F32 | DType::F16 | DType::BF16 | DType::F64 => {}
        other => bail!("logits must be float32 (or another float type), got {other:?}"),
    }
    let (rows, vocab, token_shape) = match (mode, raw.dims()) {
        (Mode::Ar, &[r, v]) => (r, v, vec![r]),
        (Mode::Ar, d) => bail!("ar logits must have rank 2 [rows, vocab], got shape {d:?}"),
        (Mode::Nar, &[b, t, v]) => (b * t, v, vec![b, t]),
        (Mode::Nar, d) => bail!("nar logits must have rank 3 [batch, T, vocab], got shape {d:?}"),
    };
    if rows == 0 || vocab == 0 {
        bail!("logits are empty: shape {:?}", raw.dims());
    }
    let history = match history {
        None => None,
        Some(p) => Some(read_history(p, mode, &token_shape, vocab, device)?),
    };
    let logits = raw
        .to_dtype(DType::F32)?
        .reshape((rows, vocab))?
        .to_device(device)?;
    Ok(Batch {
        logits,
        token_shape,
        history,
        null_logits: None,
        attentions: None,
    })
}

fn read_history(
    path: &Path,
    mode: Mode,
    token_shape: &[usize],
    vocab: usize,
    device: &Device,
) -> Result<History> {
    let raw = read_npy(path, "history")?;
    let h = match raw.dtype() {
        DType::I64 | DType::I32 | DType::I16 | DType::U32 | DType::U8 => {
            raw.to_dtype(DType::I64)?
        }
        other => bail!("history must be int64 or int32, got {other:?}"),
    };
    let rows = h
        .to_vec2::<i64>()
        .map_err(|_| anyhow::anyhow!("history must have rank 2, got shape {:?}", raw.dims()))?;
    match mode {
        Mode::Ar => {
            if rows.len() != token_shape[0] {
                bail!(
                    "history has {} rows but the logits have {}",
                    rows.len(),
                    token_shape[0]
                );
            }
        }
        Mode::Nar => {
            if raw.dims() != token_shape {
                bail!(
                    "nar history must be [batch, T] = {token_shape:?}, got {:?}",
                    raw.dims()
                );
            }
            if let Some(&bad) = rows.iter().flatten().find(|&&t| t < 0) {
                bail!("nar history (previous level codes) holds a negative id {bad}");
            }
        }
    }
    if let Some(&bad) = rows.iter().flatten().find(|&&t| t >= vocab as i64) {
        bail!("history token id {bad} is out of range for vocabulary size {vocab}");
    }
    Ok(match mode {
        Mode::Ar => History::from_padded_rows(&rows, device)?,
        Mode::Nar => History::nar_from_previous_level(&h.to_dtype(DType::U32)?.to_device(device)?)?,
    })
}

/// Reads `--null-logits`: float, the same shape as the logits file.
pub fn read_null_logits(path: &Path, batch: &Batch, device: &Device) -> Result<Tensor> {
    let raw = read_npy(path, "null logits")?;
    if !raw.dtype().is_float() {
        bail!(
            "null logits must be float32 (or another float type), got {:?}",
            raw.dtype()
        );
    }
    let (rows, vocab) = batch.logits.dims2()?;
    let mut want = batch.token_shape.clone();
    want.push(vocab);
    if raw.dims() != want.as_slice() {
        bail!(
            "null logits must have the logits' shape {want:?}, got {:?}",
            raw.dims()
        );
    }
    Ok(raw
        .to_dtype(DType::F32)?
        .reshape((rows, vocab))?
        .to_device(device)?)
}

/// Reads `--attentions`: float scores of rank 4 (shared) or 5 (per row); the sampler checks
/// the rest.
pub fn read_attentions(path: &Path, device: &Device) -> Result<Tensor> {
    let raw = read_npy(path, "attentions")?;
    if !raw.dtype().is_float() {
        bail!(
            "attentions must be float32 (or another float type), got {:?}",
            raw.dtype()
        );
    }
    if !matches!(raw.rank(), 4 | 5) {
        bail!("attentions must be [layers, heads, q, k] or [rows, layers, heads, q, k], got shape {:?}", raw.dims());
    }
    Ok(raw.to_dtype(DType::F32)?.to_device(device)?)
}

/// Writes `t` as npy to a temporary file beside `out`, then renames it: a reader never sees a
/// partial file, and a failure leaves none.
pub fn write_npy_atomic(t: &Tensor, out: &Path) -> Result<()> {
    let dir = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = out
        .file_name()
        .context("output path has no file name")?
        .to_string_lossy();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let res = t
        .write_npy(&tmp)
        .map_err(anyhow::Error::from)
        .and_then(|_| {
            std::fs::rename(&tmp, out).with_context(|| format!("writing {}", out.display()))
        });
    if res.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    res
}
