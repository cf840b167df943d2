//! Philox4x32-10, the counter-based generator of Salmon et al., "Parallel random numbers: as easy
//! as 1, 2, 3" (SC'11). A draw is a pure function of (seed, row id, step), which is what makes the
//! same seed give the same token on every device, batch composition and thread count.
//!
//! This is the one implementation of the project: sampler-core re-exports it, and the CUDA and
//! Metal kernels implement the same rounds with the same constants and the same mapping to f32.

const M0: u32 = 0xD251_1F53;
const M1: u32 = 0xCD9E_8D57;
const W0: u32 = 0x9E37_79B9;
const W1: u32 = 0xBB67_AE85;

fn mulhilo(a: u32, b: u32) -> (u32, u32) {
    let p = (a as u64) * (b as u64);
    ((p >> 32) as u32, p as u32)
}

/// The ten-round Philox4x32 bijection of `counter` under `key`.
pub fn philox4x32_10(counter: [u32; 4], key: [u32; 2]) -> [u32; 4] {
    let mut c = counter;
    let mut k = key;
    for round in 0..10 {
        if round > 0 {
            k[0] = k[0].wrapping_add(W0);
            k[1] = k[1].wrapping_add(W1);
        }
        let (hi0, lo0) = mulhilo(M0, c[0]);
        let (hi1, lo1) = mulhilo(M1, c[2]);
        c = [hi1 ^ c[1] ^ k[0], lo1, hi0 ^ c[3] ^ k[1], lo0];
    }
    c
}

/// The uniform in [0, 1) of one draw: key = seed, counter = (step, row id, 0). The top 24 bits of
/// the first output word make an f32 with every value exactly representable.
pub fn philox_uniform(seed: u64, row_id: u32, step: u64) -> f32 {
    philox_uniform_lane(seed, row_id, step, 0)
}

/// The Philox counter lane of XTC's coin; the draw uses lane 0.
pub const XTC_LANE: u32 = 1;

/// A uniform in [0, 1) on a side stream: counter = (step, row id, 0, lane). Lane 0 is the draw's
/// own stream ([`philox_uniform`]); a stage that needs its own coin per row (XTC) uses another
/// lane, so the draw's numbers stay the same whether or not that stage is in the chain.
pub fn philox_uniform_lane(seed: u64, row_id: u32, step: u64, lane: u32) -> f32 {
    let out = philox4x32_10(
        [step as u32, (step >> 32) as u32, row_id, lane],
        [seed as u32, (seed >> 32) as u32],
    );
    (out[0] >> 8) as f32 * (1.0 / 16_777_216.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    // Known-answer vectors of the Random123 distribution (kat_vectors, philox4x32 10 rounds).
    #[test]
    fn known_answers() {
        assert_eq!(
            philox4x32_10([0, 0, 0, 0], [0, 0]),
            [0x6627_e8d5, 0xe169_c58d, 0xbc57_ac4c, 0x9b00_dbd8]
        );
        assert_eq!(
            philox4x32_10([u32::MAX; 4], [u32::MAX; 2]),
            [0x408f_276d, 0x41c8_3b0e, 0xa20b_c7c6, 0x6d54_51fd]
        );
        assert_eq!(
            philox4x32_10(
                [0x243f_6a88, 0x85a3_08d3, 0x1319_8a2e, 0x0370_7344],
                [0xa409_3822, 0x299f_31d0]
            ),
            [0xd16c_fe09, 0x94fd_cceb, 0x5001_e420, 0x2412_6ea1]
        );
    }

    #[test]
    fn uniform_takes_the_top_24_bits_of_the_first_word() {
        // counter (0, 0, 0, 0), key (0, 0): first word 0x6627e8d5.
        assert_eq!(
            philox_uniform(0, 0, 0),
            (0x6627_e8d5u32 >> 8) as f32 / 16_777_216.0
        );
    }

    #[test]
    fn uniform_is_in_unit_interval_and_keyed() {
        let mut seen = std::collections::HashSet::new();
        for row in 0..64 {
            for step in 0..64 {
                let u = philox_uniform(7, row, step);
                assert!((0.0..1.0).contains(&u));
                seen.insert(u.to_bits());
            }
        }
        // 4096 draws of 24 bits: collisions are possible but rare (expected about 0.5).
        assert!(seen.len() >= 4090, "only {} distinct values", seen.len());
        assert_ne!(philox_uniform(7, 3, 5), philox_uniform(8, 3, 5));
        assert_ne!(philox_uniform(7, 3, 5), philox_uniform(7, 4, 5));
        assert_ne!(philox_uniform(7, 3, 5), philox_uniform(7, 3, 6));
    }
}
