//! Training throughput of the real loop ([`super::train`]) on random tokens: `pipe bench train`
//! at a shape given by flags ([`TrainShape`]), and the configs docs/train.md reports (the
//! quickstart base model, its fine-tune, and the ~5M-parameter benchmark model of docs/model.md).
//! The PyTorch reference for the same shapes is bench/torch_train_shapes.py.

use std::time::Instant;

use burn::tensor::Device;

use super::error::Result;
use super::optim::seeded_init;
use super::params::{DEFAULT_SHARDS, TrainParams};
use super::run::{TrainJob, train};
use super::source::TokenWindows;
use crate::model::bench::process_cpu_s;
use crate::model::{Llama, LlamaConfig};
use crate::progress::Progress;

/// One throughput measurement.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainBench {
    /// Model config.
    pub config: LlamaConfig,
    /// Rows per step.
    pub batch_size: usize,
    /// Tokens per row.
    pub seq_len: usize,
    /// Steps timed (after one untimed warmup step).
    pub steps: u64,
    /// Data-parallel shards per batch (`train.shards`).
    pub shards: usize,
}

/// What [`bench_train`] measured.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainBenchReport {
    /// Parameters of the model.
    pub params: usize,
    /// Mean seconds per optimiser step (wall).
    pub step_s: f64,
    /// Mean process CPU seconds per optimiser step (all threads; a difference of the process's
    /// cumulative CPU time, so never negative).
    pub step_cpu_s: f64,
    /// Training tokens per second.
    pub tokens_per_s: f64,
}

/// The shape `pipe bench train` measures, as its flags give it (defaults: [`TrainBench::five_m`]).
#[derive(Debug, Clone, PartialEq, clap::Args)]
pub struct TrainShape {
    /// Model width.
    #[arg(long, default_value_t = 256)]
    pub hidden: usize,
    /// Decoder layers.
    #[arg(long, default_value_t = 4)]
    pub layers: usize,
    /// Attention heads (= key/value heads); must divide --hidden into an even head width.
    #[arg(long, default_value_t = 4)]
    pub heads: usize,
    /// MLP width (default: 8/3 x hidden rounded up to a multiple of 32, as the train stage's
    /// models and bench/torch_train_shapes.py use).
    #[arg(long)]
    pub ffn: Option<usize>,
    /// Vocabulary size.
    #[arg(long, default_value_t = 4096)]
    pub vocab: usize,
    /// Tokens per row.
    #[arg(long, default_value_t = 256)]
    pub seq_len: usize,
    /// Rows per optimiser step.
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
    /// Steps timed (after one untimed step, which allocates and warms up).
    #[arg(long, default_value_t = 5)]
    pub steps: u64,
    /// Data-parallel shards per batch (`train.shards`).
    #[arg(long, default_value_t = DEFAULT_SHARDS)]
    pub shards: usize,
}

impl TrainShape {
    /// The measurement these flags describe, or what is wrong with them, naming the flag.
    pub fn bench(&self) -> std::result::Result<TrainBench, String> {
        for (flag, v) in [
            ("--hidden", self.hidden),
            ("--layers", self.layers),
            ("--heads", self.heads),
            ("--vocab", self.vocab),
            ("--seq-len", self.seq_len),
            ("--batch", self.batch),
            ("--steps", self.steps as usize),
            ("--shards", self.shards),
            ("--ffn", self.ffn.unwrap_or(1)),
        ] {
            if v == 0 {
                return Err(format!("{flag} must be at least 1"));
            }
        }
        if !self.hidden.is_multiple_of(self.heads) || !(self.hidden / self.heads).is_multiple_of(2)
        {
            return Err(format!(
                "--hidden {} must be --heads {} times an even head width (RoPE rotates pairs)",
                self.hidden, self.heads
            ));
        }
        let mut config = LlamaConfig::new(
            self.vocab,
            self.hidden,
            self.layers,
            self.heads,
            self.seq_len,
        );
        if let Some(ffn) = self.ffn {
            config.intermediate_size = ffn;
        }
        Ok(TrainBench {
            config,
            batch_size: self.batch,
            seq_len: self.seq_len,
            steps: self.steps,
            shards: self.shards,
        })
    }
}

impl TrainBench {
    /// The quickstart pipeline's base model: hidden 128, 4 layers, 4 heads, vocab 2048,
    /// 64 tokens x batch 32.
    pub fn quickstart() -> Self {
        TrainBench {
            config: LlamaConfig::new(2048, 128, 4, 4, 64),
            batch_size: 32,
            seq_len: 64,
            steps: 10,
            shards: DEFAULT_SHARDS,
        }
    }

    /// The quickstart's RoPE-extension fine-tune: the base model at 4x its length, 256 tokens
    /// x batch 8.
    pub fn quickstart_extend() -> Self {
        TrainBench {
            config: LlamaConfig::new(2048, 128, 4, 4, 256),
            batch_size: 8,
            seq_len: 256,
            steps: 10,
            shards: DEFAULT_SHARDS,
        }
    }

    /// The ~5M-parameter model of the model benchmark: hidden 256, 4 layers, ffn 704, vocab
    /// 4096, 256 tokens x batch 8.
    pub fn five_m() -> Self {
        let mut config = LlamaConfig::new(4096, 256, 4, 4, 256);
        config.intermediate_size = 704;
        TrainBench {
            config,
            batch_size: 8,
            seq_len: 256,
            steps: 5,
            shards: DEFAULT_SHARDS,
        }
    }
}

/// Time the training loop (forward, backward, clipping, AdamW; no validation or checkpoints
/// but the final one) on `device` (plain; training uses its autodiff form): one run of
/// `steps + 1` steps, timed between the loop's own step reports, so the first step (allocation
/// and warm-up), the setup and the final checkpoint are all outside the timed steps.
pub fn bench_train(
    bench: &TrainBench,
    device: &Device,
    progress: &dyn Progress,
) -> Result<TrainBenchReport> {
    let dir = tempfile::tempdir().map_err(|e| super::TrainError::io(std::env::temp_dir(), e))?;
    let vocab = bench.config.vocab_size as u64;
    let tokens: Vec<u32> = (0..200_000u64)
        .map(|i| ((i.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 17) % vocab) as u32)
        .collect();
    let ad = device.clone().autodiff();
    let params = TrainParams {
        seq_len: bench.seq_len,
        batch_size: bench.batch_size,
        steps: Some(bench.steps + 1),
        shards: bench.shards,
        checkpoint_every: 0,
        val_every: 0,
        ..TrainParams::default()
    };
    let model = seeded_init(Llama::init(&bench.config, &ad)?, 1);
    let mut source = TokenWindows::new(tokens, bench.seq_len + 1, 1)?;
    let clock = StepClock::new(progress);
    let job = TrainJob {
        params: &params,
        seed: 1,
        run_dir: dir.path(),
        progress: &clock,
        stop_after: None,
    };
    train(&job, model, &mut source, &[])?;
    let stamps = clock.stamps();
    // Stamp k is taken when step k ends: stamps 1..=steps bound the timed steps.
    let (Some(first), Some(last)) = (stamps.first(), stamps.last()) else {
        return Err(super::TrainError::Data(
            "the training loop reported no step".into(),
        ));
    };
    let timed = (stamps.len() - 1) as f64;
    if timed < 1.0 {
        return Err(super::TrainError::Data(format!(
            "the training loop reported {} step(s), fewer than the 2 needed to time one",
            stamps.len()
        )));
    }
    let step_s = (last.0 - first.0).as_secs_f64() / timed;
    Ok(TrainBenchReport {
        params: bench.config.num_params(),
        step_s,
        step_cpu_s: (last.1 - first.1) / timed,
        tokens_per_s: (bench.batch_size * bench.seq_len) as f64 / step_s,
    })
}

/// A [`Progress`] that passes everything on and notes the wall clock and the process CPU time
/// at each step the training loop reports (it advances by one after every optimiser step).
struct StepClock<'a> {
    inner: &'a dyn Progress,
    stamps: std::sync::Mutex<Vec<(Instant, f64)>>,
}

impl<'a> StepClock<'a> {
    fn new(inner: &'a dyn Progress) -> Self {
        StepClock {
            inner,
            stamps: std::sync::Mutex::new(Vec::new()),
        }
    }

    fn stamps(&self) -> Vec<(Instant, f64)> {
        self.stamps.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

impl Progress for StepClock<'_> {
    fn start(&self, phase: &str, total: u64) {
        self.inner.start(phase, total);
    }

    fn advance(&self, steps: u64) {
        // The loop's first call, `advance(0)` (a fresh run resumes from step 0), is no step.
        if steps > 0
            && let Ok(mut s) = self.stamps.lock()
        {
            s.push((Instant::now(), process_cpu_s()));
        }
        self.inner.advance(steps);
    }

    fn message(&self, text: &str) {
        self.inner.message(text);
    }

    fn warn(&self, text: &str) {
        self.inner.warn(text);
    }
}
