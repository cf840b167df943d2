use candle_core::{Device, Tensor};
use candle_sampler::{
    ExecPath, History, Mode, Sampler, SamplerBuilder, SamplerConfig, SamplingContext,
};
use std::time::Instant;

fn randn(rows: usize, cols: usize, std: f32, seed: u64) -> Tensor {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407)
        | 1;
    let mut u = || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        ((s >> 11) as f64 / (1u64 << 53) as f64).max(1e-12)
    };
    let v: Vec<f32> = (0..rows * cols)
        .map(|_| {
            let a = u();
            let b = u();
            (std as f64 * (-2.0 * a.ln()).sqrt() * (6.283185307 * b).cos()) as f32
        })
        .collect();
    Tensor::from_vec(v, (rows, cols), &Device::Cpu).unwrap()
}

fn time(label: &str, mut f: impl FnMut(u64)) {
    f(0);
    let mut v = vec![];
    let n = if label.contains("AR") {
        std::env::var("N")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(2000)
    } else {
        30
    };
    for i in 1..n as u64 {
        let t = Instant::now();
        f(i);
        v.push(t.elapsed().as_secs_f64());
    }
    v.sort_by(f64::total_cmp);
    println!("{label:40} {:>10.1} us", v[v.len() / 2] * 1e6);
}

fn main() -> anyhow::Result<()> {
    let dev = Device::Cpu;
    let only = std::env::args().nth(1).unwrap_or_default();
    if only == "ar" {
        let x = randn(8, 1025, 3.0, 1);
        let hist: Vec<Vec<i64>> = (0..8)
            .map(|r| (0..300).map(|i| ((i * 7 + r * 13) % 1024) as i64).collect())
            .collect();
        let mut s = Sampler::from_config(&SamplerConfig::vall_e_ar(), Mode::Ar)?;
        let ctx = SamplingContext::new(1)
            .with_history(History::from_padded_rows(&hist, &dev)?)
            .with_validation(false);
        let y = s.apply(&x, &ctx)?;
        let v = y.to_vec2::<f32>()?;
        for r in &v {
            println!("kept {}", r.iter().filter(|v| v.is_finite()).count());
        }
        for _ in 0..3 {
            time("vall-e AR [8,1025] sample", |i| {
                s.sample(&x, &ctx.clone().with_step(i)).unwrap();
            });
        }
        return Ok(());
    }
    if only == "nar" {
        let x = randn(6000, 1024, 3.0, 2);
        let prev = Tensor::zeros((8, 750), candle_core::DType::U32, &dev)?;
        let h = History::nar_from_previous_level(&prev)?;
        let ctx = SamplingContext::new(1).with_history(h);
        let mut s = SamplerBuilder::new(Mode::Nar).temperature(0.0).build()?;
        time("nar greedy [6000,1024]", |i| {
            s.sample(&x, &ctx.clone().with_step(i)).unwrap();
        });
        return Ok(());
    }
    for std in [0.5f32, 1.0, 3.0, 8.0] {
        let x = randn(32, 32000, std, 3);
        let cfg = SamplerConfig {
            top_k: 50,
            top_p: 0.9,
            min_p: 0.05,
            temperature: 0.8,
            ..Default::default()
        };
        let mut s = Sampler::from_config(&cfg, Mode::Ar)?;
        time(&format!("base [32,32000] std {std}"), |i| {
            s.sample(
                &x,
                &SamplingContext::new(1).with_step(i).with_validation(false),
            )
            .unwrap();
        });
        let mut s = Sampler::from_config(&SamplerConfig::default(), Mode::Ar)?;
        time(&format!("unfiltered [32,32000] std {std}"), |i| {
            s.sample(&x, &SamplingContext::new(1).with_step(i)).unwrap();
        });
    }
    let x = randn(8, 1025, 3.0, 1);
    let hist: Vec<Vec<i64>> = (0..8)
        .map(|r| (0..300).map(|i| ((i * 7 + r * 13) % 1024) as i64).collect())
        .collect();
    let mut s = Sampler::from_config(&SamplerConfig::vall_e_ar(), Mode::Ar)?;
    let ctx = SamplingContext::new(1)
        .with_history(History::from_padded_rows(&hist, &dev)?)
        .with_validation(false);
    time("vall-e AR [8,1025] sample", |i| {
        s.sample(&x, &ctx.clone().with_step(i)).unwrap();
    });
    let x = randn(6000, 1024, 3.0, 2);
    let prev = Tensor::zeros((8, 750), candle_core::DType::U32, &dev)?;
    let h = History::nar_from_previous_level(&prev)?;
    let ctx = SamplingContext::new(1).with_history(h);
    let mut s = SamplerBuilder::new(Mode::Nar)
        .repetition_penalty(1.5)
        .temperature(0.0)
        .build()?;
    time("nar greedy rep 1.5 [6000,1024]", |i| {
        s.sample(&x, &ctx.clone().with_step(i)).unwrap();
    });
    let mut s = SamplerBuilder::new(Mode::Nar).temperature(0.0).build()?;
    time("nar greedy [6000,1024]", |i| {
        s.sample(&x, &ctx.clone().with_step(i)).unwrap();
    });
    let mut s = Sampler::from_config(&SamplerConfig::vall_e_nar(), Mode::Nar)?;
    time("nar vall_e_nar [6000,1024]", |i| {
        s.sample(&x, &ctx.clone().with_step(i)).unwrap();
    });
    let _ = ExecPath::Plain;
    Ok(())
}
