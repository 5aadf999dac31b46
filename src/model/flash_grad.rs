//! Causal attention for training on the CPU backend: a burn autodiff op whose forward is the
//! fused kernel of [`super::flash`] and whose backward is FlashAttention-2's, on host slices.
//!
//! burn's own attention under autodiff is the decomposed form (scores, softmax, weighted sum),
//! whose backward allocates and walks the `[batch, heads, q_len, k_len]` scores, probabilities
//! and their gradients. Here nothing of that size is ever held: the forward keeps each query's
//! log-sum-exp `lse`, and the backward recomputes every score tile `S = (q * scale) K^T`, its
//! probabilities `P = exp(S - lse)` (zero past the causal limit), and from the output gradient
//! `dO`:
//!
//! ```text
//! dV += P^T dO        dP = dO V^T        dS = P * (dP - D),  D = rowsum(dO * O)
//! dQ += scale * dS K  dK += dS^T (q * scale)
//! ```
//!
//! One task per (batch row, KV head) owns its dK, dV and dQ rows, so tasks never share an
//! output; the query heads sharing a KV head are stacked into one tile (grouped-query attention
//! without repeating K/V, as in the forward). Key blocks after a query block's last query are
//! skipped.

use std::sync::Arc;

use burn::backend::Flex;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops};
use burn::backend::flex::FlexTensor;
use burn::tensor::Tensor;
use rayon::prelude::*;

use super::attention::AttentionBlocks;
use super::flash::{self, FlashShape, Task, Tile, View, matmul, visible};
pub use super::host_op::available;
use super::host_op::{self, host, input, record, register, unpack};

/// Query and key tile of the backward: 64 x 64 keeps the causal waste of the diagonal blocks
/// small at training lengths (256-1024) while each GEMM still has 64 x 64 x head_dim work.
fn backward_blocks() -> AttentionBlocks {
    AttentionBlocks { query: 64, key: 64 }
}

/// Differentiable causal attention of q `[batch, heads, len, head_dim]` against k, v
/// `[batch, kv_heads, len, head_dim]` (every query at its own position, no cache); returns
/// `[batch, heads, len, head_dim]`.
///
/// # Panics
/// If the tensors are not on an [`available`] device or their shapes disagree.
pub fn attend(q: Tensor<4>, k: Tensor<4>, v: Tensor<4>) -> Tensor<4> {
    let shape = FlashShape::of(&q, &k, 0);
    assert_eq!(
        shape.q_len, shape.k_len,
        "training attention: q_len != k_len"
    );
    let (q, q_node) = input(q);
    let (k, k_node) = input(k);
    let (v, v_node) = input(v);
    let f = forward(&q, &k, &v, shape);
    let out = host_op::tensor(f.out, &out_dims(shape));
    record(
        AttentionBackward,
        [q_node, k_node, v_node],
        out.clone(),
        || State {
            q,
            k,
            v,
            out,
            lse: Arc::new(f.lse),
            shape,
        },
    )
}

fn out_dims(s: FlashShape) -> [usize; 4] {
    [s.batch, s.heads, s.q_len, s.head_dim]
}

fn forward(
    q: &FlexTensor,
    k: &FlexTensor,
    v: &FlexTensor,
    shape: FlashShape,
) -> flash::FlashOutput {
    flash::flash_attention(
        host(q),
        host(k),
        host(v),
        shape,
        AttentionBlocks::flash(),
        false,
    )
}

/// The backward step's marker (stateless; the saved tensors are in [`State`]).
#[derive(Debug)]
struct AttentionBackward;

/// What the backward needs from the forward: the inputs, the output and each query's
/// log-sum-exp (host memory, shared by reference counting).
#[derive(Debug, Clone)]
struct State {
    q: FlexTensor,
    k: FlexTensor,
    v: FlexTensor,
    out: FlexTensor,
    lse: Arc<Vec<f32>>,
    shape: FlashShape,
}

impl Backward<Flex, 3> for AttentionBackward {
    type State = State;

    fn backward(self, ops: Ops<State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (d_out, st, [q_node, k_node, v_node]) = unpack(ops, grads);
        let g = attention_backward(
            host(&st.q),
            host(&st.k),
            host(&st.v),
            host(&st.out),
            &st.lse,
            host(&d_out),
            st.shape,
            backward_blocks(),
        );
        let s = st.shape;
        let kv_dims = [s.batch, s.kv_heads, s.k_len, s.head_dim];
        register(grads, q_node, g.dq, &out_dims(s));
        register(grads, k_node, g.dk, &kv_dims);
        register(grads, v_node, g.dv, &kv_dims);
    }
}

/// Gradients of the attention inputs, laid out as q, k and v.
#[derive(Debug, Clone, PartialEq)]
pub struct AttentionGrads {
    /// `[batch, heads, q_len, head_dim]`.
    pub dq: Vec<f32>,
    /// `[batch, kv_heads, k_len, head_dim]`.
    pub dk: Vec<f32>,
    /// `[batch, kv_heads, k_len, head_dim]`.
    pub dv: Vec<f32>,
}

/// FlashAttention-2's backward of causal attention (layouts in [`super::flash`]; `out` and
/// `lse` from [`flash::flash_attention`] on the same inputs, `d_out` the output's gradient).
///
/// # Panics
/// If the slice lengths do not fit `shape`.
#[allow(clippy::too_many_arguments)]
pub fn attention_backward(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    out: &[f32],
    lse: &[f32],
    d_out: &[f32],
    shape: FlashShape,
    blocks: AttentionBlocks,
) -> AttentionGrads {
    let s = shape;
    let (g, d) = (s.heads / s.kv_heads, s.head_dim);
    assert_eq!(out.len(), q.len(), "out size");
    assert_eq!(d_out.len(), q.len(), "d_out size");
    assert_eq!(lse.len(), s.batch * s.heads * s.q_len, "lse size");
    let (bq, bk) = (blocks.query.max(1), blocks.key.max(1));
    let scale = (d as f64).powf(-0.5) as f32;
    let kv_size = s.k_len * d;
    // Per (batch row, KV head): dK, dV `[k_len, d]` and dQ `[groups, q_len, d]`.
    let per_head: Vec<(Vec<f32>, Vec<f32>, Vec<f32>)> = (0..s.batch * s.kv_heads)
        .into_par_iter()
        .map(|bh| {
            let (b, kvh) = (bh / s.kv_heads, bh % s.kv_heads);
            let kv_off = bh * kv_size;
            let (kh, vh) = (&k[kv_off..kv_off + kv_size], &v[kv_off..kv_off + kv_size]);
            let mut dk = vec![0f32; kv_size];
            let mut dv = vec![0f32; kv_size];
            let mut dq = vec![0f32; g * s.q_len * d];
            for q_start in (0..s.q_len).step_by(bq) {
                let t = Task {
                    b,
                    kvh,
                    q_start,
                    nq: bq.min(s.q_len - q_start),
                };
                let mut tile = Tile::new(q, &s, &t, bk, scale);
                let rows = tile.rows;
                // The tile's dO rows, lse and D = rowsum(dO * O), stacked like its q rows.
                let mut d_o = vec![0f32; rows * d];
                let mut lse_t = vec![0f32; rows];
                let mut delta = vec![0f32; rows];
                for gi in 0..g {
                    let row0 = (b * s.heads + kvh * g + gi) * s.q_len + q_start;
                    for i in 0..t.nq {
                        let (src, r) = ((row0 + i) * d, gi * t.nq + i);
                        let (go, o) = (&d_out[src..src + d], &out[src..src + d]);
                        d_o[r * d..(r + 1) * d].copy_from_slice(go);
                        delta[r] = go.iter().zip(o).map(|(a, b)| a * b).sum();
                        lse_t[r] = lse[row0 + i];
                    }
                }
                let mut dqs = vec![0f32; rows * d];
                let mut dp = vec![0f32; rows * bk];
                let k_end = s.k_len.min(q_start + t.nq + s.q_offset);
                for k_start in (0..k_end).step_by(bk) {
                    let nk = bk.min(k_end - k_start);
                    tile.scores(kh, d, k_start, nk);
                    let p = &mut tile.s[..rows * nk];
                    for (r, row) in p.chunks_mut(nk).enumerate() {
                        let n = visible(q_start + r % t.nq + s.q_offset, k_start, nk);
                        flash::simd::exp_shifted(&mut row[..n], lse_t[r], false);
                        row[n..].fill(0.0);
                    }
                    let (kb, vb) = (&kh[k_start * d..], &vh[k_start * d..]);
                    let dvb = &mut dv[k_start * d..(k_start + nk) * d];
                    matmul(
                        dvb,
                        nk,
                        d,
                        rows,
                        View::transposed(p, nk),
                        View::rows(&d_o, d),
                        true,
                    );
                    let dp = &mut dp[..rows * nk];
                    matmul(
                        dp,
                        rows,
                        nk,
                        d,
                        View::rows(&d_o, d),
                        View::transposed(vb, d),
                        false,
                    );
                    // dS = P * (dP - D), in place of dP.
                    for (r, (ds, pr)) in dp.chunks_mut(nk).zip(p.chunks(nk)).enumerate() {
                        for (x, pv) in ds.iter_mut().zip(pr) {
                            *x = pv * (*x - delta[r]);
                        }
                    }
                    matmul(
                        &mut dqs,
                        rows,
                        d,
                        nk,
                        View::rows(dp, nk),
                        View::rows(kb, d),
                        true,
                    );
                    let dkb = &mut dk[k_start * d..(k_start + nk) * d];
                    matmul(
                        dkb,
                        nk,
                        d,
                        rows,
                        View::transposed(dp, nk),
                        View::rows(&tile.q, d),
                        true,
                    );
                }
                for gi in 0..g {
                    let dst = (gi * s.q_len + q_start) * d;
                    let src = &dqs[gi * t.nq * d..(gi + 1) * t.nq * d];
                    for (x, y) in dq[dst..dst + t.nq * d].iter_mut().zip(src) {
                        *x = y * scale;
                    }
                }
            }
            (dk, dv, dq)
        })
        .collect();
    let mut grads = AttentionGrads {
        dq: vec![0f32; q.len()],
        dk: vec![0f32; k.len()],
        dv: vec![0f32; v.len()],
    };
    let q_head = g * s.q_len * d;
    for (bh, (dk, dv, dq)) in per_head.into_iter().enumerate() {
        grads.dk[bh * kv_size..(bh + 1) * kv_size].copy_from_slice(&dk);
        grads.dv[bh * kv_size..(bh + 1) * kv_size].copy_from_slice(&dv);
        // The group's query heads are consecutive in q's layout.
        grads.dq[bh * q_head..(bh + 1) * q_head].copy_from_slice(&dq);
    }
    grads
}
