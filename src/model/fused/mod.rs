//! Fused training ops for the CPU backend: RMSNorm, SwiGLU's gate, RoPE (with the move of the
//! heads in front of the positions), the next-token cross-entropy and the linear layers'
//! product, each a burn autodiff op
//! ([`super::host_op`]) whose forward and backward are one pass over host `f32` slices.
//!
//! burn's decomposed forms of these functions are 3-9 autodiff nodes each, and every node is a
//! pass over its tensor with a fresh allocation forward and again backward. Each function here
//! takes the model's tensors and falls back to that decomposed form off the CPU training device
//! (another backend, evaluation without autodiff), so model code stays device-agnostic.
//!
//! Work is split into fixed blocks of rows and any reduction over rows (a weight's gradient,
//! the mean loss) sums the blocks' partial results in block order, so results do not depend on
//! the number of threads.

pub mod linear;
pub mod loss;
pub mod norm;
pub mod rope;
pub mod swiglu;

/// Rows per parallel task of the row-wise kernels.
const BLOCK_ROWS: usize = 64;

/// Lanes of the manual reductions (one AVX-512 register).
const LANES: usize = 16;

/// `sum_i a_i b_i` with [`LANES`] partial sums (vectorisable; the same order on every CPU).
#[inline(always)]
fn dot<const FMA: bool>(a: &[f32], b: &[f32]) -> f32 {
    use super::flash::simd::fmadd;
    let mut acc = [0f32; LANES];
    let (ca, cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let (ta, tb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..LANES {
            acc[i] = fmadd::<FMA>(x[i], y[i], acc[i]);
        }
    }
    let mut s = acc.iter().sum::<f32>();
    for (x, y) in ta.iter().zip(tb) {
        s = fmadd::<FMA>(*x, *y, s);
    }
    s
}

/// Sums per-block vectors of `len` values in block order.
fn sum_blocks(parts: Vec<Vec<f32>>, len: usize) -> Vec<f32> {
    let mut total = vec![0f32; len];
    for p in parts {
        for (t, v) in total.iter_mut().zip(p) {
            *t += v;
        }
    }
    total
}
