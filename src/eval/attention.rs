//! Attention analysis of validation windows at one context length: entropy by query position
//! (`attention_entropy`), mean attention by relative distance (`attention_distance`, the
//! paper's Fig. 2) and the Jensen-Shannon divergence of that profile from a reference model's
//! (`attention_divergence`, the paper's Table 1).
//!
//! Both statistics come from one blockwise forward per batch of windows
//! ([`Llama::attention_distance`]: per layer, one attention pass that gives the output, each
//! query's entropy and the probability mass by distance bucket), so memory is linear in length
//! and the analysis costs less than a perplexity forward (no LM head) on the CPU. Query positions and relative
//! distances share one log-spaced bucketing ([`DistanceBuckets`], base 2): `0 | 1 | 2-3 | 4-7
//! | ...`; entropy grows roughly with the log of the number of visible keys, so log buckets
//! keep the early positions resolved.
//!
//! The divergence is computed on [`DistanceProfile::mean_probability`] over all layers and
//! heads, restricted to the buckets both profiles cover ([`align_common_support`]), in **nats**
//! (`0 <= JS <= ln 2`).

use crate::analysis::distance::{DistanceBuckets, DistanceProfile};
use crate::analysis::divergence::align_common_support;
use crate::model::{AttentionBlocks, Llama, ids_tensor};

use crate::progress::Progress;
use crate::tables::{AttentionDistanceRow, AttentionDivergenceRow, AttentionEntropyRow};

use super::{EvalError, Result};

/// The log-spaced buckets (base 2) of query positions and distances.
pub fn buckets() -> DistanceBuckets {
    DistanceBuckets::default()
}

/// Bucket edges for [`Llama::attention_distance`] covering distances `0..length`:
/// `[0, 1, 2, 4, ..., 2^k]` with `2^k >= length`.
pub fn distance_edges(length: usize) -> Vec<usize> {
    let b = buckets();
    let n = b.count_for_len(length as u64);
    let mut edges: Vec<usize> = (0..n).map(|k| b.edges(k).0 as usize).collect();
    edges.push(b.edges(n - 1).1 as usize + 1);
    edges
}

fn check_windows(windows: &[Vec<u32>], what: &str) -> Result<usize> {
    let Some(first) = windows.first() else {
        return Err(EvalError::Input(format!("{what}: no windows to analyse")));
    };
    let len = first.len();
    if len == 0 || windows.iter().any(|w| w.len() != len) {
        return Err(EvalError::Input(format!(
            "{what}: windows must be non-empty and of equal length"
        )));
    }
    Ok(len)
}

/// Entropy sums per layer, head and query bucket at one length.
struct EntropySums {
    len: usize,
    layers: usize,
    heads: usize,
    /// The query bucket of each position.
    bucket_of: Vec<usize>,
    /// `[layer][head][bucket]`.
    sum: Vec<f64>,
    /// `[bucket]`: queries summed per (layer, head).
    count: Vec<u64>,
}

impl EntropySums {
    fn new(len: usize, layers: usize, heads: usize) -> Self {
        let b = buckets();
        let nq = b.count_for_len(len as u64);
        EntropySums {
            len,
            layers,
            heads,
            bucket_of: (0..len).map(|p| b.bucket(p as u64)).collect(),
            sum: vec![0f64; layers * heads * nq],
            count: vec![0u64; nq],
        }
    }

    /// Adds one layer's entropy `[batch, heads, len]` (row-major) of `batch` windows.
    fn add_layer(&mut self, layer: usize, e: &[f32], batch: usize) {
        let (heads, len, nq) = (self.heads, self.len, self.count.len());
        for bi in 0..batch {
            for h in 0..heads {
                let row = &e[(bi * heads + h) * len..][..len];
                let base = (layer * heads + h) * nq;
                for (p, &v) in row.iter().enumerate() {
                    self.sum[base + self.bucket_of[p]] += v as f64;
                }
            }
        }
    }

    /// Counts `batch` more windows (after their layers were added).
    fn add_windows(&mut self, batch: usize) {
        for &k in &self.bucket_of {
            self.count[k] += batch as u64;
        }
    }

    /// One row per layer, head and query bucket: the mean entropy over the windows.
    fn rows(&self) -> Vec<AttentionEntropyRow> {
        let b = buckets();
        let nq = self.count.len();
        let mut rows = Vec::with_capacity(self.layers * self.heads * nq);
        for l in 0..self.layers {
            for h in 0..self.heads {
                for (k, &n) in self.count.iter().enumerate() {
                    let (lo, hi) = b.edges(k);
                    rows.push(AttentionEntropyRow {
                        length: self.len as i64,
                        layer: l as i64,
                        head: h as i64,
                        query_bucket_lo: lo as i64,
                        query_bucket_hi: (hi as usize).min(self.len - 1) as i64,
                        queries: n as i64,
                        entropy_mean: self.sum[(l * self.heads + h) * nq + k] / n as f64,
                    });
                }
            }
        }
        rows
    }
}

/// Attention by distance of a model at one length: one profile per head of each layer, per
/// layer (its heads pooled) and the all-layer profile.
#[derive(Debug, Clone, PartialEq)]
pub struct DistanceResult {
    /// The windows' length.
    pub length: usize,
    /// `[layer][head]` profiles: the per-head JS divergence compares these.
    pub heads: Vec<Vec<DistanceProfile>>,
    /// One profile per layer.
    pub layers: Vec<DistanceProfile>,
    /// All layers merged.
    pub all: DistanceProfile,
}

/// What one analysis pass over a length's windows gives.
#[derive(Debug, Clone, PartialEq)]
pub struct AttentionAnalysis {
    /// `attention_entropy` rows: mean entropy per layer, head and query bucket.
    pub entropy: Vec<AttentionEntropyRow>,
    /// The distance profiles.
    pub distance: DistanceResult,
}

/// Attention entropy by query position and attention-by-distance profiles over all windows
/// (batched `batch_size` at a time), both from one forward per batch
/// ([`Llama::attention_distance`]).
///
/// Progress: phase `attention L=<length>`, one step per window.
pub fn attention_analysis(
    model: &Llama,
    windows: &[Vec<u32>],
    blocks: AttentionBlocks,
    batch_size: usize,
    progress: &dyn Progress,
) -> Result<AttentionAnalysis> {
    let len = check_windows(windows, "attention analysis")?;
    let c = model.config();
    let (layers, heads) = (c.num_hidden_layers, c.num_attention_heads);
    let edges = distance_edges(len);
    let nb = edges.len() - 1;
    let mut entropy = EntropySums::new(len, layers, heads);
    // [layer][head][bucket]
    let mut mass = vec![vec![vec![0f64; nb]; heads]; layers];
    let mut pairs = vec![0u64; nb];
    let mut rows = 0u64;
    progress.start(&format!("attention L={len}"), windows.len() as u64);
    let device = model.device();
    for batch in windows.chunks(batch_size.max(1)) {
        let ids = ids_tensor(batch, &device)?;
        let p = model.attention_distance(ids, &edges, blocks)?;
        for (l, e) in p.entropy.iter().enumerate() {
            entropy.add_layer(l, e, batch.len());
        }
        entropy.add_windows(batch.len());
        for (m, layer) in mass.iter_mut().zip(&p.prob_sum) {
            for (mh, head) in m.iter_mut().zip(layer) {
                for (a, v) in mh.iter_mut().zip(head) {
                    *a += v;
                }
            }
        }
        for (a, &n) in pairs.iter_mut().zip(&p.pair_count) {
            *a += n;
        }
        rows += (batch.len() * len) as u64;
        progress.advance(batch.len() as u64);
    }
    let heads: Vec<Vec<DistanceProfile>> = mass
        .into_iter()
        .map(|layer| {
            layer
                .into_iter()
                .map(|m| DistanceProfile::from_parts(buckets(), m, pairs.clone(), rows))
                .collect::<std::result::Result<Vec<_>, _>>()
        })
        .collect::<std::result::Result<_, _>>()?;
    let merged = |ps: &mut dyn Iterator<Item = &DistanceProfile>| {
        let mut out = DistanceProfile::new(buckets());
        for p in ps {
            out.merge(p)?;
        }
        Ok::<_, crate::analysis::AnalysisError>(out)
    };
    let layers: Vec<DistanceProfile> = heads
        .iter()
        .map(|hs| merged(&mut hs.iter()))
        .collect::<std::result::Result<_, _>>()?;
    let all = merged(&mut layers.iter())?;
    Ok(AttentionAnalysis {
        entropy: entropy.rows(),
        distance: DistanceResult {
            length: len,
            heads,
            layers,
            all,
        },
    })
}

/// `attention_distance` rows: every head of every layer, every layer (`head` null), then the
/// all-layer mean (`layer` and `head` null).
pub fn distance_rows(result: &DistanceResult) -> Result<Vec<AttentionDistanceRow>> {
    let mut rows = Vec::new();
    let per_head = result.heads.iter().enumerate().flat_map(|(l, hs)| {
        hs.iter()
            .enumerate()
            .map(move |(h, p)| (Some(l as i64), Some(h as i64), p))
    });
    let profiles = per_head
        .chain(
            result
                .layers
                .iter()
                .enumerate()
                .map(|(l, p)| (Some(l as i64), None, p)),
        )
        .chain(std::iter::once((None, None, &result.all)));
    for (layer, head, p) in profiles {
        let mean = p.mean_probability();
        let share = p.mass_distribution()?;
        for (k, ((&m, &s), &n)) in mean.iter().zip(&share).zip(p.pairs()).enumerate() {
            let (lo, hi) = p.buckets().edges(k);
            rows.push(AttentionDistanceRow {
                length: result.length as i64,
                layer,
                head,
                bucket: k as i64,
                distance_lo: lo as i64,
                distance_hi: (hi as usize).min(result.length - 1) as i64,
                mean_prob: m,
                mass: s,
                pairs: n as i64,
            });
        }
    }
    Ok(rows)
}

/// The `attention_divergence` row of a model's all-layer profile against a reference's.
pub fn divergence_row(
    model: &DistanceResult,
    reference: &DistanceResult,
    reference_instance: &str,
) -> Result<AttentionDivergenceRow> {
    let aligned = align_common_support(
        &reference.all.mean_probability(),
        &model.all.mean_probability(),
    )?;
    Ok(AttentionDivergenceRow {
        length: model.length as i64,
        reference_instance: reference_instance.to_string(),
        reference_length: reference.length as i64,
        js_nats: aligned.js()?,
        common_buckets: aligned.buckets as i64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edges_cover_every_distance() {
        assert_eq!(distance_edges(1), vec![0, 1]);
        assert_eq!(distance_edges(2), vec![0, 1, 2]);
        assert_eq!(distance_edges(5), vec![0, 1, 2, 4, 8]);
        assert_eq!(distance_edges(8), vec![0, 1, 2, 4, 8]);
        assert_eq!(distance_edges(9), vec![0, 1, 2, 4, 8, 16]);
    }
}
