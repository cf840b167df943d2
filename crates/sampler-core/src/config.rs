//! `SamplerConfig`: the VALL-E sampling kwargs (SPEC §8) as a serde struct. Unknown keys are
//! rejected and every value is range-checked (SPEC §7).

use serde::{Deserialize, Serialize};

use crate::error::{invalid, Result, SamplerError};

/// Which stage of a codec LM the rows come from; it decides the default chain (SPEC §4).
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

/// The sampling configuration, with the VALL-E kwargs names and defaults.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SamplerConfig {
    /// > 0 divides the logits; <= 0 is a greedy draw.
    pub temperature: f32,
    /// Dynamic temperature's lower end; negative means "equal to temperature" (off).
    pub min_temperature: f32,
    /// <= 0 is off.
    pub top_k: i64,
    /// In [0, 1]; 1 is off.
    pub top_p: f32,
    /// In [0, 1]; 0 is off.
    pub min_p: f32,
    /// Tokens min-p always keeps.
    pub min_p_min_tokens: i64,
    /// > 0; 1 is off.
    pub repetition_penalty: f32,
    pub repetition_penalty_decay: f32,
    /// 0 = the whole history.
    pub repetition_penalty_window: i64,
    /// AR only; 0 is off.
    pub length_penalty: f32,
    /// Default: the last id of the vocabulary.
    pub stop_token: Option<u32>,
    /// 0 is off.
    pub dry_multiplier: f32,
    /// >= 1.
    pub dry_base: f32,
    pub dry_allowed_length: i64,
    /// The n of top-n-sigma; 0 is off.
    pub top_no: f32,
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
            length_penalty: 0.0,
            stop_token: None,
            dry_multiplier: 0.0,
            dry_base: 1.75,
            dry_allowed_length: 2,
            top_no: 0.0,
        }
    }
}

fn check(name: &'static str, ok: bool, what: &str, v: impl std::fmt::Display) -> Result<()> {
    if ok {
        Ok(())
    } else {
        Err(invalid(name, format!("{v} is not {what}")))
    }
}

impl SamplerConfig {
    /// Parses JSON, rejecting unknown keys, and validates the values.
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

    /// Checks every value against its range (SPEC §7).
    pub fn validate(&self) -> Result<()> {
        let t = self.temperature;
        check("temperature", t.is_finite(), "finite", t)?;
        let tm = self.min_temperature;
        check("min_temperature", tm.is_finite(), "finite", tm)?;
        check(
            "top_p",
            (0.0..=1.0).contains(&self.top_p),
            "in [0, 1]",
            self.top_p,
        )?;
        check(
            "min_p",
            (0.0..=1.0).contains(&self.min_p),
            "in [0, 1]",
            self.min_p,
        )?;
        let m = self.min_p_min_tokens;
        check("min_p_min_tokens", m >= 0, ">= 0", m)?;
        let rp = self.repetition_penalty;
        check(
            "repetition_penalty",
            rp > 0.0 && rp.is_finite(),
            "> 0 and finite",
            rp,
        )?;
        let d = self.repetition_penalty_decay;
        check("repetition_penalty_decay", d.is_finite(), "finite", d)?;
        let w = self.repetition_penalty_window;
        check("repetition_penalty_window", w >= 0, ">= 0", w)?;
        let lp = self.length_penalty;
        check("length_penalty", lp.is_finite(), "finite", lp)?;
        let dm = self.dry_multiplier;
        check(
            "dry_multiplier",
            dm >= 0.0 && dm.is_finite(),
            ">= 0 and finite",
            dm,
        )?;
        let db = self.dry_base;
        check(
            "dry_base",
            db >= 1.0 && db.is_finite(),
            ">= 1 and finite",
            db,
        )?;
        let dl = self.dry_allowed_length;
        check("dry_allowed_length", dl >= 0, ">= 0", dl)?;
        check(
            "top_no",
            self.top_no >= 0.0 && self.top_no.is_finite(),
            ">= 0 and finite",
            self.top_no,
        )?;
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
        ] {
            assert!(SamplerConfig::from_json(bad).is_err(), "{bad} accepted");
        }
        let ok =
            SamplerConfig::from_json(r#"{"top_k": 5, "temperature": 0, "stop_token": 3}"#).unwrap();
        assert_eq!((ok.top_k, ok.stop_token), (5, Some(3)));
        assert!(ok.is_greedy());
    }
}
