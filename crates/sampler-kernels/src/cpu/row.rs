//! One row through a program. The row's kept set starts as "every finite value" of the input
//! row and is held in one of two forms:
//!
//! - dense: the values of the whole row (the input itself, or a private copy once a stage
//!   changes a value) and a floor: the kept set is every value `>= floor`. Stages that keep an
//!   upper set of values (min-p, top-k) only raise the floor, with thresholds found by
//!   selection, so a long row is never materialised just to be cut to a few tokens;
//! - candidates: the kept tokens as (value, id) pairs, once a stage needs them one by one
//!   (top-p, typical-p, a temperature after a cut, ...).
//!
//! Decisions are computed in f64 (log-sum-exp, entropies, masses), values in f32, as the plain
//! tensor path does, so both paths agree exactly up to the summation order of f64 sums.

use super::select::Cand;
use super::vector::{self, Scan, ALL_FINITE};
use crate::error::{KernelError, Result};
use crate::spec::{Program, StageOp, ENTROPIX_METRICS};

/// Everything a row program reads for one row.
pub(crate) struct RowInput<'a> {
    pub row: usize,
    pub x: &'a [f32],
    pub null: Option<&'a [f32]>,
    /// The row's parameter words (the program's columns).
    pub params: &'a [f32],
    /// The row's valid history (oldest first), when the program reads one.
    pub hist: Option<&'a [u32]>,
    pub row_id: u32,
    pub seed: u64,
    pub step: u64,
    /// Mirostat's mu before this step; `None` = its initial value 2 tau.
    pub mu: Option<f32>,
    /// The row's attention metrics (zeros when none were given).
    pub attention: [f32; 4],
}

/// What a row program produced besides its logits.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(crate) struct RowOutput {
    pub token: u32,
    pub prob: f32,
    pub logprob: f32,
    /// Mirostat's mu after this step (the input value when the step did not draw).
    pub mu: f32,
    pub metrics: [f32; ENTROPIX_METRICS],
    /// The kept set ended empty (every logit -inf).
    pub empty: bool,
}

/// Whether a selecting program draws, or writes the distribution it would draw from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Emit {
    Logits,
    Tokens,
}

/// Per-thread buffers, reused from row to row. The vocabulary-sized maps are all-clear
/// between rows: every entry a stage sets is reset before the stage returns.
#[derive(Default)]
pub(crate) struct Scratch {
    pub dense: Vec<f32>,
    pub cands: Vec<Cand>,
    pub f32s: Vec<f32>,
    /// Order-preserving keys of values (selections).
    pub keys: Vec<u32>,
    pub f64s: Vec<f64>,
    pub f64b: Vec<f64>,
    pub pairs: Vec<(f64, f64)>,
    pub chunk_sums: Vec<f64>,
    /// Candidate index of each id (`u32::MAX` = not a candidate).
    pub pos: Vec<u32>,
    /// Summed log-divisors of the repetition penalty, per id.
    pub log_div: Vec<f32>,
    /// Occurrences in a penalty window, per id.
    pub counts: Vec<u32>,
    /// (token, summed log-divisor, count) of each distinct token of a window.
    pub effects: Vec<(u32, f32, u32)>,
    /// `repeated[c]`: the f32 sum of `c` equal log-divisors, added one by one.
    pub repeated: Vec<f32>,
    /// Top-p's search.
    pub top_p: super::select::TopPScratch,
    /// DRY: the longest match per id.
    pub best: Vec<u32>,
    /// Ids touched by a dense edit.
    pub touched: Vec<u32>,
    /// Per-candidate scores (typical-p).
    pub scores: Vec<f64>,
}

impl Scratch {
    pub(crate) fn fit(&mut self, vocab: usize) {
        if self.pos.len() < vocab {
            self.pos.resize(vocab, u32::MAX);
            self.log_div.resize(vocab, 0.0);
            self.counts.resize(vocab, 0);
            self.best.resize(vocab, 0);
        }
    }
}

/// The row being processed.
pub(crate) struct Row<'a, 's> {
    pub inp: &'a RowInput<'a>,
    pub s: &'s mut Scratch,
    pub vocab: usize,
    /// The dense values live in `s.dense` (else they are the input row).
    owned: bool,
    /// The kept set is `s.cands` (else the dense values `>= floor`).
    cands: bool,
    floor: f32,
    max: Option<f32>,
    /// The kept count, when a stage knows it.
    count: Option<usize>,
    /// While dense: `s.cands` holds every dense value `>= this` (a superset of the kept set,
    /// gathered by a selection), so turning to candidates filters it instead of the row.
    superset: Option<f32>,
    /// `s.f64s` holds `exp(v - this)` for the candidates, in their order.
    exps_for: Option<f32>,
    pub out: RowOutput,
}

impl<'a, 's> Row<'a, 's> {
    /// The row's parameter at column `c`.
    #[inline]
    pub fn p(&self, c: u32) -> f32 {
        self.inp.params[c as usize]
    }

    /// The dense values.
    pub fn vals(&self) -> &[f32] {
        if self.owned {
            &self.s.dense
        } else {
            self.inp.x
        }
    }

    /// The dense values, the key scratch list and the candidate list, together.
    pub fn dense_tmp_cands(&mut self) -> (&[f32], &mut Vec<u32>, &mut Vec<Cand>) {
        let Scratch {
            dense, keys, cands, ..
        } = &mut *self.s;
        let x: &[f32] = if self.owned { dense } else { self.inp.x };
        (x, keys, cands)
    }

    /// The dense values and the chunk-sum scratch, together.
    pub fn dense_and_sums(&mut self) -> (&[f32], &mut Vec<f64>) {
        let Scratch {
            dense, chunk_sums, ..
        } = &mut *self.s;
        let x: &[f32] = if self.owned { dense } else { self.inp.x };
        (x, chunk_sums)
    }

    pub fn is_cands(&self) -> bool {
        self.cands
    }

    pub fn floor(&self) -> f32 {
        self.floor
    }

    /// Raises the dense floor (values keep their place); `count` is the new kept count when
    /// the caller knows it.
    pub fn raise_floor(&mut self, t: f32, count: Option<usize>) {
        debug_assert!(!self.cands);
        if t > self.floor {
            self.floor = t;
            self.count = count;
        }
    }

    /// Records that `s.cands` holds every dense value `>= t`, with ids.
    pub fn set_superset(&mut self, t: f32) {
        debug_assert!(!self.cands);
        self.superset = Some(t);
    }

    /// Makes the dense values private (a copy of the input), to change them in place.
    pub fn own(&mut self) {
        if !self.owned && !self.cands {
            self.s.dense.clear();
            self.s.dense.extend_from_slice(self.inp.x);
            self.owned = true;
        }
    }

    /// Turns the kept set into candidates.
    pub fn make_cands(&mut self) {
        if self.cands {
            return;
        }
        let floor = self.floor;
        match self.superset {
            Some(t) if t <= floor => self.s.cands.retain(|c| c.v >= floor),
            _ => {
                let mut c = std::mem::take(&mut self.s.cands);
                c.clear();
                vector::gather_at_least(self.vals(), floor, &mut c);
                self.s.cands = c;
            }
        }
        self.superset = None;
        self.exps_for = None;
        self.cands = true;
    }

    /// Prepares a stage that changes values: private dense values when nothing was cut yet,
    /// else candidates (a changed value must not move a token across the floor).
    pub fn editable(&mut self) {
        if !self.cands {
            if self.floor > ALL_FINITE {
                self.make_cands();
            } else {
                self.own();
            }
        }
        self.changed();
    }

    /// Values were replaced, some possibly by -inf: forget the count too.
    pub fn replaced(&mut self) {
        self.count = None;
        self.changed();
    }

    /// Values changed: forget what was derived from them (not the count: an edit keeps a
    /// finite value finite and -inf at -inf, see [`Row::edit`]).
    pub fn changed(&mut self) {
        self.max = None;
        self.superset = None;
        self.exps_for = None;
    }

    /// The largest kept value (`-inf` when the set is empty).
    pub fn max(&mut self) -> f32 {
        if let Some(m) = self.max {
            return m;
        }
        let m = if self.cands {
            self.s
                .cands
                .iter()
                .fold(f32::NEG_INFINITY, |a, c| if c.v > a { c.v } else { a })
        } else {
            let m = vector::max(self.vals());
            if m >= self.floor {
                m
            } else {
                f32::NEG_INFINITY
            }
        };
        self.max = Some(m);
        m
    }

    /// The number of kept tokens.
    pub fn count(&mut self) -> usize {
        if self.cands {
            return self.s.cands.len();
        }
        if let Some(c) = self.count {
            return c;
        }
        let c = vector::count_at_least(self.vals(), self.floor);
        self.count = Some(c);
        c
    }

    /// Applies `f(id, value)` to each listed id that is kept, each id once (ids may repeat in
    /// `ids`; only the first occurrence is applied). Call [`Row::editable`] first.
    pub fn edit(&mut self, ids: impl Iterator<Item = u32>, mut f: impl FnMut(usize, &mut f32)) {
        if self.cands {
            let Scratch { cands, pos, .. } = &mut *self.s;
            for (i, c) in cands.iter().enumerate() {
                pos[c.id as usize] = i as u32;
            }
            for (k, id) in ids.enumerate() {
                let at = pos[id as usize];
                if at != u32::MAX {
                    f(k, &mut cands[at as usize].v);
                    // Later occurrences of the id find it absent.
                    pos[id as usize] = u32::MAX;
                }
            }
            for c in cands.iter() {
                pos[c.id as usize] = u32::MAX;
            }
        } else {
            debug_assert!(self.owned);
            let Scratch {
                dense,
                pos,
                touched,
                ..
            } = &mut *self.s;
            touched.clear();
            for (k, id) in ids.enumerate() {
                if pos[id as usize] == u32::MAX {
                    pos[id as usize] = 0;
                    touched.push(id);
                    let v = &mut dense[id as usize];
                    if *v > f32::NEG_INFINITY {
                        f(k, v);
                        // A product that overflows to -inf leaves the kept set.
                        if *v == f32::NEG_INFINITY {
                            self.count = None;
                        }
                    }
                }
            }
            for &id in touched.iter() {
                pos[id as usize] = u32::MAX;
            }
        }
        self.changed();
    }

    /// [`Row::edit`] for ids listed once each: on dense values no bookkeeping of repeats.
    pub fn edit_distinct(
        &mut self,
        ids: impl Iterator<Item = u32>,
        mut f: impl FnMut(usize, &mut f32),
    ) {
        if self.cands {
            return self.edit(ids, f);
        }
        debug_assert!(self.owned);
        let dense = &mut self.s.dense;
        for (k, id) in ids.enumerate() {
            let v = &mut dense[id as usize];
            if *v > f32::NEG_INFINITY {
                f(k, v);
                if *v == f32::NEG_INFINITY {
                    self.count = None;
                }
            }
        }
        self.changed();
    }

    /// Removes the kept tokens whose id is listed.
    pub fn remove(&mut self, ids: &[u32]) {
        if self.cands {
            let Scratch { cands, pos, .. } = &mut *self.s;
            for &id in ids {
                pos[id as usize] = 0;
            }
            cands.retain(|c| pos[c.id as usize] == u32::MAX);
            for &id in ids {
                pos[id as usize] = u32::MAX;
            }
        } else {
            self.own();
            for &id in ids {
                self.s.dense[id as usize] = f32::NEG_INFINITY;
            }
            self.count = None;
        }
        self.changed();
    }

    /// Keeps the candidates for which `keep(candidate, index)` holds (their exponentials
    /// stay aligned).
    pub fn retain(&mut self, mut keep: impl FnMut(&Cand, usize) -> bool) {
        debug_assert!(self.cands);
        let Scratch { cands, f64s, .. } = &mut *self.s;
        let aligned = self.exps_for.is_some() && f64s.len() == cands.len();
        let (mut i, mut w) = (0, 0);
        cands.retain(|c| {
            let k = keep(c, i);
            if k && aligned {
                f64s[w] = f64s[i];
                w += 1;
            }
            i += 1;
            k
        });
        if aligned {
            f64s.truncate(w);
        }
        let m = cands
            .iter()
            .fold(f32::NEG_INFINITY, |a, c| if c.v > a { c.v } else { a });
        if self.exps_for != Some(m) {
            self.exps_for = None;
        }
        self.max = Some(m);
    }

    /// `exp(v - max)` of each candidate into `s.f64s` (parallel to the candidates), and their
    /// sum, in f64. Needs candidates.
    pub fn cand_exps(&mut self) -> f64 {
        let m = self.max();
        let Scratch { cands, f64s, .. } = &mut *self.s;
        if self.exps_for == Some(m) && f64s.len() == cands.len() {
            return f64s.iter().sum();
        }
        f64s.clear();
        let mut total = 0f64;
        for c in cands.iter() {
            let e = (c.v as f64 - m as f64).exp();
            f64s.push(e);
            total += e;
        }
        self.exps_for = Some(m);
        total
    }

    /// Writes the processed row: kept values in place, -inf elsewhere.
    pub fn write(&self, out: &mut [f32]) {
        if self.cands {
            out.fill(f32::NEG_INFINITY);
            for c in &self.s.cands {
                out[c.id as usize] = c.v;
            }
        } else {
            let floor = self.floor;
            for (o, &v) in out.iter_mut().zip(self.vals()) {
                *o = if v >= floor { v } else { f32::NEG_INFINITY };
            }
        }
    }
}

/// The first error among the finite-value checks of an input row; else its maximum and its
/// count of finite values.
pub(crate) fn check_row(x: &[f32], input: &'static str, row: usize) -> Result<(f32, usize)> {
    match vector::checked_max(x) {
        Scan::Max { max, finite } => Ok((max, finite)),
        Scan::Bad { id, nan: true } => Err(KernelError::NanLogit { input, row, id }),
        Scan::Bad { id, nan: false } => Err(KernelError::PosInfLogit { input, row, id }),
    }
}

/// Runs `program` on one row; writes the processed row to `out` when given.
pub(crate) fn run_row(
    program: &Program,
    inp: &RowInput<'_>,
    s: &mut Scratch,
    emit: Emit,
    out: Option<&mut [f32]>,
) -> Result<RowOutput> {
    let vocab = inp.x.len();
    s.fit(vocab);
    let (m, finite) = check_row(inp.x, "logits", inp.row)?;
    let mut row = Row {
        inp,
        s,
        vocab,
        owned: false,
        cands: false,
        floor: ALL_FINITE,
        max: Some(m),
        count: Some(finite),
        superset: None,
        exps_for: None,
        out: RowOutput {
            mu: f32::NAN,
            ..Default::default()
        },
    };
    for op in &program.ops {
        match op {
            StageOp::Cfg(p) => row.cfg(p)?,
            StageOp::Ban(ids) => row.ban(ids)?,
            StageOp::LogitBias(entries) => row.logit_bias(entries)?,
            StageOp::RepetitionDivide(p) => row.repetition_divide(p),
            StageOp::RepetitionSignAware(p) => row.repetition_sign_aware(p),
            StageOp::FrequencyPresence(p) => row.frequency_presence(p),
            StageOp::LengthPenalty(p, stop) => row.length_penalty(p, *stop)?,
            StageOp::Dry(p, tables) => row.dry(p, tables)?,
            StageOp::MinP(p) => row.min_p(p),
            StageOp::TopK(p) => row.top_k(p),
            StageOp::TopP(p) => row.top_p(p),
            StageOp::TypicalP(p) => row.typical_p(p),
            StageOp::Xtc(p) => row.xtc(p),
            StageOp::Temperature(p) => row.temperature(p),
            StageOp::SigmoidTemperature(p) => row.sigmoid_temperature(p),
            StageOp::EntropyTemperature(p) => row.entropy_temperature(p),
            StageOp::TopNSigma(p) => row.top_n_sigma(p),
            StageOp::MirostatV1(p, m) => row.mirostat_v1(p, *m, emit)?,
            StageOp::MirostatV2(p) => row.mirostat_v2(p, emit)?,
            StageOp::Entropix(c) => row.entropix(c)?,
            StageOp::Draw(p) => {
                if emit == Emit::Tokens {
                    row.draw(p.greedy)?;
                }
            }
        }
    }
    row.out.empty = row.max() == f32::NEG_INFINITY;
    if let Some(o) = out {
        row.write(o);
    }
    Ok(row.out)
}
