//! `SamplerConfig`: the sampling keys (the VALL-E kwargs names) as one flat serde struct, and
//! [`Knob`], the table of its numeric keys: each takes a scalar or a `[rows]` tensor in the
//! [`crate::SamplerBuilder`] and one value per sequence in the driver. A key's name and default
//! are written here once; its range and "off" value belong to the processor that reads it,
//! whose constructor is the only validation ([`SamplerConfig::validate`] builds the chain).

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::{invalid, Result, SamplerError};

/// Which stage of a codec LM the rows come from; it decides the default chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Autoregressive: one token per row per step, the history is what was generated so far;
    /// the length penalty applies to the stop token.
    Ar,
    /// Non-autoregressive: every position of a level at once; the stop token is banned and the
    /// history of position j is the previous level's codes before j.
    Nar,
}

impl std::str::FromStr for Mode {
    type Err = SamplerError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "ar" => Ok(Mode::Ar),
            "nar" => Ok(Mode::Nar),
            other => Err(SamplerError::Config(format!(
                "mode must be ar or nar, got {other:?}"
            ))),
        }
    }
}

/// How the repetition penalty treats a seen token.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RepetitionPenaltyMode {
    /// The reference VALL-E form: divide by `penalty * D^decay` once per occurrence, whatever
    /// the logit's sign.
    #[default]
    Divide,
    /// The HF / CTRL form: once per distinct token, divide a positive logit and multiply a
    /// negative one by the penalty.
    SignAware,
}

/// Which mirostat selects the token (config key `mirostat`: 0, 1 or 2).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum MirostatVersion {
    /// No mirostat: the plain draw selects.
    #[default]
    Off,
    /// Mirostat v1 (Zipf fit on the top m tokens).
    V1,
    /// Mirostat v2 (a surprise bound).
    V2,
}

impl Serialize for MirostatVersion {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_u8(match self {
            MirostatVersion::Off => 0,
            MirostatVersion::V1 => 1,
            MirostatVersion::V2 => 2,
        })
    }
}

impl<'de> Deserialize<'de> for MirostatVersion {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        match u8::deserialize(d)? {
            0 => Ok(MirostatVersion::Off),
            1 => Ok(MirostatVersion::V1),
            2 => Ok(MirostatVersion::V2),
            v => Err(serde::de::Error::custom(format!(
                "mirostat must be 0, 1 or 2, got {v}"
            ))),
        }
    }
}

/// The sampling configuration, with the VALL-E kwargs names and defaults. Unknown keys are an
/// error; every value is range-checked by the processor that reads it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SamplerConfig {
    /// > 0 divides the logits; <= 0 is a greedy draw.
    pub temperature: f32,
    /// Sigmoid dynamic temperature's lower end; negative = equal to `temperature` (off).
    pub min_temperature: f32,
    /// Keep the k largest logits (ties kept); <= 0 off.
    pub top_k: i64,
    /// Nucleus mass in [0, 1]; 1 off.
    pub top_p: f32,
    /// Min-p fraction in [0, 1]; 0 off.
    pub min_p: f32,
    /// Tokens min-p always keeps.
    pub min_p_min_tokens: i64,
    /// > 0; 1 (with decay 0) off.
    pub repetition_penalty: f32,
    /// Distance exponent of the divide form.
    pub repetition_penalty_decay: f32,
    /// Only distances below it count; 0 = the whole history. Also the frequency / presence
    /// window.
    pub repetition_penalty_window: i64,
    /// "divide" (default) or "sign_aware".
    pub repetition_penalty_mode: RepetitionPenaltyMode,
    /// Subtracted once per occurrence in the window; 0 off.
    pub frequency_penalty: f32,
    /// Subtracted once from every token seen in the window; 0 off.
    pub presence_penalty: f32,
    /// AR: exponent of (length + 1) on the stop token; 0 off.
    pub length_penalty: f32,
    /// The stop token; default the last id of the vocabulary.
    pub stop_token: Option<u32>,
    /// `{"id": bias}` added to the logits.
    pub logit_bias: BTreeMap<u32, f32>,
    /// Token ids set to -inf.
    pub ban_tokens: Vec<u32>,
    /// Typical-p mass in [0, 1]; 1 off.
    pub typical_p: f32,
    /// Chance per row and step that XTC acts, in [0, 1]; 0 off.
    pub xtc_probability: f32,
    /// XTC's probability threshold in [0, 1].
    pub xtc_threshold: f32,
    /// Entropy-form dynamic temperature range >= 0; 0 off.
    pub dynatemp_range: f32,
    /// Entropy-form dynamic temperature exponent >= 0.
    pub dynatemp_exponent: f32,
    /// The n of top-n-sigma (>= 0); 0 off.
    pub top_no: f32,
    /// DRY strength >= 0; 0 off.
    pub dry_multiplier: f32,
    /// DRY base >= 1.
    pub dry_base: f32,
    /// Repeats shorter than this are free.
    pub dry_allowed_length: i64,
    /// DRY window in tokens; 0 = the whole history.
    pub dry_penalty_last_n: i64,
    /// Token ids that stop a DRY match.
    pub dry_sequence_breakers: Vec<u32>,
    /// 0 off, 1 = mirostat v1, 2 = mirostat v2.
    pub mirostat: MirostatVersion,
    /// Mirostat's target surprise in bits, >= 0.
    pub mirostat_tau: f32,
    /// Mirostat's learning rate, >= 0.
    pub mirostat_eta: f32,
    /// The entropix decision with the reference thresholds.
    pub entropix: bool,
    /// Classifier-free guidance strength; 1 off (needs the null logits).
    pub cfg_strength: f32,
    /// Share in [0, 1] of the std-rescaled guided logits; 0 off.
    pub cfg_rescale: f32,
    /// `sample` writes the best `beam_width` (row, token) pairs when > 1.
    pub beam_width: i64,
}

impl Default for SamplerConfig {
    fn default() -> Self {
        Self {
            temperature: 1.0,
            min_temperature: -1.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            min_p_min_tokens: 32,
            repetition_penalty: 1.0,
            repetition_penalty_decay: 0.0,
            repetition_penalty_window: 75,
            repetition_penalty_mode: RepetitionPenaltyMode::Divide,
            frequency_penalty: 0.0,
            presence_penalty: 0.0,
            length_penalty: 0.0,
            stop_token: None,
            logit_bias: BTreeMap::new(),
            ban_tokens: Vec::new(),
            typical_p: 1.0,
            xtc_probability: 0.0,
            xtc_threshold: 0.1,
            dynatemp_range: 0.0,
            dynatemp_exponent: 1.0,
            top_no: 0.0,
            dry_multiplier: 0.0,
            dry_base: 1.75,
            dry_allowed_length: 2,
            dry_penalty_last_n: 0,
            dry_sequence_breakers: Vec::new(),
            mirostat: MirostatVersion::Off,
            mirostat_tau: 5.0,
            mirostat_eta: 0.1,
            entropix: false,
            cfg_strength: 1.0,
            cfg_rescale: 0.0,
            beam_width: 1,
        }
    }
}

macro_rules! knobs {
    ($( $(#[$doc:meta])* $variant:ident => $field:ident ),* $(,)?) => {
        /// A numeric config key. In the builder each takes a scalar or a `[rows]` tensor
        /// ([`crate::SamplerBuilder::set`]); in the driver, one value per sequence.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum Knob {
            $( $(#[$doc])* $variant, )*
        }

        impl Knob {
            /// Every numeric key, in table order.
            pub const ALL: &'static [Knob] = &[$(Knob::$variant),*];

            /// The config key.
            pub fn key(self) -> &'static str {
                match self { $( Knob::$variant => stringify!($field), )* }
            }

            /// The key's value in a config.
            pub fn get(self, c: &SamplerConfig) -> f32 {
                match self { $( Knob::$variant => c.$field as f32, )* }
            }
        }

        impl crate::sampler::SamplerBuilder {
            $(
                $(#[$doc])*
                pub fn $field(self, v: impl Into<crate::RowParam>) -> Self {
                    self.set(Knob::$variant, v)
                }
            )*
        }
    };
}

knobs! {
    /// `temperature`: > 0 divides; <= 0 is a greedy draw.
    Temperature => temperature,
    /// `min_temperature`: the sigmoid dynamic temperature's lower end.
    MinTemperature => min_temperature,
    /// `top_k`.
    TopK => top_k,
    /// `top_p`.
    TopP => top_p,
    /// `min_p`.
    MinP => min_p,
    /// `min_p_min_tokens`.
    MinPMinTokens => min_p_min_tokens,
    /// `repetition_penalty`.
    RepetitionPenalty => repetition_penalty,
    /// `repetition_penalty_decay`.
    RepetitionPenaltyDecay => repetition_penalty_decay,
    /// `repetition_penalty_window` (also the frequency / presence window).
    RepetitionPenaltyWindow => repetition_penalty_window,
    /// `frequency_penalty`.
    FrequencyPenalty => frequency_penalty,
    /// `presence_penalty`.
    PresencePenalty => presence_penalty,
    /// `length_penalty`.
    LengthPenalty => length_penalty,
    /// `typical_p`.
    TypicalP => typical_p,
    /// `xtc_probability`.
    XtcProbability => xtc_probability,
    /// `xtc_threshold`.
    XtcThreshold => xtc_threshold,
    /// `dynatemp_range`.
    DynatempRange => dynatemp_range,
    /// `dynatemp_exponent`.
    DynatempExponent => dynatemp_exponent,
    /// `top_no`: the n of top-n-sigma.
    TopNo => top_no,
    /// `dry_multiplier`.
    DryMultiplier => dry_multiplier,
    /// `dry_base`.
    DryBase => dry_base,
    /// `dry_allowed_length`.
    DryAllowedLength => dry_allowed_length,
    /// `dry_penalty_last_n`.
    DryPenaltyLastN => dry_penalty_last_n,
    /// `mirostat_tau`.
    MirostatTau => mirostat_tau,
    /// `mirostat_eta`.
    MirostatEta => mirostat_eta,
    /// `cfg_strength`.
    CfgStrength => cfg_strength,
    /// `cfg_rescale`.
    CfgRescale => cfg_rescale,
}

impl Knob {
    /// The key's default value.
    pub fn default_value(self) -> f32 {
        self.get(&SamplerConfig::default())
    }
}

impl std::str::FromStr for Knob {
    type Err = SamplerError;
    fn from_str(s: &str) -> Result<Self> {
        Knob::ALL
            .iter()
            .copied()
            .find(|k| k.key() == s)
            .ok_or_else(|| SamplerError::Config(format!("{s:?} is not a numeric config key")))
    }
}

impl SamplerConfig {
    /// Parses JSON (unknown keys are an error) and validates the values.
    pub fn from_json(text: &str) -> Result<Self> {
        let cfg: Self =
            serde_json::from_str(text).map_err(|e| SamplerError::Config(e.to_string()))?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Typical VALL-E AR settings: repetition penalty 1.5 over the last second, a mild length
    /// penalty, top-k 50, top-p 0.9, min-p 0.05.
    pub fn vall_e_ar() -> Self {
        Self {
            repetition_penalty: 1.5,
            length_penalty: 0.1,
            top_k: 50,
            top_p: 0.9,
            min_p: 0.05,
            ..Self::default()
        }
    }

    /// Typical VALL-E NAR settings: repetition penalty 1.2 against the previous level, top-k 40,
    /// top-p 0.9, min-p 0.05, temperature 0.9.
    pub fn vall_e_nar() -> Self {
        Self {
            repetition_penalty: 1.2,
            top_k: 40,
            top_p: 0.9,
            min_p: 0.05,
            temperature: 0.9,
            ..Self::default()
        }
    }

    /// Checks every value: the processors' constructors check their own parameters (the chain
    /// is built for both modes), and the rules across keys are checked here.
    pub fn validate(&self) -> Result<()> {
        for mode in [Mode::Ar, Mode::Nar] {
            crate::SamplerBuilder::from_config(self, mode).build()?;
        }
        let max = crate::beam::MAX_BEAM_WIDTH as i64;
        if !(1..=max).contains(&self.beam_width) {
            return Err(invalid(
                "beam_width",
                format!("{} is not in [1, {max}]", self.beam_width),
            ));
        }
        Ok(())
    }

    /// Whether the draw is greedy.
    pub fn is_greedy(&self) -> bool {
        self.temperature <= 0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_unknown_keys() {
        let c = SamplerConfig::from_json("{}").unwrap();
        assert_eq!(c, SamplerConfig::default());
        assert_eq!(c.repetition_penalty_window, 75);
        assert_eq!(c.min_p_min_tokens, 32);
        let err = SamplerConfig::from_json(r#"{"top_kk": 3}"#).unwrap_err();
        assert!(err.to_string().contains("top_kk"), "{err}");
    }

    #[test]
    fn ranges() {
        for bad in [
            r#"{"top_p": 1.5}"#,
            r#"{"top_p": -0.1}"#,
            r#"{"min_p": 1.5}"#,
            r#"{"repetition_penalty": 0}"#,
            r#"{"dry_base": 0.5}"#,
            r#"{"repetition_penalty_window": -1}"#,
            r#"{"top_no": -1}"#,
            r#"{"repetition_penalty_mode": "multiply"}"#,
            r#"{"repetition_penalty_mode": "sign_aware", "repetition_penalty_decay": 0.5}"#,
            r#"{"frequency_penalty": 1e40}"#,
            r#"{"logit_bias": {"-1": 1.0}}"#,
            r#"{"logit_bias": {"x": 1.0}}"#,
            r#"{"ban_tokens": [-3]}"#,
            r#"{"typical_p": 1.5}"#,
            r#"{"xtc_probability": -0.1}"#,
            r#"{"xtc_threshold": 2}"#,
            r#"{"dynatemp_range": -1}"#,
            r#"{"dynatemp_exponent": -1}"#,
            r#"{"dynatemp_range": 0.5, "min_temperature": 0.2}"#,
            r#"{"dry_penalty_last_n": -1}"#,
            r#"{"dry_sequence_breakers": [1.5]}"#,
            r#"{"mirostat": 3}"#,
            r#"{"mirostat_tau": -1}"#,
            r#"{"mirostat_eta": -0.1}"#,
            r#"{"mirostat": 2, "entropix": true}"#,
            r#"{"cfg_rescale": 1.5}"#,
            r#"{"beam_width": 0}"#,
            r#"{"beam_width": 100000}"#,
            r#"{"temperature": "hot"}"#,
            r#"{"top_k": 2.5}"#,
        ] {
            assert!(SamplerConfig::from_json(bad).is_err(), "{bad} accepted");
        }
        let ok =
            SamplerConfig::from_json(r#"{"top_k": 5, "temperature": 0, "stop_token": 3}"#).unwrap();
        assert_eq!((ok.top_k, ok.stop_token), (5, Some(3)));
        assert!(ok.is_greedy());
    }

    #[test]
    fn keys_parse_round_trip_and_default_off() {
        let c = SamplerConfig::from_json(
            r#"{"repetition_penalty_mode": "sign_aware", "logit_bias": {"5": -1.5, "7": 2},
                "ban_tokens": [1, 2], "dry_sequence_breakers": [9], "mirostat": 2,
                "entropix": false, "beam_width": 4, "typical_p": 0.9, "xtc_probability": 0.5}"#,
        )
        .unwrap();
        assert_eq!(c.repetition_penalty_mode, RepetitionPenaltyMode::SignAware);
        assert_eq!(c.logit_bias.get(&5), Some(&-1.5));
        assert_eq!(c.mirostat, MirostatVersion::V2);
        let back = SamplerConfig::from_json(&serde_json::to_string(&c).unwrap()).unwrap();
        assert_eq!(back, c);
    }

    #[test]
    fn every_numeric_key_is_a_knob_with_its_default() {
        let json = serde_json::to_value(SamplerConfig::default()).unwrap();
        for k in Knob::ALL {
            let v = json[k.key()]
                .as_f64()
                .unwrap_or_else(|| panic!("{} missing", k.key()));
            assert_eq!(v as f32, k.default_value(), "{}", k.key());
            assert_eq!(k.key().parse::<Knob>().unwrap(), *k);
        }
        // The numeric keys that are not knobs are ids, counts of the output or switches.
        let numeric: Vec<&str> = json
            .as_object()
            .unwrap()
            .iter()
            .filter(|(_, v)| v.is_number())
            .map(|(k, _)| k.as_str())
            .filter(|k| k.parse::<Knob>().is_err())
            .collect();
        assert_eq!(numeric, vec!["beam_width", "mirostat"]);
    }
}
