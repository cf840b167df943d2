//! Cuts decided where f32 would get them wrong. The entropy, the log-sum-exp and the cumulative
//! masses that decide typical-p, top-p and top-n-sigma are f64 on both paths; each case here is
//! constructed so that the decision rests on a difference far below f32 rounding, and the kept
//! set is compared with a host computation in f64.

use candle_core::{Device, Tensor};
use sampler_core::{ExecPath, Mode, SamplerBuilder, SamplerConfig, SamplingContext};

const VOCAB: usize = 32_000;

/// N(0, 0.75^2) logits from a fixed Box-Muller stream: flat, so thousands of tokens have
/// nearly the same probability.
fn logits() -> Vec<f32> {
    let mut s = 0x9e37_79b9_7f4a_7c15u64;
    let mut unit = move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        ((s >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    };
    (0..VOCAB)
        .map(|_| {
            let (u, v) = (unit(), unit());
            ((-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos() * 0.75) as f32
        })
        .collect()
}

fn probs(l: &[f32]) -> Vec<f64> {
    let m = l.iter().fold(f64::NEG_INFINITY, |m, &x| m.max(x as f64));
    let z: f64 = l.iter().map(|&x| (x as f64 - m).exp()).sum();
    l.iter().map(|&x| (x as f64 - m).exp() / z).collect()
}

/// The kept ids of `order` (most preferred first) under "keep until the mass reaches `p`".
fn keep_until(order: &[usize], p: &[f64], mass: f64) -> Vec<usize> {
    let mut cum = 0.0;
    let mut kept = Vec::new();
    for &i in order {
        kept.push(i);
        cum += p[i];
        if cum >= mass {
            break;
        }
    }
    kept.sort_unstable();
    kept
}

fn kept_by_sampler(cfg: serde_json::Value, l: &[f32], path: ExecPath) -> Vec<usize> {
    let cfg: SamplerConfig = serde_json::from_value(cfg).unwrap();
    let s = SamplerBuilder::from_config(&cfg, Mode::Ar)
        .path(path)
        .build()
        .unwrap();
    let x = Tensor::from_slice(l, (1, VOCAB), &Device::Cpu).unwrap();
    let out = s.apply(&x, &SamplingContext::new(0)).unwrap();
    let out = out.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    (0..VOCAB).filter(|&i| out[i].is_finite()).collect()
}

#[test]
fn typical_p_orders_scores_that_differ_by_less_than_1e_5() {
    let l = logits();
    let p = probs(&l);
    let h: f64 = -p.iter().map(|&q| q * q.ln()).sum::<f64>();
    let score: Vec<f64> = p.iter().map(|&q| (-q.ln() - h).abs()).collect();
    let mut order: Vec<usize> = (0..VOCAB).collect();
    order.sort_by(|&a, &b| score[a].total_cmp(&score[b]).then(a.cmp(&b)));
    // Two neighbours in score order, on the same side of the entropy (so their probabilities
    // are close and swapping them moves the cut), whose scores differ by 1e-9 .. 1e-5.
    let at = (VOCAB / 4..VOCAB - 1)
        .find(|&i| {
            let (a, b) = (order[i], order[i + 1]);
            let gap = score[b] - score[a];
            (1e-9..1e-5).contains(&gap) && (l[a] > l[b]) == (-p[a].ln() < h)
        })
        .expect("a close pair exists among 32000 flat logits");
    let (a, b) = (order[at], order[at + 1]);
    let before: f64 = order[..at].iter().map(|&i| p[i]).sum();
    assert!(
        before + p[b] >= before + p[a] / 2.0,
        "swapping would keep b"
    );
    // The cut falls inside a: a is the token that reaches the mass, b is not kept.
    let mass = before + p[a] / 2.0;
    let want = keep_until(&order, &p, mass);
    assert!(want.contains(&a) && !want.contains(&b));
    for path in [ExecPath::Plain, ExecPath::Fused] {
        let got = kept_by_sampler(serde_json::json!({ "typical_p": mass }), &l, path);
        assert_eq!(got.len(), want.len(), "{path:?}: kept count");
        assert_eq!(
            got,
            want,
            "{path:?}: kept set (pair {a} / {b}, gap {:e})",
            score[b] - score[a]
        );
    }
}

#[test]
fn top_p_cuts_at_a_mass_within_1e_7_of_a_boundary() {
    let l = logits();
    let p = probs(&l);
    let mut order: Vec<usize> = (0..VOCAB).collect();
    order.sort_by(|&a, &b| p[b].total_cmp(&p[a]).then(a.cmp(&b)));
    // The mass of the first 20000 tokens, a hair above and below: an f32 cumulative sum over
    // this many terms is off by more than the hair.
    let through: f64 = order[..20_000].iter().map(|&i| p[i]).sum();
    for (mass, count) in [(through - 2e-7, 20_000), (through + 2e-7, 20_001)] {
        let want = keep_until(&order, &p, mass);
        assert_eq!(want.len(), count);
        for path in [ExecPath::Plain, ExecPath::Fused] {
            let got = kept_by_sampler(serde_json::json!({ "top_p": mass }), &l, path);
            assert_eq!(got, want, "{path:?}: top_p {mass}");
        }
    }
}

#[test]
fn top_n_sigma_keeps_a_logit_just_inside_the_threshold() {
    let mut l = logits();
    let n = 2.0f64;
    // Sample standard deviation (N - 1) in f64; put token 7 just inside M - n * sigma and
    // token 8 just outside, by far less than f32's spacing of the sums involved.
    let stats = |l: &[f32]| {
        let m = l.iter().fold(f64::NEG_INFINITY, |m, &x| m.max(x as f64));
        let mean = l.iter().map(|&x| x as f64).sum::<f64>() / VOCAB as f64;
        let var = l.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / (VOCAB - 1) as f64;
        m - n * var.sqrt()
    };
    for _ in 0..10 {
        // Moving the two tokens moves the threshold a little; settle it.
        let t = stats(&l);
        l[7] = next_up(t as f32);
        l[8] = next_down(t as f32);
    }
    let t = stats(&l);
    assert!(l[7] as f64 >= t && (l[8] as f64) < t, "construction");
    for path in [ExecPath::Plain, ExecPath::Fused] {
        let got = kept_by_sampler(serde_json::json!({ "top_no": n }), &l, path);
        let want: Vec<usize> = (0..VOCAB).filter(|&i| l[i] as f64 >= t).collect();
        assert_eq!(got, want, "{path:?}");
    }
}

fn next_up(x: f32) -> f32 {
    let mut y = x;
    while y as f64 <= x as f64 {
        y = f32::from_bits(if y >= 0.0 {
            y.to_bits() + 1
        } else {
            y.to_bits() - 1
        });
    }
    y
}

fn next_down(x: f32) -> f32 {
    let mut y = x;
    while y as f64 >= x as f64 {
        y = f32::from_bits(if y > 0.0 {
            y.to_bits() - 1
        } else {
            y.to_bits() + 1
        });
    }
    y
}
