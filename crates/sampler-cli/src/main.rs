//! The `sampler` command line (docs/semantics.md#cli-contract, manual in docs/cli.md): `apply`, `sample`, `bench`, `selftest`.
//! Every failure prints one line to stderr, exits with status 1 and writes no output file.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device};
use clap::{Args, Parser, Subcommand, ValueEnum};
use sampler_cli::device::DeviceArg;
use sampler_cli::{io, selftest};
use sampler_core::{ExecPath, Mode, Sampler, SamplerBuilder, SamplingContext};
use sampler_testkit::suite;

#[derive(Parser)]
#[command(
    name = "sampler",
    version,
    about = "Batched token sampling on candle tensors (VALL-E and LLM samplers)"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Writes the logits after the whole chain (before the draw).
    Apply {
        #[command(flatten)]
        input: Input,
        #[arg(long)]
        out: PathBuf,
    },
    /// Draws one token per row and writes them as int64; with `beam_width` > 1 in the config,
    /// writes the best `[beam_width, 2]` (row, token) pairs instead.
    Sample {
        #[command(flatten)]
        input: Input,
        #[arg(long)]
        seed: u64,
        #[arg(long)]
        out: PathBuf,
    },
    /// Times chain + draw per step and prints one JSON object; with --suite, runs the suite of
    /// workloads against the baseline, with --matrix every sampler added to the base chain, and
    /// prints a markdown table (or JSON).
    Bench(BenchArgs),
    /// Checks a device against the CPU plain path: golden cases, random batches, the draw.
    Selftest {
        #[arg(long, value_enum, default_value_t = DeviceArg::Cpu)]
        device: DeviceArg,
        /// Folder of golden cases (default: $SAMPLER_GOLDEN_DIR, or the repository's
        /// tests/golden).
        #[arg(long)]
        golden: Option<PathBuf>,
        /// Largest vocabulary of the random batches (the full run includes [256, 128256]).
        #[arg(long, default_value_t = 128256)]
        max_vocab: usize,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum ModeArg {
    Ar,
    Nar,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum PathArg {
    Plain,
    Fused,
}

#[derive(Args)]
struct Input {
    #[arg(long)]
    config: PathBuf,
    #[arg(long)]
    logits: PathBuf,
    #[arg(long)]
    history: Option<PathBuf>,
    #[arg(long, value_enum, default_value_t = ModeArg::Ar)]
    mode: ModeArg,
    #[arg(long, value_enum, default_value_t = DeviceArg::Cpu)]
    device: DeviceArg,
    /// Fused kernels where the chain and device allow them, or the plain tensor path.
    #[arg(long, value_enum, default_value_t = PathArg::Fused)]
    path: PathArg,
    /// Unconditional logits (the logits' shape) for classifier-free guidance (cfg_strength).
    #[arg(long)]
    null_logits: Option<PathBuf>,
    /// Attention scores [layers, heads, q, k] or [rows, layers, heads, q, k] for entropix.
    #[arg(long)]
    attentions: Option<PathBuf>,
}

#[derive(Args)]
struct BenchArgs {
    /// Run the suite of workloads (fused, plain, baseline) instead of one input.
    #[arg(long, conflicts_with = "matrix")]
    suite: bool,
    /// Run the sampler matrix: every sampler added to the base chain, at three shapes.
    #[arg(long)]
    matrix: bool,
    #[arg(long, required_unless_present_any = ["suite", "matrix"])]
    config: Option<PathBuf>,
    #[arg(long, required_unless_present_any = ["suite", "matrix"])]
    logits: Option<PathBuf>,
    #[arg(long)]
    history: Option<PathBuf>,
    #[arg(long, value_enum, default_value_t = ModeArg::Ar)]
    mode: ModeArg,
    #[arg(long, value_enum, default_value_t = DeviceArg::Cpu)]
    device: DeviceArg,
    #[arg(long, value_enum, default_value_t = PathArg::Fused)]
    path: PathArg,
    /// Timed iterations (at most, for --suite).
    #[arg(long, default_value_t = 50)]
    iters: usize,
    /// Seconds per cell of the suite after which no further iteration starts.
    #[arg(long, default_value_t = 3.0)]
    budget_s: f64,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Print JSON (a single bench always does).
    #[arg(long)]
    json: bool,
}

fn mode_of(m: ModeArg) -> Mode {
    match m {
        ModeArg::Ar => Mode::Ar,
        ModeArg::Nar => Mode::Nar,
    }
}

fn path_of(p: PathArg) -> ExecPath {
    match p {
        PathArg::Plain => ExecPath::Plain,
        PathArg::Fused => ExecPath::Fused,
    }
}

struct Prepared {
    sampler: Sampler,
    batch: io::Batch,
    beam_width: usize,
}

fn prepare(
    config: &std::path::Path,
    logits: &std::path::Path,
    history: Option<&std::path::Path>,
    mode: ModeArg,
    device: DeviceArg,
    path: PathArg,
) -> Result<Prepared> {
    let cfg = io::read_config(config)?;
    let device = device.open()?;
    let batch = io::read_batch(logits, history, mode_of(mode), &device)?;
    cfg.validate()?;
    let sampler = SamplerBuilder::from_config(&cfg, mode_of(mode))
        .path(path_of(path))
        .build()?;
    Ok(Prepared {
        sampler,
        batch,
        beam_width: cfg.beam_width as usize,
    })
}

impl Input {
    fn prepare(&self) -> Result<Prepared> {
        let mut p = prepare(
            &self.config,
            &self.logits,
            self.history.as_deref(),
            self.mode,
            self.device,
            self.path,
        )?;
        let device = p.batch.logits.device().clone();
        if let Some(f) = &self.null_logits {
            p.batch.null_logits = Some(io::read_null_logits(f, &p.batch, &device)?);
        }
        if let Some(f) = &self.attentions {
            p.batch.attentions = Some(io::read_attentions(f, &device)?);
        }
        Ok(p)
    }
}

fn context(batch: &io::Batch, seed: u64) -> SamplingContext {
    let mut ctx = SamplingContext::new(seed);
    if let Some(h) = &batch.history {
        ctx = ctx.with_history(h.clone());
    }
    if let Some(n) = &batch.null_logits {
        ctx = ctx.with_null_logits(n.clone());
    }
    if let Some(a) = &batch.attentions {
        ctx = ctx.with_attentions(a.clone());
    }
    ctx
}

fn bench(a: BenchArgs) -> Result<()> {
    if a.iters == 0 {
        bail!("--iters must be at least 1");
    }
    if a.suite || a.matrix {
        let device = a.device.open()?;
        let opts = suite::SuiteOptions {
            max_iters: a.iters,
            budget: Duration::from_secs_f64(a.budget_s),
            max_plain_elems: if device.is_cpu() {
                usize::MAX
            } else {
                64 << 20
            },
            seed: a.seed,
        };
        if a.matrix {
            let (cells, bw) = suite::run_matrix(&device, &opts)?;
            if a.json {
                println!(
                    "{}",
                    serde_json::json!({ "device": a.device.name(), "read_bandwidth_bytes_per_s": bw, "cells": cells })
                );
            } else {
                print!("{}", suite::matrix_markdown(&cells, bw, a.device.name()));
            }
            return Ok(());
        }
        let (rows, bw) = suite::run_suite(&device, a.device.name(), &opts)?;
        if a.json {
            println!(
                "{}",
                serde_json::json!({ "device": a.device.name(), "read_bandwidth_bytes_per_s": bw, "results": rows })
            );
        } else {
            print!("{}", suite::markdown(&rows, bw, a.device.name()));
        }
        return Ok(());
    }
    let (config, logits) = (a.config.context("--config")?, a.logits.context("--logits")?);
    let mut p = prepare(
        &config,
        &logits,
        a.history.as_deref(),
        a.mode,
        a.device,
        a.path,
    )?;
    // Validate once; `our_step` then times the step as a decoding loop runs it, without
    // validation reads.
    p.sampler
        .apply(&p.batch.logits, &context(&p.batch, a.seed))?;
    let inp = suite::Inputs {
        logits: p.batch.logits.clone(),
        null_logits: p
            .batch
            .null_logits
            .clone()
            .unwrap_or_else(|| p.batch.logits.clone()),
        history: p.batch.history.clone(),
        host_history: Vec::new(),
    };
    let budget = Duration::from_secs(3600);
    let t = suite::time_it(a.iters, a.iters, budget, |i| {
        suite::our_step(&mut p.sampler, &inp, a.seed, i).map(|_| ())
    })?;
    let (rows, vocab) = p.batch.logits.dims2()?;
    let report = serde_json::json!({
        "median_s": t.median_s,
        "iters": t.iters,
        "min_s": t.min_s,
        "rows": rows,
        "vocab": vocab,
        "device": a.device.name(),
        "path": match a.path { PathArg::Plain => "plain", PathArg::Fused => "fused" },
        "chain": p.sampler.describe(rows, vocab, p.batch.logits.device())?,
    });
    println!("{report}");
    Ok(())
}

fn run(cli: Cli) -> Result<()> {
    match cli.cmd {
        Cmd::Apply { input, out } => {
            let p = input.prepare()?;
            let y = p.sampler.apply(&p.batch.logits, &context(&p.batch, 0))?;
            let mut shape = p.batch.token_shape.clone();
            shape.push(y.dim(1)?);
            io::write_npy_atomic(&y.reshape(shape)?.to_device(&Device::Cpu)?, &out)
        }
        Cmd::Sample { input, seed, out } => {
            let mut p = input.prepare()?;
            if p.beam_width > 1 {
                // Beam candidates over the processed logits: [beam_width, 2] (row, token).
                let y = p.sampler.apply(&p.batch.logits, &context(&p.batch, seed))?;
                let beams = sampler_core::beam_candidates(&y, None, p.beam_width)?;
                return io::write_npy_atomic(&beams.pairs()?.to_device(&Device::Cpu)?, &out);
            }
            let d = p
                .sampler
                .sample(&p.batch.logits, &context(&p.batch, seed))?;
            let tokens = d
                .tokens
                .to_dtype(DType::I64)?
                .reshape(p.batch.token_shape.clone())?;
            io::write_npy_atomic(&tokens.to_device(&Device::Cpu)?, &out)
        }
        Cmd::Bench(a) => bench(a),
        Cmd::Selftest {
            device,
            golden,
            max_vocab,
        } => {
            let dev = device.open()?;
            let opts = selftest::SelftestOptions {
                golden_dir: golden,
                max_vocab,
            };
            let summary = selftest::run(&dev, device.name(), &opts)?;
            if summary.failed > 0 {
                bail!(
                    "selftest: {} of {} checks failed",
                    summary.failed,
                    summary.passed + summary.failed
                );
            }
            Ok(())
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // A panic is a bug, but the contract still holds: one line, a clean non-zero exit.
    std::panic::set_hook(Box::new(|info| {
        let msg = info.to_string().replace('\n', " ");
        eprintln!("error: internal error: {msg}");
    }));
    match std::panic::catch_unwind(|| run(cli)) {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(e)) => {
            let msg = format!("{e:#}").replace('\n', " ");
            eprintln!("error: {msg}");
            ExitCode::from(1)
        }
        Err(_) => ExitCode::from(1),
    }
}
