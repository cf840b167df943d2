// sampling.metal -- Metal entry points of the fused sampling ops: one threadgroup per row.
//
// The per-row algorithms live in sampling_common.h. At run time the Rust side (sampler-kernels
// src/metal.rs) prepends that header's text to this file and compiles the result with
// newLibraryWithSource (fast math off), so the #include below is skipped there.
//
// Buffers are bound at the first element of each tensor (layout start offsets applied as
// buffer offsets); row strides are in elements. Threadgroup size: a multiple of 32, at most
// 1024 and at most the pipeline's maxTotalThreadsPerThreadgroup.
#ifndef SK_SAMPLING_COMMON_H
#include "sampling_common.h"
#endif

// Mirrored by #[repr(C)] structs in src/metal.rs.
struct sk_filter_args {
    uint vocab;
    uint logits_stride;
    uint params_stride;
};

struct sk_sample_args {
    uint vocab;
    uint logits_stride;
    uint params_stride;
    uint row_ids_stride;
    uint seed_lo;
    uint seed_hi;
    uint step_lo;
    uint step_hi;
};

struct sk_penalties_args {
    uint vocab;
    uint width;
    uint logits_stride;
    uint tokens_stride;
    uint lens_stride;
    uint params_stride;
    uint bias_stride;
    uint has_bias;
};

kernel void sk_filter_f32(device const float* logits [[buffer(0)]],
                          device const float* params [[buffer(1)]],
                          device float* out [[buffer(2)]],
                          constant sk_filter_args& a [[buffer(3)]],
                          uint row [[threadgroup_position_in_grid]],
                          uint tid [[thread_position_in_threadgroup]],
                          uint nt [[threads_per_threadgroup]]) {
    threadgroup float fred[SK_FRED_LEN];
    threadgroup uint ured[SK_URED_LEN];
    sk_filter_row(logits + (ulong)row * a.logits_stride, params + (ulong)row * a.params_stride,
                  out + (ulong)row * a.vocab, a.vocab, fred, ured, tid, nt);
}

kernel void sk_sample_f32(device const float* logits [[buffer(0)]],
                          device const float* params [[buffer(1)]],
                          device const uint* row_ids [[buffer(2)]],
                          device float* out [[buffer(3)]],
                          constant sk_sample_args& a [[buffer(4)]],
                          uint row [[threadgroup_position_in_grid]],
                          uint tid [[thread_position_in_threadgroup]],
                          uint nt [[threads_per_threadgroup]]) {
    threadgroup float fred[SK_FRED_LEN];
    threadgroup uint ured[SK_URED_LEN];
    sk_sample_row(logits + (ulong)row * a.logits_stride, params + (ulong)row * a.params_stride,
                  row_ids[(ulong)row * a.row_ids_stride], a.seed_lo, a.seed_hi, a.step_lo,
                  a.step_hi, out + (ulong)row * 2u, a.vocab, fred, ured, tid, nt);
}

kernel void sk_penalties_f32(device const float* logits [[buffer(0)]],
                             device const uint* tokens [[buffer(1)]],
                             device const uint* lens [[buffer(2)]],
                             device const float* params [[buffer(3)]],
                             device const float* bias [[buffer(4)]],
                             device float* out [[buffer(5)]],
                             constant sk_penalties_args& a [[buffer(6)]],
                             uint row [[threadgroup_position_in_grid]],
                             uint tid [[thread_position_in_threadgroup]],
                             uint nt [[threads_per_threadgroup]]) {
    uint len = lens[(ulong)row * a.lens_stride];
    if (len > a.width) len = a.width;
    sk_penalties_row(logits + (ulong)row * a.logits_stride, tokens + (ulong)row * a.tokens_stride,
                     len, params + (ulong)row * a.params_stride,
                     bias + (ulong)row * a.bias_stride, (int)a.has_bias,
                     out + (ulong)row * a.vocab, a.vocab, tid, nt);
}
