//! Every golden case through the `sampler` binary, on both paths, judged as its README says:
//! the CLI contract (outputs, exit codes, one-line errors, no output file on failure).

use std::path::{Path, PathBuf};
use std::process::Command;

use candle_core::{DType, Tensor};
use sampler_testkit::golden::{cases, check_apply, check_distribution, Case};

fn sampler() -> Command {
    Command::new(env!("CARGO_BIN_EXE_sampler"))
}

fn base_args(case: &Case, cmd: &str, path: &str) -> Vec<String> {
    let mut a = vec![
        cmd.to_string(),
        "--path".into(),
        path.into(),
        "--config".into(),
        case.path("config.json").display().to_string(),
        "--logits".into(),
        case.path("logits.npy").display().to_string(),
    ];
    if let Some(h) = case.history_path() {
        a.push("--history".into());
        a.push(h.display().to_string());
    }
    if case.pass_mode_flag() {
        a.push("--mode".into());
        a.push(case.mode_name().into());
    }
    a
}

fn tmp(case: &Case, what: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("sampler-golden-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d.join(format!("{}-{what}.npy", case.name))
}

/// The two paths, as `--path` spells them.
const PATHS: [&str; 2] = ["fused", "plain"];

fn run_ok(args: &[String]) {
    let out = sampler().args(args).output().unwrap();
    assert!(
        out.status.success(),
        "sampler {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn sample_tokens(case: &Case, path: &str, seed: u64, tag: &str) -> Vec<i64> {
    let out = tmp(case, tag);
    let mut a = base_args(case, "sample", path);
    a.extend([
        "--seed".into(),
        seed.to_string(),
        "--out".into(),
        out.display().to_string(),
    ]);
    run_ok(&a);
    let t = Tensor::read_npy(&out).unwrap();
    assert_eq!(t.dtype(), DType::I64, "{}: tokens must be int64", case.name);
    std::fs::remove_file(&out).unwrap();
    t.to_vec1::<i64>().unwrap()
}

fn check_reject(case: &Case, path: &str) -> Result<(), String> {
    let command = case.meta["command"].as_str().unwrap_or("apply");
    let out = tmp(case, "reject");
    let _ = std::fs::remove_file(&out);
    let mut a = base_args(case, command, path);
    if command == "sample" {
        a.extend(["--seed".into(), "1".into()]);
    }
    a.extend(["--out".into(), out.display().to_string()]);
    let res = sampler().args(&a).output().unwrap();
    let code = res.status.code();
    let stderr = String::from_utf8_lossy(&res.stderr).to_string();
    if !matches!(code, Some(c) if c > 0) {
        return Err(format!("exit {code:?} (must be a clean error exit > 0)"));
    }
    if Path::new(&out).exists() {
        return Err("an output file was written".into());
    }
    if stderr.trim().lines().count() != 1 || !stderr.starts_with("error: ") {
        return Err(format!(
            "the error must be one line starting with 'error: ', got {stderr:?}"
        ));
    }
    Ok(())
}

#[test]
fn every_golden_case_passes_through_the_cli_on_both_paths() {
    let mut failures = Vec::new();
    let all = cases().expect("the golden cases of tests/golden");
    for path in PATHS {
        for case in &all {
            let res = match case.kind() {
                "apply" => {
                    let out = tmp(case, "apply");
                    let mut a = base_args(case, "apply", path);
                    a.extend(["--out".into(), out.display().to_string()]);
                    run_ok(&a);
                    let t = Tensor::read_npy(&out).unwrap();
                    std::fs::remove_file(&out).unwrap();
                    check_apply(case, &t)
                }
                "distribution" => {
                    let seeds = case.seeds();
                    let per_seed: Vec<Vec<i64>> = seeds
                        .iter()
                        .map(|&s| sample_tokens(case, path, s, &format!("s{s}")))
                        .collect();
                    let again = sample_tokens(case, path, seeds[0], "again");
                    let mut r = check_distribution(case, &per_seed);
                    if r.is_ok() && again != per_seed[0] {
                        r = Err("the same seed gave different tokens".into());
                    }
                    let greedy = case.meta["greedy"].as_bool().unwrap_or(false);
                    if r.is_ok() && !greedy && per_seed.iter().all(|t| *t == per_seed[0]) {
                        r = Err("different seeds gave identical tokens".into());
                    }
                    r
                }
                "reject" => check_reject(case, path),
                other => Err(format!("unknown kind {other}")),
            };
            if let Err(e) = res {
                failures.push(format!("{} ({path}): {e}", case.name));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "golden failures:\n{}",
        failures.join("\n")
    );
}
