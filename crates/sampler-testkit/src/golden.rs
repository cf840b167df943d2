//! The golden cases of `tests/golden`: loading them (config, mode, logits, history, expected
//! outputs) and judging outputs by the rules of their README. One loader for the library and
//! CLI tests, the fused-against-plain tests, `sampler selftest` and the kernels' host harness.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use candle_core::{DType, Device, Tensor};
use sampler_core::{History, Mode, SamplerConfig};
use serde_json::Value;

/// The number of golden cases the repository holds.
pub const CASES: usize = 38;

/// The golden folder: `$SAMPLER_GOLDEN_DIR`, or the repository's `tests/golden`.
pub fn golden_dir() -> PathBuf {
    if let Ok(d) = std::env::var("SAMPLER_GOLDEN_DIR") {
        return PathBuf::from(d);
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/golden")
}

/// One case folder and its meta.json.
pub struct Case {
    /// The folder's name.
    pub name: String,
    /// The folder.
    pub dir: PathBuf,
    /// meta.json.
    pub meta: Value,
}

impl Case {
    /// `apply`, `distribution` or `reject`.
    pub fn kind(&self) -> &str {
        self.meta["kind"].as_str().unwrap_or("")
    }
    /// `ar` or `nar` as written in meta.json.
    pub fn mode_name(&self) -> &str {
        self.meta["mode"].as_str().unwrap_or("ar")
    }
    /// The mode.
    pub fn mode(&self) -> Mode {
        if self.mode_name() == "nar" {
            Mode::Nar
        } else {
            Mode::Ar
        }
    }
    /// Whether the CLI is given `--mode`.
    pub fn pass_mode_flag(&self) -> bool {
        self.meta["pass_mode_flag"].as_bool().unwrap_or(true)
    }
    /// A file of the case.
    pub fn path(&self, f: &str) -> PathBuf {
        self.dir.join(f)
    }
    /// history.npy, when the case has one.
    pub fn history_path(&self) -> Option<PathBuf> {
        let p = self.path("history.npy");
        p.exists().then_some(p)
    }
    /// The parsed config (reject cases may hold an invalid one).
    pub fn config(&self) -> anyhow::Result<SamplerConfig> {
        let text = std::fs::read_to_string(self.path("config.json"))
            .with_context(|| format!("{}: config.json", self.name))?;
        Ok(SamplerConfig::from_json(&text)?)
    }
    /// The logits as stored: `[rows, vocab]` (ar) or `[batch, T, vocab]` (nar), f32.
    pub fn raw_logits(&self) -> anyhow::Result<Tensor> {
        Ok(Tensor::read_npy(self.path("logits.npy"))?.to_dtype(DType::F32)?)
    }
    /// The logits as the chain sees them, `[rows, vocab]` f32 on `device`.
    pub fn logits(&self, device: &Device) -> anyhow::Result<Tensor> {
        let raw = self.raw_logits()?;
        let vocab = *raw.dims().last().unwrap_or(&0);
        Ok(raw.reshape(((), vocab))?.to_device(device)?)
    }
    /// The history as stored, i64 (ar: `[rows, H]` with -1 padding; nar: `[batch, T]`).
    pub fn raw_history(&self) -> anyhow::Result<Option<Vec<Vec<i64>>>> {
        match self.history_path() {
            None => Ok(None),
            Some(p) => Ok(Some(
                Tensor::read_npy(p)?
                    .to_dtype(DType::I64)?
                    .to_vec2::<i64>()?,
            )),
        }
    }
    /// The history as the chain sees it, on `device`.
    pub fn history(&self, device: &Device) -> anyhow::Result<Option<History>> {
        let Some(rows) = self.raw_history()? else {
            return Ok(None);
        };
        Ok(Some(match self.mode() {
            Mode::Ar => History::from_padded_rows(&rows, device)?,
            Mode::Nar => {
                let (b, t) = (rows.len(), rows.first().map_or(0, |r| r.len()));
                let flat: Vec<u32> = rows.iter().flatten().map(|&v| v as u32).collect();
                History::nar_from_previous_level(&Tensor::from_vec(flat, (b, t), device)?)?
            }
        }))
    }
    /// expected.npy reshaped to `[rows, vocab]`, host rows.
    pub fn expected_rows(&self) -> anyhow::Result<Vec<Vec<f32>>> {
        let e = Tensor::read_npy(self.path("expected.npy"))?.to_dtype(DType::F32)?;
        let vocab = *e.dims().last().unwrap_or(&0);
        Ok(e.reshape(((), vocab))?.to_vec2::<f32>()?)
    }
    /// A numeric meta field, 1e-5 when absent (the README's default tolerance).
    pub fn tolerance(&self, key: &str) -> f32 {
        self.meta[key].as_f64().unwrap_or(1e-5) as f32
    }
    /// The seeds of a distribution case.
    pub fn seeds(&self) -> Vec<u64> {
        let seeds = self.meta["seeds"].as_array();
        seeds
            .map(|a| a.iter().filter_map(|s| s.as_u64()).collect())
            .unwrap_or_default()
    }
    /// Whether a distribution case is greedy.
    pub fn greedy(&self) -> bool {
        self.meta["greedy"].as_bool().unwrap_or(false)
    }
}

/// Every case folder of `dir`, sorted by name.
pub fn cases_in(dir: &Path) -> anyhow::Result<Vec<Case>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).with_context(|| format!("golden dir {}", dir.display()))? {
        let e = e?;
        if !e.file_type()?.is_dir() {
            continue;
        }
        let meta_path = e.path().join("meta.json");
        let text = std::fs::read_to_string(&meta_path)
            .with_context(|| format!("reading {}", meta_path.display()))?;
        let meta: Value = serde_json::from_str(&text)
            .with_context(|| format!("parsing {}", meta_path.display()))?;
        let name = e.file_name().to_string_lossy().into_owned();
        out.push(Case {
            name,
            dir: e.path(),
            meta,
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// Every case of [`golden_dir`]; an error when the folder is missing or incomplete.
pub fn cases() -> anyhow::Result<Vec<Case>> {
    let out = cases_in(&golden_dir())?;
    if out.len() < CASES {
        bail!("expected the {CASES} golden cases, found {}", out.len());
    }
    Ok(out)
}

/// The cases of one kind (`apply`, `distribution`, `reject`).
pub fn cases_of(kind: &str) -> anyhow::Result<Vec<Case>> {
    Ok(cases()?.into_iter().filter(|c| c.kind() == kind).collect())
}

/// Judges an `apply` output against expected.npy with the case's tolerances.
pub fn check_apply(case: &Case, out: &Tensor) -> Result<(), String> {
    let expected = Tensor::read_npy(case.path("expected.npy")).map_err(|e| e.to_string())?;
    compare_logits(
        out,
        &expected,
        case.tolerance("atol"),
        case.tolerance("rtol"),
    )
}

fn host_f32(t: &Tensor) -> Result<Vec<f32>, String> {
    let t = t.to_device(&Device::Cpu).and_then(|t| t.flatten_all());
    t.and_then(|t| t.to_vec1::<f32>())
        .map_err(|e| e.to_string())
}

/// The equality rule of the golden README: the -inf sets are equal, there is no NaN or +inf,
/// and every other entry satisfies `|out - expected| <= atol + rtol * |expected|`.
pub fn compare_logits(out: &Tensor, expected: &Tensor, atol: f32, rtol: f32) -> Result<(), String> {
    if out.dtype() != DType::F32 {
        return Err(format!("output dtype {:?}", out.dtype()));
    }
    if out.dims() != expected.dims() {
        return Err(format!(
            "shape {:?}, expected {:?}",
            out.dims(),
            expected.dims()
        ));
    }
    let o = host_f32(out)?;
    let e = host_f32(expected)?;
    let vocab = *expected.dims().last().unwrap_or(&1);
    for (i, (a, b)) in o.iter().zip(&e).enumerate() {
        let at = (i / vocab, i % vocab);
        if a.is_nan() || *a == f32::INFINITY {
            return Err(format!("{a} at {at:?}"));
        }
        if (*a == f32::NEG_INFINITY) != (*b == f32::NEG_INFINITY) {
            return Err(format!("-inf mismatch at {at:?}: got {a}, expected {b}"));
        }
        if b.is_finite() && (a - b).abs() > atol + rtol * b.abs() {
            return Err(format!("value at {at:?}: got {a}, expected {b}"));
        }
    }
    Ok(())
}

/// ln P(X = k) for X ~ Binomial(n, p).
fn ln_pmf(n: u64, k: u64, p: f64) -> f64 {
    use statrs::function::gamma::ln_gamma;
    if p <= 0.0 {
        return if k == 0 { 0.0 } else { f64::NEG_INFINITY };
    }
    if p >= 1.0 {
        return if k == n { 0.0 } else { f64::NEG_INFINITY };
    }
    let (n, kf) = (n as f64, k as f64);
    ln_gamma(n + 1.0) - ln_gamma(kf + 1.0) - ln_gamma(n - kf + 1.0)
        + kf * p.ln()
        + (n - kf) * (1.0 - p).ln()
}

/// Exact two-sided binomial p-value: the total probability of outcomes no more likely than `k`.
pub fn binomial_two_sided(n: u64, k: u64, p: f64) -> f64 {
    let at = ln_pmf(n, k, p);
    let tol = 1e-7; // relative slack, as in the usual exact-test implementations
    (0..=n)
        .map(|j| ln_pmf(n, j, p))
        .filter(|&l| l <= at + tol)
        .map(f64::exp)
        .sum::<f64>()
        .min(1.0)
}

/// Judges the tokens of a `distribution` case, one `[rows]` i64 vector per seed (README rules).
pub fn check_distribution(case: &Case, per_seed: &[Vec<i64>]) -> Result<(), String> {
    let probs = Tensor::read_npy(case.path("expected_probs.npy"))
        .and_then(|t| t.to_vec2::<f32>())
        .map_err(|e| e.to_string())?;
    let rows = probs.len();
    let vocab = probs.first().map_or(0, |r| r.len());
    for toks in per_seed {
        if toks.len() != rows {
            return Err(format!("{} tokens for {rows} rows", toks.len()));
        }
        if let Some(t) = toks.iter().find(|&&t| t < 0 || t as usize >= vocab) {
            return Err(format!("token {t} out of range"));
        }
    }
    if case.greedy() {
        for toks in per_seed {
            for (r, &t) in toks.iter().enumerate() {
                let row = &probs[r];
                let best = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
                let argmax = row.iter().position(|&p| p == best).unwrap_or(0);
                if t as usize != argmax {
                    return Err(format!("row {r}: greedy token {t}, argmax {argmax}"));
                }
            }
        }
        return Ok(());
    }
    // No token of probability 0.
    for toks in per_seed {
        for (r, &t) in toks.iter().enumerate() {
            if probs[r][t as usize] == 0.0 {
                return Err(format!("row {r}: drew token {t} of probability 0"));
            }
        }
    }
    // Pool all seeds per distinct distribution.
    let mut groups: Vec<(Vec<f32>, Vec<u64>, u64)> = Vec::new();
    for toks in per_seed {
        for (r, &t) in toks.iter().enumerate() {
            let g = match groups.iter().position(|g| g.0 == probs[r]) {
                Some(g) => g,
                None => {
                    groups.push((probs[r].clone(), vec![0; vocab], 0));
                    groups.len() - 1
                }
            };
            groups[g].1[t as usize] += 1;
            groups[g].2 += 1;
        }
    }
    let expected_groups = case.meta["distinct_rows"]
        .as_u64()
        .unwrap_or(groups.len() as u64) as usize;
    if groups.len() != expected_groups {
        return Err(format!(
            "{} distinct rows, meta says {expected_groups}",
            groups.len()
        ));
    }
    let cells: usize = groups
        .iter()
        .map(|g| g.0.iter().filter(|&&p| p > 0.0).count())
        .sum();
    let alpha = case.meta["alpha"].as_f64().unwrap_or(1e-6) / cells as f64;
    for (gi, (p, counts, n)) in groups.iter().enumerate() {
        for (tok, (&pt, &c)) in p.iter().zip(counts).enumerate() {
            if pt == 0.0 {
                continue;
            }
            let pv = binomial_two_sided(*n, c, pt as f64);
            if pv < alpha {
                return Err(format!(
                    "distribution {gi} token {tok}: {c} of {n} draws, p = {pt}, p-value {pv:.3e} < {alpha:.1e}"
                ));
            }
        }
    }
    Ok(())
}
