//! The benchmark workloads of `sampler bench --suite` / `--matrix` and of the criterion benches:
//! the shapes users run, deterministic inputs, the timing loop, the device's read bandwidth,
//! and (feature `baseline`) the baseline a candle user has today: candle-transformers'
//! `LogitsProcessor`, one row at a time, plus `apply_repeat_penalty`.

use std::time::{Duration, Instant};

use anyhow::Result;
use candle_core::{DType, Device, Tensor};
use rand::{rngs::StdRng, Rng, SeedableRng};
use sampler_core::{
    ExecPath, History, MirostatVersion, Mode, RepetitionPenaltyMode, Sampler, SamplerBuilder,
    SamplerConfig, SamplingContext,
};
use serde::Serialize;

/// One benchmark shape with its sampler settings.
#[derive(Clone, Debug)]
pub struct Workload {
    /// A short name ("vall-e AR").
    pub name: String,
    /// Rows of the logits (NAR: batch x T).
    pub rows: usize,
    /// The vocabulary.
    pub vocab: usize,
    /// AR: tokens of history per row. NAR: the sequence length T (rows = batch * T).
    pub history: usize,
    /// AR or NAR.
    pub mode: Mode,
    /// The sampler settings.
    pub config: SamplerConfig,
    /// The standard deviation of the logits.
    pub std: f32,
}

impl Workload {
    fn new(name: &str, rows: usize, vocab: usize, history: usize, mode: Mode) -> Self {
        Self {
            name: name.into(),
            rows,
            vocab,
            history,
            mode,
            config: SamplerConfig::default(),
            std: 3.0,
        }
    }

    /// The same shape with another config.
    pub fn with_config(mut self, config: SamplerConfig) -> Self {
        self.config = config;
        self
    }

    /// The shape as a table writes it: `[8, 1025]` or `[8x750, 1024]`.
    pub fn shape(&self) -> String {
        match self.mode {
            Mode::Ar => format!("[{}, {}]", self.rows, self.vocab),
            Mode::Nar => format!(
                "[{}x{}, {}]",
                self.rows / self.history.max(1),
                self.history,
                self.vocab
            ),
        }
    }

    /// Bytes of logits one step reads once.
    pub fn bytes(&self) -> f64 {
        (self.rows * self.vocab * 4) as f64
    }
}

/// The LLM settings: top-k 50, top-p 0.9, min-p 0.05, temperature 0.8 (the base chain).
pub fn llm_config() -> SamplerConfig {
    SamplerConfig {
        top_k: 50,
        top_p: 0.9,
        min_p: 0.05,
        temperature: 0.8,
        ..SamplerConfig::default()
    }
}

/// VALL-E AR `[rows, 1025]` with 300 tokens of history and the `vall_e_ar()` chain.
pub fn vall_e_ar(rows: usize) -> Workload {
    Workload::new("vall-e AR", rows, 1025, 300, Mode::Ar).with_config(SamplerConfig::vall_e_ar())
}

/// VALL-E NAR `[8 x 750, 1024]` with the `vall_e_nar()` chain.
pub fn vall_e_nar() -> Workload {
    Workload::new("vall-e NAR", 8 * 750, 1024, 750, Mode::Nar)
        .with_config(SamplerConfig::vall_e_nar())
}

/// LLM `[rows, vocab]` with the base chain and `history` tokens of history.
pub fn llm(name: &str, rows: usize, vocab: usize, history: usize) -> Workload {
    Workload::new(name, rows, vocab, history, Mode::Ar).with_config(llm_config())
}

/// The suite: VALL-E AR at 1, 8 and 64 rows, VALL-E NAR, LLM `[32, 32000]` and
/// `[256, 128256]`.
pub fn workloads() -> Vec<Workload> {
    vec![
        vall_e_ar(1),
        vall_e_ar(8),
        vall_e_ar(64),
        vall_e_nar(),
        llm("LLM 32k", 32, 32000, 0),
        llm("LLM 128k", 256, 128256, 0),
    ]
}

/// The shapes of the sampler matrix: LLM `[32, 32000]` with 256 tokens of history, VALL-E AR
/// `[8, 1025]` with 300, VALL-E NAR `[8 x 750, 1024]`; each with the base chain.
pub fn matrix_shapes() -> Vec<Workload> {
    let base = llm_config();
    vec![
        llm("LLM", 32, 32000, 256),
        Workload::new("VALL-E AR", 8, 1025, 300, Mode::Ar).with_config(base.clone()),
        Workload::new("VALL-E NAR", 8 * 750, 1024, 750, Mode::Nar).with_config(base),
    ]
}

/// Every sampler added to the base chain: (row name, config).
pub fn matrix_samplers() -> Vec<(String, SamplerConfig)> {
    let b = llm_config;
    let with = |name: &str, f: &dyn Fn(&mut SamplerConfig)| {
        let mut c = b();
        f(&mut c);
        (name.to_string(), c)
    };
    vec![
        ("base chain".to_string(), b()),
        with("classifier-free guidance 1.5, rescale 0.7", &|c| {
            c.cfg_strength = 1.5;
            c.cfg_rescale = 0.7;
        }),
        with("bans (16 ids)", &|c| {
            c.ban_tokens = (0..16).map(|i| i * 7).collect()
        }),
        with("logit bias (16 ids)", &|c| {
            c.logit_bias = (0..16).map(|i| (i * 11, 0.5)).collect()
        }),
        with("repetition penalty, divide + decay", &|c| {
            c.repetition_penalty = 1.3;
            c.repetition_penalty_decay = 0.5;
        }),
        with("repetition penalty, sign-aware", &|c| {
            c.repetition_penalty = 1.3;
            c.repetition_penalty_mode = RepetitionPenaltyMode::SignAware;
        }),
        with("frequency + presence", &|c| {
            c.frequency_penalty = 0.2;
            c.presence_penalty = 0.2;
        }),
        with("length penalty 0.5", &|c| c.length_penalty = 0.5),
        with("DRY 0.8", &|c| c.dry_multiplier = 0.8),
        with("typical-p 0.9", &|c| c.typical_p = 0.9),
        with("XTC 0.5 / 0.1", &|c| {
            c.xtc_probability = 0.5;
            c.xtc_threshold = 0.1;
        }),
        with("dynamic temperature, sigmoid form", &|c| {
            c.min_temperature = 0.3
        }),
        with("dynamic temperature, entropy form", &|c| {
            c.dynatemp_range = 0.5
        }),
        with("top-n-sigma 1.0", &|c| c.top_no = 1.0),
        with("mirostat v1", &|c| c.mirostat = MirostatVersion::V1),
        with("mirostat v2", &|c| c.mirostat = MirostatVersion::V2),
        with("entropix", &|c| c.entropix = true),
    ]
}

/// Deterministic inputs of a workload.
pub struct Inputs {
    /// `[rows, vocab]` logits ~ N(0, std²).
    pub logits: Tensor,
    /// The null logits of guidance, ~ N(0, std²).
    pub null_logits: Tensor,
    /// The histories (AR: random ids; NAR: the previous level's codes).
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

/// The inputs of `w` on `device`, from `seed`.
pub fn inputs(w: &Workload, device: &Device, seed: u64) -> Result<Inputs> {
    let mut rng = StdRng::seed_from_u64(seed);
    let n = w.rows * w.vocab;
    let gen = |rng: &mut StdRng| -> Result<Tensor> {
        let v: Vec<f32> = (0..n).map(|_| w.std * normal(rng)).collect();
        Ok(Tensor::from_vec(v, (w.rows, w.vocab), device)?)
    };
    let logits = gen(&mut rng)?;
    let null_logits = gen(&mut rng)?;
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
        null_logits,
        history,
        host_history,
    })
}

/// Median, minimum and count of the timed iterations of one cell.
#[derive(Clone, Debug, Serialize)]
pub struct Timing {
    /// Median seconds per iteration.
    pub median_s: f64,
    /// Fastest iteration.
    pub min_s: f64,
    /// Iterations timed.
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

/// The context of step `step` of a workload (validation off, as a decoding loop runs it after
/// its first step).
pub fn context(inp: &Inputs, seed: u64, step: usize) -> SamplingContext {
    let mut ctx = SamplingContext::new(seed)
        .with_step(step as u64)
        .with_validation(false)
        .with_null_logits(inp.null_logits.clone());
    if let Some(h) = &inp.history {
        ctx = ctx.with_history(h.clone());
    }
    ctx
}

/// One step of our sampler: chain + draw, tokens left on the device, the device synchronised.
pub fn our_step(s: &mut Sampler, inp: &Inputs, seed: u64, step: usize) -> Result<Tensor> {
    let d = s.sample(&inp.logits, &context(inp, seed, step))?;
    inp.logits.device().synchronize()?;
    Ok(d.tokens)
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

/// The candle-transformers baseline.
#[cfg(feature = "baseline")]
pub mod baseline {
    use anyhow::{Context, Result};
    use candle_transformers::generation::{LogitsProcessor, Sampling};
    use sampler_core::SamplerConfig;

    use super::{Inputs, Workload};

    /// The baseline's processor for a config (it has no min-p, decay or window).
    pub fn processor(c: &SamplerConfig, seed: u64) -> LogitsProcessor {
        let temperature = c.temperature as f64;
        let sampling = if c.temperature <= 0.0 {
            Sampling::ArgMax
        } else {
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
        };
        LogitsProcessor::from_sampling(seed, sampling)
    }

    /// One step: every row on its own through `apply_repeat_penalty` (when the config
    /// penalises) and `LogitsProcessor::sample`.
    pub fn step(lp: &mut LogitsProcessor, w: &Workload, inp: &Inputs) -> Result<Vec<u32>> {
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
}

/// Whether this build has the candle-transformers baseline.
pub const HAS_BASELINE: bool = cfg!(feature = "baseline");

/// One row of the suite's table.
#[derive(Clone, Debug, Serialize)]
pub struct Measurement {
    /// The workload.
    pub workload: String,
    /// Its shape.
    pub shape: String,
    /// "baseline (candle-transformers, cpu)", "cpu fused", ...
    pub path: String,
    /// Median seconds per step.
    pub median_s: f64,
    /// Fastest step.
    pub min_s: f64,
    /// Steps timed.
    pub iters: usize,
    /// Rows per second at the median.
    pub rows_per_s: f64,
    /// Bytes of logits read once per step, over the median time.
    pub logits_gb_per_s: f64,
    /// That as a fraction of the device's measured read bandwidth.
    pub fraction_of_read_bw: f64,
    /// Baseline median over this median (None when no baseline ran).
    pub speedup_vs_baseline: Option<f64>,
}

/// Options of a suite or matrix run.
pub struct SuiteOptions {
    /// The most timed steps per cell.
    pub max_iters: usize,
    /// Seconds per cell after which no further step starts.
    pub budget: Duration,
    /// Run the (slow) plain path on workloads with at most this many logits.
    pub max_plain_elems: usize,
    /// The inputs' seed.
    pub seed: u64,
}

/// Runs the suite on `device` (plain, fused) plus the CPU baseline when built in.
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
        let mut cells: Vec<(String, Timing)> = Vec::new();
        let baseline = baseline_cell(&w, device, opts)?;
        if let Some(t) = &baseline {
            cells.push(("baseline (candle-transformers, cpu)".into(), t.clone()));
        }
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
            out.push(Measurement {
                workload: w.name.clone(),
                shape: w.shape(),
                path,
                median_s: t.median_s,
                min_s: t.min_s,
                iters: t.iters,
                rows_per_s: w.rows as f64 / t.median_s,
                logits_gb_per_s: w.bytes() / t.median_s / 1e9,
                fraction_of_read_bw: w.bytes() / t.median_s / bw,
                speedup_vs_baseline: baseline.as_ref().map(|b| b.median_s / t.median_s),
            });
        }
    }
    Ok((out, bw))
}

#[cfg(feature = "baseline")]
fn baseline_cell(w: &Workload, device: &Device, opts: &SuiteOptions) -> Result<Option<Timing>> {
    let cpu_inp;
    let inp = if device.is_cpu() {
        cpu_inp = inputs(w, device, opts.seed)?;
        &cpu_inp
    } else {
        cpu_inp = inputs(w, &Device::Cpu, opts.seed)?;
        &cpu_inp
    };
    let mut lp = baseline::processor(&w.config, opts.seed);
    Ok(Some(time_it(2, opts.max_iters, opts.budget, |_| {
        baseline::step(&mut lp, w, inp).map(|_| ())
    })?))
}

#[cfg(not(feature = "baseline"))]
fn baseline_cell(_: &Workload, _: &Device, _: &SuiteOptions) -> Result<Option<Timing>> {
    Ok(None)
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
    if !HAS_BASELINE {
        s.push_str("\n(no baseline: this binary was built without the `baseline` feature)\n");
    }
    s
}

/// One cell of the sampler matrix.
#[derive(Clone, Debug, Serialize)]
pub struct MatrixCell {
    /// The row: a sampler added to the base chain, or the base chain on other logits.
    pub row: String,
    /// The shape's name.
    pub shape: String,
    /// Median seconds per step.
    pub median_s: f64,
    /// That over the base chain's median at the same shape.
    pub vs_base: f64,
    /// One read of the logits at the measured bandwidth over the median.
    pub vs_read: f64,
}

/// The sampler matrix: every sampler added to the base chain, the base chain on logits of
/// standard deviation 0.5, 1, 3 and 8, the unfiltered draw and greedy (with and without the
/// repetition penalty), at each of [`matrix_shapes`], on the fused path.
pub fn run_matrix(device: &Device, opts: &SuiteOptions) -> Result<(Vec<MatrixCell>, f64)> {
    let bw = read_bandwidth(device)?;
    let mut rows: Vec<(String, SamplerConfig, f32)> = matrix_samplers()
        .into_iter()
        .map(|(n, c)| (n, c, 3.0))
        .collect();
    for std in [0.5f32, 1.0, 8.0] {
        rows.push((format!("base chain, logits std {std}"), llm_config(), std));
    }
    rows.push(("unfiltered draw".into(), SamplerConfig::default(), 3.0));
    let greedy = SamplerConfig {
        temperature: 0.0,
        ..Default::default()
    };
    rows.push(("greedy".into(), greedy.clone(), 3.0));
    rows.push((
        "greedy + repetition penalty 1.5".into(),
        SamplerConfig {
            repetition_penalty: 1.5,
            ..greedy
        },
        3.0,
    ));
    let mut out = Vec::new();
    for shape in matrix_shapes() {
        let mut base = None;
        for (name, config, std) in &rows {
            if *name == "length penalty 0.5" && shape.mode == Mode::Nar {
                continue;
            }
            let w = Workload {
                config: config.clone(),
                std: *std,
                ..shape.clone()
            };
            let inp = inputs(&w, device, opts.seed)?;
            let mut s = sampler(&w, ExecPath::Fused)?;
            let t = time_it(3, opts.max_iters, opts.budget, |i| {
                our_step(&mut s, &inp, opts.seed, i).map(|_| ())
            })?;
            let b = *base.get_or_insert(t.median_s);
            out.push(MatrixCell {
                row: name.clone(),
                shape: format!("{} {}", shape.name, shape.shape()),
                median_s: t.median_s,
                vs_base: t.median_s / b,
                vs_read: t.median_s / (w.bytes() / bw),
            });
        }
    }
    Ok((out, bw))
}

/// The markdown table of a matrix run: one row per sampler, per shape the median and its
/// multiple of the base chain (and of one read of the logits).
pub fn matrix_markdown(cells: &[MatrixCell], read_bw: f64, device_name: &str) -> String {
    let mut shapes: Vec<String> = Vec::new();
    let mut names: Vec<String> = Vec::new();
    for c in cells {
        if !shapes.contains(&c.shape) {
            shapes.push(c.shape.clone());
        }
        if !names.contains(&c.row) {
            names.push(c.row.clone());
        }
    }
    let mut s = format!(
        "measured {device_name} read bandwidth: {:.1} GB/s; each cell: median per step, x base chain, x one read of the logits\n\n| sampler |",
        read_bw / 1e9
    );
    for sh in &shapes {
        s.push_str(&format!(" {sh} |"));
    }
    s.push_str("\n| --- |");
    for _ in &shapes {
        s.push_str(" --- |");
    }
    s.push('\n');
    for n in &names {
        s.push_str(&format!("| {n} |"));
        for sh in &shapes {
            match cells.iter().find(|c| &c.row == n && &c.shape == sh) {
                Some(c) => s.push_str(&format!(
                    " {} ({:.2}x, {:.1}x read) |",
                    human_time(c.median_s),
                    c.vs_base,
                    c.vs_read
                )),
                None => s.push_str(" - |"),
            }
        }
        s.push('\n');
    }
    s
}

/// Seconds in the unit a reader takes in at a glance.
pub fn human_time(s: f64) -> String {
    if s >= 1.0 {
        format!("{s:.2} s")
    } else if s >= 1e-3 {
        format!("{:.2} ms", s * 1e3)
    } else {
        format!("{:.1} µs", s * 1e6)
    }
}
