//! # sampler-driver
//!
//! AR/NAR generation for a VALL-E shaped codec language model, with the rows of a batch kept on
//! the device: the histories, lengths and stop flags are device tensors updated by tensor ops,
//! so an AR step issues its work without waiting for the device; the host reads the "all rows
//! stopped" flag only every [`DriverConfig::stop_check_interval`] steps. A row that stops stays
//! in the batch with its codes and length fixed. Each NAR level is one chain call over every
//! position of every row (stop token banned, repetition penalty against the previous level,
//! docs/semantics.md#histories). Instead of the AR loop, the first level may come from the masked ("NAR-len")
//! stage ([`Level0::Masked`]): a duration per sequence, then iterative demasking of every
//! position ([`masked`], docs/driver.md#the-masked-stage).
//!
//! ```no_run
//! use sampler_driver::{CodecLm, Driver, DriverConfig, Rows};
//! # fn run(model: &mut impl CodecLm) -> sampler_driver::Result<()> {
//! let driver = Driver::new(DriverConfig::vall_e().with_max_steps(225));
//! let out = driver.generate(model, &Rows::first(4), 42)?;
//! println!("codes {:?}, lengths {:?}", out.codes.dims(), out.lens);
//! # Ok(()) }
//! ```

#![deny(missing_docs)]

pub mod config;
pub mod driver;
pub mod error;
pub mod masked;
pub mod model;
mod positions;
mod select;

pub use config::{DriverConfig, GuidanceSchedule, Level0, MaskedConfig, StageConfig};
pub use driver::{Driver, Generation, Progress, Rows, NAR_STEP_BASE};
pub use error::{DriverError, Result};
pub use masked::MASKED_STEP_BASE;
pub use model::{CodecLm, Conditioning};
pub use sampler_core::Knob;
