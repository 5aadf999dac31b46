//! Log-spaced relative-distance buckets and the mean attention-by-distance profile.
//!
//! The paper's Fig. 2 plots how much attention a query pays to keys at each relative distance,
//! with a log distance axis. Distances are grouped into buckets that double (or grow by any
//! `base`) in width, so a profile has about `log_base(length)` entries and profiles at different
//! lengths share their first buckets.
//!
//! Bucket 0 is distance 0 (the query attending to itself); bucket `k >= 1` holds distances
//! `[base^(k-1), base^k - 1]`. With base 2: `0 | 1 | 2-3 | 4-7 | 8-15 | ...`; with base 4:
//! `0 | 1-3 | 4-15 | 16-63 | ...`.

use super::AnalysisError;

/// A log-spaced bucketing of non-negative relative distances.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DistanceBuckets {
    base: u64,
}

impl Default for DistanceBuckets {
    fn default() -> Self {
        Self { base: 2 }
    }
}

impl DistanceBuckets {
    /// Buckets growing by `base` (at least 2).
    pub fn new(base: u64) -> Result<Self, AnalysisError> {
        if base < 2 {
            return Err(AnalysisError::InvalidParameter {
                name: "distance bucket base",
                value: base.to_string(),
                reason: "must be at least 2",
            });
        }
        Ok(Self { base })
    }

    /// The growth factor of the bucket widths.
    pub fn base(&self) -> u64 {
        self.base
    }

    /// The bucket holding `distance`.
    pub fn bucket(&self, distance: u64) -> usize {
        if distance == 0 {
            return 0;
        }
        if self.base == 2 {
            // 1 + floor(log2 d)
            return (u64::BITS - distance.leading_zeros()) as usize;
        }
        // 1 + floor(log_base d), in integers to avoid rounding at exact powers.
        let mut bucket = 1;
        let mut upper = self.base; // exclusive upper bound of `bucket`
        while distance >= upper {
            bucket += 1;
            upper = match upper.checked_mul(self.base) {
                Some(u) => u,
                None => break,
            };
        }
        bucket
    }

    /// Inclusive `(lowest, highest)` distance of a bucket. The top bucket that reaches past
    /// `u64::MAX` ends at `u64::MAX`.
    pub fn edges(&self, bucket: usize) -> (u64, u64) {
        if bucket == 0 {
            return (0, 0);
        }
        let lo = self.pow(bucket - 1);
        let hi = self.pow(bucket).map_or(u64::MAX, |p| p - 1);
        (lo.unwrap_or(u64::MAX), hi)
    }

    /// Number of buckets needed for distances `0..=max_distance`, i.e. for a sequence of
    /// `max_distance + 1` tokens.
    pub fn count_for_max_distance(&self, max_distance: u64) -> usize {
        self.bucket(max_distance) + 1
    }

    /// Number of buckets needed for every distance in a causal sequence of `len` tokens
    /// (at least 1, for `len <= 1`).
    pub fn count_for_len(&self, len: u64) -> usize {
        self.count_for_max_distance(len.saturating_sub(1))
    }

    /// The bucket's distance range: `"0"`, `"1"`, `"2-3"`, `"4-7"`, ..., `"1024-2047"`.
    pub fn label(&self, bucket: usize) -> String {
        let (lo, hi) = self.edges(bucket);
        if lo == hi {
            lo.to_string()
        } else {
            format!("{lo}-{hi}")
        }
    }

    /// The bucket's lowest distance, compact (`"0"`, `"1"`, `"2"`, `"4"`, ..., `"1K"`, `"1M"`):
    /// tick labels for a plot with the bucket index on the x axis, which reads as a log axis.
    pub fn short_label(&self, bucket: usize) -> String {
        compact(self.edges(bucket).0)
    }

    /// `base^exp`, or `None` on overflow.
    fn pow(&self, exp: usize) -> Option<u64> {
        let exp = u32::try_from(exp).ok()?;
        self.base.checked_pow(exp)
    }
}

/// 1024 -> "1K" when exact, else the plain number.
fn compact(n: u64) -> String {
    const K: u64 = 1024;
    const M: u64 = 1024 * 1024;
    if n >= M && n.is_multiple_of(M) {
        format!("{}M", n / M)
    } else if n >= K && n.is_multiple_of(K) {
        format!("{}K", n / K)
    } else {
        n.to_string()
    }
}

/// Accumulated attention by relative-distance bucket, over any number of query rows.
///
/// For every (query, key) pair it adds the attention probability to the pair's bucket (`mass`)
/// and counts the pair (`pairs`). Add one profile per layer (all heads into it), and
/// [`merge`](Self::merge) layers for the all-layer average. Two summaries follow:
///
/// - [`mean_probability`](Self::mean_probability): mean attention probability of a key in the
///   bucket, `mass / pairs`: the Fig. 2 curve and the input to the JS comparison.
/// - [`mass_distribution`](Self::mass_distribution): share of all attention that lands in each
///   bucket, `mass / total mass` (each query row contributes 1 in total).
#[derive(Debug, Clone, PartialEq)]
pub struct DistanceProfile {
    buckets: DistanceBuckets,
    mass: Vec<f64>,
    pairs: Vec<u64>,
    rows: u64,
}

impl DistanceProfile {
    /// An empty profile over the given bucketing.
    pub fn new(buckets: DistanceBuckets) -> Self {
        Self {
            buckets,
            mass: Vec::new(),
            pairs: Vec::new(),
            rows: 0,
        }
    }

    /// Rebuilds a profile from stored columns (e.g. the `attention_distance` table of a
    /// reference model), bucket `k` at index `k`.
    ///
    /// Errors: `mass` and `pairs` differ in length, or a mass is negative or non-finite.
    pub fn from_parts(
        buckets: DistanceBuckets,
        mass: Vec<f64>,
        pairs: Vec<u64>,
        rows: u64,
    ) -> Result<Self, AnalysisError> {
        if mass.len() != pairs.len() {
            return Err(AnalysisError::LengthMismatch {
                what: "distance profile mass and pairs",
                left: mass.len(),
                right: pairs.len(),
            });
        }
        super::check_finite("distance profile mass", &mass)?;
        if let Some(index) = mass.iter().position(|&m| m < 0.0) {
            return Err(AnalysisError::Negative {
                what: "distance profile mass",
                index,
                value: mass[index],
            });
        }
        Ok(Self {
            buckets,
            mass,
            pairs,
            rows,
        })
    }

    /// The bucketing.
    pub fn buckets(&self) -> DistanceBuckets {
        self.buckets
    }

    /// Number of buckets with at least one pair (always a prefix: bucket 0 up to the largest
    /// distance seen).
    pub fn len(&self) -> usize {
        self.mass.len()
    }

    /// Whether no pair has been added.
    pub fn is_empty(&self) -> bool {
        self.mass.is_empty()
    }

    /// Summed attention probability per bucket.
    pub fn mass(&self) -> &[f64] {
        &self.mass
    }

    /// Number of (query, key) pairs per bucket.
    pub fn pairs(&self) -> &[u64] {
        &self.pairs
    }

    /// Number of query rows added.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    fn ensure(&mut self, buckets: usize) {
        if self.mass.len() < buckets {
            self.mass.resize(buckets, 0.0);
            self.pairs.resize(buckets, 0);
        }
    }

    /// Adds one query's attention row under a causal mask: `probs[j]` is the probability of key
    /// `j` for the query at position `probs.len() - 1`, so key `j` is at distance
    /// `probs.len() - 1 - j`. Pass the row up to and including the query position.
    ///
    /// Errors (leaving the profile unchanged): an empty row, a negative or non-finite entry.
    pub fn add_causal_row<T: Copy + Into<f64>>(
        &mut self,
        probs: &[T],
    ) -> Result<(), AnalysisError> {
        super::check_weights("attention row", probs)?;
        let query = probs.len() - 1;
        let nb = self.buckets.count_for_max_distance(query as u64);
        self.ensure(nb);
        // Keys of bucket b are a contiguous slice: distances [lo, hi] -> keys [query-hi, query-lo].
        for b in 0..nb {
            let (lo, hi) = self.buckets.edges(b);
            let lo = lo as usize;
            let hi = (hi.min(query as u64)) as usize;
            let keys = &probs[query - hi..=query - lo];
            self.mass[b] += keys.iter().map(|&p| p.into()).sum::<f64>();
            self.pairs[b] += keys.len() as u64;
        }
        self.rows += 1;
        Ok(())
    }

    /// Adds every row of a causal attention matrix `[seq, seq]` stored row-major (row = query,
    /// column = key); entries above the diagonal are ignored.
    ///
    /// Errors: `probs.len() != seq * seq`, or a bad entry (see [`add_causal_row`](Self::add_causal_row)).
    pub fn add_causal_matrix<T: Copy + Into<f64>>(
        &mut self,
        probs: &[T],
        seq: usize,
    ) -> Result<(), AnalysisError> {
        if seq.checked_mul(seq) != Some(probs.len()) {
            return Err(AnalysisError::LengthMismatch {
                what: "attention matrix (entries vs seq * seq)",
                left: probs.len(),
                right: seq.saturating_mul(seq),
            });
        }
        for q in 0..seq {
            self.add_causal_row(&probs[q * seq..q * seq + q + 1])?;
        }
        Ok(())
    }

    /// Adds one (query, key) pair at `distance` with attention `prob`, for callers that have
    /// already reduced their rows. Does not count a row.
    pub fn add_pair(&mut self, distance: u64, prob: f64) -> Result<(), AnalysisError> {
        if !prob.is_finite() || prob < 0.0 {
            return Err(AnalysisError::InvalidParameter {
                name: "attention probability",
                value: prob.to_string(),
                reason: "must be finite and non-negative",
            });
        }
        let b = self.buckets.bucket(distance);
        self.ensure(b + 1);
        self.mass[b] += prob;
        self.pairs[b] += 1;
        Ok(())
    }

    /// Adds another profile (another layer, head or batch) into this one.
    ///
    /// Errors: the two use different bucketings.
    pub fn merge(&mut self, other: &DistanceProfile) -> Result<(), AnalysisError> {
        if other.buckets != self.buckets {
            return Err(AnalysisError::InvalidParameter {
                name: "distance bucket base of merged profile",
                value: other.buckets.base.to_string(),
                reason: "differs from this profile's base",
            });
        }
        self.ensure(other.len());
        for (b, (&m, &n)) in other.mass.iter().zip(&other.pairs).enumerate() {
            self.mass[b] += m;
            self.pairs[b] += n;
        }
        self.rows += other.rows;
        Ok(())
    }

    /// Mean attention probability of a key in each bucket (`mass / pairs`); 0 for a bucket
    /// without pairs (which only [`add_pair`](Self::add_pair) can leave inside the prefix).
    pub fn mean_probability(&self) -> Vec<f64> {
        self.mass
            .iter()
            .zip(&self.pairs)
            .map(|(&m, &n)| if n == 0 { 0.0 } else { m / n as f64 })
            .collect()
    }

    /// Share of the total attention mass in each bucket (sums to 1).
    ///
    /// Errors: the profile holds no mass.
    pub fn mass_distribution(&self) -> Result<Vec<f64>, AnalysisError> {
        super::divergence::normalize("attention distance profile", &self.mass)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_two_buckets_and_edges() {
        let b = DistanceBuckets::default();
        let expected = [
            (0, 0),
            (1, 1),
            (2, 2),
            (3, 2),
            (4, 3),
            (7, 3),
            (8, 4),
            (1023, 10),
            (1024, 11),
        ];
        for (d, bucket) in expected {
            assert_eq!(b.bucket(d), bucket, "distance {d}");
        }
        assert_eq!(b.edges(0), (0, 0));
        assert_eq!(b.edges(1), (1, 1));
        assert_eq!(b.edges(2), (2, 3));
        assert_eq!(b.edges(3), (4, 7));
        assert_eq!(b.edges(11), (1024, 2047));
        assert_eq!(b.edges(64), (1 << 63, u64::MAX));
        assert_eq!(b.bucket(u64::MAX), 64);
        // Edges and bucket() agree everywhere.
        for k in 0..20 {
            let (lo, hi) = b.edges(k);
            assert_eq!(b.bucket(lo), k);
            assert_eq!(b.bucket(hi), k);
        }
    }

    #[test]
    fn other_bases() {
        let b = DistanceBuckets::new(4).unwrap();
        assert_eq!(b.edges(1), (1, 3));
        assert_eq!(b.edges(2), (4, 15));
        assert_eq!(
            [0, 1, 3, 4, 15, 16].map(|d| b.bucket(d)),
            [0, 1, 1, 2, 2, 3]
        );
        let b = DistanceBuckets::new(10).unwrap();
        assert_eq!(
            [9, 10, 99, 100, 999, 1000].map(|d| b.bucket(d)),
            [1, 2, 2, 3, 3, 4]
        );
        assert_eq!(b.bucket(u64::MAX), 20);
        assert_eq!(b.edges(20).1, u64::MAX);
        for k in 0..20 {
            let (lo, hi) = b.edges(k);
            assert_eq!((b.bucket(lo), b.bucket(hi)), (k, k), "bucket {k}");
        }
        let err = DistanceBuckets::new(1).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid distance bucket base = 1: must be at least 2"
        );
    }

    #[test]
    fn counts_and_labels() {
        let b = DistanceBuckets::default();
        assert_eq!(b.count_for_len(1), 1);
        assert_eq!(b.count_for_len(2), 2);
        assert_eq!(b.count_for_len(4), 3);
        assert_eq!(b.count_for_len(128), 8); // max distance 127 -> bucket 7 (64-127)
        assert_eq!(b.count_for_len(129), 9);
        let labels: Vec<String> = (0..5).map(|k| b.label(k)).collect();
        assert_eq!(labels, ["0", "1", "2-3", "4-7", "8-15"]);
        assert_eq!(b.label(11), "1024-2047");
        let short: Vec<String> = [0, 1, 2, 3, 11, 12, 21].map(|k| b.short_label(k)).into();
        assert_eq!(short, ["0", "1", "2", "4", "1K", "2K", "1M"]);
        assert_eq!(DistanceBuckets::new(10).unwrap().short_label(4), "1000");
    }

    #[test]
    fn uniform_causal_rows_give_hand_computed_profile() {
        let b = DistanceBuckets::default();
        let mut profile = DistanceProfile::new(b);
        // Query 0: one key. Query 3: four keys at distances 3,2,1,0 with 1/4 each.
        profile.add_causal_row(&[1.0]).unwrap();
        profile
            .add_causal_row(&[0.25f32, 0.25, 0.25, 0.25])
            .unwrap();
        assert_eq!(profile.rows(), 2);
        assert_eq!(profile.pairs(), &[2, 1, 2]);
        assert_eq!(profile.mass(), &[1.25, 0.25, 0.5]);
        assert_eq!(profile.mean_probability(), vec![0.625, 0.25, 0.25]);
        let dist = profile.mass_distribution().unwrap();
        assert_eq!(dist, vec![0.625, 0.125, 0.25]);
    }

    #[test]
    fn row_distances_run_backwards_from_the_query() {
        let mut profile = DistanceProfile::new(DistanceBuckets::default());
        // Query 4 puts all attention on key 0: distance 4, bucket 3 (4-7).
        profile.add_causal_row(&[1.0, 0.0, 0.0, 0.0, 0.0]).unwrap();
        assert_eq!(profile.mass(), &[0.0, 0.0, 0.0, 1.0]);
        assert_eq!(profile.pairs(), &[1, 1, 2, 1]);
    }

    #[test]
    fn matrix_equals_rows_and_pairs() {
        let seq = 37;
        // A deterministic causal matrix: each row a normalised decaying pattern.
        let mut matrix = vec![0.0f64; seq * seq];
        for q in 0..seq {
            let z: f64 = (0..=q).map(|k| 1.0 / (1.0 + (q - k) as f64)).sum();
            for k in 0..=q {
                matrix[q * seq + k] = 1.0 / (1.0 + (q - k) as f64) / z;
            }
            for k in q + 1..seq {
                matrix[q * seq + k] = 99.0; // above the diagonal: ignored
            }
        }
        let b = DistanceBuckets::new(3).unwrap();
        let mut by_matrix = DistanceProfile::new(b);
        by_matrix.add_causal_matrix(&matrix, seq).unwrap();
        let mut by_pairs = DistanceProfile::new(b);
        for q in 0..seq {
            for k in 0..=q {
                by_pairs
                    .add_pair((q - k) as u64, matrix[q * seq + k])
                    .unwrap();
            }
        }
        assert_eq!(by_matrix.pairs(), by_pairs.pairs());
        for (a, c) in by_matrix.mass().iter().zip(by_pairs.mass()) {
            assert!((a - c).abs() < 1e-12);
        }
        assert_eq!(by_matrix.rows(), seq as u64);
        let total: f64 = by_matrix.mass().iter().sum();
        assert!((total - seq as f64).abs() < 1e-9, "each row has mass 1");
        assert_eq!(by_matrix.len(), b.count_for_len(seq as u64));
        assert_eq!(
            by_matrix.pairs().iter().sum::<u64>(),
            (seq * (seq + 1) / 2) as u64
        );
    }

    #[test]
    fn merge_adds_and_checks_bucketing() {
        let b = DistanceBuckets::default();
        let mut a = DistanceProfile::new(b);
        a.add_causal_row(&[0.5, 0.5]).unwrap();
        let mut c = DistanceProfile::new(b);
        c.add_causal_row(&[0.0, 0.0, 0.0, 0.0, 1.0]).unwrap();
        a.merge(&c).unwrap();
        assert_eq!(a.rows(), 2);
        assert_eq!(a.mass(), &[1.5, 0.5, 0.0, 0.0]);
        assert_eq!(a.pairs(), &[2, 2, 2, 1]);
        let other = DistanceProfile::new(DistanceBuckets::new(4).unwrap());
        assert!(a.merge(&other).is_err());
    }

    #[test]
    fn from_parts_round_trips_and_validates() {
        let b = DistanceBuckets::default();
        let mut p = DistanceProfile::new(b);
        p.add_causal_row(&[0.1, 0.2, 0.3, 0.4]).unwrap();
        let q = DistanceProfile::from_parts(b, p.mass().to_vec(), p.pairs().to_vec(), p.rows())
            .unwrap();
        assert_eq!(p, q);
        assert!(matches!(
            DistanceProfile::from_parts(b, vec![1.0], vec![1, 2], 1),
            Err(AnalysisError::LengthMismatch {
                left: 1,
                right: 2,
                ..
            })
        ));
        assert!(matches!(
            DistanceProfile::from_parts(b, vec![1.0, -1.0], vec![1, 2], 1),
            Err(AnalysisError::Negative { index: 1, .. })
        ));
    }

    #[test]
    fn bad_rows_are_rejected_without_side_effects() {
        let mut p = DistanceProfile::new(DistanceBuckets::default());
        let empty: [f64; 0] = [];
        assert!(matches!(
            p.add_causal_row(&empty),
            Err(AnalysisError::Empty { .. })
        ));
        assert!(matches!(
            p.add_causal_row(&[0.5, f64::NAN]),
            Err(AnalysisError::NonFinite { index: 1, .. })
        ));
        assert!(matches!(
            p.add_causal_row(&[-0.5, 1.5]),
            Err(AnalysisError::Negative { index: 0, .. })
        ));
        assert!(p.add_pair(3, -1.0).is_err());
        assert!(matches!(
            p.add_causal_matrix(&[1.0, 0.0, 0.5], 2),
            Err(AnalysisError::LengthMismatch {
                left: 3,
                right: 4,
                ..
            })
        ));
        assert!(p.is_empty());
        assert_eq!(p.rows(), 0);
        assert!(p.mass_distribution().is_err());
    }
}
