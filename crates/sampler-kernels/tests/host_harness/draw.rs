//! The draw: greedy ties, never a filtered token, the multinomial draw against a sequential
//! inverse CDF.

#[allow(unused_imports)]
use crate::prelude::*;

#[test]
fn greedy_takes_the_lowest_id_of_the_maximum() {
    each_config(|lang, th| {
        let x = [0.0, 3.0, 3.0, NINF, 5.0, 0.0, 0.0, 5.0];
        let g = with(&[(GREEDY, 1.0), (TEMP, 0.0)]);
        let got = sample(lang, th, 4, &x, &[g, g], &[0, 1], 1, 0);
        assert_eq!((got[0].0, got[1].0), (1, 0));
        let e3 = 3f32.exp();
        assert!((got[0].1 - e3 / (1.0 + 2.0 * e3)).abs() < 1e-6, "{got:?}");
        let e5 = 5f32.exp();
        assert!((got[1].1 - e5 / (2.0 + 2.0 * e5)).abs() < 1e-6, "{got:?}");
    });
}

#[test]
fn never_draws_a_filtered_token() {
    let row = [NINF, 0.0, NINF, NINF, -20.0, NINF];
    let x = row.repeat(64);
    let ids: Vec<u32> = (0..64).collect();
    for lang in LANGS {
        for th in [1, 3, 32] {
            for step in 0..16 {
                for (tok, p) in sample(lang, th, 6, &x, &[OFF; 64], &ids, 9, step) {
                    assert!(tok == 1 || tok == 4, "drew filtered token {tok}");
                    assert!(p > 0.0);
                }
            }
        }
    }
}

/// The smallest j with sum(probs[..=j]) > u * sum(probs), in f64, and how close the nearest
/// cumulative boundary is to the target (relative to the total).
pub(crate) fn sequential_draw(y: &[f32], u: f32) -> (u32, f64) {
    let ymax = y.iter().copied().fold(NINF, f32::max);
    let e: Vec<f64> = y.iter().map(|&v| ((v - ymax) as f64).exp()).collect();
    let total: f64 = e.iter().sum();
    let target = u as f64 * total;
    let mut cum = 0.0;
    let mut margin = f64::INFINITY;
    let mut tok = None;
    for (j, &w) in e.iter().enumerate() {
        cum += w;
        margin = margin.min((cum - target).abs() / total);
        if tok.is_none() && cum > target {
            tok = Some(j as u32);
        }
    }
    let last = e.iter().rposition(|&w| w > 0.0).unwrap() as u32;
    (tok.unwrap_or(last), margin)
}

#[test]
fn multinomial_draw_equals_a_sequential_inverse_cdf() {
    let mut rng = Rng(0x0dd5_eed5_0000_0007);
    let params = param_mix();
    let rows = 96;
    let prm: Vec<Prm> = (0..rows).map(|r| params[r % params.len()]).collect();
    let ids: Vec<u32> = (0..rows as u32).map(|r| r * 7 + 3).collect();
    let mut near = 0;
    for vocab in [8usize, 1025, 5000] {
        let x = random_rows(&mut rng, rows, vocab, 2.0);
        for (seed, step) in [(1u64, 0u64), (77, 12), ((1 << 35) + 9, (1 << 40) + 1)] {
            let processed = filter(Lang::C, 8, vocab, &x, &prm);
            let draws: Vec<(u64, u32, u64)> = ids.iter().map(|&r| (seed, r, step)).collect();
            let u = uniforms(Lang::C, &draws);
            for (lang, th) in [(Lang::C, 1), (Lang::C, 64), (Lang::Cpp, 5)] {
                let got = sample(lang, th, vocab, &x, &prm, &ids, seed, step);
                for r in 0..rows {
                    let y = &processed[r];
                    let want = if prm[r][GREEDY] != 0.0 {
                        let m = y.iter().copied().fold(NINF, f32::max);
                        y.iter().position(|&v| v == m).unwrap() as u32
                    } else {
                        let (tok, margin) = sequential_draw(y, u[r]);
                        if got[r].0 != tok && margin < 1e-5 {
                            near += 1; // a cumulative boundary within float rounding of u
                            continue;
                        }
                        tok
                    };
                    assert_eq!(got[r].0, want, "{lang:?} {th} vocab {vocab} row {r}");
                    let ymax = y.iter().copied().fold(NINF, f32::max);
                    let s: f64 = y.iter().map(|&v| ((v - ymax) as f64).exp()).sum();
                    let p = ((y[want as usize] - ymax) as f64).exp() / s;
                    assert!(
                        (got[r].1 as f64 - p).abs() <= 1e-5 * p,
                        "prob {} vs {p}",
                        got[r].1
                    );
                }
            }
        }
    }
    assert!(near <= 2, "{near} draws differed at a rounding boundary");
}
