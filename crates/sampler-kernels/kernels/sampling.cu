// sampling.cu -- CUDA entry points of the fused sampling ops: one thread block per row.
//
// The per-row algorithms live in sampling_common.h. At run time the Rust side (sampler-kernels
// src/cuda.rs) prepends that header's text to this file and compiles the result with NVRTC, so
// the #include below is skipped there (the include guard is already defined); nvcc
// (scripts/check-kernels.sh) resolves it from this directory.
//
// Pointers point at the first element of each tensor (layout start offsets applied on the
// host); row strides are in elements. Block size: a multiple of 32, at most 1024.
#ifndef SK_SAMPLING_COMMON_H
#include "sampling_common.h"
#endif

// logits [rows, vocab] -> out [rows, vocab] contiguous: processed logits, -inf where filtered.
extern "C" __global__ void __launch_bounds__(SK_MAX_THREADS)
    sk_filter_f32(const float* logits, unsigned long long logits_stride, const float* params,
                  unsigned long long params_stride, float* out, unsigned vocab) {
    __shared__ float fred[SK_FRED_LEN];
    __shared__ unsigned ured[SK_URED_LEN];
    unsigned long long row = blockIdx.x;
    sk_filter_row(logits + row * logits_stride, params + row * params_stride, out + row * vocab,
                  vocab, fred, ured, threadIdx.x, blockDim.x);
}

// logits [rows, vocab] -> out [rows, 2] contiguous: (token id, probability) per row.
extern "C" __global__ void __launch_bounds__(SK_MAX_THREADS)
    sk_sample_f32(const float* logits, unsigned long long logits_stride, const float* params,
                  unsigned long long params_stride, const unsigned* row_ids,
                  unsigned long long row_ids_stride, float* out, unsigned vocab, unsigned seed_lo,
                  unsigned seed_hi, unsigned step_lo, unsigned step_hi) {
    __shared__ float fred[SK_FRED_LEN];
    __shared__ unsigned ured[SK_URED_LEN];
    unsigned long long row = blockIdx.x;
    sk_sample_row(logits + row * logits_stride, params + row * params_stride,
                  row_ids[row * row_ids_stride], seed_lo, seed_hi, step_lo, step_hi, out + row * 2u,
                  vocab, fred, ured, threadIdx.x, blockDim.x);
}

// logits [rows, vocab], tokens [rows, width] u32, lens [rows] u32, params [rows, 8],
// bias [rows, vocab] (row stride 0 for one shared row; ignored unless has_bias)
// -> out [rows, vocab] contiguous.
extern "C" __global__ void __launch_bounds__(SK_MAX_THREADS)
    sk_penalties_f32(const float* logits, unsigned long long logits_stride, const unsigned* tokens,
                     unsigned long long tokens_stride, const unsigned* lens,
                     unsigned long long lens_stride, const float* params,
                     unsigned long long params_stride, const float* bias,
                     unsigned long long bias_stride, int has_bias, float* out, unsigned vocab,
                     unsigned width) {
    unsigned long long row = blockIdx.x;
    unsigned len = lens[row * lens_stride];
    if (len > width) len = width;
    sk_penalties_row(logits + row * logits_stride, tokens + row * tokens_stride, len,
                     params + row * params_stride, bias + row * bias_stride, has_bias,
                     out + row * vocab, vocab, threadIdx.x, blockDim.x);
}
