//! `sampler selftest`: the device against the CPU plain path as reference. Every golden case,
//! random batches of several shapes (up to `[256, 128256]`), and a distribution check of the
//! draw. Prints one line per check and a summary; any failure makes the command fail.

use std::path::Path;

use anyhow::Result;
use candle_core::{DType, Device, Tensor};
use sampler_core::{
    ExecPath, History, Mode, Sampler, SamplerBuilder, SamplerConfig, SamplingContext,
};
use statrs::distribution::{ChiSquared, ContinuousCDF};

use sampler_testkit::golden::{self, compare_logits, Case};
use sampler_testkit::suite::{self, Workload};

/// What to run.
pub struct SelftestOptions {
    pub golden_dir: Option<std::path::PathBuf>,
    /// The largest vocabulary of the random batches (the full run goes to 128256).
    pub max_vocab: usize,
}

/// Pass and fail counts.
#[derive(Default)]
pub struct Summary {
    pub passed: usize,
    pub failed: usize,
}

impl Summary {
    fn record(&mut self, name: &str, res: Result<String, String>) {
        match res {
            Ok(detail) => {
                self.passed += 1;
                println!(
                    "PASS {name}{}",
                    if detail.is_empty() {
                        String::new()
                    } else {
                        format!(": {detail}")
                    }
                );
            }
            Err(e) => {
                self.failed += 1;
                println!("FAIL {name}: {e}");
            }
        }
    }
}

/// docs/semantics.md#equality-rules: tokens must be identical except where two candidates' cumulative boundaries differ
/// by less than float rounding, at a rate below 0.1 %.
fn compare_tokens(a: &Tensor, b: &Tensor) -> Result<String, String> {
    let host = |t: &Tensor| {
        t.to_device(&Device::Cpu)
            .and_then(|t| t.to_dtype(DType::I64))
            .and_then(|t| t.flatten_all())
            .and_then(|t| t.to_vec1::<i64>())
    };
    let (a, b) = (
        host(a).map_err(|e| e.to_string())?,
        host(b).map_err(|e| e.to_string())?,
    );
    if a.len() != b.len() {
        return Err(format!("{} vs {} tokens", a.len(), b.len()));
    }
    let diff = a.iter().zip(&b).filter(|(x, y)| x != y).count();
    if diff * 1000 >= a.len().max(1) && diff > 0 {
        return Err(format!(
            "{diff} of {} tokens differ from the CPU reference",
            a.len()
        ));
    }
    Ok(format!("{diff} of {} tokens differ", a.len()))
}

struct Loaded {
    cfg: Result<SamplerConfig, String>,
    mode: Mode,
    logits: Tensor,
    history: Option<Vec<Vec<i64>>>,
}

fn load(case: &Case) -> Result<Loaded> {
    Ok(Loaded {
        cfg: case.config().map_err(|e| e.to_string()),
        mode: case.mode(),
        logits: case.raw_logits()?,
        history: case.raw_history()?,
    })
}

/// Runs one golden case on a path and device: processed logits (seed None) or tokens.
fn run_case(
    l: &Loaded,
    path: ExecPath,
    device: &Device,
    seed: Option<u64>,
) -> Result<Tensor, String> {
    let err = |e: &dyn std::fmt::Display| e.to_string();
    let cfg = l.cfg.clone()?;
    let mut s = SamplerBuilder::from_config(&cfg, l.mode)
        .path(path)
        .build()
        .map_err(|e| err(&e))?;
    let dims = l.logits.dims().to_vec();
    let logits = match (l.mode, dims.as_slice()) {
        (Mode::Nar, &[b, t, v]) => l.logits.reshape((b * t, v)),
        _ => Ok(l.logits.clone()),
    }
    .and_then(|x| x.to_device(device))
    .map_err(|e| err(&e))?;
    let mut ctx = SamplingContext::new(seed.unwrap_or(0));
    if let Some(rows) = &l.history {
        let history = match l.mode {
            Mode::Ar => History::from_padded_rows(rows, device),
            Mode::Nar => {
                let (b, t) = (rows.len(), rows.first().map_or(0, |r| r.len()));
                let flat: Vec<u32> = rows.iter().flatten().map(|&v| v as u32).collect();
                Tensor::from_vec(flat, (b, t), device)
                    .map_err(sampler_core::SamplerError::from)
                    .and_then(|codes| History::nar_from_previous_level(&codes))
            }
        }
        .map_err(|e| err(&e))?;
        ctx = ctx.with_history(history);
    }
    match seed {
        None => {
            let y = s.apply(&logits, &ctx).map_err(|e| err(&e))?;
            y.reshape(dims).map_err(|e| err(&e))
        }
        Some(_) => s
            .sample(&logits, &ctx)
            .map(|d| d.tokens)
            .map_err(|e| err(&e)),
    }
}

fn golden_case(case: &Case, device: &Device) -> Result<String, String> {
    let l = load(case).map_err(|e| e.to_string())?;
    match case.kind() {
        "apply" => {
            let got = run_case(&l, ExecPath::Fused, device, None)?;
            golden::check_apply(case, &got)?;
            let reference = run_case(&l, ExecPath::Plain, &Device::Cpu, None)?;
            compare_logits(&got, &reference, 1e-5, 1e-5)
                .map_err(|e| format!("vs CPU plain: {e}"))?;
            Ok(String::new())
        }
        "distribution" => {
            let seeds = case.seeds();
            let mut per_seed = Vec::new();
            let mut notes = Vec::new();
            for &s in &seeds {
                let got = run_case(&l, ExecPath::Fused, device, Some(s))?;
                let reference = run_case(&l, ExecPath::Plain, &Device::Cpu, Some(s))?;
                notes.push(compare_tokens(&got, &reference)?);
                let host = got
                    .to_dtype(DType::I64)
                    .and_then(|t| t.to_vec1::<i64>())
                    .map_err(|e| e.to_string())?;
                per_seed.push(host);
            }
            let again = run_case(&l, ExecPath::Fused, device, Some(seeds[0]))?;
            let again = again
                .to_dtype(DType::I64)
                .and_then(|t| t.to_vec1::<i64>())
                .map_err(|e| e.to_string())?;
            if again != per_seed[0] {
                return Err("the same seed gave different tokens".into());
            }
            golden::check_distribution(case, &per_seed)?;
            Ok(notes.join("; "))
        }
        "reject" => {
            let seed = (case.meta["command"].as_str() == Some("sample")).then_some(1);
            match run_case(&l, ExecPath::Fused, device, seed) {
                Ok(_) => Err("invalid input was accepted".into()),
                Err(e) => Ok(format!("rejected: {e}")),
            }
        }
        other => Err(format!("unknown kind {other}")),
    }
}

fn random_batch(w: &Workload, device: &Device) -> Result<String, String> {
    let err = |e: anyhow::Error| e.to_string();
    let on_device = suite::inputs(w, device, 11).map_err(err)?;
    let on_cpu = suite::inputs(w, &Device::Cpu, 11).map_err(err)?;
    let ctx = |inp: &suite::Inputs| {
        let c = SamplingContext::new(5)
            .with_step(3)
            .with_null_logits(inp.null_logits.clone());
        match &inp.history {
            Some(h) => c.with_history(h.clone()),
            None => c,
        }
    };
    let mut fused = suite::sampler(w, ExecPath::Fused).map_err(err)?;
    let mut plain = suite::sampler(w, ExecPath::Plain).map_err(err)?;
    let got = fused
        .apply(&on_device.logits, &ctx(&on_device))
        .map_err(|e| e.to_string())?;
    let reference = plain
        .apply(&on_cpu.logits, &ctx(&on_cpu))
        .map_err(|e| e.to_string())?;
    compare_logits(&got, &reference, 1e-5, 1e-5)?;
    let t1 = fused
        .sample(&on_device.logits, &ctx(&on_device))
        .map_err(|e| e.to_string())?;
    let t2 = plain
        .sample(&on_cpu.logits, &ctx(&on_cpu))
        .map_err(|e| e.to_string())?;
    compare_tokens(&t1.tokens, &t2.tokens)
}

/// Chi-square of the device's multinomial draw: 20 000 rows of one 16-token distribution,
/// alpha = 1e-6 (a correct sampler fails one run in a million).
fn distribution_check(device: &Device) -> Result<String, String> {
    let err = |e: &dyn std::fmt::Display| e.to_string();
    let weights: Vec<f64> = (1..=16).map(|i| 1.0 / i as f64).collect();
    let total: f64 = weights.iter().sum();
    let probs: Vec<f64> = weights.iter().map(|w| w / total).collect();
    let logits: Vec<f32> = probs.iter().map(|p| p.ln() as f32).collect();
    let n = 20_000;
    let x = Tensor::from_vec(logits.repeat(n), (n, 16), device).map_err(|e| err(&e))?;
    let mut s: Sampler = SamplerBuilder::new(Mode::Ar).build().map_err(|e| err(&e))?;
    let d = s
        .sample(&x, &SamplingContext::new(2024))
        .map_err(|e| err(&e))?;
    let toks = d
        .tokens
        .to_device(&Device::Cpu)
        .and_then(|t| t.to_vec1::<u32>())
        .map_err(|e| err(&e))?;
    let mut counts = [0f64; 16];
    toks.iter().for_each(|&t| counts[t as usize] += 1.0);
    let stat: f64 = counts
        .iter()
        .zip(&probs)
        .map(|(c, p)| (c - p * n as f64).powi(2) / (p * n as f64))
        .sum();
    let critical = ChiSquared::new(15.0)
        .map_err(|e| err(&e))?
        .inverse_cdf(1.0 - 1e-6);
    if stat < critical {
        Ok(format!("chi-square {stat:.1} < {critical:.1}"))
    } else {
        Err(format!(
            "chi-square {stat:.1} >= {critical:.1}, counts {counts:?}"
        ))
    }
}

/// Runs everything; prints a line per check and the summary.
pub fn run(device: &Device, device_name: &str, opts: &SelftestOptions) -> Result<Summary> {
    let mut sum = Summary::default();
    let dir = opts.golden_dir.clone().unwrap_or_else(golden::golden_dir);
    println!(
        "selftest on {device_name}: reference = CPU plain path; golden cases from {}",
        dir.display()
    );
    let cases = golden::cases_in(Path::new(&dir))?;
    if cases.is_empty() {
        sum.record("golden", Err(format!("no cases in {}", dir.display())));
    }
    for case in &cases {
        sum.record(&format!("golden {}", case.name), golden_case(case, device));
    }
    let mut workloads = suite::workloads();
    // Every sampler of the matrix on a batch with a history, through the device's fused path.
    for (name, config) in suite::matrix_samplers() {
        let mut w = suite::llm(&name, 16, 4096, 64).with_config(config);
        w.name = format!("sampler {name}");
        workloads.push(w);
    }
    for w in workloads.iter().filter(|w| w.vocab <= opts.max_vocab) {
        sum.record(
            &format!("random {} [{}, {}]", w.name, w.rows, w.vocab),
            random_batch(w, device),
        );
    }
    sum.record("distribution of the draw", distribution_check(device));
    println!("selftest: {} passed, {} failed", sum.passed, sum.failed);
    Ok(sum)
}
