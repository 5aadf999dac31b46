//! The training loop: batches from a [`BatchSource`], next-token cross-entropy, gradient
//! accumulation, global-norm clipping, AdamW on a warmup-then-decay schedule, periodic
//! validation, logs and atomic checkpoints, and resumption from the newest checkpoint.
//!
//! The loop never asks where batches come from or which device it runs on: the caller builds
//! the model on an autodiff device and hands a source. Everything that decides the weights (the
//! model, the optimizer moments, the step, the data position) is in the checkpoint, and nothing
//! random happens during training, so a resumed run ends with the same weights as an
//! uninterrupted one.

use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::module::Module;

use serde_json::json;

use super::checkpoint::{self, LogEntry, TrainState, ValEntry};
use super::error::{Result, TrainError};
use super::optim::{AdamW, Grads, freeze};
use super::params::TrainParams;
use super::schedule::LrSchedule;
use super::shards::Shards;
use super::source::BatchSource;
use crate::model::llama::to_f32_vec;
use crate::model::{HfLayout, Llama, ids_tensor, load_llama};
use crate::progress::Progress;
use crate::tables::{TrainLogRow, ValLogRow};

/// One training run: what to do and where to keep its checkpoints.
pub struct TrainJob<'a> {
    /// The optimisation.
    pub params: &'a TrainParams,
    /// The run's seed (recorded in checkpoints; the caller seeds model and source with it).
    pub seed: u64,
    /// Where `checkpoints/` goes; a newest checkpoint found there is resumed.
    pub run_dir: &'a Path,
    /// Step progress.
    pub progress: &'a dyn Progress,
    /// Stop with [`TrainError::Interrupted`] after this step (after its checkpoint, if it has
    /// one), as a kill would: for tests of resumption.
    pub stop_after: Option<u64>,
}

/// What a finished run hands back.
#[derive(Debug)]
pub struct TrainOutput {
    /// The trained model, on the plain (non-autodiff) device.
    pub model: Llama,
    /// `train_log` rows of the whole run (resumed sessions included).
    pub train_log: Vec<TrainLogRow>,
    /// `val_log` rows of the whole run.
    pub val_log: Vec<ValLogRow>,
    /// Optimiser steps done.
    pub steps: u64,
    /// Training tokens seen.
    pub tokens: u64,
    /// Training seconds over every session.
    pub elapsed_s: f64,
    /// Mean throughput of this session, tokens per second (0 when nothing was left to train).
    pub tokens_per_s: f64,
    /// The step this session resumed from, if it did.
    pub resumed_from: Option<u64>,
    /// The final checkpoint's directory.
    pub final_checkpoint: PathBuf,
}

/// A fingerprint of everything that decides a run's result.
fn fingerprint(params: &TrainParams, model: &Llama, seed: u64, window: usize) -> String {
    let v = json!({
        "params": params,
        "config": model.config().to_hf_value(HfLayout::Both),
        "seed": seed,
        "window": window,
    });
    blake3::hash(v.to_string().as_bytes()).to_hex().to_string()
}

fn fmt_duration(s: f64) -> String {
    let s = s.max(0.0).round() as u64;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

/// Mean next-token loss of `rows` (windows of `seq_len + 1`) under `model` (plain device), in
/// micro-batches of `batch` rows.
pub fn validation_loss(model: &Llama, rows: &[Vec<u32>], batch: usize) -> Result<f64> {
    let device = model.device();
    let (mut sum, mut n) = (0.0f64, 0usize);
    for chunk in rows.chunks(batch.max(1)) {
        let ids = ids_tensor(chunk, &device)?;
        let loss = to_f32_vec(model.lm_loss(ids)?)[0] as f64;
        sum += loss * chunk.len() as f64;
        n += chunk.len();
    }
    Ok(if n == 0 { f64::NAN } else { sum / n as f64 })
}

/// Train `model` (on an autodiff device) with batches from `source`, validating on
/// `validation` (windows of `seq_len + 1` tokens), resuming from the newest checkpoint in
/// `job.run_dir` when there is one.
pub fn train(
    job: &TrainJob<'_>,
    model: Llama,
    source: &mut dyn BatchSource,
    validation: &[Vec<u32>],
) -> Result<TrainOutput> {
    let p = job.params;
    p.validate()?;
    let device = model.device();
    if !device.is_autodiff() {
        return Err(TrainError::param(
            "device",
            "the model to train must be on an autodiff device (`device.autodiff()`)",
        ));
    }
    let window = p.seq_len + 1;
    if source.window() != window {
        return Err(TrainError::Data(format!(
            "the source gives windows of {} tokens; training at seq_len {} needs {window}",
            source.window(),
            p.seq_len
        )));
    }
    if let Some(bad) = validation.iter().find(|r| r.len() != window) {
        return Err(TrainError::Data(format!(
            "a validation window has {} tokens, expected {window}",
            bad.len()
        )));
    }
    let total = p.total_steps();
    let schedule = LrSchedule::new(p);
    let fp = fingerprint(p, &model, job.seed, window);
    let plain = device.clone().inner();

    let mut model = freeze(model, p);
    let mut optim = AdamW::new(p, &model);
    let mut state = TrainState {
        format: checkpoint::STATE_FORMAT,
        fingerprint: fp.clone(),
        step: 0,
        tokens: 0,
        elapsed_s: 0.0,
        data_position: 0,
        seed: job.seed,
        train_log: Vec::new(),
        val_log: Vec::new(),
    };
    let mut last_ckpt: Option<(PathBuf, u64)> = None;
    let mut resumed_from = None;
    if let Some((dir, saved)) = checkpoint::latest(job.run_dir)? {
        if saved.fingerprint != fp {
            return Err(TrainError::checkpoint(
                &dir,
                "was written by a run with other parameters, model or seed; delete it to start over",
            ));
        }
        let loaded = load_llama(&dir, &device)?;
        if loaded.config() != model.config() {
            return Err(TrainError::checkpoint(
                &dir,
                "its config.json differs from the model being trained",
            ));
        }
        model = freeze(loaded, p);
        optim.load(&checkpoint::optimizer_file(&dir), &model, &plain)?;
        if optim.steps_done() != saved.step {
            return Err(TrainError::checkpoint(
                &dir,
                format!(
                    "optimizer state is at step {} but state.json at {}",
                    optim.steps_done(),
                    saved.step
                ),
            ));
        }
        source.set_position(saved.data_position);
        resumed_from = Some(saved.step);
        last_ckpt = Some((dir, saved.step));
        state = saved;
    }

    job.progress.start("train", total);
    job.progress.advance(state.step);
    let session = Instant::now();
    let (session_step0, session_tokens0, elapsed0) = (state.step, state.tokens, state.elapsed_s);
    let (mut log_tokens, mut log_elapsed) = (state.tokens, state.elapsed_s);
    let rows = p.batch_size;
    let shards = Shards::new(rows, window, p.grad_accum, p.shards)?;

    while state.step < total {
        let step = state.step + 1;
        let lr = schedule.at(step);
        let mut grads = Grads::default();
        let mut loss_sum = 0.0f64;
        for _ in 0..p.grad_accum {
            let tokens = source.next_batch(rows)?;
            if tokens.len() != rows * window {
                return Err(TrainError::Data(format!(
                    "asked for {rows} windows of {window} tokens, got {} tokens",
                    tokens.len()
                )));
            }
            let (value, g) = shards.loss_and_grads(&model, &tokens, &device)?;
            if !value.is_finite() {
                return Err(diverged(step, "loss", value, &last_ckpt));
            }
            loss_sum += value;
            grads.merge(g);
        }
        // Logged at f32 precision, the precision it was computed in. state.json keeps every bit
        // of the logged numbers (serde_json's `float_roundtrip`: its default parser can miss the
        // last bit), so a resumed run logs the same numbers as an uninterrupted one.
        let loss = (loss_sum / p.grad_accum as f64) as f32 as f64;
        let norm = grads.norm();
        if !norm.is_finite() {
            return Err(diverged(step, "grad_norm", norm, &last_ckpt));
        }
        let (updated, _) = optim.step(model, grads, lr, norm);
        model = updated;
        state.step = step;
        state.tokens += p.tokens_per_step();
        state.data_position = source.position();
        let now = session.elapsed().as_secs_f64();
        state.elapsed_s = elapsed0 + now;

        if step == 1 || step.is_multiple_of(p.log_every) || step == total {
            let dt = state.elapsed_s - log_elapsed;
            let tps = if dt > 0.0 {
                (state.tokens - log_tokens) as f64 / dt
            } else {
                0.0
            };
            state.train_log.push(LogEntry {
                step: step as i64,
                tokens: state.tokens as i64,
                seq_len: p.seq_len as i64,
                loss,
                lr,
                grad_norm: Some(norm),
                tokens_per_s: tps,
                elapsed_s: state.elapsed_s,
            });
            (log_tokens, log_elapsed) = (state.tokens, state.elapsed_s);
        }
        if !validation.is_empty()
            && ((p.val_every > 0 && step.is_multiple_of(p.val_every)) || step == total)
        {
            let val_loss = validation_loss(&model.valid(), validation, rows)?;
            state.val_log.push(ValEntry {
                step: step as i64,
                tokens: state.tokens as i64,
                val_loss,
            });
        }
        crate::failpoint::hit("train-step");
        // A checkpoint request (Slurm's warning before a time limit) adds one in between.
        if (p.checkpoint_every > 0 && step.is_multiple_of(p.checkpoint_every))
            || step == total
            || crate::signals::take_checkpoint_request()
        {
            let dir = checkpoint::save(job.run_dir, &state, &model, &optim)?;
            last_ckpt = Some((dir, step));
        }

        job.progress.advance(1);
        let done = (step - session_step0) as f64;
        let eta = now / done * (total - step) as f64;
        let tps = (state.tokens - session_tokens0) as f64 / now.max(1e-9);
        job.progress.message(&format!(
            "step {step}/{total} · loss {loss:.3} · {:.1}k tok/s · ETA {}",
            tps / 1e3,
            fmt_duration(eta)
        ));
        if job.stop_after == Some(step) && step < total {
            return Err(TrainError::Interrupted { step });
        }
    }

    let final_checkpoint = match last_ckpt {
        Some((dir, s)) if s == state.step => dir,
        _ => checkpoint::save(job.run_dir, &state, &model, &optim)?,
    };
    let session_s = session.elapsed().as_secs_f64();
    Ok(TrainOutput {
        model: model.valid(),
        train_log: state.train_log.iter().map(TrainLogRow::from).collect(),
        val_log: state.val_log.iter().map(ValLogRow::from).collect(),
        steps: state.step,
        tokens: state.tokens,
        elapsed_s: state.elapsed_s,
        tokens_per_s: if state.tokens > session_tokens0 && session_s > 0.0 {
            (state.tokens - session_tokens0) as f64 / session_s
        } else {
            0.0
        },
        resumed_from,
        final_checkpoint,
    })
}

fn diverged(
    step: u64,
    what: &'static str,
    value: f64,
    last: &Option<(PathBuf, u64)>,
) -> TrainError {
    TrainError::Diverged {
        step,
        what,
        value,
        last_checkpoint: last.as_ref().map(|(d, _)| d.clone()),
        last_step: last.as_ref().map_or(0, |(_, s)| *s),
    }
}
