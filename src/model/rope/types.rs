//! One struct per RoPE type: its parameters (transformers' `rope_parameters` keys, unknown keys
//! rejected), their defaults, their checks, and its frequencies ([`RopeKind`]).
//!
//! `original_max_position_embeddings: None` means the model's `max_position_embeddings`, as in
//! transformers' `standardize_rope_params`.

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize};

use super::formulas::*;
use super::{Check, RopeFrequencies, RopeKind};

/// The `original_length` accessors of a type with an `original_max_position_embeddings` key.
macro_rules! original_length_key {
    () => {
        fn original_length(&self) -> Option<usize> {
            self.original_max_position_embeddings
        }
        fn set_original_length(&mut self, original: usize) {
            self.original_max_position_embeddings = Some(original);
        }
    };
}

/// `factor` must be a finite number >= 1.
fn check_factor(key: &'static str, f: f64) -> Check {
    if !f.is_finite() || f < 1.0 {
        return Err((key, format!("factor must be a number >= 1, got {f}")));
    }
    Ok(())
}

fn check_original(o: Option<usize>) -> Check {
    if o == Some(0) {
        return Err(("original_max_position_embeddings", "must be > 0".into()));
    }
    Ok(())
}

fn check_attention_factor(a: Option<f64>) -> Check {
    if let Some(a) = a
        && (a.is_nan() || a < 0.0)
    {
        return Err(("attention_factor", format!("must be >= 0, got {a}")));
    }
    Ok(())
}

/// Frequencies without an attention factor.
fn plain(inv_freq: Vec<f32>) -> RopeFrequencies {
    RopeFrequencies {
        inv_freq,
        attention_factor: 1.0,
    }
}

/// Plain RoPE: `inv_freq_i = theta^(-2i/d)`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Plain {}

impl RopeKind for Plain {
    fn name(&self) -> &'static str {
        "default"
    }
    fn frequencies(&self, theta: f64, head_dim: usize, _: usize, _: usize) -> RopeFrequencies {
        plain(default_inv_freq(theta, head_dim))
    }
    fn check(&self, _: Option<usize>) -> Check {
        Ok(())
    }
}

/// Position interpolation (PI): every frequency divided by `factor`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Linear {
    /// Interpolation factor (>= 1).
    pub factor: f64,
}

impl RopeKind for Linear {
    fn name(&self) -> &'static str {
        "linear"
    }
    fn frequencies(&self, theta: f64, head_dim: usize, _: usize, _: usize) -> RopeFrequencies {
        plain(linear_inv_freq(theta, head_dim, self.factor))
    }
    fn check(&self, _: Option<usize>) -> Check {
        check_factor("factor", self.factor)
    }
    fn extended_length(&self, original: usize) -> Option<usize> {
        Some(scaled(original, self.factor))
    }
}

/// NTK-aware interpolation with a fixed base (ropelens's own type, not transformers'):
/// `base = theta * factor^(d/(d-2))`, or `base` given directly. Exactly one of the two is set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Ntk {
    /// Scale factor alpha (>= 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub factor: Option<f64>,
    /// The enlarged base b itself (instead of `factor`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<f64>,
}

impl RopeKind for Ntk {
    fn name(&self) -> &'static str {
        "ntk"
    }
    fn frequencies(&self, theta: f64, head_dim: usize, _: usize, _: usize) -> RopeFrequencies {
        plain(default_inv_freq(
            self.effective_theta(theta, head_dim),
            head_dim,
        ))
    }
    fn check(&self, _: Option<usize>) -> Check {
        match (self.factor, self.base) {
            (Some(f), None) => check_factor("factor", f),
            (None, Some(b)) if !(b.is_finite() && b > 0.0) => {
                Err(("base", format!("must be > 0, got {b}")))
            }
            (None, Some(_)) => Ok(()),
            (Some(_), Some(_)) => Err((
                "base",
                "ntk takes exactly one of `factor` and `base`, and `base` is given beside `factor`: remove one".into(),
            )),
            (None, None) => Err((
                "factor",
                "ntk needs exactly one of `factor` and `base`: give `factor` (or the enlarged `base` itself)".into(),
            )),
        }
    }
    fn effective_theta(&self, theta: f64, head_dim: usize) -> f64 {
        match (self.base, self.factor) {
            (Some(b), _) => b,
            (None, Some(f)) => ntk_base(theta, f, head_dim),
            (None, None) => theta,
        }
    }
    fn extended_length(&self, original: usize) -> Option<usize> {
        self.factor.map(|f| scaled(original, f))
    }
}

/// Dynamic NTK: beyond `max_position_embeddings` the base is recomputed from the current
/// sequence length.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Dynamic {
    /// Scale factor (>= 1).
    pub factor: f64,
}

impl RopeKind for Dynamic {
    fn name(&self) -> &'static str {
        "dynamic"
    }
    fn frequencies(
        &self,
        theta: f64,
        head_dim: usize,
        max_position_embeddings: usize,
        seq_len: usize,
    ) -> RopeFrequencies {
        plain(dynamic_inv_freq(
            theta,
            head_dim,
            self.factor,
            max_position_embeddings,
            seq_len,
        ))
    }
    fn check(&self, _: Option<usize>) -> Check {
        check_factor("factor", self.factor)
    }
    fn depends_on_length(&self) -> bool {
        true
    }
}

/// YaRN: per-frequency ramp between interpolation and extrapolation plus an attention factor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Yarn {
    /// Scale factor s (>= 1).
    pub factor: f64,
    /// Pretraining length; default the model's `max_position_embeddings`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub original_max_position_embeddings: Option<usize>,
    /// Rotations bounding extrapolation (0 or null: the default 32, as transformers reads it).
    #[serde(default = "beta_fast", deserialize_with = "beta_fast_or_default")]
    pub beta_fast: f64,
    /// Rotations bounding interpolation (0 or null: the default 1).
    #[serde(default = "beta_slow", deserialize_with = "beta_slow_or_default")]
    pub beta_slow: f64,
    /// Numerator mscale of the attention factor (with `mscale_all_dim`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mscale: Option<f64>,
    /// Denominator mscale of the attention factor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mscale_all_dim: Option<f64>,
    /// Explicit attention factor (overrides 0.1 ln(s) + 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attention_factor: Option<f64>,
    /// Round the correction range to whole dimensions.
    #[serde(default = "yes")]
    pub truncate: bool,
}

fn beta_fast() -> f64 {
    32.0
}
fn beta_slow() -> f64 {
    1.0
}
fn yes() -> bool {
    true
}

/// transformers reads beta_fast/beta_slow with `or`: 0 and null mean the default.
fn nonzero_or<'de, D: Deserializer<'de>>(d: D, default: f64) -> Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?
        .filter(|v| *v != 0.0)
        .unwrap_or(default))
}
fn beta_fast_or_default<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    nonzero_or(d, beta_fast())
}
fn beta_slow_or_default<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    nonzero_or(d, beta_slow())
}

impl Yarn {
    /// YaRN with scale factor `factor` and every other key at transformers' default.
    pub fn new(factor: f64) -> Self {
        Yarn {
            factor,
            original_max_position_embeddings: None,
            beta_fast: beta_fast(),
            beta_slow: beta_slow(),
            mscale: None,
            mscale_all_dim: None,
            attention_factor: None,
            truncate: true,
        }
    }
}

impl RopeKind for Yarn {
    fn name(&self) -> &'static str {
        "yarn"
    }
    fn frequencies(
        &self,
        theta: f64,
        head_dim: usize,
        max_position_embeddings: usize,
        _: usize,
    ) -> RopeFrequencies {
        let original = self
            .original_max_position_embeddings
            .unwrap_or(max_position_embeddings);
        let range = yarn_correction_range(
            self.beta_fast,
            self.beta_slow,
            head_dim,
            theta,
            original,
            self.truncate,
        );
        let a = yarn_attention_factor(
            self.factor,
            self.mscale,
            self.mscale_all_dim,
            self.attention_factor,
        );
        RopeFrequencies {
            inv_freq: yarn_inv_freq(theta, head_dim, self.factor, range),
            attention_factor: a as f32,
        }
    }
    fn check(&self, _: Option<usize>) -> Check {
        check_factor("factor", self.factor)?;
        check_original(self.original_max_position_embeddings)?;
        if self.beta_fast < self.beta_slow {
            return Err((
                "beta_fast",
                format!(
                    "must be >= beta_slow, got beta_fast={} < beta_slow={}",
                    self.beta_fast, self.beta_slow
                ),
            ));
        }
        check_attention_factor(self.attention_factor)
    }
    original_length_key!();
    fn extended_length(&self, original: usize) -> Option<usize> {
        Some(scaled(original, self.factor))
    }
}

/// Llama 3.1 frequency-dependent scaling with smoothing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Llama3 {
    /// Scale factor (>= 1).
    pub factor: f64,
    /// Low-frequency factor (1 in Llama 3.1).
    pub low_freq_factor: f64,
    /// High-frequency factor (4 in Llama 3.1).
    pub high_freq_factor: f64,
    /// Pretraining length; default the model's `max_position_embeddings`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub original_max_position_embeddings: Option<usize>,
}

impl RopeKind for Llama3 {
    fn name(&self) -> &'static str {
        "llama3"
    }
    fn frequencies(
        &self,
        theta: f64,
        head_dim: usize,
        max_position_embeddings: usize,
        _: usize,
    ) -> RopeFrequencies {
        plain(llama3_inv_freq(
            theta,
            head_dim,
            self.factor,
            self.low_freq_factor,
            self.high_freq_factor,
            self.original_max_position_embeddings
                .unwrap_or(max_position_embeddings),
        ))
    }
    fn check(&self, _: Option<usize>) -> Check {
        check_factor("factor", self.factor)?;
        check_original(self.original_max_position_embeddings)?;
        let (lo, hi) = (self.low_freq_factor, self.high_freq_factor);
        if lo.is_nan() || lo <= 0.0 {
            return Err(("low_freq_factor", format!("must be > 0, got {lo}")));
        }
        if hi.is_nan() || hi <= lo {
            return Err((
                "high_freq_factor",
                format!(
                    "must be > low_freq_factor > 0, got high_freq_factor={hi}, low_freq_factor={lo}"
                ),
            ));
        }
        Ok(())
    }
    original_length_key!();
    fn extended_length(&self, original: usize) -> Option<usize> {
        Some(scaled(original, self.factor))
    }
}

/// LongRoPE: per-frequency factors, short up to the original length, long beyond it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LongRope {
    /// Factors for `seq_len <= original`, `head_dim / 2` of them.
    pub short_factor: Vec<f64>,
    /// Factors for `seq_len > original`, `head_dim / 2` of them.
    pub long_factor: Vec<f64>,
    /// Overall factor for the attention factor; default max_position / original.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub factor: Option<f64>,
    /// Explicit attention factor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attention_factor: Option<f64>,
    /// Pretraining length; default the model's `max_position_embeddings`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub original_max_position_embeddings: Option<usize>,
}

impl RopeKind for LongRope {
    fn name(&self) -> &'static str {
        "longrope"
    }
    fn frequencies(
        &self,
        theta: f64,
        head_dim: usize,
        max_position_embeddings: usize,
        seq_len: usize,
    ) -> RopeFrequencies {
        let orig = self
            .original_max_position_embeddings
            .unwrap_or(max_position_embeddings);
        let factor = self
            .factor
            .unwrap_or(max_position_embeddings as f64 / orig as f64);
        let a = self
            .attention_factor
            .unwrap_or_else(|| longrope_attention_factor(factor, orig));
        let ext = if seq_len > orig {
            &self.long_factor
        } else {
            &self.short_factor
        };
        RopeFrequencies {
            inv_freq: longrope_inv_freq(theta, head_dim, ext),
            attention_factor: a as f32,
        }
    }
    fn check(&self, head_dim: Option<usize>) -> Check {
        check_original(self.original_max_position_embeddings)?;
        for (key, list) in [
            ("short_factor", &self.short_factor),
            ("long_factor", &self.long_factor),
        ] {
            if list.is_empty() {
                return Err((key, "is empty: list head_dim/2 factors".into()));
            }
            if let Some(head_dim) = head_dim
                && list.len() != head_dim / 2
            {
                return Err((
                    key,
                    format!(
                        "must list head_dim/2 = {} factors, got {}",
                        head_dim / 2,
                        list.len()
                    ),
                ));
            }
            if let Some(bad) = list.iter().find(|x| !(x.is_finite() && **x > 0.0)) {
                return Err((key, format!("factors must be > 0, got {bad}")));
            }
        }
        if let Some(f) = self.factor {
            check_factor("factor", f)?;
        }
        check_attention_factor(self.attention_factor)
    }
    fn depends_on_length(&self) -> bool {
        true
    }
    original_length_key!();
    fn extended_length(&self, original: usize) -> Option<usize> {
        self.factor.map(|f| scaled(original, f))
    }
}

/// `original * factor`, rounded.
fn scaled(original: usize, factor: f64) -> usize {
    (original as f64 * factor).round() as usize
}
