//! Whole-row passes written so that the compiler turns them into vector code: fixed-width lane
//! arrays, no early exits inside a chunk, no fused multiply-adds. Sums keep one accumulator per
//! lane and add the lanes in a fixed order, so a result never depends on the vector width the
//! binary was built for or the one it runs with: on x86-64 each pass also has an AVX2 build,
//! chosen at run time, that computes exactly the same values.

/// Defines `$name` as a pass with an AVX2 build chosen at run time on x86-64; `$body` is the
/// pass itself (an `#[inline(always)]` function), compiled once per instruction set.
macro_rules! multiversion {
    ($(#[$m:meta])* $vis:vis fn $name:ident($($a:ident: $t:ty),*) -> $r:ty = $body:ident;) => {
        $(#[$m])*
        $vis fn $name($($a: $t),*) -> $r {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2")]
                unsafe fn avx2($($a: $t),*) -> $r {
                    $body($($a),*)
                }
                if std::arch::is_x86_feature_detected!("avx2") {
                    // SAFETY: the CPU has AVX2 (checked just above).
                    return unsafe { avx2($($a),*) };
                }
            }
            $body($($a),*)
        }
    };
}

/// Lanes of a chunk.
pub(crate) const LANES: usize = 16;

/// The smallest finite f32: "every finite value" as an inclusive lower bound.
pub(crate) const ALL_FINITE: f32 = f32::MIN;

/// What the first pass over a row found.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Scan {
    /// The largest value (`-inf` when every value is `-inf`) and the number of finite values.
    Max { max: f32, finite: usize },
    /// The first NaN or +inf, by id.
    Bad { id: usize, nan: bool },
}

multiversion! {
    /// The row maximum and its count of finite values, after checking that no value is NaN
    /// or +inf.
    pub(crate) fn checked_max(x: &[f32]) -> Scan = checked_max_body;
}

#[inline(always)]
fn checked_max_body(x: &[f32]) -> Scan {
    let mut m = [f32::NEG_INFINITY; LANES];
    // `v < inf` is false for NaN and +inf alike.
    let mut ok = [true; LANES];
    let mut c = [0u32; LANES];
    let chunks = x.chunks_exact(LANES);
    let tail = chunks.remainder();
    for ch in chunks {
        for j in 0..LANES {
            m[j] = if ch[j] > m[j] { ch[j] } else { m[j] };
            ok[j] &= ch[j] < f32::INFINITY;
            c[j] += (ch[j] > f32::NEG_INFINITY) as u32;
        }
    }
    let mut max = fold_max(&m);
    let mut good = ok.iter().all(|o| *o);
    let mut finite: usize = c.iter().map(|&v| v as usize).sum();
    for &v in tail {
        max = if v > max { v } else { max };
        good &= v < f32::INFINITY;
        finite += (v > f32::NEG_INFINITY) as usize;
    }
    if good {
        return Scan::Max { max, finite };
    }
    let id = x.iter().position(|v| !(*v < f32::INFINITY)).unwrap_or(0);
    Scan::Bad {
        id,
        nan: x.get(id).is_some_and(|v| v.is_nan()),
    }
}

fn fold_max(m: &[f32; LANES]) -> f32 {
    m.iter()
        .fold(f32::NEG_INFINITY, |a, &b| if b > a { b } else { a })
}

multiversion! {
    /// The largest value of `x`.
    pub(crate) fn max(x: &[f32]) -> f32 = max_body;
}

#[inline(always)]
fn max_body(x: &[f32]) -> f32 {
    let mut m = [f32::NEG_INFINITY; LANES];
    let chunks = x.chunks_exact(LANES);
    let tail = chunks.remainder();
    for ch in chunks {
        for j in 0..LANES {
            m[j] = if ch[j] > m[j] { ch[j] } else { m[j] };
        }
    }
    tail.iter()
        .fold(fold_max(&m), |a, &b| if b > a { b } else { a })
}

multiversion! {
    /// The largest of `x` (0 when empty).
    pub(crate) fn max_u32(x: &[u32]) -> u32 = max_u32_body;
}

#[inline(always)]
fn max_u32_body(x: &[u32]) -> u32 {
    let mut m = [0u32; LANES];
    let chunks = x.chunks_exact(LANES);
    let tail = chunks.remainder();
    for ch in chunks {
        for j in 0..LANES {
            m[j] = m[j].max(ch[j]);
        }
    }
    tail.iter()
        .fold(m.into_iter().fold(0, u32::max), |a, &b| a.max(b))
}

/// The number of values `>= t` (`t` finite, so `-inf` never counts).
pub(crate) fn count_at_least(x: &[f32], t: f32) -> usize {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2 (checked just above).
        return unsafe { avx2::count_at_least(x, t) };
    }
    count_at_least_body(x, t)
}

#[inline(always)]
fn count_at_least_body(x: &[f32], t: f32) -> usize {
    let mut c = [0u32; LANES];
    let chunks = x.chunks_exact(LANES);
    let tail = chunks.remainder();
    // A lane counts at most one element in LANES: rows are far below 2^32 * LANES long.
    for ch in chunks {
        for j in 0..LANES {
            c[j] += (ch[j] >= t) as u32;
        }
    }
    let total: usize = c.iter().map(|&v| v as usize).sum();
    total + tail.iter().filter(|&&v| v >= t).count()
}

/// The compare-and-count passes in AVX2 intrinsics: comparisons only, so the results are the
/// portable loops' exactly.
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::super::select::Cand;

    /// See [`super::count_at_least`].
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn count_at_least(x: &[f32], t: f32) -> usize {
        let tv = _mm256_set1_ps(t);
        let mut total = 0usize;
        let chunks = x.chunks_exact(8);
        let tail = chunks.remainder();
        for ch in chunks {
            // SAFETY: `ch` holds 8 f32.
            let v = unsafe { _mm256_loadu_ps(ch.as_ptr()) };
            let m = _mm256_movemask_ps(_mm256_cmp_ps::<_CMP_GE_OQ>(v, tv));
            total += m.count_ones() as usize;
        }
        total + tail.iter().filter(|&&v| v >= t).count()
    }

    /// See [`super::gather_at_least`].
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn gather_at_least(x: &[f32], t: f32, out: &mut Vec<Cand>) {
        let tv = _mm256_set1_ps(t);
        let chunks = x.chunks_exact(8);
        let tail_at = x.len() - chunks.remainder().len();
        // Room for every element, so that the hits are written without a capacity check each.
        out.reserve(x.len());
        let base = out.len();
        let spare = out.spare_capacity_mut();
        let mut n = 0;
        for (k, ch) in chunks.enumerate() {
            // SAFETY: `ch` holds 8 f32.
            let v = unsafe { _mm256_loadu_ps(ch.as_ptr()) };
            let mut m = _mm256_movemask_ps(_mm256_cmp_ps::<_CMP_GE_OQ>(v, tv)) as u32;
            while m != 0 {
                let j = m.trailing_zeros() as usize;
                // At most one write per element of `x`, so `n < x.len() <= spare.len()`.
                spare[n].write(Cand {
                    v: ch[j],
                    id: (k * 8 + j) as u32,
                });
                n += 1;
                m &= m - 1;
            }
        }
        // SAFETY: the first `n` spare slots were written just above.
        unsafe { out.set_len(base + n) };
        for (j, &v) in x[tail_at..].iter().enumerate() {
            if v >= t {
                out.push(Cand {
                    v,
                    id: (tail_at + j) as u32,
                });
            }
        }
    }
}

/// The bit mask of the values `>= t` of a chunk (bit j for element j).
#[inline(always)]
fn mask_ge(ch: &[f32], t: f32) -> u32 {
    let mut m = 0u32;
    for (j, &v) in ch.iter().enumerate() {
        m |= ((v >= t) as u32) << j;
    }
    m
}

/// Calls `f(id, value)` for every value `>= t`, in id order. A chunk without one costs one
/// vector compare.
#[inline(always)]
pub(crate) fn for_each_at_least(x: &[f32], t: f32, mut f: impl FnMut(usize, f32)) {
    let chunks = x.chunks_exact(LANES);
    let tail_at = x.len() - chunks.remainder().len();
    for (k, ch) in chunks.enumerate() {
        let mut m = mask_ge(ch, t);
        while m != 0 {
            let j = m.trailing_zeros() as usize;
            f(k * LANES + j, ch[j]);
            m &= m - 1;
        }
    }
    for (j, &v) in x[tail_at..].iter().enumerate() {
        if v >= t {
            f(tail_at + j, v);
        }
    }
}

/// Appends every value `>= t` of `x`, with its id, to `out`, in id order.
pub(crate) fn gather_at_least(x: &[f32], t: f32, out: &mut Vec<super::select::Cand>) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2 (checked just above).
        return unsafe { avx2::gather_at_least(x, t, out) };
    }
    for_each_at_least(x, t, |i, v| {
        out.push(super::select::Cand { v, id: i as u32 })
    });
}

multiversion! {
    /// `x[i] /= d` for every i, saturated (`-inf` stays `-inf` for `d > 0`).
    pub(crate) fn divide(x: &mut [f32], d: f32) -> () = divide_body;
}

#[inline(always)]
fn divide_body(x: &mut [f32], d: f32) {
    for v in x.iter_mut() {
        *v = saturate(*v / d);
    }
}

multiversion! {
    /// Over the entries where both `pos` and `null` are finite: the count and the sums and
    /// sums of squares of `pos - shift_p` and of `guided - shift_g`, where `guided` is
    /// [`guide`]`(pos, null, strength)`, in f64. Eight lanes of independent sums let the loop
    /// vectorise (f64 adds are not reordered otherwise).
    pub(crate) fn guided_moments(
        pos: &[f32],
        null: &[f32],
        strength: f32,
        shift_p: f64,
        shift_g: f64
    ) -> [f64; 5] = guided_moments_body;
}

#[inline(always)]
fn guided_moments_body(
    pos: &[f32],
    null: &[f32],
    strength: f32,
    shift_p: f64,
    shift_g: f64,
) -> [f64; 5] {
    const L: usize = 8;
    let mut acc = [[0f64; L]; 5];
    let mut add = |j: usize, p: f32, q: f32| {
        let ok = (p > f32::NEG_INFINITY) & (q > f32::NEG_INFINITY);
        let dp = if ok { p as f64 - shift_p } else { 0.0 };
        let dg = if ok {
            guide(p, q, strength) as f64 - shift_g
        } else {
            0.0
        };
        acc[0][j] += if ok { 1.0 } else { 0.0 };
        acc[1][j] += dp;
        acc[2][j] += dp * dp;
        acc[3][j] += dg;
        acc[4][j] += dg * dg;
    };
    let n = pos.len().min(null.len());
    let (pc, qc) = (pos[..n].chunks_exact(L), null[..n].chunks_exact(L));
    let (pt, qt) = (pc.remainder(), qc.remainder());
    for (p, q) in pc.zip(qc) {
        for j in 0..L {
            add(j, p[j], q[j]);
        }
    }
    for (&p, &q) in pt.iter().zip(qt) {
        add(0, p, q);
    }
    acc.map(|lanes| lanes.iter().sum())
}

multiversion! {
    /// `pos[i] = g * r * rescale + g * (1 - rescale)` with `g` the guided value where both
    /// inputs are finite, `-inf` elsewhere; `rescale = 0` leaves `g`.
    pub(crate) fn guide_row(pos: &mut [f32], null: &[f32], strength: f32, r: f32, rescale: f32) -> () = guide_row_body;
}

#[inline(always)]
fn guide_row_body(pos: &mut [f32], null: &[f32], strength: f32, r: f32, rescale: f32) {
    for (v, &q) in pos.iter_mut().zip(null) {
        let g = guide(*v, q, strength);
        // A guided value that overflowed down to -inf stays removed (0 * -inf is NaN).
        let ok = (*v > f32::NEG_INFINITY) & (q > f32::NEG_INFINITY) & (g > f32::NEG_INFINITY);
        let out = if rescale == 0.0 {
            g
        } else {
            g * r * rescale + g * (1.0 - rescale)
        };
        *v = if ok { out } else { f32::NEG_INFINITY };
    }
}

/// Classifier-free guidance of one entry: `null + (pos - null) * strength`, saturated.
#[inline(always)]
pub(crate) fn guide(pos: f32, null: f32, strength: f32) -> f32 {
    saturate(null + (pos - null) * strength)
}

/// A value that overflowed upward is the largest finite one: a logit of +inf would make the
/// row's distribution undefined (inf - inf), while the saturated row keeps its limit, all mass
/// on its largest logits. Downward overflow to -inf stays: it masks the token, as it does
/// in the reference.
#[inline(always)]
pub(crate) fn saturate(v: f32) -> f32 {
    if v > f32::MAX {
        f32::MAX
    } else {
        v
    }
}

/// `exp(x)` in f32 for `x <= 0` (the shifted logits of a row), within about 2e-7 relative of
/// the exact value; 0 for `x < -87` (where the exact value is below f32's normal range) and for
/// `-inf`. Written with plain arithmetic and selects so that a loop over it vectorises.
#[inline(always)]
pub(crate) fn exp_neg(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    // Rounds to the nearest integer by the float adder: 1.5 * 2^23 pushes the fraction out.
    const ROUND: f32 = 12_582_912.0;
    let xc = if x < -87.0 { -87.0 } else { x };
    let t = xc * LOG2E + ROUND;
    let n = t - ROUND;
    let r = (xc - n * LN2_HI) - n * LN2_LO;
    // e^r on [-ln2/2, ln2/2]: Taylor to degree 7 (truncation below 5e-9).
    let p = 1.0 / 5040.0;
    let p = p * r + 1.0 / 720.0;
    let p = p * r + 1.0 / 120.0;
    let p = p * r + 1.0 / 24.0;
    let p = p * r + 1.0 / 6.0;
    let p = p * r + 0.5;
    let p = p * r + 1.0;
    let p = p * r + 1.0;
    // 2^n from the exponent bits; n is in [-126, 0] after the clamp.
    let bits = ((t.to_bits() as i32 - ROUND.to_bits() as i32 + 127) as u32) << 23;
    let e = p * f32::from_bits(bits);
    if x < -87.0 {
        0.0
    } else {
        e
    }
}

multiversion! {
    /// The first id whose value equals `v` (`x.len()` when none does).
    pub(crate) fn position_of(x: &[f32], v: f32) -> usize = position_of_body;
}

#[inline(always)]
fn position_of_body(x: &[f32], v: f32) -> usize {
    let chunks = x.chunks_exact(LANES);
    let tail_at = x.len() - chunks.remainder().len();
    for (k, ch) in chunks.enumerate() {
        let mut any = false;
        for &e in ch {
            any |= e == v;
        }
        if any {
            return k * LANES + ch.iter().position(|&e| e == v).unwrap_or(0);
        }
    }
    x[tail_at..]
        .iter()
        .position(|&e| e == v)
        .map_or(x.len(), |p| tail_at + p)
}

/// Elements of one chunk of [`exp_chunk_sums`].
pub(crate) const EXP_CHUNK: usize = 64;

multiversion! {
    /// For the weights `w[i] = exp_neg(x[i] - m)` where `x[i] >= floor` and 0 elsewhere: the sum
    /// of each chunk of [`EXP_CHUNK`] elements in `sums` (f32 lanes within a chunk, added in a
    /// fixed order, then f64 across chunks), and their total.
    pub(crate) fn exp_chunk_sums(x: &[f32], m: f32, floor: f32, sums: &mut Vec<f64>) -> f64
        = exp_chunk_sums_body;
}

#[inline(always)]
fn exp_chunk_sums_body(x: &[f32], m: f32, floor: f32, sums: &mut Vec<f64>) -> f64 {
    sums.clear();
    let mut total = 0f64;
    for chunk in x.chunks(EXP_CHUNK) {
        let mut acc = [0f32; LANES];
        let lanes = chunk.chunks_exact(LANES);
        let tail = lanes.remainder();
        for ch in lanes {
            for j in 0..LANES {
                let e = exp_neg(ch[j] - m);
                acc[j] += if ch[j] >= floor { e } else { 0.0 };
            }
        }
        let mut s = 0f64;
        for a in acc {
            s += a as f64;
        }
        for &v in tail {
            if v >= floor {
                s += exp_neg(v - m) as f64;
            }
        }
        sums.push(s);
        total += s;
    }
    total
}

/// The weight of one element in [`exp_chunk_sums`]' terms.
#[inline]
pub(crate) fn weight(v: f32, m: f32, floor: f32) -> f64 {
    if v >= floor {
        exp_neg(v - m) as f64
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_neg_is_close_to_exp_and_zero_below_range() {
        let mut worst = 0f64;
        let mut x = 0f32;
        while x > -87.0 {
            let got = exp_neg(x) as f64;
            let want = (x as f64).exp();
            worst = worst.max(((got - want) / want).abs());
            x -= 0.000_37;
        }
        assert!(worst < 3e-7, "worst relative error {worst}");
        assert_eq!(exp_neg(0.0), 1.0);
        assert_eq!(exp_neg(-88.0), 0.0);
        assert_eq!(exp_neg(f32::NEG_INFINITY), 0.0);
    }

    #[test]
    fn passes_agree_with_plain_loops() {
        let x: Vec<f32> = (0..1000)
            .map(|i| {
                if i % 97 == 5 {
                    f32::NEG_INFINITY
                } else {
                    ((i * 7919) % 613) as f32 * 0.01 - 3.0
                }
            })
            .collect();
        let m = x.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
        assert_eq!(max(&x), m);
        assert_eq!(
            checked_max(&x),
            Scan::Max {
                max: m,
                finite: 1000 - 11
            }
        );
        let ids: Vec<u32> = (0..1000).map(|i| (i * 7919) % 1013).collect();
        assert_eq!(max_u32(&ids), *ids.iter().max().unwrap());
        assert_eq!(max_u32(&[]), 0);
        assert_eq!(
            count_at_least(&x, 0.5),
            x.iter().filter(|&&v| v >= 0.5).count()
        );
        assert_eq!(count_at_least(&x, ALL_FINITE), 1000 - 11);
        let mut seen = Vec::new();
        for_each_at_least(&x, 2.5, |i, v| seen.push((i, v)));
        let want: Vec<(usize, f32)> = x
            .iter()
            .enumerate()
            .filter(|(_, v)| **v >= 2.5)
            .map(|(i, &v)| (i, v))
            .collect();
        assert_eq!(seen, want);
        let mut sums = Vec::new();
        let total = exp_chunk_sums(&x, m, ALL_FINITE, &mut sums);
        let exact: f64 = x.iter().map(|&v| ((v - m) as f64).exp()).sum();
        assert!(((total - exact) / exact).abs() < 1e-6);
        assert_eq!(sums.len(), 1000usize.div_ceil(EXP_CHUNK));
        let mut bad = x.clone();
        bad[700] = f32::NAN;
        bad[800] = f32::INFINITY;
        assert_eq!(checked_max(&bad), Scan::Bad { id: 700, nan: true });
        bad[700] = 0.0;
        assert_eq!(
            checked_max(&bad),
            Scan::Bad {
                id: 800,
                nan: false
            }
        );
    }
}
