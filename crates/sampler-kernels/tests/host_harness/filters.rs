//! The filters on hand-computed rows (the unit-test rows of sampler-core's processors), for
//! every emulated block size and both languages.

#[allow(unused_imports)]
use crate::prelude::*;

pub(crate) fn ln(p: &[f32]) -> Vec<f32> {
    p.iter().map(|p| p.ln()).collect()
}

/// Every filter case under every thread count and both languages.
pub(crate) fn each_config(mut f: impl FnMut(Lang, u32)) {
    for lang in LANGS {
        for threads in THREADS {
            f(lang, threads);
        }
    }
}

#[test]
fn top_k_keeps_ties_and_handles_off_and_oversized_k() {
    each_config(|lang, th| {
        let x = [1.0, 4.0, 2.0, 4.0, 3.0, 1.0, 2.0, 2.0, 2.0, 0.0];
        let k2 = with(&[(TOP_K, 2.0)]);
        let want = vec![
            vec![NINF, 4.0, NINF, 4.0, NINF],
            vec![NINF, 2.0, 2.0, 2.0, NINF],
        ];
        assert_eq!(filter(lang, th, 5, &x, &[k2, k2]), want, "{lang:?} {th}");
        let x = [1.0, NINF, 2.0];
        for k in [0.0, -3.0, 3.0, 10.0] {
            assert_eq!(
                filter(lang, th, 3, &x, &[with(&[(TOP_K, k)])]),
                vec![x.to_vec()]
            );
        }
        // k = 1 on a row with -inf: only the maximum stays
        let got = filter(lang, th, 3, &x, &[with(&[(TOP_K, 1.0)])]);
        assert_eq!(got, vec![vec![NINF, NINF, 2.0]]);
    });
}

#[test]
fn top_k_separates_adjacent_floats() {
    let a = 1.0f32;
    let b = f32::from_bits(a.to_bits() + 1);
    each_config(|lang, th| {
        let x = [-1e30, a, b, 1e30];
        let got = filter(lang, th, 4, &x, &[with(&[(TOP_K, 3.0)])]);
        assert_eq!(got, vec![vec![NINF, a, b, 1e30]]);
        let got = filter(lang, th, 4, &x, &[with(&[(TOP_K, 2.0)])]);
        assert_eq!(got, vec![vec![NINF, NINF, b, 1e30]]);
    });
}

#[test]
fn top_p_keeps_while_preceding_mass_is_at_most_p() {
    each_config(|lang, th| {
        // sorted: 0.4 (mass before 0), 0.3 (0.4), 0.2 (0.7), 0.1 (0.9)
        let x = ln(&[0.1, 0.4, 0.2, 0.3]);
        let kept = |p: f32| -> Vec<bool> {
            filter(lang, th, 4, &x, &[with(&[(TOP_P, p)])])[0]
                .iter()
                .map(|v| v.is_finite())
                .collect()
        };
        assert_eq!(kept(0.5), [false, true, false, true]);
        assert_eq!(kept(0.75), [false, true, true, true]);
        assert_eq!(kept(0.3), [false, true, false, false]);
        assert_eq!(kept(0.0), [false, true, false, false]);
        assert_eq!(kept(1.0), [true; 4]);
        // kept values are untouched
        assert_eq!(
            filter(lang, th, 4, &x, &[with(&[(TOP_P, 0.5)])])[0][3],
            x[3]
        );
    });
}

#[test]
fn top_p_splits_a_tie_group_by_lower_id_first() {
    each_config(|lang, th| {
        // five tied tokens of 0.2: masses before them in id order 0, 0.2, 0.4, 0.6, 0.8
        let x = ln(&[0.2; 5]);
        let got = filter(lang, th, 5, &x, &[with(&[(TOP_P, 0.5)])]);
        let kept: Vec<bool> = got[0].iter().map(|v| v.is_finite()).collect();
        assert_eq!(kept, [true, true, true, false, false], "{lang:?} {th}");
        // a tie group below a larger token: 0.4, then four of 0.15 (ids 1..=4); p = 0.72:
        // masses before the ties 0.4, 0.55, 0.70, 0.85 -> ids 1, 2, 3 kept
        let x = ln(&[0.15, 0.15, 0.4, 0.15, 0.15]);
        let got = filter(lang, th, 5, &x, &[with(&[(TOP_P, 0.72)])]);
        let kept: Vec<bool> = got[0].iter().map(|v| v.is_finite()).collect();
        assert_eq!(kept, [true, true, true, true, false], "{lang:?} {th}");
    });
}

#[test]
fn top_p_splits_ties_on_a_long_row() {
    // 3000 tied tokens after one large one; the cut must fall inside the tie group, by id.
    let vocab = 3001;
    let mut x = vec![0.0f32; vocab];
    x[1700] = 5.0;
    let e5 = 5f64.exp();
    let total = e5 + 3000.0;
    let p = 0.75f32;
    // mass before the r-th tie (r = 0, 1, ..) is (e5 + r) / total: kept while <= p
    let allowed = ((p as f64 * total - e5).floor() + 1.0) as usize;
    for lang in LANGS {
        for th in [1, 64] {
            let got = filter(lang, th, vocab, &x, &[with(&[(TOP_P, p)])]);
            let kept: Vec<usize> = (0..vocab).filter(|&i| got[0][i].is_finite()).collect();
            let mut want: Vec<usize> = (0..vocab).filter(|&i| i != 1700).take(allowed).collect();
            want.push(1700);
            want.sort_unstable();
            assert_eq!(kept, want, "{lang:?} {th}");
        }
    }
}

#[test]
fn min_p_removes_below_fraction_and_protects_min_tokens() {
    each_config(|lang, th| {
        let x = [0.0, -1.0, -3.0, -0.5];
        let got = filter(lang, th, 4, &x, &[with(&[(MIN_P, 0.1), (MIN_TOKENS, 1.0)])]);
        assert_eq!(got, vec![vec![0.0, -1.0, NINF, -0.5]]);
        let got = filter(lang, th, 4, &x, &[with(&[(MIN_P, 0.5), (MIN_TOKENS, 1.0)])]);
        assert_eq!(got, vec![vec![0.0, NINF, NINF, -0.5]]);
        let x = [0.0, -5.0, -3.0, -9.0];
        let got = filter(lang, th, 4, &x, &[with(&[(MIN_P, 0.9), (MIN_TOKENS, 3.0)])]);
        assert_eq!(got, vec![vec![0.0, -5.0, -3.0, NINF]]);
        // the default 32 protects every token of a short row
        let got = filter(lang, th, 4, &x, &[with(&[(MIN_P, 0.9)])]);
        assert_eq!(got, vec![x.to_vec()]);
    });
}

#[test]
fn temperature_and_dynamic_temperature() {
    each_config(|lang, th| {
        let x = [1.0, -2.0, NINF, 1.0, -2.0, 4.0];
        let p = [with(&[(TEMP, 0.5)]), with(&[(TEMP, 0.0)])];
        let want = vec![vec![2.0, -4.0, NINF], vec![1.0, -2.0, 4.0]];
        assert_rows_close(&filter(lang, th, 3, &x, &p), &want, 1e-6, "temperature");

        let x = [1.0, 1.0, 1.0, 1.0, 10.0, 0.0, 0.0, 0.0];
        let p = with(&[(TEMP, 1.0), (TEMP_MIN, 0.3)]);
        let temp = |pm: f32| 1.0 - 0.7 / (1.0 + (-10.0 * (pm - 0.5)).exp());
        let p_peak = 1.0 / (1.0 + 3.0 * (-10f32).exp());
        let (tf, tp) = (temp(0.25), temp(p_peak));
        let want = vec![vec![1.0 / tf; 4], vec![10.0 / tp, 0.0, 0.0, 0.0]];
        assert_rows_close(&filter(lang, th, 4, &x, &[p, p]), &want, 1e-5, "dynamic");
        // t_min < 0 or |t - t_min| < 0.001: the plain temperature
        let x = [2.0, 1.0, 2.0, 1.0];
        let p = [
            with(&[(TEMP, 0.5), (TEMP_MIN, -1.0)]),
            with(&[(TEMP, 0.5), (TEMP_MIN, 0.5)]),
        ];
        let want = vec![vec![4.0, 2.0], vec![4.0, 2.0]];
        assert_rows_close(&filter(lang, th, 2, &x, &p), &want, 1e-6, "plain");
    });
}

#[test]
fn top_n_sigma_keeps_within_n_std_of_the_max() {
    each_config(|lang, th| {
        // finite 0, 1, 2, 3: mean 1.5, unbiased var 5/3, std 1.291
        let x = [0.0, 1.0, NINF, 2.0, 3.0];
        let got = filter(lang, th, 5, &x, &[with(&[(SIGMA, 1.0)])]);
        assert_eq!(got, vec![vec![NINF, NINF, NINF, 2.0, 3.0]]);
        let got = filter(lang, th, 5, &x, &[with(&[(SIGMA, 2.0)])]);
        assert_eq!(got, vec![vec![NINF, 1.0, NINF, 2.0, 3.0]]);
        // after temperature 0.5: values double, the cut scales with them
        let got = filter(lang, th, 5, &x, &[with(&[(SIGMA, 1.0), (TEMP, 0.5)])]);
        assert_eq!(got, vec![vec![NINF, NINF, NINF, 4.0, 6.0]]);
        let got = filter(lang, th, 5, &x, &[with(&[(SIGMA, 0.0)])]);
        assert_eq!(got, vec![x.to_vec()]);
    });
}

#[test]
fn a_row_of_only_neg_inf_stays_neg_inf_and_draws_nothing() {
    for lang in LANGS {
        let x = [NINF; 4];
        assert_eq!(
            filter(lang, 3, 4, &x, &[with(&[(TOP_P, 0.5), (TOP_K, 2.0)])]),
            vec![x.to_vec()]
        );
        assert_eq!(sample(lang, 3, 4, &x, &[OFF], &[0], 1, 0), vec![(0, 0.0)]);
    }
}
