//! `SamplerConfig`: the VALL-E sampling kwargs (SPEC §8) as a serde struct. Unknown keys are
//! rejected and every value is range-checked (SPEC §7).

use std::collections::BTreeMap;

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

/// How the repetition penalty treats a seen token (SPEC §4).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RepetitionPenaltyMode {
    /// The reference VALL-E form: divide by `penalty * D^decay` once per occurrence, whatever
    /// the logit's sign.
    #[default]
    Divide,
    /// The HF/CTRL form: once per distinct token, divide a positive logit and multiply a
    /// negative one by the penalty.
    SignAware,
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
    /// "divide" (default) or "sign_aware".
    pub repetition_penalty_mode: RepetitionPenaltyMode,
    /// Subtracted once per occurrence in the repetition window; 0 is off.
    pub frequency_penalty: f32,
    /// Subtracted once per distinct token of the repetition window; 0 is off.
    pub presence_penalty: f32,
    /// `{"id": bias}` added to the logits.
    pub logit_bias: BTreeMap<u32, f32>,
    /// Token ids set to -inf.
    pub ban_tokens: Vec<u32>,
    /// Typical-p mass in [0, 1]; 1 is off.
    pub typical_p: f32,
    /// Chance in [0, 1] that XTC acts on a row; 0 is off.
    pub xtc_probability: f32,
    /// XTC's probability threshold in [0, 1]; above 0.5 it never acts.
    pub xtc_threshold: f32,
    /// Entropy-form dynamic temperature: range >= 0 around the temperature; 0 is off.
    pub dynatemp_range: f32,
    /// Entropy-form dynamic temperature exponent >= 0.
    pub dynatemp_exponent: f32,
    /// DRY window in tokens; 0 = the whole history.
    pub dry_penalty_last_n: i64,
    /// DRY sequence breakers (token ids); default none.
    pub dry_sequence_breakers: Vec<u32>,
    /// 0 = off, 1 = mirostat v1, 2 = mirostat v2.
    pub mirostat: u8,
    /// Mirostat target surprise in bits, >= 0.
    pub mirostat_tau: f32,
    /// Mirostat learning rate, >= 0.
    pub mirostat_eta: f32,
    /// The entropix decision (reference thresholds, see `processors::entropix`).
    pub entropix: bool,
    /// Classifier-free guidance strength; 1 is off.
    pub cfg_strength: f32,
    /// Share in [0, 1] of the std-rescaled guided logits; 0 is off.
    pub cfg_rescale: f32,
    /// `sample` writes the top `beam_width` (row, token) pairs when > 1.
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
            length_penalty: 0.0,
            stop_token: None,
            dry_multiplier: 0.0,
            dry_base: 1.75,
            dry_allowed_length: 2,
            top_no: 0.0,
            repetition_penalty_mode: RepetitionPenaltyMode::Divide,
            frequency_penalty: 0.0,
            presence_penalty: 0.0,
            logit_bias: BTreeMap::new(),
            ban_tokens: Vec::new(),
            typical_p: 1.0,
            xtc_probability: 0.0,
            xtc_threshold: 0.1,
            dynatemp_range: 0.0,
            dynatemp_exponent: 1.0,
            dry_penalty_last_n: 0,
            dry_sequence_breakers: Vec::new(),
            mirostat: 0,
            mirostat_tau: 5.0,
            mirostat_eta: 0.1,
            entropix: false,
            cfg_strength: 1.0,
            cfg_rescale: 0.0,
            beam_width: 1,
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
        self.validate_extras()
    }

    /// The keys beyond the reference pipeline (issue 3).
    fn validate_extras(&self) -> Result<()> {
        let unit =
            |name: &'static str, v: f32| check(name, (0.0..=1.0).contains(&v), "in [0, 1]", v);
        let finite = |name: &'static str, v: f32| check(name, v.is_finite(), "finite", v);
        let non_neg = |name: &'static str, v: f32| {
            check(name, v >= 0.0 && v.is_finite(), ">= 0 and finite", v)
        };
        if self.repetition_penalty_mode == RepetitionPenaltyMode::SignAware {
            let d = self.repetition_penalty_decay;
            check(
                "repetition_penalty_decay",
                d == 0.0,
                "0 (the sign_aware mode takes no decay)",
                d,
            )?;
        }
        finite("frequency_penalty", self.frequency_penalty)?;
        finite("presence_penalty", self.presence_penalty)?;
        for (id, b) in &self.logit_bias {
            if !b.is_finite() {
                return Err(invalid(
                    "logit_bias",
                    format!("bias {b} of token {id} is not finite"),
                ));
            }
        }
        unit("typical_p", self.typical_p)?;
        unit("xtc_probability", self.xtc_probability)?;
        unit("xtc_threshold", self.xtc_threshold)?;
        non_neg("dynatemp_range", self.dynatemp_range)?;
        non_neg("dynatemp_exponent", self.dynatemp_exponent)?;
        if self.dynatemp_range > 0.0
            && crate::processors::DynamicTemperature::is_dynamic(
                self.temperature,
                self.min_temperature,
            )
        {
            return Err(invalid(
                "dynatemp_range",
                "the entropy form (dynatemp_range > 0) and the sigmoid form (min_temperature) exclude each other",
            ));
        }
        let n = self.dry_penalty_last_n;
        check(
            "dry_penalty_last_n",
            n >= 0,
            ">= 0 (0 = the whole history)",
            n,
        )?;
        check("mirostat", self.mirostat <= 2, "0, 1 or 2", self.mirostat)?;
        non_neg("mirostat_tau", self.mirostat_tau)?;
        non_neg("mirostat_eta", self.mirostat_eta)?;
        if self.entropix && self.mirostat != 0 {
            return Err(invalid(
                "entropix",
                "entropix and mirostat both choose the final distribution; pick one",
            ));
        }
        finite("cfg_strength", self.cfg_strength)?;
        unit("cfg_rescale", self.cfg_rescale)?;
        let bw = self.beam_width;
        let max = crate::beam::MAX_BEAM_WIDTH as i64;
        check(
            "beam_width",
            (1..=max).contains(&bw),
            &format!("in [1, {max}]"),
            bw,
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
        ] {
            assert!(SamplerConfig::from_json(bad).is_err(), "{bad} accepted");
        }
        let ok =
            SamplerConfig::from_json(r#"{"top_k": 5, "temperature": 0, "stop_token": 3}"#).unwrap();
        assert_eq!((ok.top_k, ok.stop_token), (5, Some(3)));
        assert!(ok.is_greedy());
    }

    #[test]
    fn new_keys_parse_and_default_off() {
        let d = SamplerConfig::default();
        assert_eq!(d.repetition_penalty_mode, RepetitionPenaltyMode::Divide);
        assert_eq!(
            (d.frequency_penalty, d.presence_penalty, d.typical_p),
            (0.0, 0.0, 1.0)
        );
        assert_eq!(
            (d.xtc_probability, d.dynatemp_range, d.mirostat, d.entropix),
            (0.0, 0.0, 0, false)
        );
        assert_eq!((d.cfg_strength, d.cfg_rescale, d.beam_width), (1.0, 0.0, 1));
        assert!(
            d.dry_sequence_breakers.is_empty()
                && d.logit_bias.is_empty()
                && d.ban_tokens.is_empty()
        );
        let c = SamplerConfig::from_json(
            r#"{"repetition_penalty_mode": "sign_aware", "logit_bias": {"5": -1.5, "7": 2},
                "ban_tokens": [1, 2], "dry_sequence_breakers": [9], "mirostat": 2,
                "entropix": false, "beam_width": 4, "typical_p": 0.9, "xtc_probability": 0.5}"#,
        )
        .unwrap();
        assert_eq!(c.repetition_penalty_mode, RepetitionPenaltyMode::SignAware);
        assert_eq!(c.logit_bias.get(&5), Some(&-1.5));
        assert_eq!(c.logit_bias.get(&7), Some(&2.0));
        assert_eq!(
            (c.ban_tokens.clone(), c.dry_sequence_breakers.clone()),
            (vec![1, 2], vec![9])
        );
        assert_eq!((c.mirostat, c.beam_width), (2, 4));
        // Round trip through JSON keeps every key.
        let back = SamplerConfig::from_json(&serde_json::to_string(&c).unwrap()).unwrap();
        assert_eq!(back, c);
    }
}
