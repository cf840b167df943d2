//! Philox4x32-10 in the header: the Random123 known answers and the uniforms of sampler-core.

#[allow(unused_imports)]
use crate::prelude::*;

#[test]
fn philox_matches_the_random123_known_answers() {
    let cases: [([u32; 4], [u32; 2], [u32; 4]); 3] = [
        (
            [0; 4],
            [0; 2],
            [0x6627_e8d5, 0xe169_c58d, 0xbc57_ac4c, 0x9b00_dbd8],
        ),
        (
            [u32::MAX; 4],
            [u32::MAX; 2],
            [0x408f_276d, 0x41c8_3b0e, 0xa20b_c7c6, 0x6d54_51fd],
        ),
        (
            [0x243f_6a88, 0x85a3_08d3, 0x1319_8a2e, 0x0370_7344],
            [0xa409_3822, 0x299f_31d0],
            [0xd16c_fe09, 0x94fd_cceb, 0x5001_e420, 0x2412_6ea1],
        ),
    ];
    for lang in LANGS {
        for (c, k, want) in cases {
            let out = u32s(&run(lang, Msg::default().u32(4).u32s(&c).u32s(&k).0));
            assert_eq!(out, want, "{lang:?}");
        }
    }
}

#[test]
fn uniforms_equal_sampler_core_philox_uniform() {
    // Values of sampler_core::philox::uniform(seed, row, step): the same seed draws the same
    // token on the CPU path and on the devices.
    let draws = [
        (0u64, 0u32, 0u64),
        (42, 3, 7),
        ((1 << 40) + 5, 1000, (1 << 33) + 1),
        (7, 4, 5),
    ];
    let want: Vec<f32> = [6_694_888u32, 6_659_826, 16_256_341, 15_315_213]
        .iter()
        .map(|&b| b as f32 / 16_777_216.0)
        .collect();
    for lang in LANGS {
        assert_eq!(uniforms(lang, &draws), want, "{lang:?}");
    }
}
