//! The robustness harness: random configurations (valid, out of range, wrong JSON types, NaN and
//! infinite parameters, per-row tensors of the wrong length or dtype), random shapes (no rows,
//! vocabularies of 1 and 2, a 256k vocabulary now and then), logits holding NaN, +inf, -inf,
//! denormals and whole -inf rows in f32, f16, bf16 and f64, histories with -1 padding in the middle,
//! ids past the vocabulary and the wrong number of rows, NAR histories shorter than the positions,
//! through both paths with validation on and off. Every call must return `Ok` or a typed error;
//! never a panic, never a NaN token, probability or processed logit.
//!
//! `SAMPLER_ROBUSTNESS_CASES` sets the number of cases (default 3000) and
//! `SAMPLER_ROBUSTNESS_SECONDS` bounds the run by time instead; `scripts/fuzz.sh` runs it long.

use std::cell::Cell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::{Duration, Instant};

use candle_core::{DType, Device, Tensor};
use proptest::test_runner::{
    Config as ProptestConfig, RngAlgorithm, TestCaseError, TestRng, TestRunner,
};
use sampler_core::{
    ExecPath, History, Knob, Mode, RowParam, Sampler, SamplerBuilder, SamplerConfig, SamplerError,
    SamplingContext,
};
use serde_json::{json, Map, Value};

/// xorshift64*: the case generator, driven by the seed proptest hands each case.
struct Gen(u64);

impl Gen {
    fn new(seed: u64) -> Self {
        Gen(seed | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    fn chance(&mut self, p: f64) -> bool {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64 <= p
    }
    fn unit(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32
    }
    fn pick<T: Clone>(&mut self, from: &[T]) -> T {
        from[self.below(from.len())].clone()
    }
    fn normal(&mut self) -> f32 {
        // Irwin-Hall: good enough for logits.
        (0..4).map(|_| self.unit()).sum::<f32>() - 2.0
    }
}

/// Every config key with a few values a user might write, valid or not.
fn typical(key: &str) -> Vec<Value> {
    match key {
        "temperature" | "min_temperature" => vec![json!(0.0), json!(0.7), json!(1.5), json!(-1.0)],
        "top_k" | "min_p_min_tokens" | "beam_width" => {
            vec![json!(0), json!(1), json!(5), json!(40), json!(1_000_000)]
        }
        "top_p" | "min_p" | "typical_p" | "xtc_probability" | "xtc_threshold" | "cfg_rescale" => {
            vec![json!(0.0), json!(0.05), json!(0.5), json!(0.9), json!(1.0)]
        }
        "repetition_penalty" => vec![json!(1.0), json!(1.3), json!(0.8), json!(0.0)],
        "repetition_penalty_decay" => vec![json!(0.0), json!(0.5), json!(1.0)],
        "repetition_penalty_window" | "dry_penalty_last_n" | "dry_allowed_length" => {
            vec![json!(0), json!(1), json!(2), json!(75), json!(-1)]
        }
        "repetition_penalty_mode" => vec![json!("divide"), json!("sign_aware"), json!("both")],
        "frequency_penalty" | "presence_penalty" | "length_penalty" => {
            vec![json!(0.0), json!(0.5), json!(-0.5), json!(2.0)]
        }
        "stop_token" => vec![json!(0), json!(1), json!(3), json!(1024), json!(null)],
        "logit_bias" => vec![json!({}), json!({"0": 2.0}), json!({"1": -100.0, "7": 1.0})],
        "ban_tokens" | "dry_sequence_breakers" => {
            vec![json!([]), json!([0]), json!([1, 2]), json!([5000])]
        }
        "dynatemp_range" | "dynatemp_exponent" => vec![json!(0.0), json!(0.5), json!(1.0)],
        "top_no" => vec![json!(0.0), json!(1.0), json!(3.0)],
        "dry_multiplier" => vec![json!(0.0), json!(0.8)],
        "dry_base" => vec![json!(1.75), json!(1.0), json!(0.5)],
        "mirostat" => vec![json!(0), json!(1), json!(2), json!(3)],
        "mirostat_tau" | "mirostat_eta" => vec![json!(5.0), json!(0.1), json!(0.0)],
        "entropix" => vec![json!(false), json!(true)],
        "cfg_strength" => vec![json!(1.0), json!(2.5), json!(0.0)],
        other => panic!("no values for {other}"),
    }
}

/// Values that are wrong for every key: wrong JSON types, huge magnitudes, negative counts.
fn hostile() -> Vec<Value> {
    vec![
        json!("x"),
        json!(true),
        json!([]),
        json!({}),
        json!(null),
        json!(1e30),
        json!(-1e30),
        json!(i64::MAX),
        json!(i64::MIN),
        json!(u64::MAX),
        json!(-0.0),
        json!(1e-45),
        json!([1e30]),
        json!({"99999999999": 1.0}),
    ]
}

fn config_keys() -> Vec<String> {
    match serde_json::to_value(SamplerConfig::default()).unwrap() {
        Value::Object(m) => m.keys().cloned().collect(),
        _ => unreachable!("a struct serialises to an object"),
    }
}

fn random_config(g: &mut Gen, keys: &[String]) -> Value {
    let mut m = Map::new();
    for _ in 0..g.below(7) {
        let key = g.pick(keys);
        let v = if g.chance(0.8) {
            g.pick(&typical(&key))
        } else {
            g.pick(&hostile())
        };
        m.insert(key, v);
    }
    if g.chance(0.02) {
        m.insert("tmperature".into(), json!(1.0));
    }
    Value::Object(m)
}

/// A logit value: mostly ordinary, sometimes one of the values that break samplers.
fn logit(g: &mut Gen, spice: f64) -> f32 {
    if !g.chance(spice) {
        return g.normal() * 3.0;
    }
    g.pick(&[
        f32::NEG_INFINITY,
        f32::NEG_INFINITY,
        f32::NEG_INFINITY,
        f32::INFINITY,
        f32::NAN,
        1e-40,
        -1e-40,
        0.0,
        3.0e38,
        -3.0e38,
        65504.0,
    ])
}

#[derive(Debug)]
struct Case {
    config: Value,
    mode: Mode,
    rows: usize,
    vocab: usize,
    dtype: DType,
    logits: Vec<f32>,
    null_logits: Option<(usize, Vec<f32>)>,
    history: Option<Vec<Vec<i64>>>,
    per_row: Vec<(Knob, usize, DType, f32)>,
    path: ExecPath,
    validate: bool,
    seed: u64,
}

fn random_case(g: &mut Gen, keys: &[String]) -> Case {
    let mode = if g.chance(0.7) { Mode::Ar } else { Mode::Nar };
    let rows = g.pick(&[0, 1, 1, 2, 3, 5, 8, 9]);
    let vocab = if g.chance(0.003) {
        262_144
    } else if g.chance(0.02) {
        32_000
    } else {
        g.pick(&[1, 2, 2, 3, 7, 16, 33, 100, 1025])
    };
    let spice = g.pick(&[0.0, 0.0, 0.001, 0.05, 0.5]);
    let mut logits: Vec<f32> = (0..rows * vocab).map(|_| logit(g, spice)).collect();
    if rows > 0 && g.chance(0.1) {
        let r = g.below(rows);
        logits[r * vocab..(r + 1) * vocab].fill(f32::NEG_INFINITY);
    }
    let null_logits = g.chance(0.3).then(|| {
        let r = if g.chance(0.9) { rows } else { rows + 1 };
        (r, (0..r * vocab).map(|_| logit(g, spice)).collect())
    });
    let history = g.chance(0.6).then(|| {
        let hrows = if g.chance(0.92) {
            rows
        } else {
            g.pick(&[0, rows + 1, rows.saturating_sub(1)])
        };
        let width = if mode == Mode::Nar && g.chance(0.9) {
            // NAR: the previous level's codes, sometimes shorter than the positions.
            if g.chance(0.8) {
                vocab.min(40)
            } else {
                g.below(4)
            }
        } else {
            g.pick(&[0, 1, 5, 75, 300])
        };
        let alphabet = vocab.clamp(1, 12) as i64;
        (0..hrows)
            .map(|_| {
                let len = g.below(width + 1);
                (0..width)
                    .map(|j| {
                        if j >= len {
                            -1
                        } else if g.chance(0.01) {
                            vocab as i64 + g.below(3) as i64
                        } else if g.chance(0.01) {
                            -1
                        } else {
                            (g.next() % alphabet as u64) as i64
                        }
                    })
                    .collect()
            })
            .collect()
    });
    let per_row = (0..g.below(3))
        .map(|_| {
            let knob = g.pick(Knob::ALL);
            let len = if g.chance(0.85) { rows } else { rows + 1 };
            let dtype = g.pick(&[DType::F32, DType::F32, DType::F64, DType::U32, DType::I64]);
            let v = if g.chance(0.9) {
                g.pick(&[0.0, 0.05, 0.5, 0.9, 1.0, 1.5, 3.0])
            } else {
                g.pick(&[f32::NAN, f32::INFINITY, f32::NEG_INFINITY, -1.0, 1e30])
            };
            (knob, len, dtype, v)
        })
        .collect();
    let dtype = g.pick(&[
        DType::F32,
        DType::F32,
        DType::F32,
        DType::F16,
        DType::BF16,
        DType::F64,
    ]);
    Case {
        config: random_config(g, keys),
        mode,
        rows,
        vocab,
        dtype,
        logits,
        null_logits,
        history,
        per_row,
        path: if g.chance(0.5) {
            ExecPath::Fused
        } else {
            ExecPath::Plain
        },
        validate: g.chance(0.75),
        seed: g.next(),
    }
}

/// What a case did, when it did not panic.
enum Outcome {
    Ok,
    Rejected(SamplerError),
}

fn nan_free(t: &Tensor, what: &str) -> Result<(), String> {
    let v = t
        .to_dtype(DType::F32)
        .and_then(|t| t.flatten_all())
        .and_then(|t| t.to_vec1::<f32>())
        .map_err(|e| format!("{what}: {e}"))?;
    match v.iter().position(|x| x.is_nan()) {
        Some(i) => Err(format!("{what} holds NaN at {i}")),
        None => Ok(()),
    }
}

/// `[rows, vocab]`; in NAR mode the rows are the positions of one sequence.
fn shaped(case: &Case, data: &[f32], rows: usize) -> candle_core::Result<Tensor> {
    Tensor::from_slice(data, (rows, case.vocab), &Device::Cpu)?.to_dtype(case.dtype)
}

/// Runs one case; `Err` is a harness failure (a NaN output, a wrong token, an untyped error).
fn run(case: &Case) -> Result<Outcome, String> {
    let cfg: SamplerConfig = match serde_json::from_value(case.config.clone()) {
        Ok(c) => c,
        Err(_) => return Ok(Outcome::Ok),
    };
    let mut builder = SamplerBuilder::from_config(&cfg, case.mode).path(case.path);
    for &(knob, len, dtype, v) in &case.per_row {
        let t = Tensor::from_vec(vec![v; len], len, &Device::Cpu)
            .and_then(|t| t.to_dtype(dtype))
            .map_err(|e| e.to_string())?;
        builder = builder.set(knob, RowParam::PerRow(t));
    }
    let mut sampler: Sampler = match builder.build() {
        Ok(s) => s,
        Err(e) => return Ok(Outcome::Rejected(e)),
    };
    let logits = shaped(case, &case.logits, case.rows).map_err(|e| e.to_string())?;
    let mut ctx = SamplingContext::new(case.seed).with_validation(case.validate);
    if let Some((r, data)) = &case.null_logits {
        ctx = ctx.with_null_logits(shaped(case, data, *r).map_err(|e| e.to_string())?);
    }
    if let Some(rows) = &case.history {
        let h = match case.mode {
            Mode::Ar => History::from_padded_rows(rows, &Device::Cpu),
            Mode::Nar => {
                let codes: Vec<i64> = rows.iter().take(1).flatten().copied().collect();
                Tensor::from_vec(codes.clone(), (1, codes.len()), &Device::Cpu)
                    .map_err(SamplerError::from)
                    .and_then(|t| History::nar_from_previous_level(&t))
            }
        };
        match h {
            Ok(h) => ctx = ctx.with_history(h),
            Err(e) => return Ok(Outcome::Rejected(e)),
        }
    }
    let out = match sampler.apply(&logits, &ctx) {
        Ok(out) => out,
        Err(e) => return Ok(Outcome::Rejected(e)),
    };
    if out.dims() != logits.dims() {
        return Err(format!(
            "apply: shape {:?} for {:?}",
            out.dims(),
            logits.dims()
        ));
    }
    if case.validate {
        nan_free(&out, "processed logits")?;
    }
    let drawn = match sampler.sample(&logits, &ctx) {
        Ok(d) => d,
        Err(e) => return Ok(Outcome::Rejected(e)),
    };
    let tokens = drawn
        .tokens
        .flatten_all()
        .and_then(|t| t.to_vec1::<u32>())
        .map_err(|e| e.to_string())?;
    if tokens.len() != case.rows {
        return Err(format!("{} tokens for {} rows", tokens.len(), case.rows));
    }
    if let Some(t) = tokens.iter().find(|&&t| t as usize >= case.vocab) {
        return Err(format!("token {t} outside vocabulary {}", case.vocab));
    }
    nan_free(&drawn.probs, "probabilities")?;
    nan_free(&drawn.logprobs, "logprobs")?;
    let probs = drawn.probs.flatten_all().and_then(|t| t.to_vec1::<f32>());
    if let Some(p) = probs
        .map_err(|e| e.to_string())?
        .iter()
        .find(|p| !(0.0..=1.0).contains(*p))
    {
        return Err(format!("probability {p} outside [0, 1]"));
    }
    Ok(Outcome::Ok)
}

/// An error is acceptable when it is typed: candle's own errors only for what candle rejects
/// before the sampler sees it (none of the harness's inputs should reach one).
fn typed(e: &SamplerError) -> Result<(), String> {
    match e {
        SamplerError::Candle(inner) => Err(format!("untyped candle error: {inner}")),
        SamplerError::Shape(m) | SamplerError::Config(m) | SamplerError::MissingInput(m)
            if m.is_empty() =>
        {
            Err("an error without a message".into())
        }
        _ => Ok(()),
    }
}

fn budget() -> (u32, Option<Duration>) {
    let cases = std::env::var("SAMPLER_ROBUSTNESS_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3000);
    let secs = std::env::var("SAMPLER_ROBUSTNESS_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .map(Duration::from_secs);
    (cases, secs)
}

/// Runs `cases` cases from the proptest stream seeded with `seed`; returns (run, rejected).
fn round(keys: &[String], cases: u32, seed: u64) -> Result<(u64, u64), String> {
    let mut runner = TestRunner::new_with_rng(
        ProptestConfig {
            cases,
            failure_persistence: None,
            max_shrink_iters: 0,
            ..ProptestConfig::default()
        },
        TestRng::from_seed(
            RngAlgorithm::ChaCha,
            &[seed.to_le_bytes(), [7; 8], [9; 8], [11; 8]].concat(),
        ),
    );
    let (done, rejected) = (Cell::new(0u64), Cell::new(0u64));
    let result = runner.run(&proptest::num::u64::ANY, |seed| {
        let case = random_case(&mut Gen::new(seed), keys);
        done.set(done.get() + 1);
        match catch_unwind(AssertUnwindSafe(|| run(&case))) {
            Err(p) => {
                let msg = p
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                Err(TestCaseError::fail(format!("panic: {msg}\n{case:?}")))
            }
            Ok(Err(m)) => Err(TestCaseError::fail(format!("{m}\n{case:?}"))),
            Ok(Ok(Outcome::Rejected(e))) => {
                rejected.set(rejected.get() + 1);
                typed(&e).map_err(|m| TestCaseError::fail(format!("{m}\n{case:?}")))
            }
            Ok(Ok(Outcome::Ok)) => Ok(()),
        }
    });
    result.map_err(|e| format!("round seeded {seed}: {e}"))?;
    Ok((done.get(), rejected.get()))
}

#[test]
fn no_input_panics_or_yields_nan() {
    // Panics inside a case are caught and reported as failures; keep the default hook quiet.
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let keys = config_keys();
    let (cases, time) = budget();
    let start = Instant::now();
    let outcome = (|| {
        let (mut done, mut rejected) = (0u64, 0u64);
        let mut seed = 20261202u64;
        loop {
            let n = if time.is_some() { 500 } else { cases };
            let (d, r) = round(&keys, n, seed)?;
            done += d;
            rejected += r;
            seed += 1;
            if time.is_none_or(|t| start.elapsed() >= t) {
                return Ok::<_, String>((done, rejected));
            }
        }
    })();
    std::panic::set_hook(hook);
    let (done, rejected) = outcome.unwrap_or_else(|m| panic!("{m}"));
    println!("{done} cases, 0 panics ({rejected} rejected with a typed error)");
    assert!(done >= cases.min(100) as u64, "only {done} cases ran");
}
