//! RoPE (half-split layout, `x * cos + rotate_half(x) * sin`) fused with the move of the heads
//! in front of the positions: a projection's output `[b, t, heads * d]` becomes the rotated
//! `[b, heads, t, d]` the attention reads, in one pass. The backward is the transposed
//! rotation, `dx1 = dy1 cos1 + dy2 sin2`, `dx2 = dy2 cos2 - dy1 sin1` (halves of the last
//! dimension), written back in the projection's layout.

use std::sync::Arc;

use burn::backend::Flex;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops};
use burn::tensor::{Device, Tensor, TensorData};
use rayon::prelude::*;

use crate::model::flash::simd::{dispatch, fmadd};
use crate::model::host_op::{
    self, HostPath, host, input, plain_input, plain_output, record, register, unpack,
};
use crate::model::llama::apply_rope;

/// cos and sin of `len` consecutive positions, `[len, dim]`, on the host and as `[1, 1, len,
/// dim]` tensors (for the decomposed form); built once per forward, shared by its layers.
#[derive(Debug, Clone)]
pub struct Rotary {
    cos: Arc<Vec<f32>>,
    sin: Arc<Vec<f32>>,
    cos_t: Tensor<4>,
    sin_t: Tensor<4>,
    len: usize,
    dim: usize,
}

impl Rotary {
    /// From row-major `[len, dim]` tables.
    ///
    /// # Panics
    /// If the tables do not have `len * dim` values or `dim` is odd.
    pub fn new(cos: Vec<f32>, sin: Vec<f32>, len: usize, dim: usize, device: &Device) -> Self {
        assert!(
            cos.len() == len * dim && sin.len() == len * dim && dim.is_multiple_of(2),
            "RoPE tables: {} and {} values for [{len}, {dim}]",
            cos.len(),
            sin.len()
        );
        let shape = [1, 1, len, dim];
        Rotary {
            cos_t: Tensor::from_data(TensorData::new(cos.clone(), shape), device),
            sin_t: Tensor::from_data(TensorData::new(sin.clone(), shape), device),
            cos: Arc::new(cos),
            sin: Arc::new(sin),
            len,
            dim,
        }
    }

    /// cos and sin as `[1, 1, len, dim]` tensors.
    pub fn tensors(&self) -> (Tensor<4>, Tensor<4>) {
        (self.cos_t.clone(), self.sin_t.clone())
    }
}

/// `x` `[b, t, heads * d]` as `[b, heads, t, d]` with RoPE applied (`t` = the table's length,
/// `d` its width): the fused op on the CPU (with a backward on the training device), burn's
/// decomposed form elsewhere.
///
/// # Panics
/// If the shapes do not fit the table.
pub fn rotate_heads(x: Tensor<3>, heads: usize, rot: &Rotary) -> Tensor<4> {
    let [b, t, width] = x.dims();
    let d = rot.dim;
    assert!(
        t == rot.len && width == heads * d,
        "RoPE: input [{b}, {t}, {width}] does not fit {heads} heads of a [{}, {d}] table",
        rot.len
    );
    let path = host_op::path(&x.device());
    if path == HostPath::Decomposed {
        let x = x.reshape([b, t, heads, d]).swap_dims(1, 2);
        let (cos, sin) = rot.tensors();
        return apply_rope(x, cos, sin);
    }
    let lay = Layout { t, heads, d };
    let dims = [b, heads, t, d];
    if path == HostPath::Forward {
        let x = plain_input(x);
        return plain_output(host_op::tensor(forward(host(&x), rot, lay), &dims));
    }
    let (x, node) = input(x);
    let out = host_op::tensor(forward(host(&x), rot, lay), &dims);
    record(RopeBackward, [node], out, || State {
        rot: rot.clone(),
        lay,
        batch: b,
    })
}

/// `xs` `[b, t, heads * d]` rotated into `[b, heads, t, d]`.
fn forward(xs: &[f32], rot: &Rotary, lay: Layout) -> Vec<f32> {
    let mut y = vec![0f32; xs.len()];
    // One task per (batch row, head): a contiguous [t, d] block of the output.
    y.par_chunks_mut(lay.t * lay.d)
        .enumerate()
        .for_each(|(bh, y)| {
            forward_head(xs, &rot.cos, &rot.sin, bh, lay, y);
        });
    y
}

/// The sizes of one [`rotate_heads`].
#[derive(Debug, Clone, Copy)]
struct Layout {
    t: usize,
    heads: usize,
    d: usize,
}

/// `y = x cos + rotate_half(x) sin` for one vector: `y1 = x1 c1 - x2 s1`, `y2 = x2 c2 + x1 s2`
/// (halves 1 and 2 of the vector and of its table rows).
#[inline(always)]
fn rotate<const FMA: bool>(x: &[f32], c: &[f32], s: &[f32], y: &mut [f32]) {
    let half = x.len() / 2;
    let (x1, x2) = x.split_at(half);
    let (c1, c2) = c.split_at(half);
    let (s1, s2) = s.split_at(half);
    let (y1, y2) = y.split_at_mut(half);
    for i in 0..half {
        y1[i] = fmadd::<FMA>(x1[i], c1[i], -(x2[i] * s1[i]));
        y2[i] = fmadd::<FMA>(x2[i], c2[i], x1[i] * s2[i]);
    }
}

/// The transpose of [`rotate`]: `dx1 = dy1 c1 + dy2 s2`, `dx2 = dy2 c2 - dy1 s1`.
#[inline(always)]
fn rotate_back<const FMA: bool>(dy: &[f32], c: &[f32], s: &[f32], dx: &mut [f32]) {
    let half = dy.len() / 2;
    let (y1, y2) = dy.split_at(half);
    let (c1, c2) = c.split_at(half);
    let (s1, s2) = s.split_at(half);
    let (x1, x2) = dx.split_at_mut(half);
    for i in 0..half {
        x1[i] = fmadd::<FMA>(y1[i], c1[i], y2[i] * s2[i]);
        x2[i] = fmadd::<FMA>(y2[i], c2[i], -(y1[i] * s1[i]));
    }
}

/// The output block `[t, d]` of task `bh` (batch row `bh / heads`, head `bh % heads`).
#[inline(always)]
fn forward_head_impl<const FMA: bool>(
    x: &[f32],
    cos: &[f32],
    sin: &[f32],
    bh: usize,
    lay: Layout,
    y: &mut [f32],
) {
    let Layout { t, heads, d } = lay;
    let (b, h) = (bh / heads, bh % heads);
    for (p, y) in y.chunks_mut(d).enumerate() {
        let src = ((b * t + p) * heads + h) * d;
        let row = p * d..(p + 1) * d;
        rotate::<FMA>(&x[src..src + d], &cos[row.clone()], &sin[row], y);
    }
}

/// The input-layout gradient block `[heads, d]` of position row `bt` (batch row `bt / t`,
/// position `bt % t`) from the output gradient `dy` `[b, heads, t, d]`.
#[inline(always)]
fn backward_row_impl<const FMA: bool>(
    dy: &[f32],
    cos: &[f32],
    sin: &[f32],
    bt: usize,
    lay: Layout,
    dx: &mut [f32],
) {
    let Layout { t, heads, d } = lay;
    let (b, p) = (bt / t, bt % t);
    let row = p * d..(p + 1) * d;
    for (h, dx) in dx.chunks_mut(d).enumerate() {
        let src = ((b * heads + h) * t + p) * d;
        rotate_back::<FMA>(&dy[src..src + d], &cos[row.clone()], &sin[row.clone()], dx);
    }
}

dispatch!(forward_head, forward_head_impl, (x: &[f32], cos: &[f32], sin: &[f32], bh: usize, lay: Layout, y: &mut [f32]) -> ());
dispatch!(backward_row, backward_row_impl, (dy: &[f32], cos: &[f32], sin: &[f32], bt: usize, lay: Layout, dx: &mut [f32]) -> ());

/// The backward step's marker.
#[derive(Debug)]
struct RopeBackward;

/// The tables and sizes (the backward needs no activation).
#[derive(Debug, Clone)]
struct State {
    rot: Rotary,
    lay: Layout,
    batch: usize,
}

impl Backward<Flex, 1> for RopeBackward {
    type State = State;

    fn backward(self, ops: Ops<State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (d_out, st, [node]) = unpack(ops, grads);
        let dys = host(&d_out);
        let Layout { t, heads, d } = st.lay;
        let mut dx = vec![0f32; dys.len()];
        dx.par_chunks_mut(heads * d)
            .enumerate()
            .for_each(|(bt, dx)| {
                backward_row(dys, &st.rot.cos, &st.rot.sin, bt, st.lay, dx);
            });
        register(grads, node, dx, &[st.batch, t, heads * d]);
    }
}
