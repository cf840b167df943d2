//! The same seed gives the same tokens: on repeated runs, for any size of the thread pool the CPU
//! kernels run their rows on, for a row alone, in a batch of 8 or at another position of the
//! batch, on both paths and on every GPU this build and machine have (reported as skipped
//! otherwise).

use candle_core::{Device, Tensor};
use sampler_core::{
    ExecPath, History, Mode, Sampler, SamplerBuilder, SamplerConfig, SamplingContext,
};

const VOCAB: usize = 1025;

/// A chain that draws (top-k, top-p, min-p, temperature) after the penalties, with XTC and
/// typical-p so that every stage that consumes randomness or sorts is in play.
fn config() -> SamplerConfig {
    serde_json::from_value(serde_json::json!({
        "temperature": 0.9,
        "top_k": 80,
        "top_p": 0.95,
        "min_p": 0.01,
        "typical_p": 0.97,
        "repetition_penalty": 1.3,
        "repetition_penalty_decay": 0.5,
        "xtc_probability": 0.5,
        "xtc_threshold": 0.05,
    }))
    .unwrap()
}

fn sampler(path: ExecPath) -> Sampler {
    SamplerBuilder::from_config(&config(), Mode::Ar)
        .path(path)
        .build()
        .unwrap()
}

/// Row `r` of a deterministic batch: flat enough that the draw has many candidates.
fn row(r: usize) -> Vec<f32> {
    (0..VOCAB)
        .map(|i| (((i * 2654435761usize + r * 40503) % 1000) as f32 / 1000.0 - 0.5) * 4.0)
        .collect()
}

fn history_row(r: usize) -> Vec<i64> {
    (0..40).map(|j| ((j * 7 + r * 3) % 50) as i64).collect()
}

/// Tokens of the rows `rows` (by their logical ids) drawn together, over a few steps.
fn draw(path: ExecPath, rows: &[usize], seed: u64) -> Vec<Vec<u32>> {
    draw_on(&Device::Cpu, path, rows, seed)
}

fn draw_on(device: &Device, path: ExecPath, rows: &[usize], seed: u64) -> Vec<Vec<u32>> {
    let mut s = sampler(path);
    let data: Vec<f32> = rows.iter().flat_map(|&r| row(r)).collect();
    let logits = Tensor::from_vec(data, (rows.len(), VOCAB), device).unwrap();
    let hist: Vec<Vec<i64>> = rows.iter().map(|&r| history_row(r)).collect();
    let ids: Vec<u32> = rows.iter().map(|&r| r as u32).collect();
    (0..6)
        .map(|step| {
            let ctx = SamplingContext::new(seed)
                .with_step(step)
                .with_row_ids(ids.clone())
                .with_history(History::from_padded_rows(&hist, device).unwrap());
            s.sample(&logits, &ctx)
                .unwrap()
                .tokens
                .to_vec1::<u32>()
                .unwrap()
        })
        .collect()
}

fn in_pool<T: Send>(threads: usize, f: impl FnOnce() -> T + Send) -> T {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap()
        .install(f)
}

#[test]
fn repeated_runs_and_thread_counts_give_the_same_tokens() {
    let rows: Vec<usize> = (0..64).collect();
    for path in [ExecPath::Fused, ExecPath::Plain] {
        let first = in_pool(1, || draw(path, &rows, 11));
        assert_eq!(
            in_pool(1, || draw(path, &rows, 11)),
            first,
            "{path:?} repeat"
        );
        assert_eq!(
            in_pool(2, || draw(path, &rows, 11)),
            first,
            "{path:?} 2 threads"
        );
        assert_eq!(
            in_pool(3, || draw(path, &rows, 11)),
            first,
            "{path:?} 3 threads"
        );
        // The tokens are drawn, not fixed: another seed moves some of them.
        assert_ne!(
            in_pool(2, || draw(path, &rows, 12)),
            first,
            "{path:?} seed ignored"
        );
    }
}

#[test]
fn a_row_gives_the_same_tokens_alone_and_anywhere_in_a_batch() {
    for path in [ExecPath::Fused, ExecPath::Plain] {
        let alone = draw(path, &[5], 3);
        let column = |t: &[Vec<u32>], i: usize| t.iter().map(|s| s[i]).collect::<Vec<_>>();
        let want = column(&alone, 0);
        let batch = draw(path, &[0, 1, 2, 3, 4, 5, 6, 7], 3);
        assert_eq!(column(&batch, 5), want, "{path:?} in a batch of 8");
        let moved = draw(path, &[5, 9, 1, 8, 2, 7, 3, 6], 3);
        assert_eq!(column(&moved, 0), want, "{path:?} first of another batch");
        let moved = draw(path, &[9, 1, 8, 2, 7, 3, 6, 5], 3);
        assert_eq!(column(&moved, 7), want, "{path:?} last of another batch");
    }
}

#[test]
fn both_paths_give_the_same_tokens() {
    let rows: Vec<usize> = (0..32).collect();
    let fused = draw(ExecPath::Fused, &rows, 21);
    let plain = draw(ExecPath::Plain, &rows, 21);
    let differ = fused
        .iter()
        .flatten()
        .zip(plain.iter().flatten())
        .filter(|(a, b)| a != b)
        .count();
    // Only a uniform within float rounding of a cumulative boundary may land differently.
    assert!(differ <= 1, "{differ} of {} draws differ", 32 * 6);
}

fn gpus() -> Vec<(&'static str, Device)> {
    #[cfg_attr(not(any(feature = "cuda", feature = "metal")), allow(unused_mut))]
    let mut out = Vec::new();
    #[cfg(feature = "cuda")]
    match Device::new_cuda(0) {
        Ok(d) => out.push(("CUDA", d)),
        Err(e) => eprintln!("determinism: CUDA skipped (no device: {e})"),
    }
    #[cfg(not(feature = "cuda"))]
    eprintln!("determinism: CUDA skipped (built without the `cuda` feature)");
    #[cfg(feature = "metal")]
    match Device::new_metal(0) {
        Ok(d) => out.push(("Metal", d)),
        Err(e) => eprintln!("determinism: Metal skipped (no device: {e})"),
    }
    #[cfg(not(feature = "metal"))]
    eprintln!("determinism: Metal skipped (built without the `metal` feature)");
    out
}

#[test]
fn gpus_give_the_cpu_tokens() {
    let rows: Vec<usize> = (0..16).collect();
    for (name, device) in gpus() {
        for path in [ExecPath::Fused, ExecPath::Plain] {
            let cpu = draw(path, &rows, 8);
            let gpu = draw_on(&device, path, &rows, 8);
            let differ = cpu
                .iter()
                .flatten()
                .zip(gpu.iter().flatten())
                .filter(|(a, b)| a != b)
                .count();
            assert!(
                differ <= 1,
                "{name} {path:?}: {differ} draws differ from the CPU"
            );
            assert_eq!(
                draw_on(&device, path, &rows, 8),
                gpu,
                "{name} {path:?} repeat"
            );
        }
    }
}
