//! The per-row algorithms of `kernels/sampling_common.h` -- the code the CUDA and Metal kernels
//! run -- compiled for the host, as C and as C++, with a thread block emulated by OS threads
//! (tests/host/harness.c), and checked against hand-computed rows, a sort-based reference of the
//! plain path, a sequential inverse-CDF draw and the golden cases.
//!
//! Needs a C and a C++ compiler (`$CC` / `$CXX`, default `cc` / `c++`) with POSIX threads.
//! Golden cases: `$SAMPLER_GOLDEN_DIR`, or the repository's tests/golden.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use candle_core::{DType, Tensor};
use serde_json::Value;

const NINF: f32 = f32::NEG_INFINITY;

// ---------------------------------------------------------------------------------------------
// Building and driving the harness
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug)]
enum Lang {
    C,
    Cpp,
}

const LANGS: [Lang; 2] = [Lang::C, Lang::Cpp];

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn build(lang: Lang) -> PathBuf {
    let root = repo_root();
    let src = root.join("crates/sampler-kernels/tests/host/harness.c");
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join(match lang {
        Lang::C => "sk_harness_c",
        Lang::Cpp => "sk_harness_cpp",
    });
    let (compiler, std_args): (String, &[&str]) = match lang {
        Lang::C => (
            std::env::var("CC").unwrap_or_else(|_| "cc".into()),
            &["-std=c11", "-pedantic"],
        ),
        Lang::Cpp => (
            std::env::var("CXX").unwrap_or_else(|_| "c++".into()),
            &["-std=c++14", "-x", "c++", "-DSK_HOST_WARP=4u"],
        ),
    };
    let status = Command::new(&compiler)
        .args(std_args)
        .args(["-O2", "-Wall", "-Wextra", "-Werror", "-pthread", "-I"])
        .arg(root.join("crates/sampler-kernels/kernels"))
        .arg(&src)
        .arg("-o")
        .arg(&out)
        .arg("-lm")
        .status()
        .unwrap_or_else(|e| panic!("cannot run the {lang:?} compiler `{compiler}`: {e}"));
    assert!(
        status.success(),
        "{lang:?} build of the host harness failed"
    );
    out
}

fn harness(lang: Lang) -> &'static Path {
    static C: OnceLock<PathBuf> = OnceLock::new();
    static CPP: OnceLock<PathBuf> = OnceLock::new();
    match lang {
        Lang::C => C.get_or_init(|| build(lang)),
        Lang::Cpp => CPP.get_or_init(|| build(lang)),
    }
}

fn run(lang: Lang, input: Vec<u8>) -> Vec<u8> {
    let mut child = Command::new(harness(lang))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start the harness");
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let mut out = Vec::new();
    child.stdout.take().unwrap().read_to_end(&mut out).unwrap();
    writer.join().unwrap().unwrap();
    assert!(child.wait().unwrap().success(), "harness failed");
    out
}

#[derive(Default)]
struct Msg(Vec<u8>);

impl Msg {
    fn u32(mut self, v: u32) -> Self {
        self.0.extend_from_slice(&v.to_ne_bytes());
        self
    }
    fn u32s(mut self, v: &[u32]) -> Self {
        v.iter()
            .for_each(|x| self.0.extend_from_slice(&x.to_ne_bytes()));
        self
    }
    fn f32s(mut self, v: &[f32]) -> Self {
        v.iter()
            .for_each(|x| self.0.extend_from_slice(&x.to_ne_bytes()));
        self
    }
}

fn f32s(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4)
        .map(|c| f32::from_ne_bytes(c.try_into().unwrap()))
        .collect()
}

fn u32s(b: &[u8]) -> Vec<u32> {
    b.chunks_exact(4)
        .map(|c| u32::from_ne_bytes(c.try_into().unwrap()))
        .collect()
}

/// Filter parameters: min_p, min_tokens, top_k, top_p, temperature, min_temperature,
/// top-n-sigma n, greedy. `OFF` turns every filter off.
type Prm = [f32; 8];
const OFF: Prm = [0.0, 32.0, 0.0, 1.0, 1.0, -1.0, 0.0, 0.0];

fn with(set: &[(usize, f32)]) -> Prm {
    let mut p = OFF;
    set.iter().for_each(|&(i, v)| p[i] = v);
    p
}
const MIN_P: usize = 0;
const MIN_TOKENS: usize = 1;
const TOP_K: usize = 2;
const TOP_P: usize = 3;
const TEMP: usize = 4;
const TEMP_MIN: usize = 5;
const SIGMA: usize = 6;
const GREEDY: usize = 7;

/// The C++ build emulates warps of 4 threads: its blocks are whole warps.
fn block(lang: Lang, threads: u32) -> u32 {
    match lang {
        Lang::C => threads,
        Lang::Cpp => threads.next_multiple_of(4),
    }
}

fn filter(lang: Lang, threads: u32, vocab: usize, x: &[f32], prm: &[Prm]) -> Vec<Vec<f32>> {
    let threads = block(lang, threads);
    let rows = prm.len();
    assert_eq!(x.len(), rows * vocab);
    let m = Msg::default()
        .u32(1)
        .u32(rows as u32)
        .u32(vocab as u32)
        .u32(threads);
    let m = m.f32s(x).f32s(&prm.concat());
    f32s(&run(lang, m.0))
        .chunks(vocab)
        .map(|r| r.to_vec())
        .collect()
}

#[allow(clippy::too_many_arguments)]
fn sample(
    lang: Lang,
    threads: u32,
    vocab: usize,
    x: &[f32],
    prm: &[Prm],
    row_ids: &[u32],
    seed: u64,
    step: u64,
) -> Vec<(u32, f32)> {
    let threads = block(lang, threads);
    let rows = prm.len();
    let m = Msg::default()
        .u32(2)
        .u32(rows as u32)
        .u32(vocab as u32)
        .u32(threads);
    let m = m
        .u32(seed as u32)
        .u32((seed >> 32) as u32)
        .u32(step as u32)
        .u32((step >> 32) as u32);
    let m = m.f32s(x).f32s(&prm.concat()).u32s(row_ids);
    f32s(&run(lang, m.0))
        .chunks(2)
        .map(|r| (r[0] as u32, r[1]))
        .collect()
}

/// Penalty parameters: repetition, decay, window, sign_aware, frequency, presence, length, stop.
type Pen = [f32; 8];

#[allow(clippy::too_many_arguments)]
fn penalties(
    lang: Lang,
    threads: u32,
    vocab: usize,
    width: usize,
    x: &[f32],
    tokens: &[u32],
    lens: &[u32],
    prm: &[Pen],
    bias: Option<&[f32]>,
) -> Vec<Vec<f32>> {
    let threads = block(lang, threads);
    let rows = prm.len();
    let m = Msg::default()
        .u32(3)
        .u32(rows as u32)
        .u32(vocab as u32)
        .u32(width as u32);
    let m = m.u32(threads).u32(bias.is_some() as u32);
    let mut m = m.f32s(x).u32s(tokens).u32s(lens).f32s(&prm.concat());
    if let Some(b) = bias {
        m = m.f32s(b);
    }
    f32s(&run(lang, m.0))
        .chunks(vocab)
        .map(|r| r.to_vec())
        .collect()
}

fn uniforms(lang: Lang, draws: &[(u64, u32, u64)]) -> Vec<f32> {
    let mut m = Msg::default().u32(5).u32(draws.len() as u32);
    for &(seed, row, step) in draws {
        m = m
            .u32(seed as u32)
            .u32((seed >> 32) as u32)
            .u32(step as u32)
            .u32((step >> 32) as u32);
        m = m.u32(row);
    }
    f32s(&run(lang, m.0))
}

/// Thread counts of the emulated block: one thread, odd counts and full warps.
const THREADS: [u32; 5] = [1, 3, 8, 32, 64];

/// A small deterministic generator for test data (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in [0, 1).
    fn unit(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32
    }
    /// Roughly normal (sum of four uniforms), mean 0, std ~1.
    fn normal(&mut self) -> f32 {
        ((0..4).map(|_| self.unit()).sum::<f32>() - 2.0) * 1.732
    }
}

fn assert_rows_close(got: &[Vec<f32>], want: &[Vec<f32>], rtol: f32, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: row count");
    for (r, (g, w)) in got.iter().zip(want).enumerate() {
        for (i, (&a, &b)) in g.iter().zip(w).enumerate() {
            let ok = if b == NINF {
                a == NINF
            } else {
                (a - b).abs() <= 1e-6 + rtol * b.abs()
            };
            assert!(
                ok,
                "{what}: row {r} id {i}: got {a}, want {b}\n got  {g:?}\n want {w:?}"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Philox
// ---------------------------------------------------------------------------------------------

#[test]
fn philox_matches_the_random123_known_answers() {
    let cases: [([u32; 4], [u32; 2], [u32; 4]); 3] = [
        (
            [0; 4],
            [0; 2],
            [0x6627_e8d5, 0xe169_c58d, 0xbc57_ac4c, 0x9b00_dbd8],
        ),
        (
            [u32::MAX; 4],
            [u32::MAX; 2],
            [0x408f_276d, 0x41c8_3b0e, 0xa20b_c7c6, 0x6d54_51fd],
        ),
        (
            [0x243f_6a88, 0x85a3_08d3, 0x1319_8a2e, 0x0370_7344],
            [0xa409_3822, 0x299f_31d0],
            [0xd16c_fe09, 0x94fd_cceb, 0x5001_e420, 0x2412_6ea1],
        ),
    ];
    for lang in LANGS {
        for (c, k, want) in cases {
            let out = u32s(&run(lang, Msg::default().u32(4).u32s(&c).u32s(&k).0));
            assert_eq!(out, want, "{lang:?}");
        }
    }
}

#[test]
fn uniforms_equal_sampler_core_philox_uniform() {
    // Values of sampler_core::philox::uniform(seed, row, step): the same seed draws the same
    // token on the CPU path and on the devices.
    let draws = [
        (0u64, 0u32, 0u64),
        (42, 3, 7),
        ((1 << 40) + 5, 1000, (1 << 33) + 1),
        (7, 4, 5),
    ];
    let want: Vec<f32> = [6_694_888u32, 6_659_826, 16_256_341, 15_315_213]
        .iter()
        .map(|&b| b as f32 / 16_777_216.0)
        .collect();
    for lang in LANGS {
        assert_eq!(uniforms(lang, &draws), want, "{lang:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// Filters, hand-computed (the unit-test rows of sampler-core's processors)
// ---------------------------------------------------------------------------------------------

fn ln(p: &[f32]) -> Vec<f32> {
    p.iter().map(|p| p.ln()).collect()
}

/// Every filter case under every thread count and both languages.
fn each_config(mut f: impl FnMut(Lang, u32)) {
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

// ---------------------------------------------------------------------------------------------
// Filters against a sort-based reference of the plain path, on random rows
// ---------------------------------------------------------------------------------------------

/// The k-th largest finite value (ties counted), k clamped to [1, finite count].
fn kth_largest(x: &[f32], k: f32) -> f32 {
    let mut v: Vec<f32> = x.iter().copied().filter(|v| v.is_finite()).collect();
    v.sort_by(|a, b| b.partial_cmp(a).unwrap());
    let k = k.min(v.len() as f32).max(1.0).ceil() as usize;
    v[k - 1]
}

fn softmax_sum(x: &[f32], max: f32) -> f32 {
    x.iter().map(|&v| (v - max).exp()).sum()
}

/// The plain chain min-p -> top-k -> top-p -> temperature -> top-n-sigma, by sorting.
fn reference(x: &[f32], p: &Prm) -> Vec<f32> {
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

fn random_rows(rng: &mut Rng, rows: usize, vocab: usize, scale: f32) -> Vec<f32> {
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

fn param_mix() -> Vec<Prm> {
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

// ---------------------------------------------------------------------------------------------
// The draw
// ---------------------------------------------------------------------------------------------

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
fn sequential_draw(y: &[f32], u: f32) -> (u32, f64) {
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

// ---------------------------------------------------------------------------------------------
// Penalties
// ---------------------------------------------------------------------------------------------

/// repetition, decay, window, sign_aware, frequency, presence, length, stop
fn pen(rep: f32, decay: f32, window: f32) -> Pen {
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

// ---------------------------------------------------------------------------------------------
// Golden cases: penalties, then filter, then (distribution cases) the draw
// ---------------------------------------------------------------------------------------------

fn golden_dir() -> PathBuf {
    match std::env::var("SAMPLER_GOLDEN_DIR") {
        Ok(d) => PathBuf::from(d),
        Err(_) => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/golden"),
    }
}

struct Golden {
    name: String,
    dir: PathBuf,
    meta: Value,
    cfg: Value,
}

fn goldens(kind: &str) -> Vec<Golden> {
    let dir = golden_dir();
    let mut out = Vec::new();
    for e in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("golden dir {}: {e}", dir.display()))
    {
        let path = e.unwrap().path();
        let read = |f: &str| -> Value {
            serde_json::from_str(&std::fs::read_to_string(path.join(f)).unwrap()).unwrap()
        };
        if !path.join("meta.json").exists() {
            continue;
        }
        let meta = read("meta.json");
        if meta["kind"] == kind {
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            out.push(Golden {
                name,
                cfg: read("config.json"),
                meta,
                dir: path,
            });
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

fn npy_f32(path: &Path) -> (Vec<usize>, Vec<f32>) {
    let t = Tensor::read_npy(path)
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap();
    (
        t.dims().to_vec(),
        t.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
    )
}

fn npy_i64(path: &Path) -> (Vec<usize>, Vec<i64>) {
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
struct Inputs {
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

fn inputs(g: &Golden) -> Inputs {
    let c = |k: &str, d: f64| g.cfg.get(k).and_then(Value::as_f64).unwrap_or(d) as f32;
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

fn penalized(lang: Lang, threads: u32, i: &Inputs) -> Vec<f32> {
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
