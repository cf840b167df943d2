//! Building the host harness (C and C++), driving it over a pipe, and the parameter rows and
//! test-data helpers every test module uses.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

pub(crate) const NINF: f32 = f32::NEG_INFINITY;

#[derive(Clone, Copy, Debug)]
pub(crate) enum Lang {
    C,
    Cpp,
}

pub(crate) const LANGS: [Lang; 2] = [Lang::C, Lang::Cpp];

pub(crate) fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

pub(crate) fn build(lang: Lang) -> PathBuf {
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

pub(crate) fn harness(lang: Lang) -> &'static Path {
    static C: OnceLock<PathBuf> = OnceLock::new();
    static CPP: OnceLock<PathBuf> = OnceLock::new();
    match lang {
        Lang::C => C.get_or_init(|| build(lang)),
        Lang::Cpp => CPP.get_or_init(|| build(lang)),
    }
}

pub(crate) fn run(lang: Lang, input: Vec<u8>) -> Vec<u8> {
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
pub(crate) struct Msg(pub(crate) Vec<u8>);

impl Msg {
    pub(crate) fn u32(mut self, v: u32) -> Self {
        self.0.extend_from_slice(&v.to_ne_bytes());
        self
    }
    pub(crate) fn u32s(mut self, v: &[u32]) -> Self {
        v.iter()
            .for_each(|x| self.0.extend_from_slice(&x.to_ne_bytes()));
        self
    }
    pub(crate) fn f32s(mut self, v: &[f32]) -> Self {
        v.iter()
            .for_each(|x| self.0.extend_from_slice(&x.to_ne_bytes()));
        self
    }
}

pub(crate) fn f32s(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4)
        .map(|c| f32::from_ne_bytes(c.try_into().unwrap()))
        .collect()
}

pub(crate) fn u32s(b: &[u8]) -> Vec<u32> {
    b.chunks_exact(4)
        .map(|c| u32::from_ne_bytes(c.try_into().unwrap()))
        .collect()
}

/// Filter parameters: min_p, min_tokens, top_k, top_p, temperature, min_temperature,
/// top-n-sigma n, greedy. `OFF` turns every filter off.
pub(crate) type Prm = [f32; 8];
pub(crate) const OFF: Prm = [0.0, 32.0, 0.0, 1.0, 1.0, -1.0, 0.0, 0.0];

pub(crate) fn with(set: &[(usize, f32)]) -> Prm {
    let mut p = OFF;
    set.iter().for_each(|&(i, v)| p[i] = v);
    p
}
pub(crate) const MIN_P: usize = 0;
pub(crate) const MIN_TOKENS: usize = 1;
pub(crate) const TOP_K: usize = 2;
pub(crate) const TOP_P: usize = 3;
pub(crate) const TEMP: usize = 4;
pub(crate) const TEMP_MIN: usize = 5;
pub(crate) const SIGMA: usize = 6;
pub(crate) const GREEDY: usize = 7;

/// The C++ build emulates warps of 4 threads: its blocks are whole warps.
pub(crate) fn block(lang: Lang, threads: u32) -> u32 {
    match lang {
        Lang::C => threads,
        Lang::Cpp => threads.next_multiple_of(4),
    }
}

pub(crate) fn filter(
    lang: Lang,
    threads: u32,
    vocab: usize,
    x: &[f32],
    prm: &[Prm],
) -> Vec<Vec<f32>> {
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
pub(crate) fn sample(
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
pub(crate) type Pen = [f32; 8];

#[allow(clippy::too_many_arguments)]
pub(crate) fn penalties(
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

pub(crate) fn uniforms(lang: Lang, draws: &[(u64, u32, u64)]) -> Vec<f32> {
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
pub(crate) const THREADS: [u32; 5] = [1, 3, 8, 32, 64];

/// A small deterministic generator for test data (xorshift64*).
pub(crate) struct Rng(pub(crate) u64);

impl Rng {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in [0, 1).
    pub(crate) fn unit(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32
    }
    /// Roughly normal (sum of four uniforms), mean 0, std ~1.
    pub(crate) fn normal(&mut self) -> f32 {
        ((0..4).map(|_| self.unit()).sum::<f32>() - 2.0) * 1.732
    }
}

pub(crate) fn assert_rows_close(got: &[Vec<f32>], want: &[Vec<f32>], rtol: f32, what: &str) {
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
