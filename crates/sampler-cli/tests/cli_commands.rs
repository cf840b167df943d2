//! `sampler bench` and `sampler selftest` through the binary.

use std::process::Command;

use sampler_testkit::golden::golden_dir;

fn sampler() -> Command {
    Command::new(env!("CARGO_BIN_EXE_sampler"))
}

#[test]
fn bench_prints_one_json_object_with_the_median() {
    let case = golden_dir().join("p16_ar_combo_reppen_topk_topp_minp_v1025");
    for path in ["fused", "plain"] {
        let out = sampler()
            .args(["bench", "--config"])
            .arg(case.join("config.json"))
            .arg("--logits")
            .arg(case.join("logits.npy"))
            .arg("--history")
            .arg(case.join("history.npy"))
            .args(["--iters", "3", "--json", "--path", path])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8(out.stdout).unwrap();
        assert_eq!(text.trim().lines().count(), 1, "{text}");
        let v: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
        assert!(v["median_s"].as_f64().unwrap() > 0.0);
        assert_eq!(v["iters"].as_u64(), Some(3));
        assert_eq!(v["path"].as_str(), Some(path));
    }
}

#[test]
fn bench_rejects_missing_input_and_unbuilt_devices() {
    let out = sampler().args(["bench", "--iters", "2"]).output().unwrap();
    assert!(!out.status.success());
    let case = golden_dir().join("p00_ar_defaults_identity_v1025");
    if !cfg!(feature = "cuda") {
        let out = sampler()
            .args(["apply", "--device", "cuda", "--config"])
            .arg(case.join("config.json"))
            .arg("--logits")
            .arg(case.join("logits.npy"))
            .args(["--out", "/tmp/never-written.npy"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("without CUDA support"), "{err}");
    }
}

/// The selftest on CPU (fused path against the plain path) up to a 32k vocabulary; the full
/// run with `[256, 128256]` is for the device machines.
#[test]
fn selftest_passes_on_cpu() {
    let out = sampler()
        .args(["selftest", "--device", "cpu", "--max-vocab", "32000"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains(", 0 failed"), "{text}");
    assert!(
        text.lines()
            .filter(|l| l.starts_with("PASS golden"))
            .count()
            >= 38,
        "{text}"
    );
    assert!(!text.contains("FAIL"), "{text}");
}
