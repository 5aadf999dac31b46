//! The frequency view: for each RoPE frequency pair, its wavelength, how many rotations it
//! completes within the pretrained length L, and how much a method interpolates it (the plain
//! model's inverse frequency over the method's: 1 = kept as pretrained, the factor = fully
//! interpolated as PI does, in between = ramped, as YaRN and Llama 3 do for middle pairs). It is
//! the picture that explains why a method keeps or loses local order: a pair that rotates many
//! times within L resolves neighbouring tokens, and interpolating it blurs them.
//!
//! Everything comes from [`RopeConfig::frequencies`], the model's own inverse frequencies, so the
//! view is exactly what a forward uses. [`yarn_betas`] is the documented rule (docs/study.md)
//! that places YaRN's ramp where LLaMA-2 at 4K has it.

use crate::model::RopeConfig;
use crate::report::tables::{Align, markdown_table};
use std::f64::consts::PI;

/// LLaMA-2 at 4K (theta 1e4, L 4096) with YaRN's beta_fast 32 and beta_slow 1: the fractions of
/// the frequency pairs at which the ramp begins and ends, `ln(L / (2 pi beta)) / ln theta`.
pub fn llama2_ramp_fractions() -> (f64, f64) {
    let f = |beta: f64| (4096.0 / (2.0 * PI * beta)).ln() / 1e4f64.ln();
    (f(32.0), f(1.0))
}

/// YaRN's `(beta_fast, beta_slow)` for a model with base `theta` pretrained at `length` that put
/// the ramp at the same fractions of the pairs as beta 32/1 do for LLaMA-2 at 4K:
/// `beta = (L / 2 pi) theta^(-f)`. For LLaMA-2 itself it returns (32, 1).
pub fn yarn_betas(theta: f64, length: usize) -> (f64, f64) {
    let (f_fast, f_slow) = llama2_ramp_fractions();
    let base = length as f64 / (2.0 * PI);
    (base * theta.powf(-f_fast), base * theta.powf(-f_slow))
}

/// Whether a pair is kept, ramped or interpolated by a method.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Zone {
    /// Ratio 1: the pretrained frequency.
    Kept,
    /// Between 1 and the largest ratio of the method.
    Ramped,
    /// At the method's largest ratio (every pair of PI; the low frequencies of YaRN).
    Interpolated,
}

/// One frequency pair of one method.
#[derive(Debug, Clone, PartialEq)]
pub struct PairRow {
    /// Pair index `i` (dimensions `2i, 2i + 1`), from the highest frequency.
    pub pair: usize,
    /// Wavelength of the plain model's pair, `2 pi / inv_freq`, in tokens.
    pub wavelength: f64,
    /// `L / wavelength`: rotations the pair completes within the pretrained length.
    pub rotations_in_l: f64,
    /// The method's wavelength of the pair.
    pub method_wavelength: f64,
    /// `inv_freq_plain / inv_freq_method`: how much the method slows the pair down.
    pub ratio: f64,
    /// Kept, ramped or interpolated.
    pub zone: Zone,
}

/// The view of `rope` for a model with `head_dim` pretrained at `length` (its trained length),
/// with the frequencies a forward of `seq_len` tokens uses (it matters for `dynamic` and
/// `longrope` only).
pub fn frequency_view(
    rope: &RopeConfig,
    head_dim: usize,
    length: usize,
    seq_len: usize,
) -> Vec<PairRow> {
    let plain = RopeConfig::new(rope.theta).frequencies(head_dim, length, length);
    let method = rope.frequencies(head_dim, length, seq_len);
    let ratios: Vec<f64> = plain
        .inv_freq
        .iter()
        .zip(&method.inv_freq)
        .map(|(p, m)| *p as f64 / *m as f64)
        .collect();
    let max = ratios.iter().copied().fold(1.0, f64::max);
    plain
        .inv_freq
        .iter()
        .zip(&method.inv_freq)
        .zip(&ratios)
        .enumerate()
        .map(|(pair, ((p, m), &ratio))| {
            let wavelength = 2.0 * PI / *p as f64;
            let zone = if (ratio - 1.0).abs() <= 1e-4 {
                Zone::Kept
            } else if (ratio - max).abs() <= 1e-4 * max {
                Zone::Interpolated
            } else {
                Zone::Ramped
            };
            PairRow {
                pair,
                wavelength,
                rotations_in_l: length as f64 / wavelength,
                method_wavelength: 2.0 * PI / *m as f64,
                ratio,
                zone,
            }
        })
        .collect()
}

/// A summary line and the Markdown table of a view.
pub fn view_markdown(
    rope: &RopeConfig,
    rows: &[PairRow],
    head_dim: usize,
    length: usize,
) -> String {
    let rotating = rows.iter().filter(|r| r.rotations_in_l >= 1.0).count();
    let count = |z: Zone| rows.iter().filter(|r| r.zone == z).count();
    let (bf, bs) = yarn_betas(rope.theta, length);
    let mut out = format!(
        "RoPE `{}`, rope_theta {}, head_dim {head_dim} ({} pairs), pretrained length L = {length}: \
         {rotating} of {} pairs complete a rotation within L (LLaMA-2 at 4K: 46 of 64). The \
         method keeps {}, ramps {} and interpolates {} pairs. YaRN's beta_fast / beta_slow that \
         put the ramp where LLaMA-2 at 4K has it (docs/study.md): {bf:.3} / {bs:.3}.\n\n",
        rope.rope_type(),
        rope.theta,
        rows.len(),
        rows.len(),
        count(Zone::Kept),
        count(Zone::Ramped),
        count(Zone::Interpolated),
    );
    let table: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.pair.to_string(),
                format!("{:.1}", r.wavelength),
                format!("{:.3}", r.rotations_in_l),
                format!("{:.1}", r.method_wavelength),
                format!("{:.3}", r.ratio),
                match r.zone {
                    Zone::Kept => "kept",
                    Zone::Ramped => "ramped",
                    Zone::Interpolated => "interpolated",
                }
                .to_string(),
            ]
        })
        .collect();
    out.push_str(&markdown_table(
        &[
            "pair",
            "wavelength",
            "rotations in L",
            "method wavelength",
            "interpolation ratio",
            "zone",
        ]
        .map(String::from),
        &table,
        &[
            Align::Right,
            Align::Right,
            Align::Right,
            Align::Right,
            Align::Right,
            Align::Left,
        ],
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::rope::{Linear, RopeScaling, Yarn};

    #[test]
    fn the_rule_gives_llama2_its_own_betas() {
        let (bf, bs) = yarn_betas(1e4, 4096);
        assert!(
            (bf - 32.0).abs() < 1e-9 && (bs - 1.0).abs() < 1e-9,
            "{bf} {bs}"
        );
        // At L = 64, theta 100 (docs/study.md): 2.26 and 0.40.
        let (bf, bs) = yarn_betas(100.0, 64);
        assert!(
            (bf - 2.257).abs() < 1e-3 && (bs - 0.399).abs() < 1e-3,
            "{bf} {bs}"
        );
    }

    #[test]
    fn pairs_rotating_within_l_and_method_zones() {
        // The committed paper-small: theta 1e4, head_dim 32, L 64: 5 of 16 pairs rotate.
        let plain = RopeConfig::new(1e4);
        let rows = frequency_view(&plain, 32, 64, 64);
        assert_eq!(rows.iter().filter(|r| r.rotations_in_l >= 1.0).count(), 5);
        assert!(rows.iter().all(|r| r.zone == Zone::Kept && r.ratio == 1.0));
        assert!((rows[0].wavelength - 2.0 * PI).abs() < 1e-5);
        // LLaMA-2 at 4K: 46 of 64.
        let llama = frequency_view(&plain, 128, 4096, 4096);
        assert_eq!(llama.iter().filter(|r| r.rotations_in_l >= 1.0).count(), 46);
        // PI x4 interpolates every pair by 4.
        let pi = RopeConfig::new(1e4).with_scaling(RopeScaling::Linear(Linear { factor: 4.0 }));
        let rows = frequency_view(&pi, 32, 64, 256);
        assert!(
            rows.iter().all(|r| (r.ratio - 4.0).abs() < 1e-5),
            "{rows:?}"
        );
        // YaRN x4 with beta 32/1 at L = 64 keeps pair 0 only (issue 12), ramps 4, interpolates
        // 11; LLaMA-2 at 4K: 21 / 25 / 18.
        let yarn = |theta: f64, bf: f64, bs: f64, l: usize| {
            let mut y = Yarn::new(4.0);
            y.beta_fast = bf;
            y.beta_slow = bs;
            y.original_max_position_embeddings = Some(l);
            RopeConfig::new(theta).with_scaling(RopeScaling::Yarn(y))
        };
        let zones = |rows: &[PairRow]| {
            [Zone::Kept, Zone::Ramped, Zone::Interpolated]
                .map(|z| rows.iter().filter(|r| r.zone == z).count())
        };
        assert_eq!(
            zones(&frequency_view(&yarn(1e4, 32.0, 1.0, 64), 32, 64, 256)),
            [1, 4, 11]
        );
        assert_eq!(
            zones(&frequency_view(
                &yarn(1e4, 32.0, 1.0, 4096),
                128,
                4096,
                16384
            )),
            [21, 25, 18]
        );
        // The rule's betas at theta 100, L 64: 6 / 6 / 4.
        let (bf, bs) = yarn_betas(100.0, 64);
        assert_eq!(
            zones(&frequency_view(&yarn(100.0, bf, bs, 64), 32, 64, 256)),
            [6, 6, 4]
        );
        let md = view_markdown(
            &yarn(100.0, bf, bs, 64),
            &frequency_view(&yarn(100.0, bf, bs, 64), 32, 64, 256),
            32,
            64,
        );
        assert!(
            md.contains("9 of 16 pairs complete a rotation within L"),
            "{md}"
        );
        assert!(md.contains("keeps 6, ramps 6 and interpolates 4"), "{md}");
    }
}
