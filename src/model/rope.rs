//! Rotary position embedding (RoPE) and its extensions, as pure functions.
//!
//! Each RoPE type is a function from its parameters to the inverse frequencies `inv_freq`
//! (`head_dim / 2` values) and an attention factor that scales cos and sin. They reproduce
//! transformers' `modeling_rope_utils.py` (5.x) step by step, in f32 where transformers computes
//! in f32 (tensor arithmetic) and in f64 where it uses Python floats, so that frequencies agree
//! to a few ulp. The model turns them into cos/sin tables with [`cos_sin`] in the half-split
//! `rotate_half` layout: `emb = cat(freqs, freqs)`.
//!
//! `ntk` (NTK-aware interpolation with a fixed base) is not a transformers rope type: it is the
//! default RoPE with an enlarged base `theta * factor^(d/(d-2))` (or a base given directly, as
//! in the paper's base sweep). See docs/model.md for how it is written to config.json.
//!
//! Two types depend on the current sequence length `seq_len = max(position) + 1`, as in
//! transformers' `dynamic_rope_update`: `dynamic` (the base grows with `seq_len` beyond
//! `max_position_embeddings`) and `longrope` (long factors once `seq_len` exceeds the original
//! length).

use serde_json::{Map, Value, json};

use super::error::{ModelError, Result};

/// Default `rope_theta` of transformers when a config has none.
pub const DEFAULT_THETA: f64 = 10_000.0;

/// A RoPE type with its parameters (everything but the base `rope_theta`).
///
/// `original_max_position_embeddings: None` means the model's `max_position_embeddings`, as in
/// transformers' `standardize_rope_params`.
#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    /// Plain RoPE.
    Default,
    /// Position interpolation (PI): every frequency divided by `factor`.
    Linear {
        /// Interpolation factor (>= 1).
        factor: f64,
    },
    /// NTK-aware interpolation with a fixed base: `base = theta * factor^(d/(d-2))`, or `base`
    /// given directly. Exactly one of the two is set.
    Ntk {
        /// Scale factor alpha (>= 1).
        factor: Option<f64>,
        /// The enlarged base b itself.
        base: Option<f64>,
    },
    /// Dynamic NTK: the base is recomputed from the current sequence length.
    Dynamic {
        /// Scale factor (>= 1).
        factor: f64,
    },
    /// YaRN: per-frequency ramp between interpolation and extrapolation plus attention factor.
    Yarn {
        /// Scale factor s (>= 1).
        factor: f64,
        /// Pretraining length; `None` = `max_position_embeddings`.
        original_max_position_embeddings: Option<usize>,
        /// Rotations bounding extrapolation (default 32).
        beta_fast: f64,
        /// Rotations bounding interpolation (default 1).
        beta_slow: f64,
        /// Numerator mscale of the attention factor (with `mscale_all_dim`).
        mscale: Option<f64>,
        /// Denominator mscale of the attention factor.
        mscale_all_dim: Option<f64>,
        /// Explicit attention factor (overrides 0.1 ln(s) + 1).
        attention_factor: Option<f64>,
        /// Round the correction range to whole dimensions (default true).
        truncate: bool,
    },
    /// Llama 3.1 frequency-dependent scaling with smoothing.
    Llama3 {
        /// Scale factor (>= 1).
        factor: f64,
        /// Low-frequency factor (1 in Llama 3.1).
        low_freq_factor: f64,
        /// High-frequency factor (4 in Llama 3.1).
        high_freq_factor: f64,
        /// Pretraining length; `None` = `max_position_embeddings`.
        original_max_position_embeddings: Option<usize>,
    },
    /// LongRoPE: per-frequency factors, short below the original length, long beyond it.
    LongRope {
        /// Factors for `seq_len <= original`, `head_dim / 2` of them.
        short_factor: Vec<f64>,
        /// Factors for `seq_len > original`, `head_dim / 2` of them.
        long_factor: Vec<f64>,
        /// Overall factor for the attention factor; `None` = max_position / original.
        factor: Option<f64>,
        /// Explicit attention factor.
        attention_factor: Option<f64>,
        /// Pretraining length; `None` = `max_position_embeddings`.
        original_max_position_embeddings: Option<usize>,
    },
}

/// The complete RoPE setting of a model: base and type.
///
/// Serializes as the flat parameter dict of [`RopeConfig::to_parameters`] (e.g. TOML
/// `{ rope_type = "yarn", factor = 4.0, original_max_position_embeddings = 128 }`;
/// `rope_theta` defaults to 10000), so stage parameters can carry it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(
    try_from = "serde_json::Map<String, Value>",
    into = "serde_json::Map<String, Value>"
)]
pub struct RopeConfig {
    /// `rope_theta`, the base of the original model (for `ntk` the base before enlarging).
    pub theta: f64,
    /// The RoPE type.
    pub scaling: RopeScaling,
}

impl Default for RopeConfig {
    fn default() -> Self {
        RopeConfig {
            theta: DEFAULT_THETA,
            scaling: RopeScaling::Default,
        }
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

/// `base^(2i/dim)` for i in 0..dim/2 as transformers computes it: the exponent
/// `arange(0, dim, 2) / dim` in f32, then a f32 power.
fn pos_freqs(base: f32, dim: usize) -> Vec<f32> {
    (0..dim / 2)
        .map(|i| base.powf((2 * i) as f32 / dim as f32))
        .collect()
}

/// Plain RoPE: `1 / base^(2i/d)`.
pub fn default_inv_freq(base: f64, dim: usize) -> Vec<f32> {
    pos_freqs(base as f32, dim)
        .into_iter()
        .map(|p| 1.0 / p)
        .collect()
}

/// Position interpolation: default frequencies divided by `factor`.
pub fn linear_inv_freq(base: f64, dim: usize, factor: f64) -> Vec<f32> {
    default_inv_freq(base, dim)
        .into_iter()
        .map(|f| f / factor as f32)
        .collect()
}

/// The enlarged base of NTK-aware interpolation: `theta * factor^(d/(d-2))` (f64).
pub fn ntk_base(theta: f64, factor: f64, dim: usize) -> f64 {
    theta * factor.powf(dim as f64 / (dim as f64 - 2.0))
}

/// Dynamic NTK: for `seq_len > max_position_embeddings` the base becomes
/// `theta * (factor * seq_len / max_pos - (factor - 1))^(d/(d-2))`, computed in f32 as
/// transformers' forward does; at or below `max_pos` the frequencies are the default ones.
pub fn dynamic_inv_freq(
    theta: f64,
    dim: usize,
    factor: f64,
    max_position_embeddings: usize,
    seq_len: usize,
) -> Vec<f32> {
    if seq_len <= max_position_embeddings {
        return default_inv_freq(theta, dim);
    }
    let f = factor as f32;
    let ratio = f * seq_len as f32 / max_position_embeddings as f32 - (f - 1.0);
    let base = theta as f32 * ratio.powf((dim as f64 / (dim as f64 - 2.0)) as f32);
    pos_freqs(base, dim).into_iter().map(|p| 1.0 / p).collect()
}

/// YaRN's attention temperature `0.1 * mscale * ln(s) + 1` (1 for s <= 1).
pub fn yarn_get_mscale(scale: f64, mscale: f64) -> f64 {
    if scale <= 1.0 {
        1.0
    } else {
        0.1 * mscale * scale.ln() + 1.0
    }
}

/// YaRN's correction range `[low, high]` in dimensions (f64, like transformers).
pub fn yarn_correction_range(
    beta_fast: f64,
    beta_slow: f64,
    dim: usize,
    base: f64,
    original_max_position_embeddings: usize,
    truncate: bool,
) -> (f64, f64) {
    let find = |rotations: f64| {
        (dim as f64
            * (original_max_position_embeddings as f64 / (rotations * 2.0 * std::f64::consts::PI))
                .ln())
            / (2.0 * base.ln())
    };
    let (mut low, mut high) = (find(beta_fast), find(beta_slow));
    if truncate {
        low = low.floor();
        high = high.ceil();
    }
    (low.max(0.0), high.min(dim as f64 - 1.0))
}

/// Parameters of [`yarn_inv_freq`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct YarnParams {
    /// Scale factor s.
    pub factor: f64,
    /// Pretraining length.
    pub original_max_position_embeddings: usize,
    /// Extrapolation bound in rotations.
    pub beta_fast: f64,
    /// Interpolation bound in rotations.
    pub beta_slow: f64,
    /// Numerator mscale.
    pub mscale: Option<f64>,
    /// Denominator mscale.
    pub mscale_all_dim: Option<f64>,
    /// Explicit attention factor.
    pub attention_factor: Option<f64>,
    /// Round the correction range.
    pub truncate: bool,
}

/// YaRN frequencies and attention factor.
pub fn yarn_inv_freq(base: f64, dim: usize, p: &YarnParams) -> (Vec<f32>, f64) {
    let attention_factor =
        p.attention_factor
            .unwrap_or_else(|| match (p.mscale, p.mscale_all_dim) {
                (Some(m), Some(md)) if m != 0.0 && md != 0.0 => {
                    yarn_get_mscale(p.factor, m) / yarn_get_mscale(p.factor, md)
                }
                _ => yarn_get_mscale(p.factor, 1.0),
            });
    let (low, high) = yarn_correction_range(
        p.beta_fast,
        p.beta_slow,
        dim,
        base,
        p.original_max_position_embeddings,
        p.truncate,
    );
    let high = if low == high { high + 0.001 } else { high };
    let (min, span) = (low as f32, (high - low) as f32);
    let factor = p.factor as f32;
    let inv = pos_freqs(base as f32, dim)
        .into_iter()
        .enumerate()
        .map(|(i, pf)| {
            let extrapolation = 1.0 / pf;
            let interpolation = 1.0 / (factor * pf);
            let ramp = ((i as f32 - min) / span).clamp(0.0, 1.0);
            let extrapolation_factor = 1.0 - ramp;
            interpolation * (1.0 - extrapolation_factor) + extrapolation * extrapolation_factor
        })
        .collect();
    (inv, attention_factor)
}

/// Llama 3.1 scaling: long wavelengths divided by `factor`, short ones kept, smoothed between.
pub fn llama3_inv_freq(
    base: f64,
    dim: usize,
    factor: f64,
    low_freq_factor: f64,
    high_freq_factor: f64,
    original_max_position_embeddings: usize,
) -> Vec<f32> {
    let old = original_max_position_embeddings as f64;
    let low_wavelen = (old / low_freq_factor) as f32;
    let high_wavelen = (old / high_freq_factor) as f32;
    let (f, lo, hi, old) = (
        factor as f32,
        low_freq_factor as f32,
        high_freq_factor as f32,
        old as f32,
    );
    let two_pi = (2.0 * std::f64::consts::PI) as f32;
    default_inv_freq(base, dim)
        .into_iter()
        .map(|inv| {
            let wavelen = (1.0 / inv) * two_pi;
            let scaled = if wavelen > low_wavelen { inv / f } else { inv };
            let smooth = ((1.0 / wavelen) * old - lo) / (hi - lo);
            let smoothed = (1.0 - smooth) * scaled / f + smooth * scaled;
            let medium = wavelen >= high_wavelen && wavelen <= low_wavelen;
            if medium { smoothed } else { scaled }
        })
        .collect()
}

/// LongRoPE frequencies `1 / (ext_i * base^(2i/d))` with the short or long factors.
pub fn longrope_inv_freq(base: f64, dim: usize, ext_factors: &[f64]) -> Vec<f32> {
    pos_freqs(base as f32, dim)
        .into_iter()
        .zip(ext_factors)
        .map(|(p, &e)| 1.0 / (e as f32 * p))
        .collect()
}

/// LongRoPE's attention factor `sqrt(1 + ln(factor) / ln(original))` (1 for factor <= 1).
pub fn longrope_attention_factor(factor: f64, original_max_position_embeddings: usize) -> f64 {
    if factor <= 1.0 {
        1.0
    } else {
        (1.0 + factor.ln() / (original_max_position_embeddings as f64).ln()).sqrt()
    }
}

/// cos and sin tables for `positions`, `[positions.len(), 2 * inv_freq.len()]` row-major, in the
/// half-split layout (`emb = cat(freqs, freqs)`), times the attention factor. The angle is the
/// f32 product `position * inv_freq`, as transformers computes it.
pub fn cos_sin(freqs: &RopeFrequencies, positions: std::ops::Range<usize>) -> (Vec<f32>, Vec<f32>) {
    let half = freqs.inv_freq.len();
    let n = positions.len();
    let mut cos = vec![0f32; n * 2 * half];
    let mut sin = vec![0f32; n * 2 * half];
    let a = freqs.attention_factor;
    for (row, pos) in positions.enumerate() {
        let base = row * 2 * half;
        for (j, &f) in freqs.inv_freq.iter().enumerate() {
            let angle = pos as f32 * f;
            let (s, c) = (angle as f64).sin_cos();
            let (c, s) = (c as f32 * a, s as f32 * a);
            cos[base + j] = c;
            cos[base + half + j] = c;
            sin[base + j] = s;
            sin[base + half + j] = s;
        }
    }
    (cos, sin)
}

impl RopeConfig {
    /// Plain RoPE with base `theta`.
    pub fn new(theta: f64) -> Self {
        RopeConfig {
            theta,
            scaling: RopeScaling::Default,
        }
    }

    /// The same base with another RoPE type.
    pub fn with_scaling(mut self, scaling: RopeScaling) -> Self {
        self.scaling = scaling;
        self
    }

    /// The transformers name of the type (`ntk` for ours).
    pub fn rope_type(&self) -> &'static str {
        match self.scaling {
            RopeScaling::Default => "default",
            RopeScaling::Linear { .. } => "linear",
            RopeScaling::Ntk { .. } => "ntk",
            RopeScaling::Dynamic { .. } => "dynamic",
            RopeScaling::Yarn { .. } => "yarn",
            RopeScaling::Llama3 { .. } => "llama3",
            RopeScaling::LongRope { .. } => "longrope",
        }
    }

    /// Whether the frequencies change with the sequence length (`dynamic`, `longrope`).
    pub fn depends_on_length(&self) -> bool {
        matches!(
            self.scaling,
            RopeScaling::Dynamic { .. } | RopeScaling::LongRope { .. }
        )
    }

    /// The base actually used by the frequencies: the enlarged one for `ntk`, `theta` otherwise.
    pub fn effective_theta(&self, head_dim: usize) -> f64 {
        match self.scaling {
            RopeScaling::Ntk { base: Some(b), .. } => b,
            RopeScaling::Ntk {
                factor: Some(f), ..
            } => ntk_base(self.theta, f, head_dim),
            _ => self.theta,
        }
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
        let factor_ok = |key: &str, f: f64| -> Result<()> {
            if !f.is_finite() || f < 1.0 {
                return Err(ModelError::config(
                    source,
                    key,
                    format!("factor must be a number >= 1, got {f}"),
                ));
            }
            Ok(())
        };
        let orig_ok = |o: Option<usize>| -> Result<()> {
            if o == Some(0) {
                return Err(ModelError::config(
                    source,
                    "original_max_position_embeddings",
                    "must be > 0",
                ));
            }
            Ok(())
        };
        match &self.scaling {
            RopeScaling::Default => {}
            RopeScaling::Linear { factor } | RopeScaling::Dynamic { factor } => {
                factor_ok("factor", *factor)?
            }
            RopeScaling::Ntk { factor, base } => match (factor, base) {
                (Some(f), None) => factor_ok("factor", *f)?,
                (None, Some(b)) => {
                    if !(b.is_finite() && *b > 0.0) {
                        return err("base", format!("must be > 0, got {b}"));
                    }
                }
                _ => {
                    return err(
                        "factor",
                        "ntk needs exactly one of `factor` and `base`".to_string(),
                    );
                }
            },
            RopeScaling::Yarn {
                factor,
                original_max_position_embeddings,
                beta_fast,
                beta_slow,
                attention_factor,
                ..
            } => {
                factor_ok("factor", *factor)?;
                orig_ok(*original_max_position_embeddings)?;
                if beta_fast < beta_slow {
                    return err(
                        "beta_fast",
                        format!(
                            "must be >= beta_slow, got beta_fast={beta_fast} < beta_slow={beta_slow}"
                        ),
                    );
                }
                if let Some(a) = attention_factor
                    && (a.is_nan() || *a < 0.0)
                {
                    return err("attention_factor", format!("must be >= 0, got {a}"));
                }
            }
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            } => {
                factor_ok("factor", *factor)?;
                orig_ok(*original_max_position_embeddings)?;
                if high_freq_factor.is_nan()
                    || low_freq_factor.is_nan()
                    || high_freq_factor <= low_freq_factor
                    || *low_freq_factor <= 0.0
                {
                    return err(
                        "high_freq_factor",
                        format!(
                            "must be > low_freq_factor > 0, got high_freq_factor={high_freq_factor}, low_freq_factor={low_freq_factor}"
                        ),
                    );
                }
            }
            RopeScaling::LongRope {
                short_factor,
                long_factor,
                factor,
                attention_factor,
                original_max_position_embeddings,
            } => {
                orig_ok(*original_max_position_embeddings)?;
                for (key, list) in [("short_factor", short_factor), ("long_factor", long_factor)] {
                    if list.len() != head_dim / 2 {
                        return err(
                            key,
                            format!(
                                "must list head_dim/2 = {} factors, got {}",
                                head_dim / 2,
                                list.len()
                            ),
                        );
                    }
                    if let Some(bad) = list.iter().find(|x| !(x.is_finite() && **x > 0.0)) {
                        return err(key, format!("factors must be > 0, got {bad}"));
                    }
                }
                if let Some(f) = factor {
                    factor_ok("factor", *f)?;
                }
                if let Some(a) = attention_factor
                    && (a.is_nan() || *a < 0.0)
                {
                    return err("attention_factor", format!("must be >= 0, got {a}"));
                }
            }
        }
        Ok(())
    }

    /// Frequencies for a forward whose largest position is `seq_len - 1`.
    ///
    /// `max_position_embeddings` is the model's (the default original length of yarn, llama3
    /// and longrope, and the threshold of dynamic NTK).
    pub fn frequencies(
        &self,
        head_dim: usize,
        max_position_embeddings: usize,
        seq_len: usize,
    ) -> RopeFrequencies {
        let theta = self.theta;
        let one = |inv_freq| RopeFrequencies {
            inv_freq,
            attention_factor: 1.0,
        };
        match &self.scaling {
            RopeScaling::Default => one(default_inv_freq(theta, head_dim)),
            RopeScaling::Linear { factor } => one(linear_inv_freq(theta, head_dim, *factor)),
            RopeScaling::Ntk { .. } => {
                one(default_inv_freq(self.effective_theta(head_dim), head_dim))
            }
            RopeScaling::Dynamic { factor } => one(dynamic_inv_freq(
                theta,
                head_dim,
                *factor,
                max_position_embeddings,
                seq_len,
            )),
            RopeScaling::Yarn {
                factor,
                original_max_position_embeddings,
                beta_fast,
                beta_slow,
                mscale,
                mscale_all_dim,
                attention_factor,
                truncate,
            } => {
                let p = YarnParams {
                    factor: *factor,
                    original_max_position_embeddings: original_max_position_embeddings
                        .unwrap_or(max_position_embeddings),
                    beta_fast: *beta_fast,
                    beta_slow: *beta_slow,
                    mscale: *mscale,
                    mscale_all_dim: *mscale_all_dim,
                    attention_factor: *attention_factor,
                    truncate: *truncate,
                };
                let (inv_freq, a) = yarn_inv_freq(theta, head_dim, &p);
                RopeFrequencies {
                    inv_freq,
                    attention_factor: a as f32,
                }
            }
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            } => one(llama3_inv_freq(
                theta,
                head_dim,
                *factor,
                *low_freq_factor,
                *high_freq_factor,
                original_max_position_embeddings.unwrap_or(max_position_embeddings),
            )),
            RopeScaling::LongRope {
                short_factor,
                long_factor,
                factor,
                attention_factor,
                original_max_position_embeddings,
            } => {
                let orig = original_max_position_embeddings.unwrap_or(max_position_embeddings);
                let factor = factor.unwrap_or(max_position_embeddings as f64 / orig as f64);
                let a = attention_factor.unwrap_or_else(|| longrope_attention_factor(factor, orig));
                let ext = if seq_len > orig {
                    long_factor
                } else {
                    short_factor
                };
                RopeFrequencies {
                    inv_freq: longrope_inv_freq(theta, head_dim, ext),
                    attention_factor: a as f32,
                }
            }
        }
    }

    /// Parse a transformers rope parameter dict (`rope_parameters`, or `rope_scaling` of the
    /// 4.x layout, keys `rope_type` or `type`). `theta` is used when the dict has no
    /// `rope_theta`. `ntk` is accepted as a type (ropelens's own; see the module doc).
    pub fn from_hf_parameters(map: &Map<String, Value>, theta: f64, source: &str) -> Result<Self> {
        let p = Params { map, source };
        let theta = p.f64_opt("rope_theta")?.unwrap_or(theta);
        let rope_type = match (map.get("rope_type"), map.get("type")) {
            (Some(v), _) | (None, Some(v)) => v
                .as_str()
                .ok_or_else(|| ModelError::config(source, "rope_type", "must be a string"))?,
            (None, None) => "default",
        };
        let scaling = match rope_type {
            "default" => RopeScaling::Default,
            "linear" => RopeScaling::Linear {
                factor: p.f64_req("factor")?,
            },
            "ntk" => RopeScaling::Ntk {
                factor: p.f64_opt("factor")?,
                base: p.f64_opt("base")?,
            },
            "dynamic" => RopeScaling::Dynamic {
                factor: p.f64_req("factor")?,
            },
            "yarn" => RopeScaling::Yarn {
                factor: p.f64_req("factor")?,
                original_max_position_embeddings: p
                    .usize_opt("original_max_position_embeddings")?,
                beta_fast: p.f64_nonzero("beta_fast")?.unwrap_or(32.0),
                beta_slow: p.f64_nonzero("beta_slow")?.unwrap_or(1.0),
                mscale: p.f64_opt("mscale")?,
                mscale_all_dim: p.f64_opt("mscale_all_dim")?,
                attention_factor: p.f64_opt("attention_factor")?,
                truncate: p.bool_opt("truncate")?.unwrap_or(true),
            },
            "llama3" => RopeScaling::Llama3 {
                factor: p.f64_req("factor")?,
                low_freq_factor: p.f64_req("low_freq_factor")?,
                high_freq_factor: p.f64_req("high_freq_factor")?,
                original_max_position_embeddings: p
                    .usize_opt("original_max_position_embeddings")?,
            },
            "longrope" => RopeScaling::LongRope {
                short_factor: p.list_req("short_factor")?,
                long_factor: p.list_req("long_factor")?,
                factor: p.f64_opt("factor")?,
                attention_factor: p.f64_opt("attention_factor")?,
                original_max_position_embeddings: p
                    .usize_opt("original_max_position_embeddings")?,
            },
            other => {
                return Err(ModelError::config(
                    source,
                    "rope_type",
                    format!(
                        "unknown rope type `{other}` (known: default, linear, ntk, dynamic, yarn, llama3, longrope)"
                    ),
                ));
            }
        };
        Ok(RopeConfig { theta, scaling })
    }

    /// The parameter dict in ropelens's own form: `rope_type` (`ntk` included), `rope_theta`
    /// and the type's keys. [`RopeConfig::from_hf_parameters`] reads it back.
    pub fn to_parameters(&self) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert("rope_type".into(), json!(self.rope_type()));
        m.insert("rope_theta".into(), json!(self.theta));
        let mut put = |k: &str, v: Value| {
            m.insert(k.to_string(), v);
        };
        match &self.scaling {
            RopeScaling::Default => {}
            RopeScaling::Linear { factor } | RopeScaling::Dynamic { factor } => {
                put("factor", json!(factor))
            }
            RopeScaling::Ntk { factor, base } => {
                if let Some(f) = factor {
                    put("factor", json!(f));
                }
                if let Some(b) = base {
                    put("base", json!(b));
                }
            }
            RopeScaling::Yarn {
                factor,
                original_max_position_embeddings,
                beta_fast,
                beta_slow,
                mscale,
                mscale_all_dim,
                attention_factor,
                truncate,
            } => {
                put("factor", json!(factor));
                if let Some(o) = original_max_position_embeddings {
                    put("original_max_position_embeddings", json!(o));
                }
                put("beta_fast", json!(beta_fast));
                put("beta_slow", json!(beta_slow));
                if let Some(x) = mscale {
                    put("mscale", json!(x));
                }
                if let Some(x) = mscale_all_dim {
                    put("mscale_all_dim", json!(x));
                }
                if let Some(x) = attention_factor {
                    put("attention_factor", json!(x));
                }
                put("truncate", json!(truncate));
            }
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            } => {
                put("factor", json!(factor));
                put("low_freq_factor", json!(low_freq_factor));
                put("high_freq_factor", json!(high_freq_factor));
                if let Some(o) = original_max_position_embeddings {
                    put("original_max_position_embeddings", json!(o));
                }
            }
            RopeScaling::LongRope {
                short_factor,
                long_factor,
                factor,
                attention_factor,
                original_max_position_embeddings,
            } => {
                put("short_factor", json!(short_factor));
                put("long_factor", json!(long_factor));
                if let Some(f) = factor {
                    put("factor", json!(f));
                }
                if let Some(a) = attention_factor {
                    put("attention_factor", json!(a));
                }
                if let Some(o) = original_max_position_embeddings {
                    put("original_max_position_embeddings", json!(o));
                }
            }
        }
        m
    }
}

impl TryFrom<Map<String, Value>> for RopeConfig {
    type Error = ModelError;

    fn try_from(map: Map<String, Value>) -> Result<Self> {
        RopeConfig::from_hf_parameters(&map, DEFAULT_THETA, "rope")
    }
}

impl From<RopeConfig> for Map<String, Value> {
    fn from(rope: RopeConfig) -> Self {
        rope.to_parameters()
    }
}

/// Typed access to a rope parameter dict, with errors naming the key.
struct Params<'a> {
    map: &'a Map<String, Value>,
    source: &'a str,
}

impl Params<'_> {
    fn err(&self, key: &str, msg: &str) -> ModelError {
        ModelError::config(self.source, key, msg)
    }

    /// The value of `key` as read by `get`: absent or null is `None`, a value `get` rejects is
    /// an error saying what was `expected`.
    fn typed_opt<T>(
        &self,
        key: &str,
        get: impl Fn(&Value) -> Option<T>,
        expected: &str,
    ) -> Result<Option<T>> {
        match self.map.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => get(v)
                .map(Some)
                .ok_or_else(|| self.err(key, &format!("{expected}, got {v}"))),
        }
    }

    fn f64_opt(&self, key: &str) -> Result<Option<f64>> {
        self.typed_opt(key, Value::as_f64, "must be a number")
    }

    /// transformers reads beta_fast/beta_slow with `or`: 0 and null mean the default.
    fn f64_nonzero(&self, key: &str) -> Result<Option<f64>> {
        Ok(self.f64_opt(key)?.filter(|v| *v != 0.0))
    }

    fn f64_req(&self, key: &str) -> Result<f64> {
        self.f64_opt(key)?
            .ok_or_else(|| self.err(key, "missing (required by this rope type)"))
    }

    fn usize_opt(&self, key: &str) -> Result<Option<usize>> {
        // Integers written as floats (`4096.0`) are accepted, as Python's json gives them.
        let get = |v: &Value| {
            v.as_u64().map(|n| n as usize).or_else(|| {
                v.as_f64()
                    .filter(|f| *f >= 0.0 && f.fract() == 0.0)
                    .map(|f| f as usize)
            })
        };
        self.typed_opt(key, get, "must be a non-negative integer")
    }

    fn bool_opt(&self, key: &str) -> Result<Option<bool>> {
        self.typed_opt(key, Value::as_bool, "must be true or false")
    }

    fn list_req(&self, key: &str) -> Result<Vec<f64>> {
        let v = self
            .map
            .get(key)
            .ok_or_else(|| self.err(key, "missing (required by this rope type)"))?;
        let list = v
            .as_array()
            .ok_or_else(|| self.err(key, "must be a list of numbers"))?;
        list.iter()
            .map(|x| {
                x.as_f64()
                    .ok_or_else(|| self.err(key, &format!("must be a list of numbers, got {x}")))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let cfg = RopeConfig::new(10_000.0).with_scaling(RopeScaling::Ntk {
            factor: Some(4.0),
            base: None,
        });
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
        let direct = RopeConfig::new(10_000.0).with_scaling(RopeScaling::Ntk {
            factor: None,
            base: Some(1e6),
        });
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
        let p = YarnParams {
            factor: 4.0,
            original_max_position_embeddings: 64,
            beta_fast: 32.0,
            beta_slow: 1.0,
            mscale: None,
            mscale_all_dim: None,
            attention_factor: None,
            truncate: true,
        };
        let (low, high) = yarn_correction_range(32.0, 1.0, 16, 10_000.0, 64, true);
        assert_eq!((low, high), (0.0, 3.0));
        let (inv, a) = yarn_inv_freq(10_000.0, 16, &p);
        assert!((a - (0.1 * 4f64.ln() + 1.0)).abs() < 1e-12);
        let d = reference_default(10_000.0, 16);
        // i = 0: ramp 0 -> pure extrapolation; i >= 3: pure interpolation (divided by 4).
        close(&inv[..1], &d[..1], 1e-6);
        let interp: Vec<f64> = d[3..].iter().map(|x| x / 4.0).collect();
        close(&inv[3..], &interp, 1e-6);
        // i = 1: ramp 1/3 -> 1/3 interpolated.
        let mix = d[1] / 4.0 * (1.0 / 3.0) + d[1] * (2.0 / 3.0);
        close(&inv[1..2], &[mix], 1e-6);
        // mscale / mscale_all_dim as in DeepSeek: ratio of the two temperatures.
        let (_, a) = yarn_inv_freq(
            10_000.0,
            16,
            &YarnParams {
                mscale: Some(1.0),
                mscale_all_dim: Some(0.707),
                ..p
            },
        );
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
        let cfg = RopeConfig::new(10_000.0).with_scaling(RopeScaling::LongRope {
            short_factor: vec![1.0, 2.0],
            long_factor: vec![3.0, 4.0],
            factor: Some(4.0),
            attention_factor: None,
            original_max_position_embeddings: Some(64),
        });
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

    fn parse(v: Value) -> Result<RopeConfig> {
        RopeConfig::from_hf_parameters(v.as_object().unwrap(), 10_000.0, "test")
    }

    #[test]
    fn parses_both_type_keys_and_round_trips() {
        let a = parse(json!({"type": "linear", "factor": 2.0})).unwrap();
        assert_eq!(a.scaling, RopeScaling::Linear { factor: 2.0 });
        let b = parse(json!({"rope_type": "yarn", "factor": 8, "rope_theta": 5e5})).unwrap();
        assert_eq!(b.theta, 5e5);
        let RopeScaling::Yarn {
            beta_fast,
            beta_slow,
            truncate,
            ..
        } = b.scaling
        else {
            panic!()
        };
        assert_eq!((beta_fast, beta_slow, truncate), (32.0, 1.0, true));
        for cfg in [a, b] {
            let back = parse(Value::Object(cfg.to_parameters())).unwrap();
            assert_eq!(back, cfg);
        }
    }

    #[test]
    fn serde_uses_the_parameter_dict() {
        let rope: RopeConfig =
            serde_json::from_str(r#"{"rope_type": "yarn", "factor": 4, "beta_fast": 16}"#).unwrap();
        assert_eq!(rope.theta, DEFAULT_THETA);
        let RopeScaling::Yarn {
            factor, beta_fast, ..
        } = rope.scaling
        else {
            panic!()
        };
        assert_eq!((factor, beta_fast), (4.0, 16.0));
        let back: RopeConfig =
            serde_json::from_value(serde_json::to_value(&rope).unwrap()).unwrap();
        assert_eq!(back, rope);
        let err = serde_json::from_str::<RopeConfig>(r#"{"rope_type": "pi"}"#).unwrap_err();
        assert!(err.to_string().contains("unknown rope type `pi`"), "{err}");
    }

    #[test]
    fn invalid_settings_are_clear_errors() {
        let msg = |v: Value, hd: usize| match parse(v).and_then(|c| c.validate(hd, "test")) {
            Ok(_) => String::new(),
            Err(e) => e.to_string(),
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
            "test: `high_freq_factor`: missing (required by this rope type)"
        );
        assert_eq!(
            msg(
                json!({"rope_type": "longrope", "short_factor": [1, 1], "long_factor": [1, 1, 1, 1, 1, 1, 1, 1]}),
                16
            ),
            "test: `short_factor`: must list head_dim/2 = 8 factors, got 2"
        );
        assert!(msg(json!({"rope_type": "su"}), 16).contains("unknown rope type `su`"));
        assert!(msg(json!({"rope_type": "ntk"}), 16).contains("exactly one of"));
        assert!(
            msg(json!({"rope_type": "dynamic", "factor": "2"}), 16).contains("must be a number")
        );
    }
}
