//! The processor trait, the chain, and the selector that ends it. Like llama.cpp's sampler
//! chain, every step has the same few entry points: apply (logits -> logits), its fused stage,
//! accept (see what was drawn), reset; the chain ends with the step that selects the token.

use std::any::Any;

use candle_core::Tensor;
use dyn_clone::DynClone;

use crate::context::SamplingContext;
use crate::draw::Drawn;
use crate::error::Result;
use crate::stage::Stage;

/// Access to a processor as `Any`, for [`Chain::find`]; every `'static` type has it.
pub trait AsAny: Any {
    /// `self` as `Any`.
    fn as_any(&self) -> &dyn Any;
    /// `self` as mutable `Any`.
    fn as_any_mut(&mut self) -> &mut dyn Any;
}

impl<T: Any> AsAny for T {
    fn as_any(&self) -> &dyn Any {
        self
    }
    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}

/// One step of the chain: `[rows, vocab]` f32 logits in, logits of the same shape out, on the
/// same device. Filtered entries are -inf, and a processor never makes a -inf finite again.
///
/// `apply` is the plain tensor implementation (the reference, and the fallback on devices
/// without fused kernels). A processor with a fused form returns it from [`stage`]: then
/// consecutive stages of a chain run as one fused op per segment. A processor of your own
/// leaves `stage` at `None` and runs as its `apply` between the fused segments.
///
/// [`stage`]: LogitsProcessor::stage
pub trait LogitsProcessor: AsAny + DynClone + Send + Sync + std::fmt::Debug {
    /// A short, stable name (errors, benchmarks, the CLI's listing).
    fn name(&self) -> &'static str;

    /// Transforms the logits.
    fn apply(&self, logits: &Tensor, ctx: &SamplingContext) -> Result<Tensor>;

    /// The processor's fused stage, with its own parameters.
    fn stage(&self) -> Option<Stage> {
        None
    }

    /// Sees the tokens drawn from this step's distribution (for stateful processors).
    fn accept(&mut self, _drawn: &Drawn, _ctx: &SamplingContext) -> Result<()> {
        Ok(())
    }

    /// Forgets all state, as for a new sequence.
    fn reset(&mut self) {}

    /// Forgets the state of the rows whose entry of the `[rows]` u8 `mask` is 1.
    fn reset_rows(&mut self, _mask: &Tensor) -> Result<()> {
        Ok(())
    }
}

dyn_clone::clone_trait_object!(LogitsProcessor);

/// The last step of a sampler: it selects one token per row from the processed logits.
///
/// `distribution` is the distribution it draws from (processed logits; the identity for a
/// plain draw, the truncated row for mirostat), `select` draws from it and updates any state.
pub trait Selector: AsAny + DynClone + Send + Sync + std::fmt::Debug {
    /// A short, stable name.
    fn name(&self) -> &'static str;

    /// The logits the selector draws from.
    fn distribution(&self, logits: &Tensor, _ctx: &SamplingContext) -> Result<Tensor> {
        Ok(logits.clone())
    }

    /// Draws one token per row (plain tensor ops) and updates the selector's state.
    fn select(&mut self, logits: &Tensor, ctx: &SamplingContext) -> Result<Drawn>;

    /// The selector's fused stage.
    fn stage(&self) -> Option<Stage> {
        None
    }

    /// Forgets all state.
    fn reset(&mut self) {}

    /// Forgets the state of the rows whose entry of the `[rows]` u8 `mask` is 1.
    fn reset_rows(&mut self, _mask: &Tensor) -> Result<()> {
        Ok(())
    }
}

dyn_clone::clone_trait_object!(Selector);

/// An ordered list of processors, itself a processor.
#[derive(Clone, Debug, Default)]
pub struct Chain {
    steps: Vec<Box<dyn LogitsProcessor>>,
}

impl Chain {
    /// An empty chain.
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

    /// The processors, mutable.
    pub fn steps_mut(&mut self) -> &mut [Box<dyn LogitsProcessor>] {
        &mut self.steps
    }

    /// The names of the processors, in order.
    pub fn names(&self) -> Vec<&'static str> {
        self.steps.iter().map(|s| s.name()).collect()
    }

    /// Whether the chain has no processor.
    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }

    /// The number of processors.
    pub fn len(&self) -> usize {
        self.steps.len()
    }

    /// The first processor of type `T` (nested chains included), e.g. the entropix step to
    /// read its metrics, or a processor of your own.
    pub fn find<T: 'static>(&self) -> Option<&T> {
        self.steps.iter().find_map(|s| {
            let any = (**s).as_any();
            any.downcast_ref::<T>()
                .or_else(|| any.downcast_ref::<Chain>()?.find::<T>())
        })
    }

    /// Mutable [`Chain::find`].
    pub fn find_mut<T: 'static>(&mut self) -> Option<&mut T> {
        for s in self.steps.iter_mut() {
            let any = (**s).as_any_mut();
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
}
