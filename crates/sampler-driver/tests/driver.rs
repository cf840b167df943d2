//! The driver on deterministic fake models whose logits are computed on the host from the codes
//! the driver passes in, so every expected code below is worked out by hand.

use candle_core::{Device, Tensor};
use sampler_core::SamplerConfig;
use sampler_driver::{
    CodecLm, Driver, DriverConfig, DriverError, Knob, Progress, Rows, StageConfig,
};

/// 16 codes and the stop token 16.
const CODES: u32 = 16;
const STOP: u32 = 16;
const VOCAB: usize = 17;

/// How a fake NAR turns the previous level's codes into `(token, logit)` peaks at position j
/// of level `level` (every other token gets 0).
type NarRule = fn(prev: &[u32], j: usize, level: usize) -> Vec<(u32, f32)>;

/// Level l copies the previous level plus one; the stop token is the largest logit, so only
/// the ban keeps it out.
fn shift_rule(prev: &[u32], j: usize, _level: usize) -> Vec<(u32, f32)> {
    vec![((prev[j] + 1) % CODES, 5.0), (STOP, 9.0)]
}

/// Tempted to copy the previous level (4) but the next code is close behind (3).
fn copy_or_next_rule(prev: &[u32], j: usize, _level: usize) -> Vec<(u32, f32)> {
    vec![(prev[j], 4.0), ((prev[j] + 1) % CODES, 3.0)]
}

/// AR: code 0 is `start`, then each code is the last one plus `inc` (mod 16), with the stop
/// token after `stop_after` codes (never when None). Peaks of 5 over zeros.
struct Counting {
    start: Vec<u32>,
    inc: Vec<u32>,
    stop_after: Vec<Option<usize>>,
    levels: usize,
    nar: NarRule,
    ar_calls: usize,
    batch_seen: Vec<usize>,
}

impl Counting {
    fn new(start: Vec<u32>, inc: Vec<u32>, stop_after: Vec<Option<usize>>) -> Self {
        Self {
            start,
            inc,
            stop_after,
            levels: 3,
            nar: shift_rule,
            ar_calls: 0,
            batch_seen: vec![],
        }
    }

    /// The codes a row must get: level 0 from the counting rule, then the NAR's greedy peaks.
    fn expected_level0(&self, b: usize, len: usize) -> Vec<u32> {
        let mut c = vec![self.start[b]];
        while c.len() < len {
            c.push((c[c.len() - 1] + self.inc[b]) % CODES);
        }
        c.truncate(len);
        c
    }
}

fn peaks_to_row(peaks: &[(u32, f32)]) -> Vec<f32> {
    let mut row = vec![0f32; VOCAB];
    for &(tok, v) in peaks {
        row[tok as usize] = v;
    }
    row
}

impl CodecLm for Counting {
    fn device(&self) -> &Device {
        &Device::Cpu
    }

    fn vocab_size(&self) -> usize {
        VOCAB
    }

    fn levels(&self) -> usize {
        self.levels
    }

    fn ar_step(&mut self, codes: &Tensor, lens: &Tensor) -> candle_core::Result<Tensor> {
        let (batch, t) = codes.dims2()?;
        assert_eq!(t, self.ar_calls, "the AR step gets every code so far");
        assert_eq!(lens.dims(), [batch]);
        self.ar_calls += 1;
        self.batch_seen.push(batch);
        let codes = codes.to_vec2::<u32>()?;
        let mut flat = Vec::new();
        for (b, row) in codes.iter().enumerate() {
            let tok = if self.stop_after[b] == Some(t) {
                STOP
            } else if t == 0 {
                self.start[b]
            } else {
                (row[t - 1] + self.inc[b]) % CODES
            };
            flat.extend(peaks_to_row(&[(tok, 5.0)]));
        }
        Tensor::from_vec(flat, (batch, VOCAB), &Device::Cpu)
    }

    fn nar_level(
        &mut self,
        codes: &Tensor,
        lens: &Tensor,
        level: usize,
    ) -> candle_core::Result<Tensor> {
        let (batch, t, have) = codes.dims3()?;
        assert_eq!(have, level, "the NAR gets the levels so far");
        assert_eq!(lens.dims(), [batch]);
        let codes = codes.to_vec3::<u32>()?;
        let mut flat = Vec::new();
        for row in codes.iter() {
            let prev: Vec<u32> = row.iter().map(|c| c[level - 1]).collect();
            for j in 0..t {
                flat.extend(peaks_to_row(&(self.nar)(&prev, j, level)));
            }
        }
        Tensor::from_vec(flat, (batch, t, VOCAB), &Device::Cpu)
    }
}

fn greedy() -> StageConfig {
    StageConfig::new(SamplerConfig {
        temperature: 0.0,
        ..Default::default()
    })
}

fn greedy_driver() -> DriverConfig {
    DriverConfig::new(greedy(), greedy())
        .with_max_steps(32)
        .with_stop_check_interval(1)
}

/// codes[b] as `[t][level]`, only the positions below the row's length.
fn row_codes(codes: &Tensor, b: usize, len: usize) -> Vec<Vec<u32>> {
    codes.to_vec3::<u32>().unwrap()[b][..len].to_vec()
}

fn levels_of(level0: &[u32], levels: usize, shift: bool) -> Vec<Vec<u32>> {
    level0
        .iter()
        .map(|&c| {
            (0..levels as u32)
                .map(|l| if shift { (c + l) % CODES } else { c })
                .collect()
        })
        .collect()
}

#[test]
fn greedy_codes_are_exact_and_rows_stop_at_their_own_step() -> anyhow::Result<()> {
    let mut model = Counting::new(
        vec![3, 14, 7],
        vec![1, 5, 2],
        vec![Some(2), Some(5), Some(0)],
    );
    let out = Driver::new(greedy_driver()).generate(&mut model, &Rows::first(3), 1)?;
    assert_eq!(out.lens, vec![2, 5, 0]);
    assert_eq!(out.codes.dims(), [3, 5, 3]);
    // Row 0: 3, 4; level l adds l (mod 16).
    assert_eq!(
        row_codes(&out.codes, 0, 2),
        vec![vec![3, 4, 5], vec![4, 5, 6]]
    );
    // Row 1: 14, 3, 8, 13, 2.
    assert_eq!(
        row_codes(&out.codes, 1, 5),
        levels_of(&[14, 3, 8, 13, 2], 3, true)
    );
    // Padding past each length is the stop token.
    let all = out.codes.to_vec3::<u32>()?;
    assert!(all[0][2..].iter().flatten().all(|&c| c == STOP));
    assert!(all[2].iter().flatten().all(|&c| c == STOP));
    // Row 1 draws the stop token at step 5: six steps, checked after each one.
    assert_eq!(out.ar_steps, 6);
    assert_eq!(model.ar_calls, 6);
    assert!(
        model.batch_seen.iter().all(|&b| b == 3),
        "finished rows stay in the batch"
    );
    assert_eq!(out.stop_token, STOP);
    Ok(())
}

#[test]
fn host_reads_stop_flags_only_every_interval_and_finished_rows_stay_fixed() -> anyhow::Result<()> {
    let mut model = Counting::new(vec![3, 14], vec![1, 5], vec![Some(2), Some(5)]);
    let cfg = greedy_driver().with_stop_check_interval(4);
    let mut polls = Vec::new();
    let out = Driver::new(cfg).generate_with(&mut model, &Rows::first(2), 1, |p| {
        if let Progress::ArRunning { steps, running } = p {
            polls.push((steps, running));
        }
    })?;
    // Stop at step 5 (the 6th step); the flags are read after steps 4 and 8.
    assert_eq!(polls, vec![(4, 1), (8, 0)]);
    assert_eq!(out.ar_steps, 8);
    assert_eq!(model.ar_calls, 8);
    // Row 0 stopped after 2 codes and six more steps did not change it.
    assert_eq!(out.lens, vec![2, 5]);
    assert_eq!(row_codes(&out.codes, 0, 2), levels_of(&[3, 4], 3, true));
    assert_eq!(
        row_codes(&out.codes, 1, 5),
        levels_of(&[14, 3, 8, 13, 2], 3, true)
    );
    Ok(())
}

#[test]
fn max_steps_for_the_batch_and_per_row() -> anyhow::Result<()> {
    let never = vec![None, None];
    let mut model = Counting::new(vec![0, 9], vec![3, 1], never.clone());
    let out =
        Driver::new(greedy_driver().with_max_steps(4)).generate(&mut model, &Rows::first(2), 1)?;
    assert_eq!(out.lens, vec![4, 4]);
    assert_eq!(out.ar_steps, 4);
    assert_eq!(
        row_codes(&out.codes, 0, 4),
        levels_of(&[0, 3, 6, 9], 3, true)
    );

    let mut model = Counting::new(vec![0, 9], vec![3, 1], never);
    let rows = Rows::first(2).with_max_steps(vec![2, 5]);
    let out = Driver::new(greedy_driver().with_max_steps(6)).generate(&mut model, &rows, 1)?;
    assert_eq!(out.lens, vec![2, 5]);
    // The loop runs up to the largest row limit.
    assert_eq!(out.ar_steps, 5);
    assert_eq!(row_codes(&out.codes, 0, 2), levels_of(&[0, 3], 3, true));
    assert_eq!(
        row_codes(&out.codes, 1, 5),
        levels_of(&[9, 10, 11, 12, 13], 3, true)
    );
    Ok(())
}

#[test]
fn nar_never_emits_the_stop_token_even_when_it_is_the_likeliest() -> anyhow::Result<()> {
    let sampled = StageConfig::new(SamplerConfig {
        temperature: 1.5,
        ..Default::default()
    });
    let cfg = DriverConfig::new(greedy(), sampled).with_max_steps(40);
    for seed in 0..8 {
        let mut model = Counting::new(vec![1, 2, 3, 4], vec![1, 3, 5, 7], vec![None; 4]);
        model.levels = 8;
        let out = Driver::new(cfg.clone()).generate(&mut model, &Rows::first(4), seed)?;
        assert_eq!(out.lens, vec![40; 4]);
        let codes = out.codes.to_vec3::<u32>()?;
        // Level 0 comes from the AR; levels 1.. never hold the stop token (logit 9 vs 5).
        let nar: Vec<u32> = codes
            .iter()
            .flatten()
            .flat_map(|c| c[1..].to_vec())
            .collect();
        assert_eq!(nar.len(), 4 * 40 * 7);
        assert!(
            nar.iter().all(|&c| c < CODES),
            "seed {seed}: the NAR emitted the stop token"
        );
    }
    Ok(())
}

#[test]
fn nar_repetition_penalty_is_against_the_previous_level_before_each_position() -> anyhow::Result<()>
{
    let penalised = StageConfig::new(SamplerConfig {
        temperature: 0.0,
        repetition_penalty: 2.0,
        ..Default::default()
    });
    let cfg = DriverConfig::new(greedy(), penalised).with_max_steps(4);
    let mut model = Counting::new(vec![3], vec![0], vec![None]);
    model.nar = copy_or_next_rule;
    let out = Driver::new(cfg).generate(&mut model, &Rows::first(1), 0)?;
    // Level 0: 3 3 3 3. Level 1, position j sees level 0 before j: at j >= 1 copying 3 is
    // divided by 2^j (4 -> 2, 1, 0.5) and the next code 4 (logit 3) wins: 3 4 4 4.
    // Level 2 against 3 4 4 4: j=0 -> 3; j=1: 4 unseen -> 4; j=2: 4 seen once (4/2 < 3) -> 5;
    // j=3: 4 seen twice -> 5.
    let want = vec![vec![3, 3, 3], vec![3, 4, 4], vec![3, 4, 5], vec![3, 4, 5]];
    assert_eq!(row_codes(&out.codes, 0, 4), want);
    Ok(())
}

/// Smooth pseudo-random logits that depend on the row's own prompt, its last code and the step,
/// so that multinomial draws differ between rows and seeds.
struct Wavy {
    prompts: Vec<f32>,
    stop_at: Vec<usize>,
}

impl CodecLm for Wavy {
    fn device(&self) -> &Device {
        &Device::Cpu
    }

    fn vocab_size(&self) -> usize {
        VOCAB
    }

    fn levels(&self) -> usize {
        4
    }

    fn ar_step(&mut self, codes: &Tensor, _lens: &Tensor) -> candle_core::Result<Tensor> {
        let (batch, t) = codes.dims2()?;
        let codes = codes.to_vec2::<u32>()?;
        let mut flat = Vec::new();
        for (b, row) in codes.iter().enumerate() {
            let last = if t == 0 { 0.0 } else { row[t - 1] as f32 };
            for k in 0..VOCAB {
                flat.push(if k as u32 == STOP {
                    if t >= self.stop_at[b] {
                        20.0
                    } else {
                        -20.0
                    }
                } else {
                    2.0 * (self.prompts[b] * 1.3 + k as f32 * 0.7 + last * 0.11 + t as f32 * 0.5)
                        .sin()
                });
            }
        }
        Tensor::from_vec(flat, (batch, VOCAB), &Device::Cpu)
    }

    fn nar_level(
        &mut self,
        codes: &Tensor,
        _lens: &Tensor,
        level: usize,
    ) -> candle_core::Result<Tensor> {
        let (batch, t, _) = codes.dims3()?;
        let codes = codes.to_vec3::<u32>()?;
        let mut flat = Vec::new();
        for (b, row) in codes.iter().enumerate() {
            for (j, code) in row.iter().enumerate() {
                let prev = code[level - 1] as f32;
                for k in 0..VOCAB {
                    flat.push(if k as u32 == STOP {
                        20.0
                    } else {
                        2.0 * (self.prompts[b]
                            + k as f32 * 0.9
                            + prev * 0.37
                            + j as f32 * 0.05
                            + level as f32)
                            .sin()
                    });
                }
            }
        }
        Tensor::from_vec(flat, (batch, t, VOCAB), &Device::Cpu)
    }
}

fn sampled_driver() -> Driver {
    let ar = StageConfig::new(SamplerConfig {
        top_k: 8,
        repetition_penalty: 1.3,
        ..Default::default()
    });
    let nar = StageConfig::new(SamplerConfig {
        temperature: 0.9,
        repetition_penalty: 1.2,
        min_p: 0.02,
        ..Default::default()
    });
    Driver::new(
        DriverConfig::new(ar, nar)
            .with_max_steps(16)
            .with_stop_check_interval(3),
    )
}

#[test]
fn a_sequence_gives_the_same_codes_alone_and_inside_a_batch() -> anyhow::Result<()> {
    let driver = sampled_driver();
    // Sequence 7 (prompt 0.4, stops at step 4) inside a batch whose longest row has 9 codes.
    let mut batch = Wavy {
        prompts: vec![1.1, 0.4, 2.5],
        stop_at: vec![9, 4, 6],
    };
    let together = driver.generate(&mut batch, &Rows::new(vec![3, 7, 11]), 99)?;
    assert_eq!(together.lens, vec![9, 4, 6]);
    let mut alone = Wavy {
        prompts: vec![0.4],
        stop_at: vec![4],
    };
    let single = driver.generate(&mut alone, &Rows::new(vec![7]), 99)?;
    assert_eq!(single.lens, vec![4]);
    assert_eq!(single.codes.dims(), [1, 4, 4]);
    let want = row_codes(&together.codes, 1, 4);
    assert_eq!(row_codes(&single.codes, 0, 4), want);
    // Another batch order and company.
    let mut other = Wavy {
        prompts: vec![2.5, 0.4],
        stop_at: vec![6, 4],
    };
    let reordered = driver.generate(&mut other, &Rows::new(vec![11, 7]), 99)?;
    assert_eq!(row_codes(&reordered.codes, 1, 4), want);
    assert_eq!(
        row_codes(&reordered.codes, 0, 6),
        row_codes(&together.codes, 2, 6)
    );
    // The codes are drawn, not fixed: another seed changes them.
    let reseeded = driver.generate(&mut alone, &Rows::new(vec![7]), 100)?;
    assert_ne!(row_codes(&reseeded.codes, 0, 4), want);
    Ok(())
}

#[test]
fn per_sequence_temperature_in_both_stages() -> anyhow::Result<()> {
    // Row 0 is greedy (temperature 0), row 1 nearly uniform (temperature 100).
    let ar = greedy().per_sequence(Knob::Temperature, vec![0.0, 100.0]);
    let nar = greedy().per_sequence(Knob::Temperature, vec![0.0, 100.0]);
    let cfg = DriverConfig::new(ar, nar).with_max_steps(12);
    let mut model = Counting::new(vec![5, 5], vec![2, 2], vec![None, None]);
    let out = Driver::new(cfg).generate(&mut model, &Rows::first(2), 3)?;
    // Row 1 may draw the stop token early; row 0 never does.
    assert_eq!(out.lens[0], 12);
    let greedy_codes = levels_of(&model.expected_level0(0, 12), 3, true);
    assert_eq!(row_codes(&out.codes, 0, 12), greedy_codes);
    // Row 1 (all of it, padding included) is not the greedy sequence.
    assert_ne!(out.codes.to_vec3::<u32>()?[1], greedy_codes);
    Ok(())
}

#[test]
fn padded_output_marks_positions_past_each_length() -> anyhow::Result<()> {
    let mut model = Counting::new(vec![3, 14], vec![1, 5], vec![Some(1), Some(3)]);
    let out = Driver::new(greedy_driver()).generate(&mut model, &Rows::first(2), 1)?;
    let padded = out.padded_i64(-1)?.to_vec3::<i64>()?;
    assert_eq!(
        padded[0],
        vec![vec![3, 4, 5], vec![-1, -1, -1], vec![-1, -1, -1]]
    );
    assert_eq!(padded[1][2], vec![8, 9, 10]);
    Ok(())
}

#[test]
fn bad_requests_are_errors_before_any_step() {
    let run = |cfg: DriverConfig, rows: Rows| {
        let mut model = Counting::new(vec![0; 2], vec![1; 2], vec![None; 2]);
        let r = Driver::new(cfg).generate(&mut model, &rows, 0);
        assert_eq!(model.ar_calls, 0, "no step may run on a bad request");
        r.unwrap_err().to_string()
    };
    let e = run(greedy_driver(), Rows::new(vec![4, 4]));
    assert!(e.contains("appears twice"), "{e}");
    let e = run(greedy_driver(), Rows::first(2).with_max_steps(vec![3, 40]));
    assert!(e.contains("exceeds"), "{e}");
    let e = run(greedy_driver(), Rows::first(0));
    assert!(e.contains("no rows"), "{e}");
    let e = run(greedy_driver().with_stop_token(Some(17)), Rows::first(2));
    assert!(e.contains("stop token 17"), "{e}");
    let bad_ar = StageConfig::new(SamplerConfig {
        top_p: 2.0,
        ..Default::default()
    });
    let e = run(DriverConfig::new(bad_ar, greedy()), Rows::first(2));
    assert!(e.contains("top_p"), "{e}");
    let short = greedy().per_sequence(Knob::TopK, vec![5.0]);
    let e = run(DriverConfig::new(short, greedy()), Rows::first(2));
    assert!(e.contains("1 values for 2 sequences"), "{e}");
    let e = run(
        greedy_driver().with_max_steps(1 << 20),
        Rows::new(vec![5000, 1]),
    );
    assert!(e.contains("overflows"), "{e}");
}

/// Returns NaN logits at the first step, or logits of the wrong width.
struct Broken {
    nan: bool,
}

impl CodecLm for Broken {
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
        let batch = codes.dim(0)?;
        if self.nan {
            Tensor::full(f32::NAN, (batch, VOCAB), &Device::Cpu)
        } else {
            Tensor::zeros((batch, VOCAB + 1), candle_core::DType::F32, &Device::Cpu)
        }
    }
    fn nar_level(
        &mut self,
        _codes: &Tensor,
        _lens: &Tensor,
        _level: usize,
    ) -> candle_core::Result<Tensor> {
        candle_core::bail!("not reached")
    }
}

#[test]
fn bad_logits_from_the_model_are_errors() {
    let driver = Driver::new(greedy_driver());
    let e = driver
        .generate(&mut Broken { nan: true }, &Rows::first(2), 0)
        .unwrap_err();
    assert!(matches!(e, DriverError::Sampler(_)), "{e}");
    assert!(e.to_string().contains("NaN"), "{e}");
    let e = driver
        .generate(&mut Broken { nan: false }, &Rows::first(2), 0)
        .unwrap_err();
    assert!(e.to_string().contains("[2, 18]"), "{e}");
}

/// The same seed gives the same codes on repeated runs and whatever the size of the thread pool
/// the CPU kernels run their rows on.
#[test]
fn codes_do_not_depend_on_repeats_or_the_thread_count() -> anyhow::Result<()> {
    let driver = sampled_driver();
    let run = |threads: usize| -> anyhow::Result<Vec<Vec<u32>>> {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()?;
        pool.install(|| {
            let mut model = Wavy {
                prompts: vec![1.1, 0.4, 2.5],
                stop_at: vec![9, 4, 6],
            };
            let g = driver.generate(&mut model, &Rows::new(vec![3, 7, 11]), 5)?;
            Ok((0..3)
                .flat_map(|b| row_codes(&g.codes, b, g.lens[b]))
                .collect())
        })
    };
    let one = run(1)?;
    assert_eq!(run(1)?, one, "a repeated run changed the codes");
    assert_eq!(run(2)?, one, "two threads changed the codes");
    assert_eq!(run(4)?, one, "four threads changed the codes");
    Ok(())
}
