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

    fn clone_box(&self) -> Box<dyn LogitsProcessor> {
        Box::new(self.clone())
    }
}
