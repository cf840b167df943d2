//! The filters against a sort-based reference of the plain path, on random rows.

#[allow(unused_imports)]
use crate::prelude::*;

/// The k-th largest finite value (ties counted), k clamped to [1, finite count].
pub(crate) fn kth_largest(x: &[f32], k: f32) -> f32 {
    let mut v: Vec<f32> = x.iter().copied().filter(|v| v.is_finite()).collect();
    v.sort_by(|a, b| b.partial_cmp(a).unwrap());
    let k = k.min(v.len() as f32).max(1.0).ceil() as usize;
    v[k - 1]
}

pub(crate) fn softmax_sum(x: &[f32], max: f32) -> f32 {
    x.iter().map(|&v| (v - max).exp()).sum()
}

/// The plain chain min-p -> top-k -> top-p -> temperature -> top-n-sigma, by sorting.
pub(crate) fn reference(x: &[f32], p: &Prm) -> Vec<f32> {
    let mut cur = x.to_vec();
    let max = cur.iter().copied().fold(NINF, f32::max);
    let keep_ge =
        |cur: &mut Vec<f32>, t: f32| cur.iter_mut().filter(|v| **v < t).for_each(|v| *v = NINF);
    if p[MIN_P] > 0.0 {
        let s0 = softmax_sum(&cur, max);
        let floor = (1.0 / s0) * p[MIN_P];
        let protect = kth_largest(&cur, p[MIN_TOKENS]);
        cur.iter_mut()
            .filter(|v| !((**v - max).exp() / s0 >= floor || **v >= protect))
            .for_each(|v| *v = NINF);
    }
    if p[TOP_K] > 0.0 {
        let t = kth_largest(&cur, p[TOP_K]);
        keep_ge(&mut cur, t);
    }
    if p[TOP_P] < 1.0 {
        let s1 = softmax_sum(&cur, max) as f64;
        let mut order: Vec<usize> = (0..cur.len()).filter(|&i| cur[i].is_finite()).collect();
        order.sort_by(|&a, &b| cur[b].partial_cmp(&cur[a]).unwrap().then(a.cmp(&b)));
        let mut before = 0f64;
        let mut drop = vec![false; cur.len()];
        for &i in &order {
            drop[i] = before > p[TOP_P] as f64;
            before += ((cur[i] - max).exp() as f64) / s1;
        }
        cur.iter_mut()
            .zip(drop)
            .filter(|(_, d)| *d)
            .for_each(|(v, _)| *v = NINF);
    }
    let (t, tmin) = (p[TEMP], p[TEMP_MIN]);
    let divisor = if (t - tmin).abs() >= 0.001 && tmin >= 0.0 {
        let p_max = 1.0 / softmax_sum(&cur, max);
        t - (t - tmin) / ((p_max * -10.0 + 5.0).exp() + 1.0)
    } else if t > 0.0 {
        t
    } else {
        1.0
    };
    cur.iter_mut().for_each(|v| *v /= divisor);
    if p[SIGMA] > 0.0 {
        let fin: Vec<f64> = cur
            .iter()
            .filter(|v| v.is_finite())
            .map(|&v| v as f64)
            .collect();
        let n = fin.len() as f64;
        let mean = fin.iter().sum::<f64>() / n;
        let var = fin.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / (n - 1.0).max(1.0);
        let ymax = fin.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let cut = (ymax - var.sqrt() * p[SIGMA] as f64) as f32;
        keep_ge(&mut cur, cut);
    }
    cur
}

pub(crate) fn random_rows(rng: &mut Rng, rows: usize, vocab: usize, scale: f32) -> Vec<f32> {
    (0..rows * vocab)
        .map(|_| {
            if rng.unit() < 0.02 {
                NINF
            } else {
                rng.normal() * scale
            }
        })
        .collect()
}

pub(crate) fn param_mix() -> Vec<Prm> {
    vec![
        with(&[(TOP_K, 50.0), (TOP_P, 0.9), (MIN_P, 0.05), (TEMP, 0.8)]),
        with(&[(TOP_P, 0.95), (MIN_P, 0.02), (TEMP, 1.2)]),
        with(&[(TOP_K, 7.0)]),
        with(&[(TOP_P, 0.5), (TEMP, 1.0), (TEMP_MIN, 0.3)]),
        with(&[(MIN_P, 0.2), (MIN_TOKENS, 5.0), (SIGMA, 1.0), (TEMP, 0.7)]),
        with(&[
            (TOP_K, 200.0),
            (TOP_P, 0.3),
            (SIGMA, 2.0),
            (TEMP, 1.5),
            (TEMP_MIN, 0.5),
        ]),
        OFF,
        with(&[(TEMP, 0.0), (TOP_K, 3.0), (GREEDY, 1.0)]),
    ]
}

#[test]
fn filter_equals_the_sorted_reference_on_random_rows() {
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    let params = param_mix();
    for vocab in [5usize, 100, 1025, 4099] {
        for scale in [0.5f32, 3.0] {
            let x = random_rows(&mut rng, params.len(), vocab, scale);
            let want: Vec<Vec<f32>> = x
                .chunks(vocab)
                .zip(&params)
                .map(|(r, p)| reference(r, p))
                .collect();
            for (lang, th) in [(Lang::C, 1), (Lang::C, 64), (Lang::Cpp, 7)] {
                let got = filter(lang, th, vocab, &x, &params);
                assert_rows_close(&got, &want, 1e-5, &format!("{lang:?} {th} vocab {vocab}"));
            }
        }
    }
}

#[test]
fn filter_handles_a_row_of_a_quarter_million_tokens() {
    let vocab = 262_144;
    let mut rng = Rng(0xfeed_0000_0000_0042);
    let x = random_rows(&mut rng, 2, vocab, 2.0);
    // top-k first: the top-p cut then falls among 50 tokens, far from rounding
    let p0 = with(&[(TOP_K, 50.0), (TOP_P, 0.9), (MIN_P, 0.05), (TEMP, 0.8)]);
    let got = filter(Lang::C, 64, vocab, &x, &[p0, with(&[(TOP_P, 0.9)])]);
    assert_rows_close(
        &got[..1],
        &[reference(&x[..vocab], &p0)],
        1e-5,
        "vocab 262144",
    );
    // Top-p alone over a flat row: the cut falls where each token holds ~1e-6 of the mass, so
    // f32 sums (here, and on the plain path) may move it by a token or two. What must hold: the
    // kept set is a prefix of the descending order, and in exact arithmetic the mass before its
    // last token is <= p and the mass before the first dropped token > p, up to 1e-5.
    let row = &x[vocab..];
    let mut order: Vec<usize> = (0..vocab).filter(|&i| row[i].is_finite()).collect();
    order.sort_by(|&a, &b| row[b].partial_cmp(&row[a]).unwrap().then(a.cmp(&b)));
    let kept = got[1].iter().filter(|v| v.is_finite()).count();
    assert!(kept > 10_000, "kept {kept}");
    let max = row[order[0]] as f64;
    let w: Vec<f64> = order.iter().map(|&i| (row[i] as f64 - max).exp()).collect();
    let total: f64 = w.iter().sum();
    let before = |m: usize| w[..m].iter().sum::<f64>() / total;
    for (rank, &i) in order.iter().enumerate() {
        assert_eq!(
            got[1][i].is_finite(),
            rank < kept,
            "not a prefix at rank {rank}"
        );
    }
    assert!(
        before(kept - 1) <= 0.9 + 1e-5,
        "last kept has {} before it",
        before(kept - 1)
    );
    assert!(
        before(kept) > 0.9 - 1e-5,
        "first dropped has {} before it",
        before(kept)
    );
}
