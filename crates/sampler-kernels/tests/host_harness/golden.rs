//! The golden cases through the header: penalties, then filter, then (distribution cases) the
//! draw.

#[allow(unused_imports)]
use crate::prelude::*;
use sampler_testkit::golden::{cases_of, Case};

/// The golden cases of `kind`, from the workspace's one loader.
pub(crate) fn goldens(kind: &str) -> Vec<Case> {
    cases_of(kind).expect("the golden cases of tests/golden")
}

/// A case's config.json as written (the keys the harness reads, with their defaults).
fn raw_config(g: &Case) -> Value {
    serde_json::from_str(&std::fs::read_to_string(g.path("config.json")).unwrap()).unwrap()
}

pub(crate) fn npy_f32(path: &Path) -> (Vec<usize>, Vec<f32>) {
    let t = Tensor::read_npy(path)
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap();
    (
        t.dims().to_vec(),
        t.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
    )
}

pub(crate) fn npy_i64(path: &Path) -> (Vec<usize>, Vec<i64>) {
    let t = Tensor::read_npy(path)
        .unwrap()
        .to_dtype(DType::I64)
        .unwrap();
    (
        t.dims().to_vec(),
        t.flatten_all().unwrap().to_vec1::<i64>().unwrap(),
    )
}

/// A golden case as kernel inputs: logits rows, history rows, penalty and filter parameters,
/// and the bias (the NAR stop-token ban).
pub(crate) struct Inputs {
    rows: usize,
    vocab: usize,
    logits: Vec<f32>,
    width: usize,
    tokens: Vec<u32>,
    lens: Vec<u32>,
    pen: Vec<Pen>,
    prm: Vec<Prm>,
    bias: Option<Vec<f32>>,
}

pub(crate) fn inputs(g: &Case) -> Inputs {
    let cfg = raw_config(g);
    let c = |k: &str, d: f64| cfg.get(k).and_then(Value::as_f64).unwrap_or(d) as f32;
    let nar = g.meta["mode"] == "nar";
    let (dims, logits) = npy_f32(&g.dir.join("logits.npy"));
    let vocab = *dims.last().unwrap();
    let rows = logits.len() / vocab;
    let stop = c("stop_token", (vocab - 1) as f64);
    let hist = g.dir.join("history.npy");
    let (width, tokens, lens) = if !hist.exists() {
        (0, Vec::new(), vec![0; rows])
    } else if nar {
        // [batch, T]: row (b, j) has the previous level's codes h[b, 0..j) as its history
        let (hd, h) = npy_i64(&hist);
        let t = hd[1];
        let mut tokens = Vec::new();
        let mut lens = Vec::new();
        for b in 0..hd[0] {
            for j in 0..t {
                tokens.extend(h[b * t..(b + 1) * t].iter().map(|&v| v as u32));
                lens.push(j as u32);
            }
        }
        (t, tokens, lens)
    } else {
        // [rows, H], right-padded with -1
        let (hd, h) = npy_i64(&hist);
        let w = hd[1];
        let lens = h
            .chunks(w)
            .map(|r| r.iter().take_while(|&&v| v >= 0).count() as u32)
            .collect();
        (w, h.iter().map(|&v| v.max(0) as u32).collect(), lens)
    };
    let length = if nar { 0.0 } else { c("length_penalty", 0.0) };
    let pen = [
        c("repetition_penalty", 1.0),
        c("repetition_penalty_decay", 0.0),
        c("repetition_penalty_window", 75.0),
        0.0,
        0.0,
        0.0,
        length,
        stop,
    ];
    let t = c("temperature", 1.0);
    let prm = [
        c("min_p", 0.0),
        c("min_p_min_tokens", 32.0),
        c("top_k", 0.0),
        c("top_p", 1.0),
        t,
        c("min_temperature", -1.0),
        c("top_no", 0.0),
        if t <= 0.0 { 1.0 } else { 0.0 },
    ];
    let bias = nar.then(|| {
        let mut b = vec![0f32; vocab];
        b[stop as usize] = NINF;
        b
    });
    Inputs {
        rows,
        vocab,
        logits,
        width,
        tokens,
        lens,
        pen: vec![pen; rows],
        prm: vec![prm; rows],
        bias,
    }
}

pub(crate) fn penalized(lang: Lang, threads: u32, i: &Inputs) -> Vec<f32> {
    let out = penalties(
        lang,
        threads,
        i.vocab,
        i.width,
        &i.logits,
        &i.tokens,
        &i.lens,
        &i.pen,
        i.bias.as_deref(),
    );
    out.concat()
}

#[test]
fn golden_apply_cases_pass_through_penalties_and_filter() {
    let cases = goldens("apply");
    assert!(
        cases.len() >= 26,
        "expected the 26 apply cases, found {}",
        cases.len()
    );
    for g in &cases {
        let i = inputs(g);
        let (_, expected) = npy_f32(&g.dir.join("expected.npy"));
        let atol = g.meta["atol"].as_f64().unwrap() as f32;
        let rtol = g.meta["rtol"].as_f64().unwrap() as f32;
        for (lang, th) in [(Lang::C, 1), (Lang::C, 32), (Lang::Cpp, 5)] {
            let x = penalized(lang, th, &i);
            let got = filter(lang, th, i.vocab, &x, &i.prm).concat();
            for (k, (&o, &e)) in got.iter().zip(&expected).enumerate() {
                let ok = if e == NINF {
                    o == NINF
                } else {
                    o.is_finite() && (o - e).abs() <= atol + rtol * e.abs()
                };
                assert!(
                    ok,
                    "{} ({lang:?}, {th} threads): row {} id {}: got {o}, expected {e}",
                    g.name,
                    k / i.vocab,
                    k % i.vocab
                );
            }
        }
    }
}

#[test]
fn golden_distribution_cases_draw_from_the_expected_probabilities() {
    let cases = goldens("distribution");
    assert!(
        cases.len() >= 3,
        "expected the 3 distribution cases, found {}",
        cases.len()
    );
    for g in &cases {
        let i = inputs(g);
        let (_, probs) = npy_f32(&g.dir.join("expected_probs.npy"));
        let greedy = g.meta["greedy"].as_bool().unwrap();
        let seeds: Vec<u64> = g.meta["seeds"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_u64().unwrap())
            .collect();
        let ids: Vec<u32> = (0..i.rows as u32).collect();
        let x = penalized(Lang::C, 4, &i);
        // rows with identical logits share one distribution; pool their draws over the seeds
        let mut groups: Vec<(Vec<f32>, Vec<f64>, Vec<u64>)> = Vec::new();
        let mut first = None;
        for &seed in &seeds {
            let drawn = sample(Lang::C, 4, i.vocab, &x, &i.prm, &ids, seed, 0);
            if first.is_none() {
                first = Some(drawn.clone());
            }
            for (r, &(tok, p)) in drawn.iter().enumerate() {
                let row = &probs[r * i.vocab..(r + 1) * i.vocab];
                let want = row[tok as usize];
                assert!(
                    want > 0.0,
                    "{}: row {r} drew token {tok} of probability 0",
                    g.name
                );
                // (greedy cases list a one-hot row, not the softmax the draw reports)
                if !greedy {
                    assert!(
                        (p - want).abs() <= 1e-5 + 1e-4 * want,
                        "{}: prob {p} vs {want}",
                        g.name
                    );
                } else {
                    let m = row.iter().copied().fold(0.0, f32::max);
                    assert_eq!(
                        tok as usize,
                        row.iter().position(|&v| v == m).unwrap(),
                        "{}",
                        g.name
                    );
                }
                let key = &x[r * i.vocab..(r + 1) * i.vocab];
                let gi = match groups.iter().position(|(k, _, _)| k.as_slice() == key) {
                    Some(gi) => gi,
                    None => {
                        groups.push((
                            key.to_vec(),
                            row.iter().map(|&v| v as f64).collect(),
                            vec![0; i.vocab],
                        ));
                        groups.len() - 1
                    }
                };
                groups[gi].2[tok as usize] += 1;
            }
        }
        let again = sample(Lang::C, 4, i.vocab, &x, &i.prm, &ids, seeds[0], 0);
        assert_eq!(
            Some(again),
            first,
            "{}: the same seed draws the same tokens",
            g.name
        );
        let distinct = g.meta["distinct_rows"].as_u64().unwrap() as usize;
        assert_eq!(groups.len(), distinct, "{}", g.name);
        // each token's count within 6 standard deviations of its expectation (fixed seeds)
        for (_, p, counts) in &groups {
            let n: u64 = counts.iter().sum();
            for (t, (&c, &q)) in counts.iter().zip(p).enumerate() {
                let mean = n as f64 * q;
                let sd = (n as f64 * q * (1.0 - q)).sqrt();
                assert!(
                    (c as f64 - mean).abs() <= 6.0 * sd + 1.0,
                    "{}: token {t} drawn {c} times of {n}, expected {mean:.1} (sd {sd:.1})",
                    g.name
                );
            }
        }
    }
}
