//! Putting the sampler chain into an existing candle decoding loop.
//!
//! A typical candle loop decodes one sequence at a time with
//! `candle_transformers::generation::LogitsProcessor`, which copies each step's logits to the
//! host. The same loop below decodes a batch of sequences and samples them on the device; the
//! lines marked `// sampler` are all it takes (a builder, a context, and two calls per step).
//!
//!     cargo run --release --example custom_loop

use std::collections::HashMap;

use anyhow::Result;
use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{embedding, linear, Embedding, Linear, VarBuilder};
use candle_sampler::{History, Mode, SamplerBuilder, SamplingContext};

/// Lower-case letters and a space.
const ALPHABET: &[u8] = b" abcdefghijklmnopqrstuvwxyz";

/// The "existing model": next-token logits from the last token (a bigram LM), built with
/// candle-nn from fixed, deterministic weights.
struct TinyLm {
    embed: Embedding,
    out: Linear,
}

impl TinyLm {
    fn new(device: &Device) -> Result<Self> {
        let (vocab, dim) = (ALPHABET.len(), 16);
        let wave = |rows: usize, cols: usize, f: f32| -> Result<Tensor> {
            let n = (rows * cols) as u32;
            let t = Tensor::arange(0u32, n, device)?.to_dtype(DType::F32)?;
            Ok((t * f as f64)?.sin()?.reshape((rows, cols))?)
        };
        let mut weights = HashMap::new();
        weights.insert("embed.weight".to_string(), wave(vocab, dim, 0.37)?);
        weights.insert("out.weight".to_string(), (wave(vocab, dim, 0.91)? * 2.0)?);
        weights.insert(
            "out.bias".to_string(),
            Tensor::zeros(vocab, DType::F32, device)?,
        );
        let vb = VarBuilder::from_tensors(weights, DType::F32, device);
        Ok(Self {
            embed: embedding(vocab, dim, vb.pp("embed"))?,
            out: linear(dim, vocab, vb.pp("out"))?,
        })
    }

    /// `last` `[rows]` u32 -> logits `[rows, vocab]`.
    fn forward(&self, last: &Tensor) -> Result<Tensor> {
        Ok(self.out.forward(&self.embed.forward(last)?)?)
    }
}

fn main() -> Result<()> {
    let device = Device::Cpu;
    let model = TinyLm::new(&device)?;
    let prompts = ["hello", "candle", "on device"];
    let encode = |s: &str| -> Vec<i64> {
        s.bytes()
            .map(|b| ALPHABET.iter().position(|&a| a == b).unwrap_or(0) as i64)
            .collect()
    };
    let prompt_ids: Vec<Vec<i64>> = prompts.iter().map(|p| encode(p)).collect();

    // sampler: one chain for the whole batch. Any parameter takes a scalar or one value per
    // row: row 0 is greedy, rows 1 and 2 sample at temperatures 0.7 and 1.2.
    let temperature = Tensor::new(&[0.0f32, 0.7, 1.2], &device)?;
    let mut sampler = SamplerBuilder::new(Mode::Ar)
        .temperature(temperature)
        .top_k(8.0)
        .top_p(0.95)
        .repetition_penalty(1.3)
        .build()?;
    // sampler: the histories (the prompts, then what is generated) live on the device. The
    // first step validates the logits; later steps trust the model and never read back.
    let mut ctx =
        SamplingContext::new(7).with_history(History::from_padded_rows(&prompt_ids, &device)?);

    let last: Vec<u32> = prompt_ids
        .iter()
        .map(|p| *p.last().unwrap_or(&0) as u32)
        .collect();
    let mut last = Tensor::new(last.as_slice(), &device)?;
    for step in 0..24 {
        let logits = model.forward(&last)?; // [rows, vocab], still on the device
        let drawn = sampler.sample(&logits, &ctx)?; // sampler: tokens [rows] u32 on the device
        ctx.advance(&drawn.tokens, None)?; // sampler: append to the histories, next step
        if step == 0 {
            ctx = ctx.with_validation(false);
        }
        last = drawn.tokens;
    }

    // One copy to the host at the end.
    let history = ctx.history().expect("the context has a history");
    let tokens = history.tokens()?.to_vec2::<u32>()?;
    let lens = history.lens().to_vec1::<u32>()?;
    for (row, (ids, len)) in tokens.iter().zip(lens).enumerate() {
        let text: String = ids[..len as usize]
            .iter()
            .map(|&t| ALPHABET[t as usize] as char)
            .collect();
        println!("row {row}: {text:?}");
    }
    Ok(())
}
