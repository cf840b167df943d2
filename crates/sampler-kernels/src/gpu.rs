//! What the CUDA and Metal implementations share: the kernel sources (the crate's kernels/ folder,
//! built into the crate so that nothing is read from disk at run time), the argument
//! checks that turn layouts into (start offset, row stride) pairs, and the block size.
//!
//! Every kernel reads its inputs through a pointer to the first element and a row stride in
//! elements, so any layout whose last dimension is unit-stride works (a broadcast row has
//! stride 0); other layouts are an error, never a silent copy.
// Without a GPU feature only the tests use this module.
#![cfg_attr(not(any(feature = "cuda", feature = "metal")), allow(dead_code))]

use candle_core::{Layout, Result};

/// The per-row algorithms, written once for CUDA, Metal and the host test harness.
pub(crate) const COMMON_H: &str = include_str!("../kernels/sampling_common.h");

/// The CUDA entry points (thin wrappers over [`COMMON_H`]).
#[cfg(feature = "cuda")]
pub(crate) const CUDA_SRC: &str = include_str!("../kernels/sampling.cu");

/// The Metal entry points (thin wrappers over [`COMMON_H`]).
#[cfg(feature = "metal")]
pub(crate) const METAL_SRC: &str = include_str!("../kernels/sampling.metal");

/// The source handed to the run-time compiler: the header's text, then the entry points. The
/// entry file's `#include "sampling_common.h"` sits behind the header's include guard, so the
/// compiler never looks for the file.
pub(crate) fn program(entry_points: &str) -> String {
    format!("{COMMON_H}\n{entry_points}")
}

/// Columns of the `[rows, 8]` parameter tensors.
pub(crate) const PARAM_COLS: usize = 8;
/// Counts are kept in f32 inside the kernels, exact below 2^24.
pub(crate) const MAX_VOCAB: usize = 1 << 24;
/// Threads of one block (CUDA) or threadgroup (Metal).
pub(crate) const MAX_THREADS: usize = 1024;
/// Block sizes are multiples of the warp / SIMD-group width.
pub(crate) const WARP: usize = 32;

/// Where the rows of an argument live in its storage, in elements.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Rows {
    pub offset: usize,
    pub stride: usize,
}

pub(crate) fn check_sizes(rows: usize, vocab: usize) -> Result<()> {
    if rows == 0 || vocab == 0 {
        candle_core::bail!("fused sampling op: empty logits [{rows}, {vocab}]");
    }
    if vocab >= MAX_VOCAB {
        candle_core::bail!("fused sampling op: vocab {vocab} is not below {MAX_VOCAB}");
    }
    if rows > i32::MAX as usize {
        candle_core::bail!("fused sampling op: {rows} rows is more than one launch can hold");
    }
    Ok(())
}

fn in_bounds(what: &str, r: Rows, rows: usize, cols: usize, storage_len: usize) -> Result<Rows> {
    let end = r.offset + (rows - 1) * r.stride + cols;
    if end > storage_len {
        candle_core::bail!("{what}: layout reaches element {end} of a storage of {storage_len}");
    }
    Ok(r)
}

/// A `[rows, cols]` argument whose last dimension is unit-stride.
pub(crate) fn rows2(
    what: &str,
    l: &Layout,
    rows: usize,
    cols: usize,
    storage_len: usize,
) -> Result<Rows> {
    let (dims, stride) = (l.dims(), l.stride());
    if dims != [rows, cols] {
        candle_core::bail!("{what}: shape {dims:?}, expected [{rows}, {cols}]");
    }
    if cols > 1 && stride[1] != 1 {
        candle_core::bail!("{what}: the last dimension must be contiguous (strides {stride:?})");
    }
    let r = Rows {
        offset: l.start_offset(),
        stride: stride[0],
    };
    in_bounds(what, r, rows, cols, storage_len)
}

/// A `[rows]` argument (any stride).
pub(crate) fn rows1(what: &str, l: &Layout, rows: usize, storage_len: usize) -> Result<Rows> {
    let dims = l.dims();
    if dims != [rows] {
        candle_core::bail!("{what}: shape {dims:?}, expected [{rows}]");
    }
    let r = Rows {
        offset: l.start_offset(),
        stride: l.stride()[0],
    };
    in_bounds(what, r, rows, 1, storage_len)
}

/// A logit bias: `[vocab]` (one row for all) or `[rows, vocab]`.
pub(crate) fn bias_rows(l: &Layout, rows: usize, vocab: usize, storage_len: usize) -> Result<Rows> {
    if l.dims() == [vocab] {
        if vocab > 1 && l.stride()[0] != 1 {
            candle_core::bail!("bias: must be contiguous (strides {:?})", l.stride());
        }
        let r = Rows {
            offset: l.start_offset(),
            stride: 0,
        };
        return in_bounds("bias", r, rows, vocab, storage_len);
    }
    rows2("bias", l, rows, vocab, storage_len)
}

/// Threads per row: about 8 elements per thread, a multiple of [`WARP`] in `[WARP, max]`
/// (`max`: [`MAX_THREADS`] or what a Metal pipeline allows).
pub(crate) fn block_threads(work: usize, max: usize) -> usize {
    let max = (max.min(MAX_THREADS) / WARP).max(1) * WARP;
    work.div_ceil(8).next_power_of_two().clamp(WARP, max)
}

/// A value that a kernel takes as u32.
pub(crate) fn as_u32(what: &str, v: usize) -> Result<u32> {
    u32::try_from(v).map_err(|_| candle_core::Error::Msg(format!("{what} {v} does not fit in u32")))
}

/// Whether the CUDA kernels run every stage of `stages` (as one segment).
pub(crate) fn cuda_supports(stages: &[crate::spec::StageId]) -> bool {
    cfg!(feature = "cuda") && crate::gpu_ops::cuda_plan(stages).is_some()
}

/// Runs a segment on CUDA; also returns the number of kernel launches.
pub(crate) fn cuda_segment(
    program: &crate::spec::Program,
    inp: &crate::segment::SegmentInput<'_>,
    emit: crate::segment::Emit,
    rows: usize,
    vocab: usize,
) -> crate::error::Result<(crate::segment::SegmentOutput, u64)> {
    crate::gpu_ops::cuda_segment(program, inp, emit, rows, vocab)
}

/// Runs a selecting segment on CUDA and appends the tokens (see `run_segment_append`).
pub(crate) fn cuda_segment_append(
    program: &crate::spec::Program,
    inp: &crate::segment::SegmentInput<'_>,
    append: crate::segment::Append<'_>,
    rows: usize,
    vocab: usize,
) -> crate::error::Result<(crate::segment::SegmentOutput, crate::segment::Appended, u64)> {
    crate::gpu_ops::cuda_segment_append(program, inp, append, rows, vocab)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Shape;

    #[test]
    fn block_threads_scale_with_the_row_and_stay_warp_multiples() {
        assert_eq!(block_threads(5, MAX_THREADS), 32);
        assert_eq!(block_threads(1025, MAX_THREADS), 256);
        assert_eq!(block_threads(32000, MAX_THREADS), 1024);
        assert_eq!(block_threads(256_000, MAX_THREADS), 1024);
        // a Metal pipeline's limit, rounded down to a multiple of 32 (any multiple works)
        assert_eq!(block_threads(32000, 900), 896);
        assert_eq!(block_threads(32000, 20), 32);
    }

    #[test]
    fn rows_of_layouts() -> Result<()> {
        let l = Layout::contiguous_with_offset(Shape::from((3, 5)), 7);
        assert_eq!(
            rows2("x", &l, 3, 5, 22)?,
            Rows {
                offset: 7,
                stride: 5
            }
        );
        assert!(rows2("x", &l, 3, 5, 21).is_err(), "one past the storage");
        assert!(rows2("x", &l, 3, 4, 100).is_err(), "wrong shape");
        // a column view of a [5, 3] tensor: last dimension not unit-stride
        let t = Layout::contiguous(Shape::from((5, 3))).transpose(0, 1)?;
        assert!(rows2("x", &t, 3, 5, 15).is_err());
        // a row broadcast to 3 rows
        let b = Layout::contiguous(Shape::from((1, 5))).broadcast_as((3, 5))?;
        assert_eq!(
            rows2("x", &b, 3, 5, 5)?,
            Rows {
                offset: 0,
                stride: 0
            }
        );
        let v = Layout::contiguous_with_offset(Shape::from(4), 2);
        assert_eq!(
            rows1("v", &v, 4, 6)?,
            Rows {
                offset: 2,
                stride: 1
            }
        );
        assert_eq!(
            bias_rows(&Layout::contiguous(Shape::from(5)), 3, 5, 5)?.stride,
            0
        );
        assert_eq!(bias_rows(&l, 3, 5, 22)?.stride, 5);
        Ok(())
    }

    #[test]
    fn sizes_are_checked() {
        assert!(check_sizes(0, 5).is_err());
        assert!(check_sizes(2, 0).is_err());
        assert!(check_sizes(2, MAX_VOCAB).is_err());
        assert!(check_sizes(512, 256_000).is_ok());
    }
}
