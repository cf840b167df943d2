//! The example's VALL-E shaped model: a phoneme embedding, an autoregressive decoder with a KV
//! cache for the first RVQ level, and a non-autoregressive decoder for the other levels, with
//! seeded random weights or weights from a safetensors file. Optionally the NAR decoder also
//! carries the masked level-0 ("NAR-len") heads: a duration head and a head that predicts
//! level 0 from partly masked codes.

use anyhow::{bail, Result};
use candle_core::{DType, Device, IndexOp, Module, Tensor};
use candle_nn::kv_cache::KvCache;
use candle_nn::{embedding, layer_norm, linear, Embedding, LayerNorm, Linear, VarBuilder, VarMap};
use candle_sampler::driver::{CodecLm, Conditioning, DriverError};

/// EnCodec at 24 kHz: 1024 codes per level, 8 levels.
pub const CODES: usize = 1024;
/// The codes plus the stop token.
pub const VOCAB: usize = CODES + 1;
/// The stop token (also the mask token of the masked level-0 head).
pub const STOP: u32 = CODES as u32;
/// RVQ levels.
pub const LEVELS: usize = 8;
/// Phonemes are the text's ASCII bytes; id 0 pads.
const PHONEMES: usize = 128;
/// Masked attention scores: finite, so that a fully padded query row is not NaN.
const MASKED: f32 = -1e9;

/// The model's sizes.
#[derive(Clone, Copy, Debug)]
pub struct ModelConfig {
    pub dim: usize,
    pub heads: usize,
    pub ffn: usize,
    pub ar_layers: usize,
    pub nar_layers: usize,
    pub max_positions: usize,
}

impl ModelConfig {
    /// Small enough to run quickly on a laptop CPU.
    pub fn tiny() -> Self {
        Self {
            dim: 128,
            heads: 4,
            ffn: 512,
            ar_layers: 2,
            nar_layers: 2,
            max_positions: 2048,
        }
    }
}

struct Attention {
    qkv: Linear,
    out: Linear,
    heads: usize,
}

impl Attention {
    fn new(c: &ModelConfig, vb: VarBuilder) -> candle_core::Result<Self> {
        Ok(Self {
            qkv: linear(c.dim, 3 * c.dim, vb.pp("qkv"))?,
            out: linear(c.dim, c.dim, vb.pp("out"))?,
            heads: c.heads,
        })
    }

    /// `x` `[B, S, d]`; `mask` additive, broadcastable to `[B, heads, S, S_total]`; with a
    /// cache the keys and values of `x` are appended to it first.
    fn forward(
        &self,
        x: &Tensor,
        mask: &Tensor,
        cache: Option<&mut KvCache>,
    ) -> candle_core::Result<Tensor> {
        let (b, s, d) = x.dims3()?;
        let head_dim = d / self.heads;
        let qkv = self
            .qkv
            .forward(x)?
            .reshape((b, s, 3, self.heads, head_dim))?
            .permute((2, 0, 3, 1, 4))?;
        let q = qkv.get(0)?.contiguous()?;
        let (k, v) = (qkv.get(1)?.contiguous()?, qkv.get(2)?.contiguous()?);
        let (k, v) = match cache {
            Some(c) => c.append(&k, &v)?,
            None => (k, v),
        };
        let scores =
            (q.matmul(&k.t()?.contiguous()?)? / (head_dim as f64).sqrt())?.broadcast_add(mask)?;
        let y = candle_nn::ops::softmax_last_dim(&scores)?.matmul(&v.contiguous()?)?;
        self.out.forward(&y.transpose(1, 2)?.reshape((b, s, d))?)
    }
}

/// A pre-norm transformer block.
struct Block {
    ln1: LayerNorm,
    attn: Attention,
    ln2: LayerNorm,
    up: Linear,
    down: Linear,
}

impl Block {
    fn new(c: &ModelConfig, vb: VarBuilder) -> candle_core::Result<Self> {
        Ok(Self {
            ln1: layer_norm(c.dim, 1e-5, vb.pp("ln1"))?,
            attn: Attention::new(c, vb.pp("attn"))?,
            ln2: layer_norm(c.dim, 1e-5, vb.pp("ln2"))?,
            up: linear(c.dim, c.ffn, vb.pp("up"))?,
            down: linear(c.ffn, c.dim, vb.pp("down"))?,
        })
    }

    fn forward(
        &self,
        x: &Tensor,
        mask: &Tensor,
        cache: Option<&mut KvCache>,
    ) -> candle_core::Result<Tensor> {
        let h = (x + self.attn.forward(&self.ln1.forward(x)?, mask, cache)?)?;
        &h + self
            .down
            .forward(&self.up.forward(&self.ln2.forward(&h)?)?.gelu()?)?
    }
}

struct Decoder {
    blocks: Vec<Block>,
    ln_f: LayerNorm,
}

impl Decoder {
    fn new(c: &ModelConfig, layers: usize, vb: VarBuilder) -> candle_core::Result<Self> {
        let blocks = (0..layers)
            .map(|i| Block::new(c, vb.pp(format!("blocks.{i}"))))
            .collect::<candle_core::Result<_>>()?;
        Ok(Self {
            blocks,
            ln_f: layer_norm(c.dim, 1e-5, vb.pp("ln_f"))?,
        })
    }

    fn forward(
        &self,
        x: &Tensor,
        mask: &Tensor,
        mut caches: Option<&mut [KvCache]>,
    ) -> candle_core::Result<Tensor> {
        let mut x = x.clone();
        for (i, block) in self.blocks.iter().enumerate() {
            x = block.forward(&x, mask, caches.as_deref_mut().map(|c| &mut c[i]))?;
        }
        self.ln_f.forward(&x)
    }
}

/// The model: the AR and NAR stacks and their embeddings and heads.
pub struct VallE {
    cfg: ModelConfig,
    device: Device,
    ar_phonemes: Embedding,
    ar_codes: Embedding,
    /// The start-of-audio token that follows the phonemes.
    ar_start: Embedding,
    ar_positions: Embedding,
    ar: Decoder,
    ar_head: Linear,
    nar_phonemes: Embedding,
    /// One code embedding per input level (0..LEVELS-1), summed.
    nar_codes: Vec<Embedding>,
    /// Which level is being predicted.
    nar_target: Embedding,
    nar_positions: Embedding,
    nar: Decoder,
    /// One head per predicted level (1..LEVELS).
    nar_heads: Vec<Linear>,
    /// The masked level-0 heads, when built.
    masked: Option<MaskedHeads>,
}

/// The masked level-0 heads on the NAR decoder.
struct MaskedHeads {
    /// A query token after the phonemes whose output the duration head reads.
    duration_query: Embedding,
    duration_head: Linear,
    /// Level-0 codes; the mask token is the stop token's entry.
    codes: Embedding,
    /// The demasking timestep t as (sin, cos) of t * pi / 2.
    time: Linear,
    head: Linear,
}

impl MaskedHeads {
    fn new(d: usize, vb: VarBuilder) -> candle_core::Result<Self> {
        Ok(Self {
            duration_query: embedding(1, d, vb.pp("duration_query"))?,
            duration_head: linear(d, 1, vb.pp("duration_head"))?,
            codes: embedding(VOCAB, d, vb.pp("codes"))?,
            time: linear(2, d, vb.pp("time"))?,
            head: linear(d, VOCAB, vb.pp("head"))?,
        })
    }
}

impl VallE {
    /// The model; `masked` adds the masked level-0 heads (weights under `masked.`).
    pub fn new(cfg: ModelConfig, vb: VarBuilder, masked: bool) -> candle_core::Result<Self> {
        let (d, ar, nar) = (cfg.dim, vb.pp("ar"), vb.pp("nar"));
        Ok(Self {
            cfg,
            device: vb.device().clone(),
            ar_phonemes: embedding(PHONEMES, d, ar.pp("phonemes"))?,
            ar_codes: embedding(VOCAB, d, ar.pp("codes"))?,
            ar_start: embedding(1, d, ar.pp("start"))?,
            ar_positions: embedding(cfg.max_positions, d, ar.pp("positions"))?,
            ar: Decoder::new(&cfg, cfg.ar_layers, ar.pp("decoder"))?,
            ar_head: linear(d, VOCAB, ar.pp("head"))?,
            nar_phonemes: embedding(PHONEMES, d, nar.pp("phonemes"))?,
            nar_codes: (0..LEVELS - 1)
                .map(|l| embedding(VOCAB, d, nar.pp(format!("codes.{l}"))))
                .collect::<candle_core::Result<_>>()?,
            nar_target: embedding(LEVELS, d, nar.pp("target"))?,
            nar_positions: embedding(cfg.max_positions, d, nar.pp("positions"))?,
            nar: Decoder::new(&cfg, cfg.nar_layers, nar.pp("decoder"))?,
            nar_heads: (1..LEVELS)
                .map(|l| linear(d, VOCAB, nar.pp(format!("heads.{l}"))))
                .collect::<candle_core::Result<_>>()?,
            masked: masked
                .then(|| MaskedHeads::new(d, vb.pp("masked")))
                .transpose()?,
        })
    }

    /// The model with its conditioning for one batch of prompts.
    pub fn batch(&self, prompts: &[String], max_steps: usize) -> Result<BatchedVallE<'_>> {
        let phonemes: Vec<Vec<u32>> = prompts
            .iter()
            .map(|t| {
                t.bytes()
                    .map(|b| {
                        if (1..PHONEMES as u8).contains(&b) {
                            b as u32
                        } else {
                            b' ' as u32
                        }
                    })
                    .collect()
            })
            .collect();
        let width = phonemes.iter().map(Vec::len).max().unwrap_or(0);
        if width + 1 + max_steps > self.cfg.max_positions {
            bail!("a prompt of {width} phonemes plus {max_steps} codes exceeds the model's {} positions", self.cfg.max_positions);
        }
        let rows = prompts.len();
        // Left-padded phonemes; positions count from each row's first real phoneme.
        let (mut ids, mut pos, mut mask) = (Vec::new(), Vec::new(), Vec::new());
        for p in &phonemes {
            let pad = width - p.len();
            ids.extend(std::iter::repeat_n(0, pad).chain(p.iter().copied()));
            pos.extend((0..=width).map(|i| i.saturating_sub(pad) as u32));
            mask.extend((0..=width).map(|i| if i < pad { MASKED } else { 0.0 }));
        }
        let dev = &self.device;
        let cache_len = width + 1 + max_steps + 1;
        Ok(BatchedVallE {
            model: self,
            text_lens: phonemes.iter().map(|p| p.len() as u32).collect(),
            phonemes: Tensor::from_vec(ids, (rows, width), dev)?,
            prefix_positions: Tensor::from_vec(pos, (rows, width + 1), dev)?,
            prefix_mask: Tensor::from_vec(mask, (rows, width + 1), dev)?,
            caches: (0..self.cfg.ar_layers)
                .map(|_| KvCache::new(2, cache_len))
                .collect(),
            steps: 0,
        })
    }
}

/// The model and one batch's conditioning: what the driver drives.
pub struct BatchedVallE<'m> {
    model: &'m VallE,
    text_lens: Vec<u32>,
    /// `[B, P]` u32, left-padded with 0.
    phonemes: Tensor,
    /// `[B, P + 1]` u32 positions of the phonemes and the start token.
    prefix_positions: Tensor,
    /// `[B, P + 1]` f32: MASKED on padding.
    prefix_mask: Tensor,
    caches: Vec<KvCache>,
    steps: usize,
}

impl BatchedVallE<'_> {
    fn width(&self) -> usize {
        self.prefix_mask.dim(1).unwrap_or(1) - 1
    }

    /// The NAR decoder over the phonemes and `audio` (`[B, T, d]` embeddings of code
    /// positions), bidirectional over the real phonemes (none with `text` false: the null
    /// conditioning) and the positions below each row's length. Returns `[B, T, d]`.
    fn nar_hidden(&self, audio: &Tensor, lens: &Tensor, text: bool) -> candle_core::Result<Tensor> {
        let m = self.model;
        let dev = &m.device;
        let (b, t, _) = audio.dims3()?;
        let width = self.width();
        let audio_pos: Vec<u32> = self
            .text_lens
            .iter()
            .flat_map(|&p| (0..t as u32).map(move |j| p + 1 + j))
            .collect();
        let positions = Tensor::cat(
            &[
                &self.prefix_positions.narrow(1, 0, width)?,
                &Tensor::from_vec(audio_pos, (b, t), dev)?,
            ],
            1,
        )?;
        let x = Tensor::cat(&[&m.nar_phonemes.forward(&self.phonemes)?, audio], 1)?;
        let x = (x + m.nar_positions.forward(&positions)?)?;
        let past_end = Tensor::arange(0u32, t as u32, dev)?
            .unsqueeze(0)?
            .broadcast_ge(&lens.unsqueeze(1)?)?;
        let audio_mask = past_end.where_cond(
            &Tensor::full(MASKED, (b, t), dev)?,
            &Tensor::zeros((b, t), DType::F32, dev)?,
        )?;
        let text_mask = if text {
            self.prefix_mask.narrow(1, 0, width)?
        } else {
            Tensor::full(MASKED, (b, width), dev)?
        };
        let mask = Tensor::cat(&[&text_mask, &audio_mask], 1)?;
        let h = m.nar.forward(&x, &mask.unsqueeze(1)?.unsqueeze(1)?, None)?;
        h.narrow(1, width, t)
    }

    fn masked_heads(&self, hook: &'static str) -> Result<&MaskedHeads, DriverError> {
        self.model
            .masked
            .as_ref()
            .ok_or(DriverError::Unsupported { hook })
    }
}

impl CodecLm for BatchedVallE<'_> {
    fn device(&self) -> &Device {
        &self.model.device
    }

    fn vocab_size(&self) -> usize {
        VOCAB
    }

    fn levels(&self) -> usize {
        LEVELS
    }

    fn ar_step(&mut self, codes: &Tensor, _lens: &Tensor) -> candle_core::Result<Tensor> {
        let m = self.model;
        let (b, t) = codes.dims2()?;
        if t != self.steps {
            candle_core::bail!(
                "AR step {t} after {} steps: the KV cache is out of step",
                self.steps
            );
        }
        let dev = &m.device;
        let (x, mask) = if t == 0 {
            // The phonemes and the start token, causally masked, fill the cache.
            let s = self.width() + 1;
            let start = m
                .ar_start
                .forward(&Tensor::zeros((b, 1), DType::U32, dev)?)?;
            let x = Tensor::cat(&[m.ar_phonemes.forward(&self.phonemes)?, start], 1)?;
            let x = (x + m.ar_positions.forward(&self.prefix_positions)?)?;
            let causal: Vec<f32> = (0..s * s)
                .map(|i| if i % s > i / s { MASKED } else { 0.0 })
                .collect();
            let causal = Tensor::from_vec(causal, (1, 1, s, s), dev)?;
            (
                x,
                causal.broadcast_add(&self.prefix_mask.reshape((b, 1, 1, s))?)?,
            )
        } else {
            // The newest code at position text_len + t.
            let last = codes.i((.., t - 1))?.contiguous()?.unsqueeze(1)?;
            let pos: Vec<u32> = self.text_lens.iter().map(|&l| l + t as u32).collect();
            let x = (m.ar_codes.forward(&last)?
                + m.ar_positions
                    .forward(&Tensor::from_vec(pos, (b, 1), dev)?)?)?;
            let keys = Tensor::cat(
                &[&self.prefix_mask, &Tensor::zeros((b, t), DType::F32, dev)?],
                1,
            )?;
            (x, keys.unsqueeze(1)?.unsqueeze(1)?)
        };
        let h = m.ar.forward(&x, &mask, Some(&mut self.caches))?;
        self.steps += 1;
        let last = h.i((.., h.dim(1)? - 1))?;
        m.ar_head.forward(&last)
    }

    fn nar_level(
        &mut self,
        codes: &Tensor,
        lens: &Tensor,
        level: usize,
    ) -> candle_core::Result<Tensor> {
        let m = self.model;
        let (b, t, have) = codes.dims3()?;
        if have != level || level == 0 || level >= LEVELS {
            candle_core::bail!("NAR level {level} with {have} input levels");
        }
        let dev = &m.device;
        let mut audio = m
            .nar_target
            .forward(&Tensor::full(level as u32, (b, t), dev)?)?;
        for (l, emb) in m.nar_codes.iter().enumerate().take(level) {
            audio = (audio + emb.forward(&codes.i((.., .., l))?.contiguous()?)?)?;
        }
        m.nar_heads[level - 1].forward(&self.nar_hidden(&audio, lens, true)?)
    }

    /// About 12 codes per phoneme, scaled by up to e^(+-0.25) by the duration head.
    fn durations(&mut self) -> candle_sampler::driver::Result<Tensor> {
        let m = self.model;
        let heads = self.masked_heads("durations")?;
        let dev = &m.device;
        let b = self.phonemes.dim(0)?;
        let width = self.width();
        let query = heads
            .duration_query
            .forward(&Tensor::zeros((b, 1), DType::U32, dev)?)?;
        let x = Tensor::cat(&[m.nar_phonemes.forward(&self.phonemes)?, query], 1)?;
        let x = (x + m.nar_positions.forward(&self.prefix_positions)?)?;
        let mask = self.prefix_mask.reshape((b, 1, 1, width + 1))?;
        let h = m.nar.forward(&x, &mask, None)?.i((.., width))?;
        let scale = (heads.duration_head.forward(&h)?.squeeze(1)?.tanh()? * 0.25)?.exp()?;
        let text = Tensor::from_vec(self.text_lens.clone(), b, dev)?.to_dtype(DType::F32)?;
        Ok(((text * 12.0)? * scale)?)
    }

    fn masked_level(
        &mut self,
        codes: &Tensor,
        _mask: &Tensor,
        lens: &Tensor,
        timestep: f32,
        conditioning: Conditioning,
    ) -> candle_sampler::driver::Result<Tensor> {
        let m = self.model;
        let heads = self.masked_heads("masked_level")?;
        let dev = &m.device;
        let (b, t) = codes.dims2()?;
        let angle = timestep * std::f32::consts::FRAC_PI_2;
        let time = heads
            .time
            .forward(&Tensor::new(&[[[angle.sin(), angle.cos()]]], dev)?)?;
        // Level 0 is the NAR's target 0 (its own levels are 1..); masked positions hold the
        // stop token, whose embedding is the mask embedding.
        let audio = (heads.codes.forward(codes)?
            + m.nar_target
                .forward(&Tensor::zeros((b, t), DType::U32, dev)?)?)?
        .broadcast_add(&time)?;
        let text = conditioning == Conditioning::Conditional;
        Ok(heads.head.forward(&self.nar_hidden(&audio, lens, text)?)?)
    }
}

/// Seeded random weights: every matrix uniform with standard deviation 1/sqrt(fan in), biases
/// zero, layer norms at their identity init. The AR head's stop-token bias is raised so that
/// rows stop after a second or two, as a trained model would.
pub fn seeded_weights(varmap: &VarMap, seed: u64, stop_bias: f32, device: &Device) -> Result<()> {
    let data = varmap
        .data()
        .lock()
        .map_err(|_| anyhow::anyhow!("weight map lock poisoned"))?;
    let mut names: Vec<&String> = data.keys().collect();
    names.sort();
    for name in names {
        if name.split('.').any(|part| part.starts_with("ln")) {
            continue;
        }
        let var = &data[name];
        let dims = var.dims().to_vec();
        let n: usize = dims.iter().product();
        let values: Vec<f32> = if dims.len() >= 2 {
            let bound = (3.0 / dims[dims.len() - 1] as f64).sqrt() as f32;
            let mut rng = SplitMix64(seed ^ fnv1a(name));
            (0..n)
                .map(|_| (rng.next_f32() * 2.0 - 1.0) * bound)
                .collect()
        } else {
            let mut zeros = vec![0f32; n];
            if name == "ar.head.bias" {
                zeros[STOP as usize] = stop_bias;
            }
            zeros
        };
        var.set(&Tensor::from_vec(values, dims, device)?)?;
    }
    Ok(())
}

struct SplitMix64(u64);

impl SplitMix64 {
    fn next_f32(&mut self) -> f32 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) >> 40) as f32 / (1u64 << 24) as f32
    }
}

fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    })
}
