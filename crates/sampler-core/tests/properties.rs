//! Property tests (proptest) of the processors and the chain.

use candle_core::{Device, Tensor};
use proptest::prelude::*;
use sampler_core::processors::{MinP, TopK, TopNSigma, TopP};
use sampler_core::{
    History, LogitsProcessor, Mode, Sampler, SamplerBuilder, SamplerConfig, SamplingContext,
};

const NINF: f32 = f32::NEG_INFINITY;

/// Rows of logits with ties (quantised values) and some -inf, at least one finite per row.
fn batch() -> impl Strategy<Value = (usize, usize, Vec<f32>)> {
    (1usize..5, 2usize..40).prop_flat_map(|(rows, vocab)| {
        let cell = prop_oneof![
            6 => (-40i32..40).prop_map(|q| q as f32 * 0.25),
            3 => -8.0f32..8.0,
            1 => Just(NINF),
        ];
        (
            Just(rows),
            Just(vocab),
            proptest::collection::vec(cell, rows * vocab),
        )
            .prop_map(|(rows, vocab, mut v)| {
                for r in 0..rows {
                    if v[r * vocab..(r + 1) * vocab]
                        .iter()
                        .all(|x| x.is_infinite())
                    {
                        v[r * vocab] = 0.0;
                    }
                }
                (rows, vocab, v)
            })
    })
}

fn tensor(rows: usize, vocab: usize, v: &[f32]) -> Tensor {
    Tensor::from_vec(v.to_vec(), (rows, vocab), &Device::Cpu).unwrap()
}

fn rows_of(t: &Tensor) -> Vec<Vec<f32>> {
    t.to_vec2::<f32>().unwrap()
}

fn softmax(row: &[f32]) -> Vec<f64> {
    let m = row.iter().cloned().fold(NINF, f32::max) as f64;
    let e: Vec<f64> = row.iter().map(|&x| ((x as f64) - m).exp()).collect();
    let s: f64 = e.iter().sum();
    e.iter().map(|x| x / s).collect()
}

fn filters(k: f32, p: f32, min_p: f32, n: f32) -> Vec<Box<dyn LogitsProcessor>> {
    vec![
        Box::new(TopK::new(k).unwrap()),
        Box::new(TopP::new(p).unwrap()),
        Box::new(MinP::with(min_p, 1.0).unwrap()),
        Box::new(TopNSigma::new(n).unwrap()),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn filters_only_remove((rows, vocab, v) in batch(), k in 1f32..10.0, p in 0f32..1.0,
                           min_p in 0f32..1.0, n in 0.1f32..3.0) {
        let x = tensor(rows, vocab, &v);
        for f in filters(k.round(), p, min_p, n) {
            let y = f.apply(&x, &SamplingContext::new(0)).unwrap();
            for (xr, yr) in rows_of(&x).iter().zip(rows_of(&y)) {
                for (a, b) in xr.iter().zip(&yr) {
                    // Either removed, or unchanged; never a -inf made finite.
                    prop_assert!(*b == NINF || a == b, "{}: {a} -> {b}", f.name());
                }
                prop_assert!(yr.iter().any(|b| b.is_finite()), "{} removed everything", f.name());
            }
        }
    }

    #[test]
    fn top_k_keeps_at_least_k((rows, vocab, v) in batch(), k in 1usize..12) {
        let x = tensor(rows, vocab, &v);
        let y = TopK::new(k as f32).unwrap().apply(&x, &SamplingContext::new(0)).unwrap();
        for (xr, yr) in rows_of(&x).iter().zip(rows_of(&y)) {
            let finite = xr.iter().filter(|a| a.is_finite()).count();
            let kept = yr.iter().filter(|a| a.is_finite()).count();
            prop_assert!(kept >= k.min(finite), "kept {kept} of {finite} with k = {k}");
            // and nothing kept is below something removed
            let min_kept = yr.iter().cloned().filter(|a| a.is_finite()).fold(f32::INFINITY, f32::min);
            for (a, b) in xr.iter().zip(&yr) {
                if a.is_finite() && *b == NINF {
                    prop_assert!(*a < min_kept);
                }
            }
        }
    }

    #[test]
    fn top_p_keeps_mass_at_least_p((rows, vocab, v) in batch(), p in 0f32..0.999) {
        let x = tensor(rows, vocab, &v);
        let y = TopP::new(p).unwrap().apply(&x, &SamplingContext::new(0)).unwrap();
        for (xr, yr) in rows_of(&x).iter().zip(rows_of(&y)) {
            let probs = softmax(xr);
            let kept: f64 = probs.iter().zip(&yr).filter(|(_, b)| b.is_finite()).map(|(q, _)| q).sum();
            prop_assert!(kept >= p as f64 - 1e-5, "kept mass {kept} < p = {p}");
        }
    }

    #[test]
    fn chain_on_a_batch_equals_chain_on_each_row((rows, vocab, v) in batch(),
                                                 hist in proptest::collection::vec(0i64..1000, 0..30),
                                                 k in 0i64..8, p in 0.05f32..1.0, t in 0.2f32..2.0) {
        let cfg = SamplerConfig {
            top_k: k, top_p: p, temperature: t, min_p: 0.05, min_p_min_tokens: 2,
            repetition_penalty: 1.3, repetition_penalty_decay: 0.2, length_penalty: 0.3,
            ..SamplerConfig::default()
        };
        let sampler = Sampler::from_config(&cfg, Mode::Ar).unwrap();
        // Each row gets its own history: a rotation of the ids, cut at a different length.
        let histories: Vec<Vec<i64>> = (0..rows)
            .map(|r| hist.iter().skip(r).map(|h| (h + r as i64) % vocab as i64).collect())
            .collect();
        let width = histories.iter().map(|h| h.len()).max().unwrap();
        let padded: Vec<Vec<i64>> = histories.iter()
            .map(|h| { let mut h = h.clone(); h.resize(width, -1); h }).collect();
        let x = tensor(rows, vocab, &v);
        let ctx = SamplingContext::new(3)
            .with_history(History::from_padded_rows(&padded, &Device::Cpu).unwrap());
        let all = rows_of(&sampler.apply(&x, &ctx).unwrap());
        let drawn = sampler.clone().sample(&x, &ctx).unwrap().tokens.to_vec1::<u32>().unwrap();
        for r in 0..rows {
            let xr = x.narrow(0, r, 1).unwrap();
            let one = SamplingContext::new(3)
                .with_row_ids(vec![r as u32])
                .with_history(History::from_padded_rows(&[histories[r].clone()], &Device::Cpu).unwrap());
            let alone = rows_of(&sampler.apply(&xr, &one).unwrap());
            for (a, b) in alone[0].iter().zip(&all[r]) {
                prop_assert!(a == b || (a - b).abs() <= 1e-5 * b.abs(), "row {r}: {a} vs {b}");
            }
            let tok = sampler.clone().sample(&xr, &one).unwrap().tokens.to_vec1::<u32>().unwrap();
            prop_assert_eq!(tok[0], drawn[r]);
        }
    }
}

#[test]
fn builder_accepts_per_row_parameters() {
    let x = tensor(2, 4, &[1.0, 2.0, 3.0, 4.0, 1.0, 2.0, 3.0, 4.0]);
    let k = Tensor::new(&[1f32, 3.0], &Device::Cpu).unwrap();
    let t = Tensor::new(&[0.5f32, 2.0], &Device::Cpu).unwrap();
    let s = SamplerBuilder::new(Mode::Ar)
        .top_k(k)
        .temperature(t)
        .build()
        .unwrap();
    let y = rows_of(&s.apply(&x, &SamplingContext::new(0)).unwrap());
    assert_eq!(y[0], vec![NINF, NINF, NINF, 8.0]);
    assert_eq!(y[1], vec![NINF, 1.0, 1.5, 2.0]);
}
