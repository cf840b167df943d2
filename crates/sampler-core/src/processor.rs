//! The processor trait and the chain. Like llama.cpp's sampler chain, every processor has the
//! same few entry points: apply (logits -> logits), accept (see what was drawn), reset, clone.

use candle_core::Tensor;

use crate::context::SamplingContext;
use crate::draw::{DrawRule, Drawn};
use crate::error::Result;

/// One step of the chain: `[rows, vocab]` f32 logits in, logits of the same shape out, on the
/// same device. Filtered entries are -inf, and a processor never makes a -inf finite again.
pub trait LogitsProcessor: Send + Sync + std::fmt::Debug {
    /// A short, stable name (used in errors, benchmarks and the CLI's listing).
    fn name(&self) -> &'static str;

    /// Transforms the logits.
    fn apply(&self, logits: &Tensor, ctx: &SamplingContext) -> Result<Tensor>;

    /// Whether [`LogitsProcessor::apply_and_draw`] runs this step and the draw as one fused
    /// step; a [`crate::Sampler`] whose chain ends with such a step uses it.
    fn fuses_draw(&self) -> bool {
        false
    }

    /// This step followed by the draw; the default runs one after the other.
    fn apply_and_draw(
        &self,
        logits: &Tensor,
        rule: &DrawRule,
        ctx: &SamplingContext,
    ) -> Result<Drawn> {
        crate::draw::draw(&self.apply(logits, ctx)?, rule, ctx)
    }

    /// Sees the tokens drawn from this step's distribution (for stateful samplers).
    fn accept(&mut self, _drawn: &Drawn, _ctx: &SamplingContext) -> Result<()> {
        Ok(())
    }

    /// Forgets all state, as for a new sequence.
    fn reset(&mut self) {}

    /// Forgets the state of the rows whose entry of the `[rows]` u8 `mask` is 1 (a row slot that
    /// starts a new sequence); the other rows keep theirs. Stateless processors ignore it.
    fn reset_rows(&mut self, _mask: &Tensor) -> Result<()> {
        Ok(())
    }

    /// The processor as `Any`, for the processors that expose more than the trait (state,
    /// metrics); see [`Chain::find`]. `None` for the others.
    fn as_any(&self) -> Option<&dyn std::any::Any> {
        None
    }

    /// Mutable [`LogitsProcessor::as_any`].
    fn as_any_mut(&mut self) -> Option<&mut dyn std::any::Any> {
        None
    }

    /// A boxed copy, state included.
    fn clone_box(&self) -> Box<dyn LogitsProcessor>;
}

impl Clone for Box<dyn LogitsProcessor> {
    fn clone(&self) -> Self {
        self.clone_box()
    }
}

/// An ordered list of processors, itself a processor.
#[derive(Clone, Debug, Default)]
pub struct Chain {
    steps: Vec<Box<dyn LogitsProcessor>>,
}

impl Chain {
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends a processor.
    pub fn push(&mut self, p: impl LogitsProcessor + 'static) -> &mut Self {
        self.steps.push(Box::new(p));
        self
    }

    /// Appends a boxed processor.
    pub fn push_boxed(&mut self, p: Box<dyn LogitsProcessor>) -> &mut Self {
        self.steps.push(p);
        self
    }

    /// Builder-style `push`.
    pub fn with(mut self, p: impl LogitsProcessor + 'static) -> Self {
        self.push(p);
        self
    }

    /// The processors, in order.
    pub fn steps(&self) -> &[Box<dyn LogitsProcessor>] {
        &self.steps
    }

    /// The names of the processors, in order.
    pub fn names(&self) -> Vec<&'static str> {
        self.steps.iter().map(|s| s.name()).collect()
    }

    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }

    pub fn len(&self) -> usize {
        self.steps.len()
    }

    /// The first processor of type `T` (nested chains included), e.g. the
    /// [`crate::processors::Entropix`] step to read its metrics.
    pub fn find<T: 'static>(&self) -> Option<&T> {
        self.steps.iter().find_map(|s| {
            let any = s.as_any()?;
            any.downcast_ref::<T>()
                .or_else(|| any.downcast_ref::<Chain>()?.find::<T>())
        })
    }

    /// Mutable [`Chain::find`], e.g. the [`crate::processors::Mirostat`] step to set its state.
    pub fn find_mut<T: 'static>(&mut self) -> Option<&mut T> {
        for s in self.steps.iter_mut() {
            let Some(any) = s.as_any_mut() else { continue };
            if any.is::<T>() {
                return any.downcast_mut::<T>();
            }
            if let Some(found) = any.downcast_mut::<Chain>().and_then(|c| c.find_mut::<T>()) {
                return Some(found);
            }
        }
        None
    }
}

impl LogitsProcessor for Chain {
    fn name(&self) -> &'static str {
        "chain"
    }

    fn apply(&self, logits: &Tensor, ctx: &SamplingContext) -> Result<Tensor> {
        let mut x = logits.clone();
        for s in &self.steps {
            x = s.apply(&x, ctx)?;
        }
        Ok(x)
    }

    fn accept(&mut self, drawn: &Drawn, ctx: &SamplingContext) -> Result<()> {
        self.steps.iter_mut().try_for_each(|s| s.accept(drawn, ctx))
    }

    fn reset(&mut self) {
        self.steps.iter_mut().for_each(|s| s.reset());
    }

    fn reset_rows(&mut self, mask: &Tensor) -> Result<()> {
        self.steps.iter_mut().try_for_each(|s| s.reset_rows(mask))
    }

    fn as_any(&self) -> Option<&dyn std::any::Any> {
        Some(self)
    }

    fn as_any_mut(&mut self) -> Option<&mut dyn std::any::Any> {
        Some(self)
    }

    fn clone_box(&self) -> Box<dyn LogitsProcessor> {
        Box::new(self.clone())
    }
}
