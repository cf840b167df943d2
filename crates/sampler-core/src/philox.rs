//! The Philox4x32-10 draw uniforms. The one implementation lives in sampler-kernels (the fused
//! CPU op uses it, and the CUDA / Metal kernels mirror it).

pub use sampler_kernels::philox4x32_10;
pub use sampler_kernels::philox_uniform as uniform;
pub use sampler_kernels::philox_uniform_lane as uniform_lane;

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
