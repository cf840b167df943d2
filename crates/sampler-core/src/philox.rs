//! The Philox4x32-10 draw uniforms. The one implementation lives in sampler-kernels (the fused
//! CPU op uses it, and the CUDA / Metal kernels mirror it); this module re-exports it under its
//! historical names.

pub use sampler_kernels::philox4x32_10;
pub use sampler_kernels::philox_uniform as uniform;
