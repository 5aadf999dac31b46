//! The linear layers' product `y = x W` (`x` `[rows, in]`, `W` `[in, out]`) with its backward
//! `dx = dy W^T`, `dW = x^T dy`: the same GEMM calls as burn's CPU matmul and its autodiff
//! backward (so the same numbers), each writing into a fresh buffer that is never zeroed.
//!
//! burn-flex allocates every matmul output zeroed as bytes and then copies it into an aligned
//! buffer (`FlexTensor::empty`): two passes over each output before the GEMM writes it, about
//! 5% of a training step at the 5M shape.

use burn::backend::Flex;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops};
use burn::backend::flex::FlexTensor;
use burn::tensor::Tensor;

use crate::model::flash::{View, matmul_new};
use crate::model::host_op::{
    self, HostPath, host, input, plain_input, plain_output, record, register, unpack,
};

/// `x W` for `x` `[rows, in]` and `w` `[in, out]`: the host op on the CPU (with a backward on
/// the training device), burn's matmul elsewhere.
///
/// # Panics
/// If the inner dimensions differ.
pub fn linear(x: Tensor<2>, w: Tensor<2>) -> Tensor<2> {
    let path = host_op::path(&x.device());
    if path == HostPath::Decomposed {
        return x.matmul(w);
    }
    let ([rows, d_in], [w_in, d_out]) = (x.dims(), w.dims());
    assert_eq!(
        d_in, w_in,
        "linear: input width {d_in}, weight [{w_in}, {d_out}]"
    );
    let sizes = (rows, d_in, d_out);
    if path == HostPath::Forward {
        let (x, w) = (plain_input(x), plain_input(w));
        return plain_output(product(&x, View::rows(host(&w), d_out), sizes));
    }
    let (x, x_node) = input(x);
    let (w, w_node) = input(w);
    let out = product(&x, View::rows(host(&w), d_out), sizes);
    record(LinearBackward, [x_node, w_node], out, || State {
        x,
        w,
        sizes: (rows, d_in, d_out),
    })
}

/// `x W^T` for `x` `[rows, in]` and `w` `[out, in]` (a tied LM head: `w` is the embedding): on
/// the evaluation device the GEMM reads `w` transposed where it lies, elsewhere burn's
/// `x.matmul(w.transpose())`, which on the CPU first copies the transpose (the whole embedding,
/// 113 MB for SmolLM2, once per call: half of a decoding step).
///
/// # Panics
/// If the inner dimensions differ.
pub fn linear_transposed(x: Tensor<2>, w: Tensor<2>) -> Tensor<2> {
    if host_op::path(&x.device()) != HostPath::Forward {
        return x.matmul(w.transpose());
    }
    let ([rows, d_in], [d_out, w_in]) = (x.dims(), w.dims());
    assert_eq!(
        d_in, w_in,
        "linear: input width {d_in}, transposed weight [{d_out}, {w_in}]"
    );
    let (x, w) = (plain_input(x), plain_input(w));
    plain_output(product(
        &x,
        View::transposed(host(&w), d_in),
        (rows, d_in, d_out),
    ))
}

/// `x` `[rows, in]` times `rhs` `[in, out]` (a view of the weight as stored) as a new tensor.
fn product(x: &FlexTensor, rhs: View, (rows, d_in, d_out): (usize, usize, usize)) -> FlexTensor {
    let y = matmul_new(rows, d_out, d_in, View::rows(host(x), d_in), rhs);
    host_op::tensor(y, &[rows, d_out])
}

/// The backward step's marker.
#[derive(Debug)]
struct LinearBackward;

/// The input, the weight and the sizes `(rows, in, out)`.
#[derive(Debug, Clone)]
struct State {
    x: FlexTensor,
    w: FlexTensor,
    sizes: (usize, usize, usize),
}

impl Backward<Flex, 2> for LinearBackward {
    type State = State;

    fn backward(self, ops: Ops<State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (d_out, st, [x_node, w_node]) = unpack(ops, grads);
        let (xs, ws, dys) = (host(&st.x), host(&st.w), host(&d_out));
        let (rows, d_in, d_out) = st.sizes;
        if x_node.is_some() {
            // [rows, out] x [out, in]
            let dx = matmul_new(
                rows,
                d_in,
                d_out,
                View::rows(dys, d_out),
                View::transposed(ws, d_out),
            );
            register(grads, x_node, dx, &[rows, d_in]);
        }
        if w_node.is_some() {
            // [in, rows] x [rows, out]
            let dw = matmul_new(
                d_in,
                d_out,
                rows,
                View::transposed(xs, d_in),
                View::rows(dys, d_out),
            );
            register(grads, w_node, dw, &[d_in, d_out]);
        }
    }
}
