//! The conformance suite: every stage, alone and in random combinations, with scalar and
//! per-row parameters, on random batches (ties, -inf entries, histories with repeats), run by
//! every implementation this machine has and compared with the plain CPU path, the reference:
//! the same -inf set, finite values within 1e-5 relative, the same tokens (a draw whose uniform
//! falls within rounding of a cumulative boundary is recognised and must stay rare), the same
//! errors. Mirostat's state after 50 steps, entropix's metrics and states, DRY on histories
//! with breakers and windows and XTC's rows are checked on the way.

use candle_core::{Device, Tensor};
use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, RngSeed, TestRunner};
use sampler_core::processors::Entropix;
use sampler_core::processors::Mirostat;
use sampler_core::{
    ExecPath, History, Knob, MirostatVersion, Mode, RepetitionPenaltyMode, Sampler, SamplerBuilder,
    SamplerConfig, SamplerError, SamplingContext,
};

/// Every stage of the chain, as a user turns it on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Cfg,
    Ban,
    LogitBias,
    RepetitionDivide,
    RepetitionSignAware,
    FrequencyPresence,
    LengthPenalty,
    Dry,
    MinP,
    TopK,
    TopP,
    TypicalP,
    Xtc,
    Temperature,
    SigmoidTemperature,
    EntropyTemperature,
    TopNSigma,
    Greedy,
    MirostatV1,
    MirostatV2,
    Entropix,
}

const KINDS: [Kind; 21] = [
    Kind::Cfg,
    Kind::Ban,
    Kind::LogitBias,
    Kind::RepetitionDivide,
    Kind::RepetitionSignAware,
    Kind::FrequencyPresence,
    Kind::LengthPenalty,
    Kind::Dry,
    Kind::MinP,
    Kind::TopK,
    Kind::TopP,
    Kind::TypicalP,
    Kind::Xtc,
    Kind::Temperature,
    Kind::SigmoidTemperature,
    Kind::EntropyTemperature,
    Kind::TopNSigma,
    Kind::Greedy,
    Kind::MirostatV1,
    Kind::MirostatV2,
    Kind::Entropix,
];

/// The numeric keys of a stage and the values the suite draws them from.
fn knobs(kind: Kind) -> &'static [(Knob, &'static [f32])] {
    use Knob::*;
    match kind {
        Kind::Cfg => &[(CfgStrength, &[1.5, 2.5, 3.0]), (CfgRescale, &[0.0, 0.75])],
        Kind::Ban | Kind::LogitBias | Kind::Entropix => &[],
        Kind::RepetitionDivide => &[
            (RepetitionPenalty, &[1.3, 0.8, 1.5]),
            (RepetitionPenaltyDecay, &[0.0, 0.5]),
            (RepetitionPenaltyWindow, &[0.0, 3.0, 75.0]),
        ],
        // The sign-aware form takes no decay.
        Kind::RepetitionSignAware => &[
            (RepetitionPenalty, &[1.3, 0.8, 1.5]),
            (RepetitionPenaltyWindow, &[0.0, 3.0, 75.0]),
        ],
        Kind::FrequencyPresence => &[
            (FrequencyPenalty, &[0.2, 1.0]),
            (PresencePenalty, &[0.0, 0.5]),
            (RepetitionPenaltyWindow, &[0.0, 4.0]),
        ],
        Kind::LengthPenalty => &[(LengthPenalty, &[0.1, 0.5, 2.0])],
        Kind::Dry => &[
            (DryMultiplier, &[0.5, 0.8]),
            (DryBase, &[1.75, 2.0]),
            (DryAllowedLength, &[1.0, 2.0, 3.0]),
            (DryPenaltyLastN, &[0.0, 8.0]),
        ],
        Kind::MinP => &[
            (MinP, &[0.05, 0.2, 0.5]),
            (MinPMinTokens, &[0.0, 1.0, 3.0, 32.0]),
        ],
        Kind::TopK => &[(TopK, &[1.0, 3.0, 10.0])],
        Kind::TopP => &[(TopP, &[0.2, 0.5, 0.9])],
        Kind::TypicalP => &[(TypicalP, &[0.2, 0.5, 0.9])],
        Kind::Xtc => &[
            (XtcProbability, &[0.5, 1.0]),
            (XtcThreshold, &[0.05, 0.1, 0.3]),
        ],
        Kind::Temperature => &[(Temperature, &[0.5, 0.7, 1.3])],
        Kind::SigmoidTemperature => &[
            (Temperature, &[0.7, 1.0, 1.3]),
            (MinTemperature, &[0.3, 0.5]),
        ],
        Kind::EntropyTemperature => &[
            (Temperature, &[0.8, 1.0]),
            (DynatempRange, &[0.3, 0.5]),
            (DynatempExponent, &[1.0, 2.0]),
        ],
        Kind::TopNSigma => &[(TopNo, &[0.5, 1.0, 2.0])],
        Kind::Greedy => &[(Temperature, &[0.0])],
        Kind::MirostatV1 | Kind::MirostatV2 => {
            &[(MirostatTau, &[2.0, 3.0, 5.0]), (MirostatEta, &[0.1, 0.3])]
        }
    }
}

/// One stage as a case turns it on: a choice per key, optionally one per row, and the ids of
/// the list-valued keys (bans, biases, DRY breakers).
#[derive(Clone, Debug)]
struct Setting {
    kind: Kind,
    choice: Vec<usize>,
    per_row: Vec<Option<Vec<usize>>>,
    ids: Vec<u32>,
}

#[derive(Clone, Debug)]
struct Case {
    vocab: usize,
    logits: Vec<Vec<f32>>,
    null: Vec<Vec<f32>>,
    history: Vec<Vec<i64>>,
    settings: Vec<Setting>,
    seed: u64,
    step: u64,
}

fn setting(kind: Kind, rows: usize, vocab: usize) -> impl Strategy<Value = Setting> {
    let n = knobs(kind).len();
    let choice = prop::collection::vec(0usize..4, n);
    let per_row = prop::collection::vec(
        prop::option::weighted(0.3, prop::collection::vec(0usize..4, rows)),
        n,
    );
    let ids = prop::collection::vec(0..vocab as u32, 0..4);
    (choice, per_row, ids).prop_map(move |(choice, per_row, ids)| Setting {
        kind,
        choice,
        per_row,
        ids,
    })
}

fn rows_of(rows: usize, vocab: usize) -> impl Strategy<Value = Vec<Vec<f32>>> {
    let value = prop_oneof![
        1 => Just(f32::NEG_INFINITY),
        8 => (-24i32..24).prop_map(|k| k as f32 / 4.0),
    ];
    prop::collection::vec(prop::collection::vec(value, vocab), rows).prop_map(move |mut x| {
        // Every row keeps a finite logit.
        for (r, row) in x.iter_mut().enumerate() {
            if row.iter().all(|v| v.is_infinite()) {
                row[r % vocab] = 0.0;
            }
        }
        x
    })
}

/// A batch with the given stages (`None`: one to six stages drawn at random).
fn case(kinds: Option<Vec<Kind>>) -> impl Strategy<Value = Case> {
    let kinds = match kinds {
        Some(k) => Just(k).boxed(),
        None => prop::sample::subsequence(KINDS.to_vec(), 1..=6).boxed(),
    };
    (1usize..6, 2usize..70, kinds).prop_flat_map(|(rows, vocab, kinds)| {
        // A small alphabet makes repeats, so DRY finds matches.
        let alphabet = vocab.min(6) as i64;
        let history = prop::collection::vec(prop::collection::vec(0..alphabet, 0..16), rows);
        let settings: Vec<_> = kinds.iter().map(|&k| setting(k, rows, vocab)).collect();
        (
            rows_of(rows, vocab),
            rows_of(rows, vocab),
            history,
            settings,
            any::<u64>(),
            0u64..4,
        )
            .prop_map(move |(logits, null, history, settings, seed, step)| Case {
                vocab,
                logits,
                null,
                history,
                settings,
                seed,
                step,
            })
    })
}

/// The builder of a case: the stages' scalar keys in a config, their per-row keys as tensors.
fn builder(case: &Case, path: ExecPath, dev: &Device) -> SamplerBuilder {
    let mut cfg = SamplerConfig::default();
    for s in &case.settings {
        match s.kind {
            Kind::Ban => cfg.ban_tokens = s.ids.clone(),
            Kind::LogitBias => {
                for (i, &id) in s.ids.iter().enumerate() {
                    cfg.logit_bias.insert(id, [-2.0, 1.0, 3.0, -0.5][i % 4]);
                }
            }
            Kind::RepetitionSignAware => {
                cfg.repetition_penalty_mode = RepetitionPenaltyMode::SignAware
            }
            Kind::Dry => cfg.dry_sequence_breakers = s.ids.iter().map(|&i| i % 6).collect(),
            Kind::MirostatV1 => cfg.mirostat = MirostatVersion::V1,
            Kind::MirostatV2 => cfg.mirostat = MirostatVersion::V2,
            Kind::Entropix => cfg.entropix = true,
            _ => {}
        }
    }
    let mut b = SamplerBuilder::from_config(&cfg, Mode::Ar).path(path);
    for s in &case.settings {
        for (j, &(knob, values)) in knobs(s.kind).iter().enumerate() {
            let pick = |c: usize| values[c % values.len()];
            b = match &s.per_row[j] {
                Some(rows) => {
                    let v: Vec<f32> = rows.iter().map(|&c| pick(c)).collect();
                    b.set(knob, Tensor::new(v.as_slice(), dev).unwrap())
                }
                None => b.set(knob, pick(s.choice[j])),
            };
        }
    }
    b
}

fn tensor(rows: &[Vec<f32>], vocab: usize, dev: &Device) -> Tensor {
    let flat: Vec<f32> = rows.iter().flatten().copied().collect();
    Tensor::from_vec(flat, (rows.len(), vocab), dev).unwrap()
}

fn context(case: &Case, dev: &Device) -> SamplingContext {
    SamplingContext::new(case.seed)
        .with_step(case.step)
        .with_history(History::from_padded_rows(&case.history, dev).unwrap())
        .with_null_logits(tensor(&case.null, case.vocab, dev))
}

/// An implementation of the sampler: a path on a device.
struct Implementation {
    name: &'static str,
    path: ExecPath,
    device: Device,
}

/// The implementations to check against the plain CPU path; those this machine cannot run
/// are reported as skipped.
fn implementations() -> Vec<Implementation> {
    #[cfg_attr(not(any(feature = "cuda", feature = "metal")), allow(unused_mut))]
    let mut out = vec![Implementation {
        name: "fused CPU",
        path: ExecPath::Fused,
        device: Device::Cpu,
    }];
    #[cfg(feature = "cuda")]
    match Device::new_cuda(0) {
        Ok(device) => {
            out.push(Implementation {
                name: "plain CUDA",
                path: ExecPath::Plain,
                device: device.clone(),
            });
            out.push(Implementation {
                name: "fused CUDA",
                path: ExecPath::Fused,
                device,
            });
        }
        Err(e) => eprintln!("conformance: CUDA skipped (no device: {e})"),
    }
    #[cfg(not(feature = "cuda"))]
    eprintln!("conformance: CUDA skipped (built without the `cuda` feature)");
    #[cfg(feature = "metal")]
    match Device::new_metal(0) {
        Ok(device) => out.push(Implementation {
            name: "fused Metal",
            path: ExecPath::Fused,
            device,
        }),
        Err(e) => eprintln!("conformance: Metal skipped (no device: {e})"),
    }
    #[cfg(not(feature = "metal"))]
    eprintln!("conformance: Metal skipped (built without the `metal` feature)");
    out
}

/// Equality of processed logits: the same -inf set, finite values within 1e-5 relative.
fn same_logits(got: &[Vec<f32>], want: &[Vec<f32>]) -> Result<(), String> {
    for (r, (g, w)) in got.iter().zip(want).enumerate() {
        for (i, (a, b)) in g.iter().zip(w).enumerate() {
            let ok = if b.is_finite() {
                (a - b).abs() <= 1e-5 * b.abs() + 1e-6
            } else {
                a == b
            };
            if !ok {
                return Err(format!("row {r} id {i}: got {a}, reference {b}"));
            }
        }
    }
    Ok(())
}

/// Whether drawing from `x` (processed logits) with uniform `u` lands within rounding of the
/// cumulative boundary between tokens `a` and `b`.
fn boundary_draw(x: &[f32], u: f32, a: u32, b: u32) -> bool {
    let m = x.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let e: Vec<f64> = x.iter().map(|&v| (v as f64 - m).exp()).collect();
    let total: f64 = e.iter().sum();
    let upto: f64 = e[..=a.min(b) as usize].iter().sum();
    (upto - u as f64 * total).abs() <= 1e-5 * total
}

fn same_error(a: &SamplerError, b: &SamplerError) -> bool {
    std::mem::discriminant(a) == std::mem::discriminant(b)
}

/// What one case found.
#[derive(Default)]
struct Tally {
    cases: usize,
    rejected: usize,
    /// The first error both sides agreed on, for the report.
    rejection: Option<String>,
    draws: usize,
    boundary: usize,
}

/// Runs `case` on the reference and on `imp`; an error describes the first difference.
fn check(case: &Case, imp: &Implementation, tally: &mut Tally) -> Result<(), String> {
    let cpu = Device::Cpu;
    let dev = &imp.device;
    let reference = builder(case, ExecPath::Plain, &cpu).build();
    let other = builder(case, imp.path, dev).build();
    let (mut reference, mut other) = match (reference, other) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(a), Err(b)) if same_error(&a, &b) => {
            tally.rejected += 1;
            tally.rejection.get_or_insert_with(|| a.to_string());
            return Ok(());
        }
        (a, b) => {
            return Err(format!(
                "build: reference {:?}, {} {:?}",
                a.err(),
                imp.name,
                b.err()
            ))
        }
    };
    tally.cases += 1;
    let (x_ref, ctx_ref) = (tensor(&case.logits, case.vocab, &cpu), context(case, &cpu));
    let (x, ctx) = (tensor(&case.logits, case.vocab, dev), context(case, dev));
    let want = reference.apply(&x_ref, &ctx_ref);
    let got = other.apply(&x, &ctx);
    let want = match (want, got) {
        (Ok(w), Ok(g)) => {
            let w = w.to_vec2::<f32>().unwrap();
            same_logits(&g.to_vec2::<f32>().unwrap(), &w).map_err(|e| format!("apply: {e}"))?;
            w
        }
        (Err(a), Err(b)) if same_error(&a, &b) => return Ok(()),
        (a, b) => {
            return Err(format!(
                "apply: reference {:?}, {} {:?}",
                a.err(),
                imp.name,
                b.err()
            ))
        }
    };
    let dr = reference
        .sample(&x_ref, &ctx_ref)
        .map_err(|e| format!("reference sample: {e}"))?;
    let dg = other
        .sample(&x, &ctx)
        .map_err(|e| format!("{} sample: {e}", imp.name))?;
    let (tr, tg) = (
        dr.tokens.to_vec1::<u32>().unwrap(),
        dg.tokens.to_vec1::<u32>().unwrap(),
    );
    let (pr, pg) = (
        dr.probs.to_vec1::<f32>().unwrap(),
        dg.probs.to_vec1::<f32>().unwrap(),
    );
    let ids = ctx.row_ids(tr.len()).unwrap();
    for r in 0..tr.len() {
        tally.draws += 1;
        if tr[r] == tg[r] {
            if (pr[r] - pg[r]).abs() > 1e-5 * pr[r] + 1e-6 {
                return Err(format!("row {r}: probability {} vs {}", pr[r], pg[r]));
            }
        } else {
            let u = sampler_core::philox::uniform(case.seed, ids[r], case.step);
            if !boundary_draw(&want[r], u, tr[r], tg[r]) {
                return Err(format!(
                    "row {r}: reference drew {}, {} drew {}",
                    tr[r], imp.name, tg[r]
                ));
            }
            tally.boundary += 1;
        }
    }
    // Entropix: the same metrics and states.
    if let (Some(a), Some(b)) = (reference.find::<Entropix>(), other.find::<Entropix>()) {
        let (a, b) = (a.last_metrics().unwrap(), b.last_metrics().unwrap());
        let col = |t: &Tensor| {
            t.to_dtype(candle_core::DType::F32)
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
        };
        for (name, ta, tb) in [
            ("entropy", &a.entropy, &b.entropy),
            ("varentropy", &a.varentropy, &b.varentropy),
            ("state", &a.state, &b.state),
        ] {
            let (va, vb) = (col(ta), col(tb));
            for (x, y) in va.iter().zip(&vb) {
                if (x - y).abs() > 1e-4 * x.abs().max(1.0) {
                    return Err(format!(
                        "entropix {name}: reference {va:?}, {} {vb:?}",
                        imp.name
                    ));
                }
            }
        }
    }
    Ok(())
}

fn run_suite(name: &str, cases: u32, seed: u64, strategy: impl Strategy<Value = Case>) {
    let imps = implementations();
    let mut runner = TestRunner::new(ProptestConfig {
        cases,
        rng_seed: RngSeed::Fixed(seed),
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    let tally = std::cell::RefCell::new(Tally::default());
    let result = runner.run(&strategy, |case| {
        for imp in &imps {
            check(&case, imp, &mut tally.borrow_mut())
                .map_err(|e| TestCaseError::fail(format!("{}: {e}", imp.name)))?;
        }
        Ok(())
    });
    let t = tally.into_inner();
    if let Err(e) = result {
        panic!("{name}: {e}");
    }
    eprintln!(
        "{name}: {} cases compared, {} rejected alike ({}), {} draws, {} boundary draws",
        t.cases,
        t.rejected,
        t.rejection.as_deref().unwrap_or("none"),
        t.draws,
        t.boundary
    );
    assert!(
        t.cases * 4 >= (t.cases + t.rejected) * 3,
        "{name}: too many cases rejected"
    );
    assert!(
        t.boundary * 200 <= t.draws,
        "{name}: {} boundary draws in {}",
        t.boundary,
        t.draws
    );
}

#[test]
fn every_stage_alone() {
    for (i, &kind) in KINDS.iter().enumerate() {
        run_suite(
            &format!("{kind:?} alone"),
            48,
            0xc0f0 + i as u64,
            case(Some(vec![kind])),
        );
    }
}

#[test]
fn random_combinations_of_stages() {
    run_suite("combinations", 400, 0xc0ffee, case(None));
}

#[test]
fn mirostat_state_after_50_steps_is_the_same_on_every_implementation() {
    let cpu = Device::Cpu;
    for version in [MirostatVersion::V1, MirostatVersion::V2] {
        for imp in implementations() {
            let cfg = SamplerConfig {
                mirostat: version,
                mirostat_tau: 3.0,
                mirostat_eta: 0.2,
                top_k: 40,
                ..Default::default()
            };
            let build = |path, dev: &Device| {
                SamplerBuilder::from_config(&cfg, Mode::Ar)
                    .path(path)
                    .set(
                        Knob::MirostatTau,
                        Tensor::new(&[2.0f32, 3.0, 4.0, 5.0], dev).unwrap(),
                    )
                    .build()
                    .unwrap()
            };
            let mut reference = build(ExecPath::Plain, &cpu);
            let mut other = build(imp.path, &imp.device);
            for step in 0..50u64 {
                let rows: Vec<Vec<f32>> = (0..4)
                    .map(|r| {
                        (0..300)
                            .map(|i| (((i * 37 + r * 11 + step as usize * 7) % 101) as f32) / 12.0)
                            .collect()
                    })
                    .collect();
                let ctx = SamplingContext::new(77).with_step(step);
                let a = reference
                    .sample(&tensor(&rows, rows[0].len(), &cpu), &ctx)
                    .unwrap();
                let b = other
                    .sample(&tensor(&rows, rows[0].len(), &imp.device), &ctx)
                    .unwrap();
                assert_eq!(
                    a.tokens.to_vec1::<u32>().unwrap(),
                    b.tokens.to_vec1::<u32>().unwrap(),
                    "{version:?} {}: step {step}",
                    imp.name
                );
            }
            let mu = |s: &Sampler, dev: &Device| {
                s.find::<Mirostat>()
                    .unwrap()
                    .mu(4, dev)
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap()
            };
            let (a, b) = (mu(&reference, &cpu), mu(&other, &imp.device));
            for (x, y) in a.iter().zip(&b) {
                assert!(
                    (x - y).abs() <= 1e-5 * x.abs().max(1.0),
                    "{version:?} {}: mu {a:?} vs {b:?}",
                    imp.name
                );
            }
            assert!(
                a.iter()
                    .zip([4.0f32, 6.0, 8.0, 10.0])
                    .all(|(m, start)| *m != start),
                "mu moved: {a:?}"
            );
        }
    }
}
