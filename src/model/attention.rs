//! Causal grouped-query attention in three forms, plus the two attention statistics the paper
//! studies.
//!
//! - [`attend_materialized`]: scores, softmax, weighted sum, built from differentiable tensor
//!   ops. Training uses it (burn's fused attention falls back to the same thing under autodiff)
//!   and it can hand back the probabilities.
//! - [`attend_fused`]: burn's fused attention (flash-style, linear memory on the CPU backend).
//!   Inference without statistics uses it.
//! - [`attend_blockwise`]: a flash-style loop over query and key blocks with an online
//!   log-sum-exp that also accumulates each query's attention entropy
//!   `H = ln l - (sum_j e^(s_j - m) (s_j - m)) / l` (nats), so memory stays linear in length.
//!   On burn's CPU backend without autodiff it is the fused kernel of [`super::flash`];
//!   elsewhere (CUDA) it is built from tensor ops.
//! - [`distance_sums`]: a second pass over the blocks that sums attention probabilities by
//!   relative distance `d = query position - key position` (also [`super::flash`] on the CPU).
//! - [`attend_profile`]: [`attend_blockwise`] with entropy and the distance sums bucketed; on
//!   the CPU one pass of the fused kernel ([`flash::flash_attention_profile`]), elsewhere the
//!   two passes above.
//!
//! Shapes: queries `[batch, heads, q_len, head_dim]`, keys and values
//! `[batch, kv_heads, k_len, head_dim]`. Query `i` sits at key position `i + q_offset` and sees
//! keys `0..=i + q_offset` (`q_offset` is the KV-cache length; 0 for a plain forward).

use burn::tensor::module::attention as fused_attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Tensor, TensorData, activation::softmax};

use super::flash::{self, FlashShape};
use super::llama::to_f32_vec;

/// A finite "minus infinity" for masked scores in the blockwise loop: `exp` of it is 0 and,
/// unlike -inf, `0 * (it - m)` stays 0 in the entropy sum.
const MASKED: f32 = -1.0e30;

/// Block sizes of the blockwise attention. Memory per block is
/// `batch * heads * query * key` floats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttentionBlocks {
    /// Queries per block.
    pub query: usize,
    /// Keys per block.
    pub key: usize,
}

impl AttentionBlocks {
    /// The tile of the fused CPU kernel ([`super::flash`]): 128 queries per head (times the
    /// heads sharing a KV head) against 512 keys; the score tile (768 KiB for 3 heads per KV
    /// head) and its K/V blocks stay in L2. Tiles from 64x256 to 256x512 measured within 10%.
    pub fn flash() -> Self {
        AttentionBlocks {
            query: 128,
            key: 512,
        }
    }
}

impl Default for AttentionBlocks {
    fn default() -> Self {
        AttentionBlocks {
            query: 256,
            key: 1024,
        }
    }
}

/// Repeat each key/value head `groups` times: `[b, kv, s, d]` -> `[b, kv * groups, s, d]`,
/// head `h` of the result being kv head `h / groups` (transformers' `repeat_kv`).
pub fn repeat_kv(x: Tensor<4>, groups: usize) -> Tensor<4> {
    if groups == 1 {
        return x;
    }
    let [b, kv, s, d] = x.dims();
    x.unsqueeze_dim::<5>(2)
        .expand([b, kv, groups, s, d])
        .reshape([b, kv * groups, s, d])
}

/// Additive causal mask for queries `q_start..q_start + nq` (at key positions shifted by
/// `q_offset`) against keys `k_start..k_start + nk`: `[1, 1, nq, nk]`, 0 where visible.
fn causal_bias(
    q_start: usize,
    nq: usize,
    k_start: usize,
    nk: usize,
    q_offset: usize,
    masked: f32,
    device: &burn::tensor::Device,
) -> Tensor<4> {
    let mut bias = vec![0f32; nq * nk];
    for i in 0..nq {
        let limit = q_start + i + q_offset;
        for j in 0..nk {
            if k_start + j > limit {
                bias[i * nk + j] = masked;
            }
        }
    }
    Tensor::from_data(TensorData::new(bias, [1, 1, nq, nk]), device)
}

/// Whether some key of the block is invisible to some query of it.
fn needs_mask(q_start: usize, k_start: usize, nk: usize, q_offset: usize) -> bool {
    k_start + nk > q_start + q_offset + 1
}

/// Attention with the full score matrix.
///
/// # Shapes
/// - q: `[batch, heads, q_len, head_dim]`, k, v: `[batch, kv_heads, k_len, head_dim]`
/// - returns output `[batch, heads, q_len, head_dim]` and, if `want_probs`, the probabilities
///   `[batch, heads, q_len, k_len]`.
pub fn attend_materialized(
    q: Tensor<4>,
    k: Tensor<4>,
    v: Tensor<4>,
    q_offset: usize,
    want_probs: bool,
) -> (Tensor<4>, Option<Tensor<4>>) {
    let [_, heads, nq, head_dim] = q.dims();
    let [_, kv_heads, nk, _] = k.dims();
    let device = q.device();
    let groups = heads / kv_heads;
    let k = repeat_kv(k, groups);
    let v = repeat_kv(v, groups);
    let scale = (head_dim as f64).powf(-0.5);
    // Scaling q ([.., q_len, head_dim]) is cheaper than scaling the scores ([.., q_len, k_len])
    // forward and backward once k_len > head_dim.
    // [batch, heads, q_len, k_len]
    let mut scores = q.mul_scalar(scale).matmul(k.swap_dims(2, 3));
    if needs_mask(0, 0, nk, q_offset) {
        scores = scores + causal_bias(0, nq, 0, nk, q_offset, f32::NEG_INFINITY, &device);
    }
    let probs = softmax(scores, 3);
    let out = probs.clone().matmul(v);
    (out, want_probs.then_some(probs))
}

/// burn's fused attention (no statistics). Needs `q_offset == 0` or a single query, the two
/// cases a forward and a KV-cache decoding step produce.
///
/// # Shapes
/// - q: `[batch, heads, q_len, head_dim]`, k, v: `[batch, kv_heads, k_len, head_dim]`
/// - returns `[batch, heads, q_len, head_dim]`
pub fn attend_fused(q: Tensor<4>, k: Tensor<4>, v: Tensor<4>, q_offset: usize) -> Tensor<4> {
    let [_, heads, nq, _] = q.dims();
    let [_, kv_heads, _, _] = k.dims();
    debug_assert!(
        q_offset == 0 || nq == 1,
        "fused attention: q_offset with several queries"
    );
    let groups = heads / kv_heads;
    let options = AttentionModuleOptions {
        scale: None,
        softcap: None,
        is_causal: nq > 1,
    };
    fused_attention(
        q,
        repeat_kv(k, groups),
        repeat_kv(v, groups),
        None,
        None,
        options,
    )
}

/// Online-softmax state of one query block.
struct Online {
    /// Running max `[b, h, nq, 1]`.
    m: Tensor<4>,
    /// Running `sum exp(s - m)` `[b, h, nq, 1]`.
    l: Tensor<4>,
    /// Running `sum exp(s - m) (s - m)` `[b, h, nq, 1]` (entropy only).
    a: Option<Tensor<4>>,
    /// Running `sum exp(s - m) v` `[b, h, nq, d]`.
    acc: Tensor<4>,
}

/// Scores of one (query block, key block) pair, scaled and masked: `[b, h, nq, nk]`.
#[allow(clippy::too_many_arguments)]
fn block_scores(
    qb: &Tensor<4>,
    kb: Tensor<4>,
    scale: f64,
    q_start: usize,
    k_start: usize,
    q_offset: usize,
    device: &burn::tensor::Device,
) -> Tensor<4> {
    let [_, _, nq, _] = qb.dims();
    let [_, _, nk, _] = kb.dims();
    let s = qb.clone().matmul(kb.swap_dims(2, 3)).mul_scalar(scale);
    if needs_mask(q_start, k_start, nk, q_offset) {
        s + causal_bias(q_start, nq, k_start, nk, q_offset, MASKED, device)
    } else {
        s
    }
}

/// Flash-style attention over blocks, optionally with each query's attention entropy.
///
/// # Shapes
/// - q: `[batch, heads, q_len, head_dim]`, k, v: `[batch, kv_heads, k_len, head_dim]`
/// - returns output `[batch, heads, q_len, head_dim]`, the log-sum-exp of each query's scaled
///   scores `[batch, heads, q_len]`, and if `want_entropy` the entropy (nats)
///   `[batch, heads, q_len]`.
pub fn attend_blockwise(
    q: Tensor<4>,
    k: Tensor<4>,
    v: Tensor<4>,
    q_offset: usize,
    blocks: AttentionBlocks,
    want_entropy: bool,
) -> (Tensor<4>, Tensor<3>, Option<Tensor<3>>) {
    let device = q.device();
    if flash::available(&device) {
        let shape = FlashShape::of(&q, &k, q_offset);
        let (q, k, v) = (to_f32_vec(q), to_f32_vec(k), to_f32_vec(v));
        return flash::flash_attention(&q, &k, &v, shape, blocks, want_entropy)
            .into_tensors(shape, &device);
    }
    let [_, heads, q_len, head_dim] = q.dims();
    let [_, kv_heads, k_len, _] = k.dims();
    let groups = heads / kv_heads;
    let k = repeat_kv(k, groups);
    let v = repeat_kv(v, groups);
    let scale = (head_dim as f64).powf(-0.5);
    let (bq, bk) = (blocks.query.max(1), blocks.key.max(1));

    let mut outs = Vec::new();
    let mut lses = Vec::new();
    let mut ents = Vec::new();
    for q_start in (0..q_len).step_by(bq) {
        let nq = bq.min(q_len - q_start);
        // [b, h, nq, d]
        let qb = q.clone().narrow(2, q_start, nq);
        let k_end = k_len.min(q_start + nq + q_offset);
        let mut state: Option<Online> = None;
        for k_start in (0..k_end).step_by(bk) {
            let nk = bk.min(k_end - k_start);
            // [b, h, nq, nk]
            let s = block_scores(
                &qb,
                k.clone().narrow(2, k_start, nk),
                scale,
                q_start,
                k_start,
                q_offset,
                &device,
            );
            let vb = v.clone().narrow(2, k_start, nk);
            let block_max = s.clone().max_dim(3);
            state = Some(match state {
                None => {
                    let centered = s - block_max.clone();
                    let p = centered.clone().exp();
                    let a = want_entropy.then(|| (p.clone() * centered).sum_dim(3));
                    Online {
                        l: p.clone().sum_dim(3),
                        acc: p.matmul(vb),
                        m: block_max,
                        a,
                    }
                }
                Some(st) => {
                    let m_new = st.m.clone().max_pair(block_max);
                    let shift = st.m - m_new.clone(); // <= 0
                    let alpha = shift.clone().exp();
                    let centered = s - m_new.clone();
                    let p = centered.clone().exp();
                    let a = st.a.map(|a| {
                        alpha.clone() * (a + st.l.clone() * shift)
                            + (p.clone() * centered).sum_dim(3)
                    });
                    Online {
                        l: st.l * alpha.clone() + p.clone().sum_dim(3),
                        acc: st.acc * alpha + p.matmul(vb),
                        m: m_new,
                        a,
                    }
                }
            });
        }
        let st = state.expect("every query sees key 0");
        outs.push(st.acc / st.l.clone());
        let log_l = st.l.clone().log();
        lses.push((st.m + log_l.clone()).squeeze_dim::<3>(3));
        if let Some(a) = st.a {
            ents.push((log_l - a / st.l).squeeze_dim::<3>(3));
        }
    }
    let entropy = want_entropy.then(|| Tensor::cat(ents, 2));
    (Tensor::cat(outs, 2), Tensor::cat(lses, 2), entropy)
}

/// A causal forward's attention (`q_offset` 0) with every query's entropy and the attention
/// probability summed by distance bucket (`edges` as in [`flash::flash_attention_profile`]):
/// output `[b, heads, t, d]`, entropy `[b, heads, t]`, sums `[heads * (edges.len() - 1)]`.
pub fn attend_profile(
    q: Tensor<4>,
    k: Tensor<4>,
    v: Tensor<4>,
    blocks: AttentionBlocks,
    edges: &[usize],
) -> (Tensor<4>, Tensor<3>, Vec<f64>) {
    let device = q.device();
    if flash::available(&device) {
        let shape = FlashShape::of(&q, &k, 0);
        let (q, k, v) = (to_f32_vec(q), to_f32_vec(k), to_f32_vec(v));
        let (out, sums) = flash::flash_attention_profile(&q, &k, &v, shape, blocks, edges);
        let (o, _, e) = out.into_tensors(shape, &device);
        return (o, e.expect("entropy requested"), sums);
    }
    let [_, heads, q_len, _] = q.dims();
    let (o, lse, e) = attend_blockwise(q.clone(), k.clone(), v, 0, blocks, true);
    let max_d = (*edges.last().expect("edges")).min(q_len);
    let per_distance = distance_sums(q, k, lse, 0, blocks, max_d);
    let nb = edges.len() - 1;
    let mut sums = vec![0f64; heads * nb];
    for h in 0..heads {
        for d in 0..max_d {
            if let Some(b) = distance_bucket(edges, d) {
                sums[h * nb + b] += per_distance[h * max_d + d];
            }
        }
    }
    (o, e.expect("entropy requested"), sums)
}

/// The bucket of distance `d` under `edges` (bucket `b` = `edges[b] <= d < edges[b + 1]`), if
/// any.
pub fn distance_bucket(edges: &[usize], d: usize) -> Option<usize> {
    edges.windows(2).position(|w| w[0] <= d && d < w[1])
}

/// Sums of attention probabilities by relative distance, one head at a time summed over the
/// batch: `result[h * max_distance + d]` = sum over batch and over causal (query, key) pairs at
/// distance `d = (i + q_offset) - j` of `p(i, j)`, for `d < max_distance` (larger ignored).
///
/// `lse` is the per-query log-sum-exp from [`attend_blockwise`], so `p = exp(s - lse)` equals
/// the softmax. Diagonal sums of each block come from a skew: reverse the key axis, pad each
/// row with `nq` zeros and re-read the rows one element shorter, so that element `(i, j)` lands
/// in column `i + (nk - 1 - j)` and a sum over rows groups equal `i - j`.
///
/// # Shapes
/// - q: `[batch, heads, q_len, head_dim]`, k: `[batch, kv_heads, k_len, head_dim]`,
///   lse: `[batch, heads, q_len]`
pub fn distance_sums(
    q: Tensor<4>,
    k: Tensor<4>,
    lse: Tensor<3>,
    q_offset: usize,
    blocks: AttentionBlocks,
    max_distance: usize,
) -> Vec<f64> {
    let device = q.device();
    if flash::available(&device) {
        let shape = FlashShape::of(&q, &k, q_offset);
        let (q, k, lse) = (to_f32_vec(q), to_f32_vec(k), to_f32_vec(lse));
        return flash::distance_sums(&q, &k, &lse, shape, blocks, max_distance);
    }
    let [batch, heads, q_len, head_dim] = q.dims();
    let [_, kv_heads, k_len, _] = k.dims();
    let k = repeat_kv(k, heads / kv_heads);
    let scale = (head_dim as f64).powf(-0.5);
    let (bq, bk) = (blocks.query.max(1), blocks.key.max(1));
    let mut sums = vec![0f64; heads * max_distance];
    for q_start in (0..q_len).step_by(bq) {
        let nq = bq.min(q_len - q_start);
        let qb = q.clone().narrow(2, q_start, nq);
        // [b, h, nq, 1]
        let lse_b = lse.clone().narrow(2, q_start, nq).unsqueeze_dim::<4>(3);
        let k_end = k_len.min(q_start + nq + q_offset);
        for k_start in (0..k_end).step_by(bk) {
            let nk = bk.min(k_end - k_start);
            // Smallest distance in the block is q_start + q_offset - (k_start + nk - 1).
            let d_min = (q_start + q_offset) as isize - (k_start + nk - 1) as isize;
            if d_min >= max_distance as isize {
                continue;
            }
            let s = block_scores(
                &qb,
                k.clone().narrow(2, k_start, nk),
                scale,
                q_start,
                k_start,
                q_offset,
                &device,
            );
            // [b, h, nq, nk]
            let p = (s - lse_b.clone()).exp();
            let width = nk + nq;
            let skewed = Tensor::cat(
                vec![p.flip([3]), Tensor::zeros([batch, heads, nq, nq], &device)],
                3,
            )
            .reshape([batch, heads, nq * width])
            .narrow(2, 0, nq * (width - 1))
            .reshape([batch, heads, nq, width - 1]);
            // [h, nk + nq - 1]: column u holds i - j = u - (nk - 1)
            let diag = skewed.sum_dim(2).sum_dim(0).reshape([heads, width - 1]);
            let values = to_f32_vec(diag);
            for h in 0..heads {
                for u in 0..width - 1 {
                    let d = d_min + u as isize;
                    if d >= 0 && (d as usize) < max_distance {
                        sums[h * max_distance + d as usize] += values[h * (width - 1) + u] as f64;
                    }
                }
            }
        }
    }
    sums
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use burn::tensor::{Device, Distribution};

    fn data(t: Tensor<4>) -> Vec<f32> {
        super::super::llama::to_f32_vec(t)
    }

    /// `-sum p ln p` of each row of `width` probabilities, summed in f64: what the kernels'
    /// entropies are checked against.
    pub(crate) fn row_entropies(p: &[f32], width: usize) -> Vec<f32> {
        p.chunks(width)
            .map(|row| {
                -row.iter()
                    .filter(|x| **x > 0.0)
                    .map(|x| (*x as f64) * (*x as f64).ln())
                    .sum::<f64>() as f32
            })
            .collect()
    }

    pub(crate) fn max_diff(a: &[f32], b: &[f32]) -> f32 {
        assert_eq!(a.len(), b.len());
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max)
    }

    fn inputs(nq: usize, nk: usize) -> (Tensor<4>, Tensor<4>, Tensor<4>) {
        let [q, k, v] = random_qkv(4, 2, nq, nk, 8);
        (q, k, v)
    }

    /// Random q `[2, heads, nq, d]`, k and v `[2, kv, nk, d]` on the CPU.
    pub(crate) fn random_qkv(
        heads: usize,
        kv: usize,
        nq: usize,
        nk: usize,
        d: usize,
    ) -> [Tensor<4>; 3] {
        let dev = Device::flex();
        let n = Distribution::Normal(0.0, 1.5);
        [
            Tensor::random([2, heads, nq, d], n, &dev),
            Tensor::random([2, kv, nk, d], n, &dev),
            Tensor::random([2, kv, nk, d], n, &dev),
        ]
    }

    #[test]
    fn blockwise_fused_and_materialized_agree() {
        let (q, k, v) = inputs(37, 37);
        let (full, probs) = attend_materialized(q.clone(), k.clone(), v.clone(), 0, true);
        let fused = attend_fused(q.clone(), k.clone(), v.clone(), 0);
        let blocks = AttentionBlocks { query: 8, key: 5 };
        let (blk, _, ent) = attend_blockwise(q, k, v, 0, blocks, true);
        let full = data(full);
        assert!(max_diff(&full, &data(fused)) < 1e-5);
        assert!(max_diff(&full, &data(blk)) < 1e-5);
        // Entropy against -sum p ln p of the materialized probabilities.
        let expect = row_entropies(&data(probs.unwrap()), 37);
        let got = super::super::llama::to_f32_vec(ent.unwrap());
        assert!(
            max_diff(&expect, &got) < 1e-5,
            "{}",
            max_diff(&expect, &got)
        );
        // The first query sees one key: entropy 0.
        assert!(got[0].abs() < 1e-6);
    }

    #[test]
    fn cached_queries_see_the_cache() {
        // 3 new queries after a cache of 10 keys: offset 10.
        let (q, k, v) = inputs(3, 13);
        let (full, _) = attend_materialized(q.clone(), k.clone(), v.clone(), 10, false);
        let (blk, _, _) =
            attend_blockwise(q, k, v, 10, AttentionBlocks { query: 2, key: 4 }, false);
        assert!(max_diff(&data(full), &data(blk)) < 1e-5);
    }

    #[test]
    fn distance_sums_match_probabilities() {
        let (q, k, v) = inputs(19, 19);
        let (_, probs) = attend_materialized(q.clone(), k.clone(), v.clone(), 0, true);
        let blocks = AttentionBlocks { query: 4, key: 6 };
        let (_, lse, _) = attend_blockwise(q.clone(), k.clone(), v, 0, blocks, false);
        let got = distance_sums(q, k, lse, 0, blocks, 12);
        let p = data(probs.unwrap());
        let mut expect = vec![0f64; 4 * 12];
        for b in 0..2 {
            for h in 0..4 {
                for i in 0..19 {
                    for j in 0..=i {
                        if i - j < 12 {
                            expect[h * 12 + i - j] += p[((b * 4 + h) * 19 + i) * 19 + j] as f64;
                        }
                    }
                }
            }
        }
        for (g, e) in got.iter().zip(&expect) {
            assert!((g - e).abs() < 1e-4, "{g} vs {e}");
        }
        // Distance 0 of head 0 includes query 0's whole mass (2 batches).
        assert!(expect[0] >= 2.0 - 1e-5);
    }
}
