//! Small statistics for the findings: mean and spread over seeds, Spearman's rank correlation
//! and its one-sided permutation test.
//!
//! The findings compare a handful of models (4 methods, 3 ablation arms, times 2-3 seeds), so the
//! test must be exact at small n: for up to 8 observations every permutation is enumerated;
//! beyond, a seeded Monte Carlo estimate `(1 + hits) / (1 + R)` is used (never 0).

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

/// Mean of a non-empty slice (NaN for an empty one).
pub fn mean(values: &[f64]) -> f64 {
    values.iter().sum::<f64>() / values.len() as f64
}

/// Sample standard deviation (n - 1); `None` below two values.
pub fn sd(values: &[f64]) -> Option<f64> {
    if values.len() < 2 {
        return None;
    }
    let m = mean(values);
    let ss: f64 = values.iter().map(|v| (v - m) * (v - m)).sum();
    Some((ss / (values.len() - 1) as f64).sqrt())
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

fn pearson(x: &[f64], y: &[f64]) -> Option<f64> {
    let (mx, my) = (mean(x), mean(y));
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

/// Spearman's rho: Pearson's r of the mid-ranks; `None` when either side is constant or the
/// lengths differ or fewer than 2 points.
pub fn spearman(x: &[f64], y: &[f64]) -> Option<f64> {
    if x.len() != y.len() || x.len() < 2 {
        return None;
    }
    pearson(&ranks(x), &ranks(y))
}

/// A rank correlation with its one-sided permutation p-value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RankTest {
    /// Number of observations.
    pub n: usize,
    /// Spearman's rho.
    pub rho: f64,
    /// `P(sign * rho_perm >= sign * rho)` under random pairing; `sign` is the expected
    /// direction.
    pub p: f64,
    /// Whether `p` was enumerated exactly (n <= 8) or estimated.
    pub exact: bool,
}

/// Spearman's rho of `x` and `y` and the one-sided permutation p-value in the direction
/// `sign` (+1: expect a positive association, -1: negative). `None` when rho is undefined.
pub fn rank_test(x: &[f64], y: &[f64], sign: f64, resamples: usize, seed: u64) -> Option<RankTest> {
    let rho = spearman(x, y)?;
    let rx = ranks(x);
    let ry = ranks(y);
    let observed = sign * rho;
    // Compare with a tolerance: permutations that tie the observed rho count as extreme.
    let extreme = |perm: &[f64]| pearson(&rx, perm).is_some_and(|r| sign * r >= observed - 1e-12);
    let n = x.len();
    if n <= 8 {
        let mut perm = ry.clone();
        let (mut hits, mut total) = (0u64, 0u64);
        permute(&mut perm, 0, &mut |p| {
            total += 1;
            if extreme(p) {
                hits += 1;
            }
        });
        Some(RankTest {
            n,
            rho,
            p: hits as f64 / total as f64,
            exact: true,
        })
    } else {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut perm = ry.clone();
        let mut hits = 0usize;
        for _ in 0..resamples.max(1) {
            perm.shuffle(&mut rng);
            if extreme(&perm) {
                hits += 1;
            }
        }
        Some(RankTest {
            n,
            rho,
            p: (1 + hits) as f64 / (1 + resamples.max(1)) as f64,
            exact: false,
        })
    }
}

/// Calls `f` on every permutation of `v[k..]` (Heap-style swaps, restored afterwards).
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

/// `mean ± sd` with `decimals` decimals, the sd only with two or more values; `–` for none.
pub fn format_spread(values: &[f64], decimals: usize) -> String {
    if values.is_empty() {
        return crate::report::tables::MISSING.to_string();
    }
    let m = crate::report::tables::format_value(Some(mean(values)), decimals);
    match sd(values) {
        Some(s) => format!(
            "{m} ± {}",
            crate::report::tables::format_value(Some(s), decimals)
        ),
        None => m,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_and_ranks() {
        assert_eq!(mean(&[1.0, 2.0, 3.0]), 2.0);
        assert_eq!(sd(&[1.0, 2.0, 3.0]), Some(1.0));
        assert_eq!(sd(&[1.0]), None);
        assert_eq!(ranks(&[10.0, 30.0, 20.0, 20.0]), [1.0, 4.0, 2.5, 2.5]);
        assert_eq!(format_spread(&[1.0, 2.0, 3.0], 2), "2.00 ± 1.00");
        assert_eq!(format_spread(&[1.234], 1), "1.2");
        assert_eq!(format_spread(&[], 1), "–");
    }

    #[test]
    fn spearman_and_exact_permutation_p() {
        let x = [1.0, 2.0, 3.0, 4.0];
        assert_eq!(spearman(&x, &[10.0, 20.0, 30.0, 40.0]), Some(1.0));
        assert_eq!(spearman(&x, &[4.0, 3.0, 2.0, 1.0]), Some(-1.0));
        assert_eq!(spearman(&x, &[1.0, 1.0, 1.0, 1.0]), None);
        // Perfect order of 4: only the identity reaches rho = 1, p = 1/24.
        let t = rank_test(&x, &[1.0, 5.0, 7.0, 9.0], 1.0, 0, 0).unwrap();
        assert!(t.exact && (t.p - 1.0 / 24.0).abs() < 1e-12, "{t:?}");
        // One swap: rho = 0.8, reached by 4 of 24 orders.
        let t = rank_test(&x, &[1.0, 2.0, 4.0, 3.0], 1.0, 0, 0).unwrap();
        assert!(
            (t.rho - 0.8).abs() < 1e-12 && (t.p - 4.0 / 24.0).abs() < 1e-12,
            "{t:?}"
        );
        // Testing the other direction of a perfect positive order: p = 1.
        let t = rank_test(&x, &[1.0, 5.0, 7.0, 9.0], -1.0, 0, 0).unwrap();
        assert_eq!(t.p, 1.0);
        // Three points can never reach p < 1/6.
        let t = rank_test(&[1.0, 2.0, 3.0], &[3.0, 2.0, 1.0], -1.0, 0, 0).unwrap();
        assert!((t.p - 1.0 / 6.0).abs() < 1e-12);
    }

    #[test]
    fn monte_carlo_p_for_many_points() {
        let x: Vec<f64> = (0..12).map(f64::from).collect();
        let y: Vec<f64> = x.iter().map(|v| v * 2.0 + 1.0).collect();
        let t = rank_test(&x, &y, 1.0, 2000, 7).unwrap();
        assert!(!t.exact);
        assert_eq!(t.rho, 1.0);
        assert!((t.p - 1.0 / 2001.0).abs() < 1e-12, "{t:?}");
        let again = rank_test(&x, &y, 1.0, 2000, 7).unwrap();
        assert_eq!(t, again, "seeded");
    }
}
