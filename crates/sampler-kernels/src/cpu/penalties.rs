//! Repetition (divide or sign-aware), frequency / presence and length penalties, then the
//! vocabulary bias, in one gather-scatter per row.
//!
//! Only the history window of a row is visited: occurrences are accumulated per token in
//! vocabulary-sized per-thread scratch rows (zero between rows: every entry written is reset
//! when its token is applied), then each distinct token of the window is penalised once. The
//! "divide" form accumulates `ln(penalty) + decay * ln(D)` in history order and divides by its
//! exponential, the plain path's own f32 arithmetic, so both paths give the same values.

use std::cell::RefCell;

use candle_core::{bail, Result};
use rayon::prelude::*;

use crate::penalty_param as pp;
use crate::PENALTY_PARAMS;

/// Per-thread scratch rows, all zero between rows.
#[derive(Default)]
struct Scratch {
    /// Summed log-divisors of the "divide" form.
    log_div: Vec<f32>,
    /// Occurrences in the window.
    counts: Vec<u32>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

/// One row's parameters (see [`crate::penalty_param`]).
struct RowParams {
    repetition: f32,
    decay: f32,
    window: f32,
    sign_aware: bool,
    frequency: f32,
    presence: f32,
    length: f32,
    stop_token: f32,
}

impl RowParams {
    fn new(p: &[f32]) -> Self {
        Self {
            repetition: p[pp::REPETITION],
            decay: p[pp::DECAY],
            window: p[pp::WINDOW],
            sign_aware: p[pp::SIGN_AWARE] >= 0.5,
            frequency: p[pp::FREQUENCY],
            presence: p[pp::PRESENCE],
            length: p[pp::LENGTH],
            stop_token: p[pp::STOP_TOKEN],
        }
    }
}

/// Applies the penalties of one row to `y` (a copy of its logits). `hist` is the row's valid
/// history, `hist.len()` its length.
fn penalize_row(
    y: &mut [f32],
    hist: &[u32],
    p: &RowParams,
    s: &mut Scratch,
    row: usize,
) -> Result<()> {
    let vocab = y.len();
    let len = hist.len();
    // Position i is at distance D = len - i; it counts when window == 0 or D < window.
    let window = p.window.max(0.0) as usize;
    let start = if window == 0 {
        0
    } else {
        (len + 1).saturating_sub(window)
    };
    let recent = &hist[start..];
    if let Some(&bad) = recent.iter().find(|&&t| t as usize >= vocab) {
        bail!("row {row}: history token id {bad} is out of range for vocabulary size {vocab}");
    }
    let divide = !p.sign_aware && (p.repetition != 1.0 || p.decay != 0.0);
    let sign_aware = p.sign_aware && p.repetition != 1.0;
    let additive = p.frequency != 0.0 || p.presence != 0.0;
    if divide || sign_aware || additive {
        if s.log_div.len() < vocab {
            s.log_div.resize(vocab, 0.0);
            s.counts.resize(vocab, 0);
        }
        if divide {
            let log_rep = p.repetition.ln();
            for (j, &t) in recent.iter().enumerate() {
                let d = (len - start - j) as f32;
                s.log_div[t as usize] += d.max(1.0).ln() * p.decay + log_rep;
            }
        }
        if sign_aware || additive {
            for &t in recent {
                s.counts[t as usize] += 1;
            }
        }
        // Each distinct token is handled at its first occurrence, which resets its scratch
        // entries; later occurrences find zeros and leave it alone.
        for &t in recent {
            let t = t as usize;
            let log_div = std::mem::take(&mut s.log_div[t]);
            if log_div != 0.0 {
                y[t] /= log_div.exp();
            }
            let count = std::mem::take(&mut s.counts[t]);
            if count > 0 {
                if sign_aware {
                    y[t] = if y[t] > 0.0 {
                        y[t] / p.repetition
                    } else {
                        y[t] * p.repetition
                    };
                }
                if additive {
                    y[t] -= count as f32 * p.frequency + p.presence;
                }
            }
        }
    }
    if p.length != 0.0 {
        let stop = p.stop_token;
        if !(stop >= 0.0 && stop < vocab as f32 && stop.fract() == 0.0) {
            bail!("row {row}: stop token {stop} is not an id below the vocabulary size {vocab}");
        }
        y[stop as usize] /= ((len as f32 + 1.0).ln() * p.length).exp();
    }
    Ok(())
}

/// `[rows, vocab]` penalised logits.
#[allow(clippy::too_many_arguments)]
pub(crate) fn penalties(
    logits: &[f32],
    tokens: &[u32],
    lens: &[u32],
    params: &[f32],
    bias: Option<&[f32]>,
    rows: usize,
    vocab: usize,
    width: usize,
) -> Result<Vec<f32>> {
    if let Some(b) = bias {
        if let Some((id, v)) = b
            .iter()
            .enumerate()
            .find(|(_, v)| v.is_nan() || **v == f32::INFINITY)
        {
            bail!("vocab bias holds {v} at id {id} (only finite values and -inf are allowed)");
        }
    }
    let mut out = vec![0f32; rows * vocab];
    out.par_chunks_mut(vocab)
        .enumerate()
        .try_for_each(|(r, y)| {
            y.copy_from_slice(&logits[r * vocab..(r + 1) * vocab]);
            let len = lens[r] as usize;
            if len > width {
                bail!("row {r}: history length {len} exceeds the history width {width}");
            }
            let hist = &tokens[r * width..r * width + len];
            let p = RowParams::new(&params[r * PENALTY_PARAMS..(r + 1) * PENALTY_PARAMS]);
            SCRATCH.with(|s| penalize_row(y, hist, &p, &mut s.borrow_mut(), r))?;
            if let Some(b) = bias {
                y.iter_mut().zip(b).for_each(|(v, b)| *v += b);
            }
            Ok(())
        })?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NINF: f32 = f32::NEG_INFINITY;

    /// Penalty parameters with everything off.
    fn off() -> [f32; PENALTY_PARAMS] {
        let mut p = [0f32; PENALTY_PARAMS];
        p[pp::REPETITION] = 1.0;
        p
    }

    fn with(changes: &[(usize, f32)]) -> [f32; PENALTY_PARAMS] {
        let mut p = off();
        for &(col, v) in changes {
            p[col] = v;
        }
        p
    }

    /// One row with history `hist` (all valid).
    fn run(x: &[f32], hist: &[u32], p: [f32; PENALTY_PARAMS]) -> Vec<f32> {
        penalties(
            x,
            hist,
            &[hist.len() as u32],
            &p,
            None,
            1,
            x.len(),
            hist.len(),
        )
        .unwrap()
    }

    fn assert_close(got: &[f32], want: &[f32]) {
        assert_eq!(got.len(), want.len());
        for (a, b) in got.iter().zip(want) {
            if b.is_infinite() {
                assert_eq!(a, b, "got {got:?}, want {want:?}");
            } else {
                assert!(
                    (a - b).abs() <= 1e-6 * b.abs().max(1.0),
                    "got {got:?}, want {want:?}"
                );
            }
        }
    }

    #[test]
    fn everything_off_is_the_identity() {
        let x = [1.0, NINF, -2.0];
        assert_eq!(run(&x, &[0, 1, 2, 0], off()), x.to_vec());
    }

    #[test]
    fn divide_once_per_occurrence_whatever_the_sign() {
        // Token 1 twice, token 0 once: 3 / 2, -2 / 4.
        let p = with(&[(pp::REPETITION, 2.0), (pp::WINDOW, 75.0)]);
        assert_close(
            &run(&[3.0, -2.0, 4.0, 1.0], &[1, 0, 1], p),
            &[1.5, -0.5, 4.0, 1.0],
        );
    }

    #[test]
    fn decay_uses_distance_from_the_end() {
        // History [0, 1, 2]: distances 3, 2, 1; divisor 2 * D^0.5.
        let p = with(&[(pp::REPETITION, 2.0), (pp::DECAY, 0.5)]);
        let s = |d: f32| 8.0 / (2.0 * d.sqrt());
        assert_close(&run(&[8.0; 3], &[0, 1, 2], p), &[s(3.0), s(2.0), s(1.0)]);
        // Decay alone (penalty 1) still divides by D^decay.
        let p = with(&[(pp::DECAY, 1.0)]);
        assert_close(&run(&[6.0; 3], &[0, 1, 2], p), &[2.0, 3.0, 6.0]);
    }

    #[test]
    fn window_excludes_distances_at_or_beyond_it() {
        // Window 2: only distance 1 (the last token) counts.
        let p = with(&[(pp::REPETITION, 3.0), (pp::WINDOW, 2.0)]);
        assert_close(&run(&[6.0; 3], &[0, 1, 2], p), &[6.0, 6.0, 2.0]);
        // Window 3: distances 1 and 2.
        let p = with(&[(pp::REPETITION, 3.0), (pp::WINDOW, 3.0)]);
        assert_close(&run(&[6.0; 3], &[0, 1, 2], p), &[6.0, 2.0, 2.0]);
    }

    #[test]
    fn entries_past_the_length_are_ignored() {
        // Width 2; row 0 has one valid token (1), row 1 none; the padding 7 is out of the
        // vocabulary and must not be read.
        let x = [6.0, 6.0, 6.0, 6.0];
        let p: Vec<f32> = with(&[(pp::REPETITION, 2.0)]).repeat(2);
        let y = penalties(&x, &[1, 7, 7, 7], &[1, 0], &p, None, 2, 2, 2).unwrap();
        assert_close(&y, &[6.0, 3.0, 6.0, 6.0]);
    }

    #[test]
    fn sign_aware_once_per_distinct_token() {
        // Token 1 (negative) three times: multiplied once; token 0: divided once.
        let p = with(&[
            (pp::REPETITION, 2.0),
            (pp::SIGN_AWARE, 1.0),
            (pp::DECAY, 5.0),
        ]);
        assert_close(
            &run(&[3.0, -2.0, 4.0, 1.0], &[1, 0, 1, 1], p),
            &[1.5, -4.0, 4.0, 1.0],
        );
    }

    #[test]
    fn frequency_and_presence_subtract_per_count() {
        // Token 0 twice: 1 - (2 * 0.5 + 0.25); token 2 once: 1 - (0.5 + 0.25).
        let p = with(&[(pp::FREQUENCY, 0.5), (pp::PRESENCE, 0.25)]);
        assert_close(&run(&[1.0; 3], &[0, 0, 2], p), &[-0.25, 1.0, 0.25]);
    }

    #[test]
    fn repetition_comes_before_frequency() {
        // 4 / 2 - 1 = 1 (the other order would give 1.5).
        let p = with(&[(pp::REPETITION, 2.0), (pp::FREQUENCY, 1.0)]);
        assert_close(&run(&[4.0], &[0], p), &[1.0]);
    }

    #[test]
    fn length_divides_the_stop_token() {
        // Lengths 3 and 0: (3 + 1)^0.5 = 2 and 1.
        let x = [1.0, 2.0, 8.0, 1.0, 2.0, -8.0];
        let p: Vec<f32> = with(&[(pp::LENGTH, 0.5), (pp::STOP_TOKEN, 2.0)]).repeat(2);
        let y = penalties(&x, &[0, 1, 0, 0, 0, 0], &[3, 0], &p, None, 2, 3, 3).unwrap();
        assert_close(&y, &[1.0, 2.0, 4.0, 1.0, 2.0, -8.0]);
    }

    #[test]
    fn bias_is_added_last_and_bans() {
        let bias = [-2.0, 3.0, NINF];
        let p = with(&[(pp::REPETITION, 2.0)]);
        let y = penalties(&[1.0, NINF, 0.5], &[0], &[1], &p, Some(&bias), 1, 3, 1).unwrap();
        // Token 0: 1 / 2 - 2.
        assert_close(&y, &[-1.5, NINF, NINF]);
    }

    #[test]
    fn neg_inf_stays_neg_inf() {
        let p = with(&[
            (pp::REPETITION, 2.0),
            (pp::SIGN_AWARE, 1.0),
            (pp::FREQUENCY, 1.0),
            (pp::PRESENCE, 1.0),
            (pp::LENGTH, 1.0),
            (pp::STOP_TOKEN, 0.0),
        ]);
        assert_eq!(run(&[NINF, 1.0], &[0, 0], p)[0], NINF);
        let p = with(&[(pp::REPETITION, 0.5), (pp::DECAY, 2.0)]);
        assert_eq!(run(&[NINF, 1.0], &[0, 0], p)[0], NINF);
    }

    #[test]
    fn bad_input_is_an_error() {
        let p = with(&[(pp::REPETITION, 2.0)]);
        let err = penalties(&[1.0, 2.0], &[2], &[1], &p, None, 1, 2, 1).unwrap_err();
        assert!(err.to_string().contains("out of range"), "{err}");
        let err = penalties(&[1.0, 2.0], &[0], &[2], &p, None, 1, 2, 1).unwrap_err();
        assert!(err.to_string().contains("exceeds"), "{err}");
        let p = with(&[(pp::LENGTH, 1.0), (pp::STOP_TOKEN, 2.0)]);
        assert!(penalties(&[1.0, 2.0], &[0], &[1], &p, None, 1, 2, 1).is_err());
        let bias = [0.0, f32::NAN];
        assert!(penalties(&[1.0, 2.0], &[0], &[1], &off(), Some(&bias), 1, 2, 1).is_err());
    }

    #[test]
    fn scratch_is_clean_between_rows() {
        // The same thread runs both calls; the second sees no trace of the first's history.
        let p = with(&[(pp::REPETITION, 2.0), (pp::FREQUENCY, 1.0)]);
        let a = run(&[4.0, 4.0], &[0, 0, 1], p);
        assert_close(&a, &[4.0 / 4.0 - 2.0, 4.0 / 2.0 - 1.0]);
        assert_close(&run(&[4.0, 4.0], &[], p), &[4.0, 4.0]);
    }
}
