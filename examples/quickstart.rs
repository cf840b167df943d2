//! From a logits tensor to tokens in a few lines: a batch of 4 rows over a 1025-token
//! vocabulary (1024 EnCodec codes + stop), sampled with the typical VALL-E AR settings, then
//! 16 decoding steps whose histories stay on the device.
//!
//! `cargo run --release --example quickstart`

use candle_core::{Device, Tensor};
use candle_sampler::{History, Mode, Sampler, SamplerConfig, SamplingContext};

fn main() -> anyhow::Result<()> {
    let device = Device::Cpu;
    let (rows, vocab) = (4, 1025);
    let mut sampler = Sampler::from_config(&SamplerConfig::vall_e_ar(), Mode::Ar)?;
    let mut ctx = SamplingContext::new(42).with_history(History::empty(rows, 64, &device)?);
    for step in 0..16 {
        // Stand-in for a model's output: a fresh random logits tensor each step.
        let logits = Tensor::randn(0f32, 3.0, (rows, vocab), &device)?;
        let drawn = sampler.sample(&logits, &ctx)?;
        ctx.advance(&drawn.tokens, None)?;
        println!("step {step:2}: tokens {:?}", drawn.tokens.to_vec1::<u32>()?);
    }
    let h = ctx.history().expect("history");
    println!("history lengths {:?}", h.lens().to_vec1::<u32>()?);
    Ok(())
}
