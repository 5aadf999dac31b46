//! The model benchmark behind `pipe bench model`: one AdamW training step and one evaluation
//! forward of a ~5M-parameter LLaMA, timed on a device, to compare with PyTorch eager on the same
//! shapes (bench/torch_reference.py). Figures and ratios are recorded in docs/model.md.

use std::time::Instant;

use burn::module::Module;
use burn::optim::{AdamWConfig, GradientsParams};
use burn::tensor::{Device, Int, Tensor, TensorData};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::config::LlamaConfig;
use super::error::Result;
use super::llama::Llama;
use crate::progress::Progress;

/// Shapes and repetitions of [`bench_model`] (defaults: the 5M config).
#[derive(Debug, Clone, PartialEq)]
pub struct BenchOptions {
    /// Model width.
    pub hidden_size: usize,
    /// Decoder layers.
    pub num_hidden_layers: usize,
    /// Attention heads (= kv heads).
    pub num_attention_heads: usize,
    /// MLP width.
    pub intermediate_size: usize,
    /// Vocabulary.
    pub vocab_size: usize,
    /// Training sequence length.
    pub seq_len: usize,
    /// Training batch size.
    pub batch_size: usize,
    /// Length of the evaluation forward (batch 1).
    pub eval_len: usize,
    /// Untimed repetitions first.
    pub warmup: usize,
    /// Timed repetitions (the median is reported).
    pub iters: usize,
}

impl Default for BenchOptions {
    fn default() -> Self {
        BenchOptions {
            hidden_size: 256,
            num_hidden_layers: 4,
            num_attention_heads: 4,
            intermediate_size: 704,
            vocab_size: 4096,
            seq_len: 256,
            batch_size: 8,
            eval_len: 2048,
            warmup: 1,
            iters: 5,
        }
    }
}

/// Result of [`bench_model`]: median seconds, wall clock and process CPU time (the CPU time
/// is the steadier figure on a shared machine).
#[derive(Debug, Clone, PartialEq)]
pub struct BenchReport {
    /// Parameters of the benchmarked model.
    pub params: usize,
    /// Forward + backward + AdamW step at `[batch_size, seq_len]`.
    pub train_step_s: f64,
    /// Forward (logits) of one `eval_len` sequence, no autodiff.
    pub eval_forward_s: f64,
    /// CPU seconds (all threads) of the training step.
    pub train_step_cpu_s: f64,
    /// CPU seconds (all threads) of the evaluation forward.
    pub eval_forward_cpu_s: f64,
}

/// CPU time of the process so far, in seconds (0 where unavailable): what the benchmarks
/// report beside wall time, steadier on a shared machine.
pub fn process_cpu_s() -> f64 {
    #[cfg(unix)]
    {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: clock_gettime writes into the timespec we own.
        if unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) } == 0 {
            return ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9;
        }
    }
    0.0
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn random_ids(
    rng: &mut ChaCha8Rng,
    b: usize,
    t: usize,
    vocab: usize,
    device: &Device,
) -> Tensor<2, Int> {
    let v: Vec<i64> = (0..b * t)
        .map(|_| rng.random_range(0..vocab as i64))
        .collect();
    Tensor::from_data(TensorData::new(v, [b, t]), device)
}

/// Time a training step and an evaluation forward on `device` (plain, not autodiff: the
/// training step uses `device.clone().autodiff()`).
pub fn bench_model(
    opts: &BenchOptions,
    device: &Device,
    progress: &dyn Progress,
) -> Result<BenchReport> {
    let mut cfg = LlamaConfig::new(
        opts.vocab_size,
        opts.hidden_size,
        opts.num_hidden_layers,
        opts.num_attention_heads,
        opts.eval_len.max(opts.seq_len),
    );
    cfg.intermediate_size = opts.intermediate_size;
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let train_device = device.clone().autodiff();
    train_device.seed(7);
    let mut model = Llama::init(&cfg, &train_device)?;
    let params = cfg.num_params();
    let mut optim = AdamWConfig::new().init();
    let iters = opts.iters.max(1);

    progress.start("bench train step", (opts.warmup + iters) as u64);
    let (mut times, mut cpu) = (Vec::new(), Vec::new());
    for i in 0..opts.warmup + iters {
        let ids = random_ids(
            &mut rng,
            opts.batch_size,
            opts.seq_len,
            opts.vocab_size,
            &train_device,
        );
        let start = Instant::now();
        let cpu_start = process_cpu_s();
        let loss = model.lm_loss(ids)?;
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        model = optim.step(1e-3, model, grads);
        // Wait for the step: reading a value syncs the device.
        let _ = model.norm.weight.val().into_data();
        if i >= opts.warmup {
            times.push(start.elapsed().as_secs_f64());
            cpu.push(process_cpu_s() - cpu_start);
        }
        progress.advance(1);
    }
    let train_step_s = median(times);
    let train_step_cpu_s = median(cpu);

    let eval_model = model.valid();
    progress.start("bench eval forward", (opts.warmup + iters) as u64);
    let (mut times, mut cpu) = (Vec::new(), Vec::new());
    for i in 0..opts.warmup + iters {
        let ids = random_ids(&mut rng, 1, opts.eval_len, opts.vocab_size, device);
        let start = Instant::now();
        let cpu_start = process_cpu_s();
        let logits = eval_model.forward(ids)?;
        let _ = logits.narrow(1, opts.eval_len - 1, 1).into_data();
        if i >= opts.warmup {
            times.push(start.elapsed().as_secs_f64());
            cpu.push(process_cpu_s() - cpu_start);
        }
        progress.advance(1);
    }
    let eval_forward_s = median(times);
    let eval_forward_cpu_s = median(cpu);
    progress.message(&format!(
        "train step {train_step_s:.3} s, eval forward {eval_forward_s:.3} s"
    ));
    Ok(BenchReport {
        params,
        train_step_s,
        eval_forward_s,
        train_step_cpu_s,
        eval_forward_cpu_s,
    })
}
