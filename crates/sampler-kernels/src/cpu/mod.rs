//! CPU implementations of the fused ops: rows in parallel on rayon's pool, one pass over each
//! row plus selection on its surviving candidates (no full sort), and per-thread scratch
//! buffers that live as long as the thread, so the hot loop allocates nothing per row.

mod filter;
mod penalties;

pub(crate) use filter::{filter, sample};
pub(crate) use penalties::penalties;

use candle_core::backend::BackendStorage;
use candle_core::{bail, CpuStorage, Layout, Result};

/// The contiguous f32 data of an op input of `len` elements.
pub(crate) fn f32_slice<'a>(
    s: &'a CpuStorage,
    l: &Layout,
    what: &str,
    len: usize,
) -> Result<&'a [f32]> {
    let CpuStorage::F32(data) = s else {
        bail!("{what} must be f32, got {:?}", s.dtype())
    };
    contiguous(data, l, what, len)
}

/// The contiguous u32 data of an op input of `len` elements.
pub(crate) fn u32_slice<'a>(
    s: &'a CpuStorage,
    l: &Layout,
    what: &str,
    len: usize,
) -> Result<&'a [u32]> {
    let CpuStorage::U32(data) = s else {
        bail!("{what} must be u32, got {:?}", s.dtype())
    };
    contiguous(data, l, what, len)
}

fn contiguous<'a, T>(data: &'a [T], l: &Layout, what: &str, len: usize) -> Result<&'a [T]> {
    let Some((start, end)) = l.contiguous_offsets() else {
        bail!(
            "{what} must be contiguous (call .contiguous() first), got strides {:?}",
            l.stride()
        )
    };
    if end - start != len || end > data.len() {
        bail!("{what} has {} elements, expected {len}", end - start);
    }
    Ok(&data[start..end])
}
