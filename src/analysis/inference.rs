//! Tests that respect how the study was designed: observations are analysed **within strata**
//! (seeds, context lengths), resampled **by cluster** (a needle cell's trials share a haystack
//! length and depth), and a family of tests is corrected for multiplicity (Holm).
//!
//! - [`stratified_rank_test`]: the mean over strata of Spearman's rho, with a permutation
//!   p-value that shuffles `y` only within each stratum (exact when the number of orderings is
//!   small, seeded Monte Carlo otherwise), the **smallest p-value the design can reach** (so a
//!   report can say "not testable with this design" instead of "inconclusive"), and a
//!   stratified bootstrap interval of the statistic.
//! - [`stratified_auroc`]: AUROC counting only (failure, pass) pairs of the same stratum, so a
//!   variable that raises both the score and the failure rate across strata (context length)
//!   cannot create an association that is absent within every stratum.
//! - [`cluster_bootstrap_auroc`]: its percentile interval and two-sided bootstrap p-value from
//!   resampling whole clusters.
//! - [`holm`]: Holm-Bonferroni adjusted p-values.
//!
//! Every p-value here is **two-sided**: `min(1, 2 min(P(T >= t), P(T <= t)))`, so that a
//! verdict for the claim and a verdict against it need the same evidence.

use super::AnalysisError;
use super::auroc::quantile_sorted;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::BTreeMap;

/// Tolerance for "as extreme as observed": statistics equal up to rounding count as ties.
const TIE: f64 = 1e-12;

/// Most orderings enumerated exactly; beyond, Monte Carlo.
pub const EXACT_LIMIT: u64 = 200_000;

/// Holm-Bonferroni adjusted p-values, in the input order: the `k`-th smallest p (from 0) is
/// multiplied by `m - k`, made monotone, and capped at 1. Reject at `alpha` where the adjusted
/// p is at most `alpha`; this controls the family-wise error rate at `alpha`.
pub fn holm(p: &[f64]) -> Vec<f64> {
    let m = p.len();
    let mut order: Vec<usize> = (0..m).collect();
    order.sort_by(|&a, &b| p[a].total_cmp(&p[b]));
    let mut out = vec![0.0; m];
    let mut running: f64 = 0.0;
    for (k, &i) in order.iter().enumerate() {
        running = running.max(((m - k) as f64 * p[i]).min(1.0));
        out[i] = running;
    }
    out
}

/// Mid-ranks from 1 (ties share their average rank).
pub fn ranks(values: &[f64]) -> Vec<f64> {
    let mut order: Vec<usize> = (0..values.len()).collect();
    order.sort_by(|&a, &b| values[a].total_cmp(&values[b]));
    let mut out = vec![0.0; values.len()];
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && values[order[j + 1]] == values[order[i]] {
            j += 1;
        }
        let r = (i + j) as f64 / 2.0 + 1.0;
        for &k in &order[i..=j] {
            out[k] = r;
        }
        i = j + 1;
    }
    out
}

/// Pearson's r; `None` when a side is constant.
pub fn pearson(x: &[f64], y: &[f64]) -> Option<f64> {
    let n = x.len() as f64;
    let (mx, my) = (x.iter().sum::<f64>() / n, y.iter().sum::<f64>() / n);
    let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
    for (a, b) in x.iter().zip(y) {
        sxy += (a - mx) * (b - my);
        sxx += (a - mx) * (a - mx);
        syy += (b - my) * (b - my);
    }
    if sxx <= 0.0 || syy <= 0.0 {
        None
    } else {
        Some((sxy / (sxx * syy).sqrt()).clamp(-1.0, 1.0))
    }
}

/// Spearman's rho (Pearson's r of mid-ranks); `None` for fewer than 2 points, unequal lengths
/// or a constant side.
pub fn spearman(x: &[f64], y: &[f64]) -> Option<f64> {
    if x.len() != y.len() || x.len() < 2 {
        return None;
    }
    pearson(&ranks(x), &ranks(y))
}

/// A within-strata rank correlation test.
#[derive(Debug, Clone, PartialEq)]
pub struct StratifiedTest {
    /// Observations in the strata that count (at least 2 points and variation on both sides).
    pub n: usize,
    /// Strata that count, and their sizes.
    pub strata: Vec<usize>,
    /// Strata left out (too small or constant), by size.
    pub dropped: Vec<usize>,
    /// Mean over the counted strata of Spearman's rho.
    pub rho: f64,
    /// Two-sided permutation p-value (within-stratum shuffles of `y`).
    pub p: f64,
    /// The smallest two-sided p-value this design can give whatever the data (exact: the
    /// probability of the most extreme ordering, doubled; Monte Carlo: also at least
    /// `2 / (1 + resamples)`).
    pub min_p: f64,
    /// Within-stratum orderings: the product of `n_s!` (saturating).
    pub orderings: u64,
    /// Whether `p` was enumerated over every ordering.
    pub exact: bool,
    /// Percentile bootstrap interval of `rho` (observations resampled within strata), when
    /// enough resamples were defined.
    pub interval: Option<(f64, f64)>,
}

fn factorial(n: usize) -> u64 {
    (1..=n as u64)
        .try_fold(1u64, |a, b| a.checked_mul(b))
        .unwrap_or(u64::MAX)
}

/// Every permutation of `v` (Heap-free recursive swaps, restored afterwards).
fn permute(v: &mut [f64], k: usize, f: &mut dyn FnMut(&[f64])) {
    if k + 1 >= v.len() {
        f(v);
        return;
    }
    for i in k..v.len() {
        v.swap(k, i);
        permute(v, k + 1, f);
        v.swap(k, i);
    }
}

/// Spearman's rho over strata: the mean of within-stratum rho, with a two-sided permutation
/// p-value that shuffles `y` within each stratum, the smallest attainable p, and a bootstrap
/// interval. `strata` are `(x, y)` pairs per stratum (e.g. one stratum per seed, the models as
/// points). Strata with fewer than 2 points or no variation on a side are dropped (a shuffle
/// within a stratum cannot create variation, so this is decided once, on the data).
///
/// Errors: a non-finite value, unequal `x`/`y` lengths, or no stratum that counts.
pub fn stratified_rank_test(
    strata: &[(Vec<f64>, Vec<f64>)],
    resamples: usize,
    seed: u64,
) -> Result<StratifiedTest, AnalysisError> {
    let mut used: Vec<(Vec<f64>, Vec<f64>)> = Vec::new();
    let mut dropped = Vec::new();
    for (x, y) in strata {
        if x.len() != y.len() {
            return Err(AnalysisError::LengthMismatch {
                what: "stratum x and y",
                left: x.len(),
                right: y.len(),
            });
        }
        super::check_finite("x", x)?;
        super::check_finite("y", y)?;
        if spearman(x, y).is_some() {
            used.push((ranks(x), ranks(y)));
        } else {
            dropped.push(x.len());
        }
    }
    if used.is_empty() {
        return Err(AnalysisError::Undefined {
            statistic: "stratified Spearman rho",
            reason: "no stratum has at least 2 observations with variation on both sides".into(),
        });
    }
    let k = used.len() as f64;
    let rho_of = |s: &[(Vec<f64>, Vec<f64>)]| -> f64 {
        s.iter()
            .map(|(x, y)| pearson(x, y).expect("variation checked"))
            .sum::<f64>()
            / k
    };
    let rho = rho_of(&used);
    let orderings = used
        .iter()
        .map(|(x, _)| factorial(x.len()))
        .try_fold(1u64, |a, b| a.checked_mul(b))
        .unwrap_or(u64::MAX);
    // Each stratum's distribution of rho over its orderings (exact strata only).
    let per_stratum: Option<Vec<Vec<f64>>> = (orderings <= EXACT_LIMIT).then(|| {
        used.iter()
            .map(|(x, y)| {
                let mut out = Vec::new();
                let mut perm = y.clone();
                permute(&mut perm, 0, &mut |p| {
                    out.push(pearson(x, p).expect("a permutation keeps the variation"));
                });
                out
            })
            .collect()
    });
    // The most extreme orderings: each stratum at its own maximum (or minimum).
    let extreme_share = |lists: &[Vec<f64>], max: bool| -> f64 {
        lists
            .iter()
            .map(|l| {
                let e = if max {
                    l.iter().copied().fold(f64::MIN, f64::max)
                } else {
                    l.iter().copied().fold(f64::MAX, f64::min)
                };
                l.iter().filter(|v| (**v - e).abs() <= TIE).count() as f64 / l.len() as f64
            })
            .product()
    };
    let (p, min_p, exact) = match &per_stratum {
        Some(lists) => {
            let (mut ge, mut le, mut total) = (0u64, 0u64, 0u64);
            let mut idx = vec![0usize; lists.len()];
            loop {
                let t = idx.iter().zip(lists).map(|(&i, l)| l[i]).sum::<f64>() / k;
                total += 1;
                if t >= rho - TIE {
                    ge += 1;
                }
                if t <= rho + TIE {
                    le += 1;
                }
                // Odometer over the strata's orderings.
                let mut s = 0;
                loop {
                    if s == idx.len() {
                        break;
                    }
                    idx[s] += 1;
                    if idx[s] < lists[s].len() {
                        break;
                    }
                    idx[s] = 0;
                    s += 1;
                }
                if s == idx.len() {
                    break;
                }
            }
            let p = (2.0 * (ge.min(le) as f64) / total as f64).min(1.0);
            let min_p =
                (2.0 * extreme_share(lists, true).min(extreme_share(lists, false))).min(1.0);
            (p, min_p, true)
        }
        None => {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let r = resamples.max(1);
            let (mut ge, mut le) = (0usize, 0usize);
            let mut shuffled = used.clone();
            for _ in 0..r {
                for (_, y) in shuffled.iter_mut() {
                    y.shuffle(&mut rng);
                }
                let t = rho_of(&shuffled);
                if t >= rho - TIE {
                    ge += 1;
                }
                if t <= rho + TIE {
                    le += 1;
                }
            }
            let p = (2.0 * (1 + ge.min(le)) as f64 / (1 + r) as f64).min(1.0);
            let floor = 2.0 / (1 + r) as f64;
            let design = 2.0 / orderings as f64;
            (p, floor.max(design).min(1.0), false)
        }
    };
    Ok(StratifiedTest {
        n: used.iter().map(|(x, _)| x.len()).sum(),
        strata: used.iter().map(|(x, _)| x.len()).collect(),
        dropped,
        rho,
        p,
        min_p,
        orderings,
        exact,
        interval: stratified_bootstrap_rho(&used, resamples.clamp(1, 2000), seed),
    })
}

/// Percentile 95% interval of the mean within-stratum rho, resampling points with replacement
/// within each stratum; resamples where a stratum loses its variation are skipped. `None` when
/// fewer than half the resamples are defined.
fn stratified_bootstrap_rho(
    strata: &[(Vec<f64>, Vec<f64>)],
    resamples: usize,
    seed: u64,
) -> Option<(f64, f64)> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5eed_b007);
    let mut stats = Vec::with_capacity(resamples);
    'outer: for _ in 0..resamples {
        let mut sum = 0.0;
        for (x, y) in strata {
            let n = x.len();
            let (mut bx, mut by) = (Vec::with_capacity(n), Vec::with_capacity(n));
            for _ in 0..n {
                let i = rng.random_range(0..n);
                bx.push(x[i]);
                by.push(y[i]);
            }
            match spearman(&bx, &by) {
                Some(r) => sum += r,
                None => continue 'outer,
            }
        }
        stats.push(sum / strata.len() as f64);
    }
    if 2 * stats.len() < resamples {
        return None;
    }
    stats.sort_unstable_by(f64::total_cmp);
    Some((
        quantile_sorted(&stats, 0.025),
        quantile_sorted(&stats, 0.975),
    ))
}

/// AUROC of `scores` predicting `outcomes` (`true` = positive) counting only pairs of the same
/// stratum: `sum_s U_s / sum_s n_pos_s n_neg_s`, ties half. Strata with one class only add
/// nothing. With one stratum it is the ordinary AUROC.
///
/// Errors: lengths differ, a non-finite score, or no stratum holds both classes.
pub fn stratified_auroc(
    scores: &[f64],
    outcomes: &[bool],
    strata: &[u64],
) -> Result<f64, AnalysisError> {
    if scores.len() != outcomes.len() || scores.len() != strata.len() {
        return Err(AnalysisError::LengthMismatch {
            what: "scores, outcomes and strata",
            left: scores.len(),
            right: outcomes.len().min(strata.len()),
        });
    }
    super::check_finite("scores", scores)?;
    let idx: Vec<usize> = (0..scores.len()).collect();
    stratified_auroc_of(scores, outcomes, strata, &idx).ok_or_else(|| AnalysisError::Undefined {
        statistic: "stratified AUROC",
        reason: "no stratum holds both a positive and a negative outcome".into(),
    })
}

/// Stratified AUROC over the items `idx` (repeats allowed: a bootstrap resample).
fn stratified_auroc_of(
    scores: &[f64],
    outcomes: &[bool],
    strata: &[u64],
    idx: &[usize],
) -> Option<f64> {
    let mut groups: BTreeMap<u64, Vec<usize>> = BTreeMap::new();
    for &i in idx {
        groups.entry(strata[i]).or_default().push(i);
    }
    let (mut u, mut pairs) = (0.0, 0.0);
    for items in groups.values_mut() {
        let pos = items.iter().filter(|&&i| outcomes[i]).count();
        let neg = items.len() - pos;
        if pos == 0 || neg == 0 {
            continue;
        }
        items.sort_unstable_by(|&a, &b| scores[a].total_cmp(&scores[b]));
        let mut rank_sum = 0.0;
        let mut i = 0;
        while i < items.len() {
            let mut j = i;
            while j + 1 < items.len() && scores[items[j + 1]] == scores[items[i]] {
                j += 1;
            }
            let mid = (i + j) as f64 / 2.0 + 1.0;
            rank_sum += mid * items[i..=j].iter().filter(|&&k| outcomes[k]).count() as f64;
            i = j + 1;
        }
        let p = pos as f64;
        u += rank_sum - p * (p + 1.0) / 2.0;
        pairs += p * neg as f64;
    }
    (pairs > 0.0).then(|| u / pairs)
}

/// A statistic with its cluster-bootstrap interval and two-sided p-value against a null value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ClusterEstimate {
    /// The statistic on the data.
    pub value: f64,
    /// 2.5th percentile of the resamples.
    pub lo: f64,
    /// 97.5th percentile.
    pub hi: f64,
    /// Two-sided bootstrap p-value against the null value: `min(1, 2 min(a, b))` with
    /// `a = (1 + #{T* <= null}) / (1 + R)`, `b = (1 + #{T* >= null}) / (1 + R)`.
    pub p: f64,
    /// Clusters resampled.
    pub clusters: usize,
    /// Resamples in which the statistic was defined.
    pub resamples: usize,
}

/// [`stratified_auroc`] with a percentile interval and a two-sided p-value against 0.5 from a
/// seeded bootstrap that draws whole clusters (e.g. one needle cell: a model instance, length
/// and depth) with replacement, since trials of one cell are not independent.
///
/// Errors: as [`stratified_auroc`], `resamples == 0`, or no resample defined.
pub fn cluster_bootstrap_auroc(
    scores: &[f64],
    outcomes: &[bool],
    strata: &[u64],
    clusters: &[u64],
    resamples: usize,
    seed: u64,
) -> Result<ClusterEstimate, AnalysisError> {
    let value = stratified_auroc(scores, outcomes, strata)?;
    if clusters.len() != scores.len() {
        return Err(AnalysisError::LengthMismatch {
            what: "scores and clusters",
            left: scores.len(),
            right: clusters.len(),
        });
    }
    if resamples == 0 {
        return Err(AnalysisError::InvalidParameter {
            name: "bootstrap resamples",
            value: "0".into(),
            reason: "must be at least 1",
        });
    }
    let mut members: BTreeMap<u64, Vec<usize>> = BTreeMap::new();
    for (i, c) in clusters.iter().enumerate() {
        members.entry(*c).or_default().push(i);
    }
    let groups: Vec<Vec<usize>> = members.into_values().collect();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut stats = Vec::with_capacity(resamples);
    let mut idx = Vec::with_capacity(scores.len());
    for _ in 0..resamples {
        idx.clear();
        for _ in 0..groups.len() {
            idx.extend_from_slice(&groups[rng.random_range(0..groups.len())]);
        }
        if let Some(a) = stratified_auroc_of(scores, outcomes, strata, &idx) {
            stats.push(a);
        }
    }
    if stats.is_empty() {
        return Err(AnalysisError::Undefined {
            statistic: "stratified AUROC",
            reason: format!("undefined in all {resamples} bootstrap resamples"),
        });
    }
    stats.sort_unstable_by(f64::total_cmp);
    let r = stats.len() as f64;
    let below = stats.iter().filter(|s| **s <= 0.5).count() as f64;
    let above = stats.iter().filter(|s| **s >= 0.5).count() as f64;
    Ok(ClusterEstimate {
        value,
        lo: quantile_sorted(&stats, 0.025),
        hi: quantile_sorted(&stats, 0.975),
        p: (2.0 * (1.0 + below.min(above)) / (1.0 + r)).min(1.0),
        clusters: groups.len(),
        resamples: stats.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holm_adjusts_in_order_and_stays_monotone() {
        let adj = holm(&[0.01, 0.04, 0.03, 0.5]);
        // Sorted: 0.01 x4 = 0.04, 0.03 x3 = 0.09, 0.04 x2 = 0.08 -> 0.09 (monotone), 0.5 x1.
        let want = [0.04, 0.09, 0.09, 0.5];
        for (a, w) in adj.iter().zip(want) {
            assert!((a - w).abs() < 1e-12, "{adj:?}");
        }
        assert_eq!(holm(&[0.6, 0.9]), vec![1.0, 1.0]);
        assert!(holm(&[]).is_empty());
    }

    #[test]
    fn two_arms_two_seeds_cannot_reach_alpha() {
        // 2 arms x 2 seeds, perfectly ordered: 2! x 2! = 4 orderings, the observed one is the
        // most extreme: two-sided p = 2/4, and no data could do better.
        let s = vec![(vec![256.0, 1024.0], vec![3.0, 2.0]); 2];
        let t = stratified_rank_test(&s, 1000, 0).unwrap();
        assert_eq!((t.orderings, t.exact, t.n), (4, true, 4));
        assert_eq!(t.rho, -1.0);
        assert!(
            (t.p - 0.5).abs() < 1e-12 && (t.min_p - 0.5).abs() < 1e-12,
            "{t:?}"
        );
    }

    #[test]
    fn three_arms_three_seeds_can_reach_alpha() {
        // (3!)^3 = 216 orderings; a perfect order in every seed: p = 2/216.
        let s = vec![(vec![128.0, 256.0, 1024.0], vec![3.0, 2.0, 1.0]); 3];
        let t = stratified_rank_test(&s, 1000, 0).unwrap();
        assert_eq!(t.orderings, 216);
        assert!((t.p - 2.0 / 216.0).abs() < 1e-12, "{t:?}");
        assert!((t.min_p - 2.0 / 216.0).abs() < 1e-12, "{t:?}");
        // One seed reversed: mean rho = (-1 - 1 + 1) / 3, far from significant.
        let mut s2 = s.clone();
        s2[2].1 = vec![1.0, 2.0, 3.0];
        let t2 = stratified_rank_test(&s2, 1000, 0).unwrap();
        assert!((t2.rho + 1.0 / 3.0).abs() < 1e-12 && t2.p > 0.3, "{t2:?}");
    }

    #[test]
    fn within_stratum_permutation_ignores_between_stratum_shifts() {
        // Seed 2's models all have a higher y: pooled, x and y look associated; within seeds
        // the order is reversed in one and kept in the other, so the mean rho is 0.
        let s = vec![
            (vec![1.0, 2.0, 3.0, 4.0], vec![1.0, 2.0, 3.0, 4.0]),
            (vec![1.0, 2.0, 3.0, 4.0], vec![14.0, 13.0, 12.0, 11.0]),
        ];
        let t = stratified_rank_test(&s, 1000, 0).unwrap();
        assert!(t.rho.abs() < 1e-12 && t.p == 1.0, "{t:?}");
        // A constant stratum is dropped, not counted.
        let s = vec![
            (vec![1.0, 2.0, 3.0, 4.0], vec![1.0, 2.0, 3.0, 4.0]),
            (vec![1.0, 2.0], vec![5.0, 5.0]),
        ];
        let t = stratified_rank_test(&s, 1000, 0).unwrap();
        assert_eq!((t.strata.clone(), t.dropped.clone()), (vec![4], vec![2]));
        assert!((t.p - 2.0 / 24.0).abs() < 1e-12, "{t:?}");
        assert!(stratified_rank_test(&[(vec![1.0], vec![2.0])], 10, 0).is_err());
    }

    #[test]
    fn monte_carlo_detects_a_planted_association() {
        // 9 models x 3 seeds: (9!)^3 orderings, Monte Carlo. y = x plus small noise.
        let strata: Vec<(Vec<f64>, Vec<f64>)> = (0..3)
            .map(|s| {
                let x: Vec<f64> = (0..9).map(f64::from).collect();
                let y = x
                    .iter()
                    .map(|v| v + 0.3 * ((v * 7.0 + s as f64).sin()))
                    .collect();
                (x, y)
            })
            .collect();
        let t = stratified_rank_test(&strata, 4000, 1).unwrap();
        assert!(!t.exact);
        assert!(t.rho > 0.9 && t.p < 0.001, "{t:?}");
        assert!((t.min_p - 2.0 / 4001.0).abs() < 1e-12);
        let (lo, hi) = t.interval.unwrap();
        assert!(lo > 0.5 && hi <= 1.0, "{lo} {hi}");
        assert_eq!(t, stratified_rank_test(&strata, 4000, 1).unwrap(), "seeded");
    }

    /// Trials of a study where longer contexts have both higher entropy and more failures, but
    /// within each length entropy says nothing about failure.
    fn confounded() -> (Vec<f64>, Vec<bool>, Vec<u64>, Vec<u64>) {
        let (mut s, mut o, mut st, mut cl) = (vec![], vec![], vec![], vec![]);
        for len in 0..4u64 {
            for depth in 0..5u64 {
                for trial in 0..8u64 {
                    // Failure rate grows with length; entropy = length + a depth term, the
                    // same for the cell's passes and failures.
                    let fail = trial < 2 * len;
                    s.push(len as f64 + depth as f64 / 10.0);
                    o.push(fail);
                    st.push(len);
                    cl.push(len * 10 + depth);
                }
            }
        }
        (s, o, st, cl)
    }

    #[test]
    fn stratified_auroc_removes_a_length_confound() {
        let (s, o, st, cl) = confounded();
        let pooled = super::super::auroc::auroc(&s, &o).unwrap();
        assert!(pooled > 0.75, "pooled AUROC is inflated: {pooled}");
        let est = cluster_bootstrap_auroc(&s, &o, &st, &cl, 1000, 3).unwrap();
        assert!((est.value - 0.5).abs() < 1e-12, "{est:?}");
        // Every resample ties at 0.5: the interval holds 0.5 and p is 1.
        assert!(est.lo <= 0.5 && est.hi >= 0.5 && est.p == 1.0, "{est:?}");
        assert_eq!(est.clusters, 20);
    }

    #[test]
    fn stratified_auroc_detects_a_planted_effect() {
        let (mut s, o, st, cl) = confounded();
        for (v, f) in s.iter_mut().zip(&o) {
            if *f {
                *v += 0.5;
            }
        }
        let est = cluster_bootstrap_auroc(&s, &o, &st, &cl, 1000, 3).unwrap();
        assert!(est.value > 0.9 && est.lo > 0.5, "{est:?}");
        assert!((est.p - 2.0 / 1001.0).abs() < 1e-12, "{est:?}");
        // One stratum equals the plain AUROC.
        let one = vec![0u64; s.len()];
        let plain = super::super::auroc::auroc(&s, &o).unwrap();
        assert!((stratified_auroc(&s, &o, &one).unwrap() - plain).abs() < 1e-12);
        assert!(stratified_auroc(&[1.0, 2.0], &[true, false], &[0, 1]).is_err());
    }
}
