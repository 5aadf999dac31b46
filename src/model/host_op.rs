//! The plumbing of ropelens's own autodiff ops for the CPU training device: burn's `extension`
//! feature hands over a tracked tensor's host buffer and graph node
//! (`Tensor::try_into_primitive::<Autodiff<Flex>>`), the op computes on host `f32` slices, and a
//! [`Backward`] step registers the inputs' gradients. Used by [`super::flash_grad`] (attention)
//! and [`super::fused`] (RMSNorm, SwiGLU, RoPE, the loss).
//!
//! On burn's CPU backend without autodiff (evaluation) the same kernels run forward only, on
//! the tensors' own buffers ([`plain_input`], [`plain_output`]). On any other device (another
//! backend, gradient checkpointing) the model uses burn's decomposed form of the same function;
//! [`path`] says which.

use burn::backend::autodiff::NodeId;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, NodeGuard, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::{Autodiff, Flex};
use burn::tensor::{Device, GradientCheckpointingStrategy, Tensor, TensorData};

/// The autodiff backend the ops are written for: burn's CPU backend without checkpointing.
pub(crate) type Train = Autodiff<Flex, NoCheckpointing>;

/// Whether the host ops run on `device`: burn's CPU backend with autodiff and no gradient
/// checkpointing (the training device).
pub fn available(device: &Device) -> bool {
    device.is_autodiff()
        && device.gradient_checkpointing_strategy() == Some(GradientCheckpointingStrategy::Disabled)
        && *device == Device::flex()
}

/// Where a fused op runs on a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostPath {
    /// Host kernels with a recorded backward: the CPU training device ([`available`]).
    Tracked,
    /// Host kernels, forward only: burn's CPU backend without autodiff (evaluation).
    Forward,
    /// burn's decomposed form: any other device.
    Decomposed,
}

/// Which [`HostPath`] the fused ops take on `device`.
pub fn path(device: &Device) -> HostPath {
    if available(device) {
        HostPath::Tracked
    } else if forward_available(device) {
        HostPath::Forward
    } else {
        HostPath::Decomposed
    }
}

/// Whether the forward-only host kernels run on `device`: burn's CPU backend without autodiff.
pub fn forward_available(device: &Device) -> bool {
    !device.is_autodiff() && *device == Device::flex()
}

/// A float tensor of the evaluation device ([`forward_available`]) as its contiguous `f32`
/// buffer (copied only if it is strided).
///
/// # Panics
/// If `t` is not on such a device or not `f32`.
pub(crate) fn plain_input<const D: usize>(t: Tensor<D>) -> FlexTensor {
    contiguous(
        t.try_into_primitive::<Flex>()
            .expect("a forward-only host op needs the CPU device without autodiff"),
    )
}

/// A host buffer of the evaluation device as a tensor.
pub(crate) fn plain_output<const D: usize>(t: FlexTensor) -> Tensor<D> {
    Tensor::from_primitive::<Flex>(t)
}

/// A float tensor of the training device as its contiguous `f32` buffer (copied only if it is
/// strided) and its graph node.
///
/// # Panics
/// If `t` is not on an [`available`] device or not `f32`.
pub(crate) fn input<const D: usize>(t: Tensor<D>) -> (FlexTensor, NodeGuard) {
    let (t, node) = t
        .try_into_primitive::<Train>()
        .expect("a host op needs the CPU autodiff device")
        .into_parts();
    (contiguous(t), node)
}

/// `t` with a contiguous `f32` layout (a copy only if it is strided).
pub(crate) fn contiguous(t: FlexTensor) -> FlexTensor {
    let t = t.to_contiguous();
    assert!(t.as_slice::<f32>().is_some(), "host ops need f32 tensors");
    t
}

/// The values of a tensor made contiguous by [`input`] or [`contiguous`].
pub(crate) fn host(t: &FlexTensor) -> &[f32] {
    t.as_slice::<f32>()
        .expect("contiguous f32 tensor (made so by `contiguous`)")
}

/// A host buffer as a tensor of shape `dims`.
pub(crate) fn tensor(values: Vec<f32>, dims: &[usize]) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(values, dims.to_vec()))
}

/// Puts the op's output `out` on the graph with `nodes` as its parents; `state` (what the
/// backward needs) is built only when some parent requires a gradient.
pub(crate) fn record<Op, const N: usize, const D: usize>(
    op: Op,
    nodes: [NodeGuard; N],
    out: FlexTensor,
    state: impl FnOnce() -> Op::State,
) -> Tensor<D>
where
    Op: Backward<Flex, N>,
{
    let out = match op
        .prepare::<NoCheckpointing>(nodes)
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish(state(), out),
        OpsKind::UnTracked(prep) => prep.finish(out),
    };
    Tensor::from_primitive::<Train>(out)
}

/// What a backward step starts from: the gradient of the op's output (contiguous), the saved
/// state, and the parents that want a gradient.
pub(crate) fn unpack<S, const N: usize>(
    ops: Ops<S, N>,
    grads: &mut Gradients,
) -> (FlexTensor, S, [Option<NodeId>; N]) {
    let d_out = contiguous(grads.consume::<Flex>(&ops.node));
    (d_out, ops.state, ops.parents.map(|p| p.map(|n| n.id)))
}

/// Registers `values` (shape `dims`) as the gradient of `parent`, if it wants one.
pub(crate) fn register(
    grads: &mut Gradients,
    parent: Option<NodeId>,
    values: Vec<f32>,
    dims: &[usize],
) {
    register_tensor(grads, parent, tensor(values, dims));
}

/// Registers `t` as the gradient of `parent`, if it wants one.
pub(crate) fn register_tensor(grads: &mut Gradients, parent: Option<NodeId>, t: FlexTensor) {
    if let Some(id) = parent {
        grads.register::<Flex>(id, t);
    }
}

/// `t` (shape `dims`) as a contiguous tensor whose buffer nothing else holds, so that a backward
/// step can overwrite it with a gradient of the same size (typically the output's gradient, or
/// a saved activation that is read for the last time): `t` itself when it is the only owner of
/// exactly its values, else a copy.
pub(crate) fn into_writable(t: FlexTensor, dims: &[usize]) -> FlexTensor {
    let mut t = contiguous(t);
    let n = host(&t).len();
    if t.try_storage_mut::<f32>().map(|s| s.len()) == Some(n) {
        return t;
    }
    tensor(host(&t).to_vec(), dims)
}

/// The values of a tensor made writable by [`into_writable`].
pub(crate) fn values_mut(t: &mut FlexTensor) -> &mut [f32] {
    t.try_storage_mut::<f32>()
        .expect("a tensor made writable by `into_writable`")
}
