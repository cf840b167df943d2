//! One processor per file: its meaning (SPEC §4), its tensor implementation and its tests.

pub mod ban;
pub mod cfg;
pub mod dry;
pub mod dynamic_temperature;
pub mod entropix;
pub mod entropy_temperature;
pub mod frequency_presence;
pub mod fused;
pub mod length;
pub mod min_p;
pub mod mirostat;
pub mod repetition;
pub mod temperature;
pub mod top_k;
pub mod top_n_sigma;
pub mod top_p;
pub mod typical_p;
pub mod xtc;

pub use ban::{BanTokens, LogitBias};
pub use cfg::ClassifierFreeGuidance;
pub use dry::Dry;
pub use dynamic_temperature::DynamicTemperature;
pub use entropix::{Entropix, EntropixConfig, EntropixMetrics, EntropixState};
pub use entropy_temperature::EntropyTemperature;
pub use frequency_presence::FrequencyPresencePenalty;
pub use fused::{FilterParams, FusedFilter, FusedPenalties, PenaltyParams};
pub use length::LengthPenalty;
pub use min_p::MinP;
pub use mirostat::{Mirostat, MirostatVersion};
pub use repetition::RepetitionPenalty;
pub use temperature::Temperature;
pub use top_k::TopK;
pub use top_n_sigma::TopNSigma;
pub use top_p::TopP;
pub use typical_p::TypicalP;
pub use xtc::Xtc;
