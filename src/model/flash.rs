//! A fused, blockwise, causal CPU attention forward on plain `f32` slices (inference only).
//!
//! FlashAttention's online softmax: for each block of queries, key blocks are visited in order,
//! each block's scores `S = (q * scale) K^T` come from one GEMM (the `gemm` crate, the one burn's
//! CPU backend uses), are exponentiated against the running row max with a vectorised `exp`,
//! and `P V` is added to the running output with a second GEMM. Nothing of size
//! `[q_len, k_len]` is ever held: a task holds one `[groups * query, key]` tile.
//!
//! - Causal skipping: key blocks entirely after a query block's last query are never visited,
//!   and inside the diagonal block each row stops at its last visible key (no masked scores).
//! - Grouped-query attention without repeating K/V: the `heads / kv_heads` query heads sharing
//!   a KV head are stacked into one tile, so each K/V block is read once per group and the GEMMs
//!   are taller.
//! - Parallel over (batch, KV head, query block) with rayon, longest tasks first.
//!
//! Besides the output, a pass can hand back each query's log-sum-exp of its scaled scores and
//! its attention entropy `H = ln l - sum_j p_j (s_j - m) / l` (nats; `l = sum_j e^(s_j - m)`),
//! and [`distance_sums`] a second pass that sums the probabilities `exp(s - lse)` by relative
//! distance. Memory stays linear in length.
//!
//! Layouts (row-major): q `[batch, heads, q_len, head_dim]`, k and v
//! `[batch, kv_heads, k_len, head_dim]`; query `i` sits at key position `i + q_offset` and sees
//! keys `0..=i + q_offset`.

use burn::tensor::{Device, Tensor, TensorData};
use rayon::prelude::*;

use super::attention::AttentionBlocks;

/// Shapes of one attention call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlashShape {
    /// Batch rows.
    pub batch: usize,
    /// Query heads.
    pub heads: usize,
    /// Key/value heads (divides `heads`).
    pub kv_heads: usize,
    /// Queries per head.
    pub q_len: usize,
    /// Keys per head (`>= q_len + q_offset` is not required; keys past a query are skipped).
    pub k_len: usize,
    /// Features per head.
    pub head_dim: usize,
    /// Key position of query 0 (the KV-cache length; 0 for a plain forward).
    pub q_offset: usize,
}

impl FlashShape {
    fn groups(&self) -> usize {
        self.heads / self.kv_heads
    }

    fn check(&self, q: usize, k: usize, v: usize) {
        assert!(
            self.kv_heads > 0 && self.heads.is_multiple_of(self.kv_heads),
            "heads {} not a multiple of kv_heads {}",
            self.heads,
            self.kv_heads
        );
        let kv = self.batch * self.kv_heads * self.k_len * self.head_dim;
        assert_eq!(
            q,
            self.batch * self.heads * self.q_len * self.head_dim,
            "q size"
        );
        assert_eq!((k, v), (kv, kv), "k/v size");
        assert!(
            self.q_offset < self.k_len || self.q_len == 0,
            "query 0 at key position {} but only {} keys",
            self.q_offset,
            self.k_len
        );
    }
}

/// What [`flash_attention`] computed.
#[derive(Debug, Clone, PartialEq)]
pub struct FlashOutput {
    /// `[batch, heads, q_len, head_dim]`.
    pub out: Vec<f32>,
    /// Log-sum-exp of each query's scaled scores `[batch, heads, q_len]`.
    pub lse: Vec<f32>,
    /// Attention entropy (nats) `[batch, heads, q_len]`, if asked for.
    pub entropy: Option<Vec<f32>>,
}

/// One unit of parallel work: a query block of one KV head's group.
#[derive(Debug, Clone, Copy)]
pub(super) struct Task {
    pub(super) b: usize,
    pub(super) kvh: usize,
    pub(super) q_start: usize,
    pub(super) nq: usize,
}

fn tasks(s: &FlashShape, block_q: usize) -> Vec<Task> {
    let mut t = Vec::new();
    for q_start in (0..s.q_len).step_by(block_q).rev() {
        for b in 0..s.batch {
            for kvh in 0..s.kv_heads {
                t.push(Task {
                    b,
                    kvh,
                    q_start,
                    nq: block_q.min(s.q_len - q_start),
                });
            }
        }
    }
    t
}

/// Per-task scratch and its geometry: the task's `groups * nq` query rows (row `g * nq + i` is
/// query `q_start + i` of head `kvh * groups + g`), scaled.
pub(super) struct Tile {
    /// `[rows, head_dim]`, q times the softmax scale.
    pub(super) q: Vec<f32>,
    /// `[rows, block_k]` scores, then probabilities.
    pub(super) s: Vec<f32>,
    pub(super) rows: usize,
}

impl Tile {
    pub(super) fn new(q: &[f32], s: &FlashShape, t: &Task, block_k: usize, scale: f32) -> Tile {
        let (g, d) = (s.groups(), s.head_dim);
        let rows = g * t.nq;
        let mut tile = vec![0f32; rows * d];
        for gi in 0..g {
            let h = t.kvh * g + gi;
            let src = ((t.b * s.heads + h) * s.q_len + t.q_start) * d;
            for (dst, x) in tile[gi * t.nq * d..(gi + 1) * t.nq * d]
                .iter_mut()
                .zip(&q[src..src + t.nq * d])
            {
                *dst = x * scale;
            }
        }
        Tile {
            q: tile,
            s: vec![0f32; rows * block_k],
            rows,
        }
    }

    /// Scores of the key block `k_start..k_start + nk` into `self.s` (row stride `nk`).
    pub(super) fn scores(&mut self, kv: &[f32], d: usize, k_start: usize, nk: usize) {
        let kb = &kv[k_start * d..(k_start + nk) * d];
        let (rows, q) = (self.rows, View::rows(&self.q, d));
        matmul(&mut self.s, rows, nk, d, q, View::transposed(kb, d), false);
    }
}

/// Keys of the block visible to a query at key position `pos`: `0..visible`.
pub(super) fn visible(pos: usize, k_start: usize, nk: usize) -> usize {
    (pos + 1).saturating_sub(k_start).min(nk)
}

/// `acc[rows, d] += p[rows, nk] v[k_start.., d]`.
fn accumulate_pv(acc: &mut [f32], p: &[f32], v: &[f32], rows: usize, nk: usize, d: usize) {
    matmul(acc, rows, d, nk, View::rows(p, nk), View::rows(v, d), true);
}

/// A matrix view for [`matmul`]: element `(i, j)` at `data[i * row + j * col]`.
#[derive(Clone, Copy)]
pub(super) struct View<'a> {
    data: &'a [f32],
    row: usize,
    col: usize,
}

impl<'a> View<'a> {
    pub(super) fn rows(data: &'a [f32], stride: usize) -> Self {
        View {
            data,
            row: stride,
            col: 1,
        }
    }

    /// The transpose of a row-major matrix with row stride `stride`.
    pub(super) fn transposed(data: &'a [f32], stride: usize) -> Self {
        View {
            data,
            row: 1,
            col: stride,
        }
    }

    /// Asserts that `(rows - 1, cols - 1)` is inside the slice (the GEMM reads no further).
    fn check(&self, rows: usize, cols: usize) {
        if rows > 0 && cols > 0 {
            assert!((rows - 1) * self.row + (cols - 1) * self.col < self.data.len());
        }
    }
}

/// `dst[m, n] (row stride n) = (dst if accumulate, else 0) + lhs[m, k] rhs[k, n]`.
pub(super) fn matmul(
    dst: &mut [f32],
    m: usize,
    n: usize,
    k: usize,
    lhs: View,
    rhs: View,
    accumulate: bool,
) {
    assert!(dst.len() >= m * n);
    // SAFETY: dst is m x n row-major inside `dst` and exclusively borrowed.
    unsafe {
        gemm_into(
            dst.as_mut_ptr(),
            (m, n, k),
            lhs,
            rhs,
            accumulate,
            gemm::Parallelism::None,
        )
    }
}

/// A new row-major `[m, n]` = `lhs[m, k] rhs[k, n]`, split over rayon's threads when it is
/// large (the rule of burn's CPU matmul, so the result is the same as `Tensor::matmul`'s). The
/// buffer is never zeroed: the GEMM writes every element before it reads any.
pub(super) fn matmul_new(m: usize, n: usize, k: usize, lhs: View, rhs: View) -> Vec<f32> {
    /// burn-flex's threshold for a parallel GEMM.
    const PARALLEL_OPS: usize = 192 * 192 * 192;
    let parallelism = if m.saturating_mul(n).saturating_mul(k) >= PARALLEL_OPS {
        gemm::Parallelism::Rayon(0)
    } else {
        gemm::Parallelism::None
    };
    let mut out = Vec::with_capacity(m * n);
    // SAFETY: the buffer has room for m x n values; without `accumulate` the GEMM (gemm-common:
    // `alpha` set to zero, microkernels store without loading) writes each one before any read,
    // so all m x n are initialised when the length is set.
    unsafe {
        gemm_into(out.as_mut_ptr(), (m, n, k), lhs, rhs, false, parallelism);
        out.set_len(m * n);
    }
    out
}

/// The GEMM of [`matmul`] into `dst`.
///
/// # Safety
/// `dst` must be valid for `m * n` writes (row stride `n`), and for reads if `accumulate`, and
/// must not alias `lhs` or `rhs`.
unsafe fn gemm_into(
    dst: *mut f32,
    (m, n, k): (usize, usize, usize),
    lhs: View,
    rhs: View,
    accumulate: bool,
    parallelism: gemm::Parallelism,
) {
    lhs.check(m, k);
    rhs.check(k, n);
    // SAFETY: the caller's contract for dst; every element of lhs and rhs the product reads is
    // inside its slice (checked above).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            1,
            n as isize,
            accumulate,
            lhs.data.as_ptr(),
            lhs.col as isize,
            lhs.row as isize,
            rhs.data.as_ptr(),
            rhs.col as isize,
            rhs.row as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        );
    }
}

/// Causal attention of `q` against `k`, `v` (layouts in the module docs), computing the
/// entropy as well when `want_entropy`.
///
/// # Panics
/// If the slice lengths do not fit `shape`.
pub fn flash_attention(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    shape: FlashShape,
    blocks: AttentionBlocks,
    want_entropy: bool,
) -> FlashOutput {
    flash_attention_strided(q, k, v, shape, shape.k_len, blocks, want_entropy)
}

/// [`flash_attention`] with the entropy and, in the same pass, the attention probability
/// summed by relative distance `d = (i + q_offset) - j` into the buckets `edges` (strictly
/// increasing; bucket `b` = `edges[b] <= d < edges[b + 1]`; larger distances are left out):
/// `[heads * (edges.len() - 1)]`, summed over the batch and the queries.
///
/// Each query row keeps one accumulator per bucket beside its output row, rescaled with it
/// whenever the row's running maximum grows, and divided by the row's sum at the end: the
/// probabilities are never computed twice (what [`distance_sums`], the two-pass form, does).
///
/// # Panics
/// As [`flash_attention`], or if `edges` has fewer than 2 values or is not increasing.
pub fn flash_attention_profile(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    shape: FlashShape,
    blocks: AttentionBlocks,
    edges: &[usize],
) -> (FlashOutput, Vec<f64>) {
    assert!(
        edges.len() >= 2 && edges.windows(2).all(|w| w[0] < w[1]),
        "distance bucket edges must be at least 2 increasing values, got {edges:?}"
    );
    let (out, sums) = flash_core(q, k, v, shape, shape.k_len, blocks, true, Some(edges));
    (out, sums.expect("edges given"))
}

/// [`flash_attention`] with k and v laid out `[batch, kv_heads, k_stride, head_dim]`, of which
/// the first `k_len` positions of each head are the keys (a KV cache with room to grow).
///
/// # Panics
/// If the slice lengths do not fit `shape` and `k_stride`, or `k_stride < k_len`.
pub fn flash_attention_strided(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    shape: FlashShape,
    k_stride: usize,
    blocks: AttentionBlocks,
    want_entropy: bool,
) -> FlashOutput {
    flash_core(q, k, v, shape, k_stride, blocks, want_entropy, None).0
}

/// The kernel of [`flash_attention_strided`] and [`flash_attention_profile`].
#[allow(clippy::too_many_arguments)]
fn flash_core(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    shape: FlashShape,
    k_stride: usize,
    blocks: AttentionBlocks,
    want_entropy: bool,
    edges: Option<&[usize]>,
) -> (FlashOutput, Option<Vec<f64>>) {
    assert!(k_stride >= shape.k_len, "key stride below the key count");
    assert!(
        shape.q_offset < shape.k_len || shape.q_len == 0,
        "query 0 at key position {} but only {} keys",
        shape.q_offset,
        shape.k_len
    );
    let padded = FlashShape {
        k_len: k_stride,
        ..shape
    };
    padded.check(q.len(), k.len(), v.len());
    let s = shape;
    let (bq, bk) = (blocks.query.max(1), blocks.key.max(1));
    let (g, d) = (s.groups(), s.head_dim);
    let scale = (d as f64).powf(-0.5) as f32;
    let kv_size = s.k_len * d;
    let kv_block = k_stride * d;
    let nb = edges.map_or(0, |e| e.len() - 1);
    // Per task: its output rows, log-sum-exps, entropies (empty unless asked for) and distance
    // sums `[groups, buckets]` (empty without edges).
    type TaskOut = (Task, Vec<f32>, Vec<f32>, Vec<f32>, Vec<f64>);
    let results: Vec<TaskOut> = tasks(&s, bq)
        .into_par_iter()
        .map(|t| {
            let mut tile = Tile::new(q, &s, &t, bk, scale);
            let rows = tile.rows;
            let kv_off = (t.b * s.kv_heads + t.kvh) * kv_block;
            let (kh, vh) = (&k[kv_off..kv_off + kv_size], &v[kv_off..kv_off + kv_size]);
            let mut acc = vec![0f32; rows * d];
            let mut m = vec![f32::NEG_INFINITY; rows];
            let mut l = vec![0f32; rows];
            let mut a = vec![0f32; if want_entropy { rows } else { 0 }];
            // [rows, buckets]: probability mass by distance bucket, unnormalised like `acc`.
            let mut mass = vec![0f32; rows * nb];
            let k_end = s.k_len.min(t.q_start + t.nq + s.q_offset);
            for k_start in (0..k_end).step_by(bk) {
                let nk = bk.min(k_end - k_start);
                tile.scores(kh, d, k_start, nk);
                for r in 0..rows {
                    let pos = t.q_start + r % t.nq + s.q_offset;
                    let row = &mut tile.s[r * nk..(r + 1) * nk];
                    let n = visible(pos, k_start, nk);
                    row[n..].fill(0.0);
                    if n == 0 {
                        continue;
                    }
                    let m_new = m[r].max(simd::max(&row[..n]));
                    let (sum, sum_px) = simd::exp_shifted(&mut row[..n], m_new, want_entropy);
                    // First block: l = 0 and m = -inf, alpha = 0.
                    let alpha = if l[r] > 0.0 {
                        (m[r] - m_new).exp()
                    } else {
                        0.0
                    };
                    if want_entropy {
                        let old = if l[r] > 0.0 {
                            a[r] + l[r] * (m[r] - m_new)
                        } else {
                            0.0
                        };
                        a[r] = alpha * old + sum_px;
                    }
                    l[r] = alpha * l[r] + sum;
                    m[r] = m_new;
                    if alpha != 1.0 {
                        acc[r * d..(r + 1) * d].iter_mut().for_each(|x| *x *= alpha);
                    }
                    if let Some(edges) = edges {
                        let mass = &mut mass[r * nb..(r + 1) * nb];
                        if alpha != 1.0 {
                            mass.iter_mut().for_each(|x| *x *= alpha);
                        }
                        add_by_distance(mass, &row[..n], pos - k_start, edges);
                    }
                }
                accumulate_pv(
                    &mut acc,
                    &tile.s[..rows * nk],
                    &vh[k_start * d..],
                    rows,
                    nk,
                    d,
                );
            }
            let mut lse = vec![0f32; rows];
            let mut dist = vec![0f64; g * nb];
            for r in 0..rows {
                let inv = 1.0 / l[r];
                acc[r * d..(r + 1) * d].iter_mut().for_each(|x| *x *= inv);
                lse[r] = m[r] + l[r].ln();
                if want_entropy {
                    a[r] = l[r].ln() - a[r] * inv;
                }
                let gi = r / t.nq;
                for (dst, x) in dist[gi * nb..(gi + 1) * nb]
                    .iter_mut()
                    .zip(&mass[r * nb..(r + 1) * nb])
                {
                    *dst += (x * inv) as f64;
                }
            }
            (t, acc, lse, a, dist)
        })
        .collect();
    let mut out = vec![0f32; q.len()];
    let mut lse = vec![0f32; s.batch * s.heads * s.q_len];
    let mut entropy = want_entropy.then(|| vec![0f32; lse.len()]);
    // Summed in task order: the same numbers for any number of threads.
    let mut sums = edges.map(|_| vec![0f64; s.heads * nb]);
    for (t, acc, l, a, dist) in results {
        for gi in 0..g {
            if let Some(sums) = sums.as_mut() {
                let h = t.kvh * g + gi;
                for (dst, x) in sums[h * nb..(h + 1) * nb]
                    .iter_mut()
                    .zip(&dist[gi * nb..(gi + 1) * nb])
                {
                    *dst += x;
                }
            }
            let row0 = (t.b * s.heads + t.kvh * g + gi) * s.q_len + t.q_start;
            let src = gi * t.nq..(gi + 1) * t.nq;
            out[row0 * d..(row0 + t.nq) * d].copy_from_slice(&acc[src.start * d..src.end * d]);
            lse[row0..row0 + t.nq].copy_from_slice(&l[src.clone()]);
            if let Some(e) = entropy.as_mut() {
                e[row0..row0 + t.nq].copy_from_slice(&a[src]);
            }
        }
    }
    (FlashOutput { out, lse, entropy }, sums)
}

/// Adds a query row's block of probabilities `p` (key `j` of the block at distance `top - j`)
/// to its distance buckets `mass`.
fn add_by_distance(mass: &mut [f32], p: &[f32], top: usize, edges: &[usize]) {
    let last = p.len() - 1;
    for (b, w) in edges.windows(2).enumerate() {
        let (lo, hi) = (w[0], w[1]);
        if lo > top {
            break;
        }
        // lo <= top - j < hi  <=>  top - hi < j <= top - lo
        let (j_lo, j_hi) = ((top + 1).saturating_sub(hi), (top - lo).min(last));
        if j_lo <= j_hi {
            mass[b] += simd::sum(&p[j_lo..=j_hi]);
        }
    }
}

/// Sums of attention probabilities by relative distance per head, summed over the batch:
/// `result[h * max_distance + d]` = sum over causal pairs at distance `d = (i + q_offset) - j`
/// of `exp(s_ij - lse_i)`, for `d < max_distance`. `lse` `[batch, heads, q_len]` comes from
/// [`flash_attention`] on the same inputs. Blocks whose smallest distance is at least
/// `max_distance` are skipped.
pub fn distance_sums(
    q: &[f32],
    k: &[f32],
    lse: &[f32],
    shape: FlashShape,
    blocks: AttentionBlocks,
    max_distance: usize,
) -> Vec<f64> {
    shape.check(q.len(), k.len(), k.len());
    let s = shape;
    assert_eq!(lse.len(), s.batch * s.heads * s.q_len, "lse size");
    let (bq, bk) = (blocks.query.max(1), blocks.key.max(1));
    let (g, d) = (s.groups(), s.head_dim);
    let scale = (d as f64).powf(-0.5) as f32;
    let kv_size = s.k_len * d;
    let heads = s.heads;
    tasks(&s, bq)
        .into_par_iter()
        .fold(
            || vec![0f64; heads * max_distance],
            |mut sums, t| {
                let mut tile = Tile::new(q, &s, &t, bk, scale);
                let kv_off = (t.b * s.kv_heads + t.kvh) * kv_size;
                let kh = &k[kv_off..kv_off + kv_size];
                // Per-task f32 partial sums `[groups, max_distance]`, added into f64 at the end.
                let mut part = vec![0f32; g * max_distance];
                let k_end = s.k_len.min(t.q_start + t.nq + s.q_offset);
                let first_pos = t.q_start + s.q_offset;
                for k_start in (0..k_end).step_by(bk) {
                    let nk = bk.min(k_end - k_start);
                    // Smallest distance in the block: first query against the block's last key.
                    if first_pos.saturating_sub(k_start + nk - 1) >= max_distance {
                        continue;
                    }
                    tile.scores(kh, d, k_start, nk);
                    for r in 0..tile.rows {
                        let (gi, i) = (r / t.nq, r % t.nq);
                        let pos = first_pos + i;
                        let n = visible(pos, k_start, nk);
                        let lse_r = lse[(t.b * s.heads + t.kvh * g + gi) * s.q_len + t.q_start + i];
                        let row = &mut tile.s[r * nk..r * nk + n];
                        simd::exp_shifted(row, lse_r, false);
                        // Key j is at distance pos - k_start - j; keep d < max_distance.
                        let dist = &mut part[gi * max_distance..(gi + 1) * max_distance];
                        for (j, p) in row.iter().enumerate() {
                            let dd = pos - k_start - j;
                            if dd < max_distance {
                                dist[dd] += p;
                            }
                        }
                    }
                }
                for gi in 0..g {
                    let h = t.kvh * g + gi;
                    for (dst, x) in sums[h * max_distance..(h + 1) * max_distance]
                        .iter_mut()
                        .zip(&part[gi * max_distance..(gi + 1) * max_distance])
                    {
                        *dst += *x as f64;
                    }
                }
                sums
            },
        )
        .reduce(
            || vec![0f64; heads * max_distance],
            |mut a, b| {
                a.iter_mut().zip(&b).for_each(|(x, y)| *x += y);
                a
            },
        )
}

/// Whether [`attend`] runs on `device`: burn's CPU backend without autodiff (the kernel reads
/// and writes host memory and has no backward).
pub fn available(device: &Device) -> bool {
    crate::model::host_op::forward_available(device)
}

impl FlashShape {
    /// The shape of tensors q `[batch, heads, q_len, head_dim]` and k
    /// `[batch, kv_heads, k_len, head_dim]`.
    pub fn of(q: &Tensor<4>, k: &Tensor<4>, q_offset: usize) -> FlashShape {
        let [batch, heads, q_len, head_dim] = q.dims();
        let [_, kv_heads, k_len, _] = k.dims();
        FlashShape {
            batch,
            heads,
            kv_heads,
            q_len,
            k_len,
            head_dim,
            q_offset,
        }
    }
}

impl FlashOutput {
    /// As tensors on `device`: output `[batch, heads, q_len, head_dim]`, log-sum-exp and
    /// entropy `[batch, heads, q_len]`.
    pub fn into_tensors(
        self,
        s: FlashShape,
        device: &Device,
    ) -> (Tensor<4>, Tensor<3>, Option<Tensor<3>>) {
        let rows = [s.batch, s.heads, s.q_len];
        let vec3 = |x: Vec<f32>| Tensor::<3>::from_data(TensorData::new(x, rows), device);
        let dims = [s.batch, s.heads, s.q_len, s.head_dim];
        (
            Tensor::from_data(TensorData::new(self.out, dims), device),
            vec3(self.lse),
            self.entropy.map(vec3),
        )
    }
}

/// Vectorised row kernels: a branch-free polynomial `exp` and lane-wise reductions, written so
/// that LLVM vectorises them, compiled for AVX-512 and AVX2 and picked at run time.
pub mod simd {
    /// Lanes of the manual reductions (one AVX-512 register).
    const LANES: usize = 16;

    /// `e^x` for `x <= 0` (and moderately positive `x`), relative error about 2e-7: Cody-Waite
    /// range reduction `x = n ln 2 + r`, Cephes' degree-5 polynomial for `e^r`, `2^n` from the
    /// exponent bits. Inputs are clamped to `[-87, 88]` (no infinities or denormals).
    ///
    /// `n` is rounded by adding `1.5 * 2^23` (its low mantissa bits are then `n` as an
    /// integer), not with `as i32`, whose saturating conversion does not vectorise.
    #[inline(always)]
    pub fn exp(x: f32) -> f32 {
        exp_with::<false>(x)
    }

    /// `a * b + c`, fused where the caller is compiled with FMA (without it `mul_add` would be
    /// a library call).
    #[inline(always)]
    pub(crate) fn fmadd<const FMA: bool>(a: f32, b: f32, c: f32) -> f32 {
        if FMA { a.mul_add(b, c) } else { a * b + c }
    }

    /// [`exp`], with fused multiply-adds when `FMA`.
    #[inline(always)]
    pub(crate) fn exp_with<const FMA: bool>(x: f32) -> f32 {
        const LOG2E: f32 = std::f32::consts::LOG2_E;
        const C1: f32 = 0.693_359_4;
        const C2: f32 = -2.121_944_4e-4;
        const ROUND: f32 = 12_582_912.0;
        let x = x.clamp(-87.0, 88.0);
        let t = fmadd::<FMA>(x, LOG2E, ROUND);
        let n = t - ROUND;
        let r = fmadd::<FMA>(-n, C2, fmadd::<FMA>(-n, C1, x));
        let p = 1.987_569_1e-4_f32;
        let p = fmadd::<FMA>(p, r, 1.398_199_9e-3);
        let p = fmadd::<FMA>(p, r, 8.333_452e-3);
        let p = fmadd::<FMA>(p, r, 4.166_579_6e-2);
        let p = fmadd::<FMA>(p, r, 1.666_666_5e-1);
        let p = fmadd::<FMA>(p, r, 0.5);
        let e = fmadd::<FMA>(p, r * r, r + 1.0);
        let pow2 = (t.to_bits().wrapping_sub(ROUND.to_bits()).wrapping_add(127)) << 23;
        e * f32::from_bits(pow2)
    }

    #[inline(always)]
    fn max_impl<const FMA: bool>(x: &[f32]) -> f32 {
        let mut acc = [f32::NEG_INFINITY; LANES];
        let chunks = x.chunks_exact(LANES);
        let tail = chunks.remainder();
        for c in chunks {
            for (a, v) in acc.iter_mut().zip(c) {
                *a = a.max(*v);
            }
        }
        let mut m = acc.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        for v in tail {
            m = m.max(*v);
        }
        m
    }

    /// `x_j <- e^(x_j - shift)`; returns `(sum_j e^(x_j - shift), sum_j e^(x_j - shift) (x_j -
    /// shift))` (the second 0 unless `with_px`).
    #[inline(always)]
    fn exp_shifted_impl<const FMA: bool>(x: &mut [f32], shift: f32, with_px: bool) -> (f32, f32) {
        let mut s = [0f32; LANES];
        let mut spx = [0f32; LANES];
        let mut chunks = x.chunks_exact_mut(LANES);
        for c in &mut chunks {
            for i in 0..LANES {
                let y = c[i] - shift;
                let e = exp_with::<FMA>(y);
                c[i] = e;
                s[i] += e;
                if with_px {
                    spx[i] = fmadd::<FMA>(e, y, spx[i]);
                }
            }
        }
        let (mut sum, mut sum_px) = (s.iter().sum::<f32>(), spx.iter().sum::<f32>());
        for v in chunks.into_remainder() {
            let y = *v - shift;
            let e = exp_with::<FMA>(y);
            *v = e;
            sum += e;
            sum_px += e * y;
        }
        (sum, if with_px { sum_px } else { 0.0 })
    }

    macro_rules! dispatch {
        ($vis:vis $name:ident, $impl:ident, ($($arg:ident: $ty:ty),*) -> $ret:ty) => {
            /// Runtime-dispatched (AVX-512, AVX2+FMA, baseline) version of the lane kernel.
            #[inline]
            $vis fn $name($($arg: $ty),*) -> $ret {
                #[cfg(target_arch = "x86_64")]
                {
                    #[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
                    fn v4($($arg: $ty),*) -> $ret {
                        $impl::<true>($($arg),*)
                    }
                    #[target_feature(enable = "avx2,fma")]
                    fn v3($($arg: $ty),*) -> $ret {
                        $impl::<true>($($arg),*)
                    }
                    if std::arch::is_x86_feature_detected!("avx512f")
                        && std::arch::is_x86_feature_detected!("avx512vl")
                    {
                        // SAFETY: the CPU has the features v4 is compiled for.
                        return unsafe { v4($($arg),*) };
                    }
                    if std::arch::is_x86_feature_detected!("avx2")
                        && std::arch::is_x86_feature_detected!("fma")
                    {
                        // SAFETY: the CPU has the features v3 is compiled for.
                        return unsafe { v3($($arg),*) };
                    }
                }
                $impl::<false>($($arg),*)
            }
        };
    }

    /// Other modules' lane kernels (`fn k<const FMA: bool>(..)`) are dispatched the same way.
    pub(crate) use dispatch;

    /// `ln sum_j e^(x_j)`, overwriting `x` with `e^(x_j - max)`.
    #[inline(always)]
    fn logsumexp_impl<const FMA: bool>(x: &mut [f32]) -> f32 {
        let m = max_impl::<FMA>(x);
        m + exp_shifted_impl::<FMA>(x, m, false).0.ln()
    }

    /// `sum_j x_j` with [`LANES`] partial sums.
    #[inline(always)]
    fn sum_impl<const FMA: bool>(x: &[f32]) -> f32 {
        let mut acc = [0f32; LANES];
        let chunks = x.chunks_exact(LANES);
        let tail = chunks.remainder();
        for c in chunks {
            for (a, v) in acc.iter_mut().zip(c) {
                *a += v;
            }
        }
        acc.iter().sum::<f32>() + tail.iter().sum::<f32>()
    }

    dispatch!(pub max, max_impl, (x: &[f32]) -> f32);
    dispatch!(pub sum, sum_impl, (x: &[f32]) -> f32);
    dispatch!(pub logsumexp, logsumexp_impl, (x: &mut [f32]) -> f32);
    dispatch!(pub exp_shifted, exp_shifted_impl, (x: &mut [f32], shift: f32, with_px: bool) -> (f32, f32));
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::model::attention::tests::{max_diff, random_qkv, row_entropies};
    use crate::model::attention::{
        attend_blockwise, attend_materialized, distance_bucket, distance_sums as sums,
    };
    use crate::model::llama::to_f32_vec;

    /// The kernel against the materialized softmax (probabilities, entropy from them, distance
    /// sums by hand) for GQA and MHA, lengths that are not multiples of the blocks, blocks
    /// larger and smaller than the input, and queries after a cache.
    #[test]
    fn flash_matches_materialized_attention() {
        let blocks = [
            AttentionBlocks { query: 7, key: 5 },
            AttentionBlocks { query: 16, key: 64 },
            AttentionBlocks { query: 64, key: 3 },
            AttentionBlocks::flash(),
        ];
        // (heads, kv_heads, new queries, cached keys, head_dim)
        for (heads, kv, nq, cached, d) in [(6, 2, 37, 0, 16), (4, 4, 29, 0, 8), (9, 3, 5, 40, 64)] {
            let nk = nq + cached;
            let [q, k, v] = random_qkv(heads, kv, nq, nk, d);
            let (want, probs) = attend_materialized(q.clone(), k.clone(), v.clone(), cached, true);
            let (want, p) = (to_f32_vec(want), to_f32_vec(probs.unwrap()));
            let want_h = row_entropies(&p, nk);
            let max_d = nk - 3;
            let mut want_dist = vec![0f64; heads * max_d];
            for b in 0..2 {
                for h in 0..heads {
                    for i in 0..nq {
                        for j in 0..=i + cached {
                            let dd = i + cached - j;
                            if dd < max_d {
                                want_dist[h * max_d + dd] +=
                                    p[((b * heads + h) * nq + i) * nk + j] as f64;
                            }
                        }
                    }
                }
            }
            for blk in blocks {
                let (o, lse, h) =
                    attend_blockwise(q.clone(), k.clone(), v.clone(), cached, blk, true);
                let case = format!("heads {heads}/{kv}, nq {nq}, cache {cached}, {blk:?}");
                let diff = max_diff(&want, &to_f32_vec(o));
                assert!(diff < 1e-5, "output {case}: {diff}");
                let diff = max_diff(&want_h, &to_f32_vec(h.unwrap()));
                assert!(diff < 2e-5, "entropy {case}: {diff}");
                let dist = sums(q.clone(), k.clone(), lse, cached, blk, max_d);
                for (g, w) in dist.iter().zip(&want_dist) {
                    assert!((g - w).abs() < 1e-4, "distance {case}: {g} vs {w}");
                }
            }
        }
    }

    /// The one-pass profile against the materialized probabilities bucketed by hand, and its
    /// output and entropy against the plain kernel's, bit for bit; bucket edges that end before
    /// the longest distance and blocks of every size.
    #[test]
    fn one_pass_profile_matches_the_materialized_probabilities() {
        let blocks = [
            AttentionBlocks { query: 7, key: 5 },
            AttentionBlocks { query: 64, key: 3 },
            AttentionBlocks::flash(),
        ];
        for (heads, kv, n, d, edges) in [
            (6, 2, 37, 16, vec![0, 1, 2, 4, 8, 16, 32, 64]),
            (4, 4, 29, 8, vec![0, 3, 10, 11, 20]),
        ] {
            let [q, k, v] = random_qkv(heads, kv, n, n, d);
            let (_, probs) = attend_materialized(q.clone(), k.clone(), v.clone(), 0, true);
            let p = to_f32_vec(probs.unwrap());
            let nb = edges.len() - 1;
            let mut want = vec![0f64; heads * nb];
            for b in 0..2 {
                for h in 0..heads {
                    for i in 0..n {
                        for j in 0..=i {
                            let dd = i - j;
                            if let Some(bi) = distance_bucket(&edges, dd) {
                                want[h * nb + bi] += p[((b * heads + h) * n + i) * n + j] as f64;
                            }
                        }
                    }
                }
            }
            let shape = FlashShape::of(&q, &k, 0);
            let (qs, ks, vs) = (to_f32_vec(q), to_f32_vec(k), to_f32_vec(v));
            for blk in blocks {
                let case = format!("heads {heads}/{kv}, n {n}, {blk:?}, edges {edges:?}");
                let (out, got) = flash_attention_profile(&qs, &ks, &vs, shape, blk, &edges);
                let plain = flash_attention(&qs, &ks, &vs, shape, blk, true);
                assert!(out.out == plain.out, "output {case}");
                assert!(out.entropy == plain.entropy, "entropy {case}");
                for (g, w) in got.iter().zip(&want) {
                    assert!((g - w).abs() < 1e-4, "distance {case}: {g} vs {w}");
                }
            }
        }
    }

    /// Kernel throughput at SmolLM2-135M's attention shape (9 heads / 3 KV heads, head_dim
    /// 64) for a few tiles: `FLASH_BENCH_LEN=4096 cargo test --release --lib flash_throughput
    /// -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn flash_throughput() {
        let len: usize = std::env::var("FLASH_BENCH_LEN")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(4096);
        let shape = FlashShape {
            batch: 1,
            heads: 9,
            kv_heads: 3,
            q_len: len,
            k_len: len,
            head_dim: 64,
            q_offset: 0,
        };
        let values = |n: usize, seed: u32| -> Vec<f32> {
            (0..n)
                .map(|i| {
                    ((i as u32).wrapping_mul(2_654_435_761).wrapping_add(seed) >> 8) as f32
                        / 16_777_216.0
                        - 0.5
                })
                .collect()
        };
        let q = values(9 * len * 64, 1);
        let k = values(3 * len * 64, 2);
        let v = values(3 * len * 64, 3);
        // Two GEMMs over the causal half.
        let flops = 2.0 * 2.0 * 9.0 * 64.0 * (len * len) as f64 / 2.0;
        // FLASH_TILES="64x256,128x512" to try others.
        let tiles: Vec<(usize, usize)> = std::env::var("FLASH_TILES")
            .unwrap_or_else(|_| "64x256,128x256,128x512".into())
            .split(',')
            .filter_map(|t| t.split_once('x'))
            .filter_map(|(a, b)| Some((a.parse().ok()?, b.parse().ok()?)))
            .collect();
        for (bq, bk) in tiles {
            let blocks = AttentionBlocks { query: bq, key: bk };
            let t = std::time::Instant::now();
            let c = crate::model::bench::process_cpu_s();
            let r = flash_attention(&q, &k, &v, shape, blocks, false);
            let (wall, cpu) = (
                t.elapsed().as_secs_f64(),
                crate::model::bench::process_cpu_s() - c,
            );
            println!(
                "len {len} tile {bq}x{bk}: {wall:.3} s wall, {cpu:.3} s CPU, {:.1} GFLOP/CPU-s ({})",
                flops / cpu / 1e9,
                r.out[0]
            );
        }
    }

    #[test]
    fn polynomial_exp_matches_std() {
        let mut worst = 0f32;
        for i in 0..200_000 {
            let x = -87.0 + i as f32 * (87.0 + 10.0) / 200_000.0;
            let (got, want) = (simd::exp(x), x.exp());
            worst = worst.max(((got - want) / want).abs());
        }
        assert!(worst < 5e-7, "relative error {worst}");
        assert_eq!(simd::exp(0.0), 1.0);
    }

    #[test]
    fn vector_kernels_match_scalar() {
        let x: Vec<f32> = (0..37)
            .map(|i| ((i * 7919) % 101) as f32 * 0.1 - 5.0)
            .collect();
        assert_eq!(simd::max(&x), x.iter().copied().fold(f32::MIN, f32::max));
        let mut y = x.clone();
        let (s, spx) = simd::exp_shifted(&mut y, 1.5, true);
        let want_s: f32 = x.iter().map(|v| (v - 1.5).exp()).sum();
        let want_spx: f32 = x.iter().map(|v| (v - 1.5).exp() * (v - 1.5)).sum();
        assert!((s - want_s).abs() < 1e-4 * want_s, "{s} {want_s}");
        assert!(
            (spx - want_spx).abs() < 1e-4 * want_spx.abs(),
            "{spx} {want_spx}"
        );
        assert!((y[3] - (x[3] - 1.5).exp()).abs() < 1e-6);
    }
}
