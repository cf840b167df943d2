//! The conventions of docs/config.md's mapping table that differ from llama.cpp, checked
//! through `SamplerConfig` (parsed from JSON, as a user coming from llama.cpp would write it)
//! on both execution paths:
//!
//! - llama.cpp's `penalty_last_n = n` penalises the last n tokens; here the window counts the
//!   distances below it (distance 1 = the most recent token), so the same n tokens take
//!   `repetition_penalty_window = n + 1`. The frequency and presence penalties share the window.
//! - top-n-sigma's standard deviation is the sample one (N - 1) here and the population one (N)
//!   in llama.cpp, so llama.cpp's `top_n_sigma = k` on a row of N finite logits is
//!   `top_no = k * sqrt((N - 1) / N)` here.
//!
//! Every expectation is computed by hand in this file, the way llama.cpp's samplers compute it.

use std::collections::{HashMap, HashSet};

use candle_core::{Device, Tensor};
use sampler_core::{ExecPath, History, Mode, SamplerBuilder, SamplerConfig, SamplingContext};
use serde_json::json;

const PATHS: [ExecPath; 2] = [ExecPath::Plain, ExecPath::Fused];
const NINF: f32 = f32::NEG_INFINITY;

fn config(v: serde_json::Value) -> SamplerConfig {
    let cfg: SamplerConfig = serde_json::from_value(v).expect("a valid config");
    cfg.validate().expect("values in range");
    cfg
}

/// The processed logits of one AR row with this config and history, on a path.
fn apply(cfg: &SamplerConfig, path: ExecPath, logits: &[f32], history: &[i64]) -> Vec<f32> {
    let dev = Device::Cpu;
    let x = Tensor::from_vec(logits.to_vec(), (1, logits.len()), &dev).unwrap();
    let ctx = SamplingContext::new(0)
        .with_history(History::from_padded_rows(&[history.to_vec()], &dev).unwrap());
    let sampler = SamplerBuilder::from_config(cfg, Mode::Ar)
        .path(path)
        .build()
        .unwrap();
    sampler.apply(&x, &ctx).unwrap().to_vec2::<f32>().unwrap()[0].clone()
}

/// llama.cpp's `penalties` sampler: a ring buffer of the last `last_n` tokens; every token in
/// it gets the repeat penalty once (divide a positive logit, multiply the others) and
/// `count * freq + (count > 0) * present` subtracted.
fn llama_cpp_penalties(
    logits: &[f32],
    history: &[i64],
    last_n: usize,
    repeat: f32,
    freq: f32,
    present: f32,
) -> Vec<f32> {
    let start = history.len().saturating_sub(last_n);
    let mut count: HashMap<usize, u32> = HashMap::new();
    for &t in &history[start..] {
        *count.entry(t as usize).or_default() += 1;
    }
    logits
        .iter()
        .enumerate()
        .map(|(id, &l)| match count.get(&id) {
            None => l,
            Some(&c) => {
                let l = if l <= 0.0 { l * repeat } else { l / repeat };
                l - c as f32 * freq - present
            }
        })
        .collect()
}

fn assert_close(got: &[f32], want: &[f32], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= 1e-5 * w.abs() + 1e-6,
            "{what}: token {i}: got {g}, want {w}\n got {got:?}\nwant {want:?}"
        );
    }
}

/// The ids whose logit the step changed.
fn changed(before: &[f32], after: &[f32]) -> HashSet<usize> {
    before
        .iter()
        .zip(after)
        .enumerate()
        .filter(|(_, (b, a))| (*b - *a).abs() > 1e-6)
        .map(|(i, _)| i)
        .collect()
}

// Ten tokens of mixed sign; the history holds every id once (ids 2..=9, oldest first), so the
// set of penalised ids says exactly how far back the window reached.
const LOGITS: [f32; 10] = [1.5, -0.5, 2.0, -1.0, 0.75, 3.0, -2.5, 1.25, 0.5, -0.25];
const DISTINCT: [i64; 8] = [2, 3, 4, 5, 6, 7, 8, 9];

#[test]
fn penalty_last_n_is_window_n_plus_one() {
    let h = &DISTINCT;
    for n in 1..=h.len() {
        let cfg = config(json!({
            "repetition_penalty": 2.0,
            "repetition_penalty_mode": "sign_aware",
            "repetition_penalty_window": n + 1,
        }));
        let want = llama_cpp_penalties(&LOGITS, h, n, 2.0, 0.0, 0.0);
        // The last n tokens of the history, no more and no fewer.
        let last_n: HashSet<usize> = h[h.len() - n..].iter().map(|&t| t as usize).collect();
        assert_eq!(
            changed(&LOGITS, &want),
            last_n,
            "the reference itself, n = {n}"
        );
        for path in PATHS {
            let got = apply(&cfg, path, &LOGITS, h);
            assert_eq!(changed(&LOGITS, &got), last_n, "n = {n}, {path:?}");
            assert_close(&got, &want, &format!("n = {n}, {path:?}"));
        }
    }
}

#[test]
fn window_n_alone_covers_one_token_less() {
    // The mapping is not the identity: window = n leaves the oldest of llama.cpp's n tokens out.
    let h = &DISTINCT;
    let n = 4;
    let cfg = config(json!({
        "repetition_penalty": 2.0,
        "repetition_penalty_mode": "sign_aware",
        "repetition_penalty_window": n,
    }));
    let want: HashSet<usize> = h[h.len() - (n - 1)..].iter().map(|&t| t as usize).collect();
    for path in PATHS {
        assert_eq!(
            changed(&LOGITS, &apply(&cfg, path, &LOGITS, h)),
            want,
            "{path:?}"
        );
    }
}

#[test]
fn the_divide_form_uses_the_same_window() {
    // The reference VALL-E form divides once per occurrence whatever the sign; its window is
    // the same count of distances.
    let h: [i64; 7] = [1, 4, 7, 4, 9, 4, 2];
    let n = 5; // the last five: 7, 4, 9, 4, 2
    let cfg = config(json!({ "repetition_penalty": 2.0, "repetition_penalty_window": n + 1 }));
    let mut want = LOGITS.to_vec();
    for &t in &h[h.len() - n..] {
        want[t as usize] /= 2.0;
    }
    assert_eq!(changed(&LOGITS, &want), HashSet::from([2, 4, 7, 9]));
    for path in PATHS {
        assert_close(&apply(&cfg, path, &LOGITS, &h), &want, &format!("{path:?}"));
    }
}

#[test]
fn frequency_and_presence_share_the_window() {
    // llama.cpp counts frequency and presence over the same last n tokens as the repeat
    // penalty; so does repetition_penalty_window = n + 1 here.
    let h: [i64; 9] = [3, 3, 3, 5, 1, 5, 8, 5, 1];
    for n in [1, 3, 6, 9] {
        let cfg = config(json!({
            "repetition_penalty": 1.5,
            "repetition_penalty_mode": "sign_aware",
            "frequency_penalty": 0.25,
            "presence_penalty": 0.5,
            "repetition_penalty_window": n + 1,
        }));
        let want = llama_cpp_penalties(&LOGITS, &h, n, 1.5, 0.25, 0.5);
        for path in PATHS {
            assert_close(
                &apply(&cfg, path, &LOGITS, &h),
                &want,
                &format!("n = {n}, {path:?}"),
            );
        }
    }
}

/// The kept ids of `l >= max - k * std`, with the standard deviation's denominator `denom(N)`.
fn sigma_keep(row: &[f32], k: f64, denom: impl Fn(f64) -> f64) -> Vec<usize> {
    let fin: Vec<f64> = row
        .iter()
        .filter(|v| v.is_finite())
        .map(|&v| v as f64)
        .collect();
    let n = fin.len() as f64;
    let mean = fin.iter().sum::<f64>() / n;
    let ss: f64 = fin.iter().map(|v| (v - mean) * (v - mean)).sum();
    let std = (ss / denom(n)).sqrt();
    let max = fin.iter().cloned().fold(f64::MIN, f64::max);
    (0..row.len())
        .filter(|&i| row[i].is_finite() && row[i] as f64 >= max - k * std)
        .collect()
}

fn kept(row: &[f32]) -> Vec<usize> {
    (0..row.len()).filter(|&i| row[i].is_finite()).collect()
}

// Five finite logits (and one -inf, which the deviation skips): mean 1.56, sample std 1.1261,
// population std 1.0072. With k = 1.1 the cut is 1.7613 for N - 1 and 1.8921 for N, so the
// logit 1.8 (id 4) separates the two conventions.
const SIGMA_ROW: [f32; 6] = [0.0, 1.0, 2.0, 3.0, 1.8, NINF];
const SIGMA_K: f64 = 1.1;

#[test]
fn top_n_sigma_uses_the_sample_standard_deviation() {
    let sample = sigma_keep(&SIGMA_ROW, SIGMA_K, |n| n - 1.0);
    let population = sigma_keep(&SIGMA_ROW, SIGMA_K, |n| n);
    assert_eq!(sample, vec![2, 3, 4]);
    assert_eq!(population, vec![2, 3]);
    let cfg = config(json!({ "top_no": SIGMA_K }));
    for path in PATHS {
        let got = apply(&cfg, path, &SIGMA_ROW, &[]);
        assert_eq!(kept(&got), sample, "{path:?}: N - 1, not N");
    }
}

#[test]
fn llama_cpp_top_n_sigma_converts_by_the_square_root_of_n_minus_one_over_n() {
    // llama.cpp's top_n_sigma = k keeps what top_no = k * sqrt((N - 1) / N) keeps here.
    let n = SIGMA_ROW.iter().filter(|v| v.is_finite()).count() as f64;
    let llama_cpp = sigma_keep(&SIGMA_ROW, SIGMA_K, |n| n);
    let cfg = config(json!({ "top_no": SIGMA_K * ((n - 1.0) / n).sqrt() }));
    for path in PATHS {
        assert_eq!(
            kept(&apply(&cfg, path, &SIGMA_ROW, &[])),
            llama_cpp,
            "{path:?}"
        );
    }
}
