//! Every golden case of ../shared/golden through the sampler-core library API directly.

use candle_core::{DType, Device, Tensor};
use sampler_cli::golden::{cases, check_apply, check_distribution, Case};
use sampler_core::{History, Mode, Sampler, SamplerConfig, SamplingContext};

/// Runs the case through the library: the processed logits or the tokens of one seed.
fn run(case: &Case, seed: Option<u64>) -> Result<Tensor, String> {
    let text = std::fs::read_to_string(case.path("config.json")).unwrap();
    let cfg = SamplerConfig::from_json(&text).map_err(|e| e.to_string())?;
    let mode: Mode = case
        .mode()
        .parse()
        .map_err(|e: sampler_core::SamplerError| e.to_string())?;
    let mut sampler = Sampler::from_config(&cfg, mode).map_err(|e| e.to_string())?;
    let raw = Tensor::read_npy(case.path("logits.npy")).unwrap();
    let dims = raw.dims().to_vec();
    let (logits, token_shape) = match (mode, dims.as_slice()) {
        (Mode::Nar, &[b, t, v]) => (raw.reshape((b * t, v)).unwrap(), vec![b, t]),
        // Rank errors are the library's to report: pass the tensor as it is.
        (_, d) => (raw.clone(), vec![d[0]]),
    };
    let mut ctx = SamplingContext::new(seed.unwrap_or(0));
    if let Some(h) = case.history() {
        let h = Tensor::read_npy(h).unwrap().to_dtype(DType::I64).unwrap();
        let history = match mode {
            Mode::Ar => History::from_padded_rows(&h.to_vec2::<i64>().unwrap(), &Device::Cpu),
            Mode::Nar => History::nar_from_previous_level(&h.to_dtype(DType::U32).unwrap()),
        }
        .map_err(|e| e.to_string())?;
        ctx = ctx.with_history(history);
    }
    match seed {
        None => {
            let y = sampler.apply(&logits, &ctx).map_err(|e| e.to_string())?;
            let mut shape = token_shape;
            shape.push(y.dim(1).unwrap());
            Ok(y.reshape(shape).unwrap())
        }
        Some(_) => {
            let d = sampler.sample(&logits, &ctx).map_err(|e| e.to_string())?;
            Ok(d.tokens.to_dtype(DType::I64).unwrap())
        }
    }
}

#[test]
fn every_golden_case_passes_through_the_library() {
    let mut failures = Vec::new();
    for case in cases() {
        let res = match case.kind() {
            "apply" => run(&case, None).and_then(|y| check_apply(&case, &y)),
            "distribution" => {
                let toks = |s| run(&case, Some(s)).map(|t| t.to_vec1::<i64>().unwrap());
                case.seeds()
                    .into_iter()
                    .map(toks)
                    .collect::<Result<Vec<_>, _>>()
                    .and_then(|per_seed| {
                        let again = toks(case.seeds()[0])?;
                        if again != per_seed[0] {
                            return Err("the same seed gave different tokens".into());
                        }
                        check_distribution(&case, &per_seed)
                    })
            }
            "reject" => {
                let seed = (case.meta["command"].as_str() == Some("sample")).then_some(1);
                match run(&case, seed) {
                    Ok(_) => Err("accepted invalid input".into()),
                    Err(e) if e.is_empty() => Err("empty error message".into()),
                    Err(_) => Ok(()),
                }
            }
            other => Err(format!("unknown kind {other}")),
        };
        if let Err(e) = res {
            failures.push(format!("{}: {e}", case.name));
        }
    }
    assert!(
        failures.is_empty(),
        "golden failures:\n{}",
        failures.join("\n")
    );
}
