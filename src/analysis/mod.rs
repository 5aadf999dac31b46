//! Model-independent numerics used by the evaluation and attention stages.
//!
//! Everything here works on plain slices and numbers, so that it can be unit-tested by hand and
//! reused whatever the model or backend: needle reply scoring ([`scoring`]), attention entropy
//! ([`entropy`]), KL/JS divergence ([`divergence`]), relative-distance bucketing and the mean
//! attention-by-distance profile ([`distance`]), the entropy-vs-error statistics
//! ([`auroc`]) and RULER's effective length ([`effective`]). All logarithms are natural:
//! entropies and divergences are in nats.

pub mod auroc;
pub mod distance;
pub mod divergence;
pub mod effective;
pub mod entropy;
pub mod inference;
pub mod scoring;

/// Why an analysis function could not give a number.
///
/// Each variant names the input (`what`) so that a stage can pass the message on unchanged.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum AnalysisError {
    /// An input that needs at least one element was empty.
    #[error("{what} is empty")]
    Empty { what: &'static str },
    /// An input held NaN or an infinity where a finite number is needed.
    #[error("{what}[{index}] is {value}, expected a finite number")]
    NonFinite {
        what: &'static str,
        index: usize,
        value: f64,
    },
    /// A probability or mass was negative.
    #[error("{what}[{index}] is {value}, expected a non-negative number")]
    Negative {
        what: &'static str,
        index: usize,
        value: f64,
    },
    /// All entries were zero (or masked out), so the input cannot be normalised.
    #[error("{what} has no mass (all entries are zero or masked)")]
    ZeroMass { what: &'static str },
    /// Two inputs that must be the same length were not.
    #[error("{what}: lengths differ ({left} vs {right})")]
    LengthMismatch {
        what: &'static str,
        left: usize,
        right: usize,
    },
    /// A parameter was out of its allowed range.
    #[error("invalid {name} = {value}: {reason}")]
    InvalidParameter {
        name: &'static str,
        value: String,
        reason: &'static str,
    },
    /// A statistic is mathematically undefined for this input (e.g. AUROC with no failures).
    #[error("{statistic} is undefined: {reason}")]
    Undefined {
        statistic: &'static str,
        reason: String,
    },
}

/// Checks that every value is finite, naming the first offender.
pub(crate) fn check_finite(what: &'static str, values: &[f64]) -> Result<(), AnalysisError> {
    match values.iter().position(|v| !v.is_finite()) {
        Some(index) => Err(AnalysisError::NonFinite {
            what,
            index,
            value: values[index],
        }),
        None => Ok(()),
    }
}

/// Checks a row of probabilities or weights: not empty, every entry finite and non-negative,
/// naming the first offending entry.
pub(crate) fn check_weights<T: Copy + Into<f64>>(
    what: &'static str,
    values: &[T],
) -> Result<(), AnalysisError> {
    if values.is_empty() {
        return Err(AnalysisError::Empty { what });
    }
    for (index, &v) in values.iter().enumerate() {
        let value: f64 = v.into();
        if !value.is_finite() {
            return Err(AnalysisError::NonFinite { what, index, value });
        }
        if value < 0.0 {
            return Err(AnalysisError::Negative { what, index, value });
        }
    }
    Ok(())
}
