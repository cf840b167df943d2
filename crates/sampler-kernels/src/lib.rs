//! Fused sampling custom ops for candle (CPU, CUDA, Metal).
//!
//! PLACEHOLDER wiring of the `gpu` branch: the op structs and the CPU implementations come from
//! the CPU branch; this file only declares the GPU modules so that they compile on their own.

mod gpu;

#[cfg(feature = "cuda")]
#[allow(dead_code)] // called by the fused ops' cuda_fwd once the branches are merged
mod cuda;

#[cfg(feature = "metal")]
#[allow(dead_code)] // called by the fused ops' metal_fwd once the branches are merged
mod metal;
