//! Statistical and determinism tests of the draw.

use candle_core::{Device, Tensor};
use sampler_core::{draw, RowParam, SamplingContext};
use statrs::distribution::{ChiSquared, ContinuousCDF};

/// Pearson's chi-square test of multinomial frequencies. 40 000 rows of one distribution over
/// 10 tokens are drawn at a fixed seed (one row id each). The false-alarm rate is alpha = 1e-4:
/// a correct sampler fails this test for one seed in 10 000.
#[test]
fn multinomial_frequencies_pass_chi_square() {
    let probs = [
        0.30f64, 0.20, 0.15, 0.10, 0.08, 0.07, 0.05, 0.03, 0.015, 0.005,
    ];
    let logits: Vec<f32> = probs.iter().map(|p| p.ln() as f32).collect();
    let n = 40_000usize;
    let x = Tensor::from_vec(logits.repeat(n), (n, probs.len()), &Device::Cpu).unwrap();
    let d = draw(&x, &RowParam::Scalar(0.0), &SamplingContext::new(20261129)).unwrap();
    let mut counts = [0usize; 10];
    for t in d.tokens.to_vec1::<u32>().unwrap() {
        counts[t as usize] += 1;
    }
    let stat: f64 = counts
        .iter()
        .zip(probs)
        .map(|(&c, p)| {
            let e = p * n as f64;
            (c as f64 - e).powi(2) / e
        })
        .sum();
    let critical = ChiSquared::new((probs.len() - 1) as f64)
        .unwrap()
        .inverse_cdf(1.0 - 1e-4);
    assert!(
        stat < critical,
        "chi-square {stat:.2} >= {critical:.2}; counts {counts:?}"
    );
    // The test must also be able to fail: a skewed count table is rejected at the same level.
    let mut skewed = counts;
    skewed[0] -= 600;
    skewed[9] += 600;
    let stat_skewed: f64 = skewed
        .iter()
        .zip(probs)
        .map(|(&c, p)| (c as f64 - p * n as f64).powi(2) / (p * n as f64))
        .sum();
    assert!(stat_skewed > critical);
}

/// The same seed and row id give the same token whether the row is drawn alone or in a batch of 8.
#[test]
fn a_row_draws_the_same_alone_and_in_a_batch() {
    let vocab = 50;
    let mut data = Vec::new();
    for r in 0..8 {
        data.extend((0..vocab).map(|i| ((i * 7 + r * 13) % 17) as f32 * 0.3));
    }
    let batch = Tensor::from_vec(data, (8, vocab), &Device::Cpu).unwrap();
    let ids: Vec<u32> = (100..108).collect();
    for step in 0..20u64 {
        let ctx = SamplingContext::new(77)
            .with_step(step)
            .with_row_ids(ids.clone());
        let together = draw(&batch, &RowParam::Scalar(0.0), &ctx).unwrap();
        let together = together.tokens.to_vec1::<u32>().unwrap();
        for r in 0..8 {
            let one = SamplingContext::new(77)
                .with_step(step)
                .with_row_ids(vec![ids[r]]);
            let alone = draw(
                &batch.narrow(0, r, 1).unwrap(),
                &RowParam::Scalar(0.0),
                &one,
            )
            .unwrap();
            assert_eq!(
                alone.tokens.to_vec1::<u32>().unwrap()[0],
                together[r],
                "step {step} row {r}"
            );
        }
    }
}
