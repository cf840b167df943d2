//! The masked level-0 stage on deterministic fake models whose logits are computed on the host
//! from what the driver passes in; every call is recorded so the tests can check what the
//! model was given at each demasking step.

use candle_core::{DType, Device, Tensor};
use sampler_core::{philox, SamplerConfig};
use sampler_driver::{
    CodecLm, Conditioning, Driver, DriverConfig, DriverError, GuidanceSchedule, Level0,
    MaskedConfig, Progress, Rows, StageConfig, MASKED_STEP_BASE,
};

/// 16 codes and the stop token 16, which is also the mask token by default.
const CODES: u32 = 16;
const STOP: u32 = 16;
const VOCAB: usize = 17;

/// What one masked-level call received.
#[derive(Clone, Debug)]
struct Call {
    codes: Vec<Vec<u32>>,
    mask: Vec<Vec<u8>>,
    lens: Vec<u32>,
    timestep: f32,
    conditioning: Conditioning,
}

/// The logits of one position: (sequence prompt, position, whether it is masked in the input,
/// the codes of the sequence below its length, timestep, conditioning) -> `[VOCAB]`.
type Rule =
    fn(prompt: f32, j: usize, masked: bool, row: &[u32], t: f32, c: Conditioning) -> Vec<f32>;

struct Fake {
    /// One per sequence, as the duration hook returns them.
    durations: Vec<f32>,
    prompts: Vec<f32>,
    rule: Rule,
    levels: usize,
    calls: Vec<Call>,
}

impl Fake {
    fn new(durations: Vec<f32>, rule: Rule) -> Self {
        let prompts = (0..durations.len()).map(|b| b as f32 * 0.7 + 0.3).collect();
        Self {
            durations,
            prompts,
            rule,
            levels: 2,
            calls: vec![],
        }
    }

    /// The conditional calls only.
    fn conditional(&self) -> Vec<&Call> {
        self.calls
            .iter()
            .filter(|c| c.conditioning == Conditioning::Conditional)
            .collect()
    }

    /// Masked positions per row of every conditional call.
    fn mask_counts(&self) -> Vec<Vec<usize>> {
        self.conditional()
            .iter()
            .map(|c| {
                c.mask
                    .iter()
                    .map(|r| r.iter().filter(|&&m| m == 1).count())
                    .collect()
            })
            .collect()
    }
}

impl CodecLm for Fake {
    fn device(&self) -> &Device {
        &Device::Cpu
    }

    fn vocab_size(&self) -> usize {
        VOCAB
    }

    fn levels(&self) -> usize {
        self.levels
    }

    fn ar_step(&mut self, _codes: &Tensor, _lens: &Tensor) -> candle_core::Result<Tensor> {
        candle_core::bail!("the masked tests never run the AR stage")
    }

    /// Level l copies the previous level plus one.
    fn nar_level(
        &mut self,
        codes: &Tensor,
        _lens: &Tensor,
        level: usize,
    ) -> candle_core::Result<Tensor> {
        let (batch, t, _) = codes.dims3()?;
        let mut flat = vec![0f32; batch * t * VOCAB];
        for (b, row) in codes.to_vec3::<u32>()?.iter().enumerate() {
            for (j, c) in row.iter().enumerate() {
                flat[(b * t + j) * VOCAB + ((c[level - 1] + 1) % CODES) as usize] = 5.0;
            }
        }
        Tensor::from_vec(flat, (batch, t, VOCAB), &Device::Cpu)
    }

    fn durations(&mut self) -> sampler_driver::Result<Tensor> {
        let n = self.durations.len();
        Ok(Tensor::from_vec(self.durations.clone(), n, &Device::Cpu)?)
    }

    fn masked_level(
        &mut self,
        codes: &Tensor,
        mask: &Tensor,
        lens: &Tensor,
        timestep: f32,
        conditioning: Conditioning,
    ) -> sampler_driver::Result<Tensor> {
        let (batch, t) = codes.dims2()?;
        let call = Call {
            codes: codes.to_vec2::<u32>()?,
            mask: mask.to_vec2::<u8>()?,
            lens: lens.to_vec1::<u32>()?,
            timestep,
            conditioning,
        };
        let mut flat = Vec::with_capacity(batch * t * VOCAB);
        for b in 0..batch {
            let len = call.lens[b] as usize;
            let row = &call.codes[b][..len];
            for j in 0..t {
                if j < len {
                    let masked = call.mask[b][j] == 1;
                    flat.extend((self.rule)(
                        self.prompts[b],
                        j,
                        masked,
                        row,
                        timestep,
                        conditioning,
                    ));
                } else {
                    flat.extend(std::iter::repeat_n(0f32, VOCAB));
                }
            }
        }
        self.calls.push(call);
        Ok(Tensor::from_vec(flat, (batch, t, VOCAB), &Device::Cpu)?)
    }
}

/// The code a position "should" get: its own function of (prompt, position).
fn target(prompt: f32, j: usize) -> u32 {
    ((prompt * 10.0) as u32 + 5 * j as u32) % CODES
}

/// A peak at the target, higher where the input is masked: the peak's probability (the score)
/// orders the positions, masked ones above unmasked ones, and by position within each.
fn confident_when_masked(
    prompt: f32,
    j: usize,
    masked: bool,
    _: &[u32],
    _: f32,
    _: Conditioning,
) -> Vec<f32> {
    let mut row = vec![0f32; VOCAB];
    row[target(prompt, j) as usize] = if masked { 4.0 } else { 1.0 } + 0.01 * j as f32;
    row
}

fn masked_driver(cfg: MaskedConfig, max_steps: usize) -> Driver {
    let nar = StageConfig::new(SamplerConfig {
        temperature: 0.0,
        ..Default::default()
    });
    Driver::new(
        DriverConfig::new(StageConfig::default(), nar)
            .with_max_steps(max_steps)
            .with_level0(Level0::Masked(cfg)),
    )
}

/// Level 0 of each row, below its length.
fn level0(codes: &Tensor, lens: &[usize]) -> Vec<Vec<u32>> {
    let all = codes.to_vec3::<u32>().unwrap();
    lens.iter()
        .enumerate()
        .map(|(b, &n)| all[b][..n].iter().map(|c| c[0]).collect())
        .collect()
}

/// The schedule, on the host: step s of `steps` over [0, 1].
fn expected_count(len: usize, s: usize, steps: usize, remask: bool) -> usize {
    let t = s as f64 / (steps - 1) as f64;
    let extra = if remask {
        1.0 / (2.0 * steps as f64)
    } else {
        0.0
    };
    let n = (((t * std::f64::consts::FRAC_PI_2).cos() + extra) * len as f64).floor() as usize;
    n.min(len.saturating_sub(s)).max(1).min(len)
}

#[test]
fn masked_positions_per_step_follow_the_schedule_exactly() -> anyhow::Result<()> {
    for remask in [false, true] {
        let cfg = MaskedConfig::default()
            .without_guidance()
            .with_max_steps(10)
            .with_scores_remask(remask);
        let mut model = Fake::new(vec![120.0, 57.0, 5.0, 1.0], confident_when_masked);
        let mut steps_seen = vec![];
        let out = masked_driver(cfg, 200).generate_with(&mut model, &Rows::first(4), 3, |p| {
            if let Progress::MaskedStep { step, steps } = p {
                steps_seen.push((step, steps));
            }
        })?;
        assert_eq!(out.lens, vec![120, 57, 5, 1]);
        assert_eq!(out.masked_steps, 10);
        assert_eq!(out.ar_steps, 0);
        assert_eq!(steps_seen, (0..10).map(|s| (s, 10)).collect::<Vec<_>>());
        // Without guidance there is no null-conditioning call.
        assert_eq!(model.calls.len(), 10);
        let counts = model.mask_counts();
        for (s, row) in counts.iter().enumerate() {
            let want: Vec<usize> = out
                .lens
                .iter()
                .map(|&len| expected_count(len, s, 10, remask))
                .collect();
            assert_eq!(row, &want, "step {s}, remask {remask}");
        }
        // Worked out by hand for the 120-code row.
        let long: Vec<usize> = counts.iter().map(|c| c[0]).collect();
        let want_long = if remask {
            vec![120, 119, 118, 109, 97, 83, 66, 47, 26, 6]
        } else {
            vec![120, 118, 112, 103, 91, 77, 60, 41, 20, 1]
        };
        assert_eq!(long, want_long, "remask {remask}");
        // The model gets the timesteps in order and the mask token where it masks.
        let ts: Vec<f32> = model.calls.iter().map(|c| c.timestep).collect();
        let want_ts: Vec<f32> = (0..10).map(|s| s as f32 / 9.0).collect();
        for (a, b) in ts.iter().zip(&want_ts) {
            assert!((a - b).abs() < 1e-6, "{ts:?}");
        }
        for call in &model.calls {
            for b in 0..4 {
                for (j, &m) in call.mask[b].iter().enumerate() {
                    let len = out.lens[b];
                    if j >= len {
                        assert_eq!((m, call.codes[b][j]), (0, STOP), "padding");
                    } else if m == 1 {
                        assert_eq!(
                            call.codes[b][j], STOP,
                            "a masked position holds the mask token"
                        );
                    } else {
                        assert!(call.codes[b][j] < CODES);
                    }
                }
            }
        }
    }
    Ok(())
}

#[test]
fn greedy_fake_model_converges_to_its_argmax_codes() -> anyhow::Result<()> {
    // Durations 0 -> 1 (the minimum), 2.6 -> 3 (rounded), 700 -> 40 (the driver's limit
    // below the stage's 500), 33 capped by that row's own limit of 9.
    let mut model = Fake::new(vec![0.0, 2.6, 700.0, 33.0], confident_when_masked);
    let rows = Rows::first(4).with_max_steps(vec![40, 40, 40, 9]);
    let out = masked_driver(MaskedConfig::default(), 40).generate(&mut model, &rows, 5)?;
    assert_eq!(out.lens, vec![1, 3, 40, 9]);
    let codes = level0(&out.codes, &out.lens);
    for (b, row) in codes.iter().enumerate() {
        let want: Vec<u32> = (0..out.lens[b])
            .map(|j| target(model.prompts[b], j))
            .collect();
        assert_eq!(row, &want, "row {b}");
    }
    // The NAR level follows from level 0 (plus one), and padding is the stop token.
    let all = out.codes.to_vec3::<u32>()?;
    assert_eq!(all[1][2], vec![codes[1][2], (codes[1][2] + 1) % CODES]);
    assert!(all[0][1..].iter().flatten().all(|&c| c == STOP));
    Ok(())
}

/// Pseudo-random logits that depend on the row's own prompt, the position, the visible codes
/// around it, the timestep and the conditioning: draws differ between rows, steps and seeds.
fn wavy(prompt: f32, j: usize, _masked: bool, row: &[u32], t: f32, c: Conditioning) -> Vec<f32> {
    let left = if j > 0 { row[j - 1] as f32 } else { 0.0 };
    let right = row.get(j + 1).map_or(0.0, |&v| v as f32);
    let null = if c == Conditioning::Null { 0.8 } else { 0.0 };
    (0..VOCAB)
        .map(|k| {
            2.0 * (prompt * 1.7 + k as f32 * 0.9 + j as f32 * 0.31 + left * 0.05 - right * 0.03
                + t * 0.4
                + null * k as f32)
                .sin()
        })
        .collect()
}

#[test]
fn a_sequence_gives_the_same_codes_alone_and_in_a_batch() -> anyhow::Result<()> {
    let stage = StageConfig::new(SamplerConfig {
        temperature: 1.2,
        top_k: 8,
        cfg_strength: 3.0,
        cfg_rescale: 0.75,
        ..Default::default()
    });
    let cfg = MaskedConfig::new(stage)
        .with_max_steps(12)
        .with_scores_remask(true);
    let driver = masked_driver(cfg, 64);
    let mut batch = Fake::new(vec![23.0, 9.0, 31.0], wavy);
    batch.prompts = vec![1.1, 0.4, 2.5];
    let together = driver.generate(&mut batch, &Rows::new(vec![3, 7, 11]), 99)?;
    assert_eq!(together.lens, vec![23, 9, 31]);
    let all = |out: &sampler_driver::Generation, b: usize| -> Vec<Vec<u32>> {
        out.codes.to_vec3::<u32>().unwrap()[b][..out.lens[b]].to_vec()
    };
    let mut alone = Fake::new(vec![9.0], wavy);
    alone.prompts = vec![0.4];
    let single = driver.generate(&mut alone, &Rows::new(vec![7]), 99)?;
    assert_eq!(single.lens, vec![9]);
    assert_eq!(all(&single, 0), all(&together, 1));
    let mut other = Fake::new(vec![31.0, 9.0], wavy);
    other.prompts = vec![2.5, 0.4];
    let reordered = driver.generate(&mut other, &Rows::new(vec![11, 7]), 99)?;
    assert_eq!(all(&reordered, 1), all(&together, 1));
    assert_eq!(all(&reordered, 0), all(&together, 2));
    // The codes are drawn: another seed changes them.
    let reseeded = driver.generate(&mut alone, &Rows::new(vec![7]), 100)?;
    assert_ne!(level0(&reseeded.codes, &[9]), level0(&single.codes, &[9]));
    Ok(())
}

/// Simulates the stage's selection on the host for `confident_when_masked`: the scores are
/// the peak's probability, so the order is known exactly.
fn simulate_masks(len: usize, steps: usize, masked_only: bool) -> Vec<Vec<u8>> {
    // The stop token is banned: the peak competes with VOCAB - 2 zeros.
    let prob = |h: f64| h.exp() / (h.exp() + (VOCAB - 2) as f64);
    let mut scores = vec![1f64; len];
    let mut masks = vec![];
    for s in 0..steps {
        let k = expected_count(len, s, steps, false);
        let mut order: Vec<usize> = (0..len).collect();
        order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]).then(a.cmp(&b)));
        let mut mask = vec![0u8; len];
        for &j in &order[..k] {
            mask[j] = 1;
        }
        for j in 0..len {
            let masked = mask[j] == 1;
            let h = if masked { 4.0 } else { 1.0 } + 0.01 * j as f64;
            scores[j] = if masked_only && !masked { 1.0 } else { prob(h) };
        }
        masks.push(mask);
    }
    masks
}

#[test]
fn remask_and_masked_only_scoring_change_what_they_should() -> anyhow::Result<()> {
    let run = |cfg: MaskedConfig| -> anyhow::Result<Vec<Vec<u8>>> {
        let mut model = Fake::new(vec![30.0], confident_when_masked);
        masked_driver(cfg.without_guidance().with_max_steps(8), 64).generate(
            &mut model,
            &Rows::first(1),
            1,
        )?;
        Ok(model
            .conditional()
            .iter()
            .map(|c| c.mask[0].clone())
            .collect())
    };
    // Default scoring rescores every position: the unmasked ones come back less confident and
    // are masked first at the next step.
    let all_scored = run(MaskedConfig::default())?;
    assert_eq!(all_scored, simulate_masks(30, 8, false));
    // Masked-only: the unmasked positions score 1, so every mask is inside the previous one.
    let masked_only = run(MaskedConfig::default().with_scores_masked_only(true))?;
    assert_eq!(masked_only, simulate_masks(30, 8, true));
    for w in masked_only.windows(2) {
        assert!(w[1].iter().zip(&w[0]).all(|(&now, &before)| now <= before));
    }
    assert_ne!(all_scored, masked_only);
    // The scores are the greedy probabilities whatever was drawn: a hot, unannealed chain
    // masks the same positions.
    let hot = MaskedConfig::new(StageConfig::new(SamplerConfig {
        temperature: 5.0,
        ..Default::default()
    }))
    .with_annealed_sampling(false);
    assert_eq!(run(hot)?, simulate_masks(30, 8, false));
    // Remask masks more at the steps where the cosine term leads.
    let remasked = run(MaskedConfig::default().with_scores_remask(true))?;
    let count = |m: &[Vec<u8>]| -> Vec<usize> {
        m.iter()
            .map(|r| r.iter().map(|&v| v as usize).sum())
            .collect()
    };
    assert_eq!(count(&all_scored), vec![30, 29, 27, 23, 18, 13, 6, 1]);
    assert_eq!(count(&remasked), vec![30, 29, 28, 25, 20, 14, 8, 1]);
    Ok(())
}

#[test]
fn annealed_sampling_is_greedy_at_the_last_step() -> anyhow::Result<()> {
    // Temperature 50 is nearly uniform; annealed, the last step (t = 1) runs at temperature 0.
    let hot = |annealed: bool| {
        MaskedConfig::new(StageConfig::new(SamplerConfig {
            temperature: 50.0,
            ..Default::default()
        }))
        .without_guidance()
        .with_max_steps(5)
        .with_annealed_sampling(annealed)
    };
    let mut last_step_hits = [0usize; 2];
    let mut drawn_off_target = 0;
    for seed in 0..12 {
        for (i, annealed) in [true, false].into_iter().enumerate() {
            let mut model = Fake::new(vec![20.0], confident_when_masked);
            let out =
                masked_driver(hot(annealed), 64).generate(&mut model, &Rows::first(1), seed)?;
            let codes = level0(&out.codes, &out.lens).remove(0);
            let last = &model.calls[4].mask[0];
            let j = last
                .iter()
                .position(|&m| m == 1)
                .expect("the last step masks one position");
            last_step_hits[i] += (codes[j] == target(model.prompts[0], j)) as usize;
            drawn_off_target += (0..20)
                .filter(|&p| codes[p] != target(model.prompts[0], p))
                .count();
        }
    }
    assert_eq!(last_step_hits[0], 12, "annealed: the last step is greedy");
    assert!(
        last_step_hits[1] < 12,
        "unannealed: the last step samples at 50"
    );
    assert!(drawn_off_target > 0, "the hot steps do sample");
    Ok(())
}

/// Guided logits `null + s * (pos - null)` of the three codes 1, 2, 3 are s, 2.45 and
/// 2s - 2.55: code 1 wins exactly for s in (2.45, 2.55), code 2 below, code 3 above. Every
/// other code is -10 in both runs.
fn guidance_window(_: f32, _: usize, _: bool, _: &[u32], _: f32, c: Conditioning) -> Vec<f32> {
    let mut row = vec![-10f32; VOCAB];
    let (one, two, three) = match c {
        Conditioning::Conditional => (1.0, 2.45, -0.55),
        Conditioning::Null => (0.0, 2.45, -2.55),
    };
    row[1] = one;
    row[2] = two;
    row[3] = three;
    row
}

#[test]
fn guidance_combines_the_null_run_at_the_configured_strength() -> anyhow::Result<()> {
    let run = |cfg: MaskedConfig| -> anyhow::Result<(Vec<u32>, Fake)> {
        let mut model = Fake::new(vec![12.0], guidance_window);
        let out =
            masked_driver(cfg.with_max_steps(6), 64).generate(&mut model, &Rows::first(1), 1)?;
        Ok((level0(&out.codes, &out.lens).remove(0), model))
    };
    // The default strength 2.5 (rescale 0.75 scales each row's logits and keeps the argmax).
    let (codes, model) = run(MaskedConfig::default())?;
    assert_eq!(codes, vec![1; 12]);
    // Every step calls the model twice, conditional then null, on the same input.
    assert_eq!(model.calls.len(), 12);
    for pair in model.calls.chunks(2) {
        assert_eq!(pair[0].conditioning, Conditioning::Conditional);
        assert_eq!(pair[1].conditioning, Conditioning::Null);
        assert_eq!(
            (&pair[0].codes, &pair[0].mask),
            (&pair[1].codes, &pair[1].mask)
        );
    }
    // A strength below the floor of 2.5 is raised to it.
    let weak = |s: f32| {
        let mut c = MaskedConfig::default();
        c.stage.sampler.cfg_strength = s;
        c
    };
    assert_eq!(run(weak(2.0))?.0, vec![1; 12]);
    // Above the window the third code wins; with the floor lowered, a strength below it
    // gives the second; without guidance (no null call) the conditional argmax is the second.
    assert_eq!(run(weak(2.6))?.0, vec![3; 12]);
    let mut low = weak(2.4);
    low.min_cfg_strength = 1.0;
    assert_eq!(run(low)?.0, vec![2; 12]);
    let (plain, model) = run(MaskedConfig::default().without_guidance())?;
    assert_eq!(plain, vec![2; 12]);
    assert!(model
        .calls
        .iter()
        .all(|c| c.conditioning == Conditioning::Conditional));
    // Annealed: strength 2.5 t is 2.45 or less before the last step (t = 1), so every position
    // keeps the second code except the one the last step re-predicts (the first position:
    // every score ties at the previous step's probability).
    let (annealed, _) = run(MaskedConfig::default().with_guidance(GuidanceSchedule::Annealed))?;
    let mut want = vec![2; 12];
    want[0] = 1;
    assert_eq!(annealed, want);
    Ok(())
}

#[test]
fn denoise_start_refines_given_codes_from_their_noised_positions() -> anyhow::Result<()> {
    let start: Vec<Vec<u32>> = vec![(0..24).map(|j| (j * 7 % 16) as u32).collect(), vec![9; 10]];
    // Masked-only scoring keeps the positions the first step leaves alone at score 1, so
    // some given codes survive to the end.
    let cfg = MaskedConfig::default()
        .without_guidance()
        .with_denoise(0.5, 1.0)
        .with_max_steps(12)
        .with_scores_masked_only(true);
    assert_eq!(cfg.steps(), 6);
    let mut model = Fake::new(vec![1.0, 1.0], confident_when_masked);
    let rows = Rows::new(vec![4, 5]).with_start_codes(start.clone());
    let (seed, stride) = (17u64, 64u32);
    let out = masked_driver(cfg, stride as usize).generate(&mut model, &rows, seed)?;
    assert_eq!(out.lens, vec![24, 10]);
    let first = &model.calls[0];
    let noise_p = (0.5 * std::f64::consts::FRAC_PI_2).cos();
    for (b, codes) in start.iter().enumerate() {
        let len = codes.len();
        // The noised positions (score 0) are masked first, then the others by position.
        let noised: Vec<bool> = (0..len)
            .map(|j| {
                let id = rows.ids[b] * stride + j as u32;
                (philox::uniform(seed, id, MASKED_STEP_BASE) as f64) < noise_p
            })
            .collect();
        let k = ((noise_p * len as f64).floor() as usize).max(1);
        let mut order: Vec<usize> = (0..len).collect();
        order.sort_by_key(|&j| (!noised[j], j));
        let mut want = vec![0u8; len];
        for &j in &order[..k] {
            want[j] = 1;
        }
        assert_eq!(&first.mask[b][..len], &want[..], "row {b}");
        // The unmasked positions hold the given codes.
        for j in 0..len {
            if want[j] == 0 {
                assert_eq!(first.codes[b][j], codes[j]);
            }
        }
        // A position never masked keeps its code; a masked one ends on the model's target.
        let ever: Vec<bool> = (0..len)
            .map(|j| model.conditional().iter().any(|c| c.mask[b][j] == 1))
            .collect();
        let got = &level0(&out.codes, &out.lens)[b];
        for j in 0..len {
            let want = if ever[j] {
                target(model.prompts[b], j)
            } else {
                codes[j]
            };
            assert_eq!(got[j], want, "row {b} position {j}");
        }
        assert!(ever.iter().any(|&e| !e), "some given codes survive");
    }
    Ok(())
}

/// A model with the AR/NAR hooks only, or a masked hook that fails.
struct Plain {
    fail: bool,
}

impl CodecLm for Plain {
    fn device(&self) -> &Device {
        &Device::Cpu
    }
    fn vocab_size(&self) -> usize {
        VOCAB
    }
    fn levels(&self) -> usize {
        2
    }
    fn ar_step(&mut self, codes: &Tensor, _lens: &Tensor) -> candle_core::Result<Tensor> {
        Tensor::zeros((codes.dim(0)?, VOCAB), DType::F32, &Device::Cpu)
    }
    fn nar_level(
        &mut self,
        codes: &Tensor,
        _lens: &Tensor,
        _level: usize,
    ) -> candle_core::Result<Tensor> {
        let (b, t, _) = codes.dims3()?;
        Tensor::zeros((b, t, VOCAB), DType::F32, &Device::Cpu)
    }
    fn durations(&mut self) -> sampler_driver::Result<Tensor> {
        if self.fail {
            Ok(Tensor::new(&[4u32, 4], &Device::Cpu)?)
        } else {
            Err(DriverError::Unsupported { hook: "durations" })
        }
    }
    fn masked_level(
        &mut self,
        codes: &Tensor,
        _mask: &Tensor,
        _lens: &Tensor,
        _timestep: f32,
        _conditioning: Conditioning,
    ) -> sampler_driver::Result<Tensor> {
        // A shape error from candle itself, as a real model's forward would raise.
        Ok(codes.reshape((7, 3))?)
    }
}

/// Only the required hooks: the masked ones keep their defaults.
struct ArOnly;

impl CodecLm for ArOnly {
    fn device(&self) -> &Device {
        &Device::Cpu
    }
    fn vocab_size(&self) -> usize {
        VOCAB
    }
    fn levels(&self) -> usize {
        2
    }
    fn ar_step(&mut self, codes: &Tensor, _lens: &Tensor) -> candle_core::Result<Tensor> {
        Tensor::zeros((codes.dim(0)?, VOCAB), DType::F32, &Device::Cpu)
    }
    fn nar_level(
        &mut self,
        codes: &Tensor,
        _lens: &Tensor,
        _level: usize,
    ) -> candle_core::Result<Tensor> {
        let (b, t, _) = codes.dims3()?;
        Tensor::zeros((b, t, VOCAB), DType::F32, &Device::Cpu)
    }
}

#[test]
fn missing_hooks_and_model_failures_are_typed_errors() {
    let driver = masked_driver(MaskedConfig::default(), 32);
    let e = driver
        .generate(&mut ArOnly, &Rows::first(2), 0)
        .unwrap_err();
    assert!(
        matches!(e, DriverError::Unsupported { hook: "durations" }),
        "{e}"
    );
    assert!(e.to_string().contains("not supported"), "{e}");
    let rows = Rows::first(2).with_start_codes(vec![vec![1, 2], vec![3]]);
    let e = driver.generate(&mut ArOnly, &rows, 0).unwrap_err();
    assert!(
        matches!(
            e,
            DriverError::Unsupported {
                hook: "masked_level"
            }
        ),
        "{e}"
    );

    let e = driver
        .generate(&mut Plain { fail: true }, &Rows::first(2), 0)
        .unwrap_err();
    let DriverError::ModelFailed { call, source } = &e else {
        panic!("expected ModelFailed, got {e:?}");
    };
    assert!(call.contains("masked step 0"), "{call}");
    assert!(source.to_string().contains("reshape"), "{source}");
    let chained = std::error::Error::source(&e).map(|s| s.to_string());
    assert_eq!(chained, Some(source.to_string()));
}

#[test]
fn bad_masked_requests_are_errors_before_any_model_call() {
    let run = |cfg: MaskedConfig, rows: Rows| {
        let mut model = Fake::new(vec![4.0, 4.0], confident_when_masked);
        let r = masked_driver(cfg, 32).generate(&mut model, &rows, 0);
        assert!(model.calls.is_empty(), "no step may run on a bad request");
        r.unwrap_err().to_string()
    };
    let e = run(
        MaskedConfig::default().with_denoise(0.3, 1.0),
        Rows::first(2),
    );
    assert!(e.contains("with_start_codes"), "{e}");
    let e = run(
        MaskedConfig::default().with_denoise(0.5, 0.5),
        Rows::first(2),
    );
    assert!(e.contains("denoise_end"), "{e}");
    let e = run(
        MaskedConfig::default()
            .with_max_steps(1)
            .with_denoise(0.0, 0.5),
        Rows::first(2),
    );
    assert!(e.contains("no demasking step"), "{e}");
    let e = run(
        MaskedConfig::default().with_durations(0, 10),
        Rows::first(2),
    );
    assert!(e.contains("durations"), "{e}");
    let e = run(
        MaskedConfig::default(),
        Rows::first(2).with_start_codes(vec![vec![1, 16], vec![2]]),
    );
    assert!(e.contains("start code 16"), "{e}");
    let e = run(
        MaskedConfig::default(),
        Rows::first(2)
            .with_max_steps(vec![1, 4])
            .with_start_codes(vec![vec![1, 2], vec![2]]),
    );
    assert!(e.contains("more than its limit"), "{e}");
    // Start codes belong to the masked stage.
    let mut model = Fake::new(vec![4.0], confident_when_masked);
    let ar = Driver::new(DriverConfig::new(
        StageConfig::default(),
        StageConfig::default(),
    ));
    let e = ar
        .generate(
            &mut model,
            &Rows::first(1).with_start_codes(vec![vec![1]]),
            0,
        )
        .unwrap_err();
    assert!(e.to_string().contains("start codes"), "{e}");
}
