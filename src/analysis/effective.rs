//! Effective context length, RULER's single-number summary of a retrieval curve: the longest
//! tested length up to which a model's accuracy stays at or above a stated threshold.
//!
//! The curve is read from the shortest tested length upwards and stops at the first length
//! below the threshold, so a lucky pass at a long length after a failure does not extend it.

use std::collections::BTreeMap;

/// A model's effective length on a set of tested lengths.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EffectiveLength {
    /// Already below the threshold at the shortest tested length.
    BelowShortest(i64),
    /// Every length up to this one passes; the next tested length fails.
    Length(i64),
    /// Every tested length passes: the effective length is at least the longest.
    AtLeast(i64),
}

impl EffectiveLength {
    /// The length in tokens, `None` below the shortest tested length.
    pub fn tokens(&self) -> Option<i64> {
        match *self {
            Self::BelowShortest(_) => None,
            Self::Length(l) | Self::AtLeast(l) => Some(l),
        }
    }
}

impl std::fmt::Display for EffectiveLength {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::BelowShortest(l) => write!(f, "< {l}"),
            Self::Length(l) => write!(f, "{l}"),
            Self::AtLeast(l) => write!(f, "≥ {l}"),
        }
    }
}

/// The effective length of `accuracy` (by tested length) at `threshold`; `None` without any
/// tested length.
pub fn effective_length(accuracy: &BTreeMap<i64, f64>, threshold: f64) -> Option<EffectiveLength> {
    let (&shortest, _) = accuracy.first_key_value()?;
    let mut last = None;
    for (&len, &acc) in accuracy {
        if acc < threshold {
            return Some(match last {
                None => EffectiveLength::BelowShortest(shortest),
                Some(l) => EffectiveLength::Length(l),
            });
        }
        last = Some(len);
    }
    last.map(EffectiveLength::AtLeast)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn curve(points: &[(i64, f64)]) -> BTreeMap<i64, f64> {
        points.iter().copied().collect()
    }

    #[test]
    fn stops_at_the_first_length_below_the_threshold() {
        let c = curve(&[(64, 1.0), (128, 0.95), (256, 0.5), (512, 0.92)]);
        assert_eq!(
            effective_length(&c, 0.9),
            Some(EffectiveLength::Length(128))
        );
        assert_eq!(
            effective_length(&c, 0.4),
            Some(EffectiveLength::AtLeast(512))
        );
        assert_eq!(
            effective_length(&c, 0.99),
            Some(EffectiveLength::Length(64))
        );
        // The threshold itself passes.
        assert_eq!(
            effective_length(&c, 0.95),
            Some(EffectiveLength::Length(128))
        );
    }

    #[test]
    fn below_the_shortest_and_empty() {
        let c = curve(&[(64, 0.2), (128, 1.0)]);
        let e = effective_length(&c, 0.9).unwrap();
        assert_eq!(e, EffectiveLength::BelowShortest(64));
        assert_eq!(e.tokens(), None);
        assert_eq!(e.to_string(), "< 64");
        assert_eq!(effective_length(&BTreeMap::new(), 0.9), None);
        assert_eq!(EffectiveLength::AtLeast(2048).to_string(), "≥ 2048");
    }
}
