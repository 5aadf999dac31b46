//! The evaluation library behind the `eval_ppl`, `eval_needle` and `attention` stages.
//!
//! It works on a loaded [`Llama`](crate::model::Llama) and plain token slices, so that it can be
//! tested without the data stage: [`ppl`] (perplexity of documents at a context length, truncate
//! or sliding windows), [`needle`] (one greedy needle trial with the paper's Algorithm 1, the
//! resumable grid log, and the entropy-vs-error join), and [`attention`] (attention entropy by
//! query position, the attention-by-distance profile and its JS divergence from a reference).
//! Long windows run a chunk of positions at a time through the KV cache ([`chunked`]), so
//! memory stays linear in length. Every function returns rows of the tables in
//! [`crate::tables`]. See docs/eval.md.

pub mod attention;
pub mod bench;
pub mod chunked;
pub mod needle;
pub mod ppl;

use std::path::PathBuf;

use crate::analysis::AnalysisError;
use crate::model::ModelError;
use crate::tables::TableError;

/// Why an evaluation could not finish. Each variant says what input or file was wrong.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EvalError {
    /// The model refused an input or failed.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// A statistic could not be computed.
    #[error(transparent)]
    Analysis(#[from] AnalysisError),
    /// A table could not be built or written.
    #[error(transparent)]
    Table(#[from] TableError),
    /// A parameter or input is invalid (the message names it and its value).
    #[error("{0}")]
    Input(String),
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A line of the needle trial log could not be parsed.
    #[error("{path}:{line}: {message}")]
    Log {
        path: PathBuf,
        line: usize,
        message: String,
    },
    /// Detokenizing a reply failed.
    #[error("decoding the reply of {cell}: {message}")]
    Decode { cell: String, message: String },
}

/// Result of this module.
pub type Result<T> = std::result::Result<T, EvalError>;
