//! VALL-E shaped text-to-codes generation with the sampler driver.
//!
//! A small model built with candle-nn: a phoneme embedding, an autoregressive decoder that
//! predicts the first RVQ level one code at a time (1024 codes + a stop token), and a
//! non-autoregressive decoder that predicts the other 7 levels, each for every position at
//! once. With `--level0 masked` the first level comes from the masked ("NAR-len") stage
//! instead of the AR loop: a duration head on the NAR decoder gives each row's length, and a
//! masked-level head fills level 0 by iterative demasking. The weights are seeded random
//! numbers (so the "audio" is noise, but every shape, cost and sampling path is the real one),
//! or come from a safetensors file (`--weights`).
//!
//!     cargo run --release --example vall_e
//!     cargo run --release --example vall_e -- --level0 masked
//!     cargo run --release --example vall_e -- --text "hello world" --text "a second prompt" --seed 7
//!     cargo run --release --features cuda --example vall_e -- --device cuda --batch 64
//!
//! Writes the codes to `vall_e_codes.npy`: int64 `[batch, T_max, 8]`, -1 past each row's end.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device};
use candle_nn::{VarBuilder, VarMap};
use candle_sampler::driver::{
    Driver, DriverConfig, Knob, Level0, MaskedConfig, Progress, Rows, StageConfig,
};
use candle_sampler::SamplerConfig;
use clap::Parser;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

mod model;

use model::{seeded_weights, ModelConfig, VallE, CODES, LEVELS, STOP};

/// 75 codes per second of EnCodec audio at 24 kHz.
const CODES_PER_SECOND: usize = 75;

const DEFAULT_PROMPTS: [&str; 4] = [
    "The quick brown fox jumps over the lazy dog.",
    "Hello world.",
    "Sampling on the device keeps the host out of the loop.",
    "Codec language models speak in codes.",
];

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum DeviceArg {
    Cpu,
    Cuda,
    Metal,
}

/// How the first RVQ level is generated.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Level0Arg {
    /// The autoregressive loop, one code per step until the stop token.
    Ar,
    /// A duration per row, then iterative demasking of every position.
    Masked,
}

#[derive(Parser, Debug)]
#[command(about = "VALL-E shaped AR + NAR generation with candle-sampler")]
struct Args {
    /// Prompt text (repeat for a batch); default: four built-in sentences.
    #[arg(long)]
    text: Vec<String>,
    /// Repeat the prompts to make a larger batch of this many rows.
    #[arg(long)]
    batch: Option<usize>,
    #[arg(long, value_enum, default_value = "cpu")]
    device: DeviceArg,
    /// Model weights (safetensors); default: seeded random weights.
    #[arg(long)]
    weights: Option<PathBuf>,
    /// Write the (random) weights to this safetensors file.
    #[arg(long)]
    save_weights: Option<PathBuf>,
    /// Seed of the random weights.
    #[arg(long, default_value_t = 0)]
    weight_seed: u64,
    /// The random model's AR bias for the stop token (higher: shorter rows).
    #[arg(long, default_value_t = 2.0)]
    stop_bias: f32,
    /// Seed of the sampling.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// The most audio a row may get, in seconds (75 codes per second).
    #[arg(long, default_value_t = 3.0)]
    max_seconds: f32,
    /// The first level: the AR loop or the masked (NAR-len) stage.
    #[arg(long, value_enum, default_value = "ar")]
    level0: Level0Arg,
    /// Demasking steps of the masked stage (over the whole schedule).
    #[arg(long, default_value_t = 25)]
    masked_steps: usize,
    /// AR temperature: one value, or one per row (comma separated).
    #[arg(long, default_value = "1.0", value_delimiter = ',')]
    temperature: Vec<f32>,
    /// Read the "all rows stopped" flag every this many AR steps.
    #[arg(long, default_value_t = 16)]
    stop_check_interval: usize,
    /// Output file.
    #[arg(long, default_value = "vall_e_codes.npy")]
    out: PathBuf,
}

fn open_device(d: DeviceArg) -> Result<Device> {
    match d {
        DeviceArg::Cpu => Ok(Device::Cpu),
        DeviceArg::Cuda => {
            if !cfg!(feature = "cuda") {
                bail!("this example was built without CUDA: run `cargo run --release --features cuda --example vall_e -- --device cuda`");
            }
            Device::new_cuda(0).context("opening CUDA device 0")
        }
        DeviceArg::Metal => {
            if !cfg!(feature = "metal") {
                bail!("this example was built without Metal: run `cargo run --release --features metal --example vall_e -- --device metal`");
            }
            Device::new_metal(0).context("opening Metal device 0")
        }
    }
}

fn main() -> Result<()> {
    let args = Args::parse();
    let device = open_device(args.device)?;
    let mut prompts: Vec<String> = if args.text.is_empty() {
        DEFAULT_PROMPTS.iter().map(|s| s.to_string()).collect()
    } else {
        args.text.clone()
    };
    if let Some(n) = args.batch {
        if n == 0 {
            bail!("--batch must be at least 1");
        }
        prompts = prompts.iter().cycle().take(n).cloned().collect();
    }
    let rows = prompts.len();
    let max_steps = (args.max_seconds * CODES_PER_SECOND as f32).round() as usize;
    if max_steps == 0 {
        bail!("--max-seconds {} allows no code", args.max_seconds);
    }

    let masked = args.level0 == Level0Arg::Masked;
    let start = Instant::now();
    let cfg = ModelConfig::tiny();
    let (model, varmap) = match &args.weights {
        Some(path) => {
            // SAFETY: the file is memory-mapped read-only and must not change while we run.
            let vb = unsafe { VarBuilder::from_mmaped_safetensors(&[path], DType::F32, &device) }
                .with_context(|| format!("opening weights {}", path.display()))?;
            (
                VallE::new(cfg, vb, masked)
                    .with_context(|| format!("loading weights from {}", path.display()))?,
                None,
            )
        }
        None => {
            let varmap = VarMap::new();
            let vb = VarBuilder::from_varmap(&varmap, DType::F32, &device);
            let model = VallE::new(cfg, vb, masked)?;
            seeded_weights(&varmap, args.weight_seed, args.stop_bias, &device)?;
            (model, Some(varmap))
        }
    };
    if let (Some(path), Some(varmap)) = (&args.save_weights, &varmap) {
        varmap
            .save(path)
            .with_context(|| format!("writing weights to {}", path.display()))?;
        println!("wrote the weights to {}", path.display());
    }
    println!(
        "model: dim {}, {} AR + {} NAR layers, {} codes + stop, {} levels, on {:?} (built in {:.2} s)",
        cfg.dim,
        cfg.ar_layers,
        cfg.nar_layers,
        CODES,
        LEVELS,
        args.device,
        start.elapsed().as_secs_f64()
    );

    // Sampling: the VALL-E defaults, an AR temperature per row, and each row's own limit: about
    // 12 codes per phoneme, at most --max-seconds.
    let temperatures = match args.temperature.len() {
        1 => vec![args.temperature[0]; rows],
        n if n == rows => args.temperature.clone(),
        n => bail!("--temperature has {n} values for {rows} rows (give one, or one per row)"),
    };
    let ar =
        StageConfig::new(SamplerConfig::vall_e_ar()).per_sequence(Knob::Temperature, temperatures);
    let nar = StageConfig::new(SamplerConfig::vall_e_nar());
    let mut config = DriverConfig::new(ar, nar)
        .with_max_steps(max_steps)
        .with_stop_check_interval(args.stop_check_interval)
        .with_stop_token(Some(STOP));
    if masked {
        // The reference's masked-stage defaults: greedy, annealed, guidance 2.5 / 0.75.
        let stage = MaskedConfig::default().with_max_steps(args.masked_steps);
        config = config.with_level0(Level0::Masked(stage));
    }
    let row_limits: Vec<usize> = prompts
        .iter()
        .map(|p| (p.len() * 12).clamp(1, max_steps))
        .collect();
    let batch_rows = Rows::first(rows).with_max_steps(row_limits);

    let mut batch = model.batch(&prompts, max_steps)?;
    let first_bar = ProgressBar::new(max_steps as u64);
    first_bar.set_style(ProgressStyle::with_template(if masked {
        "masked {bar:40} {pos}/{len} steps {msg}"
    } else {
        "AR  {bar:40} {pos}/{len} steps {msg}"
    })?);
    // Shown once the first level is done.
    let nar_bar =
        ProgressBar::with_draw_target(Some((LEVELS - 1) as u64), ProgressDrawTarget::hidden())
            .with_style(ProgressStyle::with_template(
                "NAR {bar:40} {pos}/{len} levels",
            )?);
    let out =
        Driver::new(config).generate_with(&mut batch, &batch_rows, args.seed, |p| match p {
            Progress::ArStep { step, limit } => {
                first_bar.set_length(limit as u64);
                first_bar.set_position(step as u64 + 1);
            }
            Progress::ArRunning { running, .. } => {
                first_bar.set_message(format!("({running} of {rows} rows running)"))
            }
            Progress::MaskedStep { step, steps } => {
                first_bar.set_length(steps as u64);
                first_bar.set_position(step as u64 + 1);
            }
            Progress::ArDone { steps, max_len } | Progress::MaskedDone { steps, max_len } => {
                first_bar.finish_with_message(format!(
                    "done after {steps} steps, longest row {max_len} codes"
                ));
                nar_bar.set_draw_target(ProgressDrawTarget::stderr());
            }
            Progress::NarLevel { level, .. } => nar_bar.set_position(level as u64),
        })?;
    nar_bar.finish();

    let codes = out.lens.iter().sum::<usize>();
    let audio_seconds = codes as f64 / CODES_PER_SECOND as f64;
    let nar_s = out.nar_time.as_secs_f64();
    println!("rows: {rows}, codes per row: {:?}", out.lens);
    let first_s = if masked {
        let s = out.masked_time.as_secs_f64();
        println!(
            "masked: {:>2} steps in {s:.3} s, {:.0} codes/s (first level, durations included)",
            out.masked_steps,
            codes as f64 / s
        );
        s
    } else {
        let s = out.ar_time.as_secs_f64();
        let sampling = out.ar_sampling_time.as_secs_f64();
        println!(
            "AR : {:>4} steps in {s:.3} s, {:.0} codes/s (first level)",
            out.ar_steps,
            codes as f64 / s
        );
        println!(
            "AR split: sampling {:.3} s ({:.1} % of the AR time, {:.1} us a step), model {:.3} s",
            sampling,
            100.0 * sampling / s.max(f64::MIN_POSITIVE),
            1e6 * sampling / out.ar_steps.max(1) as f64,
            s - sampling
        );
        s
    };
    println!(
        "NAR: {:>4} levels in {nar_s:.3} s, {:.0} codes/s",
        LEVELS - 1,
        (codes * (LEVELS - 1)) as f64 / nar_s
    );
    println!(
        "all: {:.3} s for {:.1} s of audio ({:.1}x real time), {:.0} codes/s",
        first_s + nar_s,
        audio_seconds,
        audio_seconds / (first_s + nar_s),
        out.codes_per_second()
    );
    out.padded_i64(-1)?
        .write_npy(&args.out)
        .with_context(|| format!("writing {}", args.out.display()))?;
    println!(
        "wrote {} ({:?} int64, -1 past each row's end)",
        args.out.display(),
        out.codes.dims()
    );
    Ok(())
}
