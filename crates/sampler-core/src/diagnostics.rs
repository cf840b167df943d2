//! Counters of the device calls the sampler issues, so that tests can hold a step to its call
//! budget: every candle op the sampler issues outside its fused ops goes through
//! `count_ops`; one-time uploads when a plan is built go through `count_setup`. The fused
//! ops count their own launches ([`sampler_kernels::launches`]).

use std::sync::atomic::{AtomicU64, Ordering};

static OPS: AtomicU64 = AtomicU64::new(0);
static SETUP: AtomicU64 = AtomicU64::new(0);

/// Candle ops the sampler issued inside steps, since the process started.
pub fn candle_ops() -> u64 {
    OPS.load(Ordering::Relaxed)
}

/// One-time device calls (plan building: parameter and row-id uploads).
pub fn setup_calls() -> u64 {
    SETUP.load(Ordering::Relaxed)
}

/// Device calls of a step: the fused ops' launches plus the sampler's own candle ops.
pub fn device_calls() -> u64 {
    candle_ops() + sampler_kernels::launches()
}

pub(crate) fn count_ops(n: u64) {
    OPS.fetch_add(n, Ordering::Relaxed);
}

pub(crate) fn count_setup(n: u64) {
    SETUP.fetch_add(n, Ordering::Relaxed);
}
