//! The Philox4x32-10 draw uniforms. The one implementation lives in sampler-kernels (the fused
//! CPU op uses it, and the CUDA / Metal kernels mirror it); this module re-exports it under its
//! historical names.

pub use sampler_kernels::philox4x32_10;
pub use sampler_kernels::philox_uniform as uniform;

/// A uniform in [0, 1) on a side stream: counter = (step, row id, 0, lane). Lane 0 is the draw's
/// own stream ([`uniform`]); a processor that needs its own coin per row (XTC) uses another lane,
/// so the draw's numbers stay the same whether or not that processor is in the chain.
pub fn uniform_lane(seed: u64, row_id: u32, step: u64, lane: u32) -> f32 {
    let out = philox4x32_10(
        [step as u32, (step >> 32) as u32, row_id, lane],
        [seed as u32, (seed >> 32) as u32],
    );
    (out[0] >> 8) as f32 * (1.0 / 16_777_216.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lane_zero_is_the_draw_stream_and_other_lanes_differ() {
        assert_eq!(uniform_lane(11, 2, 9, 0), uniform(11, 2, 9));
        assert_ne!(uniform_lane(11, 2, 9, 1), uniform(11, 2, 9));
        assert!((0.0..1.0).contains(&uniform_lane(11, 2, 9, 1)));
    }
}
