//! SwiGLU's gate, `y = silu(g) * u = g * s * u` with `s = sigmoid(g)`, and its backward
//!
//! ```text
//! du = dy * g * s        dg = dy * u * s * (1 + g * (1 - s))
//! ```
//!
//! with the vectorised `exp` of [`crate::model::flash::simd`] (burn's SiLU calls libm's scalar
//! `expf` per element).

use burn::backend::Flex;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops};
use burn::backend::flex::FlexTensor;
use burn::tensor::Tensor;
use burn::tensor::activation::silu;
use rayon::prelude::*;

use crate::model::flash::simd::{dispatch, exp_with};
use crate::model::host_op::{
    self, HostPath, host, input, into_writable, plain_input, plain_output, record, register,
    register_tensor, unpack, values_mut,
};

/// Elements per parallel task.
const CHUNK: usize = 1 << 14;

/// `silu(gate) * up` (same shapes): the fused op on the CPU (with a backward on the training
/// device), burn's decomposed form elsewhere.
pub fn swiglu<const D: usize>(gate: Tensor<D>, up: Tensor<D>) -> Tensor<D> {
    let dims = gate.dims();
    assert_eq!(dims, up.dims(), "SwiGLU: gate and up shapes differ");
    match host_op::path(&gate.device()) {
        HostPath::Decomposed => decomposed(gate, up),
        HostPath::Forward => {
            let (g, u) = (plain_input(gate), plain_input(up));
            plain_output(host_op::tensor(forward(host(&g), host(&u)), &dims))
        }
        HostPath::Tracked => {
            let (g, g_node) = input(gate);
            let (u, u_node) = input(up);
            let out = host_op::tensor(forward(host(&g), host(&u)), &dims);
            record(SwigluBackward, [g_node, u_node], out, || State {
                g,
                u,
                dims: dims.to_vec(),
            })
        }
    }
}

/// `silu(g) * u` elementwise.
fn forward(gs: &[f32], us: &[f32]) -> Vec<f32> {
    let mut y = vec![0f32; gs.len()];
    y.par_chunks_mut(CHUNK).enumerate().for_each(|(ci, y)| {
        let span = ci * CHUNK..ci * CHUNK + y.len();
        forward_kernel(&gs[span.clone()], &us[span], y);
    });
    y
}

/// burn's decomposed form (any device; the reference of the tests).
pub fn decomposed<const D: usize>(gate: Tensor<D>, up: Tensor<D>) -> Tensor<D> {
    silu(gate) * up
}

/// `sigmoid(g)`.
#[inline(always)]
fn sigmoid<const FMA: bool>(g: f32) -> f32 {
    1.0 / (1.0 + exp_with::<FMA>(-g))
}

#[inline(always)]
fn forward_impl<const FMA: bool>(g: &[f32], u: &[f32], y: &mut [f32]) {
    for ((y, &g), &u) in y.iter_mut().zip(g).zip(u) {
        *y = g * sigmoid::<FMA>(g) * u;
    }
}

/// `dy_du` holds `dy` and is overwritten with `du`.
#[inline(always)]
fn backward_impl<const FMA: bool>(g: &[f32], u: &[f32], dy_du: &mut [f32], dg: &mut [f32]) {
    for i in 0..dg.len() {
        let (g, u, dy) = (g[i], u[i], dy_du[i]);
        let s = sigmoid::<FMA>(g);
        dy_du[i] = dy * g * s;
        dg[i] = dy * u * s * (1.0 + g * (1.0 - s));
    }
}

dispatch!(forward_kernel, forward_impl, (g: &[f32], u: &[f32], y: &mut [f32]) -> ());
dispatch!(backward_kernel, backward_impl, (g: &[f32], u: &[f32], dy_du: &mut [f32], dg: &mut [f32]) -> ());

/// The backward step's marker.
#[derive(Debug)]
struct SwigluBackward;

/// The gate and up inputs.
#[derive(Debug, Clone)]
struct State {
    g: FlexTensor,
    u: FlexTensor,
    dims: Vec<usize>,
}

impl Backward<Flex, 2> for SwigluBackward {
    type State = State;

    fn backward(self, ops: Ops<State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (d_out, st, [g_node, u_node]) = unpack(ops, grads);
        let (gs, us) = (host(&st.g), host(&st.u));
        // The output's gradient is read once: its buffer becomes up's gradient.
        let mut du = into_writable(d_out, &st.dims);
        let mut dg = vec![0f32; gs.len()];
        dg.par_chunks_mut(CHUNK)
            .zip(values_mut(&mut du).par_chunks_mut(CHUNK))
            .enumerate()
            .for_each(|(ci, (dg, du))| {
                let span = ci * CHUNK..ci * CHUNK + dg.len();
                backward_kernel(&gs[span.clone()], &us[span], du, dg);
            });
        register(grads, g_node, dg, &st.dims);
        register_tensor(grads, u_node, du);
    }
}
