//! Thresholds without sorting a row: the k-th largest value by selection (on a sample-guided
//! subset of a long row), and the mass cuts of top-p and typical-p by histogram refinement over
//! value buckets. Each costs a few linear passes whatever the shape of the distribution.

use std::cmp::Ordering;

use super::vector;

/// A kept token of a row: its current value and its id.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Cand {
    pub v: f32,
    pub id: u32,
}

/// Values descending; -0 and +0 tie, as tensor comparisons make them.
pub(crate) fn desc(a: f32, b: f32) -> Ordering {
    b.partial_cmp(&a).unwrap_or(Ordering::Equal)
}

/// Value descending, then id ascending: the order of top-p.
pub(crate) fn by_rank(a: &Cand, b: &Cand) -> Ordering {
    desc(a.v, b.v).then(a.id.cmp(&b.id))
}

/// An order-preserving integer key of a non-NaN f32, one key for -0 and +0 (they tie as
/// values): selections compare integers instead of floats.
#[inline]
pub(crate) fn key(v: f32) -> u32 {
    let b = (v + 0.0).to_bits();
    if b >> 31 == 1 {
        !b
    } else {
        b | 1 << 31
    }
}

/// The value of a [`key`].
#[inline]
pub(crate) fn from_key(k: u32) -> f32 {
    f32::from_bits(if k >> 31 == 1 { k & !(1 << 31) } else { !k })
}

/// The k-th largest of the values whose [`key`]s are `keys`, ties counted
/// (`1 <= k <= keys.len()`); reorders `keys`.
pub(crate) fn kth_largest(keys: &mut [u32], k: usize) -> f32 {
    let k = k.clamp(1, keys.len());
    let at = keys.len() - k;
    from_key(*keys.select_nth_unstable(at).1)
}

/// The k-th largest of the candidates' values (`1 <= k <= c.len()`), using `tmp`.
pub(crate) fn kth_largest_cands(c: &[Cand], k: usize, tmp: &mut Vec<u32>) -> f32 {
    tmp.clear();
    tmp.extend(c.iter().map(|x| key(x.v)));
    kth_largest(tmp, k)
}

/// Elements sampled from a long row to guess a threshold's distance from the maximum.
const SAMPLE: usize = 64;

/// Rows up to this long are searched by gathering passes rather than counting ones.
pub(crate) const SHORT_ROW: usize = 4096;

/// A k-th largest value of a dense row, with what its search gathered.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Kth {
    /// The k-th largest value (ties counted).
    pub value: f32,
    /// How many elements of the set are `>= value`.
    pub at_least: usize,
    /// The search gathered every element `>= this` (with its id).
    pub gathered_from: f32,
}

/// The k-th largest value among the elements of `x` that are `>= floor`, of which there are
/// `count` (`1 <= k <= count`); `max` is the largest of them, and `below`, when given, a value
/// with fewer than k elements at or above it. Leaves in `gathered` every element at or above
/// `Kth::gathered_from`, with ids.
///
/// A threshold `t` below the maximum with `k <= count(>= t) <= 4k + 64` is searched for by
/// vectorised counting passes (its distance from the maximum guessed from a strided sample,
/// then doubled or halved), and only the elements at or above it are gathered and selected
/// over, so the cost stays a few linear passes however flat or peaked the row is. The answer
/// is exact either way: every one of the k largest is at or above such a `t`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn kth_largest_dense(
    x: &[f32],
    floor: f32,
    k: usize,
    count: usize,
    max: f32,
    below: Option<f32>,
    tmp: &mut Vec<u32>,
    gathered: &mut Vec<Cand>,
) -> Kth {
    let k = k.clamp(1, count.max(1));
    let cap = 4 * k + 64;
    let mut from = floor;
    let mut done = false;
    if count > cap && max.is_finite() {
        // A value known to have fewer than k elements at or above it bounds the distance.
        let mut d = match below {
            Some(b) if b < max && b > floor => 2.0 * (max as f64 - b as f64),
            _ => first_distance(x, floor, k, count, max, tmp),
        };
        if x.len() <= SHORT_ROW {
            // On a short row a gathering pass costs little more than a counting one: gather at
            // the guess and widen it until it holds k elements.
            loop {
                let t = ((max as f64 - d) as f32).max(floor);
                gathered.clear();
                vector::gather_at_least(x, t, gathered);
                if gathered.len() >= k || t <= floor {
                    from = t;
                    done = true;
                    break;
                }
                d *= 2.0;
            }
        }
        if !done {
            let (mut d_lo, mut d_hi) = (0f64, f64::INFINITY);
            for _ in 0..40 {
                let t = ((max as f64 - d) as f32).max(floor);
                let c = vector::count_at_least(x, t);
                if c < k {
                    if t <= floor {
                        break;
                    }
                    d_lo = d;
                    d = if d_hi.is_finite() {
                        (d + d_hi) / 2.0
                    } else {
                        d * 2.0
                    };
                } else {
                    from = t;
                    if c <= cap {
                        break;
                    }
                    d_hi = d;
                    d = (d_lo + d) / 2.0;
                }
                // Until a count has reached k there is no upper bound to close in on.
                if d_hi.is_finite() && d_hi - d_lo <= d_hi * 1e-12 {
                    break;
                }
            }
        }
    }
    if !done {
        gathered.clear();
        vector::gather_at_least(x, from, gathered);
    }
    tmp.clear();
    tmp.extend(gathered.iter().map(|c| key(c.v)));
    let value = kth_largest(tmp, k);
    let at_least = gathered.iter().filter(|c| c.v >= value).count();
    Kth {
        value,
        at_least,
        gathered_from: from,
    }
}

/// A first guess of how far below the maximum the k-th largest lies: the distance of the value
/// of matching rank in a strided sample (a positive distance in any case).
fn first_distance(
    x: &[f32],
    floor: f32,
    k: usize,
    count: usize,
    max: f32,
    tmp: &mut Vec<u32>,
) -> f64 {
    let stride = (x.len() / SAMPLE).max(1);
    tmp.clear();
    tmp.extend(
        x.iter()
            .step_by(stride)
            .copied()
            .filter(|&v| v >= floor && v > f32::NEG_INFINITY)
            .map(key),
    );
    let tiny = (max.abs() as f64 * 1e-6).max(1e-6);
    if tmp.is_empty() {
        return tiny;
    }
    let rank = ((2 * k) as f64 * tmp.len() as f64 / count as f64).ceil() as usize;
    let n = tmp.len();
    let guess = kth_largest(tmp, rank.clamp(1, n));
    (max as f64 - guess as f64).max(tiny)
}

/// A candidate with its probability, for the mass cuts.
#[derive(Clone, Copy, Debug)]
struct Weighted {
    v: f32,
    id: u32,
    q: f64,
}

/// Buckets of one histogram level.
const BUCKETS: usize = 1024;
/// A window this small is sorted instead of bucketed.
const SORTED: usize = 256;

/// Buffers of [`top_p_last`].
#[derive(Default)]
pub(crate) struct TopPScratch {
    weighted: Vec<Weighted>,
    order: Vec<u64>,
}

/// Fills `order` with the window's indices in (value desc, id asc) order, each in the low 32
/// bits: one sort of integers, then equal values (rare) put in id order.
fn rank_order(win: &[Weighted], order: &mut Vec<u64>) {
    order.clear();
    order.extend(
        win.iter()
            .enumerate()
            .map(|(i, x)| (u64::from(!key(x.v)) << 32) | i as u64),
    );
    order.sort_unstable();
    let mut a = 0;
    while a < order.len() {
        let value = order[a] >> 32;
        let mut b = a + 1;
        while b < order.len() && order[b] >> 32 == value {
            b += 1;
        }
        if b - a > 1 {
            order[a..b].sort_unstable_by_key(|&o| win[(o & u64::from(u32::MAX)) as usize].id);
        }
        a = b;
    }
}

/// Top-p over candidates with probabilities `q` (parallel to `c`): in (value desc, id asc)
/// order a candidate is kept when the probability mass before it is `<= p`. Returns the last
/// kept candidate: the kept set is every candidate ranked at or before it.
///
/// The last kept candidate is found by a histogram of the window's mass over value buckets
/// (highest values first): buckets above the one holding it are kept whole, buckets below
/// dropped, and the search goes on inside that bucket, until the window is small enough to sort
/// or is one tie group, which is split by id.
pub(crate) fn top_p_last(c: &[Cand], q: &[f64], p: f64, scratch: &mut TopPScratch) -> Cand {
    let TopPScratch { weighted: w, order } = scratch;
    if c.is_empty() {
        return Cand {
            v: f32::NEG_INFINITY,
            id: u32::MAX,
        };
    }
    w.clear();
    w.extend(c.iter().zip(q).map(|(x, &q)| Weighted {
        v: x.v,
        id: x.id,
        q,
    }));
    // w[..m] is the window: every candidate ranked before it is kept, with mass `before`
    // (<= p, so the window's first candidate is kept too); every one after it dropped.
    let mut m = w.len();
    let mut before = 0f64;
    let last = loop {
        let win = &mut w[..m];
        if m <= SORTED {
            rank_order(win, order);
            let mut last = win[0];
            for &o in order.iter() {
                if before > p {
                    break;
                }
                let x = win[(o & u64::from(u32::MAX)) as usize];
                before += x.q;
                last = x;
            }
            break last;
        }
        let (lo, hi) = win
            .iter()
            .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), x| {
                (lo.min(x.v), hi.max(x.v))
            });
        if lo == hi {
            // One tie group, all of one probability: the first n by id are kept.
            let q = win[0].q;
            let mut n = 0;
            while n < m && before <= p {
                before += q;
                n += 1;
            }
            break *win.select_nth_unstable_by_key(n - 1, |x| x.id).1;
        }
        let scale = BUCKETS as f64 / (hi as f64 - lo as f64);
        let bucket = |v: f32| (((hi as f64 - v as f64) * scale) as usize).min(BUCKETS - 1);
        let mut mass = vec![0f64; BUCKETS];
        let mut count = vec![0u32; BUCKETS];
        for x in win.iter() {
            let b = bucket(x.v);
            mass[b] += x.q;
            count[b] += 1;
        }
        // The lowest non-empty bucket whose first candidate is still kept.
        let mut target = 0;
        let mut acc = before;
        let mut target_before = before;
        for b in 0..BUCKETS {
            if count[b] == 0 {
                continue;
            }
            if acc > p {
                break;
            }
            target = b;
            target_before = acc;
            acc += mass[b];
        }
        before = target_before;
        let mut k = 0;
        for i in 0..m {
            if bucket(win[i].v) == target {
                win.swap(i, k);
                k += 1;
            }
        }
        m = k;
    };
    Cand {
        v: last.v,
        id: last.id,
    }
}

/// The smallest key `K` of `items` (key, weight) such that the weight of the items with key
/// `<= K` is `>= target`; the largest key when the total falls short. Reorders `items`.
pub(crate) fn lowest_key_reaching(items: &mut [(f64, f64)], target: f64) -> f64 {
    let mut m = items.len();
    let mut below = 0f64;
    // Set when a bucketing pass could not split the window (infinite keys make the bucket
    // width infinite): the window is sorted instead.
    let mut stuck = false;
    loop {
        let win = &mut items[..m];
        if m <= SORTED || stuck {
            win.sort_unstable_by(|a, b| a.0.partial_cmp(&b.0).unwrap_or(Ordering::Equal));
            let mut i = 0;
            while i < m {
                // A tie group counts as a whole.
                let key = win[i].0;
                while i < m && win[i].0 == key {
                    below += win[i].1;
                    i += 1;
                }
                if below >= target {
                    return key;
                }
            }
            return win[m - 1].0;
        }
        let (lo, hi) = win
            .iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), x| {
                (lo.min(x.0), hi.max(x.0))
            });
        if lo == hi {
            return lo;
        }
        let scale = BUCKETS as f64 / (hi - lo);
        let bucket = |k: f64| (((k - lo) * scale) as usize).min(BUCKETS - 1);
        let mut mass = vec![0f64; BUCKETS];
        let mut count = vec![0u32; BUCKETS];
        for x in win.iter() {
            let b = bucket(x.0);
            mass[b] += x.1;
            count[b] += 1;
        }
        // The first bucket whose end reaches the target holds the answer.
        let mut target_bucket = None;
        let mut acc = below;
        let mut last_nonempty = 0;
        for b in 0..BUCKETS {
            if count[b] == 0 {
                continue;
            }
            last_nonempty = b;
            if acc + mass[b] >= target {
                target_bucket = Some((b, acc));
                break;
            }
            acc += mass[b];
        }
        let (b, acc) = target_bucket.unwrap_or((last_nonempty, acc - mass[last_nonempty]));
        below = acc;
        let mut k = 0;
        for i in 0..m {
            if bucket(win[i].0) == b {
                win.swap(i, k);
                k += 1;
            }
        }
        stuck = k == m;
        m = k;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn xorshift(state: &mut u64) -> u64 {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        *state
    }

    #[test]
    fn kth_largest_dense_matches_a_sort_on_long_and_tied_rows() {
        let mut s = 0x9e37_79b9_7f4a_7c15u64;
        for case in 0..40 {
            let n = [100usize, 3000, 40_000][case % 3];
            let levels = [3u64, 50, 1 << 30][case / 3 % 3];
            let x: Vec<f32> = (0..n)
                .map(|i| {
                    if i % 11 == 3 {
                        f32::NEG_INFINITY
                    } else {
                        (xorshift(&mut s) % levels) as f32 * 0.01 - 5.0
                    }
                })
                .collect();
            let floor = if case % 2 == 0 {
                vector::ALL_FINITE
            } else {
                -4.0
            };
            let mut set: Vec<f32> = x.iter().cloned().filter(|&v| v >= floor).collect();
            set.sort_by(|a, b| b.partial_cmp(a).unwrap());
            let mut tmp = Vec::new();
            for k in [1usize, 2, 7, 50, 500] {
                if k > set.len() {
                    continue;
                }
                let mut gathered = Vec::new();
                let got = kth_largest_dense(
                    &x,
                    floor,
                    k,
                    set.len(),
                    set[0],
                    None,
                    &mut tmp,
                    &mut gathered,
                );
                assert_eq!(got.value, set[k - 1], "case {case} n {n} k {k}");
                assert_eq!(
                    got.at_least,
                    set.iter().filter(|&&v| v >= got.value).count()
                );
                let want = x
                    .iter()
                    .filter(|&&v| v >= got.gathered_from && v >= floor)
                    .count();
                assert_eq!(gathered.len(), want);
            }
        }
    }

    /// A long row whose head is far out in the tail (wide logits): the search narrows to a
    /// small gathered set instead of giving up at its first undercount and gathering the row.
    #[test]
    fn kth_largest_dense_gathers_a_small_set_on_a_wide_long_row() {
        let mut s = 0x2545_f491u64;
        let x: Vec<f32> = (0..32_000)
            .map(|_| {
                let u = (0..4).map(|_| (xorshift(&mut s) >> 40) as f32 / (1u64 << 24) as f32);
                (u.sum::<f32>() - 2.0) * 8.0 * 1.7
            })
            .collect();
        let mut sorted = x.clone();
        sorted.sort_by(|a, b| b.partial_cmp(a).unwrap());
        // `below`: a value with fewer than k elements at or above it, close to the max (as
        // min-p's cut is), so the first guess undercounts.
        for (k, below) in [
            (1usize, None),
            (32, None),
            (32, Some(sorted[4])),
            (50, Some(sorted[2])),
        ] {
            let (mut tmp, mut gathered) = (Vec::new(), Vec::new());
            let got = kth_largest_dense(
                &x,
                vector::ALL_FINITE,
                k,
                x.len(),
                sorted[0],
                below,
                &mut tmp,
                &mut gathered,
            );
            assert_eq!(got.value, sorted[k - 1], "k {k}");
            assert!(
                gathered.len() <= 4 * k + 64,
                "k {k}: gathered {}",
                gathered.len()
            );
        }
    }

    #[test]
    fn top_p_keeps_while_mass_before_is_at_most_p_on_long_rows() {
        let mut s = 7u64;
        for case in 0..12 {
            let n = [300usize, 5000][case % 2];
            let c: Vec<Cand> = (0..n as u32)
                .map(|id| Cand {
                    v: if case % 3 == 0 {
                        (xorshift(&mut s) % 7) as f32
                    } else {
                        (xorshift(&mut s) % 100_000) as f32 * 1e-4
                    },
                    id,
                })
                .collect();
            let m = c.iter().map(|x| x.v).fold(f32::NEG_INFINITY, f32::max);
            let e: Vec<f64> = c.iter().map(|x| ((x.v - m) as f64).exp()).collect();
            let total: f64 = e.iter().sum();
            let q: Vec<f64> = e.iter().map(|e| e / total).collect();
            for p in [0.0, 0.2, 0.5, 0.9, 0.999] {
                let mut order: Vec<usize> = (0..n).collect();
                order.sort_by(|&a, &b| by_rank(&c[a], &c[b]));
                let mut before = 0.0;
                let mut want: Vec<u32> = Vec::new();
                for &i in &order {
                    if before <= p {
                        want.push(c[i].id);
                    }
                    before += q[i];
                }
                want.sort();
                let last = top_p_last(&c, &q, p, &mut TopPScratch::default());
                let mut ids: Vec<u32> = c
                    .iter()
                    .filter(|x| by_rank(x, &last) != Ordering::Greater)
                    .map(|x| x.id)
                    .collect();
                ids.sort();
                assert_eq!(ids, want, "case {case} p {p}");
            }
        }
    }

    /// Infinite keys (the score of a token whose probability underflowed to 0) make every
    /// bucket as wide as the range: the search still ends, at the right key.
    #[test]
    fn lowest_key_reaching_ends_with_infinite_keys() {
        let mut items: Vec<(f64, f64)> = (0..2000)
            .map(|i| (if i % 3 == 0 { f64::INFINITY } else { i as f64 }, 1.0))
            .collect();
        // Keys 1, 2, 4, 5, ...: the 10th finite key from the bottom reaches a mass of 10.
        assert_eq!(lowest_key_reaching(&mut items, 10.0), 14.0);
        let mut all_inf = vec![(f64::INFINITY, 1.0); 600];
        all_inf.push((0.0, 1.0));
        assert_eq!(lowest_key_reaching(&mut all_inf, 300.0), f64::INFINITY);
    }

    #[test]
    fn lowest_key_reaching_counts_ties_as_a_group() {
        let mut s = 3u64;
        for n in [10usize, 300, 4000] {
            let items: Vec<(f64, f64)> = (0..n)
                .map(|_| {
                    (
                        (xorshift(&mut s) % 50) as f64 * 0.1,
                        (xorshift(&mut s) % 1000) as f64 / 1000.0 + 1e-3,
                    )
                })
                .collect();
            let total: f64 = items.iter().map(|x| x.1).sum();
            for frac in [0.0, 0.1, 0.5, 0.99, 1.0] {
                let target = frac * total;
                let mut sorted = items.clone();
                sorted.sort_by(|a, b| a.0.partial_cmp(&b.0).unwrap());
                let mut want = sorted[n - 1].0;
                let mut i = 0;
                let mut acc = 0.0;
                while i < n {
                    let k = sorted[i].0;
                    while i < n && sorted[i].0 == k {
                        acc += sorted[i].1;
                        i += 1;
                    }
                    if acc >= target {
                        want = k;
                        break;
                    }
                }
                let mut work = items.clone();
                assert_eq!(lowest_key_reaching(&mut work, target), want, "n {n} {frac}");
            }
        }
    }
}
