//! Criterion benchmarks: every processor alone, and the whole chain + draw per step on the
//! suite's workloads, on each path (CPU plain, CPU fused, CUDA / Metal with their features) and
//! for the baseline a candle user has today (candle-transformers' LogitsProcessor, row by row).
//!
//! `cargo bench` (CPU); `cargo bench --features cuda` adds the CUDA device.
//! Per-processor benches use the AR `[8, 1025]` and LLM `[32, 32000]` shapes; the larger shapes
//! are covered by the whole-step benches, where one plain step already takes seconds on 2 cores
//! (the plain path at `[256, 128256]` is left to `sampler bench --suite`).

use std::time::Duration;

use candle_core::Device;
use candle_sampler::core::processors::*;
use candle_sampler::{ExecPath, LogitsProcessor, SamplingContext};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use sampler_cli::suite::{self, Workload};

/// Largest batch (rows x vocab) whose plain path is benchmarked here.
const PLAIN_MAX_LOGITS: usize = 8 << 20;

fn devices() -> Vec<(&'static str, Device)> {
    #[allow(unused_mut)]
    let mut d = vec![("cpu", Device::Cpu)];
    #[cfg(feature = "cuda")]
    if let Ok(dev) = Device::new_cuda(0) {
        d.push(("cuda", dev));
    }
    #[cfg(feature = "metal")]
    if let Ok(dev) = Device::new_metal(0) {
        d.push(("metal", dev));
    }
    d
}

fn processors(w: &Workload) -> Vec<Box<dyn LogitsProcessor>> {
    let all: Vec<Box<dyn LogitsProcessor>> = vec![
        Box::new(BanTokens::stop_token(None)),
        Box::new(RepetitionPenalty::divide(1.5, 0.2, 75.0).unwrap()),
        Box::new(LengthPenalty::new(0.5, None).unwrap()),
        Box::new(MinP::with(0.05, 32.0).unwrap()),
        Box::new(TopK::new(50.0).unwrap()),
        Box::new(TopP::new(0.9).unwrap()),
        Box::new(Temperature::new(0.8).unwrap()),
        Box::new(DynamicTemperature::with(1.5, 0.5).unwrap()),
        Box::new(TopNSigma::new(1.0).unwrap()),
    ];
    all.into_iter()
        .filter(|p| w.mode == candle_sampler::Mode::Ar || p.name() != "length_penalty")
        .collect()
}

fn each_processor(c: &mut Criterion) {
    let mut ar = suite::workloads()[0].clone();
    ar.history = 300;
    let llm = suite::workloads()[2].clone();
    for (dev_name, dev) in devices() {
        for w in [&ar, &llm] {
            let inp = suite::inputs(w, &dev, 1).unwrap();
            let mut ctx = SamplingContext::new(1).with_validation(false);
            if let Some(h) = &inp.history {
                ctx = ctx.with_history(h.clone());
            }
            let mut g =
                c.benchmark_group(format!("processor/{dev_name}/[{}, {}]", w.rows, w.vocab));
            g.sample_size(10)
                .measurement_time(Duration::from_secs(2))
                .warm_up_time(Duration::from_millis(300));
            for p in processors(w) {
                g.bench_function(p.name(), |b| {
                    b.iter(|| {
                        let y = p.apply(&inp.logits, &ctx).unwrap();
                        dev.synchronize().unwrap();
                        y
                    })
                });
            }
            g.finish();
        }
    }
}

fn whole_step(c: &mut Criterion) {
    for w in suite::workloads() {
        let mut g = c.benchmark_group(format!("step/{} [{}, {}]", w.name, w.rows, w.vocab));
        g.sample_size(10)
            .measurement_time(Duration::from_secs(3))
            .warm_up_time(Duration::from_millis(300));
        for (dev_name, dev) in devices() {
            let inp = suite::inputs(&w, &dev, 1).unwrap();
            for (path, label) in [(ExecPath::Plain, "plain"), (ExecPath::Fused, "fused")] {
                // One plain step at [256, 128256] takes about a minute on 2 cores: criterion's
                // ten samples would take ten; `sampler bench --suite` measures it instead.
                if path == ExecPath::Plain && w.rows * w.vocab > PLAIN_MAX_LOGITS {
                    continue;
                }
                let mut s = suite::sampler(&w, path).unwrap();
                let mut step = 0;
                g.bench_function(BenchmarkId::new(format!("{dev_name} {label}"), ""), |b| {
                    b.iter(|| {
                        step += 1;
                        suite::our_step(&mut s, &inp, 1, step).unwrap()
                    })
                });
            }
        }
        let inp = suite::inputs(&w, &Device::Cpu, 1).unwrap();
        let mut lp = candle_transformers::generation::LogitsProcessor::from_sampling(
            1,
            suite::baseline_sampling(&w.config),
        );
        g.bench_function(
            BenchmarkId::new("baseline candle-transformers cpu", ""),
            |b| b.iter(|| suite::baseline_step(&mut lp, &w, &inp).unwrap()),
        );
        g.finish();
    }
}

criterion_group!(benches, each_processor, whole_step);
criterion_main!(benches);
