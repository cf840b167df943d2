//! The `sampler` command line (SPEC §8): `apply`, `sample`, `bench`, `selftest`.
//! Every failure prints one line to stderr, exits with status 1 and writes no output file.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Result};
use candle_core::DType;
use clap::{Args, Parser, Subcommand, ValueEnum};
use sampler_core::{Mode, Sampler, SamplingContext};

use sampler_cli::device::DeviceArg;
use sampler_cli::io;

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
    /// Times chain + draw per step and prints one JSON object.
    Bench {
        #[command(flatten)]
        input: Input,
        #[arg(long, default_value_t = 50)]
        iters: usize,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Print JSON (the only format of a single bench).
        #[arg(long)]
        json: bool,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum ModeArg {
    Ar,
    Nar,
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
    /// Unconditional logits (the logits' shape) for classifier-free guidance (cfg_strength).
    #[arg(long)]
    null_logits: Option<PathBuf>,
    /// Attention scores [layers, heads, q, k] or [rows, layers, heads, q, k] for entropix.
    #[arg(long)]
    attentions: Option<PathBuf>,
}

struct Prepared {
    sampler: Sampler,
    batch: io::Batch,
    beam_width: usize,
}

impl Input {
    fn mode(&self) -> Mode {
        match self.mode {
            ModeArg::Ar => Mode::Ar,
            ModeArg::Nar => Mode::Nar,
        }
    }

    fn prepare(&self) -> Result<Prepared> {
        let cfg = io::read_config(&self.config)?;
        let device = self.device.open()?;
        let mut batch =
            io::read_batch(&self.logits, self.history.as_deref(), self.mode(), &device)?;
        if let Some(p) = &self.null_logits {
            batch.null_logits = Some(io::read_null_logits(p, &batch, &device)?);
        }
        if let Some(p) = &self.attentions {
            batch.attentions = Some(io::read_attentions(p, &device)?);
        }
        let sampler = Sampler::from_config(&cfg, self.mode())?;
        Ok(Prepared {
            sampler,
            batch,
            beam_width: cfg.beam_width as usize,
        })
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

fn run(cli: Cli) -> Result<()> {
    match cli.cmd {
        Cmd::Apply { input, out } => {
            let p = input.prepare()?;
            let y = p.sampler.apply(&p.batch.logits, &context(&p.batch, 0))?;
            let mut shape = p.batch.token_shape.clone();
            shape.push(y.dim(1)?);
            io::write_npy_atomic(
                &y.reshape(shape)?.to_device(&candle_core::Device::Cpu)?,
                &out,
            )
        }
        Cmd::Sample { input, seed, out } => {
            let mut p = input.prepare()?;
            if p.beam_width > 1 {
                // Beam candidates over the processed logits: [beam_width, 2] (row, token).
                let y = p.sampler.apply(&p.batch.logits, &context(&p.batch, seed))?;
                let beams = sampler_core::beam_candidates(&y, None, p.beam_width)?;
                return io::write_npy_atomic(
                    &beams.pairs()?.to_device(&candle_core::Device::Cpu)?,
                    &out,
                );
            }
            let d = p
                .sampler
                .sample(&p.batch.logits, &context(&p.batch, seed))?;
            let tokens = d
                .tokens
                .to_dtype(DType::I64)?
                .reshape(p.batch.token_shape.clone())?;
            io::write_npy_atomic(&tokens.to_device(&candle_core::Device::Cpu)?, &out)
        }
        Cmd::Bench {
            input,
            iters,
            seed,
            json: _,
        } => {
            if iters == 0 {
                bail!("--iters must be at least 1");
            }
            let mut p = input.prepare()?;
            let dev = p.batch.logits.device().clone();
            // Validate once, then time the step as a decoding loop runs it.
            p.sampler.apply(&p.batch.logits, &context(&p.batch, seed))?;
            let ctx = context(&p.batch, seed).with_validation(false);
            let mut times = Vec::with_capacity(iters);
            for i in 0..iters + 2 {
                let c = ctx.clone().with_step(i as u64);
                let t0 = Instant::now();
                let d = p.sampler.sample(&p.batch.logits, &c)?;
                dev.synchronize()?;
                let dt = t0.elapsed().as_secs_f64();
                drop(d);
                if i >= 2 {
                    times.push(dt);
                }
            }
            times.sort_by(f64::total_cmp);
            let median = times[times.len() / 2];
            let (rows, vocab) = p.batch.logits.dims2()?;
            let report = serde_json::json!({
                "median_s": median,
                "iters": iters,
                "min_s": times[0],
                "max_s": times[times.len() - 1],
                "rows": rows,
                "vocab": vocab,
                "device": input.device.name(),
                "chain": p.sampler.chain().names(),
            });
            println!("{report}");
            Ok(())
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match std::panic::catch_unwind(|| run(cli)) {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(e)) => {
            let msg = format!("{e:#}").replace('\n', " ");
            eprintln!("error: {msg}");
            ExitCode::from(1)
        }
        Err(_) => {
            eprintln!("error: internal error (a panic); please report it");
            ExitCode::from(1)
        }
    }
}
