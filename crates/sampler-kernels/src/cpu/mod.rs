//! The CPU implementation of the fused ops: a row program interpreted per row, rows in
//! parallel on rayon's pool when there is enough work, per-thread scratch buffers that live as
//! long as the thread (the hot loop allocates nothing per row).

// The row stages test their parameters as `!(x > 0.0)` on purpose: a NaN parameter reads
// as "off", the same answer as the plain path's comparisons give.
#![allow(clippy::neg_cmp_op_on_partial_ord)]

mod cfg;
mod draw;
pub(crate) mod entropix;
mod filters;
mod penalties;
mod row;
mod select;
mod temperature;
pub(crate) mod vector;

use std::cell::RefCell;

use rayon::prelude::*;

use row::{run_row, RowInput, Scratch};
pub(crate) use row::{Emit, RowOutput};

pub use temperature::{
    entropy_temperature, sigmoid_is_dynamic, sigmoid_temperature, MIN_DYNAMIC_T,
};

use crate::error::{invalid, Result};
use crate::spec::Program;

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

/// Batches with fewer logits than this run on the calling thread: below it, handing rows to
/// the pool costs more than it saves (a VALL-E AR step of 8 rows of 1025 is about 12 µs of row
/// work on one core, less than waking the pool's threads costs).
const PARALLEL_MIN: usize = 1 << 14;

/// A `[rows, cols]` input: rows `stride` apart in `data`.
#[derive(Clone, Copy)]
pub(crate) struct Strided<'a, T> {
    pub data: &'a [T],
    pub stride: usize,
    pub cols: usize,
}

impl<'a, T> Strided<'a, T> {
    pub fn row(&self, r: usize) -> &'a [T] {
        &self.data[r * self.stride..r * self.stride + self.cols]
    }

    /// Checks that `rows` rows fit in `data`.
    pub fn check(self, rows: usize, what: &str) -> Result<Self> {
        if rows > 0 && (rows - 1) * self.stride + self.cols > self.data.len() {
            return Err(invalid(format!(
                "{what}: {rows} rows of {} with stride {} do not fit in {} elements",
                self.cols,
                self.stride,
                self.data.len()
            )));
        }
        Ok(self)
    }
}

/// The histories of a segment: `tokens` rows (capacity `cols`), the valid length of each row,
/// and optionally the token row each row reads (NAR: every position of a sequence reads the
/// sequence's previous level).
#[derive(Clone, Copy)]
pub(crate) struct History<'a> {
    pub tokens: Strided<'a, u32>,
    pub lens: &'a [u32],
    pub row_map: Option<&'a [u32]>,
}

impl<'a> History<'a> {
    /// Checks every valid token id against the vocabulary, each token row once (rows that
    /// share a token row are checked up to their longest length).
    fn check(&self, rows: usize, vocab: usize) -> Result<()> {
        let token_rows = self.token_rows();
        let mut need = vec![0usize; token_rows];
        for r in 0..rows {
            let src = self.row_map.map_or(r, |m| m[r] as usize);
            if src >= token_rows {
                return Err(invalid(format!(
                    "row {r}: history row {src} does not exist ({token_rows} rows)"
                )));
            }
            need[src] = need[src].max(self.lens[r] as usize);
        }
        for (src, &len) in need.iter().enumerate() {
            if len > self.tokens.cols {
                return Err(invalid(format!(
                    "history length {len} exceeds the history width {}",
                    self.tokens.cols
                )));
            }
            let start = src * self.tokens.stride;
            let toks = &self.tokens.data[start..start + len];
            if (vector::max_u32(toks) as usize) < vocab {
                continue;
            }
            if let Some(&id) = toks.iter().find(|&&t| t as usize >= vocab) {
                return Err(crate::error::KernelError::TokenOutOfRange {
                    what: "history",
                    id: id as u64,
                    vocab,
                });
            }
        }
        Ok(())
    }

    fn token_rows(&self) -> usize {
        match self
            .tokens
            .data
            .len()
            .saturating_sub(self.tokens.cols)
            .checked_div(self.tokens.stride)
        {
            None => 1,
            Some(n) => n + 1,
        }
    }

    fn row(&self, r: usize) -> Result<&'a [u32]> {
        let src = self.row_map.map_or(r, |m| m[r] as usize);
        let len = self.lens[r] as usize;
        let rows = self.token_rows();
        if src >= rows {
            return Err(invalid(format!(
                "row {r}: history row {src} does not exist ({rows} rows)"
            )));
        }
        if len > self.tokens.cols {
            return Err(invalid(format!(
                "row {r}: history length {len} exceeds the history width {}",
                self.tokens.cols
            )));
        }
        let start = src * self.tokens.stride;
        Ok(&self.tokens.data[start..start + len])
    }
}

/// Everything a segment reads, as host slices.
pub(crate) struct Segment<'a> {
    pub logits: Strided<'a, f32>,
    pub null: Option<Strided<'a, f32>>,
    pub params: Option<Strided<'a, f32>>,
    pub history: Option<History<'a>>,
    pub row_ids: Option<&'a [u32]>,
    pub seed: u64,
    pub step: u64,
    pub state: Option<&'a [f32]>,
    /// `[1 or rows, 4]` attention metrics.
    pub attention: Option<Strided<'a, f32>>,
}

/// What a segment produced.
pub(crate) struct Output {
    /// `[rows, vocab]` processed logits, when asked for.
    pub logits: Option<Vec<f32>>,
    pub rows: Vec<RowOutput>,
}

fn one_row(
    program: &Program,
    seg: &Segment<'_>,
    r: usize,
    emit: Emit,
    out: Option<&mut [f32]>,
) -> Result<RowOutput> {
    let hist = match &seg.history {
        Some(h) if program.reads_history() => Some(h.row(r)?),
        _ => None,
    };
    let inp = RowInput {
        row: r,
        x: seg.logits.row(r),
        null: seg.null.map(|n| n.row(r)),
        params: seg.params.map_or(&[][..], |p| p.row(r)),
        hist,
        row_id: seg.row_ids.map_or(r as u32, |ids| ids[r]),
        seed: seg.seed,
        step: seg.step,
        mu: seg.state.map(|s| s[r]),
        attention: match seg.attention {
            None => [0.0; 4],
            Some(a) => {
                let v = a.row(if a.stride == 0 { 0 } else { r });
                [v[0], v[1], v[2], v[3]]
            }
        },
    };
    SCRATCH.with(|s| run_row(program, &inp, &mut s.borrow_mut(), emit, out))
}

/// Runs `program` on every row. With `write_logits` the processed rows are written out (for a
/// selecting program under `Emit::Logits`, the distribution it would draw from).
pub(crate) fn run(
    program: &Program,
    seg: &Segment<'_>,
    rows: usize,
    emit: Emit,
    write_logits: bool,
) -> Result<Output> {
    let vocab = seg.logits.cols;
    // A given history is checked whatever the program reads of it.
    if let Some(h) = &seg.history {
        h.check(rows, vocab)?;
    }
    let parallel = rows > 1 && rows * vocab >= PARALLEL_MIN;
    let (logits, results): (Option<Vec<f32>>, Vec<Result<RowOutput>>) = if write_logits {
        let mut out = vec![0f32; rows * vocab];
        let results = if parallel {
            out.par_chunks_mut(vocab)
                .enumerate()
                .map(|(r, y)| one_row(program, seg, r, emit, Some(y)))
                .collect()
        } else {
            out.chunks_mut(vocab)
                .enumerate()
                .map(|(r, y)| one_row(program, seg, r, emit, Some(y)))
                .collect()
        };
        (Some(out), results)
    } else {
        let results = if parallel {
            (0..rows)
                .into_par_iter()
                .map(|r| one_row(program, seg, r, emit, None))
                .collect()
        } else {
            (0..rows)
                .map(|r| one_row(program, seg, r, emit, None))
                .collect()
        };
        (None, results)
    };
    // The first failing row, whatever order the pool ran them in.
    let rows = results.into_iter().collect::<Result<Vec<_>>>()?;
    Ok(Output { logits, rows })
}
