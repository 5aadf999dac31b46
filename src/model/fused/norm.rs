//! RMSNorm over the last dimension, `y = w * x / sqrt(mean(x^2) + eps)`, as transformers'
//! `LlamaRMSNorm`.
//!
//! With `r = 1 / sqrt(mean(x^2) + eps)` per row (kept from the forward) and `g = dy * w`:
//!
//! ```text
//! dx = r * (g - x * r^2 * mean(g * x))        dw = sum over rows of dy * x * r
//! ```

use std::sync::Arc;

use burn::backend::Flex;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops};
use burn::backend::flex::FlexTensor;
use burn::tensor::Tensor;
use rayon::prelude::*;

use super::{BLOCK_ROWS, dot, sum_blocks};
use crate::model::flash::simd::dispatch;
use crate::model::host_op::{
    self, HostPath, host, input, into_writable, plain_input, plain_output, record, register,
    register_tensor, unpack, values_mut,
};

/// RMSNorm of `x` `[.., n]` with `weight` `[n]`: the fused op on the CPU (with a backward on
/// the training device), burn's decomposed form elsewhere.
pub fn rms_norm<const D: usize>(x: Tensor<D>, weight: Tensor<1>, eps: f64) -> Tensor<D> {
    let dims = x.dims();
    assert_eq!(weight.dims()[0], dims[D - 1], "RMSNorm weight size");
    match host_op::path(&x.device()) {
        HostPath::Decomposed => decomposed(x, weight, eps),
        HostPath::Forward => {
            let (x, w) = (plain_input(x), plain_input(weight));
            let (y, _) = forward(host(&x), host(&w), eps);
            plain_output(host_op::tensor(y, &dims))
        }
        HostPath::Tracked => {
            let (x, x_node) = input(x);
            let (w, w_node) = input(weight);
            let (y, inv) = forward(host(&x), host(&w), eps);
            let out = host_op::tensor(y, &dims);
            record(NormBackward, [x_node, w_node], out, || State {
                x,
                w,
                inv: Arc::new(inv),
                dims: dims.to_vec(),
            })
        }
    }
}

/// The normed rows of `xs` (rows of `ws.len()` values) and each row's `1 / rms`.
fn forward(xs: &[f32], ws: &[f32], eps: f64) -> (Vec<f32>, Vec<f32>) {
    let n = ws.len();
    let rows = xs.len() / n;
    let mut y = vec![0f32; xs.len()];
    let mut inv = vec![0f32; rows];
    y.par_chunks_mut(BLOCK_ROWS * n)
        .zip(inv.par_chunks_mut(BLOCK_ROWS))
        .enumerate()
        .for_each(|(bi, (y, inv))| {
            let x = &xs[bi * BLOCK_ROWS * n..][..y.len()];
            forward_rows(x, ws, eps as f32, y, inv);
        });
    (y, inv)
}

/// burn's decomposed RMSNorm (any device; the reference of the tests).
pub fn decomposed<const D: usize>(x: Tensor<D>, weight: Tensor<1>, eps: f64) -> Tensor<D> {
    let rms = (x.clone().square().mean_dim(D - 1) + eps).sqrt();
    (x / rms) * weight.unsqueeze::<D>()
}

#[inline(always)]
fn forward_rows_impl<const FMA: bool>(
    x: &[f32],
    w: &[f32],
    eps: f32,
    y: &mut [f32],
    inv: &mut [f32],
) {
    let n = w.len();
    for ((x, y), inv) in x.chunks(n).zip(y.chunks_mut(n)).zip(inv) {
        let r = 1.0 / (dot::<FMA>(x, x) / n as f32 + eps).sqrt();
        *inv = r;
        for ((y, x), w) in y.iter_mut().zip(x).zip(w) {
            *y = x * r * w;
        }
    }
}

/// Backward of whole rows: overwrites `dy_dx` (holding `dy`) with `dx`, adds to `dw`.
#[inline(always)]
fn backward_rows_impl<const FMA: bool>(
    x: &[f32],
    w: &[f32],
    dy_dx: &mut [f32],
    inv: &[f32],
    dw: &mut [f32],
) {
    let n = w.len();
    for ((x, dy), &r) in x.chunks(n).zip(dy_dx.chunks_mut(n)).zip(inv) {
        // mean(g * x) with g = dy * w
        let mut acc = 0f32;
        for ((dy, w), x) in dy.iter().zip(w).zip(x) {
            acc += dy * w * x;
        }
        let k = r * r * acc / n as f32;
        for i in 0..n {
            dw[i] += dy[i] * x[i] * r;
            dy[i] = r * (dy[i] * w[i] - x[i] * k);
        }
    }
}

dispatch!(forward_rows, forward_rows_impl, (x: &[f32], w: &[f32], eps: f32, y: &mut [f32], inv: &mut [f32]) -> ());
dispatch!(backward_rows, backward_rows_impl, (x: &[f32], w: &[f32], dy_dx: &mut [f32], inv: &[f32], dw: &mut [f32]) -> ());

/// The backward step's marker.
#[derive(Debug)]
struct NormBackward;

/// The input, the weight and each row's `1 / rms`.
#[derive(Debug, Clone)]
struct State {
    x: FlexTensor,
    w: FlexTensor,
    inv: Arc<Vec<f32>>,
    dims: Vec<usize>,
}

impl Backward<Flex, 2> for NormBackward {
    type State = State;

    fn backward(self, ops: Ops<State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (d_out, st, [x_node, w_node]) = unpack(ops, grads);
        let (xs, ws) = (host(&st.x), host(&st.w));
        let n = ws.len();
        // The output's gradient is read once: its buffer becomes the input's gradient.
        let mut dx = into_writable(d_out, &st.dims);
        let dw_parts: Vec<Vec<f32>> = values_mut(&mut dx)
            .par_chunks_mut(BLOCK_ROWS * n)
            .enumerate()
            .map(|(bi, dx)| {
                let (start, nr) = (bi * BLOCK_ROWS, dx.len() / n);
                let mut dw = vec![0f32; n];
                let x = &xs[start * n..(start + nr) * n];
                backward_rows(x, ws, dx, &st.inv[start..start + nr], &mut dw);
                dw
            })
            .collect();
        register_tensor(grads, x_node, dx);
        register(grads, w_node, sum_blocks(dw_parts, n), &[n]);
    }
}
