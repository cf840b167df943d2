//! One processor per file: its meaning (SPEC §4), its tensor implementation and its tests.

pub mod ban;
pub mod dynamic_temperature;
pub mod fused;
pub mod length;
pub mod min_p;
pub mod repetition;
pub mod temperature;
pub mod top_k;
pub mod top_n_sigma;
pub mod top_p;

pub use ban::{BanTokens, LogitBias};
pub use dynamic_temperature::DynamicTemperature;
pub use fused::{FilterParams, FusedFilter, FusedPenalties, PenaltyParams};
pub use length::LengthPenalty;
pub use min_p::MinP;
pub use repetition::RepetitionPenalty;
pub use temperature::Temperature;
pub use top_k::TopK;
pub use top_n_sigma::TopNSigma;
pub use top_p::TopP;
