//! The RoPE formulas as pure functions of numbers: inverse frequencies, YaRN's correction range
//! and temperature, LongRoPE's attention factor, and the cos/sin tables.
//!
//! They reproduce transformers' `modeling_rope_utils.py` (5.x) step by step, in f32 where
//! transformers computes in f32 (tensor arithmetic) and in f64 where it uses Python floats, so
//! that frequencies agree to a few ulp. Each RoPE type's struct ([`super::types`]) calls them.

use super::RopeFrequencies;

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

/// YaRN's attention factor: `attention_factor` if given, else the ratio of the two
/// temperatures when both `mscale` and `mscale_all_dim` are non-zero (DeepSeek), else
/// `0.1 ln(factor) + 1`.
pub fn yarn_attention_factor(
    factor: f64,
    mscale: Option<f64>,
    mscale_all_dim: Option<f64>,
    attention_factor: Option<f64>,
) -> f64 {
    attention_factor.unwrap_or_else(|| match (mscale, mscale_all_dim) {
        (Some(m), Some(md)) if m != 0.0 && md != 0.0 => {
            yarn_get_mscale(factor, m) / yarn_get_mscale(factor, md)
        }
        _ => yarn_get_mscale(factor, 1.0),
    })
}

/// YaRN frequencies: per dimension a ramp between extrapolation (the default frequency) and
/// interpolation (divided by `factor`) over the correction range `[low, high]`.
pub fn yarn_inv_freq(base: f64, dim: usize, factor: f64, (low, high): (f64, f64)) -> Vec<f32> {
    let high = if low == high { high + 0.001 } else { high };
    let (min, span) = (low as f32, (high - low) as f32);
    let factor = factor as f32;
    pos_freqs(base as f32, dim)
        .into_iter()
        .enumerate()
        .map(|(i, pf)| {
            let extrapolation = 1.0 / pf;
            let interpolation = 1.0 / (factor * pf);
            let ramp = ((i as f32 - min) / span).clamp(0.0, 1.0);
            let extrapolation_factor = 1.0 - ramp;
            interpolation * (1.0 - extrapolation_factor) + extrapolation * extrapolation_factor
        })
        .collect()
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
