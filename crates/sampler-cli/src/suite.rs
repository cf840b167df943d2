//! The benchmark matrix of `sampler bench --suite` (and of the criterion benches): the
//! workloads users run, every execution path, and the baseline a candle user has today
//! (candle-transformers' `LogitsProcessor`, one row at a time, plus `apply_repeat_penalty`).

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor};
use candle_transformers::generation::{LogitsProcessor as BaselineProcessor, Sampling};
use rand::{rngs::StdRng, Rng, SeedableRng};
use sampler_core::{
    ExecPath, History, Mode, Sampler, SamplerBuilder, SamplerConfig, SamplingContext,
};
use serde::Serialize;

/// One benchmark shape with its sampler settings.
#[derive(Clone, Debug)]
pub struct Workload {
    pub name: &'static str,
    pub rows: usize,
    pub vocab: usize,
    /// AR: tokens of history per row. NAR: the sequence length T (rows = batch * T).
    pub history: usize,
    pub mode: Mode,
    pub config: SamplerConfig,
}

/// The LLM settings of the targets: top-k 50, top-p 0.9, min-p 0.05, temperature 0.8.
pub fn llm_config() -> SamplerConfig {
    SamplerConfig {
        top_k: 50,
        top_p: 0.9,
        min_p: 0.05,
        temperature: 0.8,
        ..SamplerConfig::default()
    }
}

/// The suite: VALL-E AR `[8, 1025]` with a 300-token history, VALL-E NAR `[6000, 1024]`
/// (8 sequences x 750 positions), LLM `[32, 32000]` and `[256, 128256]`.
pub fn workloads() -> Vec<Workload> {
    vec![
        Workload {
            name: "vall-e AR",
            rows: 8,
            vocab: 1025,
            history: 300,
            mode: Mode::Ar,
            config: SamplerConfig::vall_e_ar(),
        },
        Workload {
            name: "vall-e NAR",
            rows: 6000,
            vocab: 1024,
            history: 750,
            mode: Mode::Nar,
            config: SamplerConfig::vall_e_nar(),
        },
        Workload {
            name: "LLM 32k",
            rows: 32,
            vocab: 32000,
            history: 0,
            mode: Mode::Ar,
            config: llm_config(),
        },
        Workload {
            name: "LLM 128k",
            rows: 256,
            vocab: 128256,
            history: 0,
            mode: Mode::Ar,
            config: llm_config(),
        },
    ]
}

/// Deterministic inputs of a workload: logits ~ N(0, 3²) and random history ids.
pub struct Inputs {
    pub logits: Tensor,
    pub history: Option<History>,
    /// The history of each row as the baseline sees it (host ids).
    pub host_history: Vec<Vec<u32>>,
}

fn normal(rng: &mut StdRng) -> f32 {
    // Box-Muller; 1 - u keeps the logarithm finite.
    let u: f32 = 1.0 - rng.random::<f32>();
    let v: f32 = rng.random::<f32>();
    (-2.0 * u.ln()).sqrt() * (std::f32::consts::TAU * v).cos()
}

pub fn inputs(w: &Workload, device: &Device, seed: u64) -> Result<Inputs> {
    let mut rng = StdRng::seed_from_u64(seed);
    let logits: Vec<f32> = (0..w.rows * w.vocab)
        .map(|_| 3.0 * normal(&mut rng))
        .collect();
    let logits = Tensor::from_vec(logits, (w.rows, w.vocab), device)?;
    let codes = (w.vocab - 1) as u32; // never the stop token
    let (history, host_history) = match w.mode {
        Mode::Ar if w.history == 0 => (None, vec![Vec::new(); w.rows]),
        Mode::Ar => {
            let h: Vec<Vec<u32>> = (0..w.rows)
                .map(|_| (0..w.history).map(|_| rng.random_range(0..codes)).collect())
                .collect();
            let padded: Vec<Vec<i64>> = h
                .iter()
                .map(|r| r.iter().map(|&t| t as i64).collect())
                .collect();
            (Some(History::from_padded_rows(&padded, device)?), h)
        }
        Mode::Nar => {
            let t = w.history;
            let batch = w.rows / t;
            let prev: Vec<u32> = (0..batch * t).map(|_| rng.random_range(0..codes)).collect();
            let host = (0..w.rows)
                .map(|r| prev[(r / t) * t..(r / t) * t + r % t].to_vec())
                .collect();
            let prev = Tensor::from_vec(prev, (batch, t), device)?;
            (Some(History::nar_from_previous_level(&prev)?), host)
        }
    };
    Ok(Inputs {
        logits,
        history,
        host_history,
    })
}

/// Median, minimum and count of the timed iterations of one cell.
#[derive(Clone, Debug, Serialize)]
pub struct Timing {
    pub median_s: f64,
    pub min_s: f64,
    pub iters: usize,
}

/// Times `step` after one warm-up call: at least `min_iters` and at most `max_iters` runs, and
/// no more once `budget` is spent.
pub fn time_it(
    min_iters: usize,
    max_iters: usize,
    budget: Duration,
    mut step: impl FnMut(usize) -> Result<()>,
) -> Result<Timing> {
    step(0)?;
    let mut times = Vec::new();
    let start = Instant::now();
    while times.len() < max_iters.max(1)
        && (times.len() < min_iters.max(1) || start.elapsed() < budget)
    {
        let t0 = Instant::now();
        step(times.len() + 1)?;
        times.push(t0.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    Ok(Timing {
        median_s: times[times.len() / 2],
        min_s: times[0],
        iters: times.len(),
    })
}

/// The sampler of a workload on one path.
pub fn sampler(w: &Workload, path: ExecPath) -> Result<Sampler> {
    Ok(SamplerBuilder::from_config(&w.config, w.mode)
        .path(path)
        .build()?)
}

/// One step of our sampler: chain + draw, tokens left on the device, the device synchronised.
pub fn our_step(s: &mut Sampler, inp: &Inputs, seed: u64, step: usize) -> Result<Tensor> {
    let mut ctx = SamplingContext::new(seed)
        .with_step(step as u64)
        .with_validation(false);
    if let Some(h) = &inp.history {
        ctx = ctx.with_history(h.clone());
    }
    let d = s.sample(&inp.logits, &ctx)?;
    inp.logits.device().synchronize()?;
    Ok(d.tokens)
}

/// The baseline's settings for a config: candle-transformers has no min-p, no decay or window.
pub fn baseline_sampling(c: &SamplerConfig) -> Sampling {
    let temperature = c.temperature as f64;
    if c.temperature <= 0.0 {
        return Sampling::ArgMax;
    }
    match (c.top_k > 0, c.top_p < 1.0) {
        (true, true) => Sampling::TopKThenTopP {
            k: c.top_k as usize,
            p: c.top_p as f64,
            temperature,
        },
        (true, false) => Sampling::TopK {
            k: c.top_k as usize,
            temperature,
        },
        (false, true) => Sampling::TopP {
            p: c.top_p as f64,
            temperature,
        },
        (false, false) => Sampling::All { temperature },
    }
}

/// One step of the baseline: every row on its own through `apply_repeat_penalty` (when the
/// config penalises) and `LogitsProcessor::sample`.
pub fn baseline_step(lp: &mut BaselineProcessor, w: &Workload, inp: &Inputs) -> Result<Vec<u32>> {
    let window = w.config.repetition_penalty_window.max(0) as usize;
    (0..w.rows)
        .map(|r| {
            let mut row = inp.logits.get(r)?;
            if w.config.repetition_penalty != 1.0 {
                let h = &inp.host_history[r];
                let recent = if window > 0 {
                    &h[h.len().saturating_sub(window - 1)..]
                } else {
                    &h[..]
                };
                row = candle_transformers::utils::apply_repeat_penalty(
                    &row,
                    w.config.repetition_penalty,
                    recent,
                )?;
            }
            lp.sample(&row).context("baseline sample")
        })
        .collect()
}

/// Read bandwidth of the device in bytes per second: the best of a few full reads (a sum) of a
/// 256 MiB f32 buffer.
pub fn read_bandwidth(device: &Device) -> Result<f64> {
    let n = 64 << 20;
    let bytes = (n * 4) as f64;
    match device {
        Device::Cpu => {
            use rayon::prelude::*;
            let buf: Vec<f32> = (0..n).map(|i| (i % 7) as f32).collect();
            let mut best = f64::MAX;
            for _ in 0..5 {
                let t0 = Instant::now();
                let s: f32 = buf.par_chunks(1 << 16).map(|c| c.iter().sum::<f32>()).sum();
                std::hint::black_box(s);
                best = best.min(t0.elapsed().as_secs_f64());
            }
            Ok(bytes / best)
        }
        _ => {
            let buf = Tensor::ones(n, DType::F32, device)?;
            let mut best = f64::MAX;
            for _ in 0..5 {
                device.synchronize()?;
                let t0 = Instant::now();
                let s = buf.sum_all()?;
                device.synchronize()?;
                best = best.min(t0.elapsed().as_secs_f64());
                drop(s);
            }
            Ok(bytes / best)
        }
    }
}

/// One row of the suite's table.
#[derive(Clone, Debug, Serialize)]
pub struct Measurement {
    pub workload: String,
    pub shape: String,
    pub path: String,
    pub median_s: f64,
    pub min_s: f64,
    pub iters: usize,
    pub rows_per_s: f64,
    /// Bytes of logits read once per step, over the median time.
    pub logits_gb_per_s: f64,
    /// That as a fraction of the device's measured read bandwidth.
    pub fraction_of_read_bw: f64,
    /// Baseline median over this median (None when no baseline ran).
    pub speedup_vs_baseline: Option<f64>,
}

/// Options of a suite run.
pub struct SuiteOptions {
    pub max_iters: usize,
    pub budget: Duration,
    /// Run the (slow) plain path and baseline on workloads with more than this many logits?
    pub max_plain_elems: usize,
    pub seed: u64,
}

/// Runs the matrix on `device` (plain, fused) plus the CPU baseline.
pub fn run_suite(
    device: &Device,
    device_name: &str,
    opts: &SuiteOptions,
) -> Result<(Vec<Measurement>, f64)> {
    let bw = read_bandwidth(device)?;
    let mut out = Vec::new();
    for w in workloads() {
        let inp = inputs(&w, device, opts.seed)?;
        let elems = w.rows * w.vocab;
        let shape = match w.mode {
            Mode::Ar => format!("[{}, {}]", w.rows, w.vocab),
            Mode::Nar => format!("[{}x{}, {}]", w.rows / w.history, w.history, w.vocab),
        };
        let mut cells: Vec<(String, Timing)> = Vec::new();
        let cpu_inp;
        let baseline = if elems <= opts.max_plain_elems || device.is_cpu() {
            cpu_inp = if device.is_cpu() {
                None
            } else {
                Some(inputs(&w, &Device::Cpu, opts.seed)?)
            };
            let inp_b = cpu_inp.as_ref().unwrap_or(&inp);
            let mut lp = BaselineProcessor::from_sampling(opts.seed, baseline_sampling(&w.config));
            let t = time_it(2, opts.max_iters, opts.budget, |_| {
                baseline_step(&mut lp, &w, inp_b).map(|_| ())
            })?;
            cells.push(("baseline (candle-transformers, cpu)".into(), t.clone()));
            Some(t.median_s)
        } else {
            None
        };
        for (path, label) in [(ExecPath::Plain, "plain"), (ExecPath::Fused, "fused")] {
            if path == ExecPath::Plain && elems > opts.max_plain_elems {
                continue;
            }
            let mut s = sampler(&w, path)?;
            let t = time_it(2, opts.max_iters, opts.budget, |i| {
                our_step(&mut s, &inp, opts.seed, i).map(|_| ())
            })?;
            cells.push((format!("{device_name} {label}"), t));
        }
        for (path, t) in cells {
            let bytes = (elems * 4) as f64;
            out.push(Measurement {
                workload: w.name.into(),
                shape: shape.clone(),
                path,
                median_s: t.median_s,
                min_s: t.min_s,
                iters: t.iters,
                rows_per_s: w.rows as f64 / t.median_s,
                logits_gb_per_s: bytes / t.median_s / 1e9,
                fraction_of_read_bw: bytes / t.median_s / bw,
                speedup_vs_baseline: baseline.map(|b| b / t.median_s),
            });
        }
    }
    Ok((out, bw))
}

/// The markdown table of a suite run.
pub fn markdown(rows: &[Measurement], read_bw: f64, device_name: &str) -> String {
    let mut s = format!(
        "measured {device_name} read bandwidth: {:.1} GB/s\n\n| workload | shape | path | median / step | rows/s | logits GB/s | of read BW | vs baseline |\n| --- | --- | --- | --- | --- | --- | --- | --- |\n",
        read_bw / 1e9
    );
    for m in rows {
        let speed = m
            .speedup_vs_baseline
            .map(|x| format!("{x:.1}x"))
            .unwrap_or_else(|| "-".into());
        s.push_str(&format!(
            "| {} | {} | {} | {} | {:.0} | {:.2} | {:.0}% | {} |\n",
            m.workload,
            m.shape,
            m.path,
            human_time(m.median_s),
            m.rows_per_s,
            m.logits_gb_per_s,
            100.0 * m.fraction_of_read_bw,
            speed
        ));
    }
    s
}

fn human_time(s: f64) -> String {
    if s >= 1.0 {
        format!("{s:.2} s")
    } else if s >= 1e-3 {
        format!("{:.2} ms", s * 1e3)
    } else {
        format!("{:.1} µs", s * 1e6)
    }
}
