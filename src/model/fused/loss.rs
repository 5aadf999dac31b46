//! The training loss: mean next-token cross-entropy `mean(logsumexp(z) - z[target])` over the
//! rows of logits `z`, whose gradient is `(softmax(z) - onehot(target)) * dloss / rows`.
//!
//! The fused op reads each row of logits twice forward (max, then the vectorised `exp` and sum
//! of [`crate::model::flash::simd`]) and writes its gradient in one pass backward, where burn's
//! decomposed form (max, shift, exp, sum, log, gather, subtract, mean) is 8 passes over
//! `[rows, vocab]` forward and as many backward.

use std::sync::Arc;

use burn::backend::Flex;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops};
use burn::backend::flex::FlexTensor;
use burn::tensor::{Int, Tensor};
use rayon::prelude::*;

use super::BLOCK_ROWS;
use crate::model::error::{ModelError, Result};
use crate::model::flash::simd::{self, dispatch, exp_with};
use crate::model::host_op::{
    self, host, input, into_writable, record, register_tensor, unpack, values_mut,
};

/// Mean cross-entropy (nats) of `logits` `[b, t, vocab]` against `targets` `[b, t]`, shape
/// `[1]`: the fused op on the CPU training device, burn's decomposed form elsewhere.
///
/// # Errors
/// On the CPU training device, a target outside the vocabulary.
pub fn cross_entropy(logits: Tensor<3>, targets: Tensor<2, Int>) -> Result<Tensor<1>> {
    if !host_op::available(&logits.device()) {
        return Ok(decomposed(logits, targets));
    }
    let [b, t, vocab] = logits.dims();
    let targets: Vec<usize> = targets
        .into_data()
        .try_into_vec_as::<i64>()
        .expect("int tensor data converts to i64")
        .into_iter()
        .map(|x| {
            usize::try_from(x)
                .ok()
                .filter(|&x| x < vocab)
                .ok_or_else(|| {
                    ModelError::Input(format!("target token {x} is not below vocab_size {vocab}"))
                })
        })
        .collect::<Result<_>>()?;
    let rows = b * t;
    assert_eq!(targets.len(), rows, "targets do not fit the logits");
    let (z, node) = input(logits);
    let zs = host(&z);
    let mut lse = vec![0f32; rows];
    // Per block: the sum of its rows' losses (in f64, added in block order below).
    let sums: Vec<f64> = lse
        .par_chunks_mut(BLOCK_ROWS)
        .enumerate()
        .map(|(bi, lse)| {
            let mut row = vec![0f32; vocab];
            let mut sum = 0f64;
            for (i, lse) in lse.iter_mut().enumerate() {
                let r = bi * BLOCK_ROWS + i;
                let z = &zs[r * vocab..(r + 1) * vocab];
                row.copy_from_slice(z);
                *lse = simd::logsumexp(&mut row);
                sum += f64::from(*lse - z[targets[r]]);
            }
            sum
        })
        .collect();
    let loss = (sums.iter().sum::<f64>() / rows as f64) as f32;
    let out = host_op::tensor(vec![loss], &[1]);
    Ok(record(LossBackward, [node], out, || State {
        z,
        lse: Arc::new(lse),
        targets: Arc::new(targets),
        vocab,
        dims: vec![b, t, vocab],
    }))
}

/// burn's decomposed form (any device): `logsumexp(z) - z[target]` without materialising the
/// log-softmax.
pub fn decomposed(logits: Tensor<3>, targets: Tensor<2, Int>) -> Tensor<1> {
    let [b, t, _] = logits.dims();
    let max = logits.clone().max_dim(2).detach();
    let shifted = logits - max;
    let lse = shifted.clone().exp().sum_dim(2).log(); // [b, t, 1]
    let picked = shifted.gather(2, targets.unsqueeze_dim::<3>(2)); // [b, t, 1]
    (lse - picked).reshape([b * t]).mean()
}

/// `z_j <- e^(z_j - lse) * scale`: one row of logits becomes its gradient, before the target's
/// `- scale`.
#[inline(always)]
fn softmax_scaled_impl<const FMA: bool>(z: &mut [f32], lse: f32, scale: f32) {
    for z in z.iter_mut() {
        *z = exp_with::<FMA>(*z - lse) * scale;
    }
}

dispatch!(softmax_scaled, softmax_scaled_impl, (z: &mut [f32], lse: f32, scale: f32) -> ());

/// The backward step's marker.
#[derive(Debug)]
struct LossBackward;

/// The logits, each row's log-sum-exp and target.
#[derive(Debug, Clone)]
struct State {
    z: FlexTensor,
    lse: Arc<Vec<f32>>,
    targets: Arc<Vec<usize>>,
    vocab: usize,
    dims: Vec<usize>,
}

impl Backward<Flex, 1> for LossBackward {
    type State = State;

    fn backward(self, ops: Ops<State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (d_out, st, [node]) = unpack(ops, grads);
        let vocab = st.vocab;
        let scale = host(&d_out)[0] / st.lse.len() as f32;
        // The logits are read for the last time: their buffer becomes the gradient.
        let mut g = into_writable(st.z, &st.dims);
        values_mut(&mut g)
            .par_chunks_mut(BLOCK_ROWS * vocab)
            .enumerate()
            .for_each(|(bi, g)| {
                for (i, g) in g.chunks_mut(vocab).enumerate() {
                    let r = bi * BLOCK_ROWS + i;
                    softmax_scaled(g, st.lse[r], scale);
                    g[st.targets[r]] -= scale;
                }
            });
        register_tensor(grads, node, g);
    }
}
