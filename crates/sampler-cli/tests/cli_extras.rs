//! The CLI paths of issue 3: `--null-logits` (CFG), `--attentions` (entropix) and `sample` with
//! `beam_width > 1` writing `[beam_width, 2]` (row, token).

use std::path::{Path, PathBuf};

use std::process::Command;

use candle_core::{Device, Tensor};

struct Dir(PathBuf);

impl Dir {
    fn new(name: &str) -> Self {
        let d =
            std::env::temp_dir().join(format!("sampler-cli-extras-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        Dir(d)
    }

    fn path(&self, f: &str) -> PathBuf {
        self.0.join(f)
    }

    fn npy(&self, f: &str, t: &Tensor) -> PathBuf {
        let p = self.path(f);
        t.write_npy(&p).unwrap();
        p
    }

    fn config(&self, json: &str) -> PathBuf {
        let p = self.path("config.json");
        std::fs::write(&p, json).unwrap();
        p
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs the binary; each argument is a flag, a value or a path.
fn sampler(args: &[&dyn AsRef<std::ffi::OsStr>]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_sampler"))
        .args(args)
        .output()
        .unwrap()
}

fn read(p: &Path) -> Tensor {
    Tensor::read_npy(p).unwrap()
}

#[test]
fn cfg_with_null_logits() {
    let d = Dir::new("cfg");
    let logits = d.npy(
        "l.npy",
        &Tensor::new(&[[1f32, 2.0, 3.0], [0.0, 0.0, 1.0]], &Device::Cpu).unwrap(),
    );
    let null = d.npy(
        "n.npy",
        &Tensor::new(&[[1f32, 1.0, 1.0], [2.0, 0.0, 0.0]], &Device::Cpu).unwrap(),
    );
    let cfg = d.config(r#"{"cfg_strength": 3.0}"#);
    let out = d.path("out.npy");
    let o = sampler(&[
        &"apply",
        &"--config",
        &cfg,
        &"--logits",
        &logits,
        &"--null-logits",
        &null,
        &"--out",
        &out,
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let y = read(&out).to_vec2::<f32>().unwrap();
    assert_eq!(y, vec![vec![1.0, 4.0, 7.0], vec![-4.0, 0.0, 3.0]]);

    // Without the null logits, or with the wrong shape: one-line error, no output file.
    std::fs::remove_file(&out).unwrap();
    let o = sampler(&[
        &"apply",
        &"--config",
        &cfg,
        &"--logits",
        &logits,
        &"--out",
        &out,
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("null logits"));
    assert!(!out.exists());
    let short = d.npy(
        "s.npy",
        &Tensor::new(&[[1f32, 1.0, 1.0]], &Device::Cpu).unwrap(),
    );
    let o = sampler(&[
        &"apply",
        &"--config",
        &cfg,
        &"--logits",
        &logits,
        &"--null-logits",
        &short,
        &"--out",
        &out,
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(!out.exists());
}

#[test]
fn beam_width_writes_row_token_pairs() {
    let d = Dir::new("beam");
    let l = |p: f32| p.ln();
    let logits = Tensor::new(
        &[[l(0.6), l(0.3), l(0.1)], [l(0.5), l(0.45), l(0.05)]],
        &Device::Cpu,
    )
    .unwrap();
    let logits = d.npy("l.npy", &logits);
    let cfg = d.config(r#"{"beam_width": 3}"#);
    let out = d.path("beams.npy");
    let o = sampler(&[
        &"sample",
        &"--config",
        &cfg,
        &"--logits",
        &logits,
        &"--seed",
        &"1",
        &"--out",
        &out,
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let t = read(&out);
    assert_eq!(t.dtype(), candle_core::DType::I64);
    assert_eq!(
        t.to_vec2::<i64>().unwrap(),
        vec![vec![0, 0], vec![1, 0], vec![1, 1]]
    );
    // More beams than finite pairs is an error.
    std::fs::remove_file(&out).unwrap();
    let cfg = d.config(r#"{"beam_width": 3, "top_k": 1}"#);
    let o = sampler(&[
        &"sample",
        &"--config",
        &cfg,
        &"--logits",
        &logits,
        &"--seed",
        &"1",
        &"--out",
        &out,
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(!out.exists());
}

#[test]
fn entropix_with_attentions() {
    let d = Dir::new("entropix");
    let mut peaked = vec![0f32; 16];
    peaked[5] = 30.0;
    let flat = vec![0f32; 16];
    let logits = d.npy(
        "l.npy",
        &Tensor::from_vec([peaked, flat].concat(), (2, 16), &Device::Cpu).unwrap(),
    );
    let attn = d.npy(
        "a.npy",
        &Tensor::zeros((2, 4, 3, 3), candle_core::DType::F32, &Device::Cpu).unwrap(),
    );
    let cfg = d.config(r#"{"entropix": true}"#);
    let out = d.path("t.npy");
    let o = sampler(&[
        &"sample",
        &"--config",
        &cfg,
        &"--logits",
        &logits,
        &"--attentions",
        &attn,
        &"--seed",
        &"4",
        &"--out",
        &out,
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // The peaked row is an Argmax row: it draws its peak.
    assert_eq!(read(&out).to_vec1::<i64>().unwrap()[0], 5);
    // Attentions of rank 3 are refused.
    std::fs::remove_file(&out).unwrap();
    let bad = d.npy(
        "b.npy",
        &Tensor::zeros((4, 3, 3), candle_core::DType::F32, &Device::Cpu).unwrap(),
    );
    let o = sampler(&[
        &"sample",
        &"--config",
        &cfg,
        &"--logits",
        &logits,
        &"--attentions",
        &bad,
        &"--seed",
        &"4",
        &"--out",
        &out,
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(!out.exists());
}

#[test]
fn new_config_keys_through_the_cli() {
    let d = Dir::new("keys");
    let quarter = 0.25f32.ln();
    let logits = d.npy(
        "l.npy",
        &Tensor::new(&[[quarter; 4]], &Device::Cpu).unwrap(),
    );
    let history = d.npy(
        "h.npy",
        &Tensor::new(&[[0i64, 1, 2, 0, 1]], &Device::Cpu).unwrap(),
    );
    // llama.cpp's DRY case: the repeat "0 1" was followed by 2, which loses 1.1^0 = 1.
    let cfg = d.config(
        r#"{"dry_multiplier": 1.0, "dry_base": 1.1, "dry_allowed_length": 2,
            "dry_penalty_last_n": 5, "dry_sequence_breakers": [3]}"#,
    );
    let out = d.path("out.npy");
    let apply = |cfg: &Path, out: &Path| {
        sampler(&[
            &"apply",
            &"--config",
            &cfg,
            &"--logits",
            &logits,
            &"--history",
            &history,
            &"--out",
            &out,
        ])
    };
    let o = apply(&cfg, &out);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let y = read(&out).to_vec2::<f32>().unwrap();
    assert_eq!(y[0], vec![quarter, quarter, quarter - 1.0, quarter]);
    // Mirostat, typical-p, XTC and the penalties all run from a config file.
    let cfg = d.config(
        r#"{"mirostat": 2, "mirostat_tau": 1.0, "typical_p": 0.9, "xtc_probability": 1.0,
            "frequency_penalty": 0.5, "presence_penalty": 0.5, "repetition_penalty": 1.2,
            "repetition_penalty_mode": "sign_aware", "logit_bias": {"1": 0.5}}"#,
    );
    let tokens = d.path("t.npy");
    let o = sampler(&[
        &"sample",
        &"--config",
        &cfg,
        &"--logits",
        &logits,
        &"--history",
        &history,
        &"--seed",
        &"2",
        &"--out",
        &tokens,
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(read(&tokens).dims(), &[1]);
    // A breaker id outside the vocabulary is a one-line error.
    let cfg = d.config(r#"{"dry_multiplier": 1.0, "dry_sequence_breakers": [9]}"#);
    std::fs::remove_file(&out).unwrap();
    let o = apply(&cfg, &out);
    assert_eq!(o.status.code(), Some(1));
    assert!(!out.exists());
}
