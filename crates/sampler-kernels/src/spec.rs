//! The stage spec: every stage a fused row program can run, its id, and the layout of its
//! per-row parameters. It is the one definition that the CPU interpreter, the GPU kernels'
//! C header ([`c_header`], checked against `kernels/stage_spec.h` by a test) and sampler-core's
//! fusion pass share.
//!
//! A segment's per-row parameters are one `[rows, n]` f32 tensor. Each stage owns a block of
//! consecutive columns laid out as its `row::*` struct (`#[repr(C)]`, one `f32` per field), so a
//! kernel reads field `f` of a stage at column `base + SK_<STAGE>_<F>`. The same structs, with
//! another field type, carry the parameters on their way there: `row::TopP<RowParam>` in
//! sampler-core, `row::TopP<u32>` (column indices) in a compiled [`Program`].
//!
//! Data that is the same for every row (token lists, the stop token, entropix's thresholds)
//! travels in the stage itself ([`StageOp`]), not in the parameter tensor.

use std::sync::Arc;

/// The `row::*` struct of a stage with per-row parameters (none for a stage without).
macro_rules! row_struct {
    ($(#[$doc:meta])* $name:ident {}) => {};
    ($(#[$doc:meta])* $name:ident { $( $(#[$fdoc:meta])* $field:ident ),+ }) => {
        $(#[$doc])*
        #[repr(C)]
        #[derive(Clone, Debug, PartialEq)]
        pub struct $name<P = f32> {
            $( $(#[$fdoc])* #[doc = concat!("The stage's `", stringify!($field), "`, per row.")] pub $field: P, )+
        }

        impl<P> $name<P> {
            /// The field names, in column order.
            pub const FIELDS: &'static [&'static str] = &[$(stringify!($field)),+];

            /// The same block with every field mapped by `f`, in column order.
            pub fn map<Q>(self, mut f: impl FnMut(P) -> Q) -> $name<Q> {
                $name { $( $field: f(self.$field), )+ }
            }

            /// The fields, in column order.
            pub fn fields(&self) -> Vec<&P> {
                vec![$(&self.$field),+]
            }
        }
    };
}

macro_rules! stages {
    ($(
        $(#[$doc:meta])*
        $name:ident = $id:literal { $( $(#[$fdoc:meta])* $field:ident ),* $(,)? }
    )*) => {
        /// The per-row parameter block of each stage that has per-row parameters.
        pub mod row {
            $( row_struct!($(#[$doc])* $name { $( $(#[$fdoc])* $field ),* }); )*
        }

        /// The id of each stage (the `SK_STAGE_*` constants of the C header).
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        #[repr(u32)]
        pub enum StageId {
            $( $(#[$doc])* $name = $id, )*
        }

        impl StageId {
            /// Every stage, in id order.
            pub const ALL: &'static [StageId] = &[$(StageId::$name),*];

            /// The stage's name as the C header spells it (`SK_STAGE_<NAME>`).
            pub fn c_name(self) -> &'static str {
                match self { $( StageId::$name => stringify!($name), )* }
            }

            /// The field names of the stage's parameter block, in column order.
            pub fn fields(self) -> &'static [&'static str] {
                match self { $( StageId::$name => &[$(stringify!($field)),*], )* }
            }
        }
    };
}

stages! {
    /// Classifier-free guidance: `null + (pos - null) * strength`, then a share `rescale` of
    /// the std-rescaled result.
    Cfg = 1 { strength, rescale }
    /// Token bans (the ids travel in the stage).
    Ban = 2 {}
    /// Additive logit bias (the entries travel in the stage).
    LogitBias = 3 {}
    /// Repetition penalty, divide form: `/= penalty * D^decay` per occurrence at distance
    /// `D < window` (0 = the whole history).
    RepetitionDivide = 4 { penalty, decay, window }
    /// Repetition penalty, sign-aware form: once per distinct token of the window.
    RepetitionSignAware = 5 { penalty, window }
    /// Frequency and presence penalties over the window.
    FrequencyPresence = 6 { frequency, presence, window }
    /// Length penalty on the stop token: `/= (len + 1)^factor`.
    LengthPenalty = 7 { factor }
    /// DRY; the breakers and the match cap travel in the stage.
    Dry = 8 { multiplier, base, allowed_length, window }
    /// Min-p with its protected `min_tokens`.
    MinP = 9 { p, min_tokens }
    /// Top-k.
    TopK = 10 { k }
    /// Top-p (nucleus).
    TopP = 11 { p }
    /// Locally typical sampling.
    TypicalP = 12 { p }
    /// Exclude top choices.
    Xtc = 13 { probability, threshold }
    /// Plain temperature.
    Temperature = 14 { t }
    /// Dynamic temperature, sigmoid form.
    SigmoidTemperature = 15 { t, t_min }
    /// Dynamic temperature, entropy form.
    EntropyTemperature = 16 { t, range, exponent }
    /// Top-n-sigma.
    TopNSigma = 17 { n }
    /// Mirostat v1 (selector); the fit length m travels in the stage.
    MirostatV1 = 18 { tau, eta, greedy }
    /// Mirostat v2 (selector).
    MirostatV2 = 19 { tau, eta, greedy }
    /// Entropix's metrics and decision (thresholds travel in the stage).
    Entropix = 20 {}
    /// The draw (selector): greedy where `greedy` is 1, else the Philox inverse CDF.
    Draw = 21 { greedy }
}

/// Entropix's thresholds and coefficients (the entropix project's defaults). The same for every
/// row of a stage; the C header names each field's index (`SK_ENTROPIX_<FIELD>`).
#[repr(C)]
#[derive(Clone, Debug, PartialEq)]
pub struct EntropixParams {
    /// The reference's `temperature`.
    pub temperature: f32,
    /// The reference's `top_p`.
    pub top_p: f32,
    /// The reference's `top_k`.
    pub top_k: f32,
    /// The reference's `min_p`.
    pub min_p: f32,
    /// The reference's `low_entropy`.
    pub low_entropy: f32,
    /// The reference's `low_varentropy`.
    pub low_varentropy: f32,
    /// The reference's `medium_entropy`.
    pub medium_entropy: f32,
    /// The reference's `high_entropy`.
    pub high_entropy: f32,
    /// The reference's `high_varentropy`.
    pub high_varentropy: f32,
    /// The reference's `helv_attn_ent_offset`.
    pub helv_attn_ent_offset: f32,
    /// The reference's `helv_attn_ent_coef`.
    pub helv_attn_ent_coef: f32,
    /// The reference's `helv_max_temperature`.
    pub helv_max_temperature: f32,
    /// The reference's `lehv_interaction_strength_offset`.
    pub lehv_interaction_strength_offset: f32,
    /// The reference's `lehv_interaction_strength_coef`.
    pub lehv_interaction_strength_coef: f32,
    /// The reference's `lehv_max_temperature`.
    pub lehv_max_temperature: f32,
    /// The reference's `lehv_top_k_agreement_coef`.
    pub lehv_top_k_agreement_coef: f32,
    /// The reference's `lehv_min_top_k`.
    pub lehv_min_top_k: f32,
    /// The reference's `hehv_attn_ent_coef`.
    pub hehv_attn_ent_coef: f32,
    /// The reference's `hehv_attn_vent_offset`.
    pub hehv_attn_vent_offset: f32,
    /// The reference's `hehv_attn_vent_coef`.
    pub hehv_attn_vent_coef: f32,
    /// The reference's `hehv_min_temperature`.
    pub hehv_min_temperature: f32,
    /// The reference's `hehv_min_top_p`.
    pub hehv_min_top_p: f32,
    /// n of the adaptive state's best-of-n (an integer >= 1).
    pub n_adaptive_samples: f32,
    /// The reference's `ada_temp_logits`.
    pub ada_temp_logits: f32,
    /// The reference's `ada_temp_attn`.
    pub ada_temp_attn: f32,
    /// The reference's `ada_temp_agree`.
    pub ada_temp_agree: f32,
    /// The reference's `ada_top_p`.
    pub ada_top_p: f32,
    /// The reference's `ada_min_top_p`.
    pub ada_min_top_p: f32,
    /// The reference's `ada_top_k_int`.
    pub ada_top_k_int: f32,
    /// The reference's `ada_top_k_agree`.
    pub ada_top_k_agree: f32,
    /// The reference's `ada_max_top_k`.
    pub ada_max_top_k: f32,
    /// The reference's `ada_min_p`.
    pub ada_min_p: f32,
    /// The reference's `ada_min_min_p`.
    pub ada_min_min_p: f32,
    /// The reference's `ada_max_min_p`.
    pub ada_max_min_p: f32,
    /// The "ask a clarifying question" token, or -1 for none (then the state samples).
    pub clarifying_token: f32,
}

/// The best-of-n support of entropix's adaptive state: its top-k is at most this.
pub const ENTROPIX_BEST_OF_SUPPORT: usize = 100;

/// The decisions of entropix, as their codes in the metrics output.
pub mod entropix_state {
    /// Low entropy, low varentropy: the argmax.
    pub const ARGMAX: u32 = 0;
    /// High entropy, low varentropy: clarify (or sample cooler).
    pub const CLARIFY: u32 = 1;
    /// Low entropy, high varentropy: explore.
    pub const EXPLORE: u32 = 2;
    /// High entropy, high varentropy: resample.
    pub const RESAMPLE: u32 = 3;
    /// Everything else: adaptive sampling with best-of-n.
    pub const ADAPTIVE: u32 = 4;
}

/// Columns of entropix's per-row metrics output (`[rows, ENTROPIX_METRICS]` f32).
pub mod entropix_metric {
    /// Entropy of the row's distribution, bits.
    pub const ENTROPY: usize = 0;
    /// Varentropy, bits squared.
    pub const VARENTROPY: usize = 1;
    /// Mean attention entropy.
    pub const ATTN_ENTROPY: usize = 2;
    /// Variance over heads of the attention entropy.
    pub const ATTN_VARENTROPY: usize = 3;
    /// Mean deviation of the heads' attention from their mean.
    pub const AGREEMENT: usize = 4;
    /// Mean absolute attention score.
    pub const INTERACTION_STRENGTH: usize = 5;
    /// The decision (an `entropix_state` code).
    pub const STATE: usize = 6;
}
/// Number of entropix metric columns.
pub const ENTROPIX_METRICS: usize = 7;
/// Number of attention metric columns (attention entropy, varentropy, agreement, interaction).
pub const ATTENTION_METRICS: usize = 4;

impl Default for EntropixParams {
    fn default() -> Self {
        Self {
            temperature: 0.666,
            top_p: 0.90,
            top_k: 27.0,
            min_p: 0.03,
            low_entropy: 0.1,
            low_varentropy: 0.1,
            medium_entropy: 3.0,
            high_entropy: 5.0,
            high_varentropy: 5.0,
            helv_attn_ent_offset: 1.3,
            helv_attn_ent_coef: 0.2,
            helv_max_temperature: 1.5,
            lehv_interaction_strength_offset: 1.2,
            lehv_interaction_strength_coef: 0.3,
            lehv_max_temperature: 1.5,
            lehv_top_k_agreement_coef: 0.5,
            lehv_min_top_k: 5.0,
            hehv_attn_ent_coef: 0.2,
            hehv_attn_vent_offset: 2.0,
            hehv_attn_vent_coef: 0.5,
            hehv_min_temperature: 2.0,
            hehv_min_top_p: 0.5,
            n_adaptive_samples: 5.0,
            ada_temp_logits: 0.3,
            ada_temp_attn: 0.2,
            ada_temp_agree: 0.2,
            ada_top_p: 0.1,
            ada_min_top_p: 0.1,
            ada_top_k_int: 0.3,
            ada_top_k_agree: 0.2,
            ada_max_top_k: ENTROPIX_BEST_OF_SUPPORT as f32,
            ada_min_p: 0.5,
            ada_min_min_p: 0.01,
            ada_max_min_p: 0.5,
            clarifying_token: -1.0,
        }
    }
}

impl EntropixParams {
    /// The field names, in memory order.
    pub const FIELDS: &'static [&'static str] = &[
        "temperature",
        "top_p",
        "top_k",
        "min_p",
        "low_entropy",
        "low_varentropy",
        "medium_entropy",
        "high_entropy",
        "high_varentropy",
        "helv_attn_ent_offset",
        "helv_attn_ent_coef",
        "helv_max_temperature",
        "lehv_interaction_strength_offset",
        "lehv_interaction_strength_coef",
        "lehv_max_temperature",
        "lehv_top_k_agreement_coef",
        "lehv_min_top_k",
        "hehv_attn_ent_coef",
        "hehv_attn_vent_offset",
        "hehv_attn_vent_coef",
        "hehv_min_temperature",
        "hehv_min_top_p",
        "n_adaptive_samples",
        "ada_temp_logits",
        "ada_temp_attn",
        "ada_temp_agree",
        "ada_top_p",
        "ada_min_top_p",
        "ada_top_k_int",
        "ada_top_k_agree",
        "ada_max_top_k",
        "ada_min_p",
        "ada_min_min_p",
        "ada_max_min_p",
        "clarifying_token",
    ];

    /// The values in memory order (the `#[repr(C)]` layout as a slice of words).
    pub fn words(&self) -> Vec<f32> {
        vec![
            self.temperature,
            self.top_p,
            self.top_k,
            self.min_p,
            self.low_entropy,
            self.low_varentropy,
            self.medium_entropy,
            self.high_entropy,
            self.high_varentropy,
            self.helv_attn_ent_offset,
            self.helv_attn_ent_coef,
            self.helv_max_temperature,
            self.lehv_interaction_strength_offset,
            self.lehv_interaction_strength_coef,
            self.lehv_max_temperature,
            self.lehv_top_k_agreement_coef,
            self.lehv_min_top_k,
            self.hehv_attn_ent_coef,
            self.hehv_attn_vent_offset,
            self.hehv_attn_vent_coef,
            self.hehv_min_temperature,
            self.hehv_min_top_p,
            self.n_adaptive_samples,
            self.ada_temp_logits,
            self.ada_temp_attn,
            self.ada_temp_agree,
            self.ada_top_p,
            self.ada_min_top_p,
            self.ada_top_k_int,
            self.ada_top_k_agree,
            self.ada_max_top_k,
            self.ada_min_p,
            self.ada_min_min_p,
            self.ada_max_min_p,
            self.clarifying_token,
        ]
    }

    /// The clarifying token, if any.
    pub fn clarifying(&self) -> Option<u32> {
        (self.clarifying_token >= 0.0).then_some(self.clarifying_token as u32)
    }
}

/// The stop token of a length penalty: an id, or the last id of the vocabulary.
pub type StopToken = Option<u32>;

/// One stage of a row program with its per-row parameters of type `P` and its shared data.
#[derive(Clone, Debug, PartialEq)]
pub enum StageOp<P> {
    /// Classifier-free guidance.
    Cfg(row::Cfg<P>),
    /// The banned ids.
    Ban(Arc<[u32]>),
    /// `(id, bias)` entries; an id listed twice gets the sum.
    LogitBias(Arc<[(u32, f32)]>),
    /// Repetition penalty, divide form.
    RepetitionDivide(row::RepetitionDivide<P>),
    /// Repetition penalty, sign-aware form.
    RepetitionSignAware(row::RepetitionSignAware<P>),
    /// Frequency and presence penalties.
    FrequencyPresence(row::FrequencyPresence<P>),
    /// Length penalty on the stop token.
    LengthPenalty(row::LengthPenalty<P>, StopToken),
    /// DRY.
    Dry(row::Dry<P>, DryTables),
    /// Min-p.
    MinP(row::MinP<P>),
    /// Top-k.
    TopK(row::TopK<P>),
    /// Top-p.
    TopP(row::TopP<P>),
    /// Typical-p.
    TypicalP(row::TypicalP<P>),
    /// XTC.
    Xtc(row::Xtc<P>),
    /// Plain temperature.
    Temperature(row::Temperature<P>),
    /// Sigmoid dynamic temperature.
    SigmoidTemperature(row::SigmoidTemperature<P>),
    /// Entropy-form dynamic temperature.
    EntropyTemperature(row::EntropyTemperature<P>),
    /// Top-n-sigma.
    TopNSigma(row::TopNSigma<P>),
    /// Mirostat v1 with its fit length m (2..=256).
    MirostatV1(row::MirostatV1<P>, u32),
    /// Mirostat v2.
    MirostatV2(row::MirostatV2<P>),
    /// Entropix with its thresholds.
    Entropix(Arc<EntropixParams>),
    /// The draw.
    Draw(row::Draw<P>),
}

/// DRY's shared data.
#[derive(Clone, Debug, PartialEq)]
pub struct DryTables {
    /// Token ids that stop a match.
    pub breakers: Arc<[u32]>,
    /// The longest match counted (>= 1).
    pub max_match: u32,
}

impl<P> StageOp<P> {
    /// The stage's id.
    pub fn id(&self) -> StageId {
        match self {
            StageOp::Cfg(_) => StageId::Cfg,
            StageOp::Ban(_) => StageId::Ban,
            StageOp::LogitBias(_) => StageId::LogitBias,
            StageOp::RepetitionDivide(_) => StageId::RepetitionDivide,
            StageOp::RepetitionSignAware(_) => StageId::RepetitionSignAware,
            StageOp::FrequencyPresence(_) => StageId::FrequencyPresence,
            StageOp::LengthPenalty(..) => StageId::LengthPenalty,
            StageOp::Dry(..) => StageId::Dry,
            StageOp::MinP(_) => StageId::MinP,
            StageOp::TopK(_) => StageId::TopK,
            StageOp::TopP(_) => StageId::TopP,
            StageOp::TypicalP(_) => StageId::TypicalP,
            StageOp::Xtc(_) => StageId::Xtc,
            StageOp::Temperature(_) => StageId::Temperature,
            StageOp::SigmoidTemperature(_) => StageId::SigmoidTemperature,
            StageOp::EntropyTemperature(_) => StageId::EntropyTemperature,
            StageOp::TopNSigma(_) => StageId::TopNSigma,
            StageOp::MirostatV1(..) => StageId::MirostatV1,
            StageOp::MirostatV2(_) => StageId::MirostatV2,
            StageOp::Entropix(_) => StageId::Entropix,
            StageOp::Draw(_) => StageId::Draw,
        }
    }

    /// The same stage with every per-row parameter mapped by `f`, in column order.
    pub fn map<Q>(self, f: impl FnMut(P) -> Q) -> StageOp<Q> {
        match self {
            StageOp::Cfg(p) => StageOp::Cfg(p.map(f)),
            StageOp::Ban(ids) => StageOp::Ban(ids),
            StageOp::LogitBias(e) => StageOp::LogitBias(e),
            StageOp::RepetitionDivide(p) => StageOp::RepetitionDivide(p.map(f)),
            StageOp::RepetitionSignAware(p) => StageOp::RepetitionSignAware(p.map(f)),
            StageOp::FrequencyPresence(p) => StageOp::FrequencyPresence(p.map(f)),
            StageOp::LengthPenalty(p, s) => StageOp::LengthPenalty(p.map(f), s),
            StageOp::Dry(p, t) => StageOp::Dry(p.map(f), t),
            StageOp::MinP(p) => StageOp::MinP(p.map(f)),
            StageOp::TopK(p) => StageOp::TopK(p.map(f)),
            StageOp::TopP(p) => StageOp::TopP(p.map(f)),
            StageOp::TypicalP(p) => StageOp::TypicalP(p.map(f)),
            StageOp::Xtc(p) => StageOp::Xtc(p.map(f)),
            StageOp::Temperature(p) => StageOp::Temperature(p.map(f)),
            StageOp::SigmoidTemperature(p) => StageOp::SigmoidTemperature(p.map(f)),
            StageOp::EntropyTemperature(p) => StageOp::EntropyTemperature(p.map(f)),
            StageOp::TopNSigma(p) => StageOp::TopNSigma(p.map(f)),
            StageOp::MirostatV1(p, m) => StageOp::MirostatV1(p.map(f), m),
            StageOp::MirostatV2(p) => StageOp::MirostatV2(p.map(f)),
            StageOp::Entropix(c) => StageOp::Entropix(c),
            StageOp::Draw(p) => StageOp::Draw(p.map(f)),
        }
    }

    /// The per-row parameters, in column order.
    pub fn params(&self) -> Vec<&P> {
        match self {
            StageOp::Cfg(p) => p.fields(),
            StageOp::Ban(_) | StageOp::LogitBias(_) | StageOp::Entropix(_) => Vec::new(),
            StageOp::RepetitionDivide(p) => p.fields(),
            StageOp::RepetitionSignAware(p) => p.fields(),
            StageOp::FrequencyPresence(p) => p.fields(),
            StageOp::LengthPenalty(p, _) => p.fields(),
            StageOp::Dry(p, _) => p.fields(),
            StageOp::MinP(p) => p.fields(),
            StageOp::TopK(p) => p.fields(),
            StageOp::TopP(p) => p.fields(),
            StageOp::TypicalP(p) => p.fields(),
            StageOp::Xtc(p) => p.fields(),
            StageOp::Temperature(p) => p.fields(),
            StageOp::SigmoidTemperature(p) => p.fields(),
            StageOp::EntropyTemperature(p) => p.fields(),
            StageOp::TopNSigma(p) => p.fields(),
            StageOp::MirostatV1(p, _) => p.fields(),
            StageOp::MirostatV2(p) => p.fields(),
            StageOp::Draw(p) => p.fields(),
        }
    }

    /// Whether the stage selects the token (it must end its program).
    pub fn selects(&self) -> bool {
        matches!(
            self,
            StageOp::Draw(_) | StageOp::MirostatV1(..) | StageOp::MirostatV2(_)
        )
    }

    /// Whether the stage reads the rows' histories.
    pub fn reads_history(&self) -> bool {
        matches!(
            self,
            StageOp::RepetitionDivide(_)
                | StageOp::RepetitionSignAware(_)
                | StageOp::FrequencyPresence(_)
                | StageOp::LengthPenalty(..)
                | StageOp::Dry(..)
                | StageOp::Entropix(_)
        )
    }

    /// Whether the stage keeps per-row state across steps (mirostat's mu).
    pub fn has_state(&self) -> bool {
        matches!(self, StageOp::MirostatV1(..) | StageOp::MirostatV2(_))
    }
}

/// A compiled row program: the stages of one chain segment with their parameter columns.
#[derive(Clone, Debug, PartialEq)]
pub struct Program {
    /// The stages, in order; a selecting stage may only come last.
    pub ops: Vec<StageOp<u32>>,
    /// Columns of the segment's parameter tensor.
    pub columns: usize,
}

impl Program {
    /// Lays out the stages' parameters in consecutive column blocks, in order; returns the
    /// program and the parameters, column by column.
    pub fn compile<P>(stages: Vec<StageOp<P>>) -> (Program, Vec<P>) {
        let mut columns = Vec::new();
        let ops = stages
            .into_iter()
            .map(|s| {
                s.map(|p| {
                    columns.push(p);
                    (columns.len() - 1) as u32
                })
            })
            .collect();
        let program = Program {
            ops,
            columns: columns.len(),
        };
        (program, columns)
    }

    /// Whether the program ends with a selecting stage (it draws tokens).
    pub fn selects(&self) -> bool {
        self.ops.last().is_some_and(|s| s.selects())
    }

    /// Whether any stage reads the histories.
    pub fn reads_history(&self) -> bool {
        self.ops.iter().any(|s| s.reads_history())
    }

    /// Whether any stage needs the null logits (classifier-free guidance).
    pub fn reads_null_logits(&self) -> bool {
        self.ops.iter().any(|s| matches!(s, StageOp::Cfg(_)))
    }

    /// Whether the program keeps per-row state (mirostat's mu).
    pub fn has_state(&self) -> bool {
        self.ops.iter().any(|s| s.has_state())
    }

    /// Whether the program reports entropix metrics.
    pub fn has_entropix(&self) -> bool {
        self.ops.iter().any(|s| matches!(s, StageOp::Entropix(_)))
    }
}

/// The C header of the spec: stage ids, each stage's field offsets within its column block, and
/// entropix's parameter indices. `kernels/stage_spec.h` is this text (a test checks it), and the
/// GPU programs are compiled with it.
pub fn c_header() -> String {
    let mut s = String::new();
    s.push_str("/* stage_spec.h -- generated from crates/sampler-kernels/src/spec.rs by\n");
    s.push_str(" * sampler_kernels::spec::c_header(); do not edit (a test compares the two). */\n");
    s.push_str("#ifndef SK_STAGE_SPEC_H\n#define SK_STAGE_SPEC_H\n\n");
    for &id in StageId::ALL {
        let name = upper_snake(id.c_name());
        s.push_str(&format!("#define SK_STAGE_{name} {}u\n", id as u32));
        for (i, f) in id.fields().iter().enumerate() {
            s.push_str(&format!("#define SK_{name}_{} {i}u\n", f.to_uppercase()));
        }
        s.push_str(&format!(
            "#define SK_{name}_FIELDS {}u\n",
            id.fields().len()
        ));
    }
    s.push('\n');
    for (i, f) in EntropixParams::FIELDS.iter().enumerate() {
        s.push_str(&format!("#define SK_ENTROPIX_{} {i}u\n", f.to_uppercase()));
    }
    s.push_str(&format!(
        "#define SK_ENTROPIX_PARAMS {}u\n",
        EntropixParams::FIELDS.len()
    ));
    s.push_str("\n#endif\n");
    s
}

fn upper_snake(camel: &str) -> String {
    let mut out = String::new();
    for (i, c) in camel.chars().enumerate() {
        if c.is_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_committed_header_is_the_generated_one() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/kernels/stage_spec.h");
        if std::env::var_os("SAMPLER_WRITE_STAGE_SPEC").is_some() {
            std::fs::write(path, c_header()).unwrap();
        }
        let committed = std::fs::read_to_string(path).unwrap_or_default();
        assert_eq!(
            committed,
            c_header(),
            "kernels/stage_spec.h is stale: regenerate it from spec::c_header()"
        );
    }

    #[test]
    fn compile_lays_out_consecutive_blocks() {
        let stages = vec![
            StageOp::MinP(row::MinP {
                p: "min_p",
                min_tokens: "min_tokens",
            }),
            StageOp::Ban(Arc::from(vec![3u32])),
            StageOp::TopK(row::TopK { k: "k" }),
            StageOp::Draw(row::Draw { greedy: "greedy" }),
        ];
        let (program, cols) = Program::compile(stages);
        assert_eq!(cols, vec!["min_p", "min_tokens", "k", "greedy"]);
        assert_eq!(program.columns, 4);
        assert_eq!(
            program.ops[2],
            StageOp::TopK(row::TopK { k: 2 }),
            "top-k's block starts after min-p's two columns"
        );
        assert!(program.selects() && !program.reads_history());
    }

    #[test]
    fn fields_follow_the_struct_and_entropix_words_follow_its_fields() {
        assert_eq!(StageId::MinP.fields(), &["p", "min_tokens"]);
        assert_eq!(StageId::Ban.fields(), &[] as &[&str]);
        let p = EntropixParams::default();
        assert_eq!(p.words().len(), EntropixParams::FIELDS.len());
        assert_eq!(
            std::mem::size_of::<EntropixParams>(),
            4 * EntropixParams::FIELDS.len()
        );
        assert_eq!(p.words()[2], p.top_k);
        assert_eq!(upper_snake("RepetitionSignAware"), "REPETITION_SIGN_AWARE");
    }
}
