//! The penalties: divide with decay and window, sign-aware, frequency/presence, length, bias.

#[allow(unused_imports)]
use crate::prelude::*;

/// repetition, decay, window, sign_aware, frequency, presence, length, stop
pub(crate) fn pen(rep: f32, decay: f32, window: f32) -> Pen {
    [rep, decay, window, 0.0, 0.0, 0.0, 0.0, 0.0]
}

#[test]
fn repetition_divides_once_per_occurrence_with_decay_and_window() {
    for lang in LANGS {
        for th in [1, 3, 32] {
            // token 1 twice, token 0 once: 0 / 2, 1 / 4 (negative too)
            let got = penalties(
                lang,
                th,
                4,
                3,
                &[3.0, -2.0, 4.0, 1.0],
                &[1, 0, 1],
                &[3],
                &[pen(2.0, 0.0, 75.0)],
                None,
            );
            assert_rows_close(&got, &[vec![1.5, -0.5, 4.0, 1.0]], 1e-6, "per occurrence");
            // distances 3, 2, 1; divisor 2 * D^0.5; window 0 = all
            let got = penalties(
                lang,
                th,
                3,
                3,
                &[8.0; 3],
                &[0, 1, 2],
                &[3],
                &[pen(2.0, 0.5, 0.0)],
                None,
            );
            let s = |d: f32| 8.0 / (2.0 * d.sqrt());
            assert_rows_close(&got, &[vec![s(3.0), s(2.0), s(1.0)]], 1e-6, "decay");
            // window 2: only distance 1 counts
            let got = penalties(
                lang,
                th,
                3,
                3,
                &[6.0; 3],
                &[0, 1, 2],
                &[3],
                &[pen(3.0, 0.0, 2.0)],
                None,
            );
            assert_rows_close(&got, &[vec![6.0, 6.0, 2.0]], 1e-6, "window");
            // lengths 1 and 0 of width 2 (the rest is padding and ignored)
            let got = penalties(
                lang,
                th,
                2,
                2,
                &[6.0; 4],
                &[1, 0, 7, 7],
                &[1, 0],
                &[pen(2.0, 0.0, 75.0), pen(2.0, 0.0, 75.0)],
                None,
            );
            assert_rows_close(&got, &[vec![6.0, 3.0], vec![6.0, 6.0]], 1e-6, "lengths");
        }
    }
}

#[test]
fn sign_aware_frequency_presence_length_and_bias() {
    for lang in LANGS {
        for th in [1, 4, 32] {
            let x = [2.0, -2.0, 1.0, 8.0, NINF];
            let h = [0, 1, 0, 0, 4];
            // sign-aware 2: token 0 (3 times) 2 -> 1; token 1 -2 -> -4; -inf stays
            let p = [2.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0];
            let got = penalties(lang, th, 5, 5, &x, &h, &[5], &[p], None);
            assert_rows_close(&got, &[vec![1.0, -4.0, 1.0, 8.0, NINF]], 1e-6, "sign-aware");
            // frequency 0.5, presence 0.25: token 0: 2 - 1.5 - 0.25; token 1: -2 - 0.5 - 0.25
            let p = [1.0, 0.0, 0.0, 0.0, 0.5, 0.25, 0.0, 0.0];
            let got = penalties(lang, th, 5, 5, &x, &h, &[5], &[p], None);
            assert_rows_close(
                &got,
                &[vec![0.25, -2.75, 1.0, 8.0, NINF]],
                1e-6,
                "freq/presence",
            );
            // length 0.5 on stop token 3 with len 3: 8 / 4^0.5 = 4; window 2 keeps only h[2]
            let p = [2.0, 0.0, 2.0, 0.0, 0.0, 0.0, 0.5, 3.0];
            let got = penalties(lang, th, 5, 5, &x, &h, &[3], &[p], None);
            assert_rows_close(&got, &[vec![1.0, -2.0, 1.0, 4.0, NINF]], 1e-6, "length");
            // bias: added last, -inf bans, -inf input stays -inf
            let bias = [0.5, NINF, 0.0, -1.0, 3.0];
            let p = [1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0];
            let got = penalties(lang, th, 5, 5, &x, &h, &[5], &[p], Some(&bias));
            assert_rows_close(&got, &[vec![2.5, NINF, 1.0, 7.0, NINF]], 1e-6, "bias");
        }
    }
}

#[test]
fn repetition_over_a_long_history_matches_a_sequential_loop() {
    let mut rng = Rng(99);
    let (vocab, width, rows) = (300usize, 600usize, 6usize);
    let x: Vec<f32> = (0..rows * vocab).map(|_| rng.normal() * 3.0).collect();
    let tokens: Vec<u32> = (0..rows * width)
        .map(|_| (rng.next() % 40) as u32 * 7)
        .collect();
    let lens: Vec<u32> = [600, 599, 1, 0, 333, 75].to_vec();
    let prm: Vec<Pen> = [
        pen(1.3, 0.5, 0.0),
        pen(1.5, 0.0, 75.0),
        pen(1.1, 0.2, 10.0),
        pen(2.0, 0.0, 0.0),
        [1.2, 0.0, 50.0, 1.0, 0.1, 0.2, 0.0, 0.0],
        [1.5, 0.3, 75.0, 0.0, 0.05, 0.0, 1.0, 299.0],
    ]
    .to_vec();
    let mut want = Vec::new();
    for r in 0..rows {
        let [rep, decay, window, sign, freq, pres, length, stop] = prm[r];
        let len = lens[r] as usize;
        let h = &tokens[r * width..r * width + len];
        let mut y = x[r * vocab..(r + 1) * vocab].to_vec();
        let mut log_div = vec![0f32; vocab];
        let mut count = vec![0f32; vocab];
        for (i, &t) in h.iter().enumerate() {
            let d = (len - i) as f32;
            if window == 0.0 || d < window {
                log_div[t as usize] += d.ln() * decay + rep.ln();
                count[t as usize] += 1.0;
            }
        }
        for t in 0..vocab {
            if count[t] > 0.0 {
                let v = if sign != 0.0 {
                    if y[t] > 0.0 {
                        y[t] / rep
                    } else {
                        y[t] * rep
                    }
                } else {
                    y[t] / log_div[t].exp()
                };
                y[t] = v - (count[t] * freq + pres);
            }
        }
        if length != 0.0 {
            y[stop as usize] /= ((len as f32 + 1.0).ln() * length).exp();
        }
        want.push(y);
    }
    for (lang, th) in [(Lang::C, 1), (Lang::C, 64), (Lang::Cpp, 9)] {
        let got = penalties(lang, th, vocab, width, &x, &tokens, &lens, &prm, None);
        assert_rows_close(&got, &want, 1e-5, &format!("{lang:?} {th}"));
    }
}
