//! Criterion benchmarks: every sampler added to the base chain (the rows of `sampler bench
//! --matrix`) at the VALL-E AR and LLM shapes, and the whole step of every suite workload on
//! each path (CPU plain, CPU fused, CUDA / Metal with their features) against the baseline a
//! candle user has today (candle-transformers' `LogitsProcessor`, row by row).
//!
//! `cargo bench` (CPU); `cargo bench --features cuda` adds the CUDA device. The plain path of
//! the largest shape (a minute per step on 2 cores) is left to `sampler bench --suite`.

use std::time::Duration;

use candle_core::Device;
use candle_sampler::ExecPath;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use sampler_testkit::suite::{self, baseline};

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

fn every_sampler(c: &mut Criterion) {
    for (dev_name, dev) in devices() {
        for shape in suite::matrix_shapes().into_iter().take(2) {
            let mut g = c.benchmark_group(format!(
                "sampler/{dev_name}/{} {}",
                shape.name,
                shape.shape()
            ));
            g.sample_size(10)
                .measurement_time(Duration::from_secs(2))
                .warm_up_time(Duration::from_millis(300));
            for (name, config) in suite::matrix_samplers() {
                let w = shape.clone().with_config(config);
                let inp = suite::inputs(&w, &dev, 1).unwrap();
                let mut s = suite::sampler(&w, ExecPath::Fused).unwrap();
                let mut step = 0;
                g.bench_function(name, |b| {
                    b.iter(|| {
                        step += 1;
                        suite::our_step(&mut s, &inp, 1, step).unwrap()
                    })
                });
            }
            g.finish();
        }
    }
}

fn whole_step(c: &mut Criterion) {
    for w in suite::workloads() {
        let mut g = c.benchmark_group(format!("step/{} {}", w.name, w.shape()));
        g.sample_size(10)
            .measurement_time(Duration::from_secs(3))
            .warm_up_time(Duration::from_millis(300));
        for (dev_name, dev) in devices() {
            let inp = suite::inputs(&w, &dev, 1).unwrap();
            for (path, label) in [(ExecPath::Plain, "plain"), (ExecPath::Fused, "fused")] {
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
        let mut lp = baseline::processor(&w.config, 1);
        g.bench_function(
            BenchmarkId::new("baseline candle-transformers cpu", ""),
            |b| b.iter(|| baseline::step(&mut lp, &w, &inp).unwrap()),
        );
        g.finish();
    }
}

criterion_group!(benches, every_sampler, whole_step);
criterion_main!(benches);
