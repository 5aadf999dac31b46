//! Kullback-Leibler and Jensen-Shannon divergence between discrete distributions, in nats.
//!
//! The attention stage compares a model's mean attention-by-distance profile with a reference
//! model's (the paper's Table 1). Both functions normalise their inputs, so raw masses or mean
//! probabilities per bucket can be passed as they are.
//!
//! **Base.** Natural logarithm throughout: JS lies in `[0, ln 2]` (about `0.693`); divide by
//! `ln 2` for bits. The paper's Table 1 reports values above 1 (PI 1.29), which cannot be a JS
//! divergence in nats or bits, so its numbers are on some other scale and are not directly
//! comparable with ours; the ranking of methods is what to compare.
//!
//! **Different supports.** The reference model at its pretrained length `L` sees distances up to
//! `L - 1`; an extended model at `4L` also puts attention on distances beyond. [`align_common_support`]
//! compares the two over the buckets both cover: it truncates both vectors to the shorter one's
//! length and renormalises each over that common prefix, reporting how much mass each side had
//! outside it. Use it on [`DistanceProfile::mean_probability`](super::distance::DistanceProfile::mean_probability),
//! the mean attention a key receives at each distance, which is comparable across lengths and
//! does not depend on how many query-key pairs a bucket happens to hold: it asks whether the
//! extended model spreads attention over near and far keys *within the pretrained range* as the
//! reference does.

use super::AnalysisError;

/// Normalises a non-negative vector to sum to 1.
///
/// Errors: empty, a negative or non-finite entry, or all zeros (`what` names the input).
pub fn normalize(what: &'static str, weights: &[f64]) -> Result<Vec<f64>, AnalysisError> {
    if weights.is_empty() {
        return Err(AnalysisError::Empty { what });
    }
    super::check_finite(what, weights)?;
    if let Some(index) = weights.iter().position(|&w| w < 0.0) {
        return Err(AnalysisError::Negative {
            what,
            index,
            value: weights[index],
        });
    }
    let total: f64 = weights.iter().sum();
    if total <= 0.0 {
        return Err(AnalysisError::ZeroMass { what });
    }
    Ok(weights.iter().map(|w| w / total).collect())
}

/// `KL(p || q) = sum p_i ln(p_i / q_i)` in nats, after normalising both.
///
/// Terms with `p_i = 0` contribute 0; a term with `p_i > 0` and `q_i = 0` makes the result
/// `+inf` (returned as `Ok(f64::INFINITY)`, since that is the true value).
///
/// Errors: lengths differ, or either input fails [`normalize`].
pub fn kl_divergence(p: &[f64], q: &[f64]) -> Result<f64, AnalysisError> {
    if p.len() != q.len() {
        return Err(AnalysisError::LengthMismatch {
            what: "KL divergence inputs p and q",
            left: p.len(),
            right: q.len(),
        });
    }
    let p = normalize("p", p)?;
    let q = normalize("q", q)?;
    Ok(kl_normalized(&p, &q).max(0.0))
}

/// Jensen-Shannon divergence in nats: `JS = KL(p || m)/2 + KL(q || m)/2` with `m = (p + q)/2`,
/// after normalising both. Symmetric, finite, in `[0, ln 2]`: 0 for equal distributions, `ln 2`
/// for disjoint ones.
///
/// Errors: lengths differ, or either input fails [`normalize`].
pub fn js_divergence(p: &[f64], q: &[f64]) -> Result<f64, AnalysisError> {
    if p.len() != q.len() {
        return Err(AnalysisError::LengthMismatch {
            what: "JS divergence inputs p and q",
            left: p.len(),
            right: q.len(),
        });
    }
    let p = normalize("p", p)?;
    let q = normalize("q", q)?;
    let m: Vec<f64> = p.iter().zip(&q).map(|(a, b)| 0.5 * (a + b)).collect();
    let js = 0.5 * kl_normalized(&p, &m) + 0.5 * kl_normalized(&q, &m);
    Ok(js.clamp(0.0, std::f64::consts::LN_2))
}

fn kl_normalized(p: &[f64], q: &[f64]) -> f64 {
    p.iter()
        .zip(q)
        .map(|(&pi, &qi)| {
            if pi == 0.0 {
                0.0
            } else if qi == 0.0 {
                f64::INFINITY
            } else {
                pi * (pi / qi).ln()
            }
        })
        .sum()
}

/// Two distributions restricted to their common support (see the module doc).
#[derive(Debug, Clone, PartialEq)]
pub struct CommonSupport {
    /// The first input over the common buckets, normalised to sum to 1.
    pub p: Vec<f64>,
    /// The second input over the common buckets, normalised to sum to 1.
    pub q: Vec<f64>,
    /// Number of common buckets (`min(p.len(), q.len())`).
    pub buckets: usize,
    /// Fraction of the first input's total that lay beyond the common buckets.
    pub p_outside: f64,
    /// Fraction of the second input's total that lay beyond the common buckets.
    pub q_outside: f64,
}

impl CommonSupport {
    /// [`js_divergence`] of the aligned pair.
    pub fn js(&self) -> Result<f64, AnalysisError> {
        js_divergence(&self.p, &self.q)
    }
}

/// Aligns two bucket vectors indexed from bucket 0 (distance 0) whose lengths may differ:
/// truncates both to `min(p.len(), q.len())` buckets and renormalises each over them.
///
/// Errors: either input empty, negative or non-finite, or zero mass inside the common buckets.
pub fn align_common_support(p: &[f64], q: &[f64]) -> Result<CommonSupport, AnalysisError> {
    for (what, v) in [("p", p), ("q", q)] {
        if v.is_empty() {
            return Err(AnalysisError::Empty { what });
        }
        // Validates the whole vector, including what is about to be dropped.
        normalize(what, v)?;
    }
    let buckets = p.len().min(q.len());
    let outside = |v: &[f64]| {
        let total: f64 = v.iter().sum();
        v[buckets..].iter().sum::<f64>() / total
    };
    Ok(CommonSupport {
        p: normalize("p over the common buckets", &p[..buckets])?,
        q: normalize("q over the common buckets", &q[..buckets])?,
        buckets,
        p_outside: outside(p),
        q_outside: outside(q),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::f64::consts::LN_2;

    #[test]
    fn js_of_equal_distributions_is_zero() {
        let p = [0.1, 0.2, 0.3, 0.4];
        assert_eq!(js_divergence(&p, &p).unwrap(), 0.0);
        // Scaling does not matter: inputs are normalised.
        assert!(js_divergence(&p, &[1.0, 2.0, 3.0, 4.0]).unwrap() < 1e-15);
    }

    #[test]
    fn js_of_disjoint_distributions_is_ln_2() {
        let js = js_divergence(&[0.5, 0.5, 0.0, 0.0], &[0.0, 0.0, 0.3, 0.7]).unwrap();
        assert!((js - LN_2).abs() < 1e-15, "{js}");
    }

    #[test]
    fn js_hand_computed_and_symmetric() {
        // p = (1, 0), q = (1/2, 1/2): m = (3/4, 1/4)
        // KL(p||m) = ln(4/3); KL(q||m) = 1/2 ln(2/3) + 1/2 ln 2
        let expected = 0.5 * (4.0f64 / 3.0).ln() + 0.5 * (0.5 * (2.0f64 / 3.0).ln() + 0.5 * LN_2);
        let js = js_divergence(&[1.0, 0.0], &[0.5, 0.5]).unwrap();
        assert!((js - expected).abs() < 1e-15, "{js} vs {expected}");
        assert!((expected - 0.215_761_554_338_835_6).abs() < 1e-12);
        assert_eq!(js, js_divergence(&[0.5, 0.5], &[1.0, 0.0]).unwrap());
    }

    #[test]
    fn kl_hand_computed_with_zeros() {
        // KL((1/2,1/2,0) || (1/4,1/4,1/2)) = ln 2
        let kl = kl_divergence(&[0.5, 0.5, 0.0], &[0.25, 0.25, 0.5]).unwrap();
        assert!((kl - LN_2).abs() < 1e-15);
        assert_eq!(kl_divergence(&[0.3, 0.7], &[0.3, 0.7]).unwrap(), 0.0);
        assert_eq!(
            kl_divergence(&[0.5, 0.5], &[1.0, 0.0]).unwrap(),
            f64::INFINITY
        );
    }

    #[test]
    fn bad_inputs_are_named_errors() {
        assert!(matches!(
            js_divergence(&[1.0], &[0.5, 0.5]),
            Err(AnalysisError::LengthMismatch {
                left: 1,
                right: 2,
                ..
            })
        ));
        assert!(matches!(
            js_divergence(&[0.0, 0.0], &[0.5, 0.5]),
            Err(AnalysisError::ZeroMass { what: "p" })
        ));
        assert!(matches!(
            kl_divergence(&[0.5, 0.5], &[-0.5, 1.5]),
            Err(AnalysisError::Negative {
                what: "q",
                index: 0,
                ..
            })
        ));
        assert!(matches!(
            js_divergence(&[f64::NAN, 1.0], &[0.5, 0.5]),
            Err(AnalysisError::NonFinite { what: "p", .. })
        ));
        assert!(matches!(
            normalize("x", &[]),
            Err(AnalysisError::Empty { what: "x" })
        ));
        let msg = js_divergence(&[0.0, 0.0], &[1.0, 1.0])
            .unwrap_err()
            .to_string();
        assert_eq!(msg, "p has no mass (all entries are zero or masked)");
    }

    #[test]
    fn common_support_truncates_and_renormalises() {
        // Reference at its pretrained length covers 3 buckets; the extended model covers 5.
        let reference = [0.5, 0.3, 0.2];
        let extended = [0.25, 0.15, 0.1, 0.3, 0.2];
        let aligned = align_common_support(&reference, &extended).unwrap();
        assert_eq!(aligned.buckets, 3);
        assert_eq!(aligned.p, vec![0.5, 0.3, 0.2]);
        for (a, b) in aligned.q.iter().zip([0.5, 0.3, 0.2]) {
            assert!((a - b).abs() < 1e-15);
        }
        assert_eq!(aligned.p_outside, 0.0);
        assert!((aligned.q_outside - 0.5).abs() < 1e-15);
        assert!(
            aligned.js().unwrap() < 1e-15,
            "same shape inside the common range"
        );

        // Symmetric in argument order.
        let swapped = align_common_support(&extended, &reference).unwrap();
        assert_eq!(swapped.buckets, 3);
        assert!((swapped.p_outside - 0.5).abs() < 1e-15);
    }

    #[test]
    fn common_support_without_mass_inside_is_an_error() {
        let err = align_common_support(&[1.0], &[0.0, 1.0]).unwrap_err();
        assert_eq!(
            err,
            AnalysisError::ZeroMass {
                what: "q over the common buckets"
            }
        );
    }
}
