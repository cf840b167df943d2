//! min-p -> top-k -> top-p -> temperature (dynamic or plain) -> top-n-sigma, and the draw.
//!
//! Each row's finite logits are gathered once into a candidate list (value, id, exp(value - max));
//! every stage then only shrinks that list. Thresholds come from selection
//! (`select_nth_unstable_by`, O(n)), and the top-p cut from a bisection whose every probe is a
//! selection in the (value descending, id ascending) order, so a tie group straddling the cut is
//! split by id exactly as the plain path splits it, in O(n) expected time. Sums run in f64.
//! Element-wise steps use the plain path's f32 formulas, so values agree to rounding.

use std::cell::RefCell;
use std::cmp::Ordering;

use candle_core::{bail, Result};
use rayon::prelude::*;

use crate::filter_param as fp;
use crate::{philox_uniform, FILTER_PARAMS};

/// A finite logit of the row: its current value, its id and `exp(value - row max)`.
#[derive(Clone, Copy, Debug)]
struct Cand {
    v: f32,
    id: u32,
    e: f32,
}

thread_local! {
    /// The candidates of the row being processed by this thread.
    static CANDS: RefCell<Vec<Cand>> = const { RefCell::new(Vec::new()) };
    /// A vocabulary-sized row of exponentials, for draws over many kept tokens.
    static DENSE: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// One row's parameters (see [`crate::filter_param`]).
struct RowParams {
    min_p: f32,
    min_tokens: f32,
    top_k: f32,
    top_p: f32,
    t: f32,
    t_min: f32,
    n_sigma: f32,
    greedy: bool,
}

impl RowParams {
    fn new(p: &[f32]) -> Self {
        Self {
            min_p: p[fp::MIN_P],
            min_tokens: p[fp::MIN_TOKENS],
            top_k: p[fp::TOP_K],
            top_p: p[fp::TOP_P],
            t: p[fp::TEMPERATURE],
            t_min: p[fp::MIN_TEMPERATURE],
            n_sigma: p[fp::TOP_N_SIGMA],
            greedy: p[fp::GREEDY] >= 0.5,
        }
    }

    /// The dynamic temperature's condition (SPEC §4), in the plain path's f32 arithmetic.
    fn dynamic(&self) -> bool {
        (self.t - self.t_min).abs() >= 0.001 && self.t_min >= 0.0
    }
}

fn by_value_desc(a: &Cand, b: &Cand) -> Ordering {
    // Values are finite; partial_cmp also makes -0 and +0 tie, as tensor comparisons do.
    b.v.partial_cmp(&a.v).unwrap_or(Ordering::Equal)
}

/// Value descending, then id ascending: the order of top-p (SPEC §4).
fn by_rank(a: &Cand, b: &Cand) -> Ordering {
    by_value_desc(a, b).then(a.id.cmp(&b.id))
}

/// The k-th largest value (k clamped to [1, len], ties counted); reorders `c`.
fn kth_largest(c: &mut [Cand], k: usize) -> f32 {
    let k = k.clamp(1, c.len());
    c.select_nth_unstable_by(k - 1, by_value_desc).1.v
}

fn max_value(c: &[Cand]) -> f32 {
    c.iter().fold(f32::NEG_INFINITY, |m, x| m.max(x.v))
}

fn exp_sum(c: &[Cand]) -> f64 {
    c.iter().map(|x| x.e as f64).sum()
}

/// Half-width, in logits, of the band around min-p's cut `ln(p)` (relative to the row maximum)
/// where f32 rounding of the plain path's `e / s >= p / s` test decides. A row with a logit in
/// the band takes the exact path; outside it the cut in logit space decides the same way.
const MIN_P_BAND: f32 = 1e-3;

/// Lanes of the chunked row passes: independent accumulators the compiler keeps in vector
/// registers (a plain fold over f32 compares is sequential and stays scalar).
const LANES: usize = 16;

/// The row maximum, after checking that the row holds no NaN or +inf. One branch-free pass.
fn checked_max(x: &[f32], row: usize) -> Result<f32> {
    let mut m = [f32::NEG_INFINITY; LANES];
    // `v < inf` is false for NaN and +inf alike.
    let mut ok = [true; LANES];
    let chunks = x.chunks_exact(LANES);
    let tail = chunks.remainder();
    for ch in chunks {
        for j in 0..LANES {
            m[j] = if ch[j] > m[j] { ch[j] } else { m[j] };
            ok[j] &= ch[j] < f32::INFINITY;
        }
    }
    let mut max = m
        .iter()
        .fold(f32::NEG_INFINITY, |a, &b| if b > a { b } else { a });
    let mut bad = ok.iter().any(|o| !o);
    for &v in tail {
        max = if v > max { v } else { max };
        bad |= v.is_nan() || v == f32::INFINITY;
    }
    if bad {
        let (i, v) = x
            .iter()
            .enumerate()
            .find(|(_, v)| v.is_nan() || **v == f32::INFINITY)
            .unwrap_or((0, &f32::NAN));
        bail!("row {row}: logit {v} at id {i} (logits must not hold NaN or +inf)");
    }
    Ok(max)
}

/// Appends every logit `>= floor` of `x` (ids from 0) to `c`. A chunk without one is skipped
/// after one vectorised compare.
fn gather_at_least(x: &[f32], floor: f32, c: &mut Vec<Cand>) {
    let mut push = |base: usize, xs: &[f32]| {
        for (j, &v) in xs.iter().enumerate() {
            if v >= floor {
                c.push(Cand {
                    v,
                    id: (base + j) as u32,
                    e: 0.0,
                });
            }
        }
    };
    let chunks = x.chunks_exact(LANES);
    let tail_at = x.len() - chunks.remainder().len();
    for (k, ch) in chunks.enumerate() {
        let mut any = false;
        for &v in ch {
            any |= v >= floor;
        }
        if any {
            push(k * LANES, ch);
        }
    }
    push(tail_at, &x[tail_at..]);
}

/// Min-p's fast path: only logits near the top survive min-p, so gather just those without an
/// exponential per logit. A logit with `l - max >= ln(p)` is above the cut; when fewer than
/// `min_tokens` are, the gathering threshold moves down until it holds the `min_tokens` highest
/// logits, and the protection keeps every value >= the k-th largest of them, as in the exact
/// path. Returns false, with `c` cleared, when the exact path must decide: some logit lies in
/// the rounding band around the cut, or the row holds fewer than `min_tokens` finite logits
/// within 64 of its maximum.
fn gather_min_p(x: &[f32], m: f32, p: &RowParams, c: &mut Vec<Cand>) -> bool {
    let cut = p.min_p.ln();
    let (lo, hi) = (cut - MIN_P_BAND, cut + MIN_P_BAND);
    let k = (p.min_tokens.max(0.0) as usize).max(1);
    let mut threshold = lo;
    loop {
        c.clear();
        // Gather a little below `m + threshold` (float rounding of the sum), then keep exactly
        // the logits with `v - m >= threshold`, the form the band test and the exact path use.
        let slack = (m.abs() + threshold.abs()) * 1e-6 + f32::MIN_POSITIVE;
        gather_at_least(x, m + threshold - slack, c);
        c.retain(|x| x.v - m >= threshold);
        if c.iter().any(|x| x.v - m >= lo && x.v - m < hi) {
            c.clear();
            return false;
        }
        c.iter_mut().for_each(|x| x.e = (x.v - m).exp());
        if c.len() >= k {
            break;
        }
        if threshold < lo - 64.0 {
            c.clear();
            return false;
        }
        threshold = threshold * 2.0 - 1.0;
    }
    let above = |x: &Cand| x.v - m >= hi;
    if c.iter().filter(|x| above(x)).count() < k {
        let vk = kth_largest(c, k);
        c.retain(|x| above(x) || x.v >= vk);
    } else {
        c.retain(above);
    }
    true
}

/// Runs the segment on row `x`, leaving the kept candidates, with their processed values, in
/// `c` (in no particular order). A row without finite logits leaves `c` empty.
fn filter_row(x: &[f32], p: &RowParams, c: &mut Vec<Cand>, row: usize) -> Result<()> {
    c.clear();
    let m = checked_max(x, row)?;
    if m == f32::NEG_INFINITY {
        return Ok(());
    }
    let dynamic = p.dynamic();
    if !(p.min_p > 0.0 && gather_min_p(x, m, p, c)) {
        filter_row_from_all(x, m, p, c);
    }
    if p.top_k > 0.0 {
        // `as` saturates; a k in (0, 1) selects like k = 1, as the plain path's count test does.
        let k = p.top_k as usize;
        if k < c.len() {
            let vk = kth_largest(c, k);
            c.retain(|x| x.v >= vk);
        }
    }
    if p.top_p < 1.0 {
        top_p(c, p.top_p);
    }
    let divisor = if dynamic {
        let p_max = 1.0 / exp_sum(c) as f32;
        let sigmoid = (p_max * -10.0 + 5.0).exp() + 1.0;
        p.t - (p.t - p.t_min) / sigmoid
    } else if p.t > 0.0 {
        p.t
    } else {
        1.0
    };
    if divisor != 1.0 {
        c.iter_mut().for_each(|x| x.v /= divisor);
    }
    if p.n_sigma > 0.0 {
        top_n_sigma(c, p.n_sigma);
    }
    Ok(())
}

/// The exact path of the stages up to min-p: every finite logit is a candidate.
fn filter_row_from_all(x: &[f32], m: f32, p: &RowParams, c: &mut Vec<Cand>) {
    c.extend(
        x.iter()
            .enumerate()
            .filter(|(_, v)| **v != f32::NEG_INFINITY)
            .map(|(i, &v)| Cand {
                v,
                id: i as u32,
                e: 0.0,
            }),
    );
    if p.min_p > 0.0 || p.top_p < 1.0 || p.dynamic() {
        // The row maximum survives every stage before the temperature, so these exponentials
        // stay valid (relative to the current maximum) until then.
        c.iter_mut().for_each(|x| x.e = (x.v - m).exp());
    }
    if p.min_p > 0.0 {
        min_p(c, p.min_p, p.min_tokens);
    }
}

/// Min-p: keep prob >= p * max prob, plus every value >= the `min_tokens`-th largest.
fn min_p(c: &mut Vec<Cand>, p: f32, min_tokens: f32) {
    let s = exp_sum(c) as f32;
    // The plain path's f32 test: prob = e / s against (max prob = 1 / s) * p.
    let floor = (1.0 / s) * p;
    let above = |x: &Cand| x.e / s >= floor;
    let kept = c.iter().filter(|x| above(x)).count();
    let k = (min_tokens.max(0.0) as usize).clamp(1, c.len());
    // The kept set is an upper set of values: with at least k members it already holds every
    // value >= the k-th largest, and the protection changes nothing.
    if kept >= k {
        c.retain(above);
    } else {
        let vk = kth_largest(c, k);
        c.retain(|x| above(x) || x.v >= vk);
    }
}

/// Buckets of one top-p histogram level.
const TOP_P_BUCKETS: usize = 1024;
/// A window this small is sorted instead of bucketed.
const TOP_P_SORTED: usize = 256;

/// Top-p: in (value desc, id asc) order, keep a candidate when the mass before it is <= p.
///
/// The last kept candidate is found without sorting the row: a histogram of the window's mass
/// over value buckets (highest values first) locates the bucket holding it; buckets above are
/// kept whole, buckets below dropped, and the search goes on inside that bucket with its own
/// value range, until the window is small enough to sort or is one tie group, which is split
/// by id. Each level is one pass over its window, and the first window is usually the only
/// large one. Finally every candidate ranked after the last kept one is removed.
fn top_p(c: &mut Vec<Cand>, p: f32) {
    let budget = p.max(0.0) as f64 * exp_sum(c);
    // c[..m] is the window; every candidate ranked before it is kept, with mass `kept_mass`
    // (<= budget, so the window's first candidate is kept too); every one after it dropped.
    let mut m = c.len();
    let mut kept_mass = 0f64;
    let last = loop {
        let w = &mut c[..m];
        if m <= TOP_P_SORTED {
            w.sort_unstable_by(by_rank);
            let mut last = w[0];
            for x in w.iter() {
                if kept_mass > budget {
                    break;
                }
                kept_mass += x.e as f64;
                last = *x;
            }
            break last;
        }
        let (lo, hi) = w
            .iter()
            .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), x| {
                (lo.min(x.v), hi.max(x.v))
            });
        if lo == hi {
            // One tie group, all of one probability: the first n by id are kept.
            let e = w[0].e as f64;
            let mut n = 0;
            while n < m && kept_mass <= budget {
                kept_mass += e;
                n += 1;
            }
            break *w.select_nth_unstable_by_key(n - 1, |x| x.id).1;
        }
        let scale = TOP_P_BUCKETS as f64 / (hi as f64 - lo as f64);
        let bucket = |v: f32| (((hi as f64 - v as f64) * scale) as usize).min(TOP_P_BUCKETS - 1);
        let mut mass = [0f64; TOP_P_BUCKETS];
        let mut count = [0u32; TOP_P_BUCKETS];
        for x in w.iter() {
            let b = bucket(x.v);
            mass[b] += x.e as f64;
            count[b] += 1;
        }
        // The lowest non-empty bucket whose first candidate is still kept.
        let mut target = 0;
        let mut before = kept_mass;
        let mut target_before = kept_mass;
        for b in 0..TOP_P_BUCKETS {
            if count[b] == 0 {
                continue;
            }
            if before > budget {
                break;
            }
            target = b;
            target_before = before;
            before += mass[b];
        }
        kept_mass = target_before;
        let mut k = 0;
        for i in 0..m {
            if bucket(w[i].v) == target {
                w.swap(i, k);
                k += 1;
            }
        }
        m = k;
    };
    c.retain(|x| by_rank(x, &last) != Ordering::Greater);
}

/// Top-n-sigma: keep values >= max - n * std (unbiased, N - 1) of the row's finite values.
fn top_n_sigma(c: &mut Vec<Cand>, n: f32) {
    let count = c.len() as f64;
    let mean = c.iter().map(|x| x.v as f64).sum::<f64>() / count;
    let var = c.iter().map(|x| (x.v as f64 - mean).powi(2)).sum::<f64>() / (count - 1.0).max(1.0);
    let cut = max_value(c) as f64 - var.sqrt() * n as f64;
    c.retain(|x| x.v as f64 >= cut);
}

/// The draw over the processed candidates (non-empty): (token, its probability).
fn draw_row(
    c: &mut [Cand],
    greedy: bool,
    u: f32,
    vocab: usize,
    dense: &mut Vec<f32>,
) -> (u32, f32) {
    let m = max_value(c);
    c.iter_mut().for_each(|x| x.e = (x.v - m).exp());
    let total = exp_sum(c);
    let prob = |e: f32| (e as f64 / total) as f32;
    if greedy {
        let best = c
            .iter()
            .filter(|x| x.v == m)
            .min_by_key(|x| x.id)
            .unwrap_or(&c[0]);
        return (best.id, prob(best.e));
    }
    // The smallest id j with sum(e[..=j]) > u * total, walking ids in order; zeros (filtered
    // or underflowed tokens) never move the sum, so they are never the answer. If rounding
    // leaves the target unreached, the last token of positive probability is it.
    let target = u as f64 * total;
    let mut cum = 0f64;
    let mut last = (c[0].id, c[0].e);
    let mut step = |id: u32, e: f32| -> bool {
        if e > 0.0 {
            cum += e as f64;
            last = (id, e);
        }
        e > 0.0 && cum > target
    };
    // Few survivors: sort them by id. Many: walk a dense row of the vocabulary instead.
    if c.len().saturating_mul(16) <= vocab {
        c.sort_unstable_by_key(|x| x.id);
        for x in c.iter() {
            if step(x.id, x.e) {
                break;
            }
        }
    } else {
        dense.clear();
        dense.resize(vocab, 0.0);
        for x in c.iter() {
            dense[x.id as usize] = x.e;
        }
        for (id, &e) in dense.iter().enumerate() {
            if step(id as u32, e) {
                break;
            }
        }
    }
    (last.0, prob(last.1))
}

/// `[rows, vocab]` processed logits.
pub(crate) fn filter(
    logits: &[f32],
    params: &[f32],
    rows: usize,
    vocab: usize,
) -> Result<Vec<f32>> {
    let mut out = vec![0f32; rows * vocab];
    out.par_chunks_mut(vocab)
        .enumerate()
        .try_for_each(|(r, y)| {
            let x = &logits[r * vocab..(r + 1) * vocab];
            let p = RowParams::new(&params[r * FILTER_PARAMS..(r + 1) * FILTER_PARAMS]);
            CANDS.with(|cands| {
                let mut c = cands.borrow_mut();
                filter_row(x, &p, &mut c, r)?;
                y.fill(f32::NEG_INFINITY);
                for k in c.iter() {
                    y[k.id as usize] = k.v;
                }
                Ok::<(), candle_core::Error>(())
            })
        })?;
    Ok(out)
}

/// `[rows, 2]`: (token id as f32, its probability) per row.
pub(crate) fn sample(
    logits: &[f32],
    params: &[f32],
    row_ids: &[u32],
    rows: usize,
    vocab: usize,
    seed: u64,
    step: u64,
) -> Result<Vec<f32>> {
    let mut out = vec![0f32; rows * 2];
    out.par_chunks_mut(2).enumerate().try_for_each(|(r, o)| {
        let x = &logits[r * vocab..(r + 1) * vocab];
        let p = RowParams::new(&params[r * FILTER_PARAMS..(r + 1) * FILTER_PARAMS]);
        CANDS.with(|cands| {
            DENSE.with(|dense| {
                let mut c = cands.borrow_mut();
                filter_row(x, &p, &mut c, r)?;
                if c.is_empty() {
                    bail!("fused_sample: row {r} has every logit equal to -inf");
                }
                let u = philox_uniform(seed, row_ids[r], step);
                let (token, prob) = draw_row(&mut c, p.greedy, u, vocab, &mut dense.borrow_mut());
                o[0] = token as f32;
                o[1] = prob;
                Ok(())
            })
        })
    })?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NINF: f32 = f32::NEG_INFINITY;

    /// Filter parameters with everything off (temperature 1, not dynamic, multinomial).
    fn off() -> [f32; FILTER_PARAMS] {
        let mut p = [0f32; FILTER_PARAMS];
        p[fp::MIN_TOKENS] = 1.0;
        p[fp::TOP_P] = 1.0;
        p[fp::TEMPERATURE] = 1.0;
        p[fp::MIN_TEMPERATURE] = -1.0;
        p
    }

    fn with(changes: &[(usize, f32)]) -> [f32; FILTER_PARAMS] {
        let mut p = off();
        for &(col, v) in changes {
            p[col] = v;
        }
        p
    }

    fn run(x: &[f32], p: [f32; FILTER_PARAMS]) -> Vec<f32> {
        filter(x, &p, 1, x.len()).unwrap()
    }

    fn kept(y: &[f32]) -> Vec<usize> {
        y.iter()
            .enumerate()
            .filter(|(_, v)| v.is_finite())
            .map(|(i, _)| i)
            .collect()
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
        let x = [0.5, NINF, -3.0, 2.0];
        assert_eq!(run(&x, off()), x.to_vec());
    }

    #[test]
    fn min_p_removes_below_fraction_of_max_prob() {
        // Relative to the max prob: e^-1 = 0.37, e^-3 = 0.05, e^-0.5 = 0.61.
        let x = [0.0, -1.0, -3.0, -0.5];
        assert_eq!(
            run(&x, with(&[(fp::MIN_P, 0.1)])),
            vec![0.0, -1.0, NINF, -0.5]
        );
        assert_eq!(
            run(&x, with(&[(fp::MIN_P, 0.5)])),
            vec![0.0, NINF, NINF, -0.5]
        );
    }

    #[test]
    fn min_p_keeps_min_tokens_highest_with_ties() {
        let x = [0.0, -5.0, -3.0, -9.0, -5.0];
        let p = with(&[(fp::MIN_P, 0.9), (fp::MIN_TOKENS, 3.0)]);
        // The 3rd largest is -5, held by ids 1 and 4: both are protected.
        assert_eq!(run(&x, p), vec![0.0, -5.0, -3.0, NINF, -5.0]);
        // min_tokens 0 still keeps the maximum (k is clamped to 1).
        let p = with(&[(fp::MIN_P, 0.9), (fp::MIN_TOKENS, 0.0)]);
        assert_eq!(kept(&run(&x, p)), vec![0]);
    }

    #[test]
    fn top_k_keeps_ties_at_the_kth_value() {
        let p = with(&[(fp::TOP_K, 2.0)]);
        assert_eq!(
            run(&[1.0, 4.0, 2.0, 4.0, 3.0], p),
            vec![NINF, 4.0, NINF, 4.0, NINF]
        );
        assert_eq!(
            run(&[1.0, 2.0, 2.0, 2.0, 0.0], p),
            vec![NINF, 2.0, 2.0, 2.0, NINF]
        );
        // k beyond the finite count keeps every finite value.
        let x = [1.0, NINF, 2.0];
        assert_eq!(run(&x, with(&[(fp::TOP_K, 10.0)])), x.to_vec());
        assert_eq!(run(&x, with(&[(fp::TOP_K, -3.0)])), x.to_vec());
    }

    fn ln(probs: &[f32]) -> Vec<f32> {
        probs.iter().map(|p| p.ln()).collect()
    }

    #[test]
    fn top_p_keeps_while_preceding_mass_at_most_p() {
        // Sorted: 0.4 (mass before: 0), 0.3 (0.4), 0.2 (0.7), 0.1 (0.9).
        let x = ln(&[0.1, 0.4, 0.2, 0.3]);
        let top_p = |p: f32| kept(&run(&x, with(&[(fp::TOP_P, p)])));
        assert_eq!(top_p(0.5), vec![1, 3]);
        assert_eq!(top_p(0.75), vec![1, 2, 3]);
        assert_eq!(top_p(0.3), vec![1]);
        assert_eq!(top_p(0.0), vec![1]);
        assert_eq!(top_p(1.0), vec![0, 1, 2, 3]);
    }

    #[test]
    fn top_p_splits_ties_by_lower_id_first() {
        // Five tied tokens of 0.2: masses before them in id order 0, 0.2, 0.4, 0.6, 0.8.
        let x = ln(&[0.2; 5]);
        assert_eq!(kept(&run(&x, with(&[(fp::TOP_P, 0.5)]))), vec![0, 1, 2]);
        // A higher token first (0.4), then four ties of 0.15 with masses 0.4, 0.55, 0.7, 0.85.
        let x = ln(&[0.15, 0.15, 0.4, 0.15, 0.15]);
        assert_eq!(kept(&run(&x, with(&[(fp::TOP_P, 0.6)]))), vec![0, 1, 2]);
    }

    /// Top-p against a direct walk of the sorted order, on long rows: quantized values (tie
    /// groups of ~75 and of ~1000 at the cut), distinct values, and a few huge outliers that
    /// squeeze the rest into one histogram bucket.
    #[test]
    fn top_p_matches_a_sorted_walk() {
        let u = |seed: u64, i: usize| philox_uniform(seed, i as u32, 0);
        let rows: Vec<(&str, Vec<f32>)> = vec![
            (
                "40 levels",
                (0..3000)
                    .map(|i| ((u(3, i) * 40.0).floor() - 20.0) / 4.0)
                    .collect(),
            ),
            (
                "3 levels",
                (0..3000).map(|i| (u(4, i) * 3.0).floor()).collect(),
            ),
            ("distinct", (0..5000).map(|i| u(5, i) * 8.0 - 4.0).collect()),
            (
                "outliers",
                (0..5000)
                    .map(|i| {
                        if i % 1000 == 7 {
                            30.0 + i as f32 * 1e-3
                        } else {
                            u(6, i) * 1e-3 - 40.0
                        }
                    })
                    .collect(),
            ),
        ];
        for (what, x) in &rows {
            let vocab = x.len();
            let m = x.iter().cloned().fold(NINF, f32::max);
            let e: Vec<f64> = x.iter().map(|v| (v - m).exp() as f64).collect();
            let total: f64 = e.iter().sum();
            let mut order: Vec<usize> = (0..vocab).collect();
            order.sort_by(|&a, &b| x[b].partial_cmp(&x[a]).unwrap().then(a.cmp(&b)));
            for p in [0.0f32, 0.05, 0.3, 0.5, 0.61, 0.9, 0.99, 0.999_999] {
                let got = kept(&run(x, with(&[(fp::TOP_P, p)])));
                let mut before = 0.0;
                let mut want = Vec::new();
                for &i in &order {
                    if before <= p as f64 * total {
                        want.push(i);
                    }
                    before += e[i];
                }
                want.sort();
                assert_eq!(got, want, "{what}, p = {p}");
            }
        }
    }

    #[test]
    fn temperature_divides_when_positive_only() {
        let x = [1.0, -2.0, NINF];
        assert_eq!(
            run(&x, with(&[(fp::TEMPERATURE, 0.5)])),
            vec![2.0, -4.0, NINF]
        );
        assert_eq!(run(&x, with(&[(fp::TEMPERATURE, 0.0)])), x.to_vec());
        assert_eq!(run(&x, with(&[(fp::TEMPERATURE, -2.0)])), x.to_vec());
    }

    #[test]
    fn dynamic_temperature_follows_the_peak_probability() {
        let p = with(&[(fp::TEMPERATURE, 1.0), (fp::MIN_TEMPERATURE, 0.3)]);
        let temp = |p_max: f32| 1.0 - 0.7 / (1.0 + (-10.0 * (p_max - 0.5)).exp());
        // Flat row of 4: p_max = 0.25. Peaked row: p_max = 1 / (1 + 3 e^-10).
        let tf = temp(0.25);
        assert_close(&run(&[1.0; 4], p), &[1.0 / tf; 4]);
        let tp = temp(1.0 / (1.0 + 3.0 * (-10f32).exp()));
        assert_close(&run(&[10.0, 0.0, 0.0, 0.0], p), &[10.0 / tp, 0.0, 0.0, 0.0]);
        assert!(tf > 0.9 && tp < 0.31);
        // t_min < 0 (off) or |t - t_min| < 0.001: plain division by t.
        let plain = with(&[(fp::TEMPERATURE, 0.5), (fp::MIN_TEMPERATURE, -1.0)]);
        assert_close(&run(&[2.0, 1.0], plain), &[4.0, 2.0]);
        let narrow = with(&[(fp::TEMPERATURE, 0.5), (fp::MIN_TEMPERATURE, 0.4995)]);
        assert_close(&run(&[2.0, 1.0], narrow), &[4.0, 2.0]);
    }

    #[test]
    fn dynamic_temperature_sees_the_filtered_row() {
        // top-k 1 leaves one token: p_max = 1, T = 1 - 0.7 / (1 + e^-5).
        let p = with(&[
            (fp::TOP_K, 1.0),
            (fp::TEMPERATURE, 1.0),
            (fp::MIN_TEMPERATURE, 0.3),
        ]);
        let t = 1.0 - 0.7 / (1.0 + (-5f32).exp());
        assert_close(&run(&[2.0, 1.0, 1.5], p), &[2.0 / t, NINF, NINF]);
    }

    #[test]
    fn top_n_sigma_keeps_within_n_std_of_max() {
        // Finite 0, 1, 2, 3: mean 1.5, unbiased var 5/3, std 1.291; n = 1 -> cut 1.709.
        let x = [0.0, 1.0, NINF, 2.0, 3.0];
        assert_eq!(
            run(&x, with(&[(fp::TOP_N_SIGMA, 1.0)])),
            vec![NINF, NINF, NINF, 2.0, 3.0]
        );
        // n = 2 -> cut 0.418.
        assert_eq!(
            run(&x, with(&[(fp::TOP_N_SIGMA, 2.0)])),
            vec![NINF, 1.0, NINF, 2.0, 3.0]
        );
        // After temperature 0.5 the values double, and so does the std: same survivors.
        let p = with(&[(fp::TOP_N_SIGMA, 1.0), (fp::TEMPERATURE, 0.5)]);
        assert_eq!(run(&x, p), vec![NINF, NINF, NINF, 4.0, 6.0]);
    }

    #[test]
    fn stages_run_in_order() {
        // min-p 0.01 drops -5 (e^-7 = 0.0009) and keeps -1 (e^-3 = 0.05); top-k 3 keeps 2, 1, 0;
        // top-p 0.7 over {2, 1, 0}: probs 0.665, 0.245, 0.090, masses before 0, 0.665, 0.910:
        // keeps 2 and 1; temperature 2 halves them.
        let x = [2.0, 1.0, 0.0, -1.0, -5.0, NINF];
        let p = with(&[
            (fp::MIN_P, 0.01),
            (fp::TOP_K, 3.0),
            (fp::TOP_P, 0.7),
            (fp::TEMPERATURE, 2.0),
        ]);
        assert_eq!(run(&x, p), vec![1.0, 0.5, NINF, NINF, NINF, NINF]);
    }

    #[test]
    fn rows_take_their_own_parameters() {
        let x = [1.0, 2.0, 3.0, 1.0, 2.0, 3.0];
        let mut params = off().to_vec();
        params.extend(with(&[(fp::TOP_K, 1.0)]));
        let y = filter(&x, &params, 2, 3).unwrap();
        assert_eq!(y, vec![1.0, 2.0, 3.0, NINF, NINF, 3.0]);
    }

    #[test]
    fn nan_and_pos_inf_are_errors_and_all_neg_inf_stays() {
        assert!(filter(&[0.0, f32::NAN], &off(), 1, 2).is_err());
        let err = filter(&[f32::INFINITY, 0.0], &off(), 1, 2).unwrap_err();
        assert!(err.to_string().contains("row 0"), "{err}");
        assert_eq!(
            run(&[NINF, NINF], with(&[(fp::TOP_P, 0.5)])),
            vec![NINF, NINF]
        );
        let err = sample(&[NINF, NINF], &off(), &[0], 1, 2, 1, 0).unwrap_err();
        assert!(err.to_string().contains("every logit"), "{err}");
    }

    #[test]
    fn greedy_takes_the_lowest_id_of_the_maxima() {
        let x = [0.0, 3.0, 3.0, NINF];
        let out = sample(&x, &with(&[(fp::GREEDY, 1.0)]), &[0], 1, 4, 1, 0).unwrap();
        let e3 = 3f32.exp();
        assert_eq!(out[0], 1.0);
        assert!((out[1] - e3 / (1.0 + 2.0 * e3)).abs() < 1e-6, "{out:?}");
    }

    #[test]
    fn multinomial_is_the_inverse_cdf_of_the_philox_uniform() {
        // probs 0.25, 0, 0.5, 0.25: u < 0.25 -> 0, u < 0.75 -> 2, else 3.
        let row = [0.25f32.ln(), NINF, 0.5f32.ln(), 0.25f32.ln()];
        let rows = 200;
        let x: Vec<f32> = row.iter().cycle().take(rows * 4).cloned().collect();
        let params: Vec<f32> = off()
            .iter()
            .cycle()
            .take(rows * FILTER_PARAMS)
            .cloned()
            .collect();
        let ids: Vec<u32> = (0..rows as u32).map(|r| 1000 + 7 * r).collect();
        let (seed, step) = (42, 3);
        let out = sample(&x, &params, &ids, rows, 4, seed, step).unwrap();
        let mut seen = [0usize; 4];
        for r in 0..rows {
            let u = philox_uniform(seed, ids[r], step);
            let want = if u < 0.25 {
                0
            } else if u < 0.75 {
                2
            } else {
                3
            };
            let got = out[2 * r] as usize;
            assert_eq!(got, want, "row {r}, u = {u}");
            let want_p = [0.25, 0.0, 0.5, 0.25][want];
            assert!((out[2 * r + 1] - want_p).abs() < 1e-6);
            seen[got] += 1;
        }
        assert!(
            seen[0] > 0 && seen[2] > 0 && seen[3] > 0 && seen[1] == 0,
            "{seen:?}"
        );
    }

    #[test]
    fn dense_and_sorted_walks_agree() {
        // 40 kept tokens: in a vocabulary of 100 the dense walk runs, in one of 1000 the sorted
        // walk; tokens 0..40 of the large row are the same logits, so the draws must match.
        let small: Vec<f32> = (0..100)
            .map(|i| if i < 40 { (i % 7) as f32 * 0.3 } else { NINF })
            .collect();
        let mut large = small.clone();
        large.resize(1000, NINF);
        for step in 0..50 {
            let a = sample(&small, &off(), &[5], 1, 100, 9, step).unwrap();
            let b = sample(&large, &off(), &[5], 1, 1000, 9, step).unwrap();
            assert_eq!(a, b, "step {step}");
            assert!(a[0] < 40.0);
        }
    }

    #[test]
    fn draw_never_picks_a_filtered_token() {
        let x = [NINF, 0.0, NINF, NINF, -20.0, NINF, 5.0];
        let p = with(&[(fp::TOP_K, 2.0)]);
        for step in 0..64 {
            let out = sample(&x, &p, &[3], 1, 7, 9, step).unwrap();
            assert!(out[0] == 1.0 || out[0] == 6.0, "drew {}", out[0]);
        }
    }

    #[test]
    fn min_p_fast_path_keeps_what_the_exact_path_keeps() {
        let mut taken = 0;
        for seed in 0..40u32 {
            // Gaussian-like logits from the Philox stream, scale 3, vocab 4096.
            let x: Vec<f32> = (0..4096u32)
                .map(|i| {
                    let u = philox_uniform(seed as u64, i, 0).max(1e-7);
                    let v = philox_uniform(seed as u64, i, 1);
                    3.0 * (-2.0 * u.ln()).sqrt() * (std::f32::consts::TAU * v).cos()
                })
                .collect();
            let min_p = [0.02f32, 0.05, 0.3][seed as usize % 3];
            let min_tokens = [1.0f32, 4.0, 32.0, 200.0][seed as usize % 4];
            let p = RowParams::new(&with(&[(fp::MIN_P, min_p), (fp::MIN_TOKENS, min_tokens)]));
            let m = checked_max(&x, 0).unwrap();
            let mut fast = Vec::new();
            let mut exact = Vec::new();
            filter_row_from_all(&x, m, &p, &mut exact);
            if gather_min_p(&x, m, &p, &mut fast) {
                taken += 1;
                let ids = |c: &[Cand]| {
                    let mut v: Vec<u32> = c.iter().map(|x| x.id).collect();
                    v.sort_unstable();
                    v
                };
                assert_eq!(ids(&fast), ids(&exact), "seed {seed}");
                for f in &fast {
                    let e = exact.iter().find(|x| x.id == f.id).unwrap();
                    assert_eq!(f.e.to_bits(), e.e.to_bits());
                }
            } else {
                assert!(fast.is_empty());
            }
        }
        assert!(
            taken >= 30,
            "the fast path was taken only {taken} times of 40"
        );
    }
}
