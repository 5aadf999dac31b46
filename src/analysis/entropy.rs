//! Shannon entropy of an attention distribution, in nats, from probabilities or from logits.
//!
//! The paper's Algorithm 1 averages `H = -sum p ln p` of each generated token's attention row.
//! At long lengths the row is too long to materialise for every head, so the model computes it
//! block by block over the keys; [`OnlineEntropy`] is that computation in plain `f64`, and the
//! reference the blockwise kernels are tested against.
//!
//! # The online form
//!
//! With logits `l_j`, `p_j = exp(l_j) / S`, and `H = ln S - sum_j p_j l_j`. Keeping a running
//! maximum `m`, `s = sum exp(l_j - m)` and `u = sum exp(l_j - m) (l_j - m)` gives
//! `H = ln s - u / s`. When a block raises the maximum from `m` to `m'`, both sums are rescaled
//! by `r = exp(m - m')`: `s <- r s`, `u <- r (u + (m - m') s)`. This is the same as the textbook
//! `t = sum exp(l_j - m) l_j`, `H = m + ln s - t / s` (since `u = t - m s`), but stays accurate
//! when the logits are large: `m + ln s - t / s` subtracts two numbers of the size of the logits.
//!
//! Masked keys are logits of `-inf` (the causal mask) and contribute nothing.

use super::AnalysisError;

/// Entropy in nats of a probability row. The row is normalised by its sum first, so rows that
/// sum to `1 ± rounding` (or unnormalised weights) are fine; zeros contribute nothing
/// (`0 ln 0 = 0`).
///
/// Errors: an empty row, a negative or non-finite entry, or a row summing to zero.
pub fn entropy_of_probs<T: Copy + Into<f64>>(probs: &[T]) -> Result<f64, AnalysisError> {
    const WHAT: &str = "probability row";
    super::check_weights(WHAT, probs)?;
    let sum: f64 = probs.iter().map(|&p| p.into()).sum();
    if sum <= 0.0 {
        return Err(AnalysisError::ZeroMass { what: WHAT });
    }
    // H = -sum (p/S) ln(p/S) = ln S - (1/S) sum p ln p
    let plogp: f64 = probs
        .iter()
        .map(|&p| {
            let p: f64 = p.into();
            if p > 0.0 { p * p.ln() } else { 0.0 }
        })
        .sum();
    Ok((sum.ln() - plogp / sum).max(0.0))
}

/// Entropy in nats of `softmax(logits)`, computed in one pass with the log-sum-exp shift.
/// Entries of `-inf` are masked keys; at least one entry must be finite.
///
/// Errors: an empty row, a NaN or `+inf` entry, or every entry `-inf`.
pub fn entropy_of_logits<T: Copy + Into<f64>>(logits: &[T]) -> Result<f64, AnalysisError> {
    let mut acc = OnlineEntropy::new();
    acc.push_block(logits)?;
    if acc.is_empty() {
        return Err(AnalysisError::Empty { what: "logit row" });
    }
    acc.entropy()
}

/// Streaming entropy of `softmax` over a row of logits that arrives in blocks.
///
/// Feed blocks with [`push_block`](Self::push_block) in any order and of any size, or combine
/// accumulators of disjoint parts of the row with [`merge`](Self::merge); [`entropy`](Self::entropy)
/// then equals [`entropy_of_logits`] of the whole row up to rounding.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OnlineEntropy {
    /// Running maximum of the finite logits seen (`-inf` before any).
    max: f64,
    /// `sum exp(l - max)`.
    sum: f64,
    /// `sum exp(l - max) * (l - max)`.
    weighted: f64,
    /// Number of entries pushed, masked ones included.
    count: u64,
}

impl Default for OnlineEntropy {
    fn default() -> Self {
        Self::new()
    }
}

impl OnlineEntropy {
    /// An accumulator that has seen nothing.
    pub fn new() -> Self {
        Self {
            max: f64::NEG_INFINITY,
            sum: 0.0,
            weighted: 0.0,
            count: 0,
        }
    }

    /// Whether no entry has been pushed.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Number of entries pushed so far, masked (`-inf`) ones included.
    pub fn len(&self) -> u64 {
        self.count
    }

    /// Adds a block of logits. `-inf` entries are masked keys.
    ///
    /// Errors (leaving the accumulator unchanged): a NaN or `+inf` entry.
    pub fn push_block<T: Copy + Into<f64>>(&mut self, logits: &[T]) -> Result<(), AnalysisError> {
        let mut block_max = f64::NEG_INFINITY;
        for (index, &l) in logits.iter().enumerate() {
            let l: f64 = l.into();
            if l.is_nan() || l == f64::INFINITY {
                return Err(AnalysisError::NonFinite {
                    what: "logit block",
                    index,
                    value: l,
                });
            }
            block_max = block_max.max(l);
        }
        self.count += logits.len() as u64;
        if block_max == f64::NEG_INFINITY {
            return Ok(());
        }
        self.rescale_to(block_max.max(self.max));
        let m = self.max;
        for &l in logits {
            let d = l.into() - m;
            if d > f64::NEG_INFINITY {
                let e = d.exp();
                self.sum += e;
                self.weighted += e * d;
            }
        }
        Ok(())
    }

    /// Combines with an accumulator over a disjoint part of the same row.
    pub fn merge(&mut self, other: &OnlineEntropy) {
        self.count += other.count;
        if other.max == f64::NEG_INFINITY {
            return;
        }
        self.rescale_to(other.max.max(self.max));
        let r = (other.max - self.max).exp();
        self.sum += r * other.sum;
        self.weighted += r * (other.weighted + (other.max - self.max) * other.sum);
    }

    /// Entropy in nats of the softmax over everything pushed.
    ///
    /// Errors: nothing pushed, or every entry masked.
    pub fn entropy(&self) -> Result<f64, AnalysisError> {
        if self.count == 0 {
            return Err(AnalysisError::Empty {
                what: "online entropy accumulator",
            });
        }
        if self.sum <= 0.0 {
            return Err(AnalysisError::ZeroMass {
                what: "logit row (every entry is -inf)",
            });
        }
        Ok((self.sum.ln() - self.weighted / self.sum).max(0.0))
    }

    /// `ln sum exp(l)` over everything pushed (`-inf` when nothing finite was pushed).
    pub fn log_sum_exp(&self) -> f64 {
        if self.sum > 0.0 {
            self.max + self.sum.ln()
        } else {
            f64::NEG_INFINITY
        }
    }

    /// Moves the reference point to `new_max >= self.max`, rescaling both sums.
    fn rescale_to(&mut self, new_max: f64) {
        if new_max == self.max {
            return;
        }
        if self.max == f64::NEG_INFINITY {
            self.max = new_max;
            return;
        }
        let shift = self.max - new_max; // <= 0
        let r = shift.exp();
        self.weighted = r * (self.weighted + shift * self.sum);
        self.sum *= r;
        self.max = new_max;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    fn close(a: f64, b: f64, tol: f64) -> bool {
        (a - b).abs() <= tol
    }

    /// Two-pass textbook reference: softmax then -sum p ln p.
    fn naive(logits: &[f64]) -> f64 {
        let m = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let z: f64 = logits.iter().map(|l| (l - m).exp()).sum();
        logits
            .iter()
            .map(|l| {
                let p = (l - m).exp() / z;
                if p > 0.0 { -p * p.ln() } else { 0.0 }
            })
            .sum()
    }

    #[test]
    fn uniform_row_has_entropy_ln_n() {
        for n in [1usize, 2, 3, 10, 4096] {
            let probs = vec![1.0 / n as f64; n];
            let h = entropy_of_probs(&probs).unwrap();
            assert!(close(h, (n as f64).ln(), 1e-12), "n={n}: {h}");
            let logits = vec![3.7f32; n];
            let h = entropy_of_logits(&logits).unwrap();
            assert!(close(h, (n as f64).ln(), 1e-12), "n={n}: {h}");
        }
    }

    #[test]
    fn one_hot_row_has_zero_entropy() {
        assert_eq!(entropy_of_probs(&[0.0, 1.0, 0.0, 0.0]).unwrap(), 0.0);
        let logits = [f64::NEG_INFINITY, 5.0, f64::NEG_INFINITY];
        assert_eq!(entropy_of_logits(&logits).unwrap(), 0.0);
        // A finite but overwhelming logit: exp(-1000) underflows to 0.
        assert!(entropy_of_logits(&[0.0f32, 1000.0, 0.0]).unwrap() < 1e-12);
    }

    #[test]
    fn hand_computed_two_point_row() {
        // p = (0.25, 0.75): H = -(0.25 ln 0.25 + 0.75 ln 0.75) = 0.5623351446188083
        let expected = 0.562_335_144_618_808_3;
        assert!(close(
            entropy_of_probs(&[0.25, 0.75]).unwrap(),
            expected,
            1e-12
        ));
        // Unnormalised weights give the same distribution.
        assert!(close(
            entropy_of_probs(&[1.0f32, 3.0]).unwrap(),
            expected,
            1e-7
        ));
        // logits ln 1 and ln 3
        assert!(close(
            entropy_of_logits(&[0.0, 3.0f64.ln()]).unwrap(),
            expected,
            1e-12
        ));
    }

    #[test]
    fn masked_keys_do_not_count() {
        let full = entropy_of_logits(&[1.0, 2.0, 3.0]).unwrap();
        let masked = entropy_of_logits(&[1.0, 2.0, 3.0, f64::NEG_INFINITY]).unwrap();
        assert_eq!(full, masked);
    }

    #[test]
    fn bad_rows_are_errors_not_panics() {
        let empty: [f64; 0] = [];
        assert!(matches!(
            entropy_of_probs(&empty),
            Err(AnalysisError::Empty { .. })
        ));
        assert!(matches!(
            entropy_of_probs(&[0.5, -0.1]),
            Err(AnalysisError::Negative { index: 1, .. })
        ));
        assert!(matches!(
            entropy_of_probs(&[0.5, f64::NAN]),
            Err(AnalysisError::NonFinite { index: 1, .. })
        ));
        assert!(matches!(
            entropy_of_probs(&[0.0, 0.0]),
            Err(AnalysisError::ZeroMass { .. })
        ));
        assert!(matches!(
            entropy_of_logits(&empty),
            Err(AnalysisError::Empty { .. })
        ));
        assert!(matches!(
            entropy_of_logits(&[f64::NEG_INFINITY; 3]),
            Err(AnalysisError::ZeroMass { .. })
        ));
        assert!(matches!(
            entropy_of_logits(&[1.0, f64::INFINITY]),
            Err(AnalysisError::NonFinite { index: 1, .. })
        ));
        let mut acc = OnlineEntropy::new();
        acc.push_block(&[1.0, 2.0]).unwrap();
        let before = acc;
        assert!(acc.push_block(&[0.0, f64::NAN]).is_err());
        assert_eq!(
            acc, before,
            "a rejected block leaves the accumulator unchanged"
        );
        assert!(OnlineEntropy::new().entropy().is_err());
    }

    #[test]
    fn blockwise_equals_full_row_with_large_logits() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        for trial in 0..200 {
            let n = rng.random_range(1..3000);
            let offset = rng.random_range(-5e4..5e4);
            let scale = [0.01, 1.0, 30.0, 300.0][trial % 4];
            let mut logits: Vec<f64> = (0..n)
                .map(|_| offset + scale * rng.random_range(-1.0..1.0))
                .collect();
            // Some masked keys, as under the causal mask.
            for _ in 0..n / 10 {
                let i = rng.random_range(0..n);
                logits[i] = f64::NEG_INFINITY;
            }
            if logits.iter().all(|l| *l == f64::NEG_INFINITY) {
                logits[0] = offset;
            }
            let full = entropy_of_logits(&logits).unwrap();
            let shifted: Vec<f64> = logits.iter().map(|l| l - offset).collect();
            let reference = naive(&shifted);
            assert!(
                close(full, reference, 1e-6),
                "trial {trial}: one-pass {full} vs two-pass {reference}"
            );

            // Random block boundaries, increasing and decreasing maxima alike.
            let mut acc = OnlineEntropy::new();
            let mut start = 0;
            while start < n {
                let end = (start + rng.random_range(1..=257)).min(n);
                acc.push_block(&logits[start..end]).unwrap();
                start = end;
            }
            assert_eq!(acc.len(), n as u64);
            let blockwise = acc.entropy().unwrap();
            assert!(
                close(blockwise, full, 1e-6),
                "trial {trial}: blockwise {blockwise} vs full {full}"
            );

            // Merging accumulators of two halves, as parallel workers would.
            let cut = rng.random_range(0..=n);
            let mut left = OnlineEntropy::new();
            left.push_block(&logits[..cut]).unwrap();
            let mut right = OnlineEntropy::new();
            right.push_block(&logits[cut..]).unwrap();
            right.merge(&left);
            assert!(close(right.entropy().unwrap(), full, 1e-6), "trial {trial}");
            let lse_ref = offset + shifted.iter().map(|l| l.exp()).sum::<f64>().ln();
            assert!(close(
                right.log_sum_exp(),
                lse_ref,
                1e-6 * lse_ref.abs().max(1.0)
            ));
        }
    }

    #[test]
    fn f32_logits_match_f64_reference() {
        let logits32: Vec<f32> = (0..1000).map(|i| ((i * 37) % 101) as f32 * 0.37).collect();
        let logits64: Vec<f64> = logits32.iter().map(|&l| l as f64).collect();
        assert_eq!(
            entropy_of_logits(&logits32).unwrap(),
            entropy_of_logits(&logits64).unwrap()
        );
    }
}
