//! The one error type of the model: configs, RoPE settings, checkpoints and shapes.
//!
//! Every message names what was wrong and where (file, key, tensor), so that a user who brings
//! their own Hugging Face checkpoint can fix it without reading the source.

use std::path::PathBuf;

/// Errors of `ropelens::model`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ModelError {
    /// A config value (config.json key, rope parameter) is missing, of the wrong type or invalid.
    #[error("{source_name}: `{key}`: {message}")]
    Config {
        /// The file (or "rope parameters", ...) the value came from.
        source_name: String,
        /// The key, dotted (`rope_parameters.factor`).
        key: String,
        /// What is wrong with it.
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
    /// A checkpoint file is malformed or does not fit the config.
    #[error("{path}: {message}")]
    Checkpoint {
        /// The file or directory.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A model too large for the memory available, refused before it is allocated.
    #[error(
        "{what} has {params} parameters: {} of f32 weights, more than the {} of memory available",
        crate::cli::human_bytes(*bytes),
        crate::cli::human_bytes(*available)
    )]
    TooLarge {
        /// The model (a file, a stage's `model` table).
        what: String,
        /// Its parameter count, as text (it may not fit an integer).
        params: String,
        /// Bytes of its f32 weights.
        bytes: u64,
        /// Bytes of memory available.
        available: u64,
    },
    /// A call was given inputs of the wrong shape or range.
    #[error("{0}")]
    Input(String),
}

impl ModelError {
    pub(crate) fn config(source: &str, key: &str, message: impl Into<String>) -> Self {
        ModelError::Config {
            source_name: source.to_string(),
            key: key.to_string(),
            message: message.into(),
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        ModelError::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn checkpoint(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        ModelError::Checkpoint {
            path: path.into(),
            message: message.into(),
        }
    }
}

/// Result of `ropelens::model`.
pub type Result<T, E = ModelError> = std::result::Result<T, E>;
