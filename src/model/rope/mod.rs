//! Rotary position embedding (RoPE) and its extensions.
//!
//! A RoPE type is one struct of its parameters ([`types`]: [`Plain`], [`Linear`], [`Ntk`],
//! [`Dynamic`], [`Yarn`], [`Llama3`], [`LongRope`]) implementing [`RopeKind`]: its name, its
//! checks, and its inverse frequencies `inv_freq` (`head_dim / 2` values) with the attention
//! factor that scales cos and sin. [`RopeScaling`] is the enum of them, tagged by `rope_type`
//! exactly as transformers' `rope_parameters` dict is, so serde reads and writes the dict (and
//! the pipeline's `rope` tables) with no hand-written parsing: an unknown type or a key that does
//! not belong to the type is a deserialization error naming it. [`RopeConfig`] adds the base
//! `rope_theta`. Adding a type is a struct, its `RopeKind` impl, and one variant.
//!
//! The numbers follow transformers' `modeling_rope_utils.py` (5.x) step by step ([`formulas`]).
//! The model turns them into cos/sin tables with [`cos_sin`] in the half-split `rotate_half`
//! layout: `emb = cat(freqs, freqs)`.
//!
//! `ntk` (NTK-aware interpolation with a fixed base) is not a transformers rope type: it is the
//! default RoPE with an enlarged base `theta * factor^(d/(d-2))` (or a base given directly, as
//! in the paper's base sweep). See docs/model.md for how it is written to config.json.
//!
//! Two types depend on the current sequence length `seq_len = max(position) + 1`, as in
//! transformers' `dynamic_rope_update`: `dynamic` (the base grows with `seq_len` beyond
//! `max_position_embeddings`) and `longrope` (long factors once `seq_len` exceeds the original
//! length).

pub mod formulas;
pub mod types;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use formulas::*;
pub use types::{Dynamic, Linear, Llama3, LongRope, Ntk, Plain, Yarn};

use super::error::{ModelError, Result};

/// Default `rope_theta` of transformers when a config has none.
pub const DEFAULT_THETA: f64 = 10_000.0;

/// The result of a type's check: `Err((key, message))` names the offending key.
pub type Check = std::result::Result<(), (&'static str, String)>;

/// What every RoPE type provides. [`RopeScaling`] dispatches to it.
pub trait RopeKind {
    /// The `rope_type` name (`default`, `linear`, `ntk`, ...).
    fn name(&self) -> &'static str;

    /// Inverse frequencies and attention factor of a forward whose largest position is
    /// `seq_len - 1`, for base `theta` and a model with `head_dim` and `max_position_embeddings`
    /// (the default original length of yarn, llama3 and longrope, and the threshold of dynamic
    /// NTK). This is the function to build per-frequency views on: `inv_freq[i]` is the
    /// frequency of dimension pair `(i, i + head_dim / 2)`.
    fn frequencies(
        &self,
        theta: f64,
        head_dim: usize,
        max_position_embeddings: usize,
        seq_len: usize,
    ) -> RopeFrequencies;

    /// Check the parameters, for a model with `head_dim` when it is known (a pipeline's `rope`
    /// table is checked before the model is read: the checks that need `head_dim` wait).
    fn check(&self, head_dim: Option<usize>) -> Check;

    /// Whether the frequencies change with the sequence length (`dynamic`, `longrope`).
    fn depends_on_length(&self) -> bool {
        false
    }

    /// The base the frequencies actually use: the enlarged one for `ntk`, `theta` otherwise.
    fn effective_theta(&self, theta: f64, _head_dim: usize) -> f64 {
        theta
    }

    /// The pretraining length the type refers to (`original_max_position_embeddings`), when it
    /// has that key and it is set (yarn, llama3, longrope).
    fn original_length(&self) -> Option<usize> {
        None
    }

    /// Set `original_max_position_embeddings` (nothing for types without that key).
    fn set_original_length(&mut self, _original: usize) {}

    /// The length a model extended with this type is meant for, from its pretrained length
    /// `original`: `original * factor` for the types that stretch positions by a known factor,
    /// `None` (unchanged) for default, dynamic (whose threshold it is), `ntk` by base and
    /// `longrope` without `factor`.
    fn extended_length(&self, _original: usize) -> Option<usize> {
        None
    }
}

/// A RoPE type with its parameters (everything but the base `rope_theta`). Serde form:
/// transformers' parameter dict, `{"rope_type": "yarn", "factor": 4.0, ...}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "rope_type", rename_all = "lowercase")]
pub enum RopeScaling {
    /// Plain RoPE (a "RoPE unchanged" control).
    Default(Plain),
    /// Position interpolation (PI).
    Linear(Linear),
    /// NTK-aware interpolation with a fixed base (from `factor`, or `base` given).
    Ntk(Ntk),
    /// Dynamic NTK.
    Dynamic(Dynamic),
    /// YaRN.
    Yarn(Yarn),
    /// Llama 3.1 scaling.
    Llama3(Llama3),
    /// LongRoPE.
    LongRope(LongRope),
}

impl Default for RopeScaling {
    fn default() -> Self {
        RopeScaling::Default(Plain {})
    }
}

/// `$body` with `$t` bound to the variant's struct, whichever the variant.
macro_rules! each_type {
    ($value:expr, $t:ident => $body:expr) => {
        match $value {
            RopeScaling::Default($t) => $body,
            RopeScaling::Linear($t) => $body,
            RopeScaling::Ntk($t) => $body,
            RopeScaling::Dynamic($t) => $body,
            RopeScaling::Yarn($t) => $body,
            RopeScaling::Llama3($t) => $body,
            RopeScaling::LongRope($t) => $body,
        }
    };
}

impl RopeScaling {
    /// The type's implementation.
    pub fn kind(&self) -> &dyn RopeKind {
        each_type!(self, t => t)
    }

    /// The type's implementation, mutable.
    pub fn kind_mut(&mut self) -> &mut dyn RopeKind {
        each_type!(self, t => t)
    }

    /// Whether this is plain RoPE.
    pub fn is_default(&self) -> bool {
        matches!(self, RopeScaling::Default(_))
    }
}

/// The complete RoPE setting of a model: base and type.
///
/// Serializes as transformers 5.x's `rope_parameters` dict (e.g. TOML
/// `{ rope_type = "yarn", factor = 4.0, original_max_position_embeddings = 128 }`;
/// `rope_theta` defaults to 10000), so stage parameters can carry it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct RopeConfig {
    /// `rope_theta`, the base of the original model (for `ntk` the base before enlarging).
    #[serde(rename = "rope_theta", default = "default_theta")]
    pub theta: f64,
    /// The RoPE type.
    #[serde(flatten)]
    pub scaling: RopeScaling,
}

fn default_theta() -> f64 {
    DEFAULT_THETA
}

impl Default for RopeConfig {
    fn default() -> Self {
        RopeConfig::new(DEFAULT_THETA)
    }
}

/// Inverse frequencies and attention factor for one forward.
#[derive(Debug, Clone, PartialEq)]
pub struct RopeFrequencies {
    /// `head_dim / 2` inverse frequencies.
    pub inv_freq: Vec<f32>,
    /// Factor applied to cos and sin (YaRN, LongRoPE; 1 otherwise).
    pub attention_factor: f32,
}

impl RopeConfig {
    /// Plain RoPE with base `theta`.
    pub fn new(theta: f64) -> Self {
        RopeConfig {
            theta,
            scaling: RopeScaling::default(),
        }
    }

    /// The same base with another RoPE type.
    pub fn with_scaling(mut self, scaling: RopeScaling) -> Self {
        self.scaling = scaling;
        self
    }

    /// The transformers name of the type (`ntk` for ours).
    pub fn rope_type(&self) -> &'static str {
        self.scaling.kind().name()
    }

    /// Whether the frequencies change with the sequence length (`dynamic`, `longrope`).
    pub fn depends_on_length(&self) -> bool {
        self.scaling.kind().depends_on_length()
    }

    /// The base actually used by the frequencies: the enlarged one for `ntk`, `theta` otherwise.
    pub fn effective_theta(&self, head_dim: usize) -> f64 {
        self.scaling.kind().effective_theta(self.theta, head_dim)
    }

    /// Check the parameters against a model with `head_dim`. Errors name the key.
    pub fn validate(&self, head_dim: usize, source: &str) -> Result<()> {
        let err = |key: &str, msg: String| Err(ModelError::config(source, key, msg));
        if !(self.theta.is_finite() && self.theta > 0.0) {
            return err("rope_theta", format!("must be > 0, got {}", self.theta));
        }
        if head_dim < 4 || !head_dim.is_multiple_of(2) {
            return err(
                "head_dim",
                format!("RoPE needs an even head_dim >= 4, got {head_dim}"),
            );
        }
        self.scaling
            .kind()
            .check(Some(head_dim))
            .or_else(|(key, msg)| err(key, msg))
    }

    /// Frequencies for a forward whose largest position is `seq_len - 1` (see
    /// [`RopeKind::frequencies`]).
    pub fn frequencies(
        &self,
        head_dim: usize,
        max_position_embeddings: usize,
        seq_len: usize,
    ) -> RopeFrequencies {
        self.scaling
            .kind()
            .frequencies(self.theta, head_dim, max_position_embeddings, seq_len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn close(a: &[f32], b: &[f64], rel: f64) {
        assert_eq!(a.len(), b.len());
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            let d = (*x as f64 - y).abs() / y.abs().max(1e-30);
            assert!(d <= rel, "index {i}: {x} vs {y} (rel {d:e})");
        }
    }

    fn reference_default(base: f64, dim: usize) -> Vec<f64> {
        (0..dim / 2)
            .map(|i| 1.0 / base.powf(2.0 * i as f64 / dim as f64))
            .collect()
    }

    #[test]
    fn default_matches_closed_form() {
        close(
            &default_inv_freq(10_000.0, 16),
            &reference_default(10_000.0, 16),
            1e-6,
        );
        let f = default_inv_freq(10_000.0, 4);
        assert_eq!(f[0], 1.0);
        assert!((f[1] - 0.01).abs() < 1e-8);
    }

    #[test]
    fn linear_divides_by_factor() {
        let r: Vec<f64> = reference_default(500_000.0, 8)
            .iter()
            .map(|x| x / 4.0)
            .collect();
        close(&linear_inv_freq(500_000.0, 8, 4.0), &r, 1e-6);
    }

    #[test]
    fn ntk_enlarges_base() {
        // d = 16: theta * 4^(16/14)
        let b = ntk_base(10_000.0, 4.0, 16);
        assert!((b - 10_000.0 * 4f64.powf(16.0 / 14.0)).abs() < 1e-6);
        let cfg = RopeConfig::new(10_000.0).with_scaling(RopeScaling::Ntk(Ntk {
            factor: Some(4.0),
            base: None,
        }));
        close(
            &cfg.frequencies(16, 64, 10).inv_freq,
            &reference_default(b, 16),
            1e-6,
        );
        // The lowest frequency is scaled by exactly 1/factor: the point of NTK-aware scaling.
        let f = cfg.frequencies(16, 64, 10).inv_freq;
        let d = default_inv_freq(10_000.0, 16);
        let ratio = d[7] as f64 / f[7] as f64;
        assert!((ratio - 4f64.powf(14.0 / 14.0)).abs() < 1e-4, "{ratio}");
        let direct = RopeConfig::new(10_000.0).with_scaling(RopeScaling::Ntk(Ntk {
            factor: None,
            base: Some(1e6),
        }));
        close(
            &direct.frequencies(16, 64, 10).inv_freq,
            &reference_default(1e6, 16),
            1e-6,
        );
    }

    #[test]
    fn dynamic_equals_default_up_to_max_and_grows_base_beyond() {
        let d = default_inv_freq(10_000.0, 16);
        assert_eq!(dynamic_inv_freq(10_000.0, 16, 4.0, 64, 64), d);
        // seq 160, max 64, factor 4: base * (4*160/64 - 3)^(16/14) = base * 7^(8/7)
        let base = 10_000.0 * 7f64.powf(16.0 / 14.0);
        close(
            &dynamic_inv_freq(10_000.0, 16, 4.0, 64, 160),
            &reference_default(base, 16),
            2e-6,
        );
    }

    #[test]
    fn yarn_ramp_and_attention_factor() {
        let p = Yarn {
            original_max_position_embeddings: Some(64),
            ..Yarn::new(4.0)
        };
        let (low, high) = yarn_correction_range(32.0, 1.0, 16, 10_000.0, 64, true);
        assert_eq!((low, high), (0.0, 3.0));
        let f = p.frequencies(10_000.0, 16, 999, 10);
        let (inv, a) = (f.inv_freq, f.attention_factor as f64);
        assert!((a - (0.1 * 4f64.ln() + 1.0)).abs() < 1e-6);
        let d = reference_default(10_000.0, 16);
        // i = 0: ramp 0 -> pure extrapolation; i >= 3: pure interpolation (divided by 4).
        close(&inv[..1], &d[..1], 1e-6);
        let interp: Vec<f64> = d[3..].iter().map(|x| x / 4.0).collect();
        close(&inv[3..], &interp, 1e-6);
        // i = 1: ramp 1/3 -> 1/3 interpolated.
        let mix = d[1] / 4.0 * (1.0 / 3.0) + d[1] * (2.0 / 3.0);
        close(&inv[1..2], &[mix], 1e-6);
        // mscale / mscale_all_dim as in DeepSeek: ratio of the two temperatures.
        let a = yarn_attention_factor(4.0, Some(1.0), Some(0.707), None);
        let expect = (0.1 * 4f64.ln() + 1.0) / (0.1 * 0.707 * 4f64.ln() + 1.0);
        assert!((a - expect).abs() < 1e-12);
        // Without truncation the range is fractional.
        let (low, high) = yarn_correction_range(32.0, 1.0, 16, 10_000.0, 64, false);
        assert!(low == 0.0 && (high - 2.0161).abs() < 1e-3, "{high}");
    }

    #[test]
    fn llama3_keeps_high_divides_low_and_smooths_between() {
        let inv = llama3_inv_freq(10_000.0, 16, 4.0, 1.0, 4.0, 64);
        let d = reference_default(10_000.0, 16);
        // wavelengths 2pi/d: 6.3 (high, kept), 19.9 and 62.8 (medium), >= 198 (low, / 4).
        close(&inv[..1], &d[..1], 1e-6);
        let low: Vec<f64> = d[3..].iter().map(|x| x / 4.0).collect();
        close(&inv[3..], &low, 1e-6);
        let wl = 2.0 * std::f64::consts::PI / d[1];
        let s = (64.0 / wl - 1.0) / 3.0;
        close(&inv[1..2], &[(1.0 - s) * d[1] / 4.0 + s * d[1]], 1e-6);
    }

    #[test]
    fn longrope_switches_at_original_length() {
        let cfg = RopeConfig::new(10_000.0).with_scaling(RopeScaling::LongRope(LongRope {
            short_factor: vec![1.0, 2.0],
            long_factor: vec![3.0, 4.0],
            factor: Some(4.0),
            attention_factor: None,
            original_max_position_embeddings: Some(64),
        }));
        let d = reference_default(10_000.0, 4);
        let short = cfg.frequencies(4, 256, 64);
        close(&short.inv_freq, &[d[0], d[1] / 2.0], 1e-6);
        let long = cfg.frequencies(4, 256, 65);
        close(&long.inv_freq, &[d[0] / 3.0, d[1] / 4.0], 1e-6);
        let a = (1.0 + 4f64.ln() / 64f64.ln()).sqrt();
        assert!((long.attention_factor as f64 - a).abs() < 1e-6);
    }

    #[test]
    fn cos_sin_layout_and_factor() {
        let f = RopeFrequencies {
            inv_freq: vec![1.0, 0.5],
            attention_factor: 2.0,
        };
        let (c, s) = cos_sin(&f, 3..4);
        assert_eq!(c.len(), 4);
        assert!((c[0] - 2.0 * 3f32.cos()).abs() < 1e-6 && c[0] == c[2]);
        assert!((s[1] - 2.0 * 1.5f32.sin()).abs() < 1e-6 && s[1] == s[3]);
    }

    fn parse(v: Value) -> std::result::Result<RopeConfig, String> {
        serde_json::from_value(v).map_err(|e| e.to_string())
    }

    /// One value of every type, each with every optional key set.
    fn every_type() -> Vec<RopeScaling> {
        vec![
            RopeScaling::default(),
            RopeScaling::Linear(Linear { factor: 2.0 }),
            RopeScaling::Ntk(Ntk {
                factor: Some(4.0),
                base: None,
            }),
            RopeScaling::Dynamic(Dynamic { factor: 2.0 }),
            RopeScaling::Yarn(Yarn {
                original_max_position_embeddings: Some(64),
                mscale: Some(1.0),
                mscale_all_dim: Some(0.5),
                attention_factor: Some(1.2),
                truncate: false,
                ..Yarn::new(8.0)
            }),
            RopeScaling::Llama3(Llama3 {
                factor: 8.0,
                low_freq_factor: 1.0,
                high_freq_factor: 4.0,
                original_max_position_embeddings: Some(64),
            }),
            RopeScaling::LongRope(LongRope {
                short_factor: vec![1.0; 8],
                long_factor: vec![2.0; 8],
                factor: Some(4.0),
                attention_factor: Some(1.1),
                original_max_position_embeddings: Some(64),
            }),
        ]
    }

    #[test]
    fn every_type_round_trips_under_its_own_name() {
        for scaling in every_type() {
            let cfg = RopeConfig::new(5e5).with_scaling(scaling);
            let v = serde_json::to_value(&cfg).unwrap();
            assert_eq!(v["rope_type"], cfg.rope_type(), "{v}");
            assert_eq!(v["rope_theta"], 5e5);
            assert_eq!(parse(v).unwrap(), cfg);
            cfg.validate(16, "test").unwrap();
        }
    }

    #[test]
    fn serde_reads_the_parameter_dict_with_defaults() {
        let rope = parse(json!({"rope_type": "yarn", "factor": 4, "beta_fast": 16})).unwrap();
        assert_eq!(rope.theta, DEFAULT_THETA);
        assert_eq!(
            rope.scaling,
            RopeScaling::Yarn(Yarn {
                beta_fast: 16.0,
                ..Yarn::new(4.0)
            })
        );
        // transformers reads beta_fast/beta_slow with `or`: 0 and null are the defaults.
        let zero =
            parse(json!({"rope_type": "yarn", "factor": 4, "beta_fast": 0, "beta_slow": null}));
        assert_eq!(zero.unwrap().scaling, RopeScaling::Yarn(Yarn::new(4.0)));
        let err = parse(json!({"rope_type": "pi"})).unwrap_err();
        assert!(err.contains("unknown variant `pi`"), "{err}");
    }

    #[test]
    fn invalid_settings_are_clear_errors() {
        let msg = |v: Value, hd: usize| match parse(v) {
            Err(e) => e,
            Ok(c) => c
                .validate(hd, "test")
                .map_or_else(|e| e.to_string(), |_| String::new()),
        };
        assert_eq!(
            msg(json!({"rope_type": "linear", "factor": 0.5}), 16),
            "test: `factor`: factor must be a number >= 1, got 0.5"
        );
        assert_eq!(
            msg(
                json!({"rope_type": "yarn", "factor": 4, "beta_fast": 1, "beta_slow": 32}),
                16
            ),
            "test: `beta_fast`: must be >= beta_slow, got beta_fast=1 < beta_slow=32"
        );
        assert_eq!(
            msg(
                json!({"rope_type": "llama3", "factor": 8, "low_freq_factor": 1}),
                16
            ),
            "missing field `high_freq_factor`"
        );
        assert_eq!(
            msg(
                json!({"rope_type": "longrope", "short_factor": [1, 1], "long_factor": [1, 1, 1, 1, 1, 1, 1, 1]}),
                16
            ),
            "test: `short_factor`: must list head_dim/2 = 8 factors, got 2"
        );
        // A key of another type is refused, naming the key and the type's own keys.
        assert_eq!(
            msg(
                json!({"rope_type": "linear", "factor": 2, "beta_fast": 2}),
                16
            ),
            "unknown field `beta_fast`, expected `factor`"
        );
        assert!(msg(json!({"rope_type": "su"}), 16).contains("unknown variant `su`"));
        assert!(msg(json!({"rope_type": "ntk"}), 16).contains("exactly one of"));
        assert!(msg(json!({"rope_type": "dynamic", "factor": "2"}), 16).contains("expected f64"));
    }
}
