//! The samplers beyond the reference pipeline through the public API: where the builder puts
//! each of them in the default chain, that their defaults leave the reference chain untouched,
//! and that they work from a `SamplerConfig` on a batch.

use candle_core::{Device, Tensor};
use sampler_core::processors::Mirostat;
use sampler_core::{
    ExecPath, History, MirostatVersion, Mode, RepetitionPenaltyMode, Sampler, SamplerBuilder,
    SamplerConfig, SamplingContext,
};

fn logits(rows: usize, vocab: usize) -> Tensor {
    // Deterministic, distinct values.
    let v: Vec<f32> = (0..rows * vocab)
        .map(|i| ((i * 7919 % 1009) as f32) * 0.01 - 5.0)
        .collect();
    Tensor::from_vec(v, (rows, vocab), &Device::Cpu).unwrap()
}

/// The processors in the builder's order, then the selector unless it is the plain draw.
fn chain_names(cfg: &SamplerConfig, mode: Mode) -> Vec<&'static str> {
    cfg.validate().unwrap();
    let b = SamplerBuilder::from_config(cfg, mode).path(ExecPath::Plain);
    let mut names = b.build_chain().unwrap().names();
    let selector = b.build_selector().unwrap().name();
    if selector != "draw" {
        names.push(selector);
    }
    names
}

#[test]
fn defaults_build_the_reference_chain() {
    let d = SamplerConfig::default();
    assert!(chain_names(&d, Mode::Ar).is_empty());
    assert_eq!(chain_names(&d, Mode::Nar), vec!["ban_tokens"]);
    let ar = SamplerConfig::vall_e_ar();
    assert_eq!(
        chain_names(&ar, Mode::Ar),
        vec![
            "repetition_penalty",
            "length_penalty",
            "min_p",
            "top_k",
            "top_p"
        ]
    );
}

#[test]
fn every_processor_in_its_documented_place() {
    let cfg = SamplerConfig::from_json(
        r#"{
            "cfg_strength": 1.5, "ban_tokens": [3], "logit_bias": {"4": 0.5},
            "repetition_penalty": 1.3, "frequency_penalty": 0.1, "presence_penalty": 0.1,
            "length_penalty": 0.2, "min_p": 0.05, "top_k": 40, "top_p": 0.9, "typical_p": 0.95,
            "xtc_probability": 0.5, "temperature": 0.8, "dynatemp_range": 0.3, "top_no": 2.0,
            "dry_multiplier": 0.8, "mirostat": 2
        }"#,
    )
    .unwrap();
    assert_eq!(
        chain_names(&cfg, Mode::Nar),
        vec![
            "cfg",
            "ban_tokens",
            "ban_tokens",
            "logit_bias",
            "repetition_penalty",
            "frequency_presence_penalty",
            "min_p",
            "top_k",
            "top_p",
            "typical_p",
            "xtc",
            "entropy_temperature",
            "top_n_sigma",
            "dry",
            "mirostat_v2",
        ]
    );
    let cfg = SamplerConfig {
        entropix: true,
        temperature: 0.5,
        ..Default::default()
    };
    assert_eq!(chain_names(&cfg, Mode::Ar), vec!["temperature", "entropix"]);
    let cfg = SamplerConfig {
        repetition_penalty: 1.5,
        repetition_penalty_mode: RepetitionPenaltyMode::SignAware,
        ..Default::default()
    };
    assert_eq!(
        chain_names(&cfg, Mode::Ar),
        vec!["repetition_penalty_sign_aware"]
    );
}

#[test]
fn fused_and_plain_paths_agree_with_the_new_processors() -> anyhow::Result<()> {
    // The fused path replaces the segments it recognises; the new processors must keep their
    // place and meaning around them.
    let x = logits(6, 300);
    let rows: Vec<Vec<i64>> = (0..6)
        .map(|r| (0..20).map(|i| ((i * 7 + r) % 11) as i64).collect())
        .collect();
    let ctx = SamplingContext::new(5).with_history(History::from_padded_rows(&rows, &Device::Cpu)?);
    for json in [
        r#"{"repetition_penalty": 1.3, "frequency_penalty": 0.2, "top_k": 40, "typical_p": 0.9, "dry_multiplier": 0.8}"#,
        r#"{"repetition_penalty": 1.3, "repetition_penalty_mode": "sign_aware", "length_penalty": 0.3, "top_p": 0.9}"#,
        r#"{"min_p": 0.05, "xtc_probability": 1.0, "xtc_threshold": 0.01, "temperature": 0.7, "dynatemp_range": 0.3}"#,
        r#"{"top_k": 30, "temperature": 0.8, "mirostat": 2, "mirostat_tau": 2.0}"#,
        r#"{"logit_bias": {"3": 2.0}, "ban_tokens": [4], "repetition_penalty": 1.2, "entropix": true}"#,
    ] {
        let cfg = SamplerConfig::from_json(json)?;
        let plain = SamplerBuilder::from_config(&cfg, Mode::Ar)
            .path(ExecPath::Plain)
            .build()?;
        let fused = SamplerBuilder::from_config(&cfg, Mode::Ar)
            .path(ExecPath::Fused)
            .build()?;
        let (a, b) = (
            plain.apply(&x, &ctx)?.to_vec2::<f32>()?,
            fused.apply(&x, &ctx)?.to_vec2::<f32>()?,
        );
        for (ra, rb) in a.iter().zip(&b) {
            for (va, vb) in ra.iter().zip(rb) {
                let same =
                    (va.is_infinite() && va == vb) || (va - vb).abs() <= 1e-5 * va.abs().max(1.0);
                assert!(same, "{json}: plain {va} vs fused {vb}");
            }
        }
    }
    Ok(())
}

#[test]
fn new_defaults_leave_the_logits_alone() -> anyhow::Result<()> {
    let x = logits(4, 50);
    let h = History::from_padded_rows(
        &[
            vec![1, 2, 1, 2, 1],
            vec![3, -1, -1, -1, -1],
            vec![-1; 5],
            vec![7; 5],
        ],
        &Device::Cpu,
    )?;
    let ctx = SamplingContext::new(0).with_history(h);
    let y = Sampler::from_config(&SamplerConfig::default(), Mode::Ar)?.apply(&x, &ctx)?;
    assert_eq!(y.to_vec2::<f32>()?, x.to_vec2::<f32>()?);
    Ok(())
}

#[test]
fn config_keys_drive_the_processors() -> anyhow::Result<()> {
    let dev = Device::Cpu;
    let x = Tensor::new(&[[2f32, -2.0, 1.0, 0.5, 0.0]], &dev)?;
    let h = History::from_padded_rows(&[vec![0, 1, 1]], &dev)?;
    let ctx = SamplingContext::new(0).with_history(h);
    // Sign-aware penalty 2 (once per token), then frequency 0.5 per occurrence and presence 1,
    // then a bias on token 3 and a ban of token 4.
    let cfg = SamplerConfig::from_json(
        r#"{"repetition_penalty": 2.0, "repetition_penalty_mode": "sign_aware",
            "frequency_penalty": 0.5, "presence_penalty": 1.0,
            "logit_bias": {"3": 0.25}, "ban_tokens": [4]}"#,
    )?;
    assert_eq!(
        cfg.repetition_penalty_mode,
        RepetitionPenaltyMode::SignAware
    );
    let y = Sampler::from_config(&cfg, Mode::Ar)?
        .apply(&x, &ctx)?
        .to_vec2::<f32>()?;
    // token 0: 2 / 2 - 0.5 - 1 = -0.5; token 1: -2 * 2 - 1.0 - 1 = -6; token 3: 0.5 + 0.25.
    assert_eq!(y[0], vec![-0.5, -6.0, 1.0, 0.75, f32::NEG_INFINITY]);
    // Out-of-vocabulary bans and biases are errors at apply time.
    let bad = SamplerConfig::from_json(r#"{"ban_tokens": [5]}"#)?;
    assert!(Sampler::from_config(&bad, Mode::Ar)?
        .apply(&x, &ctx)
        .is_err());
    Ok(())
}

#[test]
fn cfg_needs_and_uses_the_null_logits() -> anyhow::Result<()> {
    let dev = Device::Cpu;
    let x = Tensor::new(&[[1f32, 2.0, 3.0]], &dev)?;
    let cfg = SamplerConfig {
        cfg_strength: 2.0,
        ..Default::default()
    };
    let s = Sampler::from_config(&cfg, Mode::Ar)?;
    assert!(s.apply(&x, &SamplingContext::new(0)).is_err());
    let ctx = SamplingContext::new(0).with_null_logits(Tensor::new(&[[1f32, 1.0, 1.0]], &dev)?);
    assert_eq!(
        s.apply(&x, &ctx)?.to_vec2::<f32>()?,
        vec![vec![1.0, 3.0, 5.0]]
    );
    Ok(())
}

#[test]
fn mirostat_state_lives_in_the_sampler_and_resets_per_row() -> anyhow::Result<()> {
    let cfg = SamplerConfig {
        mirostat: MirostatVersion::V2,
        mirostat_tau: 3.0,
        mirostat_eta: 0.1,
        ..Default::default()
    };
    let mut s = Sampler::from_config(&cfg, Mode::Ar)?;
    let x = logits(3, 64);
    for step in 0..5 {
        s.sample(&x, &SamplingContext::new(9).with_step(step))?;
    }
    let dev = Device::Cpu;
    let m = s.find::<Mirostat>().expect("mirostat selects");
    assert_eq!(m.version(), MirostatVersion::V2);
    let mu = m.mu(3, &dev)?.to_vec1::<f32>()?;
    assert!(
        mu.iter().all(|&v| v != 6.0),
        "every row moved away from 2 tau: {mu:?}"
    );
    s.reset_rows(&Tensor::new(&[0u8, 1, 0], &dev)?)?;
    let after = s
        .find::<Mirostat>()
        .unwrap()
        .mu(3, &dev)?
        .to_vec1::<f32>()?;
    assert_eq!((after[0], after[1], after[2]), (mu[0], 6.0, mu[2]));
    // A hand-set state through the mutable chain.
    s.find_mut::<Mirostat>()
        .unwrap()
        .set_mu(&Tensor::new(&[1f32, 2.0, 3.0], &dev)?)?;
    assert_eq!(
        s.find::<Mirostat>()
            .unwrap()
            .mu(3, &dev)?
            .to_vec1::<f32>()?,
        vec![1.0, 2.0, 3.0]
    );
    s.reset();
    assert_eq!(
        s.find::<Mirostat>()
            .unwrap()
            .mu(3, &dev)?
            .to_vec1::<f32>()?,
        vec![6.0; 3]
    );
    Ok(())
}

#[test]
fn xtc_does_not_move_the_draw_stream() -> anyhow::Result<()> {
    // A row XTC cannot act on (one token above the threshold): the same token with and
    // without XTC in the chain, for many seeds.
    let dev = Device::Cpu;
    let x = Tensor::new(&[[3f32, 0.0, 0.1, 0.2, -1.0]], &dev)?;
    let plain = Sampler::from_config(&SamplerConfig::default(), Mode::Ar)?;
    let with = SamplerConfig {
        xtc_probability: 1.0,
        xtc_threshold: 0.3,
        ..Default::default()
    };
    let mut with = Sampler::from_config(&with, Mode::Ar)?;
    let mut plain = plain;
    for seed in 0..50 {
        let c = SamplingContext::new(seed);
        let a = plain.sample(&x, &c)?.tokens.to_vec1::<u32>()?;
        let b = with.sample(&x, &c)?.tokens.to_vec1::<u32>()?;
        assert_eq!(a, b, "seed {seed}");
    }
    Ok(())
}

#[test]
fn per_row_parameters_through_the_builder() -> anyhow::Result<()> {
    let dev = Device::Cpu;
    let x = Tensor::new(
        &[[0.4f32.ln(), 0.3f32.ln(), 0.2f32.ln(), 0.1f32.ln()]; 2],
        &dev,
    )?;
    let s = SamplerBuilder::new(Mode::Ar)
        .xtc_probability(1.0)
        .xtc_threshold(Tensor::new(&[0.09f32, 0.39], &dev)?)
        .build()?;
    let y = s.apply(&x, &SamplingContext::new(0))?.to_vec2::<f32>()?;
    assert_eq!(y[0].iter().filter(|v| v.is_finite()).count(), 1);
    assert_eq!(y[1].iter().filter(|v| v.is_finite()).count(), 4);
    Ok(())
}
