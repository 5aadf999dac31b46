//! How well a score (attention entropy) predicts a binary outcome (a failed needle cell).
//!
//! The paper's second finding is that high attention entropy coincides with retrieval errors.
//! `entropy_vs_error` measures it with two statistics and bootstrap intervals:
//!
//! - [`auroc`]: the probability that a random positive (failed) case scores higher than a random
//!   negative (passed) one, ties counting one half; the Mann-Whitney `U / (n_pos n_neg)`.
//!   0.5 is no association, 1 perfect separation, 0 perfectly reversed.
//! - [`point_biserial`]: the Pearson correlation between the score and the outcome coded 1/0.
//!
//! Both are undefined when a class is empty (and the correlation also when the scores are all
//! equal); they then return [`AnalysisError::Undefined`] with the reason, never a number.
//!
//! [`bootstrap`] gives a percentile interval from a seeded, **stratified** bootstrap: each
//! resample draws the positives and the negatives with replacement separately, keeping both
//! class sizes (as pROC does by default), so AUROC is defined in every resample.

use super::AnalysisError;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn validate(scores: &[f64], outcomes: &[bool]) -> Result<(usize, usize), AnalysisError> {
    if scores.len() != outcomes.len() {
        return Err(AnalysisError::LengthMismatch {
            what: "scores and outcomes",
            left: scores.len(),
            right: outcomes.len(),
        });
    }
    super::check_finite("scores", scores)?;
    let positives = outcomes.iter().filter(|&&o| o).count();
    Ok((positives, outcomes.len() - positives))
}

fn class_check(
    statistic: &'static str,
    positives: usize,
    negatives: usize,
) -> Result<(), AnalysisError> {
    let reason = match (positives, negatives) {
        (0, 0) => "no observations",
        (0, _) => "no positive outcomes (every case is negative)",
        (_, 0) => "no negative outcomes (every case is positive)",
        _ => return Ok(()),
    };
    Err(AnalysisError::Undefined {
        statistic,
        reason: reason.to_string(),
    })
}

/// Area under the ROC curve of `scores` predicting `outcomes` (`true` = positive), ties
/// counted half: `P(score_pos > score_neg) + P(score_pos = score_neg) / 2`, computed from
/// mid-ranks in `O(n log n)`.
///
/// Errors: lengths differ, a non-finite score, or a class is empty (`Undefined`).
pub fn auroc(scores: &[f64], outcomes: &[bool]) -> Result<f64, AnalysisError> {
    let (positives, negatives) = validate(scores, outcomes)?;
    class_check("AUROC", positives, negatives)?;
    Ok(auroc_unchecked(scores, outcomes, positives, negatives))
}

fn auroc_unchecked(scores: &[f64], outcomes: &[bool], positives: usize, negatives: usize) -> f64 {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_unstable_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    // Sum of the positives' mid-ranks (ranks from 1).
    let mut rank_sum = 0.0;
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && scores[order[j + 1]] == scores[order[i]] {
            j += 1;
        }
        let mid_rank = (i + j) as f64 / 2.0 + 1.0;
        let tied_positives = order[i..=j].iter().filter(|&&k| outcomes[k]).count();
        rank_sum += mid_rank * tied_positives as f64;
        i = j + 1;
    }
    let p = positives as f64;
    let u = rank_sum - p * (p + 1.0) / 2.0;
    u / (p * negatives as f64)
}

/// Point-biserial correlation: Pearson's r between `scores` and `outcomes` coded 1 (`true`) and
/// 0, i.e. `(mean_pos - mean_neg) / sd * sqrt(n_pos n_neg / n^2)` with the population sd.
/// Positive when positives score higher.
///
/// Errors: lengths differ, a non-finite score, a class is empty, or all scores are equal
/// (`Undefined`).
pub fn point_biserial(scores: &[f64], outcomes: &[bool]) -> Result<f64, AnalysisError> {
    let (positives, negatives) = validate(scores, outcomes)?;
    class_check("point-biserial correlation", positives, negatives)?;
    point_biserial_unchecked(scores, outcomes, positives, negatives)
}

fn point_biserial_unchecked(
    scores: &[f64],
    outcomes: &[bool],
    positives: usize,
    negatives: usize,
) -> Result<f64, AnalysisError> {
    let n = scores.len() as f64;
    let mean = scores.iter().sum::<f64>() / n;
    let var = scores.iter().map(|s| (s - mean) * (s - mean)).sum::<f64>() / n;
    // Relative threshold: scores equal up to rounding count as constant.
    if var <= (mean * mean) * 1e-24 || var == 0.0 {
        return Err(AnalysisError::Undefined {
            statistic: "point-biserial correlation",
            reason: "all scores are equal".to_string(),
        });
    }
    let (mut sum_pos, mut sum_neg) = (0.0, 0.0);
    for (&s, &o) in scores.iter().zip(outcomes) {
        if o {
            sum_pos += s - mean;
        } else {
            sum_neg += s - mean;
        }
    }
    let (p, q) = (positives as f64, negatives as f64);
    let diff = sum_pos / p - sum_neg / q;
    Ok((diff / var.sqrt() * (p * q / (n * n)).sqrt()).clamp(-1.0, 1.0))
}

/// Which statistic to bootstrap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Statistic {
    /// [`auroc`].
    Auroc,
    /// [`point_biserial`].
    PointBiserial,
}

impl Statistic {
    fn name(self) -> &'static str {
        match self {
            Statistic::Auroc => "AUROC",
            Statistic::PointBiserial => "point-biserial correlation",
        }
    }

    fn compute(
        self,
        scores: &[f64],
        outcomes: &[bool],
        positives: usize,
        negatives: usize,
    ) -> Result<f64, AnalysisError> {
        match self {
            Statistic::Auroc => Ok(auroc_unchecked(scores, outcomes, positives, negatives)),
            Statistic::PointBiserial => {
                point_biserial_unchecked(scores, outcomes, positives, negatives)
            }
        }
    }
}

/// A point estimate with a bootstrap percentile interval.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Estimate {
    /// The statistic on the full data.
    pub value: f64,
    /// Lower end of the interval.
    pub lo: f64,
    /// Upper end of the interval.
    pub hi: f64,
    /// Resamples in which the statistic was defined (the interval's sample size).
    pub resamples: usize,
}

/// Settings of a bootstrap.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BootstrapConfig {
    /// Number of resamples (at least 1; 1000-2000 is usual).
    pub resamples: usize,
    /// Coverage of the interval, in `(0, 1)`: 0.95 gives the 2.5th and 97.5th percentiles.
    pub level: f64,
    /// Seed of the resampling RNG (ChaCha8): equal seeds give equal intervals.
    pub seed: u64,
}

impl Default for BootstrapConfig {
    fn default() -> Self {
        Self {
            resamples: 2000,
            level: 0.95,
            seed: 0,
        }
    }
}

/// `statistic` on the data with a stratified percentile bootstrap interval (see the module doc).
/// Percentiles interpolate linearly between order statistics (numpy's default). Resamples in
/// which the statistic is undefined (point-biserial with all resampled scores equal) are
/// skipped and not counted in [`Estimate::resamples`].
///
/// Errors: bad inputs or an undefined statistic on the full data (as [`auroc`] and
/// [`point_biserial`]), `resamples == 0` or `level` outside `(0, 1)`, or no resample defined.
pub fn bootstrap(
    statistic: Statistic,
    scores: &[f64],
    outcomes: &[bool],
    config: &BootstrapConfig,
) -> Result<Estimate, AnalysisError> {
    if config.resamples == 0 {
        return Err(AnalysisError::InvalidParameter {
            name: "bootstrap resamples",
            value: "0".into(),
            reason: "must be at least 1",
        });
    }
    if !(config.level > 0.0 && config.level < 1.0) {
        return Err(AnalysisError::InvalidParameter {
            name: "bootstrap level",
            value: config.level.to_string(),
            reason: "must lie strictly between 0 and 1",
        });
    }
    let (positives, negatives) = validate(scores, outcomes)?;
    class_check(statistic.name(), positives, negatives)?;
    let value = statistic.compute(scores, outcomes, positives, negatives)?;

    let pos: Vec<f64> = scores
        .iter()
        .zip(outcomes)
        .filter(|(_, o)| **o)
        .map(|(s, _)| *s)
        .collect();
    let neg: Vec<f64> = scores
        .iter()
        .zip(outcomes)
        .filter(|(_, o)| !**o)
        .map(|(s, _)| *s)
        .collect();
    let mut resampled_outcomes = vec![true; positives];
    resampled_outcomes.resize(positives + negatives, false);
    let mut resampled = vec![0.0; positives + negatives];
    let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
    let mut stats = Vec::with_capacity(config.resamples);
    for _ in 0..config.resamples {
        for slot in resampled[..positives].iter_mut() {
            *slot = pos[rng.random_range(0..positives)];
        }
        for slot in resampled[positives..].iter_mut() {
            *slot = neg[rng.random_range(0..negatives)];
        }
        if let Ok(s) = statistic.compute(&resampled, &resampled_outcomes, positives, negatives) {
            stats.push(s);
        }
    }
    if stats.is_empty() {
        return Err(AnalysisError::Undefined {
            statistic: statistic.name(),
            reason: format!("undefined in all {} bootstrap resamples", config.resamples),
        });
    }
    stats.sort_unstable_by(f64::total_cmp);
    let tail = (1.0 - config.level) / 2.0;
    Ok(Estimate {
        value,
        lo: quantile_sorted(&stats, tail),
        hi: quantile_sorted(&stats, 1.0 - tail),
        resamples: stats.len(),
    })
}

/// Linear-interpolation quantile of sorted, non-empty data (numpy `method="linear"`).
pub(crate) fn quantile_sorted(sorted: &[f64], q: f64) -> f64 {
    let pos = q * (sorted.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = pos.ceil() as usize;
    sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64)
}

/// The `entropy_vs_error` summary of one model: how well a score predicts failure.
#[derive(Debug, Clone, PartialEq)]
pub struct ScoreVsOutcome {
    /// Number of cases.
    pub n: usize,
    /// Number of positive cases (failures).
    pub positives: usize,
    /// Number of negative cases (passes).
    pub negatives: usize,
    /// Mean score of the positives (`None` without positives).
    pub mean_positive: Option<f64>,
    /// Mean score of the negatives (`None` without negatives).
    pub mean_negative: Option<f64>,
    /// AUROC with its interval, or why it is undefined.
    pub auroc: Result<Estimate, AnalysisError>,
    /// Point-biserial correlation with its interval, or why it is undefined.
    pub point_biserial: Result<Estimate, AnalysisError>,
}

/// Both statistics with bootstrap intervals, counts and class means in one call.
///
/// Errors: only for inputs that are wrong rather than uninformative (lengths differ, a
/// non-finite score, a bad `config`); empty classes give `Undefined` inside the fields.
pub fn score_vs_outcome(
    scores: &[f64],
    outcomes: &[bool],
    config: &BootstrapConfig,
) -> Result<ScoreVsOutcome, AnalysisError> {
    let (positives, negatives) = validate(scores, outcomes)?;
    let mean_of = |want: bool, count: usize| {
        (count > 0).then(|| {
            scores
                .iter()
                .zip(outcomes)
                .filter(|(_, o)| **o == want)
                .map(|(s, _)| s)
                .sum::<f64>()
                / count as f64
        })
    };
    let auroc = bootstrap(Statistic::Auroc, scores, outcomes, config);
    let point_biserial = bootstrap(Statistic::PointBiserial, scores, outcomes, config);
    for result in [&auroc, &point_biserial] {
        if let Err(e @ AnalysisError::InvalidParameter { .. }) = result {
            return Err(e.clone());
        }
    }
    Ok(ScoreVsOutcome {
        n: scores.len(),
        positives,
        negatives,
        mean_positive: mean_of(true, positives),
        mean_negative: mean_of(false, negatives),
        auroc,
        point_biserial,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// O(n^2) definition, for cross-checking the rank form.
    fn auroc_pairs(scores: &[f64], outcomes: &[bool]) -> f64 {
        let mut total = 0.0;
        let mut count = 0.0;
        for (i, &oi) in outcomes.iter().enumerate() {
            for (j, &oj) in outcomes.iter().enumerate() {
                if oi && !oj {
                    count += 1.0;
                    total += match scores[i].partial_cmp(&scores[j]).unwrap() {
                        std::cmp::Ordering::Greater => 1.0,
                        std::cmp::Ordering::Equal => 0.5,
                        std::cmp::Ordering::Less => 0.0,
                    };
                }
            }
        }
        total / count
    }

    #[test]
    fn perfect_reversed_and_tied() {
        let outcomes = [false, false, false, true, true];
        assert_eq!(auroc(&[0.1, 0.2, 0.3, 0.8, 0.9], &outcomes).unwrap(), 1.0);
        assert_eq!(auroc(&[0.9, 0.8, 0.7, 0.2, 0.1], &outcomes).unwrap(), 0.0);
        assert_eq!(auroc(&[3.0; 5], &outcomes).unwrap(), 0.5);
    }

    #[test]
    fn small_hand_computed_case() {
        // Positives score 3 and 5, negatives 1, 3 and 4.
        // Pairs (pos, neg): (3,1)=1 (3,3)=0.5 (3,4)=0 (5,1)=1 (5,3)=1 (5,4)=1 -> 4.5 / 6 = 0.75
        let scores = [1.0, 3.0, 3.0, 4.0, 5.0];
        let outcomes = [false, true, false, false, true];
        assert_eq!(auroc(&scores, &outcomes).unwrap(), 0.75);
        assert_eq!(auroc_pairs(&scores, &outcomes), 0.75);
    }

    #[test]
    fn rank_form_matches_pair_definition_on_many_ties() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        for _ in 0..100 {
            let n = rng.random_range(2..60);
            let scores: Vec<f64> = (0..n).map(|_| rng.random_range(0..6) as f64).collect();
            let mut outcomes: Vec<bool> = (0..n).map(|_| rng.random_bool(0.4)).collect();
            outcomes[0] = true;
            outcomes[1] = false;
            let a = auroc(&scores, &outcomes).unwrap();
            let b = auroc_pairs(&scores, &outcomes);
            assert!((a - b).abs() < 1e-12, "{a} vs {b}");
        }
    }

    #[test]
    fn point_biserial_hand_computed() {
        // Scores 1,2,3,4 with outcomes 0,0,1,1: Pearson r of (1,2,3,4) and (0,0,1,1)
        // = 2 / sqrt(5 * 1) = 0.894427190999916
        let r = point_biserial(&[1.0, 2.0, 3.0, 4.0], &[false, false, true, true]).unwrap();
        assert!((r - 2.0 / 5f64.sqrt()).abs() < 1e-12, "{r}");
        let r = point_biserial(&[1.0, 2.0, 3.0, 4.0], &[true, true, false, false]).unwrap();
        assert!((r + 2.0 / 5f64.sqrt()).abs() < 1e-12, "{r}");
        // Perfect two-valued association gives r = 1.
        let r = point_biserial(
            &[0.0, 0.0, 1.0, 1.0, 1.0],
            &[false, false, true, true, true],
        )
        .unwrap();
        assert!((r - 1.0).abs() < 1e-12);
    }

    #[test]
    fn undefined_cases_say_why() {
        let err = auroc(&[1.0, 2.0], &[false, false]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "AUROC is undefined: no positive outcomes (every case is negative)"
        );
        let err = auroc(&[1.0, 2.0], &[true, true]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "AUROC is undefined: no negative outcomes (every case is positive)"
        );
        let err = auroc(&[], &[]).unwrap_err();
        assert_eq!(err.to_string(), "AUROC is undefined: no observations");
        let err = point_biserial(&[2.0, 2.0, 2.0], &[true, false, true]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "point-biserial correlation is undefined: all scores are equal"
        );
        assert!(matches!(
            auroc(&[1.0], &[true, false]),
            Err(AnalysisError::LengthMismatch {
                left: 1,
                right: 2,
                ..
            })
        ));
        assert!(matches!(
            auroc(&[1.0, f64::NAN], &[true, false]),
            Err(AnalysisError::NonFinite { index: 1, .. })
        ));
    }

    #[test]
    fn bootstrap_is_seeded_and_brackets_the_estimate() {
        let mut rng = ChaCha8Rng::seed_from_u64(11);
        let outcomes: Vec<bool> = (0..200).map(|i| i % 3 == 0).collect();
        // Failures score about one unit higher, with noise: a clear but imperfect association.
        let scores: Vec<f64> = outcomes
            .iter()
            .map(|&o| if o { 1.0 } else { 0.0 } + rng.random_range(-1.0..1.0))
            .collect();
        let config = BootstrapConfig {
            resamples: 500,
            level: 0.95,
            seed: 42,
        };
        let a = bootstrap(Statistic::Auroc, &scores, &outcomes, &config).unwrap();
        assert_eq!(a.value, auroc(&scores, &outcomes).unwrap());
        assert!(a.lo < a.value && a.value < a.hi, "{a:?}");
        assert!(a.lo > 0.6 && a.hi <= 1.0, "{a:?}");
        assert!(a.hi - a.lo < 0.25, "{a:?}");
        assert_eq!(a.resamples, 500);
        assert_eq!(
            a,
            bootstrap(Statistic::Auroc, &scores, &outcomes, &config).unwrap()
        );
        let other_seed = BootstrapConfig { seed: 43, ..config };
        assert_ne!(
            a,
            bootstrap(Statistic::Auroc, &scores, &outcomes, &other_seed).unwrap()
        );

        let r = bootstrap(Statistic::PointBiserial, &scores, &outcomes, &config).unwrap();
        assert!(r.lo < r.value && r.value < r.hi && r.lo > 0.2, "{r:?}");
    }

    #[test]
    fn bootstrap_of_perfect_separation_is_degenerate_at_one() {
        let scores = [1.0, 2.0, 3.0, 10.0, 11.0];
        let outcomes = [false, false, false, true, true];
        let a = bootstrap(
            Statistic::Auroc,
            &scores,
            &outcomes,
            &BootstrapConfig::default(),
        )
        .unwrap();
        assert_eq!((a.value, a.lo, a.hi), (1.0, 1.0, 1.0));
    }

    #[test]
    fn bootstrap_parameters_are_checked() {
        let bad = BootstrapConfig {
            resamples: 0,
            ..Default::default()
        };
        assert!(matches!(
            bootstrap(Statistic::Auroc, &[1.0, 2.0], &[true, false], &bad),
            Err(AnalysisError::InvalidParameter { .. })
        ));
        let bad = BootstrapConfig {
            level: 1.0,
            ..Default::default()
        };
        assert!(bootstrap(Statistic::Auroc, &[1.0, 2.0], &[true, false], &bad).is_err());
    }

    #[test]
    fn quantiles_interpolate_like_numpy() {
        let data = [1.0, 2.0, 3.0, 4.0];
        assert_eq!(quantile_sorted(&data, 0.0), 1.0);
        assert_eq!(quantile_sorted(&data, 1.0), 4.0);
        assert_eq!(quantile_sorted(&data, 0.5), 2.5);
        assert!((quantile_sorted(&data, 0.025) - 1.075).abs() < 1e-12);
    }

    #[test]
    fn summary_with_and_without_both_classes() {
        let config = BootstrapConfig {
            resamples: 200,
            ..Default::default()
        };
        let s = score_vs_outcome(
            &[1.0, 3.0, 3.0, 4.0, 5.0],
            &[false, true, false, false, true],
            &config,
        )
        .unwrap();
        assert_eq!((s.n, s.positives, s.negatives), (5, 2, 3));
        assert_eq!(s.mean_positive, Some(4.0));
        assert!((s.mean_negative.unwrap() - 8.0 / 3.0).abs() < 1e-12);
        assert_eq!(s.auroc.as_ref().unwrap().value, 0.75);
        assert!(s.point_biserial.is_ok());

        let s = score_vs_outcome(&[1.0, 2.0], &[false, false], &config).unwrap();
        assert_eq!((s.positives, s.negatives), (0, 2));
        assert_eq!(s.mean_positive, None);
        assert_eq!(s.mean_negative, Some(1.5));
        assert!(matches!(s.auroc, Err(AnalysisError::Undefined { .. })));
        assert!(matches!(
            s.point_biserial,
            Err(AnalysisError::Undefined { .. })
        ));

        let bad = BootstrapConfig {
            resamples: 0,
            ..config
        };
        assert!(score_vs_outcome(&[1.0, 2.0], &[true, false], &bad).is_err());
    }
}
