//! Data parallelism inside one training step: the batch is split into a fixed number of shards
//! (`train.shards`, at most one per row), each shard is differentiated on its own copy of the
//! parameter leaves, in parallel, and the gradients are summed in shard order.
//!
//! Why: burn's CPU backend parallelises inside large ops only, so at the small shapes of the
//! built-in studies a second core added 0-20% to a training step, where independent shards of
//! the batch scale with the cores (README "Performance").
//!
//! Each shard runs on its own one-thread rayon pool (a single shard too), so that burn's
//! internal `par_iter`s inside a shard run in a fixed order whatever the machine: rayon splits
//! reductions by work stealing, and shards sharing a pool made float sums (and so losses)
//! differ in the last bit from run to run, and with the number of threads. The loss is the
//! same mean over the batch's tokens whatever the split, but sums differ in the last bits
//! between splits: a run is bit-reproducible for the same seed and the same `shards`, with any
//! number of threads (`RAYON_NUM_THREADS` only changes the speed).

use burn::tensor::{Device, Int, Tensor, TensorData};
use rayon::{ThreadPool, ThreadPoolBuilder};

use super::error::{Result, TrainError};
use super::optim::{Grads, fork_leaves};
use crate::model::Llama;
use crate::model::llama::to_f32_vec;

/// How the rows of one micro-batch are split, and the threads that run the shards.
#[derive(Debug)]
pub struct Shards {
    /// Row ranges `[start, end)`, in order.
    bounds: Vec<(usize, usize)>,
    /// One single-thread pool per shard.
    pools: Vec<ThreadPool>,
    rows: usize,
    window: usize,
    grad_accum: usize,
}

impl Shards {
    /// `rows` windows of `window` tokens split into `count` shards as even as possible (earlier
    /// ones one row larger; at most one shard per row); gradients are scaled for `grad_accum`
    /// micro-batches per step.
    pub fn new(rows: usize, window: usize, grad_accum: usize, count: usize) -> Result<Shards> {
        let n = count.clamp(1, rows.max(1));
        let (base, extra) = (rows / n, rows % n);
        let mut bounds = Vec::with_capacity(n);
        let mut start = 0;
        for i in 0..n {
            let len = base + usize::from(i < extra);
            bounds.push((start, start + len));
            start += len;
        }
        // No fallback to fewer shards when threads cannot be started: the split decides the
        // numbers, so it must be the one asked for.
        let pools = (0..n)
            .map(|_| ThreadPoolBuilder::new().num_threads(1).build())
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| {
                TrainError::param(
                    "train.shards",
                    format!("cannot start a thread for each of {n} shards: {e}"),
                )
            })?;
        Ok(Shards {
            bounds,
            pools,
            rows,
            window,
            grad_accum: grad_accum.max(1),
        })
    }

    /// Number of shards.
    pub fn len(&self) -> usize {
        self.bounds.len()
    }

    /// Whether there are none (never: at least one).
    pub fn is_empty(&self) -> bool {
        self.bounds.is_empty()
    }

    /// The mean next-token loss of `tokens` (`rows` windows, row-major) under `model` (on an
    /// autodiff device), and the gradients of that loss divided by `grad_accum`.
    pub fn loss_and_grads(
        &self,
        model: &Llama,
        tokens: &[u32],
        device: &Device,
    ) -> Result<(f64, Grads)> {
        if let ([(start, end)], [pool]) = (&self.bounds[..], &self.pools[..]) {
            // One shard: the model's own leaves, on its one-thread pool.
            return pool.install(|| self.shard_step(model, tokens, *start, *end, device));
        }
        let work = |start: usize, end: usize| {
            self.shard_step(&fork_leaves(model), tokens, start, end, device)
        };
        let parts: Vec<Result<(f64, Grads)>> = std::thread::scope(|scope| {
            let handles: Vec<_> = self
                .bounds
                .iter()
                .zip(&self.pools)
                .map(|(&(start, end), pool)| {
                    let work = &work;
                    scope.spawn(move || pool.install(|| work(start, end)))
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
                .collect()
        });
        let mut loss = 0.0;
        let mut grads = Grads::default();
        for (part, &(start, end)) in parts.into_iter().zip(&self.bounds) {
            let (value, g) = part?;
            loss += value * (end - start) as f64 / self.rows as f64;
            grads.merge(g);
        }
        Ok((loss, grads))
    }

    /// The loss of rows `start..end` of `tokens` under `model`, and the gradients of its share
    /// of the step's loss: the shard's mean divided by `rows * grad_accum / shard_rows`. For one
    /// shard that is `grad_accum`, exactly as an unsharded step divides; for two even shards it
    /// is a power of two, so halving the loss is exact.
    fn shard_step(
        &self,
        model: &Llama,
        tokens: &[u32],
        start: usize,
        end: usize,
        device: &Device,
    ) -> Result<(f64, Grads)> {
        let rows = end - start;
        let data: Vec<i64> = tokens[start * self.window..end * self.window]
            .iter()
            .map(|&t| t as i64)
            .collect();
        // [rows, seq_len + 1]
        let ids = Tensor::<2, Int>::from_data(TensorData::new(data, [rows, self.window]), device);
        let loss = model.lm_loss(ids)?;
        let value = to_f32_vec(loss.clone())[0] as f64;
        let divisor = (self.rows * self.grad_accum) as f64 / rows as f64;
        let loss = if divisor != 1.0 {
            loss.div_scalar(divisor)
        } else {
            loss
        };
        let mut g = loss.backward();
        let mut grads = Grads::default();
        grads.accumulate(model, &mut g);
        Ok((value, grads))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_split_evenly_in_order() {
        let s = Shards::new(7, 5, 1, 3).unwrap();
        assert_eq!(s.bounds, [(0, 3), (3, 5), (5, 7)]);
        assert_eq!(s.pools.len(), 3);
        assert_eq!(Shards::new(2, 5, 1, 8).unwrap().bounds, [(0, 1), (1, 2)]);
        let one = Shards::new(4, 5, 1, 0).unwrap();
        assert_eq!((one.bounds.as_slice(), one.pools.len()), (&[(0, 4)][..], 1));
    }
}
