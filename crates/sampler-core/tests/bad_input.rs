//! Every class of bad input gives an error (never a panic, never a silent NaN).

use candle_core::{Device, Tensor};
use sampler_core::processors::{BanTokens, LogitBias};
use sampler_core::{
    History, LogitsProcessor, Mode, Sampler, SamplerBuilder, SamplerConfig, SamplerError,
    SamplingContext,
};

fn logits(rows: usize, vocab: usize) -> Tensor {
    Tensor::arange(0f32, (rows * vocab) as f32, &Device::Cpu)
        .unwrap()
        .reshape((rows, vocab))
        .unwrap()
}

fn sampler() -> Sampler {
    Sampler::from_config(
        &SamplerConfig {
            top_k: 3,
            ..Default::default()
        },
        Mode::Ar,
    )
    .unwrap()
}

#[test]
fn nan_and_pos_inf_logits() {
    let mut v = vec![0f32; 8];
    v[5] = f32::NAN;
    let x = Tensor::from_vec(v.clone(), (2, 4), &Device::Cpu).unwrap();
    let err = sampler().apply(&x, &SamplingContext::new(0)).unwrap_err();
    assert!(
        matches!(err, SamplerError::NanLogits { row: 1, .. }),
        "{err}"
    );
    v[5] = f32::INFINITY;
    let x = Tensor::from_vec(v, (2, 4), &Device::Cpu).unwrap();
    assert!(sampler().apply(&x, &SamplingContext::new(0)).is_err());
}

#[test]
fn all_neg_inf_row_is_named() {
    let mut v = vec![0f32; 8];
    v[4..].iter_mut().for_each(|x| *x = f32::NEG_INFINITY);
    let x = Tensor::from_vec(v, (2, 4), &Device::Cpu).unwrap();
    let err = sampler()
        .clone()
        .sample(&x, &SamplingContext::new(0))
        .unwrap_err();
    assert!(matches!(err, SamplerError::AllMasked { row: 1 }), "{err}");
    assert!(err.to_string().contains("row 1"));
    // A ban that removes the last finite token is caught too.
    let x = Tensor::new(&[[f32::NEG_INFINITY, 1.0]], &Device::Cpu).unwrap();
    let s = SamplerBuilder::new(Mode::Nar).build().unwrap();
    assert!(matches!(
        s.apply(&x, &SamplingContext::new(0)),
        Err(SamplerError::AllMasked { row: 0 })
    ));
}

#[test]
fn token_ids_out_of_vocabulary() {
    let x = logits(2, 4);
    let h = History::from_padded_rows(&[vec![1, 4], vec![0, -1]], &Device::Cpu).unwrap();
    let err = sampler()
        .apply(&x, &SamplingContext::new(0).with_history(h))
        .unwrap_err();
    assert!(
        matches!(err, SamplerError::TokenOutOfRange { id: 4, .. }),
        "{err}"
    );
    let ctx = SamplingContext::new(0);
    assert!(BanTokens::new(vec![4]).apply(&x, &ctx).is_err());
    assert!(LogitBias::new(vec![(9, 1.0)])
        .unwrap()
        .apply(&x, &ctx)
        .is_err());
    let stop = SamplerBuilder::new(Mode::Nar)
        .stop_token(Some(7))
        .build()
        .unwrap();
    assert!(stop.apply(&x, &ctx).is_err());
}

#[test]
fn history_rows_must_match() {
    let h = History::from_padded_rows(&[vec![1]], &Device::Cpu).unwrap();
    let err = sampler()
        .apply(&logits(2, 4), &SamplingContext::new(0).with_history(h))
        .unwrap_err();
    assert!(err.to_string().contains("rows"), "{err}");
}

#[test]
fn wrong_rank() {
    let x = Tensor::zeros((2, 3, 4), candle_core::DType::F32, &Device::Cpu).unwrap();
    assert!(matches!(
        sampler().apply(&x, &SamplingContext::new(0)),
        Err(SamplerError::Shape(_))
    ));
    let x = Tensor::zeros(4, candle_core::DType::F32, &Device::Cpu).unwrap();
    assert!(sampler().apply(&x, &SamplingContext::new(0)).is_err());
}

#[test]
fn parameters_out_of_range() {
    let b = || SamplerBuilder::new(Mode::Ar);
    assert!(b().top_p(1.5).build().is_err());
    assert!(b().top_p(-0.1).build().is_err());
    assert!(b().min_p(1.5).build().is_err());
    assert!(b().repetition_penalty(0.0).build().is_err());
    assert!(b().repetition_penalty(-1.0).build().is_err());
    assert!(b().temperature(f32::NAN).build().is_err());
    assert!(b().top_no(f32::NAN).build().is_err());
    let per_row = Tensor::new(&[0.5f32, 1.2], &Device::Cpu).unwrap();
    assert!(b().top_p(per_row).build().is_err());
    for bad in [
        r#"{"dry_base": 0.9}"#,
        r#"{"min_p_min_tokens": -1}"#,
        r#"{"top_k": "x"}"#,
    ] {
        assert!(SamplerConfig::from_json(bad).is_err(), "{bad}");
    }
}

#[test]
fn per_row_parameter_of_wrong_length() {
    let t = Tensor::new(&[0.5f32, 1.2, 1.0], &Device::Cpu).unwrap();
    let s = SamplerBuilder::new(Mode::Ar)
        .temperature(t)
        .build()
        .unwrap();
    assert!(matches!(
        s.apply(&logits(2, 4), &SamplingContext::new(0)),
        Err(SamplerError::Shape(_))
    ));
}

#[test]
fn unknown_config_keys() {
    let err = SamplerConfig::from_json(r#"{"temperature": 1.0, "top_kk": 3}"#).unwrap_err();
    assert!(err.to_string().contains("unknown field"), "{err}");
}

/// A step that pushes a finite logit past f32's range saturates at the largest finite value on
/// both paths, so the draw stays defined: all mass on the saturated token, never a NaN.
#[test]
fn upward_overflow_saturates_on_both_paths() {
    use sampler_core::ExecPath;
    let x = Tensor::new(&[[3e38f32, -1.187, 1.878], [0.1, 0.2, 0.3]], &Device::Cpu).unwrap();
    for path in [ExecPath::Plain, ExecPath::Fused] {
        for cfg in [
            r#"{"dynatemp_range": 1.0}"#,
            r#"{"temperature": 0.01}"#,
            r#"{"temperature": 0.01, "top_k": 2}"#,
            r#"{"logit_bias": {"0": 3e38}}"#,
        ] {
            let c: SamplerConfig = serde_json::from_str(cfg).unwrap();
            let mut s = SamplerBuilder::from_config(&c, Mode::Ar)
                .path(path)
                .build()
                .unwrap();
            let out = s.apply(&x, &SamplingContext::new(1)).unwrap();
            assert_eq!(
                out.to_vec2::<f32>().unwrap()[0][0],
                f32::MAX,
                "{path:?} {cfg}"
            );
            let d = s.sample(&x, &SamplingContext::new(1)).unwrap();
            assert_eq!(d.tokens.to_vec1::<u32>().unwrap()[0], 0, "{path:?} {cfg}");
            assert_eq!(d.probs.to_vec1::<f32>().unwrap()[0], 1.0, "{path:?} {cfg}");
        }
    }
}

/// On the CPU, turning validation off changes nothing: the fused op checks every row during its
/// one pass and the plain path always checks, so bad logits and history ids give the same typed
/// errors with validation on and off, on both paths.
#[test]
fn cpu_checks_hold_with_validation_off() {
    use sampler_core::ExecPath;
    let nan = Tensor::new(&[[0.0f32, 1.0], [f32::NAN, 0.0]], &Device::Cpu).unwrap();
    let inf = Tensor::new(&[[0.0f32, f32::INFINITY], [0.0, 0.0]], &Device::Cpu).unwrap();
    let masked = Tensor::new(&[[0.0f32, 1.0], [f32::NEG_INFINITY; 2]], &Device::Cpu).unwrap();
    let history = History::from_padded_rows(&[vec![0, 5], vec![1, -1]], &Device::Cpu).unwrap();
    for path in [ExecPath::Plain, ExecPath::Fused] {
        for validate in [true, false] {
            let cfg = SamplerConfig {
                top_k: 1,
                repetition_penalty: 1.5,
                ..Default::default()
            };
            let mut s = SamplerBuilder::from_config(&cfg, Mode::Ar)
                .path(path)
                .build()
                .unwrap();
            let ctx = SamplingContext::new(0).with_validation(validate);
            let what = format!("{path:?}, validation {validate}");
            let e = s.sample(&nan, &ctx).unwrap_err();
            assert!(
                matches!(e, SamplerError::NanLogits { row: 1, .. }),
                "{what}: {e}"
            );
            let e = s.sample(&inf, &ctx).unwrap_err();
            assert!(
                matches!(e, SamplerError::PosInfLogits { row: 0, .. }),
                "{what}: {e}"
            );
            let e = s.sample(&masked, &ctx).unwrap_err();
            assert!(
                matches!(e, SamplerError::AllMasked { row: 1 }),
                "{what}: {e}"
            );
            let e = s.apply(&masked, &ctx).unwrap_err();
            assert!(
                matches!(e, SamplerError::AllMasked { row: 1 }),
                "{what}: {e}"
            );
            let ctx = ctx.with_history(history.clone());
            let ok = Tensor::new(&[[0.0f32, 1.0], [1.0, 0.0]], &Device::Cpu).unwrap();
            let e = s.sample(&ok, &ctx).unwrap_err();
            assert!(
                matches!(
                    e,
                    SamplerError::TokenOutOfRange {
                        id: 5,
                        vocab: 2,
                        ..
                    }
                ),
                "{what}: {e}"
            );
        }
    }
}
