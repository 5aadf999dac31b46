//! Resumable training state on disk.
//!
//! A checkpoint is a directory `checkpoints/step-NNNNNNNN/` holding the model (Hugging Face
//! safetensors + config.json, so it also loads as a model), the optimizer moments
//! (`optimizer.safetensors`) and `state.json` (step, tokens, elapsed time, data position, seed,
//! the run's fingerprint and the log rows so far). It is written under a temporary name and
//! renamed into place, so a directory named `step-*` is always complete; older checkpoints are
//! removed only after the new one is in place. A kill at any moment leaves the last complete
//! checkpoint.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::error::{Result, TrainError};
use super::optim::AdamW;
use crate::model::{HfLayout, Llama, save_llama};
use crate::tables::{TrainLogRow, ValLogRow};

/// Version of `state.json`.
pub const STATE_FORMAT: u32 = 1;
/// Directory of the checkpoints inside the run directory.
pub const CHECKPOINTS_DIR: &str = "checkpoints";
const STATE_FILE: &str = "state.json";
const OPTIM_FILE: &str = "optimizer.safetensors";

/// One `train_log` row, as stored in `state.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogEntry {
    pub step: i64,
    pub tokens: i64,
    pub seq_len: i64,
    pub loss: f64,
    pub lr: f64,
    pub grad_norm: Option<f64>,
    pub tokens_per_s: f64,
    pub elapsed_s: f64,
}

impl From<&LogEntry> for TrainLogRow {
    fn from(e: &LogEntry) -> Self {
        TrainLogRow {
            step: e.step,
            tokens: e.tokens,
            seq_len: e.seq_len,
            loss: e.loss,
            lr: e.lr,
            grad_norm: e.grad_norm,
            tokens_per_s: e.tokens_per_s,
            elapsed_s: e.elapsed_s,
        }
    }
}

/// One `val_log` row, as stored in `state.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ValEntry {
    pub step: i64,
    pub tokens: i64,
    pub val_loss: f64,
}

impl From<&ValEntry> for ValLogRow {
    fn from(e: &ValEntry) -> Self {
        ValLogRow {
            step: e.step,
            tokens: e.tokens,
            val_loss: e.val_loss,
        }
    }
}

/// Everything but the tensors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    /// [`STATE_FORMAT`].
    pub format: u32,
    /// Identifies the run's configuration (parameters, model config, seed); a checkpoint of
    /// another configuration is refused.
    pub fingerprint: String,
    /// Optimiser steps done.
    pub step: u64,
    /// Training tokens seen.
    pub tokens: u64,
    /// Seconds of training so far, over every session.
    pub elapsed_s: f64,
    /// The batch source's position (windows drawn).
    pub data_position: u64,
    /// The run's seed.
    pub seed: u64,
    /// `train_log` rows so far.
    pub train_log: Vec<LogEntry>,
    /// `val_log` rows so far.
    pub val_log: Vec<ValEntry>,
}

fn step_dir_name(step: u64) -> String {
    format!("step-{step:08}")
}

/// The checkpoint directories of `run_dir`, by step.
fn list(run_dir: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let dir = run_dir.join(CHECKPOINTS_DIR);
    if !dir.is_dir() {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&dir).map_err(|e| TrainError::io(&dir, e))? {
        let entry = entry.map_err(|e| TrainError::io(&dir, e))?;
        let name = entry.file_name();
        if let Some(step) = name
            .to_str()
            .and_then(|n| n.strip_prefix("step-"))
            .and_then(|n| n.parse::<u64>().ok())
        {
            out.push((step, entry.path()));
        }
    }
    out.sort();
    Ok(out)
}

/// Write a checkpoint of `step` atomically and remove older ones (and leftovers of killed
/// writes). Returns its directory.
pub fn save(run_dir: &Path, state: &TrainState, model: &Llama, optim: &AdamW) -> Result<PathBuf> {
    let dir = run_dir.join(CHECKPOINTS_DIR);
    std::fs::create_dir_all(&dir).map_err(|e| TrainError::io(&dir, e))?;
    let name = step_dir_name(state.step);
    let tmp = dir.join(format!(".tmp-{name}"));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| TrainError::io(&tmp, e))?;
    }
    std::fs::create_dir_all(&tmp).map_err(|e| TrainError::io(&tmp, e))?;
    save_llama(model, &tmp, HfLayout::Both)?;
    optim.save(&tmp.join(OPTIM_FILE))?;
    let text = serde_json::to_string(state).expect("train state serializes");
    let sp = tmp.join(STATE_FILE);
    std::fs::write(&sp, text).map_err(|e| TrainError::io(&sp, e))?;
    let fin = dir.join(&name);
    crate::failpoint::hit("checkpoint-rename");
    if fin.exists() {
        std::fs::remove_dir_all(&fin).map_err(|e| TrainError::io(&fin, e))?;
    }
    std::fs::rename(&tmp, &fin).map_err(|e| TrainError::io(&fin, e))?;
    crate::failpoint::hit("checkpoint-prune");
    // Only now is the older state redundant.
    for entry in std::fs::read_dir(&dir).map_err(|e| TrainError::io(&dir, e))? {
        let entry = entry.map_err(|e| TrainError::io(&dir, e))?;
        let p = entry.path();
        if p != fin {
            std::fs::remove_dir_all(&p).map_err(|e| TrainError::io(&p, e))?;
        }
    }
    Ok(fin)
}

/// The newest complete checkpoint of `run_dir`, if any: its directory and state.
pub fn latest(run_dir: &Path) -> Result<Option<(PathBuf, TrainState)>> {
    let Some((_, dir)) = list(run_dir)?.pop() else {
        return Ok(None);
    };
    let sp = dir.join(STATE_FILE);
    let text = std::fs::read_to_string(&sp).map_err(|e| TrainError::io(&sp, e))?;
    let state: TrainState = serde_json::from_str(&text)
        .map_err(|e| TrainError::checkpoint(&sp, format!("unreadable state: {e}")))?;
    if state.format != STATE_FORMAT {
        return Err(TrainError::checkpoint(
            &sp,
            format!(
                "state format {} (this build reads {STATE_FORMAT}); delete the checkpoint to start over",
                state.format
            ),
        ));
    }
    Ok(Some((dir, state)))
}

/// The optimizer file of a checkpoint directory.
pub fn optimizer_file(dir: &Path) -> PathBuf {
    dir.join(OPTIM_FILE)
}

/// Remove every checkpoint of `run_dir`.
pub fn remove_all(run_dir: &Path) -> Result<()> {
    let dir = run_dir.join(CHECKPOINTS_DIR);
    if dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(|e| TrainError::io(&dir, e))?;
    }
    Ok(())
}
