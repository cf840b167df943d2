//! A processor's fused form: its stage of the row program (the stage spec of sampler-kernels)
//! with the processor's own per-row parameters, and where the stage's per-row outputs go.

use std::sync::{Arc, Mutex};

use candle_core::Tensor;
use sampler_kernels::spec::{StageId, StageOp};

use crate::param::RowParam;
use crate::processors::entropix::EntropixMetrics;

/// In a ban list, the last id of the vocabulary (the default stop token), resolved when the
/// vocabulary is known.
pub(crate) const LAST_ID: u32 = u32::MAX;

/// A slot shared by a stateful processor and its stage: the fused op reads the state from it
/// and writes the new state back. Cloning makes an independent copy, as cloning the processor
/// must.
#[derive(Debug)]
pub(crate) struct Slot<T>(Arc<Mutex<Option<T>>>);

impl<T> Default for Slot<T> {
    fn default() -> Self {
        Slot(Arc::new(Mutex::new(None)))
    }
}

impl<T: Clone> Clone for Slot<T> {
    fn clone(&self) -> Self {
        Slot(Arc::new(Mutex::new(self.get())))
    }
}

impl<T: Clone> Slot<T> {
    pub(crate) fn get(&self) -> Option<T> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub(crate) fn set(&self, v: Option<T>) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = v;
    }

    /// Another handle on the same slot (the stage's).
    pub(crate) fn share(&self) -> Self {
        Slot(Arc::clone(&self.0))
    }
}

/// Where a stage's per-row outputs go. Cloning a sink shares its slot: every copy of a stage
/// writes to its processor.
#[derive(Debug)]
pub(crate) enum Sink {
    None,
    /// Mirostat's mu, `[rows]` f32.
    State(Slot<Tensor>),
    /// Entropix's metrics.
    Metrics(Slot<EntropixMetrics>),
}

impl Clone for Sink {
    fn clone(&self) -> Self {
        match self {
            Sink::None => Sink::None,
            Sink::State(s) => Sink::State(s.share()),
            Sink::Metrics(s) => Sink::Metrics(s.share()),
        }
    }
}

/// The fused form of a processor (see [`crate::LogitsProcessor::stage`]).
#[derive(Clone, Debug)]
pub struct Stage {
    pub(crate) op: StageOp<RowParam>,
    pub(crate) sink: Sink,
}

impl Stage {
    pub(crate) fn new(op: StageOp<RowParam>) -> Self {
        Self {
            op,
            sink: Sink::None,
        }
    }

    pub(crate) fn with_sink(op: StageOp<RowParam>, sink: Sink) -> Self {
        Self { op, sink }
    }

    /// Which stage of the spec this is.
    pub fn id(&self) -> StageId {
        self.op.id()
    }
}
