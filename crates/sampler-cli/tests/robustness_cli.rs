//! The CLI contract under random input: random configs (valid, out of range, wrong JSON types,
//! unparsable files), random logits files (NaN, +inf, -inf, denormals, all -inf rows, f16 and
//! f64, wrong rank), histories with -1 in the middle and ids past the vocabulary, mismatched row
//! counts, both paths and both modes, through `sampler apply` and `sampler sample`. Every run
//! either succeeds with a NaN-free output file of the right shape, or exits 1 with one line on
//! stderr and no output file; a panic (reported by the binary as "internal error") fails.
//!
//! `SAMPLER_ROBUSTNESS_CLI_CASES` sets the number of runs (default 120).

use std::path::Path;
use std::process::Command;

use candle_core::{DType, Device, Tensor};
use serde_json::{json, Map, Value};

struct Gen(u64);

impl Gen {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    fn chance(&mut self, p: f64) -> bool {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64 <= p
    }
    fn pick<T: Clone>(&mut self, from: &[T]) -> T {
        from[self.below(from.len())].clone()
    }
}

fn random_config(g: &mut Gen) -> String {
    let keys: [(&str, &[Value]); 14] = [
        (
            "temperature",
            &[json!(0.0), json!(0.8), json!(-1.0), json!("hot")],
        ),
        (
            "top_k",
            &[json!(0), json!(3), json!(1_000_000), json!(-5), json!(1.5)],
        ),
        ("top_p", &[json!(0.0), json!(0.9), json!(1.0), json!(1.5)]),
        ("min_p", &[json!(0.0), json!(0.1), json!(-0.1)]),
        ("typical_p", &[json!(0.5), json!(1.0), json!(2.0)]),
        ("repetition_penalty", &[json!(1.0), json!(1.5), json!(0.0)]),
        (
            "repetition_penalty_window",
            &[json!(75), json!(0), json!(-3)],
        ),
        (
            "repetition_penalty_mode",
            &[json!("divide"), json!("sign_aware"), json!(3)],
        ),
        ("ban_tokens", &[json!([0]), json!([99999]), json!("all")]),
        (
            "logit_bias",
            &[json!({"1": 3.0}), json!({"x": 1.0}), json!({"99999": 1.0})],
        ),
        ("xtc_probability", &[json!(0.5), json!(2.0)]),
        ("mirostat", &[json!(0), json!(2), json!(7)]),
        ("dry_multiplier", &[json!(0.8), json!(-1.0)]),
        ("cfg_strength", &[json!(1.0), json!(2.5)]),
    ];
    if g.chance(0.03) {
        return "{ not json".into();
    }
    let mut m = Map::new();
    for _ in 0..g.below(5) {
        let (k, values) = g.pick(&keys);
        m.insert(k.to_string(), g.pick(values));
    }
    if g.chance(0.03) {
        m.insert("top_kk".into(), json!(1));
    }
    Value::Object(m).to_string()
}

fn random_logits(g: &mut Gen, rows: usize, vocab: usize, nar: bool) -> Tensor {
    let spice = g.pick(&[0.0, 0.01, 0.3]);
    let mut v: Vec<f32> = (0..rows * vocab)
        .map(|_| {
            if g.chance(spice) {
                g.pick(&[f32::NEG_INFINITY, f32::INFINITY, f32::NAN, 1e-40, 3e38])
            } else {
                (g.below(2000) as f32 - 1000.0) / 200.0
            }
        })
        .collect();
    if rows > 0 && g.chance(0.1) {
        let r = g.below(rows);
        v[r * vocab..(r + 1) * vocab].fill(f32::NEG_INFINITY);
    }
    let t = Tensor::from_vec(v, rows * vocab, &Device::Cpu).unwrap();
    let t = if g.chance(0.03) {
        t // wrong rank
    } else if nar {
        t.reshape((1, rows, vocab)).unwrap()
    } else {
        t.reshape((rows, vocab)).unwrap()
    };
    t.to_dtype(g.pick(&[DType::F32, DType::F32, DType::F16, DType::F64]))
        .unwrap()
}

fn random_history(g: &mut Gen, rows: usize, vocab: usize, nar: bool) -> Tensor {
    let hrows = if g.chance(0.9) { rows } else { rows + 1 };
    let width = if nar { rows } else { g.pick(&[1, 8, 40]) };
    let v: Vec<i64> = (0..hrows * width)
        .map(|_| {
            if g.chance(0.05) {
                -1
            } else if g.chance(0.02) {
                vocab as i64 + 1
            } else {
                g.below(vocab.min(10)) as i64
            }
        })
        .collect();
    let (r, w) = if nar {
        (1, hrows * width)
    } else {
        (hrows, width)
    };
    Tensor::from_vec(v, (r, w), &Device::Cpu).unwrap()
}

fn no_nan(path: &Path) -> Result<Vec<usize>, String> {
    let t = Tensor::read_npy(path).map_err(|e| e.to_string())?;
    let dims = t.dims().to_vec();
    if t.dtype() == DType::F32 {
        let v = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        if v.iter().any(|x| x.is_nan()) {
            return Err("output holds NaN".into());
        }
    }
    Ok(dims)
}

#[test]
fn random_inputs_keep_the_cli_contract() {
    let cases = std::env::var("SAMPLER_ROBUSTNESS_CLI_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(120usize);
    let dir = std::env::temp_dir().join(format!("sampler-cli-robustness-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut g = Gen(0x5eed_cafe_f00d_d00d);
    let (mut ok, mut failed) = (0, 0);
    for case in 0..cases {
        let nar = g.chance(0.3);
        let rows = g.pick(&[0, 1, 2, 5]);
        let vocab = g.pick(&[1, 2, 17, 1025]);
        let cfg = dir.join("config.json");
        std::fs::write(&cfg, random_config(&mut g)).unwrap();
        let logits = random_logits(&mut g, rows, vocab, nar);
        logits.write_npy(dir.join("logits.npy")).unwrap();
        let out = dir.join("out.npy");
        let _ = std::fs::remove_file(&out);
        let command = if g.chance(0.5) { "apply" } else { "sample" };
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_sampler"));
        cmd.arg(command)
            .arg("--config")
            .arg(&cfg)
            .arg("--logits")
            .arg(dir.join("logits.npy"))
            .args(["--mode", if nar { "nar" } else { "ar" }])
            .args(["--path", g.pick(&["fused", "plain"])])
            .arg("--out")
            .arg(&out);
        if command == "sample" {
            cmd.args(["--seed", &g.below(1000).to_string()]);
        }
        if g.chance(0.5) {
            random_history(&mut g, rows, vocab, nar)
                .write_npy(dir.join("history.npy"))
                .unwrap();
            cmd.arg("--history").arg(dir.join("history.npy"));
        }
        let res = cmd.output().unwrap();
        let stderr = String::from_utf8_lossy(&res.stderr);
        let what = format!("case {case}: {cmd:?}\nstderr: {stderr}");
        assert!(!stderr.contains("internal error"), "panic: {what}");
        if res.status.success() {
            ok += 1;
            let dims = no_nan(&out).unwrap_or_else(|e| panic!("{e}: {what}"));
            let want: Vec<usize> = if command == "apply" {
                logits.dims().to_vec()
            } else {
                logits.dims()[..logits.rank() - 1].to_vec()
            };
            assert_eq!(dims, want, "output shape: {what}");
        } else {
            failed += 1;
            assert_eq!(res.status.code(), Some(1), "exit status: {what}");
            assert_eq!(stderr.trim_end().lines().count(), 1, "one line: {what}");
            assert!(stderr.starts_with("error: "), "{what}");
            assert!(!out.exists(), "an output file after a failure: {what}");
        }
    }
    std::fs::remove_dir_all(&dir).ok();
    println!("{cases} CLI runs, 0 panics ({ok} succeeded, {failed} refused)");
    assert!(
        ok > 0 && failed > 0,
        "the generator must produce both outcomes"
    );
}
