//! The processors, one file each: the meaning and parameters, the validation, the plain tensor
//! implementation, the fused stage and the unit tests.

mod ban;
mod cfg;
mod dry;
mod dynamic_temperature;
pub(crate) mod entropix;
mod entropy_temperature;
mod frequency_presence;
mod length;
mod min_p;
mod mirostat;
pub(crate) mod repetition;
mod temperature;
mod top_k;
mod top_n_sigma;
mod top_p;
mod typical_p;
mod xtc;

pub use ban::{BanTokens, LogitBias};
pub use cfg::ClassifierFreeGuidance;
pub use dry::{Dry, DryParams, DEFAULT_MAX_MATCH};
pub use dynamic_temperature::{DynamicTemperature, DynamicTemperatureParams};
pub use entropix::{best_of_n, entropy_varentropy, Entropix, EntropixMetrics, EntropixState};
pub use entropy_temperature::{EntropyTemperature, EntropyTemperatureParams, MIN_DYNAMIC_T};
pub use frequency_presence::FrequencyPresencePenalty;
pub use length::LengthPenalty;
pub use min_p::{MinP, MinPParams};
pub use mirostat::{Mirostat, MirostatParams, MIROSTAT_M};
pub use repetition::{RepetitionPenalty, RepetitionPenaltyParams};
pub use temperature::Temperature;
pub use top_k::TopK;
pub use top_n_sigma::TopNSigma;
pub use top_p::TopP;
pub use typical_p::TypicalP;
pub use xtc::{Xtc, XTC_LANE};
