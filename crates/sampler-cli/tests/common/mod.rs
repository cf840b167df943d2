//! Reading the golden cases of ../shared/golden and judging outputs by their README's rules.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use candle_core::{DType, Tensor};
use serde_json::Value;

/// The golden folder: $SAMPLER_GOLDEN_DIR, or ../shared/golden beside the repository.
pub fn golden_dir() -> PathBuf {
    if let Ok(d) = std::env::var("SAMPLER_GOLDEN_DIR") {
        return PathBuf::from(d);
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/golden")
}

pub struct Case {
    pub name: String,
    pub dir: PathBuf,
    pub meta: Value,
}

impl Case {
    pub fn kind(&self) -> &str {
        self.meta["kind"].as_str().unwrap()
    }
    pub fn mode(&self) -> &str {
        self.meta["mode"].as_str().unwrap_or("ar")
    }
    pub fn pass_mode_flag(&self) -> bool {
        self.meta["pass_mode_flag"].as_bool().unwrap_or(true)
    }
    pub fn path(&self, f: &str) -> PathBuf {
        self.dir.join(f)
    }
    pub fn history(&self) -> Option<PathBuf> {
        let p = self.path("history.npy");
        p.exists().then_some(p)
    }
    pub fn f64(&self, key: &str) -> f64 {
        self.meta[key]
            .as_f64()
            .unwrap_or_else(|| panic!("{}: meta has no {key}", self.name))
    }
    pub fn seeds(&self) -> Vec<u64> {
        self.meta["seeds"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_u64().unwrap())
            .collect()
    }
}

/// Every case folder, sorted by name. Panics when the folder is missing: CI must have it.
pub fn cases() -> Vec<Case> {
    let dir = golden_dir();
    let mut out = Vec::new();
    for e in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("golden dir {}: {e}", dir.display()))
    {
        let e = e.unwrap();
        if !e.file_type().unwrap().is_dir() {
            continue;
        }
        let meta: Value =
            serde_json::from_str(&std::fs::read_to_string(e.path().join("meta.json")).unwrap())
                .unwrap();
        out.push(Case {
            name: e.file_name().to_string_lossy().into_owned(),
            dir: e.path(),
            meta,
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    assert!(
        out.len() >= 38,
        "expected the 38 golden cases, found {}",
        out.len()
    );
    out
}

/// Checks an `apply` output against expected.npy (README: exact -inf set, no NaN/+inf,
/// |out - expected| <= atol + rtol |expected|).
pub fn check_apply(case: &Case, out: &Tensor) -> Result<(), String> {
    let expected = Tensor::read_npy(case.path("expected.npy")).unwrap();
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
    let (atol, rtol) = (case.f64("atol") as f32, case.f64("rtol") as f32);
    let o = out.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let e = expected.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let vocab = *expected.dims().last().unwrap();
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
        .unwrap()
        .to_vec2::<f32>()
        .unwrap();
    let rows = probs.len();
    let vocab = probs[0].len();
    for toks in per_seed {
        if toks.len() != rows {
            return Err(format!("{} tokens for {rows} rows", toks.len()));
        }
        if let Some(t) = toks.iter().find(|&&t| t < 0 || t as usize >= vocab) {
            return Err(format!("token {t} out of range"));
        }
    }
    let greedy = case.meta["greedy"].as_bool().unwrap_or(false);
    if greedy {
        for toks in per_seed {
            for (r, &t) in toks.iter().enumerate() {
                let row = &probs[r];
                let best = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
                let argmax = row.iter().position(|&p| p == best).unwrap();
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
