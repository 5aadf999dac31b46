//! `pipe bench eval`: what the evaluation stages cost on a real checkpoint, to compare with
//! transformers on the same machine (`bench/torch_eval.py`, the same model directory).
//!
//! For each length, one random window (seeded) goes through the work a stage does on it:
//! `ppl` is `eval_ppl`'s per-token NLL of the window ([`window_nll`]: one forward, the head and
//! loss in chunks), `attention` the `attention` stage's one pass (every query's entropy and
//! the attention mass by distance). Reported: load time, median wall seconds, tokens/s, and the process's peak
//! resident memory so far (run lengths in increasing order, or one per process, to read the
//! peak of each).

use std::path::Path;
use std::time::Instant;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::model::bench::process_cpu_s;
use crate::model::{AttentionBlocks, GreedyOptions, greedy_decode, load_llama};
use crate::progress::Silent;

use super::attention::attention_analysis;
use super::chunked::window_nll;
use super::{EvalError, Result};

/// What [`bench_eval`] times at each length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum EvalWork {
    /// Per-token NLL of the window (the `eval_ppl` stage).
    Ppl,
    /// Attention entropy of every query and attention mass by distance (the `attention`
    /// stage's one pass).
    Attention,
    /// Greedy decoding with the KV cache (the needle task): `seconds` is the prompt's prefill
    /// and first token (`cpu_s` covers both runs), `decode_token_s` each further token
    /// (`--new-tokens` of them, default 16).
    Generate,
}

/// Tokens decoded after the first by [`EvalWork::Generate`] unless told otherwise (the needle
/// task's default answer length).
pub const DECODE_TOKENS: usize = 16;

/// What [`bench_eval`] does at each length besides the window itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EvalBenchOptions {
    /// What to time.
    pub work: EvalWork,
    /// Timed repetitions per length (the median is reported).
    pub iters: usize,
    /// Positions per head/loss chunk (`EvalWork::Ppl`).
    pub chunk: usize,
    /// Tokens decoded after the first (`EvalWork::Generate`). The per-token time is the
    /// difference of two runs (`1 + new_tokens` tokens and 1) over `new_tokens`, so the
    /// prefill's own spread is divided by it: raise it at long prompts.
    pub new_tokens: usize,
}

/// One measured length.
#[derive(Debug, Clone, PartialEq)]
pub struct EvalBenchRow {
    /// Tokens in the window.
    pub length: usize,
    /// Median wall seconds.
    pub seconds: f64,
    /// Every repetition's wall seconds.
    pub all_seconds: Vec<f64>,
    /// Median process CPU seconds (all threads): steadier than wall time on a shared machine.
    pub cpu_s: f64,
    /// `length / seconds`.
    pub tokens_per_s: f64,
    /// Peak resident memory of the process so far, MiB.
    pub peak_rss_mib: f64,
    /// [`EvalWork::Generate`]: median seconds per decoded token after the first.
    pub decode_token_s: Option<f64>,
}

fn median(v: &[f64]) -> f64 {
    let mut sorted = v.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted[sorted.len() / 2]
}

/// Peak resident memory of this process so far, MiB (0 where unavailable).
pub fn peak_rss_mib() -> f64 {
    #[cfg(unix)]
    {
        // SAFETY: getrusage only writes into the struct we pass.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } == 0 {
            return usage.ru_maxrss as f64 / 1024.0;
        }
    }
    0.0
}

/// Load the checkpoint in `dir` on `device`, then time `opts.work` at each length
/// (`opts.iters` repetitions, median), calling `report` after each length. Returns the load
/// seconds.
pub fn bench_eval(
    dir: &Path,
    device: &burn::tensor::Device,
    lengths: &[usize],
    opts: EvalBenchOptions,
    report: &mut dyn FnMut(&EvalBenchRow),
) -> Result<f64> {
    let start = Instant::now();
    let model = load_llama(dir, device)?;
    let load_s = start.elapsed().as_secs_f64();
    let vocab = model.config().vocab_size as u32;
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    for &length in lengths {
        if length < 2 {
            return Err(EvalError::Input(format!(
                "bench length {length}: at least 2 tokens"
            )));
        }
        let mut all_seconds = Vec::new();
        let mut decode = Vec::new();
        let mut cpu = Vec::new();
        for _ in 0..opts.iters.max(1) {
            let window: Vec<u32> = (0..length).map(|_| rng.random_range(0..vocab)).collect();
            let windows = [window];
            let t = Instant::now();
            let cpu_start = process_cpu_s();
            match opts.work {
                EvalWork::Ppl => {
                    window_nll(&model, &windows, opts.chunk)?;
                }
                EvalWork::Attention => {
                    attention_analysis(&model, &windows, AttentionBlocks::flash(), 1, &Silent)?;
                }
                EvalWork::Generate => {
                    let decode_n = |n: usize| GreedyOptions {
                        max_new_tokens: n,
                        ..GreedyOptions::default()
                    };
                    greedy_decode(&model, &windows[0], &decode_n(1))?;
                    let first = t.elapsed().as_secs_f64();
                    let t2 = Instant::now();
                    let n = opts.new_tokens.max(1);
                    greedy_decode(&model, &windows[0], &decode_n(1 + n))?;
                    let full = t2.elapsed().as_secs_f64();
                    decode.push((full - first) / n as f64);
                    all_seconds.push(first);
                    cpu.push(process_cpu_s() - cpu_start);
                    continue;
                }
            }
            all_seconds.push(t.elapsed().as_secs_f64());
            cpu.push(process_cpu_s() - cpu_start);
        }
        let seconds = median(&all_seconds);
        report(&EvalBenchRow {
            length,
            seconds,
            all_seconds,
            cpu_s: median(&cpu),
            tokens_per_s: length as f64 / seconds,
            peak_rss_mib: peak_rss_mib(),
            decode_token_s: (!decode.is_empty()).then(|| median(&decode)),
        });
    }
    Ok(load_s)
}
