//! The one error type of the data library: each variant names the file, key or value at fault,
//! so that a pipeline run stops with a sentence the researcher can act on.

use std::path::PathBuf;

/// Everything that can go wrong while preparing or reading data.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DataError {
    /// An input path (file, directory or glob) that matches nothing.
    #[error("input `{}` not found (no such file, directory or glob match)", path.display())]
    NotFound { path: PathBuf },
    /// An I/O error on a named file.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// An output file that could not be written (the message names it).
    #[error("{0}")]
    Write(String),
    /// A malformed line of a JSONL file.
    #[error("{}:{line}: {message}", path.display())]
    Jsonl {
        path: PathBuf,
        line: usize,
        message: String,
    },
    /// A Parquet file that cannot be read as expected.
    #[error("{}: {message}", path.display())]
    Parquet { path: PathBuf, message: String },
    /// A column that the source names but the file does not have.
    #[error("{}: no column `{column}` (the file has: {available})", path.display())]
    MissingColumn {
        path: PathBuf,
        column: String,
        available: String,
    },
    /// No documents left to work with.
    #[error("empty corpus: {reason}")]
    EmptyCorpus { reason: String },
    /// A tokenizer.json that does not parse.
    #[error("{}: not a valid tokenizer.json: {message}", path.display())]
    TokenizerParse { path: PathBuf, message: String },
    /// Any other tokenizer failure (training, encoding, decoding, missing special token).
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// The tokenizer's ids do not fit the token dtype of the shards.
    #[error(
        "vocab size {vocab_size} does not fit token dtype {dtype} (ids must be below {limit}); use token_dtype = \"u32\""
    )]
    VocabTooLarge {
        vocab_size: usize,
        dtype: &'static str,
        limit: u64,
    },
    /// A parameter with a value that cannot work.
    #[error("invalid parameter `{key}`: {message}")]
    Param { key: String, message: String },
    /// A prepared-data directory that is incomplete or inconsistent.
    #[error("{}: {message}", path.display())]
    Format { path: PathBuf, message: String },
    /// A haystack that cannot be built as asked.
    #[error("haystack: {0}")]
    Haystack(String),
    /// A haystack length that cannot hold the task's fixed text (instruction, needle, question
    /// and answer) before any filler.
    #[error(
        "haystack: length {length} is too short for the {task} template: it takes {fixed} tokens before any filler"
    )]
    HaystackTooShort {
        /// The needle task.
        task: &'static str,
        /// The length asked for.
        length: usize,
        /// Tokens of the fixed text.
        fixed: usize,
    },
}

impl DataError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        DataError::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn param(key: &str, message: impl Into<String>) -> Self {
        DataError::Param {
            key: key.to_string(),
            message: message.into(),
        }
    }

    pub(crate) fn tokenizer(message: impl std::fmt::Display) -> Self {
        DataError::Tokenizer(message.to_string())
    }
}
