/*
 * sampling_common.h -- the per-row algorithms of the fused sampling ops, written once for
 * CUDA (NVRTC / nvcc), Metal Shading Language and plain C/C++ (the host test harness).
 *
 * One thread block (Metal: threadgroup) works on one row. Every function below is called by
 * all threads of the block with the same arguments except `tid`; all control decisions are
 * made from values every thread reads from shared memory in the same order, so they are
 * uniform across the block and barriers are always reached by every thread.
 *
 * The semantics are those of the plain tensor path of sampler-core (docs/semantics.md: processors, the draw, equality rules):
 *   filter  = min-p -> top-k -> top-p -> temperature (dynamic or plain) -> top-n-sigma
 *   sample  = filter, then the draw (greedy or Philox inverse CDF)
 *   penalties = repetition (divide or sign-aware) -> frequency/presence -> length -> bias
 *
 * Sort-free thresholds: every filter before top-n-sigma keeps a set of the form
 * "value above a threshold" (plus, for top-p, a split of the tied values by id), so a row's
 * filter state is one ordered key G and an id bound B (see sk_keep). Thresholds are found by a
 * multi-pivot search over the 32-bit order-preserving keys of the floats: each pass over the row
 * evaluates SK_PIVOTS pivots at once (counts for top-k / min_tokens, probability mass for top-p)
 * with one block reduction, which narrows the key interval 16-fold, so a search ends after at
 * most 9 passes on an exact data value, whatever the row length.
 *
 * Reductions are deterministic: fixed per-thread element order, a fixed warp tree and a fixed
 * order over warps, so the same input gives bit-identical results on a device, run after run.
 *
 * Limits: vocab < 2^24 (counts are kept in f32, exact below 2^24).
 */
#ifndef SK_SAMPLING_COMMON_H
#define SK_SAMPLING_COMMON_H

/* ------------------------------------------------------------------------------------------ */
/* Platform layer                                                                              */
/* ------------------------------------------------------------------------------------------ */

#if defined(__CUDACC__) || defined(__CUDACC_RTC__)
#define SK_CUDA 1
#define SK_FN __device__ __forceinline__
#define SK_GLOBAL
#define SK_SHARED
#define SK_THREAD
#define SK_CONSTANT
#define SK_BARRIER() __syncthreads()
#define SK_WARP 32u
#ifndef SK_MAX_THREADS
#define SK_MAX_THREADS 1024u
#endif
#define SK_EXP(x) expf(x)
#define SK_LOG(x) logf(x)
#define SK_SQRT(x) sqrtf(x)
#define SK_FLOOR(x) floorf(x)
#define SK_F2U(x) __float_as_uint(x)
#define SK_U2F(x) __uint_as_float(x)
#define SK_MULHI(a, b) __umulhi((a), (b))

SK_FN float sk_warp_sum(float v) {
    for (unsigned o = 16u; o > 0u; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v; /* lanes may differ in the last bit: only lane 0's value is used */
}
SK_FN unsigned sk_warp_max_u(unsigned v) {
    for (unsigned o = 16u; o > 0u; o >>= 1) v = max(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}
SK_FN unsigned sk_warp_min_u(unsigned v) {
    for (unsigned o = 16u; o > 0u; o >>= 1) v = min(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

#elif defined(__METAL_VERSION__)
#include <metal_stdlib>
using namespace metal;
#define SK_METAL 1
#define SK_FN inline
#define SK_GLOBAL device
#define SK_SHARED threadgroup
#define SK_THREAD thread
#define SK_CONSTANT constant
#define SK_BARRIER() threadgroup_barrier(mem_flags::mem_device | mem_flags::mem_threadgroup)
/* Apple GPUs execute SIMD groups of 32 threads; threadgroups are launched as multiples of 32. */
#define SK_WARP 32u
#ifndef SK_MAX_THREADS
#define SK_MAX_THREADS 1024u
#endif
#define SK_EXP(x) precise::exp(x)
#define SK_LOG(x) precise::log(x)
#define SK_SQRT(x) precise::sqrt(x)
#define SK_FLOOR(x) floor(x)
#define SK_F2U(x) as_type<uint>(x)
#define SK_U2F(x) as_type<float>(x)
#define SK_MULHI(a, b) mulhi((a), (b))

SK_FN float sk_warp_sum(float v) { return simd_sum(v); }
SK_FN unsigned sk_warp_max_u(unsigned v) { return simd_max(v); }
SK_FN unsigned sk_warp_min_u(unsigned v) { return simd_min(v); }

#else /* host C / C++: a block is emulated by the harness (one OS thread per block thread) */
#include <math.h>
#include <string.h>
#define SK_HOST 1
#define SK_FN static inline
#define SK_GLOBAL
#define SK_SHARED
#define SK_THREAD
#define SK_CONSTANT
/* The harness defines sk_host_barrier() (a pthread barrier over the block's threads). */
#define SK_BARRIER() sk_host_barrier()
/* Warp width of the emulation: 1 (no warp level), or more to exercise the warp-level paths of
 * the block reductions; then the harness also defines sk_host_tid() and the lane scratch
 * arrays sk_host_lane_f / sk_host_lane_u (SK_MAX_THREADS entries each). */
#ifndef SK_HOST_WARP
#define SK_HOST_WARP 1u
#endif
#define SK_WARP SK_HOST_WARP
#ifndef SK_MAX_THREADS
#define SK_MAX_THREADS 64u
#endif
#define SK_EXP(x) expf(x)
#define SK_LOG(x) logf(x)
#define SK_SQRT(x) sqrtf(x)
#define SK_FLOOR(x) floorf(x)
SK_FN unsigned sk_host_f2u(float f) {
    unsigned u;
    memcpy(&u, &f, sizeof u);
    return u;
}
SK_FN float sk_host_u2f(unsigned u) {
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}
#define SK_F2U(x) sk_host_f2u(x)
#define SK_U2F(x) sk_host_u2f(x)
#define SK_MULHI(a, b) ((unsigned)(((unsigned long long)(a) * (unsigned long long)(b)) >> 32))

#if SK_HOST_WARP == 1
SK_FN float sk_warp_sum(float v) { return v; }
SK_FN unsigned sk_warp_max_u(unsigned v) { return v; }
SK_FN unsigned sk_warp_min_u(unsigned v) { return v; }
#else
/* Every lane gets the warp's result (as after a butterfly); called by all threads at once. */
SK_FN float sk_warp_sum(float v) {
    unsigned tid = sk_host_tid(), base = tid - tid % SK_WARP;
    sk_host_lane_f[tid] = v;
    SK_BARRIER();
    float r = 0.0f;
    for (unsigned l = 0u; l < SK_WARP; ++l) r += sk_host_lane_f[base + l];
    SK_BARRIER();
    return r;
}
SK_FN unsigned sk_warp_max_u(unsigned v) {
    unsigned tid = sk_host_tid(), base = tid - tid % SK_WARP;
    sk_host_lane_u[tid] = v;
    SK_BARRIER();
    unsigned r = 0u;
    for (unsigned l = 0u; l < SK_WARP; ++l) r = sk_host_lane_u[base + l] > r ? sk_host_lane_u[base + l] : r;
    SK_BARRIER();
    return r;
}
SK_FN unsigned sk_warp_min_u(unsigned v) {
    unsigned tid = sk_host_tid(), base = tid - tid % SK_WARP;
    sk_host_lane_u[tid] = v;
    SK_BARRIER();
    unsigned r = 0xffffffffu;
    for (unsigned l = 0u; l < SK_WARP; ++l) r = sk_host_lane_u[base + l] < r ? sk_host_lane_u[base + l] : r;
    SK_BARRIER();
    return r;
}
#endif
#endif

/* ------------------------------------------------------------------------------------------ */
/* Constants and shared-memory layout                                                         */
/* ------------------------------------------------------------------------------------------ */

/* Pivots per search pass: 15 pivots split the key interval into 16 parts. */
#define SK_PIVOTS 15u
#define SK_MAX_WARPS ((SK_MAX_THREADS + SK_WARP - 1u) / SK_WARP)
/* f32 scratch: per-warp partials of SK_PIVOTS sums, SK_PIVOTS totals, then the draw's scan. */
#define SK_FRED_TOTALS (SK_PIVOTS * SK_MAX_WARPS)
#define SK_FRED_SCAN (SK_FRED_TOTALS + SK_PIVOTS)
#define SK_FRED_LEN (SK_FRED_SCAN + SK_MAX_THREADS)
/* u32 scratch: per-warp partials, then one broadcast slot. */
#define SK_URED_RESULT SK_MAX_WARPS
#define SK_URED_LEN (SK_MAX_WARPS + 1u)

/* Columns of the [rows, 8] f32 parameter rows. */
#define SK_P_MIN_P 0u
#define SK_P_MIN_TOKENS 1u
#define SK_P_TOP_K 2u
#define SK_P_TOP_P 3u
#define SK_P_TEMPERATURE 4u
#define SK_P_MIN_TEMPERATURE 5u
#define SK_P_TOP_N_SIGMA 6u
#define SK_P_GREEDY 7u

#define SK_Q_REPETITION 0u
#define SK_Q_DECAY 1u
#define SK_Q_WINDOW 2u
#define SK_Q_SIGN_AWARE 3u
#define SK_Q_FREQUENCY 4u
#define SK_Q_PRESENCE 5u
#define SK_Q_LENGTH 6u
#define SK_Q_STOP_TOKEN 7u

#define SK_NEG_INF SK_U2F(0xff800000u)
/* sk_key(-inf): every finite value has a larger key. */
#define SK_KEY_NEG_INF 0x007fffffu

/* Order-preserving map of a (non-NaN) f32 onto u32: a < b  <=>  key(a) < key(b). */
SK_FN unsigned sk_key(float x) {
    unsigned u = SK_F2U(x);
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}
SK_FN float sk_unkey(unsigned k) {
    return SK_U2F((k & 0x80000000u) ? (k & 0x7fffffffu) : ~k);
}

/* ------------------------------------------------------------------------------------------ */
/* Block reductions (every thread gets the same result; each ends with a barrier so the       */
/* scratch can be reused at once)                                                              */
/* ------------------------------------------------------------------------------------------ */

SK_FN float sk_block_sum(float v, SK_SHARED float* fred, unsigned tid, unsigned nt) {
    v = sk_warp_sum(v);
    if (tid % SK_WARP == 0u) fred[tid / SK_WARP] = v;
    SK_BARRIER();
    unsigned nw = (nt + SK_WARP - 1u) / SK_WARP;
    float r = 0.0f;
    for (unsigned w = 0u; w < nw; ++w) r += fred[w];
    SK_BARRIER();
    return r;
}

SK_FN unsigned sk_block_max_u(unsigned v, SK_SHARED unsigned* ured, unsigned tid, unsigned nt) {
    v = sk_warp_max_u(v);
    if (tid % SK_WARP == 0u) ured[tid / SK_WARP] = v;
    SK_BARRIER();
    unsigned nw = (nt + SK_WARP - 1u) / SK_WARP;
    unsigned r = 0u;
    for (unsigned w = 0u; w < nw; ++w) r = ured[w] > r ? ured[w] : r;
    SK_BARRIER();
    return r;
}

SK_FN unsigned sk_block_min_u(unsigned v, SK_SHARED unsigned* ured, unsigned tid, unsigned nt) {
    v = sk_warp_min_u(v);
    if (tid % SK_WARP == 0u) ured[tid / SK_WARP] = v;
    SK_BARRIER();
    unsigned nw = (nt + SK_WARP - 1u) / SK_WARP;
    unsigned r = 0xffffffffu;
    for (unsigned w = 0u; w < nw; ++w) r = ured[w] < r ? ured[w] : r;
    SK_BARRIER();
    return r;
}

/* Sums SK_PIVOTS per-thread values across the block, in place. */
SK_FN void sk_block_sum_pivots(SK_THREAD float* acc, SK_SHARED float* fred, unsigned tid,
                               unsigned nt) {
    unsigned nw = (nt + SK_WARP - 1u) / SK_WARP;
    for (unsigned j = 0u; j < SK_PIVOTS; ++j) {
        float v = sk_warp_sum(acc[j]);
        if (tid % SK_WARP == 0u) fred[j * SK_MAX_WARPS + tid / SK_WARP] = v;
    }
    SK_BARRIER();
    for (unsigned j = tid; j < SK_PIVOTS; j += nt) {
        float r = 0.0f;
        for (unsigned w = 0u; w < nw; ++w) r += fred[j * SK_MAX_WARPS + w];
        fred[SK_FRED_TOTALS + j] = r;
    }
    SK_BARRIER();
    for (unsigned j = 0u; j < SK_PIVOTS; ++j) acc[j] = fred[SK_FRED_TOTALS + j];
    SK_BARRIER();
}

/* SK_PIVOTS ascending pivots strictly inside (lo, hi) where there is room; the rest equal hi,
 * which satisfies the search's upper invariant and so never moves a bound. Needs hi - lo >= 2. */
SK_FN void sk_make_pivots(unsigned lo, unsigned hi, SK_THREAD unsigned* piv) {
    unsigned span = hi - lo;
    unsigned step = span / (SK_PIVOTS + 1u);
    if (step == 0u) step = 1u;
    for (unsigned j = 0u; j < SK_PIVOTS; ++j) {
        unsigned d = step * (j + 1u); /* < span whenever step = span / 16 >= 1: no overflow */
        piv[j] = d < span ? lo + d : hi;
    }
}

/* ------------------------------------------------------------------------------------------ */
/* Philox4x32-10 (Salmon et al., SC'11), as sampler-core's philox.rs                          */
/* ------------------------------------------------------------------------------------------ */

typedef struct {
    unsigned v[4];
} sk_u32x4;

SK_FN sk_u32x4 sk_philox4x32_10(unsigned c0, unsigned c1, unsigned c2, unsigned c3, unsigned k0,
                                unsigned k1) {
    for (unsigned r = 0u; r < 10u; ++r) {
        if (r > 0u) {
            k0 += 0x9E3779B9u;
            k1 += 0xBB67AE85u;
        }
        unsigned hi0 = SK_MULHI(0xD2511F53u, c0);
        unsigned lo0 = 0xD2511F53u * c0;
        unsigned hi1 = SK_MULHI(0xCD9E8D57u, c2);
        unsigned lo1 = 0xCD9E8D57u * c2;
        unsigned n0 = hi1 ^ c1 ^ k0;
        unsigned n2 = hi0 ^ c3 ^ k1;
        c0 = n0;
        c1 = lo1;
        c2 = n2;
        c3 = lo0;
    }
    sk_u32x4 r;
    r.v[0] = c0;
    r.v[1] = c1;
    r.v[2] = c2;
    r.v[3] = c3;
    return r;
}

/* The draw's uniform in [0, 1): key = seed, counter = (step, row id, 0); top 24 bits of word 0. */
SK_FN float sk_uniform(unsigned seed_lo, unsigned seed_hi, unsigned step_lo, unsigned step_hi,
                       unsigned row_id) {
    sk_u32x4 r = sk_philox4x32_10(step_lo, step_hi, row_id, 0u, seed_lo, seed_hi);
    return (float)(r.v[0] >> 8) * (1.0f / 16777216.0f);
}

/* ------------------------------------------------------------------------------------------ */
/* The filter chain                                                                           */
/* ------------------------------------------------------------------------------------------ */

/* A row's filter state; identical in every thread of the block. */
typedef struct {
    float max;        /* largest logit (always kept) */
    unsigned max_key; /* sk_key(max) */
    float nfinite;    /* number of finite logits; 0 = the row is all -inf */
    unsigned G;       /* kept: key > G, or key == G and id < B */
    unsigned B;
    float kept_sum;   /* sum over the kept set of exp(x - max), valid when kept_sum_ok */
    int kept_sum_ok;
    float divisor;    /* temperature: y = x / divisor */
    int sigma_on;     /* top-n-sigma: also keep only y >= cut */
    float cut;
    float ymax;       /* largest processed value y over the final kept set */
    int ymax_ok;
} sk_row_state;

SK_FN int sk_keep(unsigned key, unsigned i, unsigned G, unsigned B) {
    return key > G || (key == G && i < B);
}

/* Whether token i survives the whole chain; *y receives its processed logit. */
SK_FN int sk_final(sk_row_state st, float x, unsigned i, SK_THREAD float* y) {
    *y = x / st.divisor;
    if (!sk_keep(sk_key(x), i, st.G, st.B)) return 0;
    return !st.sigma_on || *y >= st.cut;
}

/* Sum over the current kept set of exp(x - max). */
SK_FN float sk_kept_exp_sum(const SK_GLOBAL float* x, unsigned V, sk_row_state st,
                            SK_SHARED float* fred, unsigned tid, unsigned nt) {
    float s = 0.0f;
    for (unsigned i = tid; i < V; i += nt) {
        float v = x[i];
        if (sk_keep(sk_key(v), i, st.G, st.B)) s += SK_EXP(v - st.max);
    }
    return sk_block_sum(s, fred, tid, nt);
}

/* Keeps only key >= a (intersected with the current set, which is already a top set). */
SK_FN void sk_keep_at_least(SK_THREAD sk_row_state* st, unsigned a, unsigned V) {
    if (a > st->G) {
        st->G = a;
        st->B = V;
        st->kept_sum_ok = 0;
    }
}

/* The largest key P with count(x with key >= P) >= k, for 1 <= k <= nkept, where the kept set
 * is the top set {key >= st.G} of nkept values; *count receives count(key >= P). This is the
 * k-th largest value with ties counted (tensor_ops::kth_largest). */
SK_FN unsigned sk_kth_largest_key(const SK_GLOBAL float* x, unsigned V, float k, float nkept,
                                  sk_row_state st, SK_THREAD float* count, SK_SHARED float* fred,
                                  unsigned tid, unsigned nt) {
    /* invariants: count(>= lo) >= k, count(>= hi) < k */
    unsigned lo = st.G;
    float lo_count = nkept;
    unsigned hi = st.max_key + 1u;
    while (hi - lo > 1u) {
        unsigned piv[SK_PIVOTS];
        float acc[SK_PIVOTS];
        sk_make_pivots(lo, hi, piv);
        for (unsigned j = 0u; j < SK_PIVOTS; ++j) acc[j] = 0.0f;
        for (unsigned i = tid; i < V; i += nt) {
            unsigned key = sk_key(x[i]);
            for (unsigned j = 0u; j < SK_PIVOTS; ++j) acc[j] += key >= piv[j] ? 1.0f : 0.0f;
        }
        sk_block_sum_pivots(acc, fred, tid, nt);
        unsigned nlo = lo, nhi = hi;
        float nlo_count = lo_count;
        for (unsigned j = 0u; j < SK_PIVOTS; ++j) {
            if (acc[j] >= k) {
                if (piv[j] > nlo) {
                    nlo = piv[j];
                    nlo_count = acc[j];
                }
            } else if (piv[j] < nhi) {
                nhi = piv[j];
            }
        }
        lo = nlo;
        lo_count = nlo_count;
        hi = nhi;
    }
    *count = lo_count;
    return lo;
}

/* Builds the state of a row after min-p, top-k, top-p, temperature and top-n-sigma. */
SK_FN sk_row_state sk_filter_state(const SK_GLOBAL float* x, const SK_GLOBAL float* prm,
                                   unsigned V, SK_SHARED float* fred, SK_SHARED unsigned* ured,
                                   unsigned tid, unsigned nt) {
    sk_row_state st;
    /* --- row statistics: largest and smallest finite key, number of finite logits */
    {
        unsigned kmax = 0u, kmin = 0xffffffffu;
        float cnt = 0.0f;
        for (unsigned i = tid; i < V; i += nt) {
            unsigned key = sk_key(x[i]);
            if (key > SK_KEY_NEG_INF) {
                kmax = key > kmax ? key : kmax;
                kmin = key < kmin ? key : kmin;
                cnt += 1.0f;
            }
        }
        st.max_key = sk_block_max_u(kmax, ured, tid, nt);
        unsigned min_key = sk_block_min_u(kmin, ured, tid, nt);
        st.nfinite = sk_block_sum(cnt, fred, tid, nt);
        st.max = sk_unkey(st.max_key);
        st.G = min_key;
        st.B = V;
        st.kept_sum = 0.0f;
        st.kept_sum_ok = 0;
        st.divisor = 1.0f;
        st.sigma_on = 0;
        st.cut = 0.0f;
        st.ymax = 0.0f;
        st.ymax_ok = 0;
    }
    if (st.nfinite == 0.0f) return st;
    float nkept = st.nfinite;

    /* --- min-p: keep prob >= min_p * max prob, and the min_tokens highest logits */
    float min_p = prm[SK_P_MIN_P];
    if (min_p > 0.0f) {
        float s0 = 0.0f;
        for (unsigned i = tid; i < V; i += nt) s0 += SK_EXP(x[i] - st.max);
        s0 = sk_block_sum(s0, fred, tid, nt);
        /* as the plain path: probs = e / sum, max prob = 1 / sum, floor = max prob * p */
        float floor_p = (1.0f / s0) * min_p;
        unsigned amin = 0xffffffffu;
        float above = 0.0f;
        for (unsigned i = tid; i < V; i += nt) {
            float v = x[i];
            unsigned key = sk_key(v);
            if (key > SK_KEY_NEG_INF && SK_EXP(v - st.max) / s0 >= floor_p) {
                amin = key < amin ? key : amin;
                above += 1.0f;
            }
        }
        unsigned a = sk_block_min_u(amin, ured, tid, nt);
        above = sk_block_sum(above, fred, tid, nt);
        float m = prm[SK_P_MIN_TOKENS];
        if (m > st.nfinite) m = st.nfinite;
        if (m < 1.0f) m = 1.0f;
        if (above >= m || a == 0xffffffffu) {
            /* the protected top-m set lies inside the kept set already */
            if (a != 0xffffffffu) {
                sk_keep_at_least(&st, a, V);
                nkept = above;
            }
        } else {
            float cnt_m;
            unsigned tm = sk_kth_largest_key(x, V, m, nkept, st, &cnt_m, fred, tid, nt);
            sk_keep_at_least(&st, tm, V);
            nkept = cnt_m;
        }
    }

    /* --- top-k: keep every logit >= the k-th largest (ties kept); k <= 0 off */
    float k = prm[SK_P_TOP_K];
    if (k > 0.0f && k < nkept) {
        float cnt_k;
        unsigned tk = sk_kth_largest_key(x, V, k < 1.0f ? 1.0f : k, nkept, st, &cnt_k, fred,
                                         tid, nt);
        sk_keep_at_least(&st, tk, V);
        nkept = cnt_k;
    }

    /* --- top-p: in logit-descending order (ties by lower id) keep a token while the mass
     * before it is <= p; probs = softmax of the row filtered so far. p >= 1 off. */
    float top_p = prm[SK_P_TOP_P];
    if (top_p < 1.0f) {
        float s1 = sk_kept_exp_sum(x, V, st, fred, tid, nt);
        st.kept_sum = s1;
        st.kept_sum_ok = 1;
        /* T = the smallest kept key with M(T) = mass of kept keys > T <= p.
         * lo: M(lo) > p (lo = G - 1 stands for "below every kept value"); hi: M(hi) <= p. */
        unsigned lo = st.G - 1u;
        unsigned hi = st.max_key;
        float hi_mass = 0.0f;
        while (hi - lo > 1u) {
            unsigned piv[SK_PIVOTS];
            float acc[SK_PIVOTS];
            sk_make_pivots(lo, hi, piv);
            for (unsigned j = 0u; j < SK_PIVOTS; ++j) acc[j] = 0.0f;
            for (unsigned i = tid; i < V; i += nt) {
                float v = x[i];
                unsigned key = sk_key(v);
                if (key > piv[0]) { /* piv[0] >= G: only kept values pass */
                    float prob = SK_EXP(v - st.max) / s1;
                    for (unsigned j = 0u; j < SK_PIVOTS; ++j) acc[j] += key > piv[j] ? prob : 0.0f;
                }
            }
            sk_block_sum_pivots(acc, fred, tid, nt);
            unsigned nlo = lo, nhi = hi;
            float nhi_mass = hi_mass;
            for (unsigned j = 0u; j < SK_PIVOTS; ++j) {
                if (acc[j] > top_p) {
                    if (piv[j] > nlo) nlo = piv[j];
                } else if (piv[j] < nhi) {
                    nhi = piv[j];
                    nhi_mass = acc[j];
                }
            }
            lo = nlo;
            hi = nhi;
            hi_mass = nhi_mass;
        }
        unsigned t = hi;
        /* The tied tokens at t share one probability q; the r-th of them by id (r = 0, 1, ..)
         * has mass hi_mass + r q before it, so the first floor((p - hi_mass) / q) + 1 stay. */
        float ties = 0.0f;
        for (unsigned i = tid; i < V; i += nt) ties += sk_key(x[i]) == t ? 1.0f : 0.0f;
        ties = sk_block_sum(ties, fred, tid, nt);
        float q = SK_EXP(sk_unkey(t) - st.max) / s1;
        float allowed = SK_FLOOR((top_p - hi_mass) / q) + 1.0f;
        if (ties > allowed) { /* also false for a NaN allowed: keep the whole tie group */
            /* B = the smallest id bound with count(ties with id < B) >= allowed */
            unsigned blo = 0u, bhi = V;
            while (bhi - blo > 1u) {
                unsigned piv[SK_PIVOTS];
                float acc[SK_PIVOTS];
                sk_make_pivots(blo, bhi, piv);
                for (unsigned j = 0u; j < SK_PIVOTS; ++j) acc[j] = 0.0f;
                for (unsigned i = tid; i < V; i += nt) {
                    if (sk_key(x[i]) == t) {
                        for (unsigned j = 0u; j < SK_PIVOTS; ++j) acc[j] += i < piv[j] ? 1.0f : 0.0f;
                    }
                }
                sk_block_sum_pivots(acc, fred, tid, nt);
                unsigned nlo = blo, nhi = bhi;
                for (unsigned j = 0u; j < SK_PIVOTS; ++j) {
                    if (acc[j] >= allowed) {
                        if (piv[j] < nhi) nhi = piv[j];
                    } else if (piv[j] > nlo) {
                        nlo = piv[j];
                    }
                }
                blo = nlo;
                bhi = nhi;
            }
            st.G = t;
            st.B = bhi;
            st.kept_sum_ok = 0;
        } else if (t > st.G) {
            st.G = t;
            st.B = V;
            st.kept_sum_ok = 0;
        }
    }

    /* --- temperature: the dynamic sigmoid form when |t - t_min| >= 0.001 and t_min >= 0,
     * else divide by t when t > 0 */
    float temp = prm[SK_P_TEMPERATURE];
    float temp_min = prm[SK_P_MIN_TEMPERATURE];
    float d = temp - temp_min;
    if ((d < 0.0f ? -d : d) >= 0.001f && temp_min >= 0.0f) {
        float s2 = st.kept_sum_ok ? st.kept_sum : sk_kept_exp_sum(x, V, st, fred, tid, nt);
        float p_max = 1.0f / s2;
        float sigmoid = SK_EXP(p_max * -10.0f + 5.0f) + 1.0f;
        st.divisor = temp - (temp - temp_min) / sigmoid;
    } else {
        st.divisor = temp > 0.0f ? temp : 1.0f;
    }

    /* --- top-n-sigma over the processed values y = x / divisor of the kept set:
     * keep y >= max y - n * std (unbiased); n <= 0 off */
    float n_sigma = prm[SK_P_TOP_N_SIGMA];
    if (n_sigma > 0.0f) {
        float sum = 0.0f, cnt = 0.0f;
        unsigned ymax_key = 0u;
        for (unsigned i = tid; i < V; i += nt) {
            float v = x[i];
            if (sk_keep(sk_key(v), i, st.G, st.B)) {
                float y = v / st.divisor;
                sum += y;
                cnt += 1.0f;
                unsigned yk = sk_key(y);
                ymax_key = yk > ymax_key ? yk : ymax_key;
            }
        }
        sum = sk_block_sum(sum, fred, tid, nt);
        cnt = sk_block_sum(cnt, fred, tid, nt);
        st.ymax = sk_unkey(sk_block_max_u(ymax_key, ured, tid, nt));
        st.ymax_ok = 1;
        float mean = sum / cnt;
        float dev2 = 0.0f;
        for (unsigned i = tid; i < V; i += nt) {
            float v = x[i];
            if (sk_keep(sk_key(v), i, st.G, st.B)) {
                float dy = v / st.divisor - mean;
                dev2 += dy * dy;
            }
        }
        dev2 = sk_block_sum(dev2, fred, tid, nt);
        float var = dev2 / (cnt - 1.0f > 1.0f ? cnt - 1.0f : 1.0f);
        st.sigma_on = 1;
        st.cut = st.ymax - SK_SQRT(var) * n_sigma;
    } else if (st.divisor > 0.0f) {
        /* division by a positive number is monotone: the largest y is max / divisor */
        st.ymax = st.max / st.divisor;
        st.ymax_ok = 1;
    }
    return st;
}

/* Writes the processed logits of one row: y where kept, -inf elsewhere. */
SK_FN void sk_filter_row(const SK_GLOBAL float* x, const SK_GLOBAL float* prm, SK_GLOBAL float* out,
                         unsigned V, SK_SHARED float* fred, SK_SHARED unsigned* ured, unsigned tid,
                         unsigned nt) {
    sk_row_state st = sk_filter_state(x, prm, V, fred, ured, tid, nt);
    if (st.nfinite == 0.0f) {
        for (unsigned i = tid; i < V; i += nt) out[i] = SK_NEG_INF;
        return;
    }
    for (unsigned i = tid; i < V; i += nt) {
        float y;
        int keep = sk_final(st, x[i], i, &y);
        out[i] = keep ? y : SK_NEG_INF;
    }
}

/* ------------------------------------------------------------------------------------------ */
/* The draw                                                                                   */
/* ------------------------------------------------------------------------------------------ */

/* Filters one row and draws one token: out2[0] = token id, out2[1] = its probability under the
 * processed distribution. Greedy (prm GREEDY != 0): the first maximum. Else the smallest id j
 * with sum(probs[..=j]) > u * sum(probs), u from Philox(seed; step, row_id), never a token of
 * probability 0. A row of only -inf writes (0, 0). */
SK_FN void sk_sample_row(const SK_GLOBAL float* x, const SK_GLOBAL float* prm, unsigned row_id,
                         unsigned seed_lo, unsigned seed_hi, unsigned step_lo, unsigned step_hi,
                         SK_GLOBAL float* out2, unsigned V, SK_SHARED float* fred,
                         SK_SHARED unsigned* ured, unsigned tid, unsigned nt) {
    sk_row_state st = sk_filter_state(x, prm, V, fred, ured, tid, nt);
    if (st.nfinite == 0.0f) {
        if (tid == 0u) {
            out2[0] = 0.0f;
            out2[1] = 0.0f;
        }
        return;
    }
    int greedy = prm[SK_P_GREEDY] != 0.0f;
    if (!st.ymax_ok) { /* only with a non-positive divisor: find the largest y by a pass */
        unsigned best = 0u;
        for (unsigned i = tid; i < V; i += nt) {
            float y;
            if (sk_final(st, x[i], i, &y)) {
                unsigned yk = sk_key(y);
                best = yk > best ? yk : best;
            }
        }
        st.ymax = sk_unkey(sk_block_max_u(best, ured, tid, nt));
    }
    unsigned argmax = 0u;
    if (greedy) { /* the lowest id holding the largest processed value */
        unsigned first = 0xffffffffu;
        for (unsigned i = tid; i < V; i += nt) {
            float y;
            if (sk_final(st, x[i], i, &y) && y == st.ymax && i < first) first = i;
        }
        argmax = sk_block_min_u(first, ured, tid, nt);
    }

    /* Each thread takes one contiguous segment of ids, sums its weights exp(y - ymax) in id
     * order and remembers its last positive-weight id; an inclusive scan over the threads
     * gives every segment's end. */
    unsigned seg = (V + nt - 1u) / nt;
    unsigned b0 = tid * seg;
    if (b0 > V) b0 = V;
    unsigned b1 = b0 + seg;
    if (b1 > V) b1 = V;
    float s = 0.0f;
    unsigned last = 0u; /* id + 1 of the last positive weight; 0 = none */
    for (unsigned i = b0; i < b1; ++i) {
        float y;
        if (sk_final(st, x[i], i, &y)) {
            float e = SK_EXP(y - st.ymax);
            s += e;
            if (e > 0.0f) last = i + 1u;
        }
    }
    SK_SHARED float* scan = fred + SK_FRED_SCAN;
    scan[tid] = s;
    SK_BARRIER();
    for (unsigned off = 1u; off < nt; off <<= 1) {
        float v = scan[tid];
        if (tid >= off) v += scan[tid - off];
        SK_BARRIER();
        scan[tid] = v;
        SK_BARRIER();
    }
    float total = scan[nt - 1u];

    unsigned token;
    if (greedy) {
        token = argmax;
    } else {
        float u = sk_uniform(seed_lo, seed_hi, step_lo, step_hi, row_id);
        float target = u * total;
        if (tid == 0u) ured[SK_URED_RESULT] = 0u;
        /* the first segment whose end passes the target holds the token */
        unsigned c = sk_block_min_u(scan[tid] > target ? tid : nt, ured, tid, nt);
        /* fallback: the last positive weight up to that segment (or anywhere when none passes:
         * u * total rounded up to the total) */
        unsigned fallback = sk_block_max_u(tid <= c ? last : 0u, ured, tid, nt);
        if (tid == c) {
            /* the scan of segment c starts at the previous end, which is <= target; a weight
             * of 0 leaves the running sum unchanged, so the first id passing has weight > 0 */
            float run = tid > 0u ? scan[tid - 1u] : 0.0f;
            for (unsigned i = b0; i < b1; ++i) {
                float y;
                if (sk_final(st, x[i], i, &y)) {
                    run += SK_EXP(y - st.ymax);
                    if (run > target) {
                        ured[SK_URED_RESULT] = i + 1u;
                        break;
                    }
                }
            }
        }
        SK_BARRIER();
        unsigned found = ured[SK_URED_RESULT];
        token = (found != 0u ? found : fallback) - 1u;
        SK_BARRIER();
    }
    if (tid == 0u) {
        float y = x[token] / st.divisor;
        out2[0] = (float)token;
        out2[1] = SK_EXP(y - st.ymax) / total;
    }
}

/* ------------------------------------------------------------------------------------------ */
/* Penalties                                                                                  */
/* ------------------------------------------------------------------------------------------ */

/* One row: out = x with the repetition penalty (divide form: logit /= rep * D^decay once per
 * occurrence at distance D = len - i < window (0 = all); sign-aware form: once per distinct
 * token, positive /= rep, negative *= rep), then frequency/presence (logit -= count * freq +
 * (count > 0) * presence over the same window), the length penalty on the stop token
 * (logit /= (len + 1)^length) and, when has_bias, the bias. -inf stays -inf.
 * hist holds the row's history; ids >= V are skipped (validated by the caller). */
SK_FN void sk_penalties_row(const SK_GLOBAL float* x, const SK_GLOBAL unsigned* hist, unsigned len,
                            const SK_GLOBAL float* prm, const SK_GLOBAL float* bias,
                            int has_bias, SK_GLOBAL float* out, unsigned V, unsigned tid,
                            unsigned nt) {
    float rep = prm[SK_Q_REPETITION];
    float decay = prm[SK_Q_DECAY];
    float window = prm[SK_Q_WINDOW];
    int sign_aware = prm[SK_Q_SIGN_AWARE] != 0.0f;
    float freq = prm[SK_Q_FREQUENCY];
    float presence = prm[SK_Q_PRESENCE];
    float length = prm[SK_Q_LENGTH];
    float stop = prm[SK_Q_STOP_TOKEN];
    /* positions i with D = len - i < window, i.e. i >= len - window + 1 */
    unsigned start = 0u;
    if (window >= 1.0f && window <= (float)len) start = len - (unsigned)window + 1u;
    float log_rep = SK_LOG(rep);

    for (unsigned i = tid; i < V; i += nt) out[i] = x[i];
    SK_BARRIER();
    /* the last occurrence of each token in the window applies that token's whole penalty, so
     * no two threads write one logit */
    for (unsigned i = start + tid; i < len; i += nt) {
        unsigned tok = hist[i];
        if (tok >= V) continue;
        int owner = 1;
        for (unsigned j = i + 1u; j < len; ++j) {
            if (hist[j] == tok) {
                owner = 0;
                break;
            }
        }
        if (!owner) continue;
        float log_div = 0.0f;
        float count = 0.0f;
        for (unsigned j = start; j <= i; ++j) {
            if (hist[j] == tok) {
                count += 1.0f;
                log_div += SK_LOG((float)(len - j)) * decay + log_rep;
            }
        }
        float v = x[tok];
        if (sign_aware) {
            v = v > 0.0f ? v / rep : v * rep;
        } else {
            v = v / SK_EXP(log_div);
        }
        v = v - (count * freq + presence);
        out[tok] = x[tok] == SK_NEG_INF ? SK_NEG_INF : v;
    }
    SK_BARRIER();
    if (tid == 0u && length != 0.0f && stop >= 0.0f && stop < (float)V) {
        unsigned s = (unsigned)stop;
        out[s] = out[s] / SK_EXP(SK_LOG((float)len + 1.0f) * length);
    }
    if (has_bias) {
        SK_BARRIER();
        for (unsigned i = tid; i < V; i += nt) {
            float v = out[i];
            out[i] = v == SK_NEG_INF ? v : v + bias[i];
        }
    }
}

#endif /* SK_SAMPLING_COMMON_H */
