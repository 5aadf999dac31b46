//! The one error type of training: bad parameters, a diverged loss, checkpoints that cannot be
//! written or do not belong to this run, and model errors passed through.
//!
//! Messages name the parameter (`train.seq_len`), the step or the file, so that a researcher who
//! comes back to a failed overnight run knows what happened without reading the source.

use std::path::PathBuf;

use crate::model::ModelError;

/// Errors of `ropelens::train`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TrainError {
    /// A parameter is invalid or parameters contradict each other.
    #[error("`{key}`: {message}")]
    Param {
        /// The dotted parameter name (`train.steps`).
        key: String,
        /// What is wrong with it.
        message: String,
    },
    /// The loss (or the gradient norm) stopped being a finite number.
    #[error(
        "training diverged at step {step}: {what} is {value}; the last good checkpoint is {}",
        last_checkpoint.as_ref().map_or("none (no checkpoint was written yet)".to_string(), |p| format!("`{}` (step {})", p.display(), last_step))
    )]
    Diverged {
        /// The optimiser step (from 1) whose loss was not finite.
        step: u64,
        /// `loss` or `grad_norm`.
        what: &'static str,
        /// The value (NaN or an infinity).
        value: f64,
        /// The checkpoint left in place, if any.
        last_checkpoint: Option<PathBuf>,
        /// Its step.
        last_step: u64,
    },
    /// The run was told to stop after a step (tests of resumption simulate a kill with it).
    #[error(
        "training stopped after step {step} as asked (the checkpoint of that step, if any, resumes it)"
    )]
    Interrupted {
        /// The last step done.
        step: u64,
    },
    /// A checkpoint is malformed or was written by another configuration.
    #[error("{path}: {message}")]
    Checkpoint {
        /// The checkpoint directory or file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The batch source failed (data stage output unreadable, window too long, ...).
    #[error("batch source: {0}")]
    Data(String),
    /// A results table could not be written.
    #[error(transparent)]
    Table(#[from] crate::tables::TableError),
    /// The model refused a config, a RoPE or an input.
    #[error(transparent)]
    Model(#[from] ModelError),
}

impl TrainError {
    pub(crate) fn param(key: &str, message: impl Into<String>) -> Self {
        TrainError::Param {
            key: key.to_string(),
            message: message.into(),
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        TrainError::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn checkpoint(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        TrainError::Checkpoint {
            path: path.into(),
            message: message.into(),
        }
    }
}

/// Result of `ropelens::train`.
pub type Result<T, E = TrainError> = std::result::Result<T, E>;
